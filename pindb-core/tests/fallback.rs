#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
//! What `Router::reroute` decides when a replica fails a read, without a database: the three
//! adapters act on these decisions (their tests on the real cluster are in the top-level
//! `tests/` crate, `replica_faults.rs`).

use pindb_core::adapter::ReplicaFailure;
use pindb_core::{is_pinned, scope, Config, PinDbError, Reason, Role, Router, RouterMode};

/// One set, two replicas; nothing answers (no I/O happens here).
fn router(mode: RouterMode, retries: u32) -> Router {
    let mut config = Config::single_set(
        "postgres://app@127.0.0.1:1/app",
        [
            "postgres://app@127.0.0.1:2/app",
            "postgres://app@127.0.0.1:3/app",
        ],
    );
    config.router = mode;
    config.reads.retries = retries;
    config.monitor.topology_check = pindb_core::TopologyCheck::Off;
    Router::new(config).unwrap()
}

const CALL: &str = "SELECT bump_views(1)";

#[tokio::test]
async fn a_refused_read_is_a_write_greedy_pins_and_the_statement_is_learned() {
    let r = router(RouterMode::Greedy, 1);
    scope(async {
        let first = r.route_sql(CALL).unwrap();
        assert_eq!(first.role, Role::Replica);
        let next = r
            .reroute(first.index, ReplicaFailure::Refused, 0, CALL, &"test")
            .unwrap()
            .unwrap();
        assert_eq!(
            (next.role, next.reason),
            (Role::Master, Reason::ReplicaRefused)
        );
        assert!(is_pinned("default"));
    })
    .await;
    scope(async {
        // Learned: the next run goes straight to the master (a write: greedy pins).
        let again = r.route_sql(CALL).unwrap();
        assert_eq!(
            (again.role, again.reason),
            (Role::Master, Reason::GreedyPin)
        );
        assert!(
            r.route_sql("SELECT 1").unwrap().role == Role::Master,
            "pinned by it"
        );
    })
    .await;
    assert_eq!(r.explain_sql(CALL).unwrap().reason, Reason::ReplicaRefused);
    assert_eq!(r.explain_sql("SELECT 2").unwrap().role, Role::Replica);
}

#[tokio::test]
async fn a_refused_read_in_strict_mode_is_an_unpinned_write() {
    let r = router(RouterMode::Strict, 1);
    scope(async {
        let first = r.route_sql(CALL).unwrap();
        let refused = r.reroute(first.index, ReplicaFailure::Refused, 0, CALL, &"test");
        assert!(
            matches!(refused, Err(PinDbError::UnpinnedWrite { .. })),
            "{refused:?}"
        );
        assert!(!is_pinned("default"));
        // Learned all the same: strict refuses it before any replica sees it again.
        assert!(r.route_sql(CALL).unwrap_err().is_unpinned_write());
    })
    .await;
}

#[tokio::test]
async fn an_unreachable_replica_is_suspected_and_a_first_read_moves_to_the_other() {
    let r = router(RouterMode::Strict, 1);
    scope(async {
        let first = r.route_sql("SELECT 1").unwrap();
        let next = r
            .reroute(first.index, ReplicaFailure::Unreachable, 0, "", &"test")
            .unwrap()
            .unwrap();
        assert_eq!(
            (next.role, next.reason),
            (Role::Replica, Reason::ReplicaFailed)
        );
        assert_ne!(next.index, first.index);
        let status = r.topology().replica_status(first.alias).unwrap().unwrap();
        assert!(!status.up, "suspected at once, not after monitor rounds");
        // The context now reads from the replica it moved to.
        assert_eq!(r.route_sql("SELECT 1").unwrap().index, next.index);
    })
    .await;
    scope(async {
        let fresh = r.route_sql("SELECT 1").unwrap();
        assert_eq!(fresh.role, Role::Replica);
        assert_ne!(
            r.topology().databases()[fresh.index].alias,
            "default-1",
            "a suspected replica is out of rotation"
        );
    })
    .await;
}

#[tokio::test]
async fn a_context_that_read_from_the_failed_replica_stays_on_the_master() {
    let r = router(RouterMode::Strict, 1);
    scope(async {
        let first = r.route_sql("SELECT 1").unwrap();
        let second = r.route_sql("SELECT 2").unwrap();
        assert_eq!(first.index, second.index);
        let next = r
            .reroute(second.index, ReplicaFailure::Timeout, 0, "", &"test")
            .unwrap()
            .unwrap();
        assert_eq!(
            (next.role, next.reason),
            (Role::Master, Reason::ReplicaFailed)
        );
        let later = r.route_sql("SELECT 3").unwrap();
        assert_eq!(
            (later.role, later.reason),
            (Role::Master, Reason::ReplicaFailed)
        );
    })
    .await;
}

#[tokio::test]
async fn retries_are_bounded_then_the_master_serves() {
    let r = router(RouterMode::Strict, 0);
    scope(async {
        let first = r.route_sql("SELECT 1").unwrap();
        let next = r
            .reroute(
                first.index,
                ReplicaFailure::RecoveryConflict,
                0,
                "",
                &"test",
            )
            .unwrap()
            .unwrap();
        assert_eq!(
            next.role,
            Role::Master,
            "retries = 0: straight to the master"
        );
        let status = r.topology().replica_status(first.alias).unwrap().unwrap();
        assert!(
            status.up,
            "a recovery conflict does not take the replica out"
        );
    })
    .await;
}

