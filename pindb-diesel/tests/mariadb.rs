#![cfg(feature = "mariadb")]
#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
//! diesel-async's `AsyncMysqlConnection` through `PinDb` over the dev cluster's MariaDB set
//! (`scripts/cluster up`): statements routed by pindb, strict mode refusing every kind of
//! unpinned write, a read a replica refuses retried on the master, transactions, the keyed
//! stale-read hunt while the replicas stop and start applying, and a replica that freezes.
//! The diesel twin of `pindb-seaorm/tests/mariadb.rs`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel::sql_types::BigInt;
use diesel_async::{AsyncConnection, AsyncMysqlConnection, RunQueryDsl, SimpleAsyncConnection};
use pindb_core::{scope, Config, Reason, RouterMode};
use pindb_diesel::is_unpinned_write;
use pindb_testkit::{MariaDbCluster, Proxy};

type Db = pindb_diesel::bb8::PinDb<AsyncMysqlConnection>;
type Conn = pindb_diesel::bb8::PinDbConnection<AsyncMysqlConnection>;

/// Which server answered, as a signed column (`@@server_id` is unsigned): `scripts/mariadb`
/// numbers the master 1 and the replicas 2 and 3.
const SERVER_ID: &str = "CAST(@@server_id AS SIGNED) AS id";

/// The table of the typed statements: `diesel::table!` needs its name at compile time, so
/// this one is re-created by name, not named at random like the others.
const ROUTED: &str = "diesel_routed";

diesel::table! {
    diesel_routed (user_id) {
        user_id -> BigInt,
        n -> BigInt,
    }
}

