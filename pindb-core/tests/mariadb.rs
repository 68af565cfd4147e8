#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
//! pindb-core routing a MariaDB set: the dev cluster's primary and its GTID replicas
//! (`scripts/cluster up`), with mysql_async pools standing in for an adapter (one pool per
//! database of the topology, each statement run where `Router::route_sql` says). The monitor
//! follows the replicas' positions and apply threads, the start-up check refuses what is not
//! a replica of the master, and a keyed user never reads its own write stale while the
//! replicas stop and start applying at random.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{OptsBuilder, Pool};
use pindb_core::{Config, PinDbError, Role, Router};
use pindb_testkit::{MariaDbApplyControl, MariaDbCluster};

fn config(master: &str, replicas: &[&str]) -> Config {
    let mut config = Config::single_set(master, replicas.iter().copied());
    config.monitor.interval_ms = 100;
    config
}

/// What an adapter keeps: a pool per database, in the topology's order.
fn pools(router: &Router) -> Vec<Pool> {
    router
        .topology()
        .databases()
        .iter()
        .map(|db| {
            let opts = mysql_async::Opts::from_url(&db.url()).expect("a mysql url");
            Pool::new(OptsBuilder::from_opts(opts).prefer_socket(false))
        })
        .collect()
}

/// The cluster's helpers block (they run the `mariadb` client).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("the helper ran")
}

/// The cluster, its replicas' replication this test's alone: it stops, pauses or deafens them.
async fn exclusive() -> (MariaDbCluster, MariaDbApplyControl) {
    let cluster = MariaDbCluster::from_env();
    let c = cluster.clone();
    (cluster, blocking(move || c.exclusive()).await)
}

/// The cluster, its replicas' replication left running (shared with other such tests).
async fn shared() -> (MariaDbCluster, pindb_testkit::MariaDbSharedApply) {
    let cluster = MariaDbCluster::from_env();
    let c = cluster.clone();
    (cluster, blocking(move || c.shared()).await)
}

