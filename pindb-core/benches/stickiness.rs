#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API

//! The cost of read-your-writes on a request that only reads: a fresh context plus one read
//! decision, without a key, with a key in the memory store, and with a key in Redis (needs the
//! dev cluster's Redis; `PINDB_REDIS_URL` or redis://127.0.0.1:6379/).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use pindb_core::{scope, Config, Hint, Lsn, Router};
use pindb_core::{RedisStore, Store};

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let router = Router::new(Config::single_set("postgres://m/a", ["postgres://r1/a"])).unwrap();
    let hint = Hint::default();
    let mut g = c.benchmark_group("request_with_one_read");
    g.bench_function("no_key", |b| {
        b.to_async(&rt)
            .iter(|| scope(async { black_box(router.db_for_read(&hint).unwrap().index) }))
    });
    g.bench_function("key_memory_store", |b| {
        b.to_async(&rt).iter(|| {
            router.consistency().scope_with_key(Some("user:1"), async {
                black_box(router.db_for_read(&hint).unwrap().index)
            })
        })
    });
    let redis_url =
        std::env::var("PINDB_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let redis = rt.block_on(async {
        let store =
            RedisStore::new(&redis_url, "pindb:bench:", Duration::from_millis(100)).unwrap();
        store
            .save(
                "user:1",
                &[("default".into(), Lsn(1))],
                Duration::from_secs(600),
            )
            .await
            .expect("the bench needs Redis: run scripts/cluster up");
        store
    });
    let router = Router::builder(Config::single_set("postgres://m/a", ["postgres://r1/a"]))
        .store(Arc::new(redis))
        .build()
        .unwrap();
    g.bench_function("key_redis_store", |b| {
        b.to_async(&rt).iter(|| {
            router.consistency().scope_with_key(Some("user:1"), async {
                black_box(router.db_for_read(&hint).unwrap().index)
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
