#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
//! A logical-replication subscriber as a replica, through every adapter on the dev cluster
//! (`scripts/cluster up`: the subscriber applies the primary's publication of `logical.notes`;
//! `logical.audit` exists on both and is not published). The topology check tells a
//! subscriber of the master from anything else; reads of published tables go to it, reads of
//! other tables to a replica that has them or to the master; a user reads their own writes
//! whether the subscription is applying, disabled or enabled again; a write that reaches it
//! fails instead of landing.

use std::time::{Duration, Instant};

use pindb_core::{scope, Config, DatabaseSettings, Reason, ReplicaKind, Role, Router, RouterMode};
use pindb_scenarios::{port_of, Adapter, DieselAsync, DieselSync, Failure, SeaOrm};
use pindb_testkit::{wait_until, Cluster};

/// The cluster as one set: the primary, optionally replica 1 (streaming), then the logical
/// subscriber (`default-1`, or `default-2` after replica 1).
fn config(c: &Cluster, with_streaming: bool) -> Config {
    let mut replicas = Vec::new();
    if with_streaming {
        replicas.push(DatabaseSettings::from_url(c.replica_url(1)));
    }
    replicas.push(DatabaseSettings {
        kind: Some(ReplicaKind::Logical),
        ..DatabaseSettings::from_url(&c.logical_url)
    });
    let mut config = Config::single_set(&c.primary_url, Vec::<String>::new());
    config.sets.insert("default".to_owned(), replicas);
    config.router = RouterMode::Greedy;
    config.monitor.interval_ms = 50;
    config
}

/// A name no other test or run uses.
fn unique(what: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{what}-{}-{n}-{nanos}", std::process::id())
}

/// Rows of `table` by `author`, and the port of the server that counted them, packed into
/// the one integer column the adapters return.
fn count_sql(table: &str, author: &str) -> String {
    format!(
        "SELECT (count(*) * 100000 + current_setting('port')::int)::int AS port \
         FROM logical.{table} WHERE author = '{author}'"
    )
}

fn insert_sql(table: &str, author: &str) -> String {
    format!(
        "INSERT INTO logical.{table} (author, body) VALUES ('{author}', 'x') \
         RETURNING current_setting('port')::int AS port"
    )
}

/// `(rows, port)` of a [`count_sql`] read.
async fn count<A: Adapter>(db: &A, table: &str, author: &str) -> (i32, i32) {
    let packed = db
        .port_of_sql(&count_sql(table, author))
        .await
        .unwrap_or_else(|e| panic!("{}: reading {table}: {e:?}", A::NAME));
    (packed / 100_000, packed % 100_000)
}

struct Ports {
    master: i32,
    streaming: i32,
    logical: i32,
}

async fn ports(c: &Cluster) -> Ports {
    Ports {
        master: port_of(&c.primary().await).await,
        streaming: port_of(&c.replica(1).await).await,
        logical: port_of(&c.logical().await).await,
    }
}

#[tokio::test]
async fn the_topology_check_accepts_a_subscriber_of_the_master_and_refuses_anything_else() {
    let c = Cluster::from_env();
    let _applying = c.subscription_shared().await;
    let ok = Router::new(config(&c, true)).unwrap();
    assert_eq!(ok.check_topology().await.unwrap(), Vec::<String>::new());

    let refused = |config: Config| async move {
        Router::new(config)
            .unwrap()
            .check_topology()
            .await
            .expect_err("the topology check must refuse this")
            .to_string()
    };
    // The subscriber, under another master: its subscription's slot is not there.
    let mut other_master = config(&c, false);
    other_master.masters.insert(
        "default".to_owned(),
        DatabaseSettings::from_url(&c.stranger_url),
    );
    let e = refused(other_master).await;
    assert!(
        e.contains("`default-1`") && e.contains("does not subscribe") && e.contains("pindb_sub"),
        "{e}"
    );
    // A primary with no subscription at all, as a logical replica.
    let mut stranger = config(&c, false);
    stranger.sets.get_mut("default").unwrap()[0].url = Some(c.stranger_url.clone());
    let e = refused(stranger).await;
    assert!(e.contains("no subscription"), "{e}");
    // The subscriber configured as a streaming replica: not a standby.
    let mut streaming = config(&c, false);
    streaming.sets.get_mut("default").unwrap()[0].kind = None;
    let e = refused(streaming).await;
    assert!(e.contains("not in recovery"), "{e}");
    // `kind` on a master is a config error, before any connection.
    let mut on_master = config(&c, false);
    on_master.masters.get_mut("default").unwrap().kind = Some(ReplicaKind::Logical);
    let e = Router::new(on_master).unwrap_err().to_string();
    assert!(e.contains("`kind`") && e.contains("replica"), "{e}");
}

