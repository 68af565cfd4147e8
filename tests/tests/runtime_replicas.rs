#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
//! Replicas that come and go while the service runs (`[masters.<set>.discovery]`): set from
//! code with `Router::set_replicas` or found in DNS (a name server on loopback, real UDP),
//! through every adapter, against the dev cluster's real standbys.

use std::time::{Duration, Instant};

use pindb_core::{scope, Config, PinDbError, Router};
use pindb_scenarios::{Adapter, DieselAsync, DieselSync, SeaOrm, World};
use pindb_testkit::{wait_until, DnsServer};

const WAIT: Duration = Duration::from_secs(20);

/// The dev cluster's primary with no configured replica and two runtime slots; its
/// connections (and the slots', which inherit) carry `app` as their `application_name`.
fn config(w: &World, app: &str, discovery: &str) -> Config {
    let url = w.schema.url(&w.cluster.primary_url);
    Config::from_toml_str(&format!(
        r#"
        [masters.default]
        url = "{url}"
        options = {{ application_name = "{app}" }}
        discovery = {{ {discovery} }}
        [sets]
        default = []
        [monitor]
        interval_ms = 50
        successes_before_up = 1
        "#
    ))
    .unwrap()
}

fn replica(w: &World, n: usize) -> String {
    format!("127.0.0.1:{}", w.replicas[n - 1])
}

fn is_up(router: &Router, alias: &str) -> bool {
    router.topology().replica_status(alias).unwrap().unwrap().up
}

/// Until `alias` may serve reads: up, and proven fresh enough (a new host has no staleness
/// bound until the monitor has a master sample at or below its position, which concurrent
/// writes of other tests can delay).
async fn wait_up(router: &Router, alias: &str) {
    let topology = router.topology();
    wait_until(&format!("{alias} is up and fresh"), WAIT, || {
        let status = topology.replica_status(alias).unwrap().unwrap();
        status.up && !status.over_lag
    })
    .await;
}

fn hosts(router: &Router) -> Vec<String> {
    let now = router.topology().runtime_replicas("default").unwrap();
    now.into_iter().map(|(_, host)| host).collect()
}

/// Backends on replica `n` opened by `app` (`active`: running a statement now).
async fn backends(w: &World, n: usize, app: &str, active: bool) -> i64 {
    let sql = "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 \
               AND (NOT $2 OR state = 'active')";
    let client = w.cluster.replica(n).await;
    client
        .query_one(sql, &[&app, &active])
        .await
        .unwrap()
        .get(0)
}