#[derive(Debug, QueryableByName)]
struct ServerId {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

/// A user's `n`, and which server read it.
#[derive(Debug, QueryableByName)]
struct Seen {
    #[diesel(sql_type = BigInt)]
    n: i64,
    #[diesel(sql_type = BigInt)]
    id: i64,
}

fn config(cluster: &MariaDbCluster, mode: RouterMode) -> Config {
    let mut config = Config::single_set(
        cluster.master_url(),
        [cluster.replica_url(1), cluster.replica_url(2)],
    );
    config.monitor.interval_ms = 100;
    config.router = mode;
    config
}

/// A `PinDb` with its monitor started (which also checks the topology).
async fn started(config: Config) -> Db {
    let db = Db::from_config(config).unwrap();
    db.router()
        .start_monitor()
        .await
        .expect("the topology is right");
    db
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("the helper ran")
}

/// Replication left applying for the whole test (no other test stops it meanwhile).
async fn shared_apply(cluster: &MariaDbCluster) -> pindb_testkit::MariaDbSharedApply {
    let c = cluster.clone();
    blocking(move || c.shared()).await
}

fn random_table() -> String {
    format!("diesel_{}", fastrand::u32(..))
}

/// (Re-)creates table `t` with `users` rows `(user, 0)`, a sequence `t_seq` and a function
/// `t_bump()` that writes, and waits until both replicas have them.
async fn fresh_table(cluster: &MariaDbCluster, t: &str, users: i64) {
    let (c, t) = (cluster.clone(), t.to_owned());
    blocking(move || {
        let rows: Vec<String> = (0..users).map(|u| format!("({u}, 0)")).collect();
        c.query_as_app(
            0,
            &format!(
                "CREATE OR REPLACE TABLE {t} (user_id BIGINT PRIMARY KEY, n BIGINT NOT NULL); \
                 INSERT INTO {t} VALUES {}; CREATE OR REPLACE SEQUENCE {t}_seq",
                rows.join(", ")
            ),
        )
        .expect("the table");
        // Made by the admin (with a binary log only SUPER may, and only a DETERMINISTIC one:
        // a lie that does not matter here), run with the caller's rights: a read_only replica
        // refuses it to the application.
        c.query(
            0,
            &format!(
                "DELIMITER //\n\
                 CREATE OR REPLACE FUNCTION {t}_bump() RETURNS BIGINT DETERMINISTIC MODIFIES SQL DATA \
                 SQL SECURITY INVOKER BEGIN UPDATE {t} SET n = n + 1 WHERE user_id = 0; RETURN 1; END//\n\
                 DELIMITER ;"
            ),
        )
        .expect("the function");
        c.sync_replicas();
    })
    .await;
}

/// What the master holds of table `t`: its rows and how far its sequence went.
async fn master_state(cluster: &MariaDbCluster, t: &str) -> String {
    let (c, t) = (cluster.clone(), t.to_owned());
    blocking(move || {
        c.query(
            0,
            &format!(
                "SELECT user_id, n FROM {t} ORDER BY user_id; \
                 SELECT next_not_cached_value FROM {t}_seq"
            ),
        )
        .expect("the master answers")
    })
    .await
}

/// Which server answered `text` (it selects [`SERVER_ID`]).
async fn server_id(db: &Db, text: &str) -> i64 {
    let answer: ServerId = diesel::sql_query(text)
        .get_result(&mut db.get())
        .await
        .unwrap();
    answer.id
}

async fn read_user(conn: &mut Conn, table: &str, user: i64) -> Seen {
    diesel::sql_query(format!(
        "SELECT `n`, {SERVER_ID} FROM `{table}` WHERE `user_id` = ?"
    ))
    .bind::<BigInt, _>(user)
    .get_result(conn)
    .await
    .unwrap()
}

/// What a keyed hunt saw: reads, reads a replica served, reads that missed their own write.
#[derive(Default)]
struct Tally([AtomicU64; 3]);

impl Tally {
    /// One read of a user's row whose last write set it to `written`.
    fn saw(&self, seen: &Seen, written: i64) {
        self.0[0].fetch_add(1, Ordering::Relaxed);
        if seen.id != 1 {
            self.0[1].fetch_add(1, Ordering::Relaxed);
        }
        if seen.n != written {
            self.0[2].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// No stale read, enough reads to mean something, and replicas that served a good share.
    fn check(&self, adapter: &str) {
        let [reads, on_replicas, stale] =
            [0, 1, 2].map(|i| AtomicU64::load(&self.0[i], Ordering::Relaxed));
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
}

/// Asserts that `result` is pindb's refusal of an unpinned write.
fn refused<T>(what: &str, result: QueryResult<T>) {
    match result {
        Ok(_) => panic!("{what}: it ran, but strict mode refuses an unpinned write"),
        Err(e) => assert!(is_unpinned_write(&e), "{what}: {e}"),
    }
}

/// Every kind of write MariaDB has that a raw statement can be, on table `t`: strict mode
/// must refuse each before anything is sent.
fn raw_writes(t: &str) -> Vec<String> {
    vec![
        format!("INSERT INTO `{t}` (`user_id`, `n`) VALUES (9, 0)"),
        format!("UPDATE `{t}` SET `n` = 1"),
        format!("DELETE FROM `{t}` WHERE `user_id` = 9"),
        format!("REPLACE INTO `{t}` VALUES (1, 0)"),
        format!("SELECT * FROM `{t}` FOR UPDATE"),
        format!("SELECT * FROM `{t}` LOCK IN SHARE MODE"),
        format!("SELECT NEXTVAL({t}_seq)"),
        format!("SELECT NEXT VALUE FOR {t}_seq"),
        format!("SELECT 1 /*! , NEXTVAL({t}_seq) */"),
        format!("SELECT `n` INTO @x FROM `{t}` LIMIT 1"),
        "SELECT @x := 1".to_owned(),
        "SELECT GET_LOCK('pindb', 0)".to_owned(),
        "SELECT LAST_INSERT_ID()".to_owned(),
        "SET @x = 1".to_owned(),
        "DO 1".to_owned(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_are_routed_and_strict_mode_refuses_every_unpinned_write() {
    use diesel_routed::dsl::{n, user_id};

    let cluster = MariaDbCluster::from_env();
    let _apply = shared_apply(&cluster).await;
    fresh_table(&cluster, ROUTED, 2).await;
    let db = started(config(&cluster, RouterMode::Strict)).await;
    let before = master_state(&cluster, ROUTED).await;
    scope(async {
        let mut conn = db.get();
        assert_ne!(
            read_user(&mut conn, ROUTED, 1).await.id,
            1,
            "a raw read goes to a replica"
        );
        let typed: i64 = diesel_routed::table
            .select(n)
            .filter(user_id.eq(1))
            .get_result(&mut conn)
            .await
            .unwrap();
        assert_eq!(typed, 0);
        let held = conn.held_aliases();
        assert!(
            held == ["default-1"] || held == ["default-2"],
            "a typed read goes to a replica: {held:?}"
        );

        // A connection of its own: nothing checked out shows that nothing was sent.
        let mut conn = db.get();
        refused(
            "typed INSERT",
            diesel::insert_into(diesel_routed::table)
                .values((user_id.eq(9), n.eq(0)))
                .execute(&mut conn)
                .await,
        );
        refused(
            "typed UPDATE",
            diesel::update(diesel_routed::table)
                .set(n.eq(1))
                .execute(&mut conn)
                .await,
        );
        refused(
            "typed DELETE",
            diesel::delete(diesel_routed::table.filter(user_id.eq(1)))
                .execute(&mut conn)
                .await,
        );
        refused(
            "typed REPLACE",
            diesel::replace_into(diesel_routed::table)
                .values((user_id.eq(1), n.eq(0)))
                .execute(&mut conn)
                .await,
        );
        refused(
            "typed FOR UPDATE",
            diesel_routed::table
                .select(n)
                .for_update()
                .load::<i64>(&mut conn)
                .await,
        );
        for write in &raw_writes(ROUTED) {
            refused(write, diesel::sql_query(write).execute(&mut conn).await);
        }
        refused(
            "a transaction",
            conn.transaction(async |conn| {
                diesel::update(diesel_routed::table)
                    .set(n.eq(5))
                    .execute(conn)
                    .await
            })
            .await,
        );
        assert!(
            conn.held_aliases().is_empty(),
            "refused before any checkout"
        );
        assert_eq!(
            master_state(&cluster, ROUTED).await,
            before,
            "nothing reached the master"
        );

        // Under `master()` writes run, on the master, and so do reads and transactions.
        let guard = db.router().master("default").unwrap();
        let mut conn = db.get();
        diesel::update(diesel_routed::table.filter(user_id.eq(1)))
            .set(n.eq(2))
            .execute(&mut conn)
            .await
            .unwrap();
        assert_eq!(conn.held_aliases(), ["default"]);
        let seen = read_user(&mut conn, ROUTED, 1).await;
        assert_eq!((seen.n, seen.id), (2, 1), "read on the master");
        let in_txn = conn
            .transaction(async |conn| {
                diesel::sql_query(format!("SELECT {SERVER_ID}"))
                    .get_result::<ServerId>(conn)
                    .await
            })
            .await
            .unwrap();
        assert_eq!(in_txn.id, 1, "a transaction runs on the master");
        drop(guard);
    })
    .await;
    // Pinned: a write runs on the master and later reads of the context see it there.
    scope(async {
        db.router().pin("default").unwrap();
        let mut conn = db.get();
        diesel::sql_query(format!("UPDATE `{ROUTED}` SET `n` = 3 WHERE `user_id` = 1"))
            .execute(&mut conn)
            .await
            .unwrap();
        assert_eq!(conn.held_aliases(), ["default"]);
        let seen = read_user(&mut db.get(), ROUTED, 1).await;
        assert_eq!((seen.n, seen.id), (3, 1), "pinned: the master");
    })
    .await;
    // Another context is not pinned: replicas again.
    scope(async { assert_ne!(read_user(&mut db.get(), ROUTED, 1).await.id, 1) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_the_replica_refuses_runs_on_the_master_and_is_learned() {
    let cluster = MariaDbCluster::from_env();
    let _apply = shared_apply(&cluster).await;
    let table = random_table();
    fresh_table(&cluster, &table, 1).await;
    let db = started(config(&cluster, RouterMode::Greedy)).await;
    // A stored function that writes looks like a read; the read_only replica refuses it.
    let call = format!("SELECT {table}_bump() AS bumped, {SERVER_ID}");
    assert_eq!(
        scope(server_id(&db, &call)).await,
        1,
        "retried on the master"
    );
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
async fn no_stale_keyed_read_through_diesel_async_while_replicas_stop_and_start_applying() {
    let cluster = MariaDbCluster::from_env();
    diesel_async_hunt("diesel-async", config(&cluster, RouterMode::Greedy)).await;
}

/// Both replicas behind one round-robin reader endpoint (the testkit's proxy, as HAProxy or
/// a Kubernetes Service would balance them), declared by `server_id`: each is a replica of
/// its own, whose connections are kept only if they reached it, so the keyed hunt holds as
/// with the replicas given directly. Without `servers` the endpoint is refused at start-up
/// (pindb-core's MariaDB tests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stale_keyed_read_through_a_reader_endpoint_while_replicas_stop_and_start_applying() {
    let cluster = MariaDbCluster::from_env();
    let (endpoint, config) = through_endpoint(&cluster).await;
    let aliases: Vec<String> = pindb_core::Router::new(config.clone())
        .unwrap()
        .topology()
        .databases()
        .iter()
        .map(|d| d.alias.clone())
        .collect();
    assert_eq!(aliases, ["default", "default-1.1", "default-1.2"]);
    diesel_async_hunt("diesel-async through a reader endpoint", config).await;
    assert!(endpoint.accepted() > 0, "nothing went through the endpoint");
}

/// One server behind the endpoint stopped, or frozen (it accepts and never answers): an
/// attempt that lands on it is a miss, and the next one is tried, so the other server's pool
/// and monitor go on. Every connection through the endpoint is cut before each checkout, so
/// each opens a new one. Before, one failed attempt failed the whole search.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_down_behind_the_endpoint_costs_the_others_nothing() {
    let cluster = MariaDbCluster::from_env();
    let _apply = shared_apply(&cluster).await;
    let (one, two) = (
        pindb_testkit::address(cluster.replica_url(1)),
        pindb_testkit::address(cluster.replica_url(2)),
    );
    for fault in ["stopped", "frozen"] {
        // Server 2 (`default-1.2`) behind a proxy of its own, to stop or freeze it.
        let inner = Proxy::start(&two).await;
        let outer = Proxy::round_robin(&[&one, &format!("127.0.0.1:{}", inner.port())]).await;
        let (_, mut replica) = cluster.reader_endpoint().await;
        let id: i64 = replica.servers[0].parse().unwrap();
        let through = format!("127.0.0.1:{}", outer.port());
        replica.url = Some(pindb_testkit::with_address(
            cluster.replica_url(1),
            &through,
        ));
        replica.connect_timeout_ms = Some(2_000);
        let mut config = config(&cluster, RouterMode::Greedy);
        config.monitor.check_timeout_ms = 2_000;
        config.sets.insert("default".to_owned(), vec![replica]);
        let db = started(config).await;
        match fault {
            "stopped" => inner.stop(),
            _ => inner.freeze(),
        }
        for round in 0..6 {
            outer.sever();
            let hint = pindb_core::Hint::alias("default-1.1");
            let mut conn = db
                .read_with(&hint)
                .await
                .unwrap_or_else(|e| panic!("{fault}, round {round}: {e}"));
            let seen: ServerId = diesel::sql_query("SELECT CAST(@@server_id AS SIGNED) AS id")
                .get_result(&mut *conn)
                .await
                .unwrap();
            assert_eq!(seen.id, id, "{fault}, round {round}");
        }
        let status = db.router().status().await;
        let healthy = status.iter().find(|s| s.alias == "default-1.1").unwrap();
        assert!(healthy.up, "{fault}: {healthy:?}");
    }
}

/// The replicas behind one round-robin endpoint, declared with `servers` by `server_id`.
async fn through_endpoint(cluster: &MariaDbCluster) -> (pindb_testkit::Proxy, Config) {
    let (endpoint, replica) = cluster.reader_endpoint().await;
    let mut config = config(cluster, RouterMode::Greedy);
    config.sets.insert("default".to_owned(), vec![replica]);
    (endpoint, config)
}

/// The keyed hunt through diesel-async with `config`.
async fn diesel_async_hunt(adapter: &str, config: Config) {
    let cluster = MariaDbCluster::from_env();
    let c = cluster.clone();
    let apply = blocking(move || c.exclusive()).await;
    let table = random_table();
    fresh_table(&cluster, &table, USERS).await;
    let db = started(config).await;
    let update = format!("UPDATE `{table}` SET `n` = ? WHERE `user_id` = ?");
    let (d, t) = (db.clone(), table.clone());
    let write = move |user, n| {
        let (db, update) = (d.clone(), update.clone());
        async move {
            diesel::sql_query(&update)
                .bind::<BigInt, _>(n)
                .bind::<BigInt, _>(user)
                .execute(&mut db.get())
                .await
                .unwrap();
        }
    };
    let d = db.clone();
    let read = move |user| {
        let (db, t) = (d.clone(), t.clone());
        async move { read_user(&mut db.get(), &t, user).await }
    };
    let consistency = db.router().consistency().clone();
    hunt(adapter, consistency, apply, write, read).await;
}

/// Users of the keyed hunts.
const USERS: i64 = 6;

/// The keyed hunt: `USERS` users in closed loops (each waits for its last request) for 6 s,
/// each writing `n` to its row in one keyed context (`write(user, n)`) and reading it back in
/// the next (`read(user)`), while one replica's SQL thread stops or starts every 50-400 ms.
async fn hunt<W, WF, R, RF>(
    adapter: &str,
    consistency: Arc<pindb_core::Consistency>,
    apply: pindb_testkit::MariaDbApplyControl,
    write: W,
    read: R,
) where
    W: Fn(i64, i64) -> WF + Clone + Send + 'static,
    WF: std::future::Future<Output = ()> + Send,
    R: Fn(i64) -> RF + Clone + Send + 'static,
    RF: std::future::Future<Output = Seen> + Send,
{
    let tally = Arc::new(Tally::default());
    let end = Instant::now() + Duration::from_secs(6);
    let flipper = tokio::task::spawn_blocking(move || apply.flip_until(end));
    let users = (0..USERS).map(|user| {
        let (write, read, tally) = (write.clone(), read.clone(), Arc::clone(&tally));
        let consistency = Arc::clone(&consistency);
        tokio::spawn(async move {
            let key = format!("user:{user}");
            let mut n = 0i64;
            while Instant::now() < end {
                n += 1;
                consistency.scope_with_key(Some(&key), write(user, n)).await;
                let seen = consistency.scope_with_key(Some(&key), read(user)).await;
                tally.saw(&seen, n);
            }
        })
    });
    for user in futures_util::future::join_all(users).await {
        user.expect("a user failed");
    }
    drop(flipper.await.expect("the flipper ran"));
    tally.check(adapter);
}

/// A MariaDB replica behind a proxy that freezes mid-read, or stops: the read in flight is
/// given up once the monitor declares the replica down and is served by the master; later
/// reads go to the master without an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_then_stopped_replica_costs_no_failed_read() {
    let cluster = MariaDbCluster::from_env();
    let _apply = shared_apply(&cluster).await;
    // Replica 1's URL with the proxy in place of its address.
    let (auth, at) = cluster.replica_url(1).rsplit_once('@').unwrap();
    let (target, database) = at.split_once('/').unwrap();
    let proxy = Proxy::start(target).await;
    let proxied = format!("{auth}@127.0.0.1:{}/{database}", proxy.port());
    let mut config = Config::single_set(cluster.master_url(), [proxied.as_str()]);
    config.router = RouterMode::Strict;
    config.monitor.interval_ms = 100;
    config.monitor.check_timeout_ms = 200;
    let timeout = config.reads.timeout();
    let db = started(config).await;
    // A slow read, so that it is surely in flight on the replica when it freezes.
    let slow = format!("SELECT SLEEP(0.3) AS slept, {SERVER_ID}");
    assert_eq!(
        scope(server_id(&db, &slow)).await,
        2,
        "the replica serves it"
    );
    let began = Instant::now();
    let (served, ()) = tokio::join!(scope(server_id(&db, &slow)), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        proxy.freeze();
    });
    let took = began.elapsed();
    eprintln!("MariaDB, diesel-async: the read in flight was served after {took:?}");
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
            scope(server_id(&db, &format!("SELECT 1 AS one, {SERVER_ID}"))).await,
            1
        );
    }
}

/// A statement dropped mid-flight (a request's timeout) leaves its MariaDB connection
/// half-way through an answer: it is discarded, never handed to the next request (which read
/// the rest of the old answer: "can't parse: buf doesn't have enough data"), whether the next
/// statement comes from another routed connection or the same one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_dropped_in_flight_leaves_no_broken_connection_behind() {
    let cluster = MariaDbCluster::from_env();
    let _apply = shared_apply(&cluster).await;
    let mut config = config(&cluster, RouterMode::Greedy);
    // One connection per pool: the next request gets the same one back, unless discarded.
    for settings in config.masters.values_mut() {
        settings.max_size = Some(1);
    }
    let db = started(config).await;
    let slow = format!("SELECT SLEEP(0.3) AS slept, {SERVER_ID}");
    for drop_after in [20, 100, 250] {
        let cut = tokio::time::timeout(
            Duration::from_millis(drop_after),
            scope(async {
                db.router().pin("default").unwrap();
                let mut conn = db.get();
                assert_eq!(
                    server_id_on(&mut conn, &format!("SELECT {SERVER_ID}")).await,
                    1
                );
                diesel::sql_query(&slow).execute(&mut conn).await
            }),
        )
        .await;
        assert!(cut.is_err(), "dropped mid-statement");
        let next = scope(async {
            db.router().pin("default").unwrap();
            server_id_on(&mut db.get(), &format!("SELECT {SERVER_ID}")).await
        })
        .await;
        assert_eq!(
            next, 1,
            "the next request, on the master (dropped after {drop_after} ms)"
        );
    }
    // The same routed connection, after one of its statements was dropped.
    scope(async {
        db.router().pin("default").unwrap();
        let mut conn = db.get();
        let cut = tokio::time::timeout(
            Duration::from_millis(100),
            diesel::sql_query(&slow).execute(&mut conn),
        )
        .await;
        assert!(cut.is_err(), "dropped mid-statement");
        assert_eq!(
            server_id_on(&mut conn, &format!("SELECT {SERVER_ID}")).await,
            1
        );
    })
    .await;
}

/// The same inside a transaction: the statement after the dropped one must not read the
/// dropped one's answer as its own; the transaction is over (abandoned) and says so, and the
/// routed connection works again afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_dropped_in_flight_inside_a_transaction_abandons_it() {
    let cluster = MariaDbCluster::from_env();
    let _apply = shared_apply(&cluster).await;
    let db = started(config(&cluster, RouterMode::Greedy)).await;
    scope(async {
        let mut conn = db.get();
        let slow = "SELECT SLEEP(0.3) AS slept, 7 AS id";
        let in_txn = conn
            .transaction(async |conn| {
                let cut = tokio::time::timeout(
                    Duration::from_millis(100),
                    diesel::sql_query(slow).get_result::<ServerId>(conn),
                )
                .await;
                assert!(cut.is_err(), "dropped mid-statement");
                diesel::sql_query("SELECT 1 AS id")
                    .get_result::<ServerId>(conn)
                    .await
            })
            .await;
        match in_txn {
            Ok(row) => panic!(
                "the transaction went on after a dropped statement and read {}",
                row.id
            ),
            Err(e) => assert!(
                matches!(
                    pindb_diesel::routing_error(&e),
                    Some(pindb_diesel::Error::TransactionAbandoned)
                ),
                "{e}"
            ),
        }
        assert_eq!(
            server_id_on(&mut conn, &format!("SELECT {SERVER_ID}")).await,
            1
        );
    })
    .await;
}

/// A hand-begun transaction whose `COMMIT` is dropped before its answer: the transaction is
/// abandoned at once (its statements fail with `TransactionAbandoned` until it is rolled
/// back), and afterwards every statement reads its own answer, not the one before it. The
/// master is behind a proxy frozen while the `COMMIT` is under way, so the commit surely
/// waits for its answer when it is dropped (on loopback a commit polled once could already
/// have its answer), and the answer reaches the connection afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_made_commit_dropped_in_flight_abandons_the_transaction() {
    use diesel_async::TransactionManager;
    use pindb_diesel::bb8::RoutedTransactionManager as Tm;

    let cluster = MariaDbCluster::from_env();
    let _apply = shared_apply(&cluster).await;
    let master = cluster.master_url();
    let proxy = Proxy::start(&pindb_testkit::address(master)).await;
    let proxied = pindb_testkit::with_address(master, &format!("127.0.0.1:{}", proxy.port()));
    let mut config = Config::single_set(
        proxied.as_str(),
        [cluster.replica_url(1), cluster.replica_url(2)],
    );
    config.monitor.interval_ms = 100;
    config.router = RouterMode::Greedy;
    let db = started(config).await;
    let id = |n: i64| format!("SELECT {n} AS id");
    scope(async {
        db.router().pin("default").unwrap();
        let mut conn = db.get();
        Tm::begin_transaction(&mut conn).await.unwrap();
        assert_eq!(server_id_on(&mut conn, &id(1)).await, 1);
        proxy.freeze();
        let commit = tokio::time::timeout(
            Duration::from_millis(100),
            Tm::commit_transaction(&mut conn),
        )
        .await;
        assert!(
            commit.is_err(),
            "the commit was dropped waiting for its answer"
        );
        // The COMMIT reaches the server, and its answer the connection.
        proxy.thaw();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let lost = diesel::sql_query(id(2))
            .get_result::<ServerId>(&mut conn)
            .await;
        match lost {
            Ok(row) => panic!(
                "the transaction went on after a dropped COMMIT and read {}",
                row.id
            ),
            Err(e) => assert!(
                matches!(
                    pindb_diesel::routing_error(&e),
                    Some(pindb_diesel::Error::TransactionAbandoned)
                ),
                "{e}"
            ),
        }
        Tm::rollback_transaction(&mut conn).await.unwrap();
        for n in [3, 4, 5] {
            assert_eq!(server_id_on(&mut conn, &id(n)).await, n, "its own answer");
        }
    })
    .await;
}

async fn server_id_on(conn: &mut Conn, text: &str) -> i64 {
    let answer: ServerId = diesel::sql_query(text).get_result(conn).await.unwrap();
    answer.id
}

/// A MariaDB set given to the PostgreSQL pools (`PinDb::new`) is refused before any pool is
/// built, and the error names the alias and the constructor to use.
#[tokio::test]
async fn a_mariadb_set_given_to_postgresql_pools_is_refused_naming_the_constructor() {
    let config = Config::single_set(
        "mysql://app@127.0.0.1:1/app",
        ["mysql://app@127.0.0.1:2/app"],
    );
    let e = pindb_diesel::bb8::PinDb::new(config).expect_err("refused");
    let message = e.to_string();
    assert!(
        matches!(e, pindb_diesel::Error::OtherDatabase { ref alias, .. } if alias == "default"),
        "{message}"
    );
    assert!(
        message.contains("PinDb::<AsyncMysqlConnection>::from_config"),
        "names the fix: {message}"
    );
    let config = Config::single_set(
        "postgres://app@127.0.0.1:1/app",
        ["postgres://app@127.0.0.1:2/app"],
    );
    let e = Db::from_config(config).expect_err("refused");
    assert!(
        e.to_string().contains(
            "`default` is a PostgreSQL database, but this PinDb's pools are of MariaDB connections"
        ),
        "{e}"
    );
}

/// Sync diesel (`MysqlConnection` over r2d2) on the same set: the same routing, refusals,
/// fallback and keyed read-your-writes, with the context carried into the blocking thread.
#[cfg(feature = "r2d2-mariadb")]
mod sync {
    // diesel's sync traits, over the async ones the glob brings.
    use diesel::{Connection, MysqlConnection, RunQueryDsl};
    use pindb_core::spawn_blocking;