#[tokio::test]
async fn a_master_is_never_rerouted() {
    let r = router(RouterMode::Greedy, 1);
    let master = r.topology().index_of("default").unwrap();
    assert!(r
        .reroute(master, ReplicaFailure::Unreachable, 0, "", &"test")
        .unwrap()
        .is_none());
}

#[test]
fn server_errors_are_classified_by_sqlstate_and_message() {
    use ReplicaFailure::*;
    let cases = [
        (
            "25006",
            "cannot execute nextval() in a read-only transaction",
            Some(Refused),
        ),
        ("55000", "recovery is in progress", Some(Refused)),
        (
            "XX000",
            "cannot assign TransactionIds during recovery",
            Some(Refused),
        ),
        (
            "40001",
            "canceling statement due to conflict with recovery",
            Some(RecoveryConflict),
        ),
        (
            "40P01",
            "canceling statement due to conflict with recovery",
            Some(RecoveryConflict),
        ),
        (
            "57P01",
            "terminating connection due to administrator command",
            Some(Unreachable),
        ),
        (
            "23505",
            "duplicate key value violates unique constraint",
            None,
        ),
        ("57014", "canceling statement due to user request", None),
        ("P0001", "cannot go on during recovery, says my RAISE", None),
        (
            "40001",
            "could not serialize access due to concurrent update",
            None,
        ),
    ];
    for (code, message, expected) in cases {
        assert_eq!(
            ReplicaFailure::from_server(code, message),
            expected,
            "{code} {message}"
        );
    }
}

#[tokio::test(flavor = "current_thread")]
async fn starting_the_monitor_twice_at_once_leaves_one_set_of_tasks() {
    let r = router(RouterMode::Greedy, 1);
    let alive = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let settle = || async {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    };
    let base = alive();
    r.start_monitor().await.unwrap();
    settle().await;
    let one = alive() - base;
    assert_eq!(one, 3, "one task per master and per replica");
    r.stop_monitor();
    settle().await;
    assert_eq!(alive(), base);
    let (a, b) = tokio::join!(r.start_monitor(), r.start_monitor());
    a.unwrap();
    b.unwrap();
    settle().await;
    assert_eq!(
        alive() - base,
        one,
        "the second start replaced the first's tasks"
    );
    r.stop_monitor();
}

#[test]
fn every_failure_is_counted_with_its_reason() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(scope(async {
            let r = router(RouterMode::Greedy, 1);
            let first = r.route_sql(CALL).unwrap();
            r.reroute(first.index, ReplicaFailure::Refused, 0, CALL, &"test")
                .unwrap();
            r.reroute(first.index, ReplicaFailure::Unreachable, 0, "", &"test")
                .unwrap();
            r.reroute(first.index, ReplicaFailure::Timeout, 1, "", &"test")
                .unwrap();
        }));
    });
    // A snapshot drains the counters: one, searched for each reason.
    let snapshot = snapshotter.snapshot().into_vec();
    let counted = |reason: &str| {
        snapshot
            .iter()
            .find(|(key, _, _, _)| {
                key.key().name() == "pindb_replica_failures_total"
                    && key
                        .key()
                        .labels()
                        .any(|l| l.key() == "reason" && l.value() == reason)
            })
            .map(|(_, _, _, value)| value)
    };
    for reason in ["refused", "unreachable", "timeout"] {
        assert_eq!(counted(reason), Some(&DebugValue::Counter(1)), "{reason}");
    }
    assert_eq!(counted("recovery-conflict"), None);
}

#[tokio::test]
async fn a_busy_pool_or_a_slow_query_leaves_the_replica_in_rotation() {
    let r = router(RouterMode::Strict, 1);
    scope(async {
        let first = r.route_sql("SELECT 1").unwrap();
        let next = r
            .reroute(first.index, ReplicaFailure::Busy, 0, "", &"test")
            .unwrap()
            .unwrap();
        assert_eq!(
            next.role,
            Role::Replica,
            "a saturated pool: another replica"
        );
        let status = r.topology().replica_status(first.alias).unwrap().unwrap();
        assert!(status.up, "busy is not down");
    })
    .await;
    scope(async {
        let first = r.route_sql("SELECT 1").unwrap();
        let next = r
            .reroute(first.index, ReplicaFailure::Timeout, 0, "", &"test")
            .unwrap()
            .unwrap();
        assert_eq!(
            next.role,
            Role::Master,
            "a long query runs once more, on the master only"
        );
        let status = r.topology().replica_status(first.alias).unwrap().unwrap();
        assert!(
            status.up,
            "the monitor, not one slow query, takes a replica out"
        );
    })
    .await;
}

#[tokio::test]
async fn a_failed_read_on_a_named_replica_keeps_the_context_on_its_own() {
    let r = router(RouterMode::Strict, 1);
    scope(async {
        let own = r.route_sql("SELECT 1").unwrap();
        let other = if own.alias == "default-1" {
            "default-2"
        } else {
            "default-1"
        };
        let named = r.topology().index_of(other).unwrap();
        let next = r
            .reroute(named, ReplicaFailure::Unreachable, 0, "", &"test")
            .unwrap()
            .unwrap();
        assert_eq!(next.index, own.index, "back to the replica it reads from");
        assert_eq!(r.route_sql("SELECT 2").unwrap().index, own.index);
    })
    .await;
}
