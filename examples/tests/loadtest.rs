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
