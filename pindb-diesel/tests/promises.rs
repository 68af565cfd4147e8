#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
//! Promises that hold at every instant, hunted through diesel-async on the real cluster with
//! closed-loop readers (`pindb_testkit::monotonic_hunt`, `staleness_hunt`): reads never go
//! back in time within a context while switches flip and replicas lag, and a replica serves a
//! read only when its staleness then is within the bound (measured against the primary's
//! position sampled every 2 ms, independently of pindb).

use std::time::Duration;

use diesel::sql_types::{BigInt, Bool, Nullable, Text};
use diesel::QueryableByName;
use pindb_core::{Config, Hint, Lsn, RouterMode};
use pindb_diesel::bb8::PinDb;
use pindb_testkit::{monitor_started, monotonic_hunt, staleness_hunt, ticker_world};

#[derive(QueryableByName)]
struct Seen {
    #[diesel(sql_type = BigInt)]
    n: i64,
    #[diesel(sql_type = Bool)]
    standby: bool,
    #[diesel(sql_type = Nullable<Text>)]
    replay: Option<String>,
}

/// The ticker and where it was read, on `conn` (a routed connection or a pooled one).
async fn seen<C>(conn: &mut C) -> Seen
where
    C: diesel_async::AsyncConnection<Backend = diesel::pg::Pg> + Send,
{
    use diesel_async::RunQueryDsl as _;
    diesel::sql_query(
        "SELECT n, pg_is_in_recovery() AS standby, \
         pg_last_wal_replay_lsn()::text AS replay FROM ticker",
    )
    .get_result(conn)
    .await
    .unwrap()
}

async fn started(config: Config) -> PinDb {
    let db = PinDb::from_router(pindb_core::Router::new(config).unwrap()).unwrap();
    monitor_started(db.router()).await;
    db
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_context_sees_the_ticker_go_down_while_switches_flip() {
    let (w, ticker) = ticker_world(Duration::from_millis(3)).await;
    let mut config = w.config(RouterMode::Greedy, &[1, 2]);
    config.monitor.interval_ms = 50;
    config.monitor.max_lag_ms = 150;
    let db = started(config).await;
    let reader = db.clone();
    let context = move || {
        let db = reader.clone();
        async move {
            let mut conn = db.get();
            let mut seen_all = Vec::new();
            for _ in 0..4 {
                let s = seen(&mut conn).await;
                seen_all.push((s.n, s.standby));
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            seen_all
        }
    };
    let hunt = monotonic_hunt(&w.cluster, db.router(), context, Duration::from_secs(8)).await;
    eprintln!("monotonic hunt (diesel-async): {hunt:?}");
    assert!(
        hunt.replica_reads > 100,
        "the hunt must read replicas too: {hunt:?}"
    );
    assert_eq!(
        hunt.violations, 0,
        "contexts that saw the ticker go down: {hunt:?}"
    );
    drop((db, ticker));
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_replica_serves_a_read_staler_than_its_bound() {
    let (w, ticker) = ticker_world(Duration::from_millis(2)).await;
    for interval_ms in [250, 50] {
        let mut config = w.config(RouterMode::Greedy, &[1, 2]);
        config.monitor.interval_ms = interval_ms;
        config.monitor.max_lag_ms = 400;
        let db = started(config).await;
        for (hint, bound) in [
            (
                Hint::default().with_max_staleness(Duration::from_millis(200)),
                200,
            ),
            (Hint::default(), 400),
        ] {
            let reader = db.clone();
            let read = move || {
                let db = reader.clone();
                async move {
                    let s = seen(&mut *db.read_with(&hint).await.unwrap()).await;
                    (s.standby, s.replay.as_deref().and_then(Lsn::parse))
                }
            };
            let hunt = staleness_hunt(
                &w.cluster,
                read,
                Duration::from_millis(bound),
                Duration::from_secs(5),
            )
            .await;
            eprintln!("staleness hunt (diesel-async), interval {interval_ms} ms, bound {bound} ms: {hunt:?}");
            assert!(
                hunt.replica_reads > 100,
                "interval {interval_ms} ms: {hunt:?}"
            );
            assert_eq!(
                hunt.violations, 0,
                "interval {interval_ms} ms: replica reads over {bound} ms stale: {hunt:?}"
            );
        }
    }
    drop(ticker);
    w.finish().await;
}