#[tokio::test]
async fn a_disabled_subscription_is_refused_at_start_up() {
    let c = Cluster::from_env();
    let mut control = c.subscription_exclusive().await;
    control.disable().await;
    let e = Router::new(config(&c, false))
        .unwrap()
        .check_topology()
        .await
        .unwrap_err()
        .to_string();
    control.enable().await;
    assert!(
        e.contains("`default-1`") && e.contains("disabled") && e.contains("ENABLE"),
        "{e}"
    );
}

async fn reads_go_where_their_tables_are<A: Adapter>() {
    let c = Cluster::from_env();
    let _applying = c.subscription_shared().await;
    let _replaying = c.shared().await;
    let p = ports(&c).await;

    // The subscriber alone: published tables there, the rest on the master.
    let db = A::open(config(&c, false)).await;
    db.router().start_monitor().await.unwrap();
    scope(async {
        assert_eq!(
            count(&db, "notes", "nobody").await.1,
            p.logical,
            "{}",
            A::NAME
        );
        assert_eq!(
            count(&db, "audit", "nobody").await.1,
            p.master,
            "{}",
            A::NAME
        );
        let audit = db
            .router()
            .explain_sql(&count_sql("audit", "nobody"))
            .unwrap();
        assert_eq!(audit.reason, Reason::NotReplicated);
        // The master served this context `audit`: its later reads of the set stay there (a
        // join of `notes` with `audit` would have shown `notes` as of now).
        assert_eq!(
            count(&db, "notes", "nobody").await.1,
            p.master,
            "monotonic reads, {}",
            A::NAME
        );
    })
    .await;
    scope(async {
        assert_eq!(
            count(&db, "notes", "nobody").await.1,
            p.logical,
            "{}",
            A::NAME
        );
        // A read that names no table needs none: the context's replica serves it.
        let any = "SELECT current_setting('port')::int AS port";
        assert_eq!(db.port_of_sql(any).await, Ok(p.logical), "{}", A::NAME);
        assert_eq!(
            count(&db, "notes", "nobody").await.1,
            p.logical,
            "still its replica"
        );
        // diesel writes joins in parentheses: the unpublished table inside counts.
        let join = "SELECT (count(*) * 100000 + current_setting('port')::int)::int AS port \
            FROM (\"logical\".\"notes\" INNER JOIN \"logical\".\"audit\" \
            ON (\"audit\".\"id\" = \"notes\".\"id\"))";
        assert_eq!(
            db.port_of_sql(join).await.map(|v| v % 100_000),
            Ok(p.master),
            "{}",
            A::NAME
        );
    })
    .await;

    // With a streaming replica beside it: a context whose first read is of an unpublished
    // table takes the replica that has it; one that began on the subscriber reads such a
    // table from the master (another replica might be behind what it read). Never the
    // subscriber for `audit`.
    let db = A::open(config(&c, true)).await;
    db.router().start_monitor().await.unwrap();
    let mut seen = std::collections::BTreeMap::new();
    for i in 0..8 {
        let order = if i % 2 == 0 {
            ["audit", "notes"]
        } else {
            ["notes", "audit"]
        };
        let served: Vec<i32> = scope(async {
            let mut served = Vec::new();
            for table in order {
                served.push(count(&db, table, "nobody").await.1);
            }
            served
        })
        .await;
        let audit = served[if order[0] == "audit" { 0 } else { 1 }];
        assert_ne!(
            audit,
            p.logical,
            "{}: audit read from the subscriber",
            A::NAME
        );
        if order[0] == "audit" {
            assert_eq!(served, [p.streaming, p.streaming], "{}", A::NAME);
        }
        *seen.entry(served).or_insert(0) += 1;
    }
    assert!(
        seen.contains_key(&vec![p.logical, p.master]),
        "{}: some context began on the subscriber: {seen:?}",
        A::NAME
    );
}

#[tokio::test]
async fn reads_go_where_their_tables_are_diesel_async() {
    reads_go_where_their_tables_are::<DieselAsync>().await;
}

#[tokio::test]
async fn reads_go_where_their_tables_are_diesel_sync() {
    reads_go_where_their_tables_are::<DieselSync>().await;
}

#[tokio::test]
async fn reads_go_where_their_tables_are_seaorm() {
    reads_go_where_their_tables_are::<SeaOrm>().await;
}

/// Until the monitor has checked the subscriber since now: its known position reaches the
/// primary's position now. A check learns the tables the subscriber carries after its
/// position, so that check saw every publication change made before this call.
async fn monitor_checked_since_now<A: Adapter>(c: &Cluster, db: &A) {
    let now = c.primary_lsn().await;
    let subscriber = || db.router().topology().replica_status("default-1").unwrap();
    wait_until(
        &format!("the monitor saw the subscriber at {now}"),
        Duration::from_secs(20),
        || subscriber().unwrap().replay_lsn >= now,
    )
    .await;
}

