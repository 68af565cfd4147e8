#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
//! `PinDb` over the dev cluster's MariaDB set (`scripts/cluster up`): SeaORM's own statements
//! routed by pindb, strict mode refusing every kind of unpinned write, a read a replica
//! refuses retried on the master, transactions, and the keyed stale-read hunt while the
//! replicas stop and start applying.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pindb_core::{scope, Config, Reason, RouterMode};
use pindb_seaorm::PinDb;
use pindb_testkit::MariaDbCluster;
use sea_orm::{AccessMode, ConnectionTrait, DbBackend, Statement, TransactionTrait};

fn config(cluster: &MariaDbCluster, mode: RouterMode) -> Config {
    let mut config = Config::single_set(
        cluster.master_url(),
        [cluster.replica_url(1), cluster.replica_url(2)],
    );
    config.monitor.interval_ms = 100;
    config.router = mode;
    config
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("the helper ran")
}

fn sql(text: &str) -> Statement {
    Statement::from_string(DbBackend::MySql, text)
}

/// A table of `users` rows, replicated everywhere; its name.
async fn fresh_table(cluster: &MariaDbCluster, users: u64) -> String {
    let table = format!("seaorm_{}", fastrand::u32(..));
    let (c, t) = (cluster.clone(), table.clone());
    blocking(move || {
        let rows: Vec<String> = (0..users).map(|u| format!("({u}, 0)")).collect();
        c.query_as_app(
            0,
            &format!(
                "CREATE TABLE {t} (user_id BIGINT PRIMARY KEY, n BIGINT NOT NULL); \
                 INSERT INTO {t} VALUES {}; CREATE SEQUENCE IF NOT EXISTS {t}_seq",
                rows.join(", ")
            ),
        )
        .expect("the table");
        // A function that writes, made by the admin (with a binary log, only SUPER may make one,
        // and only one declared DETERMINISTIC: a lie that does not matter here), but
        // run with the caller's rights, so a read_only replica refuses it to the application.
        c.query(
            0,
            &format!(
                "DELIMITER //\n\
                 CREATE FUNCTION {t}_bump() RETURNS BIGINT DETERMINISTIC MODIFIES SQL DATA SQL SECURITY INVOKER \
                 BEGIN UPDATE {t} SET n = n + 1 WHERE user_id = 0; RETURN 1; END//\n\
                 DELIMITER ;"
            ),
        )
        .expect("the function");
        c.sync_replicas();
    })
    .await;
    table
}

