#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
//! The load test's stale-read checker can fail: with replicas paused, `random-replica` must
//! show stale reads, while `lsn` under the same load shows none. Short (seconds); the full load
//! test runs from its own command.

use std::time::Duration;

use pindb_examples::loadtest::{run, Settings, Strategy, SCHEMA_SQL};
use pindb_testkit::Fixture;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stale_read_checker_catches_random_replica_and_clears_lsn() {
    let mut f = Fixture::new(SCHEMA_SQL).await;
    let settings = Settings {
        users: 4,
        duration: Duration::from_secs(2),
        write_ratio: 0.5,
        same_request_ratio: 0.0,
        // Paused for the whole run, on both replicas.
        lag_pause: Duration::from_secs(60),
        lag_period: Duration::from_secs(60),
        lagging_replicas: vec![1, 2],
        pool_size: 4,
        think: Duration::from_millis(5),
        faults: false,
    };
    let redis = f.cluster.redis_url.clone();
    let random = run(&mut f, Strategy::RandomReplica, &settings, &redis, |_| {})
        .await
        .unwrap();
    assert!(random.reads > 50, "{random:?}");
    assert!(
        random.stale_reads > 0,
        "the checker saw no stale read: {random:?}"
    );
    let lsn = run(&mut f, Strategy::Lsn, &settings, &redis, |_| {})
        .await
        .unwrap();
    assert!(lsn.reads > 50, "{lsn:?}");
    assert_eq!(lsn.stale_reads, 0, "{lsn:?}");
    let master = run(&mut f, Strategy::MasterOnly, &settings, &redis, |_| {})
        .await
        .unwrap();
    assert_eq!((master.stale_reads, master.replica_share), (0, 0.0));
    f.finish().await;
}

/// The fault-injecting stale-read hunt: both `lsn` strategies under real lag while requests
/// are cancelled or panic right after their write and (`lsn-redis`) a private Redis is
/// restarted empty or frozen every 5-7 s. No user may ever list without their own
/// committed write; replicas still serve between faults.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fault_hunt_finds_no_stale_read() {
    let mut f = Fixture::new(SCHEMA_SQL).await;
    let settings = Settings {
        users: 8,
        duration: Duration::from_secs(12),
        write_ratio: 0.3,
        same_request_ratio: 0.3,
        lag_pause: Duration::from_millis(400),
        lag_period: Duration::from_secs(1),
        lagging_replicas: vec![1],
        pool_size: 8,
        think: Duration::from_millis(5),
        faults: true,
    };
    let redis = f.cluster.redis_url.clone();
    for strategy in [Strategy::Lsn, Strategy::LsnRedis] {
        let outcome = run(&mut f, strategy, &settings, &redis, |_| {})
            .await
            .unwrap();
        eprintln!(
            "fault hunt {}: {} requests, {} reads, {:.1}% on replicas, {} stale",
            strategy.name(),
            outcome.requests,
            outcome.reads,
            outcome.replica_share * 100.0,
            outcome.stale_reads
        );
        assert!(outcome.reads > 100, "{outcome:?}");
        assert_eq!(outcome.stale_reads, 0, "{outcome:?}");
        assert!(
            outcome.replica_share > 0.01,
            "the hunt must exercise replicas, not only the fail-safe: {outcome:?}"
        );
    }
    f.finish().await;
}
