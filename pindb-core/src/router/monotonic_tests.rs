//! Monotonic reads, step by step in one context: once the master has served a read of a set,
//! no replica serves the set again in that context, whatever made the replicas unfit and fit
//! again (kill switch, drain, lag, health, a failed read, a host change, a promotion). Health
//! is set by hand here (the monitor's job in production); the hunt on the real cluster is in
//! the `promises` tests of pindb-diesel and pindb-seaorm.

use std::time::Duration;

use crate::config::Config;
use crate::context::scope;
use crate::freshness::Proof;
use crate::lsn::Lsn;
use crate::router::{Hint, Reason, Role, Router};

fn router() -> Router {
    let config = Config::single_set(
        "postgres://m@127.0.0.1:1/a",
        ["postgres://r@127.0.0.1:2/a", "postgres://r@127.0.0.1:3/a"],
    );
    let router = Router::new(config).unwrap();
    for h in router.inner.topology.set(0).health.iter() {
        h.limit_lag(1_000);
        fresh(h);
    }
    router
}

fn fresh(h: &crate::replica::Health) {
    proved(h, 0);
}

/// A good check that proves `h` fresh as of `ms` ago.
fn proved(h: &crate::replica::Health, ms: u64) {
    assert!(h.set_position(Lsn(100), 0, Proof::ago(ms), false, true, h.suspicions()));
}

fn read(r: &Router) -> (Role, Reason) {
    let route = r.db_for_read(&Hint::default()).unwrap();
    (route.role, route.reason)
}

/// Reads once from a replica, runs `unfit`, reads (the master must serve it), runs `fit`, and
/// checks that the master still serves the context while a new context reads a replica again.
async fn back_in_time(r: &Router, unfit: impl Fn(&Router), fit: impl Fn(&Router), why: &str) {
    scope(async {
        assert_eq!(read(r).0, Role::Replica, "{why}: the first read");
        unfit(r);
        assert_eq!(read(r).0, Role::Master, "{why}: no replica is fit");
        fit(r);
        let (role, reason) = read(r);
        assert!(
            role == Role::Master && matches!(reason, Reason::Monotonic | Reason::ReplicaFailed),
            "{why}: a replica fit again may be behind what the master showed: {role:?} {reason:?}"
        );
    })
    .await;
    scope(async {
        assert_eq!(
            read(r).0,
            Role::Replica,
            "{why}: a new context starts afresh"
        );
    })
    .await;
}

fn each(r: &Router, f: impl Fn(&crate::replica::Health)) {
    r.inner.topology.set(0).health.iter().for_each(f);
}

#[tokio::test]
async fn the_kill_switch() {
    let r = router();
    let switch = |on: bool| move |r: &Router| r.topology().set_replicas_enabled(None, on).unwrap();
    back_in_time(&r, switch(false), switch(true), "kill switch").await;
}

#[tokio::test]
async fn draining_every_replica() {
    let r = router();
    let drain = |on: bool| {
        move |r: &Router| {
            for alias in ["default-1", "default-2"] {
                r.topology().drain(alias, on).unwrap();
            }
        }
    };
    back_in_time(&r, drain(true), drain(false), "drain").await;
}

#[tokio::test]
async fn lag_beyond_max_lag_ms() {
    let r = router();
    let lagging = |r: &Router| each(r, |h| proved(h, 5_000));
    back_in_time(&r, lagging, |r| each(r, fresh), "lag").await;
}

#[tokio::test]
async fn replicas_down_then_up() {
    let r = router();
    back_in_time(
        &r,
        |r| each(r, |h| h.set_down()),
        |r| each(r, fresh),
        "health",
    )
    .await;
}

#[tokio::test]
async fn a_read_that_failed_on_every_replica() {
    let r = router();
    let fail = |r: &Router| {
        scope_read_fails(r);
    };
    back_in_time(&r, fail, |r| each(r, fresh), "failed read").await;
}

/// The context's replica is unreachable and so is the other: the read ends on the master.
fn scope_read_fails(r: &Router) {
    let topology = r.topology();
    for alias in ["default-1", "default-2"] {
        let i = topology.index_of(alias).unwrap();
        let next = r
            .reroute(
                i,
                crate::adapter::ReplicaFailure::Unreachable,
                1,
                "SELECT 1",
                &"test",
            )
            .unwrap()
            .unwrap();
        assert_eq!(next.role, Role::Master);
    }
}