/// Which server answered `text` (it selects `@@server_id`): 1 is the master
/// (`scripts/mariadb` numbers them 1, 2, 3).
async fn server_id(db: &PinDb, text: &str) -> u64 {
    let row = db.query_one_raw(sql(text)).await.unwrap().expect("a row");
    row.try_get::<u64>("", "@@server_id").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_are_routed_and_strict_mode_refuses_every_unpinned_write() {
    let cluster = MariaDbCluster::from_env();
    let c = cluster.clone();
    let _apply = blocking(move || c.shared()).await;
    let table = fresh_table(&cluster, 2).await;
    let db = PinDb::connect(config(&cluster, RouterMode::Strict))
        .await
        .unwrap();
    db.router()
        .start_monitor()
        .await
        .expect("the topology is right");
    assert_eq!(db.get_database_backend(), DbBackend::MySql);
    scope(async {
        let id = server_id(
            &db,
            &format!("SELECT `n`, @@server_id FROM `{table}` WHERE `user_id` = 1"),
        )
        .await;
        assert_ne!(id, 1, "a read goes to a replica");
        let writes = [
            format!("INSERT INTO `{table}` (`user_id`, `n`) VALUES (9, 0)"),
            format!("UPDATE `{table}` SET `n` = 1"),
            format!("DELETE FROM `{table}` WHERE `user_id` = 9"),
            format!("REPLACE INTO `{table}` VALUES (1, 0)"),
            format!("SELECT * FROM `{table}` FOR UPDATE"),
            format!("SELECT * FROM `{table}` LOCK IN SHARE MODE"),
            format!("SELECT NEXTVAL({table}_seq)"),
            format!("SELECT NEXT VALUE FOR {table}_seq"),
            format!("SELECT 1 /*! , NEXTVAL({table}_seq) */"),
            format!("SELECT `n` INTO @x FROM `{table}` LIMIT 1"),
            "SELECT @x := 1".to_owned(),
            "SELECT GET_LOCK('pindb', 0)".to_owned(),
            "SELECT LAST_INSERT_ID()".to_owned(),
            "SET @x = 1".to_owned(),
            "DO 1".to_owned(),
        ];
        for write in &writes {
            let refused = db.execute_raw(sql(write)).await.unwrap_err();
            assert!(
                pindb_seaorm::is_unpinned_write(&refused),
                "{write}: {refused}"
            );
        }
        // Under `master()` the same statements run, on the master.
        let guard = db.router().master("default").unwrap();
        db.execute_raw(sql(&format!(
            "UPDATE `{table}` SET `n` = 2 WHERE `user_id` = 1"
        )))
        .await
        .unwrap();
        let id = server_id(
            &db,
            &format!("SELECT `n`, @@server_id FROM `{table}` LIMIT 1"),
        )
        .await;
        assert_eq!(id, 1);
        // Transactions: on the master.
        let txn = db.begin().await.unwrap();
        let row = txn
            .query_one_raw(sql("SELECT @@server_id"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.try_get_by_index::<u64>(0).unwrap(), 1);
        txn.commit().await.unwrap();
        drop(guard);
    })
    .await;
    // Read-only transactions on a replica.
    scope(async {
        let txn = db
            .begin_with_config(None, Some(AccessMode::ReadOnly))
            .await
            .unwrap();
        let row = txn
            .query_one_raw(sql("SELECT @@server_id"))
            .await
            .unwrap()
            .unwrap();
        assert_ne!(row.try_get_by_index::<u64>(0).unwrap(), 1);
        txn.commit().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_the_replica_refuses_runs_on_the_master_and_is_learned() {
    let cluster = MariaDbCluster::from_env();
    let c = cluster.clone();
    let _apply = blocking(move || c.shared()).await;
    let table = fresh_table(&cluster, 1).await;
    let db = PinDb::connect(config(&cluster, RouterMode::Greedy))
        .await
        .unwrap();
    db.router()
        .start_monitor()
        .await
        .expect("the topology is right");
    // A stored function that writes looks like a read; the read_only replica refuses it.
    let call = format!("SELECT {table}_bump(), @@server_id");
    scope(async {
        let id = server_id(&db, &call).await;
        assert_eq!(id, 1, "retried on the master");
    })
    .await;
    assert_eq!(
        db.router().explain_sql(&call).unwrap().reason,
        Reason::ReplicaRefused
    );
    let (c, t) = (cluster.clone(), table.clone());
    let n = blocking(move || {
        c.query(0, &format!("SELECT n FROM {t} WHERE user_id = 0"))
            .unwrap()
    })
    .await;
    assert_eq!(n.trim(), "1", "it ran once");
}

/// Each user waits for its last request (closed loop): it writes, then reads its row back in
/// the next keyed context, while one replica's SQL thread stops or starts every 50-400 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stale_keyed_read_through_seaorm_while_replicas_stop_and_start_applying() {
    let cluster = MariaDbCluster::from_env();
    hunt("SeaORM", config(&cluster, RouterMode::Greedy)).await;
}

/// The same through a reader endpoint (`servers`): each server's sqlx pool keeps only the
/// connections that reached it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stale_keyed_read_through_a_reader_endpoint_with_seaorm() {
    let cluster = MariaDbCluster::from_env();
    let (endpoint, replica) = cluster.reader_endpoint().await;
    let mut config = config(&cluster, RouterMode::Greedy);
    config.sets.insert("default".to_owned(), vec![replica]);
    hunt("SeaORM through a reader endpoint", config).await;
    assert!(endpoint.accepted() > 0, "nothing went through the endpoint");
}

/// The keyed hunt: 6 users in closed loops for 6 s, each writing then reading its row back
/// in a new keyed context, while one replica's SQL thread stops or starts every 50-400 ms.
async fn hunt(adapter: &str, config: Config) {
    const USERS: u64 = 6;
    let cluster = MariaDbCluster::from_env();
    let c = cluster.clone();
    let apply = blocking(move || c.exclusive()).await;
    let table = fresh_table(&cluster, USERS).await;
    let db = PinDb::connect(config).await.unwrap();
    db.router()
        .start_monitor()
        .await
        .expect("the topology is right");
    let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let end = Instant::now() + Duration::from_secs(6);
    let flipper = tokio::task::spawn_blocking(move || apply.flip_until(end));
    let users = (0..USERS).map(|user| {
        let (db, table, counts) = (db.clone(), table.clone(), Arc::clone(&counts));
        tokio::spawn(async move {
            let key = format!("user:{user}");
            let consistency = db.router().consistency().clone();
            let mut n = 0u64;
            while Instant::now() < end {
                n += 1;
                let update = format!("UPDATE `{table}` SET `n` = {n} WHERE `user_id` = {user}");
                consistency
                    .scope_with_key(Some(&key), async {
                        db.execute_raw(sql(&update)).await.unwrap()
                    })
                    .await;
                let select =
                    format!("SELECT `n`, @@server_id FROM `{table}` WHERE `user_id` = {user}");
                let (seen, id) = consistency
                    .scope_with_key(Some(&key), async {
                        let row = db.query_one_raw(sql(&select)).await.unwrap().unwrap();
                        (
                            row.try_get_by_index::<i64>(0).unwrap(),
                            row.try_get_by_index::<u64>(1).unwrap(),
                        )
                    })
                    .await;
                counts[0].fetch_add(1, Ordering::Relaxed);
                if id != 1 {
                    counts[1].fetch_add(1, Ordering::Relaxed);
                }
                if seen != n as i64 {
                    counts[2].fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    });
    for user in futures_util::future::join_all(users).await {
        user.expect("a user failed");
    }
    drop(flipper.await.expect("the flipper ran"));
    let [reads, on_replicas, stale] = [0, 1, 2].map(|i| counts[i].load(Ordering::Relaxed));
    eprintln!("{adapter} on MariaDB: {reads} keyed reads after their writes, {on_replicas} on replicas, {stale} stale");
    assert!(reads > 100, "too few requests to mean anything: {reads}");
    assert_eq!(
        stale, 0,
        "{stale} of {reads} keyed reads missed their own write"
    );
    assert!(
        on_replicas * 5 > reads,
        "only {on_replicas} of {reads} reads on replicas: the promise was kept by the master alone"
    );
}

/// A MariaDB replica behind a proxy that freezes mid-read, or stops: the read in flight is
/// given up once the monitor declares the replica down and is served by the master; later
/// reads go to the master without an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_then_stopped_replica_costs_no_failed_read() {
    let cluster = MariaDbCluster::from_env();
    let c = cluster.clone();
    let _apply = blocking(move || c.shared()).await;
    let target = cluster.replica_url(1).rsplit('@').next().unwrap();
    let proxy = pindb_testkit::Proxy::start(target.split('/').next().unwrap()).await;
    let proxied = format!("mysql://pindb:pindb@127.0.0.1:{}/pindb", proxy.port());
    let mut config = Config::single_set(cluster.master_url(), [proxied.as_str()]);
    config.router = RouterMode::Strict;
    config.monitor.interval_ms = 100;
    // Roomy for a healthy check on a loaded machine; two that time out still declare the
    // frozen replica down in about 2 s, far below what the read would wait (`timeout`).
    config.monitor.check_timeout_ms = 1_000;
    let timeout = config.reads.timeout();
    let db = PinDb::connect(config).await.unwrap();
    db.router()
        .start_monitor()
        .await
        .expect("the topology is right");
    pindb_testkit::monitor_finds_fit(db.router(), "default-1").await;
    // A slow read, so that it is surely in flight on the replica when it freezes.
    let slow = "SELECT SLEEP(0.3) AS slept, @@server_id";
    assert_eq!(
        scope(server_id(&db, slow)).await,
        2,
        "the replica serves it"
    );
    let started = Instant::now();
    let (served, ()) = tokio::join!(scope(server_id(&db, slow)), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        proxy.freeze();
    });
    let took = started.elapsed();
    eprintln!("MariaDB, SeaORM: the read in flight was served after {took:?}");
    assert_eq!(served, 1, "served by the master");
    let status = db
        .router()
        .topology()
        .replica_status("default-1")
        .unwrap()
        .unwrap();
    assert!(!status.up, "the monitor declared it down: {status:?}");
    assert!(
        took < timeout / 3,
        "the read waited {took:?}, as if for reads.timeout_ms ({timeout:?}), although the \
         monitor declared its replica down"
    );
    // Stopped for good: reads go on, on the master.
    proxy.thaw();
    proxy.stop();
    for _ in 0..5 {
        assert_eq!(
            scope(server_id(&db, "SELECT 1 AS one, @@server_id")).await,
            1
        );
    }
}
