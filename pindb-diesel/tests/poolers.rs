#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
//! pindb behind PgBouncer (the dev cluster's, `scripts/cluster up`): its own connections work
//! through transaction pooling, its read-only safety net leaves no session state behind, and
//! a setup where the net cannot hold is refused at start-up with the fix.

use std::time::Duration;

use pindb_core::{Config, Context, Hint, Router};
use pindb_diesel::bb8::PinDb;
use pindb_testkit::{connect, wait_until, Cluster};

fn pooled_config(c: &Cluster, session: bool) -> Config {
    Config::single_set(
        c.pooled_url(0, session),
        [c.pooled_url(1, session), c.pooled_url(2, session)],
    )
}

#[tokio::test]
async fn pindbs_own_connections_work_through_transaction_pooling() {
    let c = Cluster::from_env();
    // Exclusive: the tests of this file share PgBouncer's small pools (and replay flows).
    let _alone = c.exclusive().await;
    let mut config = pooled_config(&c, false);
    // sqlx's advice for poolers, in a config shared with SeaORM: not pindb's to parse.
    config
        .masters
        .get_mut("default")
        .unwrap()
        .options
        .insert("statement-cache-capacity".to_owned(), "0".to_owned());
    config.monitor.interval_ms = 20;
    // Roomy for a check through the pooler on a loaded machine.
    config.monitor.check_timeout_ms = 2_000;
    let router = Router::new(config).unwrap();
    let warnings = router.start_monitor().await.unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    // Many rounds of checks through shared server connections, then both replicas are up
    // and fresh (however late a loaded machine made the checks).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let fine = |alias: &str| {
        let status = router.topology().replica_status(alias).unwrap().unwrap();
        status.up && !status.over_lag && status.replay_lsn.0 > 0
    };
    wait_until(
        "the monitor finds both replicas up and fresh through the pooler",
        Duration::from_secs(10),
        || fine("default-1") && fine("default-2"),
    )
    .await;
    // A keyed context that pinned the set: its position, read through the pooler at its end,
    // reaches the key's next context.
    let consistency = router.consistency().clone();
    consistency
        .scope_with_key(Some("pooled"), async { router.pin("default").unwrap() })
        .await;
    let required = consistency
        .scope_with_key(Some("pooled"), async {
            Context::current().unwrap().required()
        })
        .await;
    assert_eq!(required.len(), 1, "the position was recorded: {required:?}");
    assert_eq!(
        router.db_for_read(&Hint::default()).unwrap().role,
        pindb_core::Role::Replica,
        "replicas serve reads"
    );
}

#[tokio::test]
async fn emulated_replicas_behind_a_transaction_pooler_are_refused_at_start_up() {
    // The emulated replica is the master opened read-only by a startup parameter, which
    // PgBouncer refuses: a session SET instead would stick to a server connection that the
    // master's own writes then get ("cannot execute UPDATE in a read-only transaction").
    let c = Cluster::from_env();
    let mut config = Config::single_set(c.pooled_url(0, false), Vec::<String>::new());
    config.emulate_replicas = 1;
    let router = Router::new(config).unwrap();
    let e = router.start_monitor().await.unwrap_err().to_string();
    assert!(
        e.contains("default-1") && e.contains("startup parameter") && e.contains("directly"),
        "{e}"
    );
}

#[tokio::test]
async fn replica_reads_leave_no_session_state_on_a_shared_server_connection() {
    let c = Cluster::from_env();
    // Alone on PgBouncer's pools.
    let _alone = c.exclusive().await;
    let mut config = pooled_config(&c, false);
    config.masters.get_mut("default").unwrap().max_size = Some(1);
    config.monitor.interval_ms = 5_000;
    config.monitor.max_lag_ms = 5_000;
    let db = PinDb::from_router(Router::builder(config).build().unwrap()).unwrap();
    db.router().start_monitor().await.unwrap();
    wait_until("a replica serves reads", Duration::from_secs(10), || {
        db.router().db_for_read(&Hint::default()).unwrap().role == pindb_core::Role::Replica
    })
    .await;
    // Connections made and checked out (bb8 checks each with a simple-protocol `SELECT 1`);
    // no statement of diesel-async's own, which names its statements (the README's table).
    for _ in 0..5 {
        let conn = pindb_core::scope(async { db.read().await.unwrap() }).await;
        drop(conn);
    }
    // Another client of the same PgBouncer databases gets those server connections.
    for node in [1, 2] {
        let other = connect(&c.pooled_url(node, false)).await;
        for _ in 0..5 {
            let rows = other
                .simple_query("SHOW default_transaction_read_only")
                .await
                .unwrap();
            let value = rows.iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            });
            assert_eq!(
                value.as_deref(),
                Some("off"),
                "replica {node}: pindb's pool left its session state on a server connection"
            );
        }
    }
}

#[tokio::test]
async fn a_replica_url_that_reaches_several_servers_is_refused_at_start_up() {
    // Both standbys behind one round-robin endpoint, configured as one replica: the monitor
    // would measure whichever its connection reached while reads land on both.
    let c = Cluster::from_env();
    let hostport = |url: &str| {
        url.split('@')
            .nth(1)
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_owned()
    };
    let (r1, r2) = (hostport(c.replica_url(1)), hostport(c.replica_url(2)));
    let endpoint = pindb_testkit::Proxy::round_robin(&[&r1, &r2]).await;
    let url = c
        .replica_url(1)
        .replace(&r1, &format!("127.0.0.1:{}", endpoint.port()));
    let router = Router::new(Config::single_set(c.primary_url.clone(), [url])).unwrap();
    let e = router.start_monitor().await.unwrap_err().to_string();
    assert!(
        e.contains("default-1")
            && e.contains("several servers")
            && e.contains(&r1)
            && e.contains(&r2)
            && e.contains("servers = ["),
        "{e}"
    );
}

