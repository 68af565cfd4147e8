#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API

//! Routing decision and classifier cost, next to a plain `HashMap` lookup measured in the same
//! run (the floor any alias-based router pays).

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use pindb_core::adapter::classify;
use pindb_core::{scope, Config, Hint, Router, RouterMode};

fn router(mode: RouterMode) -> Router {
    let mut config = Config::single_set("postgres://m/a", ["postgres://r1/a", "postgres://r2/a"]);
    config.router = mode;
    Router::new(config).unwrap()
}

fn decisions(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("decision");

    let map: HashMap<String, usize> = ["default", "default-1", "default-2"]
        .iter()
        .enumerate()
        .map(|(i, a)| (a.to_string(), i))
        .collect();
    g.bench_function("hashmap_lookup_baseline", |b| {
        b.iter(|| black_box(map.get(black_box("default-1"))))
    });

    let strict = router(RouterMode::Strict);
    let greedy = router(RouterMode::Greedy);
    let hint = Hint::default();
    rt.block_on(scope(async {
        g.bench_function("read_unpinned", |b| {
            b.iter(|| black_box(strict.db_for_read(black_box(&hint)).unwrap()))
        });
        g.bench_function("write_unpinned_strict_refused", |b| {
            b.iter(|| black_box(strict.db_for_write(black_box(&hint)).is_err()))
        });
        strict.pin("default").unwrap();
        g.bench_function("read_pinned", |b| {
            b.iter(|| black_box(strict.db_for_read(black_box(&hint)).unwrap()))
        });
        g.bench_function("write_pinned", |b| {
            b.iter(|| black_box(strict.db_for_write(black_box(&hint)).unwrap()))
        });
    }));
    g.bench_function("write_greedy_first_in_fresh_context", |b| {
        b.iter(|| {
            rt.block_on(scope(async {
                black_box(greedy.db_for_write(&hint).unwrap());
            }))
        })
    });
    g.bench_function("read_outside_context", |b| {
        b.iter(|| black_box(greedy.db_for_read(black_box(&hint)).unwrap()))
    });
    g.finish();
}

fn classifier(c: &mut Criterion) {
    let mut g = c.benchmark_group("classify");
    let select = r#"SELECT "users"."id", "users"."name", "users"."email", "users"."created_at" FROM "users" WHERE "users"."id" = $1 LIMIT $2"#;
    let insert = r#"INSERT INTO "notes" ("user_id", "body", "created_at") VALUES ($1, $2, $3) RETURNING "notes"."id", "notes"."user_id", "notes"."body", "notes"."created_at""#;
    let join = r#"SELECT "posts"."id", "posts"."title", "users"."name" FROM "posts" INNER JOIN "users" ON "users"."id" = "posts"."user_id" WHERE "posts"."published" = $1 AND "users"."active" = $2 ORDER BY "posts"."created_at" DESC LIMIT $3 OFFSET $4"#;
    g.bench_function("orm_select_pk", |b| {
        b.iter(|| black_box(classify(black_box(select))))
    });
    g.bench_function("orm_insert_returning", |b| {
        b.iter(|| black_box(classify(black_box(insert))))
    });
    g.bench_function("orm_select_join", |b| {
        b.iter(|| black_box(classify(black_box(join))))
    });
    g.finish();
}

criterion_group!(benches, decisions, classifier);
criterion_main!(benches);
