#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
//! Interleaved A/B: a primary-key SELECT through the routed connection vs. the same query on a
//! plain bb8 checkout of the same replica, in one run. Each round runs both sides (in random
//! order) for `BATCH` requests; the result is the ratio of the medians of the per-request
//! times, with its spread over blocks of rounds, so machine noise between the sides cancels.
//! Needs the dev cluster (`scripts/cluster up`). `cargo bench -p pindb-diesel --bench ab`.
//!
//! - `per request`: one checkout + one query, as a request that reads one row does.
//! - `held connection`: the query alone on a connection already checked out.

use std::hint::black_box;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use pindb_diesel::bb8::PinDb;
use pindb_testkit::ab::{interleave, report};
use pindb_testkit::Cluster;

diesel::table! {
    bench_users (id) {
        id -> Integer,
        name -> Text,
    }
}

type Row = (i32, String);
type Plain = bb8::Pool<AsyncDieselConnectionManager<AsyncPgConnection>>;

const BATCH: u32 = 200;

async fn plain_per_request(plain: &Plain) -> Duration {
    let start = Instant::now();
    for _ in 0..BATCH {
        let mut conn = plain.get().await.unwrap();
        let row: Row = bench_users::table
            .find(42)
            .get_result(&mut *conn)
            .await
            .unwrap();
        black_box(row);
    }
    start.elapsed()
}

async fn routed_per_request(db: &PinDb) -> Duration {
    let start = Instant::now();
    for _ in 0..BATCH {
        pindb_core::scope(async {
            let mut conn = db.get();
            let row: Row = bench_users::table
                .find(42)
                .get_result(&mut conn)
                .await
                .unwrap();
            black_box(row);
        })
        .await;
    }
    start.elapsed()
}

async fn plain_held(plain: &Plain) -> Duration {
    let mut conn = plain.get().await.unwrap();
    let start = Instant::now();
    for _ in 0..BATCH {
        let row: Row = bench_users::table
            .find(42)
            .get_result(&mut *conn)
            .await
            .unwrap();
        black_box(row);
    }
    start.elapsed()
}

async fn routed_held(db: &PinDb) -> Duration {
    pindb_core::scope(async {
        let mut conn = db.get();
        conn.checkout_for_read().await.unwrap();
        let start = Instant::now();
        for _ in 0..BATCH {
            let row: Row = bench_users::table
                .find(42)
                .get_result(&mut conn)
                .await
                .unwrap();
            black_box(row);
        }
        start.elapsed()
    })
    .await
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cluster = Cluster::from_env();
        let pindb_testkit::BenchSet {
            schema,
            config,
            replica_url,
        } = pindb_testkit::bench_set(&cluster).await;
        let db = PinDb::new(config).unwrap();
        let plain: Plain = bb8::Pool::builder()
            .max_size(10)
            .build(AsyncDieselConnectionManager::<AsyncPgConnection>::new(
                replica_url,
            ))
            .await
            .unwrap();
        // Warm both pools and both statement caches.
        plain_per_request(&plain).await;
        routed_per_request(&db).await;

        let (p, r) = interleave(
            BATCH,
            || plain_per_request(&plain),
            || routed_per_request(&db),
        )
        .await;
        report("per request", &p, &r);
        let (p, r) = interleave(BATCH, || plain_held(&plain), || routed_held(&db)).await;
        report("held connection", &p, &r);
        schema.drop().await;
    });
}
