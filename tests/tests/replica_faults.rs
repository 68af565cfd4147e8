#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
//! Replicas that refuse, hang or vanish, and a master that cannot be reached, through every
//! adapter on the dev cluster (`scripts/cluster up`): no read outside a transaction fails
//! because of a replica while the master can serve it, and a context never reads back in
//! time after its replica fails. The faults are real: a function that writes (PL/pgSQL, or
//! MariaDB's stored function run with the caller's rights), a view over `nextval()`, a TCP
//! proxy that freezes or stops, an endpoint that never answers, a closed port for the master.
//!
//! The tests that mean the same on MariaDB run on its set too (module `mariadb`), with the
//! same bodies: what differs is the SQL ([`Faults`]) and the world ([`Servers`]).

use pindb_core::{is_pinned, scope, Config, Reason, Role, RouterMode};
use pindb_scenarios::{
    address, with_address, Adapter, Backend, DieselAsync, DieselAsyncMariaDb, DieselSync,
    DieselSyncMariaDb, Failure, MariaDb, Postgres, SeaOrm, SeaOrmMariaDb, Servers, World, WorldOf,
};
use pindb_testkit::Proxy;
use std::time::Duration;

/// What the fault tests say in each database's SQL. `{schema}` stands for the world's schema
/// or database ([`Servers::setup`]).
trait Faults: Backend {
    /// A function `{schema}.bump_views()` that adds a row to `{schema}.views` and returns the
    /// number of the server that ran it ([`Backend::SERVER`]): a read by its text, a write in
    /// truth, which a replica refuses. On PostgreSQL also a view over `nextval()`,
    /// `{schema}.next_ticket`.
    const WRITES_IN_DISGUISE: &'static str;
    /// A read of `port` ([`Backend::SERVER`]) that takes 0.3 s.
    const SLOW_READ: &'static str;
}

impl Faults for Postgres {
    const WRITES_IN_DISGUISE: &'static str = "
        CREATE TABLE {schema}.views (n int);
        CREATE FUNCTION {schema}.bump_views() RETURNS int LANGUAGE plpgsql AS $$
            BEGIN INSERT INTO {schema}.views VALUES (1); RETURN current_setting('port')::int; END
        $$;
        CREATE SEQUENCE {schema}.tickets;
        CREATE VIEW {schema}.next_ticket AS
            SELECT nextval('{schema}.tickets')::int AS n, current_setting('port')::int AS port;";
    const SLOW_READ: &'static str =
        "SELECT current_setting('port')::int AS port FROM pg_sleep(0.3)";
}

impl Faults for MariaDb {
    // Made by the admin (with a binary log, only SUPER may make a function, and only one
    // declared DETERMINISTIC: a lie that does not matter here), run with the caller's rights,
    // so a read_only replica refuses its insert to the application user (error 1290).
    const WRITES_IN_DISGUISE: &'static str = "
        CREATE TABLE {schema}.views (n INT);
        DELIMITER //
        CREATE FUNCTION {schema}.bump_views() RETURNS INT DETERMINISTIC MODIFIES SQL DATA
            SQL SECURITY INVOKER
            BEGIN INSERT INTO {schema}.views VALUES (1); RETURN @@server_id; END//
        DELIMITER ;";
    const SLOW_READ: &'static str =
        "SELECT CAST(@@server_id AS SIGNED) AS port, SLEEP(0.3) AS slept";
}

/// A fresh world of `A`'s database with [`Faults::WRITES_IN_DISGUISE`], replayed by the
/// replicas (they must have the function before they can refuse it).
async fn world<A: Adapter<Backend: Faults>>() -> WorldOf<A> {
    let w = <WorldOf<A> as Servers>::fresh().await;
    w.setup(<A::Backend as Faults>::WRITES_IN_DISGUISE).await;
    w
}

/// `url` through `proxy`.
fn through(url: &str, proxy: &Proxy) -> String {
    with_address(url, &format!("127.0.0.1:{}", proxy.port()))
}

