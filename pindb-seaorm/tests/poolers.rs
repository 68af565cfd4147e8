#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
//! SeaORM behind the dev cluster's PgBouncer with its stock settings: reads reach the
//! replicas (a streaming standby needs no startup parameter, which PgBouncer refuses), and a
//! keyed read never sees a replica that lacks the key's write.

use std::time::Duration;

use pindb_core::Config;
use pindb_seaorm::PinDb;
use pindb_testkit::{wait_until, Cluster};
use sea_orm::{ConnectionTrait, DbBackend, Statement};

async fn on_replica(db: &PinDb) -> bool {
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT pg_is_in_recovery() AS standby",
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get("", "standby").unwrap()
}

#[tokio::test]
async fn seaorm_behind_pgbouncer_reads_from_replicas() {
    let c = Cluster::from_env();
    let _flowing = c.shared().await;
    // Session mode: sqlx names its statements even with no statement cache, which a
    // transaction pooler may split across server connections (the README's table).
    for session in [true] {
        let mut config = Config::single_set(
            c.pooled_url(0, session),
            [c.pooled_url(1, session), c.pooled_url(2, session)],
        );
        // sqlx's advice for a transaction pooler (its own prepared statements).
        config
            .masters
            .get_mut("default")
            .unwrap()
            .options
            .insert("statement-cache-capacity".to_owned(), "0".to_owned());
        // Roomy for a check through the pooler on a loaded machine.
        config.monitor.check_timeout_ms = 2_000;
        let db = PinDb::connect(config).await.unwrap();
        let warnings = db.router().start_monitor().await.unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        // Both replicas in rotation first (the first checks may outlast start_monitor's
        // wait): the reads below measure where they go, not how soon the monitor answered.
        let router = db.router().clone();
        let in_rotation = |alias: &str| {
            let status = router.topology().replica_status(alias).unwrap().unwrap();
            status.up && !status.over_lag
        };
        wait_until(
            "the monitor finds both replicas up and fresh",
            Duration::from_secs(10),
            || in_rotation("default-1") && in_rotation("default-2"),
        )
        .await;
        let mut replica = 0;
        for _ in 0..40 {
            if pindb_core::scope(on_replica(&db)).await {
                replica += 1;
            }
        }
        let mode = if session { "session" } else { "transaction" };
        assert!(
            replica >= 36,
            "{mode} mode: {replica} of 40 reads on replicas"
        );
        wait_until(
            "the monitor still sees both replicas",
            Duration::from_secs(5),
            || {
                ["default-1", "default-2"]
                    .iter()
                    .all(|a| router.topology().replica_status(a).unwrap().unwrap().up)
            },
        )
        .await;
    }
}

#[tokio::test]
async fn no_keyed_read_is_stale_through_pgbouncer_session_mode() {
    // PgBouncer refuses the `search_path` startup option the other tests use: tables are named
    // with their schema here.
    let mut w = pindb_testkit::Fixture::new(
        "CREATE TABLE {schema}.notes (id serial PRIMARY KEY, body text NOT NULL);",
    )
    .await;
    let c = w.cluster.clone();
    let mut config = Config::single_set(
        c.pooled_url(0, true),
        [c.pooled_url(1, true), c.pooled_url(2, true)],
    );
    config.monitor.interval_ms = 20;
    config.stickiness.max_wait_ms = 20;
    let db = PinDb::connect(config).await.unwrap();
    pindb_testkit::monitor_started(db.router()).await;
    let table = format!("{}.notes", w.schema.name);
    let write = async |body: &str| {
        db.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            format!("INSERT INTO {table} (body) VALUES ($1)"),
            [body.into()],
        ))
        .await
        .unwrap();
    };
    let read = async || {
        let row = db
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                format!(
                    "SELECT body, pg_is_in_recovery() AS standby FROM {table} \
                     ORDER BY id DESC LIMIT 1"
                ),
            ))
            .await
            .unwrap()
            .unwrap();
        let body: String = row.try_get("", "body").unwrap();
        (body, row.try_get::<bool>("", "standby").unwrap())
    };
    pindb_testkit::keyed_rounds(db.router(), &mut w.control, 300, write, read).await;
    drop(db);
    w.finish().await;
}
