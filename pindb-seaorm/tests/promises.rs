#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
//! Promises that hold at every instant, hunted through SeaORM on the real cluster (the same
//! hunts as pindb-diesel's `promises`, from `pindb_testkit`): reads never go back in time
//! within a context, and no replica serves a read staler than `max_lag_ms` at that instant.

use std::time::Duration;

use pindb_core::{Config, Lsn, RouterMode};
use pindb_seaorm::PinDb;
use pindb_testkit::{monitor_started, monotonic_hunt, staleness_hunt, ticker_world};
use sea_orm::{ConnectionTrait, DbBackend, Statement};

/// The ticker, whether a standby served it, and its replay position.
async fn seen(db: &PinDb) -> (i64, bool, Option<Lsn>) {
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT n, pg_is_in_recovery() AS standby, \
             pg_last_wal_replay_lsn()::text AS replay FROM ticker",
        ))
        .await
        .unwrap()
        .unwrap();
    let replay: Option<String> = row.try_get("", "replay").unwrap();
    (
        row.try_get("", "n").unwrap(),
        row.try_get("", "standby").unwrap(),
        replay.as_deref().and_then(Lsn::parse),
    )
}

async fn started(config: Config) -> PinDb {
    let db = PinDb::connect(config).await.unwrap();
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
            let mut seen_all = Vec::new();
            for _ in 0..4 {
                let (n, standby, _) = seen(&db).await;
                seen_all.push((n, standby));
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            seen_all
        }
    };
    let hunt = monotonic_hunt(&w.cluster, db.router(), context, Duration::from_secs(8)).await;
    eprintln!("monotonic hunt (SeaORM): {hunt:?}");
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
async fn no_replica_serves_a_read_staler_than_max_lag_ms() {
    let (w, ticker) = ticker_world(Duration::from_millis(2)).await;
    for interval_ms in [250, 50] {
        let mut config = w.config(RouterMode::Greedy, &[1, 2]);
        config.monitor.interval_ms = interval_ms;
        config.monitor.max_lag_ms = 400;
        let db = started(config).await;
        let reader = db.clone();
        let read = move || {
            let db = reader.clone();
            async move {
                let (_, standby, replay) = seen(&db).await;
                (standby, replay)
            }
        };
        let hunt = staleness_hunt(
            &w.cluster,
            read,
            Duration::from_millis(400),
            Duration::from_secs(5),
        )
        .await;
        eprintln!("staleness hunt (SeaORM), interval {interval_ms} ms, max_lag_ms 400: {hunt:?}");
        assert!(
            hunt.replica_reads > 100,
            "interval {interval_ms} ms: {hunt:?}"
        );
        assert_eq!(
            hunt.violations, 0,
            "interval {interval_ms} ms: replica reads over 400 ms stale: {hunt:?}"
        );
    }
    drop(ticker);
    w.finish().await;
}