/// Short timeouts: a test waits for each fault at most this long (a read that hangs, 3 s
/// rather than the default 30 s). Roomy still for a new connection through the in-process
/// proxy and its handshake, and a healthy read, on a loaded machine.
fn impatient(mut config: Config) -> Config {
    config.reads.replica_connect_timeout_ms = 2_000;
    config.reads.timeout_ms = 3_000;
    config
}

async fn a_function_that_writes_runs_on_the_master_or_is_refused<A: Adapter<Backend: Faults>>() {
    let w = world::<A>().await;
    let sql = format!("SELECT {}.bump_views() AS port", w.schema());

    let greedy = A::open(w.config(Some(RouterMode::Greedy))).await;
    scope(async {
        assert_eq!(
            greedy.port_of_sql(&sql).await,
            Ok(w.master()),
            "{}",
            A::NAME
        );
        assert!(
            is_pinned("default"),
            "{}: the refused read counts as a write",
            A::NAME
        );
    })
    .await;
    assert_eq!(
        w.count("views").await,
        1,
        "{}: it ran once, on the master",
        A::NAME
    );
    let explained = greedy.router().explain_sql(&sql).unwrap();
    assert_eq!(
        (explained.role, explained.reason),
        (Role::Master, Reason::ReplicaRefused),
        "{}: learned",
        A::NAME
    );

    let strict = A::open(w.config(Some(RouterMode::Strict))).await;
    scope(async {
        let refused = strict.port_of_sql(&sql).await;
        assert_eq!(refused, Err(Failure::UnpinnedWrite), "{}", A::NAME);
    })
    .await;
    assert_eq!(
        w.count("views").await,
        1,
        "{}: strict never writes unpinned",
        A::NAME
    );
    w.finish().await;
}

async fn a_view_over_nextval_and_listed_functions<A: Adapter<Backend = Postgres>>() {
    let w = world::<A>().await;
    let view = format!("SELECT port FROM {}.next_ticket", w.schema.name);
    let greedy = A::open(w.config(Some(RouterMode::Greedy))).await;
    scope(async {
        assert_eq!(
            greedy.port_of_sql(&view).await,
            Ok(w.master()),
            "{}",
            A::NAME
        );
    })
    .await;

    // Listed: routed to the master before any replica sees it.
    let call = format!("SELECT {}.bump_views() AS port", w.schema.name);
    let mut config = w.config(Some(RouterMode::Greedy));
    config.write_functions = vec![format!("{}.bump_views", w.schema.name)];
    config.write_relations = vec!["next_ticket".to_owned()];
    let listed = A::open(config).await;
    for sql in [&call, &view] {
        let explained = listed.router().explain_sql(sql).unwrap();
        assert_eq!(explained.role, Role::Master, "{}: {sql}", A::NAME);
        assert_ne!(
            explained.reason,
            Reason::ReplicaRefused,
            "{}: {sql}",
            A::NAME
        );
        scope(async {
            assert_eq!(listed.port_of_sql(sql).await, Ok(w.master()), "{}", A::NAME);
        })
        .await;
    }
    w.finish().await;
}

async fn a_replica_that_never_answers_costs_one_timeout<A: Adapter<Backend: Faults>>() {
    let w = world::<A>().await;
    let hole = Proxy::black_hole().await;
    let mut config = impatient(Config::single_set(w.url(0), [through(&w.url(1), &hole)]));
    config.router = RouterMode::Strict;
    let db = A::open(config).await;
    let started = std::time::Instant::now();
    scope(async {
        assert_eq!(db.read().await, Ok(w.master()), "{}", A::NAME);
    })
    .await;
    eprintln!(
        "{}: first read served after {:?}",
        A::NAME,
        started.elapsed()
    );
    let status = db.router().topology().replica_status("default-1").unwrap();
    assert!(!status.unwrap().up, "{}: suspected at once", A::NAME);
    // Suspected: the next read goes straight to the master.
    scope(async { assert_eq!(db.read().await, Ok(w.master()), "{}", A::NAME) }).await;
    w.finish().await;
}

