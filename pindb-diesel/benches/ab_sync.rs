#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
//! Interleaved A/B, sync diesel: a primary-key SELECT through `r2d2::PinDb::get()` in a
//! pinning context vs. a plain r2d2 checkout of the same replica, per request. Needs the dev
//! cluster (`scripts/cluster up`). `cargo bench -p pindb-diesel --features r2d2 --bench ab_sync`.
//!
//! Each round opens both sides afresh (outside the timed part): a blocking round trip on a
//! 2-core machine costs about 40 µs or about 210 µs depending on where the scheduler put the
//! server process relative to the client thread, and that placement sticks to a connection
//! for its life. With one pool per side for the whole run, the ratio was whichever mode each
//! side drew (0.18 or 6.7 in two runs); new connections every round draw again.

use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool};
use pindb_core::Context;
use pindb_diesel::r2d2::PinDb;
use pindb_testkit::ab::{interleave_sync, report};
use pindb_testkit::Cluster;

#[macro_use]
mod common;
const BATCH: u32 = 200;

fn plain_per_request(url: &str) -> Duration {
    let plain = Pool::builder()
        .max_size(1)
        .build(ConnectionManager::<PgConnection>::new(url))
        .unwrap();
    find_42_sync!(&mut plain.get().unwrap());
    let start = Instant::now();
    for _ in 0..BATCH {
        let mut conn = plain.get().unwrap();
        find_42_sync!(&mut conn);
    }
    start.elapsed()
}

fn routed_per_request(config: &pindb_core::Config) -> Duration {
    let db = PinDb::new(config.clone()).unwrap();
    Context::new().enter(|| {
        find_42_sync!(&mut db.get());
    });
    let start = Instant::now();
    for _ in 0..BATCH {
        Context::new().enter(|| {
            let mut conn = db.get();
            find_42_sync!(&mut conn);
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
    // One connection per pool on both sides: every round draws its placement afresh.
    let mut config = config;
    for settings in config.masters.values_mut() {
        settings.max_size = Some(1);
    }
    for replica in config.sets.values_mut().flatten() {
        replica.max_size = Some(1);
    }
    let (p, r) = interleave_sync(
        BATCH,
        || plain_per_request(&replica_url),
        || routed_per_request(&config),
    );
    report("sync diesel, per request", &p, &r);
    rt.block_on(schema.drop());
}
