#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
//! Read-your-writes across contexts through the SeaORM adapter (the mechanism is pindb-core's;
//! this proves the adapter feeds it: writes pin, keyed reads honour recorded positions).

use std::time::Duration;

use futures_util::StreamExt;
use pindb_core::RouterMode;
use pindb_seaorm::PinDb;
use pindb_testkit::{monitor_saw_replay, Fixture, Gate};
use sea_orm::{ConnectionTrait, DbBackend, Statement, StreamTrait};

async fn names(db: &PinDb) -> (Vec<String>, bool) {
    let rows = db
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT name, pg_is_in_recovery() AS on_replica FROM users ORDER BY id",
        ))
        .await
        .unwrap();
    let on_replica = rows
        .first()
        .map(|r| r.try_get::<bool>("", "on_replica").unwrap())
        .unwrap_or(false);
    (
        rows.iter()
            .map(|r| r.try_get::<String>("", "name").unwrap())
            .collect(),
        on_replica,
    )
}

#[tokio::test]
async fn a_writer_reads_its_write_and_others_read_replicas() {
    let mut f = Fixture::new(
        "CREATE TABLE {schema}.users (id serial PRIMARY KEY, name text NOT NULL);
         INSERT INTO {schema}.users (name) VALUES ('old');",
    )
    .await;
    let mut config = f.config(RouterMode::Greedy, &[1]);
    config.monitor.interval_ms = 20;
    let db = PinDb::connect(config).await.unwrap();
    db.router().start_monitor().await.unwrap();
    f.control.pause(1).await;

    let router = db.router().clone();
    router
        .consistency()
        .scope_with_key(Some("alice"), async {
            db.execute_unprepared("INSERT INTO users (name) VALUES ('mine')")
                .await
                .unwrap();
        })
        .await;
    let (rows, on_replica) = router
        .consistency()
        .scope_with_key(Some("alice"), names(&db))
        .await;
    assert_eq!(
        (rows.as_slice(), on_replica),
        (&["old".to_string(), "mine".to_string()][..], false)
    );
    let (rows, on_replica) = router
        .consistency()
        .scope_with_key(Some("bob"), names(&db))
        .await;
    assert_eq!(
        (rows.as_slice(), on_replica),
        (&["old".to_string()][..], true)
    );

    f.control.resume(1).await;
    let lsn = f.cluster.primary_lsn().await;
    monitor_saw_replay(&router, "default-1", lsn).await;
    let (rows, on_replica) = router
        .consistency()
        .scope_with_key(Some("alice"), names(&db))
        .await;
    assert_eq!(rows.len(), 2);
    assert!(on_replica, "caught up: alice reads the replica");
    f.finish().await;
}

/// A keyed context dropped while its write still runs on the master: the write commits after
/// the drop, and the key must not read from a replica that has everything up to the drop
/// but not that write. sqlx cannot say when a dropped statement is over, so the set's
/// position is recorded as unknown: the key reads it from the master until it expires.
#[tokio::test]
async fn a_keyed_context_dropped_while_its_write_runs_never_reads_without_it() {
    write_cut_in_flight_is_never_missed(false).await;
}

/// The same through `stream_raw`: the write's stream ends out of pindb's sight, so its set's
/// position is unknown whether or not the stream is read to its end.
#[tokio::test]
async fn a_keyed_context_dropped_while_its_streamed_write_runs_never_reads_without_it() {
    write_cut_in_flight_is_never_missed(true).await;
}

/// A slow write (streamed or not) dropped while it waits at a gate the test holds; replica 1
/// has everything up to the drop and stops before the write commits; alice's next reads must
/// see it.
async fn write_cut_in_flight_is_never_missed(stream: bool) {
    let mut f = Fixture::new(
        "CREATE TABLE {schema}.users (id serial PRIMARY KEY, name text NOT NULL);
         INSERT INTO {schema}.users (name) VALUES ('old');
         CREATE TABLE {schema}.flushes (n int);",
    )
    .await;
    let mut config = f.config(RouterMode::Greedy, &[1]);
    config.monitor.interval_ms = 20;
    let db = PinDb::connect(config).await.unwrap();
    db.router().start_monitor().await.unwrap();
    let router = db.router().clone();
    let gate = Gate::close(&f.cluster, &f.schema.name).await;
    let sql = format!(
        "INSERT INTO users (name) SELECT 'mine' FROM {} RETURNING name",
        gate.lock()
    );
    let context = router.consistency().scope_with_key(Some("alice"), async {
        // Commits once the gate opens.
        if stream {
            let statement = Statement::from_string(DbBackend::Postgres, &sql);
            let mut rows = db.stream_raw(statement).await.unwrap();
            while let Some(row) = rows.next().await {
                row.unwrap();
            }
        } else {
            db.execute_unprepared(&sql).await.unwrap();
        }
    });
    // Dropped once the write waits at the gate: sent, unanswered.
    tokio::select! {
        () = context => panic!("the write finished before the drop"),
        () = gate.until_waited_on() => {}
    }
    // Replica 1 has everything the master had at the drop, and stops before the write. A
    // commit of the test's own flushes the master's WAL: all it had at the drop is before
    // `at_drop` (pindb reads `pg_current_wal_insert_lsn()`, which may be ahead of the flush).
    f.on_primary("INSERT INTO {schema}.flushes VALUES (1)")
        .await;
    let at_drop = f.cluster.primary_lsn().await;
    f.cluster.wait_for_replay(1, at_drop).await;
    monitor_saw_replay(&router, "default-1", at_drop).await;
    f.control.pause(1).await;
    let on_primary = || f.primary_column("SELECT name FROM {schema}.users ORDER BY id");
    assert_eq!(
        on_primary().await,
        ["old"],
        "the write committed before the pause"
    );
    gate.open().await;
    wait_until_async(|| async { on_primary().await.len() == 2 }).await;
    for _ in 0..3 {
        let (rows, on_replica) = router
            .consistency()
            .scope_with_key(Some("alice"), names(&db))
            .await;
        assert_eq!(
            rows,
            ["old", "mine"],
            "alice reads her write (replica: {on_replica})"
        );
    }
    f.finish().await;
}

/// Polls `done` every 20 ms for up to 10 s.
async fn wait_until_async<F, Fut>(done: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !done().await {
        assert!(std::time::Instant::now() < deadline, "never happened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