/// Replica 1 behind a proxy, replica 2 direct: a fresh router's first context reads replica 1.
async fn behind_a_proxy<A: Adapter>(w: &WorldOf<A>) -> (A, Proxy) {
    let proxy = Proxy::start(&address(&w.url(1))).await;
    let mut config = impatient(Config::single_set(
        w.url(0),
        [through(&w.url(1), &proxy), w.url(2)],
    ));
    config.router = RouterMode::Strict;
    (A::open(config).await, proxy)
}

/// `fault` strikes replica 1 after a context read from it: the context's next reads go to the
/// master (replica 2 could be behind what it read), never to an error; replica 1 is out of
/// rotation for the next context.
async fn a_failed_replica_never_sends_a_context_back_in_time<A: Adapter<Backend: Faults>>(
    fault: fn(&Proxy),
) {
    let w = world::<A>().await;
    let (db, proxy) = behind_a_proxy::<A>(&w).await;
    scope(async {
        assert_eq!(
            db.read().await,
            Ok(w.replicas()[0]),
            "{}: replica 1 first",
            A::NAME
        );
        fault(&proxy);
        assert_eq!(
            db.read().await,
            Ok(w.master()),
            "{}: moved to the master",
            A::NAME
        );
        assert_eq!(
            db.read().await,
            Ok(w.master()),
            "{}: and stays there",
            A::NAME
        );
    })
    .await;
    let status = db.router().topology().replica_status("default-1").unwrap();
    assert!(!status.unwrap().up, "{}: replica 1 suspected", A::NAME);
    scope(async {
        assert_eq!(
            db.read().await,
            Ok(w.replicas()[1]),
            "{}: replica 2",
            A::NAME
        );
    })
    .await;
    proxy.thaw();
    w.finish().await;
}

async fn a_master_that_cannot_be_reached_says_why<A: Adapter>() {
    let w = <WorldOf<A> as Servers>::fresh().await;
    let mut config = w.config(Some(RouterMode::Greedy));
    config.masters.get_mut("default").unwrap().url = Some(with_address(&w.url(0), "127.0.0.1:1"));
    config
        .masters
        .get_mut("default")
        .unwrap()
        .connect_timeout_ms = Some(500);
    let db = A::open(config).await;
    let failed = scope(db.write()).await;
    match failed {
        Err(Failure::Unreachable(text)) => {
            assert!(text.contains("master `default`"), "{}: {text}", A::NAME);
            assert!(
                text.to_lowercase().contains("refused"),
                "{}: {text}",
                A::NAME
            );
        }
        other => panic!("{}: expected Unreachable, got {other:?}", A::NAME),
    }
    w.finish().await;
}

/// A master that refuses connections (stopped, no promotion): a write fails with what
/// happened as soon as pindb's own attempt is refused, not after `connect_timeout_ms` (5 s by
/// default) of the pool's retries. The bound below is half that timeout: generous for a busy
/// machine, and far above the ~50 ms it takes.
async fn a_refused_master_fails_a_write_at_once<A: Adapter>() {
    let w = <WorldOf<A> as Servers>::fresh().await;
    let mut config = w.config(Some(RouterMode::Greedy));
    let master = config.masters.get_mut("default").unwrap();
    master.url = Some(with_address(&w.url(0), "127.0.0.1:1"));
    master.connect_timeout_ms = Some(5_000);
    let db = A::open(config).await;
    let start = std::time::Instant::now();
    let failed = scope(db.write()).await;
    let took = start.elapsed();
    assert!(
        matches!(failed, Err(Failure::Unreachable(_))),
        "{}: {failed:?}",
        A::NAME
    );
    assert!(
        took < Duration::from_millis(2_500),
        "{}: the refused write failed after {took:?}, not at once",
        A::NAME
    );
    w.finish().await;
}

