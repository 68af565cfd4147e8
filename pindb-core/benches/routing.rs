#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API

//! Routing decision and classifier cost, next to a plain `HashMap` lookup measured in the same
//! run (the floor any alias-based router pays); many contexts deciding at once on a
//! multi-threaded runtime against the same on one thread (contention on the router's shared
//! state). The memory a live context holds is measured in `tests/no_alloc.rs`, which has
//! the counting allocator.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use pindb_core::adapter::{classify, Footprint};
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
    // Only with a logical replica in a set (once per statement type in diesel).
    g.bench_function("footprint_orm_select_join", |b| {
        b.iter(|| black_box(Footprint::of_sql(black_box(join))))
    });
    g.finish();
}

/// `contexts` request contexts at once, each making `reads` read decisions and one pin, spread
/// over `rt`'s workers: the time per decision.
fn concurrent(
    rt: &tokio::runtime::Runtime,
    router: &Router,
    contexts: usize,
    reads: usize,
) -> Duration {
    let start = Instant::now();
    rt.block_on(async {
        let tasks: Vec<_> = (0..contexts)
            .map(|_| {
                let router = router.clone();
                tokio::spawn(scope(async move {
                    let hint = Hint::default();
                    for _ in 0..reads {
                        black_box(router.db_for_read(&hint).unwrap());
                        tokio::task::yield_now().await;
                    }
                    router.db_for_write(&hint).unwrap();
                }))
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
    start.elapsed() / (contexts * (reads + 1)) as u32
}

fn contention(c: &mut Criterion) {
    let mut g = c.benchmark_group("many_contexts");
    let router = router(RouterMode::Greedy);
    let one = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let two = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    for (name, rt) in [
        ("1000_contexts_one_thread", &one),
        ("1000_contexts_two_threads", &two),
    ] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| concurrent(rt, &router, 1000, 10))
                    .sum::<Duration>()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, decisions, classifier, contention);
criterion_main!(benches);
