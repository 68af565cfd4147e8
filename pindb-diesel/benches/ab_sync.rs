#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
//! Interleaved A/B, sync diesel: a primary-key SELECT through `r2d2::PinDb::get()` in a
//! pinning context vs. a plain r2d2 checkout of the same replica, per request. Needs the dev
//! cluster (`scripts/cluster up`). `cargo bench -p pindb-diesel --features r2d2 --bench ab_sync`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool};
use pindb_core::Context;
use pindb_diesel::r2d2::PinDb;
use pindb_testkit::ab::{interleave_sync, report};
use pindb_testkit::Cluster;

diesel::table! {
    bench_users (id) {
        id -> Integer,
        name -> Text,
    }
}

type Row = (i32, String);
const BATCH: u32 = 200;

fn plain_per_request(plain: &Pool<ConnectionManager<PgConnection>>) -> Duration {
    let start = Instant::now();
    for _ in 0..BATCH {
        let mut conn = plain.get().unwrap();
        let row: Row = bench_users::table.find(42).get_result(&mut conn).unwrap();
        black_box(row);
    }
    start.elapsed()
}

fn routed_per_request(db: &PinDb) -> Duration {
    let start = Instant::now();
    for _ in 0..BATCH {
        Context::new().enter(|| {
            let mut conn = db.get();
            let row: Row = bench_users::table.find(42).get_result(&mut conn).unwrap();
            black_box(row);
        });
    }
    start.elapsed()
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cluster = Cluster::from_env();
    let pindb_testkit::BenchSet {
        schema,
        config,
        replica_url,
    } = rt.block_on(pindb_testkit::bench_set(&cluster));
    let db = PinDb::new(config).unwrap();
    let plain = Pool::builder()
        .max_size(10)
        .build(ConnectionManager::<PgConnection>::new(replica_url))
        .unwrap();
    plain_per_request(&plain);
    routed_per_request(&db);
    let (p, r) = interleave_sync(
        BATCH,
        || plain_per_request(&plain),
        || routed_per_request(&db),
    );
    report("sync diesel, per request", &p, &r);
    rt.block_on(schema.drop());
}