/// A write whose master refuses the connection never reached a server: it fails as
/// `Unreachable`, pins nothing and records no position, so the context's next read and the
/// same user's next keyed request are served by a replica while the master is down. A write
/// that reached the master and lost its connection mid-statement (its outcome unknown) keeps
/// its pin: the context reads that set from the master.
async fn a_write_that_never_reached_a_server_pins_nothing<A: Adapter<Backend: Faults>>() {
    let w = <WorldOf<A> as Servers>::fresh().await;
    let proxy = Proxy::start(&address(&w.url(0))).await;
    let mut config = w.config(Some(RouterMode::Greedy));
    let master = config.masters.get_mut("default").unwrap();
    master.url = Some(through(&w.url(0), &proxy));
    master.connect_timeout_ms = Some(500);
    let db = A::open(config).await;
    // Uncut, the slow write runs: cut, it fails because of the cut, not because of its SQL.
    let uncut = scope(db.slow_write()).await;
    assert_eq!(uncut, Ok(w.master()), "{}: the slow write, uncut", A::NAME);
    // Sent, then cut (the connection closed mid-statement): the outcome is unknown, the pin
    // stays.
    scope(async {
        let write = db.slow_write();
        tokio::pin!(write);
        let cut = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            proxy.sever();
            std::future::pending::<()>().await
        };
        let outcome = tokio::select! { o = &mut write => o, () = cut => unreachable!() };
        assert!(
            outcome.is_err(),
            "{}: the write was cut: {outcome:?}",
            A::NAME
        );
        assert!(
            is_pinned("default"),
            "{}: a write that was sent stays pinned",
            A::NAME
        );
    })
    .await;
    // Refused: never sent. (After the 1 s for which the cut's diagnosis, "it connects", is
    // kept: the refusal is then said as such.)
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    proxy.stop();
    let router = db.router().clone();
    let consistency = router.consistency();
    let reads_a_replica = async |what: &str| {
        let read = db.read().await;
        assert!(
            read.as_ref().is_ok_and(|p| w.replicas().contains(p)),
            "{}: {what}, from a replica: {read:?}",
            A::NAME
        );
    };
    consistency
        .scope_with_key(Some("alice"), async {
            let failed = db.write().await;
            assert!(
                matches!(failed, Err(Failure::Unreachable(_))),
                "{}: {failed:?}",
                A::NAME
            );
            assert!(
                !is_pinned("default"),
                "{}: a refused write pinned the set",
                A::NAME
            );
            reads_a_replica("the next read").await;
        })
        .await;
    let next_request = reads_a_replica("the user's next request, not the dead master");
    consistency
        .scope_with_key(Some("alice"), next_request)
        .await;
    w.finish().await;
}

/// Reads cut by the server ending their session on the replica (`pg_terminate_backend`: the
/// SQLSTATE 57P01 and message `pg_ctl stop -m fast` sends, "terminating connection due to
/// administrator command") while their query runs: every one runs again on the
/// master, none fails, whatever the adapter keeps of the SQLSTATE (diesel reports 57P01 as
/// `Unknown`). One replica, so a cut read can only move to the master; the monitor is fast, so
/// the replica is back in rotation for the next read.
async fn reads_whose_session_the_server_ends_run_again<A: Adapter>() {
    const CUTS: usize = 200;
    let w = World::new().await;
    let mut config = w.config(Some(RouterMode::Strict));
    config.sets.get_mut("default").unwrap().truncate(1);
    config.monitor.interval_ms = 10;
    config.monitor.successes_before_up = 1;
    let db = A::open(config).await;
    db.router().start_monitor().await.unwrap();
    let marker = format!("cut_{}", w.schema.name);
    let sql = format!(
        "SELECT current_setting('port')::int AS port \
         FROM pg_sleep(CASE WHEN pg_is_in_recovery() THEN 10 ELSE 0 END) AS {marker}"
    );
    let killer = pindb_testkit::as_superuser(w.cluster.replica_url(1)).await;
    let kill = format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE query LIKE '%AS {marker}%' AND pid <> pg_backend_pid()"
    );
    let (mut cuts, mut failed) = (0, Vec::new());
    for _ in 0..CUTS * 3 {
        if cuts == CUTS {
            break;
        }
        pindb_testkit::wait_until(
            "replica 1 is back in rotation",
            Duration::from_secs(10),
            || {
                db.router()
                    .topology()
                    .replica_status("default-1")
                    .unwrap()
                    .unwrap()
                    .up
            },
        )
        .await;
        let read = scope(db.port_of_sql(&sql));
        tokio::pin!(read);
        // Kill the read once it runs there.
        let mut killed = false;
        let outcome = loop {
            tokio::select! {
                outcome = &mut read => break outcome,
                () = tokio::time::sleep(Duration::from_millis(1)), if !killed => {
                    let n: i64 = killer.query_one(&kill, &[]).await.unwrap().get(0);
                    killed = n > 0;
                }
            }
        };
        cuts += usize::from(killed);
        if outcome != Ok(w.master) {
            failed.push(outcome);
        }
    }
    assert_eq!(cuts, CUTS, "{}: reads cut", A::NAME);
    assert!(
        failed.is_empty(),
        "{}: {} of {CUTS} cut reads failed, the first: {:?}",
        A::NAME,
        failed.len(),
        failed.first()
    );
    w.finish().await;
}

