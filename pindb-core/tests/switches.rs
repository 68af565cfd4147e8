#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
//! Runtime switches for incidents and maintenance, without a database: the kill switch sends
//! a set's reads to its master at once, and a drained replica leaves rotation without sending
//! a context back in time.

use pindb_core::{scope, Config, Hint, Reason, Role, Router};

fn router() -> Router {
    let config = Config::from_toml_str(
        r#"
        [masters.default]
        url = "postgres://app@127.0.0.1:1/app"
        [masters.other]
        url = "postgres://app@127.0.0.1:1/other"
        [sets]
        default = [{ port = 2 }, { port = 3 }]
        other = [{ port = 2 }]
        "#,
    )
    .unwrap();
    Router::new(config).unwrap()
}

fn read(r: &Router, set: &str) -> (Role, Reason) {
    let route = r.db_for_read(&Hint::alias(set)).unwrap();
    (route.role, route.reason)
}

#[tokio::test]
async fn the_kill_switch_sends_reads_to_the_master_now_and_back() {
    let r = router();
    r.topology()
        .set_replicas_enabled(Some("default"), false)
        .unwrap();
    scope(async {
        assert_eq!(
            read(&r, "default"),
            (Role::Master, Reason::ReplicasDisabled)
        );
        let named = r.db_for_read(&Hint::alias("default-1")).unwrap();
        assert_eq!(named.role, Role::Master, "even a replica named explicitly");
        assert_eq!(
            read(&r, "other").0,
            Role::Replica,
            "other sets are untouched"
        );
    })
    .await;
    r.topology().set_replicas_enabled(None, false).unwrap();
    scope(async {
        assert_eq!(read(&r, "other").0, Role::Master);
        assert_eq!(
            r.get_replica("default").unwrap(),
            "default",
            "get_replica obeys it too"
        );
        // A replica read that fails meanwhile goes nowhere but the master.
        let replica = r.topology().index_of("default-1").unwrap();
        let next = r
            .reroute(
                replica,
                pindb_core::adapter::ReplicaFailure::Busy,
                0,
                "",
                &"test",
            )
            .unwrap()
            .unwrap();
        assert_eq!(
            (next.role, next.reason),
            (Role::Master, Reason::ReplicasDisabled)
        );
    })
    .await;
    r.topology().set_replicas_enabled(None, true).unwrap();
    scope(async {
        assert_eq!(read(&r, "default").0, Role::Replica);
        assert_eq!(read(&r, "other").0, Role::Replica);
    })
    .await;
}

#[tokio::test]
async fn a_drained_replica_leaves_rotation_and_its_readers_go_to_the_master() {
    let r = router();
    scope(async {
        let first = r.db_for_read(&Hint::default()).unwrap();
        let alias = first.alias.to_owned();
        r.topology().drain(&alias, true).unwrap();
        // This context read from it: the master, not the other replica (monotonic reads).
        assert_eq!(
            read(&r, "default"),
            (Role::Master, Reason::ReplicaFailed),
            "its reader moves to the master"
        );
        assert!(
            r.topology()
                .replica_status(&alias)
                .unwrap()
                .unwrap()
                .drained
        );
    })
    .await;
    for _ in 0..4 {
        scope(async {
            let route = r.db_for_read(&Hint::default()).unwrap();
            assert_eq!(route.role, Role::Replica);
            assert_eq!(
                route.alias, "default-2",
                "new contexts skip the drained one"
            );
        })
        .await;
    }
    r.topology().drain("default-1", false).unwrap();
    let seen: std::collections::BTreeSet<String> = futures_aliases(&r).await;
    assert!(seen.contains("default-1"), "back in rotation: {seen:?}");
    assert!(
        r.topology().drain("default", true).is_err(),
        "a master cannot be drained"
    );
}

async fn futures_aliases(r: &Router) -> std::collections::BTreeSet<String> {
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let alias = scope(async { r.db_for_read(&Hint::default()).unwrap().alias.to_owned() });
        seen.insert(alias.await);
    }
    seen
}