/// What the master publishes is not enough: a table published after the subscription was
/// made is not copied until `REFRESH PUBLICATION`, and a table published with a row filter is
/// only partly there. Neither serves a read; published whole again, the table does.
#[tokio::test]
async fn a_table_is_carried_only_when_published_whole_and_synchronized() {
    let c = Cluster::from_env();
    let mut control = c.subscription_exclusive().await;
    let p = ports(&c).await;
    let db = DieselAsync::open(config(&c, false)).await;
    db.router().start_monitor().await.unwrap();
    // Each read below waits for a monitor check that learned the change (a fixed pause may not
    // cover one on a loaded machine).
    let settle = || monitor_checked_since_now(&c, &db);
    let served = |table: &'static str| {
        let db = &db;
        async move { scope(count(db, table, "nobody")).await.1 }
    };
    assert_eq!(served("notes").await, p.logical);

    control.alter_publication("ADD TABLE logical.audit").await;
    settle().await;
    let unsynchronized = served("audit").await;
    control
        .alter_publication("SET TABLE logical.notes WHERE (id > 0)")
        .await;
    settle().await;
    let filtered = served("notes").await;
    control.alter_publication("SET TABLE logical.notes").await;
    settle().await;
    let whole = served("notes").await;

    assert_eq!(unsynchronized, p.master, "published, never copied");
    assert_eq!(filtered, p.master, "published with a row filter");
    assert_eq!(whole, p.logical, "published whole again");
}

/// The stale-read hunt on the subscriber: each user writes a note, then reads it back in the
/// next request (a keyed context), mostly at once (before the subscriber confirmed the write),
/// sometimes after it confirmed it.
async fn a_user_always_reads_their_own_write<A: Adapter>() {
    let c = Cluster::from_env();
    let _applying = c.subscription_shared().await;
    let p = ports(&c).await;
    let db = A::open(config(&c, false)).await;
    db.router().start_monitor().await.unwrap();
    let consistency = db.router().consistency().clone();
    let (mut stale, mut on_subscriber, mut on_master) = (0, 0, 0);
    for i in 0..40 {
        let user = unique(&format!("hunt{i}"));
        let wrote = consistency
            .scope_with_key(Some(&user), db.port_of_sql(&insert_sql("notes", &user)))
            .await;
        assert_eq!(wrote, Ok(p.master), "{}", A::NAME);
        if i % 4 == 0 {
            // Some reads later: once the subscriber confirmed the write (about 200 ms after it:
            // it commits asynchronously and flushes every `wal_writer_delay`) and the monitor
            // saw that, so that it may serve.
            monitor_checked_since_now(&c, &db).await;
        }
        let (rows, port) = consistency
            .scope_with_key(Some(&user), count(&db, "notes", &user))
            .await;
        stale += usize::from(rows != 1);
        match port {
            port if port == p.logical => on_subscriber += 1,
            port if port == p.master => on_master += 1,
            other => panic!("read served by port {other}"),
        }
    }
    assert_eq!(
        stale,
        0,
        "{}: stale reads ({on_subscriber} on the subscriber, {on_master} on the master)",
        A::NAME
    );
    assert!(
        on_subscriber > 0 && on_master > 0,
        "{}: the hunt must exercise both: {on_subscriber} reads on the subscriber, {on_master} on the master",
        A::NAME
    );
}

#[tokio::test]
async fn a_user_always_reads_their_own_write_diesel_async() {
    a_user_always_reads_their_own_write::<DieselAsync>().await;
}

#[tokio::test]
async fn a_user_always_reads_their_own_write_diesel_sync() {
    a_user_always_reads_their_own_write::<DieselSync>().await;
}

#[tokio::test]
async fn a_user_always_reads_their_own_write_seaorm() {
    a_user_always_reads_their_own_write::<SeaOrm>().await;
}