async fn fresh_table(cluster: &MariaDbCluster, users: u64) -> String {
    let table = format!("hunt_{}", fastrand::u32(..));
    let (c, t) = (cluster.clone(), table.clone());
    blocking(move || {
        let rows: Vec<String> = (0..users).map(|u| format!("({u}, 0)")).collect();
        c.query_as_app(
            0,
            &format!(
                "CREATE TABLE {t} (user_id BIGINT PRIMARY KEY, n BIGINT NOT NULL); \
                 INSERT INTO {t} VALUES {}",
                rows.join(", ")
            ),
        )
        .expect("the table");
        c.sync_replicas();
    })
    .await;
    table
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitor_follows_a_replica_that_stops_applying() {
    let (cluster, mut apply) = exclusive().await;
    let router = Router::new(config(
        cluster.master_url(),
        &[cluster.replica_url(1), cluster.replica_url(2)],
    ))
    .unwrap();
    let warnings = router.start_monitor().await.expect("the topology is right");
    assert!(warnings.is_empty(), "{warnings:?}");
    let status = |alias: &str| router.topology().replica_status(alias).unwrap().unwrap();
    // Up and fresh once checked (the first checks may outlast start_monitor's wait).
    pindb_testkit::wait_until(
        "the monitor finds default-1 up and fresh",
        Duration::from_secs(10),
        || status("default-1").up && !status("default-1").over_lag,
    )
    .await;
    let table = fresh_table(&cluster, 1).await;
    apply = blocking(move || {
        apply.stop_apply(1);
        apply
    })
    .await;
    let (c, t) = (cluster.clone(), table.clone());
    let written = blocking(move || {
        c.query_as_app(0, &format!("UPDATE {t} SET n = 1")).unwrap();
        pindb_testkit::gtid_seq(&c.gtid_binlog_pos(), 0).expect("a position in domain 0")
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !status("default-1").over_lag && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopped = status("default-1");
    assert!(
        stopped.up && stopped.over_lag,
        "a stopped SQL thread is out of rotation: {stopped:?}"
    );
    assert!(
        stopped.replay_lsn.0 < written,
        "it lacks the write: {stopped:?}"
    );
    assert!(!status("default-2").over_lag, "the other replica serves on");
    for _ in 0..20 {
        let alias =
            pindb_core::scope(async { router.route_sql("SELECT 1").unwrap().alias.to_owned() })
                .await;
        assert_ne!(alias, "default-1");
    }
    apply = blocking(move || {
        apply.start_apply(1);
        apply
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while status("default-1").over_lag && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let resumed = status("default-1");
    assert!(
        !resumed.over_lag && resumed.replay_lsn.0 >= written,
        "{resumed:?}"
    );
    drop(apply);
}

#[tokio::test]
async fn the_start_up_check_refuses_what_is_not_a_replica_of_the_master() {
    let (cluster, _apply) = shared().await;
    let refused = |config: Config| async {
        match Router::new(config).unwrap().start_monitor().await {
            Err(PinDbError::Config { alias, problem, .. }) => (alias, problem),
            other => panic!("not refused: {other:?}"),
        }
    };
    // The master given as its own replica: it replicates from nothing.
    let (alias, message) = refused(config(cluster.master_url(), &[cluster.master_url()])).await;
    assert_eq!(alias.as_deref(), Some("default-1"));
    assert!(message.contains("replicates from nothing"), "{message}");
    // A replica given as the master: read_only.
    let (alias, message) = refused(config(cluster.replica_url(1), &[cluster.replica_url(2)])).await;
    assert_eq!(alias.as_deref(), Some("default"));
    assert!(message.contains("is read_only"), "{message}");
}

/// A replica URL that balances over both replicas (a round-robin TCP endpoint) reaches two
/// servers: refused at start-up, naming them and the `servers` line that declares them; each
/// replica given directly is not, nor the endpoint with its servers declared.
#[tokio::test]
async fn a_replica_url_that_reaches_several_servers_is_refused_at_start_up() {
    let (cluster, _apply) = shared().await;
    let (one, two) = (
        pindb_testkit::address(cluster.replica_url(1)),
        pindb_testkit::address(cluster.replica_url(2)),
    );
    let endpoint = pindb_testkit::Proxy::round_robin(&[&one, &two]).await;
    let url = cluster
        .replica_url(1)
        .replace(&one, &format!("127.0.0.1:{}", endpoint.port()));
    match Router::new(config(cluster.master_url(), &[&url]))
        .unwrap()
        .start_monitor()
        .await
    {
        Err(PinDbError::Config { alias, problem, .. }) => {
            assert_eq!(alias.as_deref(), Some("default-1"));
            assert!(problem.contains("reaches several servers"), "{problem}");
            assert!(!problem.contains("  "), "one line of prose: {problem}");
            assert!(
                problem.contains("server_id 2") && problem.contains("server_id 3"),
                "{problem}"
            );
            // The fix, ready to paste (in the order the samples met them).
            assert!(
                problem.contains(r#"servers = ["2", "3"]"#)
                    || problem.contains(r#"servers = ["3", "2"]"#),
                "{problem}"
            );
        }
        other => panic!("not refused: {other:?}"),
    }
    let (_endpoint, declared) = cluster.reader_endpoint().await;
    let mut through = config(cluster.master_url(), &[]);
    through.sets.insert("default".to_owned(), vec![declared]);
    let router = Router::new(through).unwrap();
    router
        .start_monitor()
        .await
        .expect("the servers behind the endpoint, declared: one replica each");
    let status = router.status().await;
    let seen: Vec<(&str, bool)> = status
        .iter()
        .map(|d| (d.alias.as_str(), d.up && d.position.is_some()))
        .collect();
    assert_eq!(
        seen,
        [
            ("default", true),
            ("default-1.1", true),
            ("default-1.2", true)
        ],
        "{status:?}"
    );
    let direct = config(
        cluster.master_url(),
        &[cluster.replica_url(1), cluster.replica_url(2)],
    );
    Router::new(direct)
        .unwrap()
        .start_monitor()
        .await
        .expect("each replica given directly reaches one server");
}

/// A replica is `read_only`, but a user with `READ ONLY ADMIN` writes past it: start-up warns,
/// naming the replica and the privilege; for the application user it does not.
#[tokio::test]
async fn a_user_that_can_write_past_read_only_is_named_at_start_up() {
    let (cluster, _apply) = shared().await;
    let user = format!("pindb_roa_{}", fastrand::u32(..));
    let (c, u) = (cluster.clone(), user.clone());
    blocking(move || {
        c.query(
            0,
            &format!(
                "CREATE USER '{u}'@'%' IDENTIFIED BY '{u}'; \
                 GRANT SELECT ON pindb.* TO '{u}'@'%'; \
                 GRANT SLAVE MONITOR, READ ONLY ADMIN ON *.* TO '{u}'@'%'"
            ),
        )
        .expect("the user");
        c.sync_replicas();
    })
    .await;
    let as_user = cluster
        .replica_url(1)
        .replace("pindb:pindb@", &format!("{user}:{user}@"));
    let warnings = Router::new(config(cluster.master_url(), &[&as_user]))
        .unwrap()
        .start_monitor()
        .await
        .expect("a warning, not a refusal");
    let (c, u) = (cluster.clone(), user.clone());
    blocking(move || {
        c.query(0, &format!("DROP USER '{u}'@'%'"))
            .expect("dropped");
        c.sync_replicas();
    })
    .await;
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("`default-1`") && w.contains("READ ONLY ADMIN")),
        "{warnings:?}"
    );
    let warnings = Router::new(config(cluster.master_url(), &[cluster.replica_url(1)]))
        .unwrap()
        .start_monitor()
        .await
        .unwrap();
    assert!(
        !warnings.iter().any(|w| w.contains("write anyway")),
        "{warnings:?}"
    );
}

#[test]
fn a_mixed_router_and_postgres_only_features_are_refused_with_the_fix() {
    let mixed = Config::single_set("mysql://app@10.0.0.1/app", ["postgres://app@10.0.0.2/app"]);
    let e = Router::new(mixed).unwrap_err().to_string();
    assert!(
        e.contains("default-1") && e.contains("a set runs on one database"),
        "{e}"
    );
    let mut emulated = Config::single_set("mysql://app@10.0.0.1/app", Vec::<String>::new());
    emulated.emulate_replicas = 1;
    let e = Router::new(emulated).unwrap_err().to_string();
    assert!(e.contains("emulate_replicas = 0"), "{e}");
    let options = Config::single_set(
        "mysql://app@10.0.0.1/app?ssl-mode=disabled",
        Vec::<String>::new(),
    );
    let e = Router::new(options).unwrap_err().to_string();
    assert!(e.contains("`ssl-mode`"), "{e}");
}

/// The promise: a user who wrote reads it back, on whichever server, while the replicas stop
/// and start applying at random. Each user waits for its last request (closed loop).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stale_keyed_read_while_replicas_stop_and_start_applying() {
    const USERS: u64 = 6;
    let (cluster, apply) = exclusive().await;
    let router = Router::new(config(
        cluster.master_url(),
        &[cluster.replica_url(1), cluster.replica_url(2)],
    ))
    .unwrap();
    router.start_monitor().await.expect("the topology is right");
    let table = fresh_table(&cluster, USERS).await;
    let pools = Arc::new(pools(&router));
    let (reads, stale, on_replicas) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let end = Instant::now() + Duration::from_secs(6);
    // Flips one replica's SQL thread every 50-400 ms.
    let flipper = tokio::task::spawn_blocking(move || apply.flip_until(end));
    let users = (0..USERS).map(|user| {
        let (router, pools, table) = (router.clone(), Arc::clone(&pools), table.clone());
        let (reads, stale, on_replicas) = (
            Arc::clone(&reads),
            Arc::clone(&stale),
            Arc::clone(&on_replicas),
        );
        tokio::spawn(async move {
            let key = format!("user:{user}");
            let mut n = 0u64;
            while Instant::now() < end {
                n += 1;
                let update = format!("UPDATE {table} SET n = {n} WHERE user_id = {user}");
                router
                    .consistency()
                    .scope_with_key(Some(&key), async {
                        let route = router.route_sql(&update).unwrap();
                        assert_eq!(route.role, Role::Master);
                        let mut conn = pools[route.index].get_conn().await.unwrap();
                        conn.query_drop(&update).await.unwrap();
                    })
                    .await;
                let select = format!("SELECT n FROM {table} WHERE user_id = {user}");
                let (seen, role) = router
                    .consistency()
                    .scope_with_key(Some(&key), async {
                        let route = router.route_sql(&select).unwrap();
                        let mut conn = pools[route.index].get_conn().await.unwrap();
                        let seen: Option<u64> = conn.query_first(&select).await.unwrap();
                        (seen, route.role)
                    })
                    .await;
                reads.fetch_add(1, Ordering::Relaxed);
                if role == Role::Replica {
                    on_replicas.fetch_add(1, Ordering::Relaxed);
                }
                if seen != Some(n) {
                    stale.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    });
    for user in futures_util::future::join_all(users).await {
        user.expect("a user failed");
    }
    drop(flipper.await.expect("the flipper ran"));
    let (reads, stale, on_replicas) = (
        reads.load(Ordering::Relaxed),
        stale.load(Ordering::Relaxed),
        on_replicas.load(Ordering::Relaxed),
    );
    eprintln!("{reads} keyed reads after their writes, {on_replicas} on replicas, {stale} stale");
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

/// The MariaDB dialect against the server's own lexer: thousands of statements built from the
/// fragments that quote, comment and escape (seeded, so a failure names its seed), each sent
/// as is to a `read_only` replica as the application user, under the `sql_mode`s that change
/// how text is read. Every statement the replica refuses as a write (1290) must be a write
/// for `Dialect::MariaDb`.
#[tokio::test]
async fn every_statement_a_read_only_replica_refuses_is_a_write_for_the_dialect() {
    use pindb_core::adapter::{Dialect, StatementKind};
    const FRAGMENTS: &[&str] = &[
        " ",
        " ",
        "'",
        "\"",
        "`",
        "\\",
        "#",
        "-- ",
        "--",
        "/*",
        "*/",
        "/*!",
        "/*!80000 ",
        "/*!50000 ",
        "/*M!999999 ",
        "/*M!100000 ",
        "\n",
        ",",
        "1",
        "a",
        "@",
        "@@",
        ":=",
        "(",
        ")",
        " NEXTVAL(pindb_fuzz_seq)",
        " , NEXTVAL(pindb_fuzz_seq)",
        " SETVAL(pindb_fuzz_seq, 1)",
    ];
    let (cluster, _apply) = shared().await;
    let c = cluster.clone();
    blocking(move || {
        c.query_as_app(0, "CREATE SEQUENCE IF NOT EXISTS pindb_fuzz_seq")
            .unwrap();
        c.sync_replicas();
    })
    .await;
    let opts = mysql_async::Opts::from_url(cluster.replica_url(1)).unwrap();
    let mut conn = mysql_async::Conn::new(OptsBuilder::from_opts(opts).prefer_socket(false))
        .await
        .unwrap();
    let seed = std::env::var("PINDB_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let mut rng = fastrand::Rng::with_seed(seed);
    let (mut sent, mut refused, mut missed) = (0usize, 0usize, Vec::new());
    for mode in [
        "DEFAULT",
        "NO_BACKSLASH_ESCAPES",
        "ANSI_QUOTES",
        "ANSI_QUOTES,NO_BACKSLASH_ESCAPES",
    ] {
        let mode_sql = match mode {
            "DEFAULT" => "SET SESSION sql_mode = DEFAULT".to_owned(),
            mode => format!("SET SESSION sql_mode = '{mode}'"),
        };
        conn.query_drop(mode_sql).await.unwrap();
        for _ in 0..10_000 {
            let mut sql = String::from("SELECT 1");
            for _ in 0..rng.usize(1..10) {
                sql.push_str(FRAGMENTS[rng.usize(..FRAGMENTS.len())]);
            }
            sent += 1;
            let Err(mysql_async::Error::Server(e)) = conn.query_drop(&sql).await else {
                continue;
            };
            if e.code == 1290 {
                refused += 1;
                if Dialect::MariaDb.classify(&sql) != StatementKind::Write {
                    missed.push(format!("[{mode}] {sql:?}"));
                }
            }
        }
    }
    eprintln!("seed {seed}: {sent} statements, {refused} refused as writes by the replica");
    assert!(
        refused > 100,
        "too few refusals to mean anything (seed {seed}): {refused}"
    );
    assert!(
        missed.is_empty(),
        "seed {seed} (PINDB_FUZZ_SEED={seed} reruns it): the replica refused these as writes, \
         and Dialect::MariaDb calls them reads:\n{}",
        missed.join("\n")
    );
}

/// `pindb status` of a MariaDB set: positions as sequence numbers, a replica that stopped
/// applying named, its lag counted in transactions and measured in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_positions_and_a_replica_that_stopped_applying() {
    let (cluster, mut apply) = exclusive().await;
    let table = fresh_table(&cluster, 1).await;
    let router = Router::new(config(
        cluster.master_url(),
        &[cluster.replica_url(1), cluster.replica_url(2)],
    ))
    .unwrap();
    apply = blocking(move || {
        apply.stop_apply(1);
        apply
    })
    .await;
    let (c, t) = (cluster.clone(), table.clone());
    let written = blocking(move || {
        c.query_as_app(0, &format!("UPDATE {t} SET n = 1")).unwrap();
        c.query_as_app(0, &format!("UPDATE {t} SET n = 2")).unwrap();
        let position = c.gtid_binlog_pos();
        c.wait_for_gtid(2, &position);
        pindb_testkit::gtid_seq(&position, 0).expect("a position in domain 0")
    })
    .await;
    let status = router.status().await;
    let [master, stopped, flowing] = &status[..] else {
        panic!("{status:?}")
    };
    assert!(master.up && master.in_recovery == Some(false), "{master:?}");
    assert_eq!(master.position, Some(written.to_string()));
    assert!(
        stopped.up && stopped.in_recovery == Some(true),
        "{stopped:?}"
    );
    assert_eq!(
        stopped.lag_bytes,
        Some(2),
        "two transactions behind: {stopped:?}"
    );
    assert!(stopped.lag_ms_at_least, "it cannot catch up: {stopped:?}");
    assert!(
        stopped
            .error
            .as_deref()
            .is_some_and(|e| e.contains("not applying")),
        "{stopped:?}"
    );
    assert_eq!(
        (flowing.lag_bytes, flowing.lag_ms),
        (Some(0), Some(0)),
        "{flowing:?}"
    );
    drop(apply);
}

/// GTIDs in domain 7 on every server, as an old topology or another master leaves them:
/// written on the primary by the admin (who may set `gtid_domain_id`), then replicated.
async fn gtids_in_another_domain(cluster: &MariaDbCluster) {
    let c = cluster.clone();
    blocking(move || {
        c.query(
            0,
            "SET SESSION gtid_domain_id = 7; \
             CREATE TABLE IF NOT EXISTS other_domain (n BIGINT NOT NULL); \
             INSERT INTO other_domain VALUES (1)",
        )
        .expect("writing in domain 7");
        c.sync_replicas();
    })
    .await;
}

/// One keyed request that runs `sql` on the master.
async fn keyed_write(router: &Router, pools: &[Pool], key: &str, sql: &str) {
    router
        .consistency()
        .scope_with_key(Some(key), async {
            let route = router.route_sql(sql).unwrap();
            assert_eq!(route.role, Role::Master, "{sql}");
            let mut conn = pools[route.index].get_conn().await.unwrap();
            conn.query_drop(sql).await.unwrap();
        })
        .await;
}

/// One keyed request that reads `n` of user 0 in `table`: what it saw, and where.
async fn keyed_read(
    router: &Router,
    pools: &[Pool],
    key: &str,
    table: &str,
) -> (Option<u64>, Role) {
    let select = format!("SELECT n FROM {table} WHERE user_id = 0");
    router
        .consistency()
        .scope_with_key(Some(key), async {
            let route = router.route_sql(&select).unwrap();
            let mut conn = pools[route.index].get_conn().await.unwrap();
            let seen: Option<u64> = conn.query_first(&select).await.unwrap();
            (seen, route.role)
        })
        .await
}

/// A keyed user writes user 0's `n`, then reads it back in its next request, until a read
/// goes to a replica (once the monitor saw one has the write): within 10 s, never stale.
async fn keyed_reads_reach_a_replica(router: &Router, pools: &[Pool], table: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    for n in 1.. {
        let update = format!("UPDATE {table} SET n = {n} WHERE user_id = 0");
        keyed_write(router, pools, "user:0", &update).await;
        let (seen, role) = keyed_read(router, pools, "user:0", table).await;
        assert_eq!(
            seen,
            Some(n),
            "the keyed read from the {role:?} missed its write"
        );
        if role == Role::Replica {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no keyed read went to a replica in 10 s: {:?}",
            router.status().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Replicas whose positions also carry another domain's GTIDs are compared in the set's
/// domain, and have everything of the other one the master has: they serve reads, keyed
/// ones included (pindb once refused every such replica).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_that_also_carry_another_gtid_domain_still_serve_reads() {
    // A write in another domain while a hunt's users write sends them to the master for
    // `ttl_seconds` (their positions are unknown): not while a hunt runs.
    let (cluster, apply) = exclusive().await;
    let table = fresh_table(&cluster, 1).await;
    gtids_in_another_domain(&cluster).await;
    let router = Router::new(config(
        cluster.master_url(),
        &[cluster.replica_url(1), cluster.replica_url(2)],
    ))
    .unwrap();
    pindb_testkit::monitor_started(&router).await;
    let pools = pools(&router);
    keyed_reads_reach_a_replica(&router, &pools, &table).await;
    drop(apply);
}

/// A router whose user may write in another domain (`SET STATEMENT gtid_domain_id`): the
/// admin (which the start-up check warns of), monitor started, with its pools.
async fn as_admin(cluster: &MariaDbCluster) -> (Router, Vec<Pool>) {
    let (master, r1, r2) = (
        cluster.node_admin_url(0),
        cluster.node_admin_url(1),
        cluster.node_admin_url(2),
    );
    let router = Router::new(config(&master, &[&r1, &r2])).unwrap();
    pindb_testkit::monitor_started(&router).await;
    let pools = pools(&router);
    (router, pools)
}

/// Replicas 1 and 2 stop receiving (their SQL threads run: they count as applying).
async fn deaf(mut apply: MariaDbApplyControl) -> MariaDbApplyControl {
    blocking(move || {
        apply.stop_receiving(1);
        apply.stop_receiving(2);
        apply
    })
    .await
}

/// Whether both replicas still had all of domain 0 (a try is conclusive only then: another
/// test's writes may land meanwhile); then they receive again and catch up.
async fn hearing_again(
    cluster: &MariaDbCluster,
    mut apply: MariaDbApplyControl,
) -> (bool, MariaDbApplyControl) {
    let c = cluster.clone();
    blocking(move || {
        let master = pindb_testkit::gtid_seq(&c.gtid_binlog_pos(), 0);
        let still = (1..=2).all(|r| pindb_testkit::gtid_seq(&c.gtid_slave_pos(r), 0) == master);
        apply.start_receiving(1);
        apply.start_receiving(2);
        c.sync_replicas();
        (still, apply)
    })
    .await
}

/// A keyed write made in another GTID domain (`SET STATEMENT gtid_domain_id = 7 FOR ..`): the
/// master's position in the set's domain does not move with it, so it cannot prove a replica
/// has it. The replicas stop receiving (their SQL threads run, so they count as applying, and
/// have everything of the set's domain): the next keyed read must still see the write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_write_made_in_another_gtid_domain_is_never_read_stale() {
    let (cluster, mut apply) = exclusive().await;
    let table = fresh_table(&cluster, 1).await;
    gtids_in_another_domain(&cluster).await;
    let (router, pools) = as_admin(&cluster).await;
    // Conclusive only if both replicas had all of the set's domain when the user read
    // (another test's writes may land meanwhile): tried until that held 3 times.
    let (mut conclusive, mut tries) = (0, 0);
    while conclusive < 3 {
        tries += 1;
        assert!(
            tries <= 20,
            "the set's domain never stood still for one try"
        );
        apply = deaf(apply).await;
        let update = format!(
            "SET STATEMENT gtid_domain_id = 7 FOR UPDATE {table} SET n = {tries} WHERE user_id = 0"
        );
        keyed_write(&router, &pools, "user:0", &update).await;
        let (seen, role) = keyed_read(&router, &pools, "user:0", &table).await;
        assert_eq!(
            seen,
            Some(tries),
            "the keyed read from the {role:?} missed its write made in domain 7"
        );
        let (still, back) = hearing_again(&cluster, apply).await;
        apply = back;
        conclusive += u32::from(still);
    }
    drop(apply);
}

/// The set's master and replica 3, which follows it through the named replication connection
/// `main` (as a replica of several masters does), declared as such or not.
fn on_named_connection(cluster: &MariaDbCluster, connection: Option<&str>) -> Config {
    let mut config = config(cluster.master_url(), &[cluster.replica_url(3)]);
    for replica in config.sets.values_mut().flatten() {
        replica.replication_connection = connection.map(str::to_owned);
    }
    config
}

/// A replica of several masters follows the set's master through a named connection: pindb
/// reads that connection's status (its master, its SQL thread) and reads from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_on_a_named_replication_connection_is_followed_through_it() {
    let (cluster, mut apply) = exclusive().await;
    let table = fresh_table(&cluster, 1).await;
    let router = Router::new(on_named_connection(
        &cluster,
        Some(pindb_testkit::MULTI_SOURCE_CONNECTION),
    ))
    .unwrap();
    pindb_testkit::monitor_started(&router).await;
    let pools = pools(&router);
    keyed_reads_reach_a_replica(&router, &pools, &table).await;
    // Its connection's SQL thread stops: not applying, out of rotation.
    apply = blocking(move || {
        apply.stop_apply(3);
        apply
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = router.status().await;
        let error = status[1].error.as_deref().unwrap_or("");
        if error.contains("not applying") {
            break;
        }
        assert!(Instant::now() < deadline, "never not applying: {status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let select = format!("SELECT n FROM {table} WHERE user_id = 0");
    pindb_testkit::wait_until(
        "the monitor takes the replica out of rotation",
        Duration::from_secs(10),
        || {
            router
                .route_sql(&select)
                .is_ok_and(|r| r.role == Role::Master)
        },
    )
    .await;
    blocking(move || drop(apply)).await;
}

/// A replica whose default connection replicates nothing, but which follows the master
/// through a named one, is refused at start-up with the fix; so is a connection it lacks.
#[tokio::test]
async fn a_named_replication_connection_left_out_or_unknown_is_refused_with_the_fix() {
    let (cluster, _apply) = shared().await;
    for (connection, says) in [
        (None, "replication_connection = \"<Connection_name>\""),
        (Some("nope"), "no such connection"),
    ] {
        let config = on_named_connection(&cluster, connection);
        match Router::new(config).unwrap().start_monitor().await {
            Err(PinDbError::Config { alias, problem, .. }) => {
                assert_eq!(alias.as_deref(), Some("default-1"));
                assert!(problem.contains(says), "{problem}");
            }
            other => panic!("not refused: {other:?}"),
        }
    }
}

/// A write in another GTID domain made before the context's first routed write, where no
/// snapshot of the master's other domains was taken yet by that routed write: under a hand
/// `pin` (sent on a pool pindb does not see), under a `master()` guard, or before
/// `unpin_all`. The monitor reads the master in between (the write is then in what it last
/// saw), then a routed write that changes nothing: the next keyed read must still see the
/// first write. The adversarial pass read it stale in all three, 3 of 3 each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_in_another_domain_before_the_first_routed_one_is_never_read_stale() {
    let (cluster, mut apply) = exclusive().await;
    let table = fresh_table(&cluster, 1).await;
    gtids_in_another_domain(&cluster).await;
    let (router, pools) = as_admin(&cluster).await;
    // Each way tried until it was conclusive: both replicas had all of domain 0 when the
    // user read (another test's writes may land meanwhile), with a key of its own each try
    // (one recorded as unknown reads from the master for `ttl_seconds`).
    let mut key = 0u64;
    for how in ["pin", "master guard", "unpin_all"] {
        let mut conclusive = false;
        for _ in 0..5 {
            key += 1;
            let (still, back) =
                unseen_write_before_a_routed_one(&router, &pools, &table, how, key, apply).await;
            apply = back;
            if still {
                conclusive = true;
                break;
            }
        }
        assert!(conclusive, "{how}: domain 0 never stood still for one try");
    }
    blocking(move || drop(apply)).await;
}

/// One try of [`a_write_in_another_domain_before_the_first_routed_one_is_never_read_stale`]:
/// `n` (also in the key) written in domain 7 `how`, then the keyed read; whether both
/// replicas had all of domain 0 when it read.
async fn unseen_write_before_a_routed_one(
    router: &Router,
    pools: &[Pool],
    table: &str,
    how: &str,
    n: u64,
    mut apply: MariaDbApplyControl,
) -> (bool, MariaDbApplyControl) {
    apply = deaf(apply).await;
    let in_seven = format!(
        "SET STATEMENT gtid_domain_id = 7 FOR UPDATE {table} SET n = {n} WHERE user_id = 0"
    );
    let nothing = format!("UPDATE {table} SET n = n WHERE user_id = -1");
    let key = format!("user:{n}");
    router
        .consistency()
        .scope_with_key(Some(&key), async {
            match how {
                "pin" => {
                    router.pin("default").unwrap();
                    let mut conn = pools[0].get_conn().await.unwrap();
                    conn.query_drop(&in_seven).await.unwrap();
                }
                "master guard" => {
                    let _guard = router.master("default").unwrap();
                    let route = router.route_sql(&in_seven).unwrap();
                    let mut conn = pools[route.index].get_conn().await.unwrap();
                    conn.query_drop(&in_seven).await.unwrap();
                }
                _ => {
                    let route = router.route_sql(&in_seven).unwrap();
                    let mut conn = pools[route.index].get_conn().await.unwrap();
                    conn.query_drop(&in_seven).await.unwrap();
                    pindb_core::unpin_all();
                }
            }
            // The monitor reads the master (every 100 ms) meanwhile.
            tokio::time::sleep(Duration::from_millis(400)).await;
            let route = router.route_sql(&nothing).unwrap();
            let mut conn = pools[route.index].get_conn().await.unwrap();
            conn.query_drop(&nothing).await.unwrap();
        })
        .await;
    let (seen, role) = keyed_read(router, pools, &key, table).await;
    let (still, apply) = hearing_again(&MariaDbCluster::from_env(), apply).await;
    assert_eq!(
        seen,
        Some(n),
        "{how}: the keyed read from the {role:?} missed the write made in domain 7"
    );
    (still, apply)
}

/// A master url that reaches a replica (a balancer, a virtual IP mid-change): its position is
/// not the master's, and pindb does not take it as one (the monitor would measure lag against
/// the replica itself). `pindb status` says why.
#[tokio::test]
async fn a_master_url_that_reaches_a_replica_gives_no_master_position() {
    let cluster = MariaDbCluster::from_env();
    let router = Router::new(config(cluster.replica_url(1), &[cluster.replica_url(2)])).unwrap();
    let status = router.status().await;
    let master = &status[0];
    assert_eq!(master.position, None, "{master:?}");
    assert!(
        master
            .error
            .as_deref()
            .is_some_and(|e| e.contains("read_only")),
        "{master:?}"
    );
}