/// A write that already has its connection when the master stops listening (new connections
/// refused, sessions still running) runs to its end: it may have been sent, so it is never cut
/// short, moved or retried. Once after a warm-up write (the pool hands out an idle
/// connection), once on a fresh pool (a new connection).
async fn a_write_under_way_when_the_master_stops_listening_finishes<A: Adapter>(warm: bool) {
    let w = World::new().await;
    let proxy = Proxy::start(&format!("127.0.0.1:{}", w.master)).await;
    let mut config = w.config(Some(RouterMode::Greedy));
    let master = config.masters.get_mut("default").unwrap();
    master.url = Some(w.schema.url(&format!(
        "postgres://pindb@127.0.0.1:{}/pindb",
        proxy.port()
    )));
    let db = A::open(config).await;
    if warm {
        assert_eq!(scope(db.write()).await, Ok(w.master), "{}", A::NAME);
    }
    let before = w.rows().await;
    // Longer than pindb caches its own connection attempt (1 s): it is asked again while the
    // write runs, and finds the master refusing. Named for this test, so that the master's
    // sessions show when it runs.
    let marker = format!("slow_{}", w.schema.name);
    let slow = format!(
        "WITH {marker} AS (SELECT pg_sleep(1.5)) INSERT INTO items SELECT FROM {marker} \
         RETURNING port"
    );
    let running = format!(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE state = 'active' AND query LIKE '%{marker} AS%' AND pid <> pg_backend_pid()"
    );
    let (wrote, ()) = tokio::join!(scope(db.port_of_sql(&slow)), async {
        // Once the write runs on the master (its connection made, on a fresh pool too).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let runs: i64 = w.primary.query_one(&running, &[]).await.unwrap().get(0);
            if runs > 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{}: the write never ran",
                A::NAME
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        proxy.stop_listening();
    });
    assert_eq!(
        wrote,
        Ok(w.master),
        "{}: the write under way finished",
        A::NAME
    );
    assert_eq!(w.rows().await - before, 1, "{}: written once", A::NAME);
    w.finish().await;
}

/// SeaORM's `execute_unprepared` (raw SQL text, a write) to a master that refuses connections
/// fails at once as unreachable and pins nothing, as the ORM's other statements do.
#[tokio::test]
async fn seaorm_execute_unprepared_to_a_refused_master_fails_at_once() {
    use sea_orm::ConnectionTrait;
    let w = World::new().await;
    let mut config = w.config(Some(RouterMode::Greedy));
    let master = config.masters.get_mut("default").unwrap();
    master.url = Some(w.schema.url("postgres://pindb@127.0.0.1:1/pindb"));
    master.connect_timeout_ms = Some(5_000);
    let db = pindb_seaorm::PinDb::connect(config).await.unwrap();
    scope(async {
        let start = std::time::Instant::now();
        let failed = db
            .execute_unprepared("INSERT INTO items DEFAULT VALUES")
            .await;
        let took = start.elapsed();
        let text = failed.expect_err("the master refuses").to_string();
        assert!(text.contains("unreachable"), "{text}");
        assert!(
            took < Duration::from_millis(2_500),
            "failed after {took:?}, not at once"
        );
        assert!(
            !is_pinned("default"),
            "a write that was never sent pins nothing"
        );
    })
    .await;
    w.finish().await;
}