/// With the subscription disabled the subscriber really is stale (it lacks the note), yet the
/// user who wrote it reads it (from the master); enabled again, the user's reads return to the
/// subscriber.
async fn a_disabled_subscription_never_serves_a_stale_read<A: Adapter>() {
    let c = Cluster::from_env();
    let mut control = c.subscription_exclusive().await;
    let p = ports(&c).await;
    // Time lag cannot take the subscriber out within the test's waits: only its not applying
    // can.
    let mut config = config(&c, false);
    config.monitor.max_lag_ms = 25_000;
    let db = A::open(config).await;
    db.router().start_monitor().await.unwrap();
    let consistency = db.router().consistency().clone();
    let user = unique("paused");

    control.disable().await;
    let wrote = consistency
        .scope_with_key(Some(&user), db.port_of_sql(&insert_sql("notes", &user)))
        .await;
    assert_eq!(wrote, Ok(p.master));
    for _ in 0..5 {
        let read = consistency
            .scope_with_key(Some(&user), count(&db, "notes", &user))
            .await;
        assert_eq!(read, (1, p.master), "{}: the user's own write", A::NAME);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let on_subscriber: i64 = c
        .logical()
        .await
        .query_one(
            "SELECT count(*) FROM logical.notes WHERE author = $1",
            &[&user],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        on_subscriber, 0,
        "the subscriber is behind: the test proves something"
    );
    // A subscription that is not applying is frozen: nobody reads from it, once the monitor
    // saw it (a check after the disable; the user's reads above never needed one).
    let subscriber = || db.router().topology().replica_status("default-1").unwrap();
    wait_until(
        "the monitor takes the disabled subscription out",
        Duration::from_secs(20),
        || subscriber().unwrap().over_lag,
    )
    .await;
    let other = scope(count(&db, "notes", &user)).await;
    assert_eq!(other, (1, p.master), "{}: an unkeyed read", A::NAME);

    control.enable().await;
    c.wait_for_apply(c.primary_lsn().await).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let read = consistency
            .scope_with_key(Some(&user), count(&db, "notes", &user))
            .await;
        assert_eq!(read.0, 1, "{}: never stale", A::NAME);
        if read.1 == p.logical {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}: the user's reads did not return to the subscriber after it caught up",
            A::NAME
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_disabled_subscription_never_serves_a_stale_read_diesel_async() {
    a_disabled_subscription_never_serves_a_stale_read::<DieselAsync>().await;
}

#[tokio::test]
async fn a_disabled_subscription_never_serves_a_stale_read_seaorm() {
    a_disabled_subscription_never_serves_a_stale_read::<SeaOrm>().await;
}

/// A logical replica accepts writes: one that reaches it by mistake (here an explicit replica
/// alias) must fail, not diverge it. pindb opens its sessions read-only.
async fn a_write_that_reaches_the_subscriber_fails_instead_of_landing<A: Adapter>() {
    let c = Cluster::from_env();
    let _applying = c.subscription_shared().await;
    let db = A::open(config(&c, false)).await;
    let user = unique("misrouted");
    let result = scope(db.port_of_sql_on("default-1", &insert_sql("audit", &user))).await;
    match result {
        Err(Failure::Other(e)) => assert!(e.contains("read-only transaction"), "{}: {e}", A::NAME),
        other => panic!("{}: the write was not refused: {other:?}", A::NAME),
    }
    let landed: i64 = c
        .logical()
        .await
        .query_one(
            "SELECT count(*) FROM logical.audit WHERE author = $1",
            &[&user],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(landed, 0, "{}: the write landed on the subscriber", A::NAME);
    // The route pindb itself takes for that statement is the master's.
    scope(async {
        let route = db.router().route_sql(&insert_sql("audit", &user)).unwrap();
        assert_eq!(route.role, Role::Master);
    })
    .await;
}

#[tokio::test]
async fn a_write_that_reaches_the_subscriber_fails_diesel_async() {
    a_write_that_reaches_the_subscriber_fails_instead_of_landing::<DieselAsync>().await;
}

#[tokio::test]
async fn a_write_that_reaches_the_subscriber_fails_diesel_sync() {
    a_write_that_reaches_the_subscriber_fails_instead_of_landing::<DieselSync>().await;
}

#[tokio::test]
async fn a_write_that_reaches_the_subscriber_fails_seaorm() {
    a_write_that_reaches_the_subscriber_fails_instead_of_landing::<SeaOrm>().await;
}

/// Every event's message and fields, as text, for the monitor-log test.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Captured {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Text(String);
        impl tracing::field::Visit for Text {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0.push_str(&format!(" {}={value:?}", field.name()));
            }
        }
        let mut text = Text(String::new());
        event.record(&mut text);
        self.0.lock().unwrap().push(text.0);
    }
}

#[tokio::test]
async fn the_monitor_says_not_applying_for_a_disabled_subscription() {
    use tracing_subscriber::layer::SubscriberExt as _;
    let c = Cluster::from_env();
    let mut control = c.subscription_exclusive().await;
    let captured = Captured::default();
    // This test's thread (the current-thread runtime runs the monitor's tasks here too).
    let _log =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(captured.clone()));
    let router = Router::new(config(&c, false)).unwrap();
    router.start_monitor().await.unwrap();
    control.disable().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !router
        .topology()
        .replica_status("default-1")
        .unwrap()
        .unwrap()
        .over_lag
    {
        assert!(Instant::now() < deadline, "the monitor never took it out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    control.enable().await;
    let lines = captured.0.lock().unwrap().clone();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("not applying") && l.contains("default-1")),
        "{lines:#?}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("lag state changed") && l.contains("over_lag=true")),
        "a frozen subscription is not reported as lag: {lines:#?}"
    );
}