async fn wait_backends(w: &World, n: usize, app: &str, active: bool, want: i64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = backends(w, n, app, active).await;
        if now == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "replica {n} still has {now} backends of {app} (active only: {active}), not {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_host_serves_no_new_read_finishes_its_work_then_its_pool_closes() {
    let w = World::new().await;
    let app = format!("pindb-drain-{}", w.schema.name);
    let db = DieselAsync::open(config(&w, &app, "max_replicas = 2")).await;
    let router = db.router();
    router.start_monitor().await.unwrap();
    assert_eq!(
        scope(db.read()).await,
        Ok(w.master),
        "no host yet: the master"
    );

    assert_eq!(
        router.set_replicas("default", [replica(&w, 1)]).unwrap(),
        ["default-1"]
    );
    wait_up(router, "default-1").await;
    assert_eq!(scope(db.read()).await, Ok(w.replicas[0]));
    assert_eq!(
        backends(&w, 1, &app, false).await,
        1,
        "the pool keeps its connection"
    );

    // A read on replica 1 is under way when the host is replaced: it waits for `items`, which
    // replica 1's replay holds locked for an open transaction of the primary until the test
    // commits it (no sleep that a loaded machine's steps below could outlast).
    let items = format!("{}.items", w.schema.name);
    let locker = w.cluster.primary().await;
    let lock = format!("BEGIN; LOCK TABLE {items} IN ACCESS EXCLUSIVE MODE");
    locker.batch_execute(&lock).await.unwrap();
    // A commit elsewhere flushes the lock's WAL record: replayed, replica 1 holds the lock.
    let flush = "SELECT pg_logical_emit_message(true, 'pindb-test', 'flush')::text";
    w.primary.batch_execute(flush).await.unwrap();
    w.cluster
        .wait_for_replay(1, w.cluster.primary_lsn().await)
        .await;
    let long = format!(
        "SELECT current_setting('port')::int AS port, \
         (SELECT count(*) FROM {items})::text AS waited"
    );
    let (in_flight, after) = tokio::join!(scope(db.port_of_sql(&long)), async {
        wait_backends(&w, 1, &app, true, 1).await;
        let changed_at = Instant::now();
        let changed = router.set_replicas("default", [replica(&w, 2)]).unwrap();
        assert_eq!(changed, ["default-1", "default-2"]);
        // At once: no new read goes to the removed host, nor to the new one before the
        // monitor has checked it (which it does at once: it may have by now).
        let at_once = scope(db.read()).await;
        assert!(
            at_once == Ok(w.master) || (at_once == Ok(w.replicas[1]) && is_up(router, "default-2")),
            "{at_once:?}"
        );
        assert_eq!(
            backends(&w, 1, &app, true).await,
            1,
            "the read under way was not cut"
        );
        wait_up(router, "default-2").await;
        let served_after = changed_at.elapsed();
        // Replayed, the commit lets the read under way finish.
        locker.batch_execute("COMMIT").await.unwrap();
        served_after
    });
    let served_after = after;
    assert_eq!(
        in_flight,
        Ok(w.replicas[0]),
        "the read under way finished on its host"
    );
    // Its connection came back to a pool nobody holds any more: closed.
    wait_backends(&w, 1, &app, false, 0).await;

    wait_up(router, "default-2").await;
    assert_eq!(scope(db.read()).await, Ok(w.replicas[1]));
    eprintln!(
        "measured: the new host served reads {} ms after set_replicas (monitor.interval_ms = 50)",
        served_after.as_millis()
    );
    assert_eq!(hosts(router), [replica(&w, 2)]);
    router.stop_monitor();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_host_change_neither_a_held_connection_nor_a_context_reads_the_old_host() {
    use diesel_async::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Port {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        port: i32,
    }
    async fn port(conn: &mut pindb_diesel::bb8::PinDbConnection) -> i32 {
        let sql = "SELECT current_setting('port')::int AS port";
        let row: Port = diesel::sql_query(sql).get_result(conn).await.unwrap();
        row.port
    }
    let w = World::new().await;
    let db = pindb_diesel::bb8::PinDb::new(config(&w, "pindb-held", "max_replicas = 1")).unwrap();
    let router = db.router();
    router.start_monitor().await.unwrap();
    router.set_replicas("default", [replica(&w, 1)]).unwrap();
    wait_up(router, "default-1").await;

    // A routed connection keeps replica 1's connection between two requests.
    let mut conn = db.get();
    assert_eq!(scope(port(&mut conn)).await, w.replicas[0]);
    router.set_replicas("default", [replica(&w, 2)]).unwrap();
    wait_up(router, "default-1").await;
    assert_eq!(
        scope(port(&mut conn)).await,
        w.replicas[1],
        "the alias now names replica 2: not the connection held for replica 1"
    );

    // Within one context: it read from replica 2, the slot moves back to replica 1, which
    // could be behind what it read: the master (monotonic reads).
    scope(async {
        let mut conn = db.get();
        assert_eq!(port(&mut conn).await, w.replicas[1]);
        router.set_replicas("default", [replica(&w, 1)]).unwrap();
        wait_up(router, "default-1").await;
        assert_eq!(port(&mut conn).await, w.master, "monotonic reads");
        assert_eq!(port(&mut db.get()).await, w.master, "the whole context");
        // Even named explicitly: the alias no longer names the host it read from.
        let named = router
            .db_for_read(&pindb_core::Hint::alias("default-1"))
            .unwrap();
        assert_eq!(named.role, pindb_core::Role::Master, "{named}");
    })
    .await;
    assert_eq!(scope(port(&mut db.get())).await, w.replicas[0]);
    router.stop_monitor();
}

async fn hosts_follow_set_replicas<A: Adapter>() {
    let w = World::new().await;
    let app = format!("pindb-rt-{}", w.schema.name);
    let db = A::open(config(&w, &app, "max_replicas = 1")).await;
    let router = db.router();
    router.start_monitor().await.unwrap();
    router.set_replicas("default", [replica(&w, 1)]).unwrap();
    wait_up(router, "default-1").await;
    assert_eq!(scope(db.read()).await, Ok(w.replicas[0]), "{}", A::NAME);
    assert_eq!(
        db.port_of_sql_on("default-1", "SELECT current_setting('port')::int AS port")
            .await,
        Ok(w.replicas[0]),
        "{}: the alias names the host it has now",
        A::NAME
    );

    router.set_replicas("default", [replica(&w, 2)]).unwrap();
    let at_once = scope(db.read()).await;
    assert!(
        at_once == Ok(w.master) || (at_once == Ok(w.replicas[1]) && is_up(router, "default-1")),
        "{}: the removed host is not read, nor the new one before its check: {at_once:?}",
        A::NAME
    );
    wait_up(router, "default-1").await;
    assert_eq!(scope(db.read()).await, Ok(w.replicas[1]), "{}", A::NAME);

    router
        .set_replicas("default", Vec::<String>::new())
        .unwrap();
    assert_eq!(scope(db.read()).await, Ok(w.master), "{}", A::NAME);
    router.stop_monitor();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alias_asked_for_by_name_after_a_change_of_two_hosts_seaorm() {
    let w = World::new().await;
    let db = SeaOrm::open(config(&w, "pindb-two", "max_replicas = 2")).await;
    let router = db.router();
    router.start_monitor().await.unwrap();
    // One call, two slots: the set's epoch moves twice.
    router
        .set_replicas("default", [replica(&w, 1), replica(&w, 2)])
        .unwrap();
    wait_up(router, "default-1").await;
    wait_up(router, "default-2").await;
    let sql = "SELECT current_setting('port')::int AS port";
    assert_eq!(db.port_of_sql_on("default-1", sql).await, Ok(w.replicas[0]));
    assert_eq!(db.port_of_sql_on("default-2", sql).await, Ok(w.replicas[1]));
    router.stop_monitor();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_follow_set_replicas_diesel_sync() {
    hosts_follow_set_replicas::<DieselSync>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_follow_set_replicas_seaorm() {
    hosts_follow_set_replicas::<SeaOrm>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_follow_set_replicas_diesel_async() {
    hosts_follow_set_replicas::<DieselAsync>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_records_bring_and_take_hosts_and_a_failing_name_server_keeps_them() {
    let w = World::new().await;
    let dns = DnsServer::start().await;
    let name = "_postgresql._tcp.replicas.pindb.test";
    dns.set_srv(name, &[("127.0.0.1", w.replicas[0] as u16)]);
    let discovery = format!(
        "srv = \"{name}\", nameserver = \"{}\", interval_ms = 100",
        dns.address()
    );
    let db = DieselAsync::open(config(&w, "pindb-srv", &discovery)).await;
    let router = db.router();
    router.start_monitor().await.unwrap();
    wait_until("the SRV record's host is a replica", WAIT, || {
        hosts(router) == [replica(&w, 1)]
    })
    .await;
    wait_up(router, "default-1").await;
    assert_eq!(scope(db.read()).await, Ok(w.replicas[0]));

    // Both standbys now.
    let published = Instant::now();
    dns.set_srv(
        name,
        &[
            ("127.0.0.1", w.replicas[0] as u16),
            ("127.0.0.1", w.replicas[1] as u16),
        ],
    );
    wait_until("both standbys are replicas", WAIT, || {
        hosts(router).len() == 2
    })
    .await;
    let now = router.topology().runtime_replicas("default").unwrap();
    assert_eq!(
        now,
        [("default-1", replica(&w, 1)), ("default-2", replica(&w, 2))],
        "the host that stayed kept its slot"
    );
    wait_up(router, "default-2").await;
    eprintln!(
        "measured: a host published in DNS served reads {} ms later (discovery.interval_ms = 100)",
        published.elapsed().as_millis()
    );

    // The name server fails: the hosts stay.
    dns.set_failing(true);
    let asked = dns.queries();
    // Six more queries: at least three refreshes, whatever hickory retries of a SERVFAIL.
    wait_until("several failed refreshes", WAIT, || {
        dns.queries() >= asked + 6
    })
    .await;
    assert_eq!(hosts(router), [replica(&w, 1), replica(&w, 2)]);
    let read = scope(db.read()).await.unwrap();
    assert!(w.replicas.contains(&read), "{read}");

    // It answers again, with no record: no runtime replica, reads on the master.
    dns.set_failing(false);
    dns.set_srv(name, &[]);
    wait_until("no host left", WAIT, || hosts(router).is_empty()).await;
    assert_eq!(scope(db.read()).await, Ok(w.master));
    router.stop_monitor();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_records_give_hosts_at_the_configured_port() {
    let w = World::new().await;
    let dns = DnsServer::start().await;
    let name = "replicas.pindb.test";
    dns.set_a(name, &[std::net::Ipv4Addr::LOCALHOST]);
    let discovery = format!(
        "dns = \"{name}:{}\", nameserver = \"{}\", interval_ms = 100",
        w.replicas[1],
        dns.address()
    );
    let db = SeaOrm::open(config(&w, "pindb-a", &discovery)).await;
    let router = db.router();
    router.start_monitor().await.unwrap();
    wait_until("the A record's host is a replica", WAIT, || {
        hosts(router) == [replica(&w, 2)]
    })
    .await;
    wait_up(router, "default-1").await;
    assert_eq!(scope(db.read()).await, Ok(w.replicas[1]));
    dns.set_a(name, &[]);
    wait_until("no host left", WAIT, || hosts(router).is_empty()).await;
    assert_eq!(scope(db.read()).await, Ok(w.master));
    router.stop_monitor();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_is_not_a_standby_of_the_master_is_never_read() {
    let w = World::new().await;
    let db = DieselAsync::open(config(&w, "pindb-stranger", "max_replicas = 3")).await;
    let router = db.router();
    router.start_monitor().await.unwrap();
    let primary = format!("127.0.0.1:{}", w.master);
    let stranger = url_host_port(&w.cluster.stranger_url);
    // A real standby beside them, as the control: it comes up, they never do.
    router
        .set_replicas("default", [primary, stranger.clone(), replica(&w, 1)])
        .unwrap();
    wait_up(router, "default-3").await;
    // The stranger was really checked (only a monitor connects there as `pindb-monitor`),
    // then many rounds more (checks run every 50 ms).
    let checked = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pindb-monitor'";
    let on_stranger = pindb_testkit::connect(&w.cluster.stranger_url).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while on_stranger
        .query_one(checked, &[])
        .await
        .unwrap()
        .get::<_, i64>(0)
        == 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stranger was never checked"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for alias in ["default-1", "default-2"] {
        let status = router.topology().replica_status(alias).unwrap().unwrap();
        assert!(
            !status.up,
            "{alias} (the primary, or {stranger}) must not serve reads"
        );
    }
    for _ in 0..10 {
        assert_eq!(scope(db.read()).await, Ok(w.replicas[0]));
    }
    router.stop_monitor();
}

fn url_host_port(url: &str) -> String {
    let rest = url.split_once('@').map_or(url, |(_, r)| r);
    let rest = rest.strip_prefix("postgres://").unwrap_or(rest);
    rest.split(['/', '?']).next().unwrap().to_owned()
}

#[test]
fn bad_runtime_replica_settings_are_refused_with_the_fix() {
    let refused = |toml: &str| {
        Config::from_toml_str(toml)
            .and_then(Router::new)
            .unwrap_err()
    };
    let e = refused(
        r#"
        [masters.default]
        url = "postgres://app@db0/app"
        [sets]
        default = [{ host = "db1", discovery = { max_replicas = 2 } }]
        "#,
    );
    assert!(e.to_string().contains("[masters.<set>.discovery]"), "{e}");
    let e = refused(
        r#"
        [masters.default]
        url = "postgres://app@db0/app"
        discovery = { dns = "a.test", srv = "_pg._tcp.a.test" }
        [sets]
        default = []
        "#,
    );
    assert!(e.to_string().contains("keep one"), "{e}");
    let e = refused(
        r#"
        [masters.default]
        url = "postgres://app@db0/app"
        discovery = { srv = "_pg._tcp.a.test", nameserver = "ns1.test" }
        [sets]
        default = []
        "#,
    );
    assert!(e.to_string().contains("ip:port"), "{e}");
    let e = refused(
        r#"
        [masters.default]
        url = "postgres://app@db0/app"
        discovery = { nameserver = "127.0.0.1:53" }
        [sets]
        default = []
        "#,
    );
    assert!(e.to_string().contains("no `dns` or `srv` name"), "{e}");

    let router = Router::new(
        Config::from_toml_str(
            r#"
            [masters.default]
            url = "postgres://app@db0/app"
            discovery = { max_replicas = 1 }
            [masters.other]
            url = "postgres://app@db9/app"
            [sets]
            default = [{ host = "db1" }]
            other = []
            "#,
        )
        .unwrap(),
    )
    .unwrap();
    let e = router.set_replicas("other", ["db2"]).unwrap_err();
    assert!(e.to_string().contains("[masters.other.discovery]"), "{e}");
    let e = router.set_replicas("default-1", ["db2"]).unwrap_err();
    assert!(e.to_string().contains("name the set"), "{e}");
    let e = router.set_replicas("default", ["db2:x"]).unwrap_err();
    assert!(e.to_string().contains("db2:x"), "{e}");
    router.set_replicas("default", ["db2"]).unwrap();
    let e = router.set_replicas("default", ["db3", "db4"]).unwrap_err();
    assert!(
        matches!(&e, PinDbError::Config { .. }) && e.to_string().contains("max_replicas"),
        "{e}"
    );
    let now = router.topology().runtime_replicas("default").unwrap();
    assert_eq!(
        now,
        [("default-2", "db2:5432".to_owned())],
        "the slot follows the configured replica; nothing changed"
    );
}
