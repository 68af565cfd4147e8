#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
//! Interleaved A/B: a primary-key SELECT through the routed connection vs. the same query on a
//! plain bb8 checkout of the same replica, in one run. Each round runs both sides (in random
//! order) for `BATCH` requests; the result is the ratio of the medians of the per-request
//! times, with its spread over blocks of rounds, so machine noise between the sides cancels.
//! Needs the dev cluster (`scripts/cluster up`). `cargo bench -p pindb-diesel --bench ab`.
//!
//! - `per request`: one checkout + one query, as a request that reads one row does.
//! - `held connection`: the query alone on a connection already checked out.
//! - `held connection, same server connection`: the same, both sides of a round on one
//!   server connection (the plain side takes it from the routed side's pool with pindb's
//!   explicit read handle, outside the timed part), so where the scheduler put that server
//!   process weighs on both alike.
//!
//! Each round opens both sides afresh with one connection each (outside the timed part): on a
//! 2-core machine a round trip's cost depends on where the scheduler put the server process
//! relative to the client, and that placement sticks to a connection; long-lived pools made
//! the ratio whichever placement each side drew. Fresh connections every round draw again.

use std::time::{Duration, Instant};

use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::AsyncPgConnection;
use pindb_diesel::bb8::PinDb;
use pindb_testkit::ab::{interleave, report};
use pindb_testkit::Cluster;

#[macro_use]
mod common;
type Plain = bb8::Pool<AsyncDieselConnectionManager<AsyncPgConnection>>;

const BATCH: u32 = 200;

/// A plain pool of one connection, its statement cache warmed.
async fn plain_pool(url: &str) -> Plain {
    let plain: Plain = bb8::Pool::builder()
        .max_size(1)
        .build(AsyncDieselConnectionManager::<AsyncPgConnection>::new(url))
        .await
        .unwrap();
    let mut conn = plain.get().await.unwrap();
    find_42!(&mut *conn);
    drop(conn);
    plain
}

/// A routed `PinDb` over pools of one connection, its replica's statement cache warmed.
async fn routed_db(config: &pindb_core::Config) -> PinDb {
    let db = PinDb::new(config.clone()).unwrap();
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
    held_on(routed_db(config).await).await
}

/// `BATCH` queries on a routed connection that holds its replica connection already.
async fn held_on(db: PinDb) -> Duration {
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

/// The `PinDb` of the current round for the same-connection comparison: the first side to run
/// in a round opens a fresh one (a fresh server connection, so a fresh placement), the second
/// side reuses it, so both sides of a round time their queries on the one server connection.
struct Shared {
    calls: u32,
    db: Option<PinDb>,
}

async fn round_db(shared: &std::sync::Mutex<Shared>, config: &pindb_core::Config) -> PinDb {
    let reuse = {
        let mut s = shared.lock().unwrap();
        s.calls += 1;
        match s.calls % 2 {
            0 => s.db.clone(),
            _ => None,
        }
    };
    match reuse {
        Some(db) => db,
        None => {
            let db = routed_db(config).await;
            shared.lock().unwrap().db = Some(db.clone());
            db
        }
    }
}

/// The query alone on the replica pool's one connection, checked out with pindb's explicit
/// read handle: plain diesel-async on the routed side's server connection.
async fn plain_held_same(
    shared: &std::sync::Mutex<Shared>,
    config: &pindb_core::Config,
) -> Duration {
    let db = round_db(shared, config).await;
    let mut conn = pindb_core::scope(db.read()).await.unwrap();
    let start = Instant::now();
    for _ in 0..BATCH {
        find_42!(&mut *conn);
    }
    start.elapsed()
}

async fn routed_held_same(
    shared: &std::sync::Mutex<Shared>,
    config: &pindb_core::Config,
) -> Duration {
    held_on(round_db(shared, config).await).await
}

/// `PINDB_AB_PROFILE=plain|routed`: one side of the held-connection comparison alone, on one
/// connection for `PINDB_AB_SECONDS` (10), so a profiler (`perf record`) sees the queries and
/// nothing else; prints the queries run, to turn samples into time per query.
/// `plain-request|routed-request`: the same per request (a checkout and the query).
async fn profile(side: &str, url: &str, config: &pindb_core::Config) {
    let seconds: u64 = std::env::var("PINDB_AB_SECONDS").map_or(10, |s| {
        s.parse()
            .unwrap_or_else(|e| panic!("PINDB_AB_SECONDS={s}: {e}"))
    });
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut queries = 0u64;
    match side {
        "plain" => {
            let plain = plain_pool(url).await;
            let mut conn = plain.get().await.unwrap();
            while Instant::now() < end {
                find_42!(&mut *conn);
                queries += 1;
            }
        }
        "routed" => {
            let db = routed_db(config).await;
            pindb_core::scope(async {
                let mut conn = db.get();
                conn.checkout_for_read().await.unwrap();
                while Instant::now() < end {
                    find_42!(&mut conn);
                    queries += 1;
                }
            })
            .await;
        }
        "plain-request" => {
            let plain = plain_pool(url).await;
            while Instant::now() < end {
                let mut conn = plain.get().await.unwrap();
                find_42!(&mut *conn);
                queries += 1;
            }
        }
        "routed-request" => {
            let db = routed_db(config).await;
            while Instant::now() < end {
                pindb_core::scope(async {
                    let mut conn = db.get();
                    find_42!(&mut conn);
                })
                .await;
                queries += 1;
            }
        }
        other => panic!(
            "PINDB_AB_PROFILE={other}: expected plain or routed (held), plain-request or \
             routed-request"
        ),
    }
    let per = Duration::from_secs(seconds) / queries.max(1) as u32;
    println!("{side} held: {queries} queries, {per:?} each");
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let body = async {
        let cluster = Cluster::from_env();
        let pindb_testkit::BenchSet {
            schema,
            config,
            replica_url,
        } = pindb_testkit::bench_set(&cluster).await;
        // One connection per pool on both sides.
        let mut config = config;
        for settings in config.masters.values_mut() {
            settings.max_size = Some(1);
        }
        for replica in config.sets.values_mut().flatten() {
            replica.max_size = Some(1);
        }
        let (url, config) = (&replica_url, &config);
        if let Ok(side) = std::env::var("PINDB_AB_PROFILE") {
            profile(&side, url, config).await;
            schema.drop().await;
            return;
        }
        let (p, r) = interleave(
            BATCH,
            || plain_per_request(url),
            || routed_per_request(config),
        )
        .await;
        report("per request", &p, &r);
        let (p, r) = interleave(BATCH, || plain_held(url), || routed_held(config)).await;
        report("held connection", &p, &r);
        // Both sides of a round on one server connection: its placement cancels out.
        let shared = std::sync::Mutex::new(Shared { calls: 0, db: None });
        let (p, r) = interleave(
            BATCH,
            || plain_held_same(&shared, config),
            || routed_held_same(&shared, config),
        )
        .await;
        report("held connection, same server connection", &p, &r);
        schema.drop().await;
    };
    // On the runtime's worker, beside the connections' tasks, as a server's handlers run
    // (not on the thread that blocks on the runtime).
    rt.block_on(rt.spawn(body)).unwrap();
}
