//! The all-lagging policy and bounded-staleness hints, with replica lag set by hand (the
//! monitor's job in production).

use std::time::Duration;

use crate::config::{AllLaggingPolicy, Config};
use crate::context::scope;
use crate::lsn::Lsn;
use crate::router::{Hint, Reason, Role, Router};

/// Two replicas, lagging 20 s and 40 s (both over the 10 s `max_lag_ms`).
fn lagging(policy: AllLaggingPolicy, ceiling_ms: u64) -> Router {
    let mut config = Config::single_set(
        "postgres://m@127.0.0.1:1/a",
        ["postgres://r@127.0.0.1:2/a", "postgres://r@127.0.0.1:3/a"],
    );
    config.monitor.when_all_lagging = policy;
    config.monitor.lag_ceiling_ms = ceiling_ms;
    config.stickiness.ttl_seconds = 120;
    let router = Router::new(config).unwrap();
    lag_20_and_40_s(&router);
    router
}

/// Replica 1 20 s behind, replica 2 40 s, both over the byte limit.
fn lag_20_and_40_s(router: &Router) {
    let health = &router.inner.topology.set(0).health;
    let proof = crate::freshness::Proof::ago;
    health[0].set_position(Lsn(100), 1_000, proof(20_000), true, true, 0);
    health[1].set_position(Lsn(50), 2_000, proof(40_000), true, true, 0);
}

fn read(r: &Router, hint: &Hint<'_>) -> (Role, Reason, String) {
    let route = r.db_for_read(hint).unwrap();
    (route.role, route.reason, route.alias.to_owned())
}

#[tokio::test]
async fn when_every_replica_lags_the_policy_says_master_or_the_least_lagging() {
    let master = lagging(AllLaggingPolicy::Master, 60_000);
    scope(async {
        assert_eq!(read(&master, &Hint::default()).1, Reason::LagFallback);
    })
    .await;
    let least = lagging(AllLaggingPolicy::LeastLag, 60_000);
    scope(async {
        let (role, _, alias) = read(&least, &Hint::default());
        assert_eq!(
            (role, alias.as_str()),
            (Role::Replica, "default-1"),
            "the least lagging"
        );
    })
    .await;
    scope(async {
        // A hint's own bound holds even when the policy would take the least lagging.
        let hint = Hint::default().with_max_staleness(Duration::from_secs(5));
        assert_eq!(read(&least, &hint).0, Role::Master);
    })
    .await;
    let tight = lagging(AllLaggingPolicy::LeastLag, 15_000);
    scope(async {
        assert_eq!(
            read(&tight, &Hint::default()).1,
            Reason::LagFallback,
            "beyond the ceiling"
        );
    })
    .await;
}

#[tokio::test]
async fn keyed_reads_never_read_stale_whatever_the_policy() {
    let least = lagging(AllLaggingPolicy::LeastLag, 60_000);
    let ctx = crate::context::Context::new();
    ctx.require("default", Lsn(120));
    ctx.scope(async {
        assert_eq!(
            read(&least, &Hint::default()).0,
            Role::Master,
            "no replica has its write"
        );
    })
    .await;
}

#[tokio::test]
async fn a_staleness_hint_loosens_or_tightens_the_bound_up_to_the_ceiling() {
    let r = lagging(AllLaggingPolicy::Master, 60_000);
    scope(async {
        let loose = Hint::default().with_max_staleness(Duration::from_secs(30));
        assert_eq!(
            read(&r, &loose).0,
            Role::Replica,
            "20 s of lag is within 30 s"
        );
    })
    .await;
    scope(async {
        let tight = Hint::default().with_max_staleness(Duration::from_secs(5));
        assert_eq!(read(&r, &tight).0, Role::Master);
    })
    .await;
    // The ceiling caps the hint: with the `master` policy it is max_lag_ms (10 s).
    let capped = {
        let mut config = r.config().clone();
        config.monitor.lag_ceiling_ms = 0;
        let capped = Router::new(config).unwrap();
        lag_20_and_40_s(&capped);
        capped
    };
    scope(async {
        let loose = Hint::default().with_max_staleness(Duration::from_secs(300));
        assert_eq!(
            read(&capped, &loose).0,
            Role::Master,
            "capped at the ceiling"
        );
    })
    .await;
}

#[test]
fn the_position_lifetime_must_outlive_the_lag_ceiling() {
    let mut config = Config::single_set("postgres://m/a", ["postgres://r/a"]);
    config.monitor.when_all_lagging = AllLaggingPolicy::LeastLag;
    config.monitor.lag_ceiling_ms = 60_000;
    let e = config.validate().unwrap_err();
    assert!(e.to_string().contains("ttl_seconds"), "{e}");
}