#[tokio::test]
async fn no_replica_fit_at_the_first_read() {
    // The first read of the context goes to the master; a replica that is fit a moment later
    // may be behind what it saw.
    let r = router();
    scope(async {
        each(&r, |h| h.set_down());
        assert_eq!(read(&r).0, Role::Master);
        each(&r, fresh);
        assert_eq!(read(&r), (Role::Master, Reason::Monotonic));
    })
    .await;
}

#[tokio::test]
async fn a_master_guard_read_or_write() {
    let r = router();
    scope(async {
        {
            let _g = r.master("default").unwrap();
            assert_eq!(read(&r).0, Role::Master);
        }
        assert_eq!(
            read(&r),
            (Role::Master, Reason::Monotonic),
            "after the guard"
        );
    })
    .await;
    scope(async {
        {
            // A write's RETURNING (or a transaction's reads) shows the master's data too.
            let _g = r.master("default").unwrap();
            assert_eq!(
                r.db_for_write(&Hint::default()).unwrap().reason,
                Reason::MasterGuard
            );
        }
        assert_eq!(
            read(&r),
            (Role::Master, Reason::Monotonic),
            "after a guarded write"
        );
    })
    .await;
}

#[tokio::test]
async fn an_explain_reads_nothing_and_moves_nothing() {
    let r = router();
    scope(async {
        each(&r, |h| h.set_down());
        assert_eq!(
            r.explain(crate::Operation::Read, &Hint::default())
                .unwrap()
                .role,
            Role::Master
        );
        each(&r, fresh);
        assert_eq!(read(&r).0, Role::Replica);
    })
    .await;
}

#[tokio::test]
async fn a_first_read_that_failed_and_ended_on_the_master() {
    // The context never read a replica before: the failed read's master answer still
    // moves it past every replica.
    let r = router();
    scope(async {
        let other = r.topology().index_of("default-2").unwrap();
        let next = r
            .reroute(
                other,
                crate::adapter::ReplicaFailure::Busy,
                1,
                "SELECT 1",
                &"test",
            )
            .unwrap()
            .unwrap();
        assert_eq!(next.role, Role::Master);
        assert_eq!(read(&r), (Role::Master, Reason::Monotonic));
    })
    .await;
}

#[tokio::test]
async fn a_runtime_replica_whose_host_came_up_after_a_master_read() {
    let config = Config::from_toml_str(
        r#"
        [masters.default]
        url = "postgres://app@127.0.0.1:1/app"
        discovery = { max_replicas = 2 }
        [sets]
        default = []
        "#,
    )
    .unwrap();
    let r = Router::new(config).unwrap();
    scope(async {
        assert_eq!(read(&r).0, Role::Master, "no host yet");
        r.set_replicas("default", ["127.0.0.1:2"]).unwrap();
        assert_eq!(read(&r), (Role::Master, Reason::Monotonic));
        assert_eq!(
            r.db_for_read(&Hint::alias("default-1")).unwrap().role,
            Role::Master,
            "not even by its alias"
        );
    })
    .await;
    scope(async {
        assert_eq!(read(&r).0, Role::Replica);
    })
    .await;
}

#[test]
fn staleness_grows_between_checks() {
    let r = router();
    let h = &r.inner.topology.set(0).health[0];
    let now = crate::freshness::now();
    h.set_position(Lsn(100), 0, Proof::ago(0), false, true, h.suspicions());
    assert!(h.staleness_ms(now) <= 1);
    let later = now + 1_500_000;
    assert!(
        h.staleness_ms(later) >= 1_500,
        "1.5 s later, with no check since"
    );
    assert!(h.fit(None));
    // Not known to be within `max_lag_ms` (1 s) any more, although no check said so.
    h.set_position(Lsn(100), 0, Proof::ago(1_001), false, true, h.suspicions());
    assert!(!h.fit(None));
    assert!(h.status().over_lag && h.status().lag_ms > 1_000);
}

#[tokio::test]
async fn a_staleness_hint_is_checked_against_the_staleness_now() {
    let r = router();
    each(&r, |h| proved(h, 150));
    let hint = Hint::default().with_max_staleness(Duration::from_millis(100));
    scope(async {
        assert_eq!(
            r.db_for_read(&hint).unwrap().role,
            Role::Master,
            "proved fresh 150 ms ago: not within 100 ms now"
        );
    })
    .await;
    let hint = Hint::default().with_max_staleness(Duration::from_millis(500));
    scope(async {
        assert_eq!(r.db_for_read(&hint).unwrap().role, Role::Replica);
    })
    .await;
}