    use super::*;

    type SyncDb = pindb_diesel::r2d2::PinDb<MysqlConnection>;

    async fn started_sync(config: Config) -> SyncDb {
        let db = SyncDb::from_config(config).unwrap();
        db.router()
            .start_monitor()
            .await
            .expect("the topology is right");
        db
    }

    /// Runs `f` on a blocking thread inside the calling context.
    async fn in_context<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        spawn_blocking(f).await.expect("the blocking closure ran")
    }

    fn read_user(
        conn: &mut pindb_diesel::r2d2::PinDbConnection<MysqlConnection>,
        t: &str,
        user: i64,
    ) -> Seen {
        diesel::sql_query(format!(
            "SELECT `n`, {SERVER_ID} FROM `{t}` WHERE `user_id` = ?"
        ))
        .bind::<BigInt, _>(user)
        .get_result(conn)
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sync_diesel_routes_and_strict_mode_refuses_every_unpinned_write() {
        use diesel_routed::dsl::{n, user_id};

        let cluster = MariaDbCluster::from_env();
        let _apply = shared_apply(&cluster).await;
        fresh_table(&cluster, ROUTED, 2).await;
        let db = started_sync(config(&cluster, RouterMode::Strict)).await;
        let before = master_state(&cluster, ROUTED).await;
        let d = db.clone();
        scope(in_context(move || {
            let mut conn = d.get();
            assert_ne!(
                read_user(&mut conn, ROUTED, 1).id,
                1,
                "a raw read goes to a replica"
            );
            let typed: i64 = diesel_routed::table
                .select(n)
                .filter(user_id.eq(1))
                .get_result(&mut conn)
                .unwrap();
            assert_eq!(typed, 0);
            let mut conn = d.get();
            refused(
                "typed INSERT",
                diesel::insert_into(diesel_routed::table)
                    .values((user_id.eq(9), n.eq(0)))
                    .execute(&mut conn),
            );
            refused(
                "typed UPDATE",
                diesel::update(diesel_routed::table)
                    .set(n.eq(1))
                    .execute(&mut conn),
            );
            refused(
                "typed DELETE",
                diesel::delete(diesel_routed::table.filter(user_id.eq(1))).execute(&mut conn),
            );
            refused(
                "typed FOR UPDATE",
                diesel_routed::table
                    .select(n)
                    .for_update()
                    .load::<i64>(&mut conn),
            );
            for write in &raw_writes(ROUTED) {
                refused(write, diesel::sql_query(write).execute(&mut conn));
            }
            refused(
                "a transaction",
                conn.transaction(|conn| {
                    diesel::update(diesel_routed::table)
                        .set(n.eq(5))
                        .execute(conn)
                }),
            );
            assert!(
                conn.held_aliases().is_empty(),
                "refused before any checkout"
            );
        }))
        .await;
        assert_eq!(
            master_state(&cluster, ROUTED).await,
            before,
            "nothing reached the master"
        );
        // Pinned: writes and the context's later reads run on the master.
        let d = db.clone();
        scope(async move {
            d.router().pin("default").unwrap();
            in_context(move || {
                let mut conn = d.get();
                let in_txn = conn
                    .transaction(|conn| {
                        diesel::update(diesel_routed::table.filter(user_id.eq(1)))
                            .set(n.eq(4))
                            .execute(conn)?;
                        diesel::sql_query(format!("SELECT {SERVER_ID}"))
                            .get_result::<ServerId>(conn)
                    })
                    .unwrap();
                assert_eq!(in_txn.id, 1, "a transaction runs on the master");
                let seen = read_user(&mut d.get(), ROUTED, 1);
                assert_eq!((seen.n, seen.id), (4, 1), "pinned: the master");
            })
            .await
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sync_diesel_runs_a_read_the_replica_refuses_on_the_master() {
        let cluster = MariaDbCluster::from_env();
        let _apply = shared_apply(&cluster).await;
        let table = random_table();
        fresh_table(&cluster, &table, 1).await;
        let db = started_sync(config(&cluster, RouterMode::Greedy)).await;
        // A stored function that writes looks like a read; the read_only replica refuses it.
        let call = format!("SELECT {table}_bump() AS bumped, {SERVER_ID}");
        let (d, sql) = (db.clone(), call.clone());
        let answered = scope(in_context(move || {
            let mut conn = d.get();
            diesel::sql_query(sql)
                .get_result::<ServerId>(&mut conn)
                .unwrap()
                .id
        }))
        .await;
        assert_eq!(answered, 1, "retried on the master");
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

    /// URLs that say `localhost`: the client library would take its Unix socket (another
    /// server's, or none) and ignore the port; pindb's pools reach the server the port names,
    /// the one its monitor checks.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sync_diesel_reaches_the_server_a_localhost_url_names() {
        let cluster = MariaDbCluster::from_env();
        let _apply = shared_apply(&cluster).await;
        let local = |url: &str| url.replace("@127.0.0.1:", "@localhost:");
        let (master, r1, r2) = (
            local(cluster.master_url()),
            local(cluster.replica_url(1)),
            local(cluster.replica_url(2)),
        );
        assert!(master.contains("@localhost:"), "{master}");
        let mut config = Config::single_set(&master, [r1.as_str(), r2.as_str()]);
        config.monitor.interval_ms = 100;
        let db = started_sync(config).await;
        let d = db.clone();
        let (read, written) = scope(in_context(move || {
            let mut conn = d.get();
            let read = diesel::sql_query(format!("SELECT {SERVER_ID}"))
                .get_result::<ServerId>(&mut conn)
                .unwrap()
                .id;
            let written = conn
                .transaction(|conn| {
                    diesel::sql_query(format!("SELECT {SERVER_ID}")).get_result::<ServerId>(conn)
                })
                .unwrap()
                .id;
            (read, written)
        }))
        .await;
        assert!(
            read == 2 || read == 3,
            "a replica of the set: server_id {read}"
        );
        assert_eq!(written, 1, "the set's master");
    }

    /// The keyed hunt of the async test, through sync diesel: each user waits for its last
    /// request while one replica's SQL thread stops or starts every 50-400 ms.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_stale_keyed_read_through_sync_diesel_while_replicas_stop_and_start_applying() {
        let cluster = MariaDbCluster::from_env();
        sync_hunt("sync diesel", config(&cluster, RouterMode::Greedy)).await;
    }

    /// The same through a reader endpoint (`servers`): r2d2's manager keeps only the
    /// connections that reached their server.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_stale_keyed_read_through_a_reader_endpoint_with_sync_diesel() {
        let cluster = MariaDbCluster::from_env();
        let (endpoint, config) = through_endpoint(&cluster).await;
        sync_hunt("sync diesel through a reader endpoint", config).await;
        assert!(endpoint.accepted() > 0, "nothing went through the endpoint");
    }

    async fn sync_hunt(adapter: &str, config: Config) {
        let cluster = MariaDbCluster::from_env();
        let c = cluster.clone();
        let apply = blocking(move || c.exclusive()).await;
        let table = random_table();
        fresh_table(&cluster, &table, USERS).await;
        let db = started_sync(config).await;
        let (d, t) = (db.clone(), table.clone());
        let write = move |user, n| {
            let (d, t) = (d.clone(), t.clone());
            in_context(move || {
                diesel::sql_query(format!("UPDATE `{t}` SET `n` = ? WHERE `user_id` = ?"))
                    .bind::<BigInt, _>(n)
                    .bind::<BigInt, _>(user)
                    .execute(&mut d.get())
                    .map(drop)
                    .unwrap()
            })
        };
        let d = db.clone();
        let read = move |user| {
            let (d, t) = (d.clone(), table.clone());
            in_context(move || read_user(&mut d.get(), &t, user))
        };
        let consistency = db.router().consistency().clone();
        hunt(adapter, consistency, apply, write, read).await;
    }
}

/// A keyed context dropped while its write still runs on the master: the write commits after
/// the drop, and the key must not read from a replica that has everything up to the drop
/// but not that write. mysql_async cannot be asked after a dropped statement (its connection
/// is closed), so the set's position is recorded as unknown: the key reads the master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_context_dropped_while_its_write_runs_never_reads_without_it() {
    let cluster = MariaDbCluster::from_env();
    let c = cluster.clone();
    let _apply = blocking(move || c.exclusive()).await;
    let t = random_table();
    fresh_table(&cluster, &t, 1).await;
    let db = started(config(&cluster, RouterMode::Greedy)).await;
    // Each replica's SQL thread will wait behind a row lock held there: still applying (a
    // stopped one serves no read), but without the write.
    let mut locks = Vec::new();
    for n in [1, 2] {
        let mut lock = AsyncMysqlConnection::establish(&cluster.node_admin_url(n))
            .await
            .unwrap();
        lock.batch_execute("BEGIN").await.unwrap();
        lock.batch_execute(&format!(
            "SELECT `n` FROM `{t}` WHERE `user_id` = 0 FOR UPDATE"
        ))
        .await
        .unwrap();
        locks.push(lock);
    }
    // The master's row too: the write waits behind it, in flight, until the test lets go.
    let mut gate = AsyncMysqlConnection::establish(&cluster.node_admin_url(0))
        .await
        .unwrap();
    gate.batch_execute("BEGIN").await.unwrap();
    gate.batch_execute(&format!(
        "SELECT `n` FROM `{t}` WHERE `user_id` = 0 FOR UPDATE"
    ))
    .await
    .unwrap();
    #[derive(QueryableByName)]
    struct Waiting {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    // The write runs on the master (behind the row: it cannot end).
    let waiting = format!(
        "SELECT CAST(COUNT(*) AS SIGNED) AS n FROM information_schema.PROCESSLIST \
         WHERE INFO LIKE 'UPDATE `{t}`%'"
    );
    let slow = format!("UPDATE `{t}` SET `n` = `n` + 1 WHERE `user_id` = 0");
    let context = db
        .router()
        .consistency()
        .scope_with_key(Some("alice"), async {
            diesel::sql_query(&slow).execute(&mut db.get()).await
        });
    // Dropped once the write waits for the row: sent, unanswered.
    tokio::select! {
        _ = context => panic!("the write finished before the drop"),
        () = async {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let seen: Waiting = diesel::sql_query(&waiting)
                    .get_result(&mut gate)
                    .await
                    .unwrap();
                if seen.n > 0 {
                    break;
                }
                assert!(Instant::now() < deadline, "the write never waited for the row");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        } => {}
    }
    let state = master_state(&cluster, &t).await;
    assert!(
        state.starts_with("0\t0"),
        "the write committed before the row was let go: {state}"
    );
    gate.batch_execute("ROLLBACK").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !master_state(&cluster, &t).await.starts_with("0\t1") {
        assert!(
            Instant::now() < deadline,
            "the dropped write never committed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..3 {
        let seen = db
            .router()
            .consistency()
            .scope_with_key(Some("alice"), async {
                read_user(&mut db.get(), &t, 0).await
            })
            .await;
        assert_eq!(seen.n, 1, "alice reads her write (server {})", seen.id);
    }
    drop(locks);
}
