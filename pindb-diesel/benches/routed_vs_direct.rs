#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API

//! A primary-key SELECT through the routed connection vs. the same query on a plain bb8
//! `AsyncPgConnection` checkout from a pool to the same replica, same pool size, same run.
//! Needs the dev cluster (`scripts/cluster up`).
//!
//! - `per_request`: one checkout + one query, as a request that reads one row does. The routed
//!   side goes through its first-statement path (render, check out, run).
//! - `held_connection`: the query alone on a connection already checked out.

use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::AsyncPgConnection;
use pindb_diesel::bb8::PinDb;
use pindb_testkit::Cluster;

#[macro_use]
mod common;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let cluster = Cluster::from_env();
    let pindb_testkit::BenchSet {
        schema,
        config,
        replica_url,
    } = rt.block_on(pindb_testkit::bench_set(&cluster));
    let db = rt.block_on(async { PinDb::new(config).unwrap() });
    let plain = rt.block_on(async {
        bb8::Pool::builder()
            .max_size(10)
            .build(AsyncDieselConnectionManager::<AsyncPgConnection>::new(
                replica_url,
            ))
            .await
            .unwrap()
    });

    let mut g = c.benchmark_group("pk_select");
    g.bench_function("per_request/plain_bb8", |b| {
        b.to_async(&rt).iter(|| async {
            let mut conn = plain.get().await.unwrap();
            find_42!(&mut *conn)
        })
    });
    g.bench_function("per_request/routed", |b| {
        b.to_async(&rt).iter(|| {
            pindb_core::scope(async {
                let mut conn = db.get();
                find_42!(&mut conn)
            })
        })
    });
    g.bench_function("per_request/routed_checkout_first", |b| {
        b.to_async(&rt).iter(|| {
            pindb_core::scope(async {
                let mut conn = db.get();
                conn.checkout_for_read().await.unwrap();
                find_42!(&mut conn)
            })
        })
    });
    g.bench_function("per_request/explicit_read_handle", |b| {
        b.to_async(&rt).iter(|| {
            pindb_core::scope(async {
                let mut conn = db.read().await.unwrap();
                find_42!(&mut *conn)
            })
        })
    });
    g.bench_function("held_connection/plain_bb8", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let plain = plain.clone();
            async move {
                let mut conn = plain.get_owned().await.unwrap();
                let start = Instant::now();
                for _ in 0..iters {
                    find_42!(&mut *conn);
                }
                start.elapsed()
            }
        })
    });
    g.bench_function("held_connection/routed", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let db = db.clone();
            pindb_core::scope(async move {
                let mut conn = db.get();
                conn.checkout_for_read().await.unwrap();
                let start = Instant::now();
                for _ in 0..iters {
                    find_42!(&mut conn);
                }
                start.elapsed()
            })
        })
    });
    g.finish();
    rt.block_on(schema.drop());
}

criterion_group!(benches, bench);
criterion_main!(benches);