/// One module per adapter (diesel-async, sync diesel, SeaORM: the three types given, of one
/// database), each test a body run with that adapter.
macro_rules! for_each_adapter {
    (($async:ty, $sync:ty, $seaorm:ty) $($test:ident => $body:ident $(($arg:expr))?;)*) => {
        mod diesel_async_bb8 {
            use super::*;
            $(#[tokio::test] async fn $test() { $body::<$async>($($arg)?).await })*
        }
        mod sync_diesel_r2d2 {
            use super::*;
            $(#[tokio::test(flavor = "multi_thread")] async fn $test() { $body::<$sync>($($arg)?).await })*
        }
        mod seaorm {
            use super::*;
            $(#[tokio::test] async fn $test() { $body::<$seaorm>($($arg)?).await })*
        }
    };
}

for_each_adapter! {
    (DieselAsync, DieselSync, SeaOrm)
    a_function_that_writes => a_function_that_writes_runs_on_the_master_or_is_refused;
    a_view_over_nextval_and_write_lists => a_view_over_nextval_and_listed_functions;
    a_black_hole_replica => a_replica_that_never_answers_costs_one_timeout;
    a_stopped_replica => a_failed_replica_never_sends_a_context_back_in_time(Proxy::stop);
    an_unreachable_master => a_master_that_cannot_be_reached_says_why;
    reads_cut_by_the_server => reads_whose_session_the_server_ends_run_again;
    a_write_that_never_reached_a_server => a_write_that_never_reached_a_server_pins_nothing;
    a_refused_master => a_refused_master_fails_a_write_at_once;
    a_write_under_way_on_a_fresh_pool => a_write_under_way_when_the_master_stops_listening_finishes(false);
    a_write_under_way_on_an_idle_connection => a_write_under_way_when_the_master_stops_listening_finishes(true);
}

/// A replica freezes (a proxy stops forwarding) while a read runs on it. The monitor declares
/// it down within a few checks; the read in flight is then given up and served by the master,
/// long before `reads.timeout_ms` (30 s, the default, kept here).
async fn a_frozen_replica_costs_one_monitor_verdict<A: Adapter<Backend: Faults>>() {
    let w = world::<A>().await;
    let proxy = Proxy::start(&address(&w.url(1))).await;
    let mut config = Config::single_set(w.url(0), [through(&w.url(1), &proxy)]);
    config.router = RouterMode::Strict;
    config.monitor.interval_ms = 100;
    // Roomy for a healthy check on a loaded machine; two that time out still declare the
    // frozen replica down in about 2 s, far below what the read would wait (`timeout`).
    config.monitor.check_timeout_ms = 1_000;
    let timeout = config.reads.timeout();
    let db = A::open(config).await;
    db.router().start_monitor().await.expect("monitor");
    pindb_testkit::monitor_finds_fit(db.router(), "default-1").await;
    // A slow read, so that it is surely in flight on the replica when it freezes.
    let slow = <A::Backend as Faults>::SLOW_READ;
    scope(async {
        assert_eq!(
            db.port_of_sql(slow).await,
            Ok(w.replicas()[0]),
            "{}",
            A::NAME
        );
    })
    .await;
    let started = std::time::Instant::now();
    let (served, ()) = tokio::join!(scope(db.port_of_sql(slow)), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        proxy.freeze();
    });
    let took = started.elapsed();
    eprintln!("{}: the read in flight was served after {took:?}", A::NAME);
    assert_eq!(served, Ok(w.master()), "{}: served by the master", A::NAME);
    let status = db.router().topology().replica_status("default-1").unwrap();
    assert!(
        !status.unwrap().up,
        "{}: the monitor declared it down",
        A::NAME
    );
    assert!(
        took < timeout / 3,
        "{}: the read waited {took:?}, as if for reads.timeout_ms ({timeout:?}), although the \
         monitor declared its replica down",
        A::NAME
    );
    proxy.thaw();
    w.finish().await;
}

// Sync diesel has no client-side timeout (libpq blocks): a replica that hangs mid-query is
// only covered for the async adapters.
mod frozen {
    use super::*;

    #[tokio::test]
    async fn diesel_async_bb8_read_in_flight() {
        a_frozen_replica_costs_one_monitor_verdict::<DieselAsync>().await
    }

    #[tokio::test]
    async fn seaorm_read_in_flight() {
        a_frozen_replica_costs_one_monitor_verdict::<SeaOrm>().await
    }

    #[tokio::test]
    async fn diesel_async_bb8() {
        a_failed_replica_never_sends_a_context_back_in_time::<DieselAsync>(Proxy::freeze).await
    }

    #[tokio::test]
    async fn seaorm() {
        a_failed_replica_never_sends_a_context_back_in_time::<SeaOrm>(Proxy::freeze).await
    }
}

/// The same faults on the dev cluster's MariaDB set, each test in a database of its own with
/// the shared apply lock (none stops a replica's SQL thread). Only on PostgreSQL so far: the
/// view over `nextval()` with the write lists, reads cut by `pg_terminate_backend`, and a
/// write under way when the master stops listening.
mod mariadb {
    use super::*;

    for_each_adapter! {
        (DieselAsyncMariaDb, DieselSyncMariaDb, SeaOrmMariaDb)
        a_function_that_writes => a_function_that_writes_runs_on_the_master_or_is_refused;
        a_black_hole_replica => a_replica_that_never_answers_costs_one_timeout;
        a_stopped_replica => a_failed_replica_never_sends_a_context_back_in_time(Proxy::stop);
        an_unreachable_master => a_master_that_cannot_be_reached_says_why;
        a_write_that_never_reached_a_server => a_write_that_never_reached_a_server_pins_nothing;
        a_refused_master => a_refused_master_fails_a_write_at_once;
    }

    // As on PostgreSQL, the async adapters only: sync diesel (libmariadb) has no client-side
    // read timeout either.
    mod frozen {
        use super::*;

        #[tokio::test]
        async fn diesel_async_bb8_read_in_flight() {
            a_frozen_replica_costs_one_monitor_verdict::<DieselAsyncMariaDb>().await
        }

        #[tokio::test]
        async fn seaorm_read_in_flight() {
            a_frozen_replica_costs_one_monitor_verdict::<SeaOrmMariaDb>().await
        }

        #[tokio::test]
        async fn diesel_async_bb8() {
            a_failed_replica_never_sends_a_context_back_in_time::<DieselAsyncMariaDb>(Proxy::freeze)
                .await
        }

        #[tokio::test]
        async fn seaorm() {
            a_failed_replica_never_sends_a_context_back_in_time::<SeaOrmMariaDb>(Proxy::freeze)
                .await
        }
    }
}

/// diesel keeps a checkout across statements: a replica that goes away between the checkout
/// and the query fails the held connection itself, which is discarded, and the read moves on.
#[tokio::test]
async fn a_replica_stopped_between_checkout_and_query_diesel_async() {
    use diesel_async::RunQueryDsl;
    let w = world::<DieselAsync>().await;
    let target = w.cluster.replica_url(1).rsplit('@').next().unwrap();
    let proxy = Proxy::start(target.split('/').next().unwrap()).await;
    let proxied = w.schema.url(&format!(
        "postgres://pindb@127.0.0.1:{}/pindb",
        proxy.port()
    ));
    let mut config = impatient(Config::single_set(
        w.schema.url(&w.cluster.primary_url),
        [proxied, w.schema.url(w.cluster.replica_url(2))],
    ));
    config.router = RouterMode::Strict;
    let db = pindb_diesel::bb8::PinDb::new(config).unwrap();
    let port = diesel::dsl::sql::<diesel::sql_types::Integer>("current_setting('port')::int");
    scope(async {
        let mut conn = db.get();
        conn.checkout_for_read().await.unwrap();
        assert_eq!(conn.held_aliases(), ["default-1"]);
        proxy.stop();
        let served: i32 = diesel::select(port).get_result(&mut conn).await.unwrap();
        // The checkout counted as this context's read of replica 1: the master serves, never
        // the other replica (monotonic reads), and the dead connection is not kept.
        assert_eq!(served, w.master);
        assert_eq!(conn.held_aliases(), ["default"]);
    })
    .await;
    let status = db.router().topology().replica_status("default-1").unwrap();
    assert!(!status.unwrap().up, "suspected");
    w.finish().await;
}

/// A replica read cut off by a timeout while its query runs (the fallback path owns the
/// statement): the routed connection and its pool stay usable, and the next reads, on the
/// same routed connection and on a new one, return the right rows.
#[tokio::test]
async fn a_replica_read_dropped_mid_query_leaves_nothing_behind_diesel_async() {
    use diesel::sql_types::{Bool, Integer};
    use diesel_async::RunQueryDsl;
    let w = world::<DieselAsync>().await;
    let mut config = w.config(Some(RouterMode::Strict));
    // One connection per pool: whatever the dropped read left on it is what comes next.
    config
        .sets
        .get_mut("default")
        .unwrap()
        .iter_mut()
        .for_each(|r| r.max_size = Some(1));
    let db = pindb_diesel::bb8::PinDb::new(config).unwrap();
    scope(async {
        let mut conn = db.get();
        let slow = diesel::select(diesel::dsl::sql::<Bool>("pg_sleep(0.5) IS NULL"));
        let cut = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            slow.get_result::<bool>(&mut conn),
        )
        .await;
        assert!(cut.is_err(), "the timeout dropped the read mid-query");
        let port = diesel::dsl::sql::<Integer>("current_setting('port')::int");
        for _ in 0..3 {
            let p: i32 = diesel::select(port.clone())
                .get_result(&mut conn)
                .await
                .unwrap();
            assert!(w.replicas.contains(&p), "{p}");
        }
        drop(conn);
        let mut again = db.get();
        let p: i32 = diesel::select(port).get_result(&mut again).await.unwrap();
        assert!(w.replicas.contains(&p), "{p}");
    })
    .await;
    w.finish().await;
}

/// A server that accepted connections and never answered, then came back: the attempts it
/// swallowed must not hold the pool's slots forever (they time out), so the pool connects
/// again. Checked with explicit checkouts of that replica, which have no fallback.
#[tokio::test(flavor = "multi_thread")]
async fn a_pool_recovers_from_a_server_that_hung_diesel_async() {
    use diesel_async::RunQueryDsl;
    let w = world::<DieselAsync>().await;
    let target = w.cluster.replica_url(1).rsplit('@').next().unwrap();
    let proxy = Proxy::black_hole_until_thawed(target.split('/').next().unwrap()).await;
    let hole = w.schema.url(&format!(
        "postgres://pindb@127.0.0.1:{}/pindb",
        proxy.port()
    ));
    let mut config = impatient(Config::single_set(
        w.schema.url(&w.cluster.primary_url),
        [hole],
    ));
    config.sets.get_mut("default").unwrap()[0].max_size = Some(2);
    let connect = Duration::from_millis(config.reads.replica_connect_timeout_ms);
    let db = pindb_diesel::bb8::PinDb::new(config).unwrap();
    let replica = pindb_core::Hint::alias("default-1");
    for _ in 0..3 {
        assert!(db.read_with(&replica).await.is_err(), "nothing answers yet");
    }
    proxy.thaw();
    // Longer than the connect timeout, which bounds a connection's set-up: swallowed attempts
    // have given up by now.
    tokio::time::sleep(connect + Duration::from_millis(500)).await;
    let mut conn = db
        .read_with(&replica)
        .await
        .expect("the pool connects again");
    let port = diesel::dsl::sql::<diesel::sql_types::Integer>("current_setting('port')::int");
    let p: i32 = diesel::select(port).get_result(&mut *conn).await.unwrap();
    assert_eq!(p, w.replicas[0]);
    w.finish().await;
}
