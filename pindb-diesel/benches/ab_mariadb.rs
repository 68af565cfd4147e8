#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
//! Interleaved A/B on the dev cluster's MariaDB set (`ab.rs`'s first two comparisons): a
//! primary-key SELECT through `PinDb::<AsyncMysqlConnection>` vs. the same query on a plain
//! bb8 checkout of the same replica, per request and on a held connection. Each round opens
//! both sides afresh with one connection each, as in `ab.rs`.
//! `cargo bench -p pindb-diesel --features mariadb --bench ab_mariadb`.

use std::time::{Duration, Instant};

use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::AsyncMysqlConnection;
use pindb_testkit::ab::{interleave, report};
use pindb_testkit::MariaDbCluster;

#[macro_use]
mod common;

type PinDb = pindb_diesel::bb8::PinDb<AsyncMysqlConnection>;
type Plain = bb8::Pool<AsyncDieselConnectionManager<AsyncMysqlConnection>>;

const BATCH: u32 = 200;

/// A plain pool of one connection, its statement cache warmed. Over TCP, as pindb's own
/// connections go (mysql_async would move a loopback one to the Unix socket).
async fn plain_pool(url: &str) -> Plain {
    let url = format!("{url}?prefer_socket=false");
    let plain: Plain = bb8::Pool::builder()
        .max_size(1)
        .build(AsyncDieselConnectionManager::<AsyncMysqlConnection>::new(
            url,
        ))
        .await
        .unwrap();
    let mut conn = plain.get().await.unwrap();
    find_42!(&mut *conn);
    drop(conn);
    plain
}

/// A routed `PinDb` over pools of one connection, its replica's statement cache warmed.
async fn routed_db(config: &pindb_core::Config) -> PinDb {
    let db = PinDb::from_config(config.clone()).unwrap();
    pindb_core::scope(async {
        find_42!(&mut db.get());
    })
    .await;
    db
}

async fn plain_per_request(url: &str) -> Duration {
    let plain = plain_pool(url).await;
    let start = Instant::now();
    for _ in 0..BATCH {
        let mut conn = plain.get().await.unwrap();
        find_42!(&mut *conn);
    }
    start.elapsed()
}

async fn routed_per_request(config: &pindb_core::Config) -> Duration {
    let db = routed_db(config).await;
    let start = Instant::now();
    for _ in 0..BATCH {
        pindb_core::scope(async {
            let mut conn = db.get();
            find_42!(&mut conn);
        })
        .await;
    }
    start.elapsed()
}

async fn plain_held(url: &str) -> Duration {
    let plain = plain_pool(url).await;
    let mut conn = plain.get().await.unwrap();
    let start = Instant::now();
    for _ in 0..BATCH {
        find_42!(&mut *conn);
    }
    start.elapsed()
}

async fn routed_held(config: &pindb_core::Config) -> Duration {
    let db = routed_db(config).await;
    pindb_core::scope(async {
        let mut conn = db.get();
        conn.checkout_for_read().await.unwrap();
        let start = Instant::now();
        for _ in 0..BATCH {
            find_42!(&mut conn);
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
    let body = async {
        let cluster = MariaDbCluster::from_env();
        cluster.bench_users();
        let url = cluster.replica_url(1).to_owned();
        let mut config =
            pindb_core::Config::single_set(cluster.master_url(), [cluster.replica_url(1)]);
        // One connection per pool on both sides.
        for settings in config.masters.values_mut() {
            settings.max_size = Some(1);
        }
        for replica in config.sets.values_mut().flatten() {
            replica.max_size = Some(1);
        }
        let (url, config) = (&url, &config);
        let (p, r) = interleave(
            BATCH,
            || plain_per_request(url),
            || routed_per_request(config),
        )
        .await;
        report("MariaDB, per request", &p, &r);
        let (p, r) = interleave(BATCH, || plain_held(url), || routed_held(config)).await;
        report("MariaDB, held connection", &p, &r);
    };
    // On the runtime's worker, as a server's handlers run.
    rt.block_on(rt.spawn(body)).unwrap();
}