#[derive(diesel::QueryableByName)]
struct Last {
    #[diesel(sql_type = diesel::sql_types::Text)]
    body: String,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    standby: bool,
}

/// Both replicas behind a round-robin endpoint, declared with `servers`, for a role that does
/// not exist; `shape` adjusts the replica's settings.
async fn refused_behind_an_endpoint(
    shape: impl FnOnce(&mut pindb_core::DatabaseSettings),
) -> (pindb_testkit::Proxy, Config) {
    let c = Cluster::from_env();
    let (r1, r2) = (
        pindb_testkit::address(c.replica_url(1)),
        pindb_testkit::address(c.replica_url(2)),
    );
    let endpoint = pindb_testkit::Proxy::round_robin(&[&r1, &r2]).await;
    let through = pindb_testkit::with_address(
        &c.replica_url(1)
            .replacen("://pindb@", "://no_such_role@", 1),
        &format!("127.0.0.1:{}", endpoint.port()),
    );
    let mut replica = pindb_core::DatabaseSettings {
        servers: vec![r1, r2],
        ..pindb_core::DatabaseSettings::from_url(through)
    };
    shape(&mut replica);
    let mut config = Config::single_set(c.primary_url.clone(), Vec::<String>::new());
    config.sets.insert("default".to_owned(), vec![replica]);
    (endpoint, config)
}

/// A login the servers behind an endpoint refuse (a role that does not exist) ends the search
/// for a declared server at once: the servers share their users, so trying the 64 connections
/// a search allows would repeat a failed login 64 times per checkout and per monitor check
/// (609 a second were seen). The error is the server's own.
#[tokio::test]
async fn a_login_refused_behind_an_endpoint_is_not_repeated() {
    let (endpoint, mut config) = refused_behind_an_endpoint(|_| {}).await;
    config.monitor.interval_ms = 100;
    let router = Router::new(config).unwrap();
    let _ = router.start_monitor().await;
    let before = endpoint.accepted();
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let made = endpoint.accepted() - before;
    let status = router.status().await;
    let refused = status.iter().find(|s| s.alias == "default-1.1").unwrap();
    let e = refused.error.clone().unwrap_or_default();
    assert!(e.contains("no_such_role"), "{refused:?}");
    // Two servers checked every 100 ms, one connection each: about 20, not 64 times that.
    assert!(made < 50, "{made} connections through the endpoint in 1 s");
}

/// A checkout from the pool of a server behind an endpoint whose login is refused: each of
/// the pool's searches ends at its first refusal, so a checkout repeats the failed login only
/// as often as bb8 retries a connection (with pindb's diagnosis, about 5 in 2 s), not four
/// times per retry (14 were seen).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_behind_an_endpoint_repeats_a_refused_login_only_as_the_pool_retries() {
    let (endpoint, config) = refused_behind_an_endpoint(|replica| {
        replica.connect_timeout_ms = Some(2_000);
        replica.min_idle = Some(0);
    })
    .await;
    let db = PinDb::from_router(Router::new(config).unwrap()).unwrap();
    let before = endpoint.accepted();
    let read = pindb_core::scope(db.read_with(&Hint::alias("default-1.2"))).await;
    let made = endpoint.accepted() - before;
    let e = read.err().expect("refused").to_string();
    assert!(e.contains("no_such_role"), "{e}");
    assert!(
        made <= 8,
        "{made} logins through the endpoint for one checkout"
    );
}

#[tokio::test]
async fn no_keyed_read_is_stale_through_pgbouncer_session_mode() {
    use diesel_async::RunQueryDsl as _;
    // PgBouncer refuses the `search_path` startup option the other tests use: tables are named
    // with their schema here.
    let mut w = pindb_testkit::Fixture::new(
        "CREATE TABLE {schema}.notes (id serial PRIMARY KEY, body text NOT NULL);",
    )
    .await;
    let mut config = pooled_config(&w.cluster, true);
    config.monitor.interval_ms = 20;
    config.stickiness.max_wait_ms = 20;
    let db = PinDb::from_router(Router::new(config).unwrap()).unwrap();
    pindb_testkit::monitor_started(db.router()).await;
    let table = format!("{}.notes", w.schema.name);
    let write = async |body: &str| {
        diesel::sql_query(format!("INSERT INTO {table} (body) VALUES ($1)"))
            .bind::<diesel::sql_types::Text, _>(body)
            .execute(&mut db.get())
            .await
            .unwrap();
    };
    let read = async || {
        let last: Last = diesel::sql_query(format!(
            "SELECT body, pg_is_in_recovery() AS standby FROM {table} ORDER BY id DESC LIMIT 1"
        ))
        .get_result(&mut db.get())
        .await
        .unwrap();
        (last.body, last.standby)
    };
    pindb_testkit::keyed_rounds(db.router(), &mut w.control, 300, write, read).await;
    drop(db);
    w.finish().await;
}
