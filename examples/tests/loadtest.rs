#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
//! The load test's stale-read checker can fail: with replicas paused, `random-replica` must
//! show stale reads, while `lsn` under the same load shows none; the same on the MariaDB set.
//! Short (seconds); the full load test runs from its own command.

use std::time::Duration;

use pindb_examples::loadtest::{run, Backend, Settings, Strategy, Target};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stale_read_checker_catches_random_replica_and_clears_lsn() {
    let mut f = Target::new(Backend::Postgres).await;
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
        think_max: Duration::ZERO,
        faults: false,
        max_wait: None,
    };
    let redis = pindb_testkit::Cluster::from_env().redis_url;
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
    let mut f = Target::new(Backend::Postgres).await;
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
        think_max: Duration::ZERO,
        faults: true,
        max_wait: None,
    };
    let redis = pindb_testkit::Cluster::from_env().redis_url;
    for strategy in [Strategy::Lsn, Strategy::LsnNoWait, Strategy::LsnRedis] {
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

/// The MariaDB round, the two checks above in one: with both replicas' SQL threads stopped
/// for the whole run, `random-replica` must read stale (the checker can fail); then `lsn`, by
/// GTID positions, under lag (replica 1 stops applying 400 ms of every second) with the
/// faults injected (requests cancelled or panicking right after their write, 3 s position
/// lifetimes), must read none while replicas still serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_mariadb_random_replica_reads_stale_and_the_fault_hunt_finds_none() {
    let mut t = Target::new(Backend::Mariadb).await;
    let redis = pindb_testkit::Cluster::from_env().redis_url;
    let stopped = Settings {
        users: 4,
        duration: Duration::from_secs(2),
        write_ratio: 0.5,
        same_request_ratio: 0.0,
        lag_pause: Duration::from_secs(60),
        lag_period: Duration::from_secs(60),
        lagging_replicas: vec![1, 2],
        pool_size: 4,
        think: Duration::from_millis(5),
        think_max: Duration::ZERO,
        faults: false,
        max_wait: None,
    };
    let random = run(&mut t, Strategy::RandomReplica, &stopped, &redis, |_| {})
        .await
        .unwrap();
    assert!(random.reads > 50, "{random:?}");
    assert!(
        random.stale_reads > 0,
        "the checker saw no stale read on MariaDB: {random:?}"
    );
    let hunt = Settings {
        users: 8,
        duration: Duration::from_secs(5),
        write_ratio: 0.3,
        same_request_ratio: 0.3,
        lag_pause: Duration::from_millis(400),
        lag_period: Duration::from_secs(1),
        lagging_replicas: vec![1],
        pool_size: 8,
        faults: true,
        ..stopped
    };
    let lsn = run(&mut t, Strategy::Lsn, &hunt, &redis, |_| {})
        .await
        .unwrap();
    eprintln!(
        "MariaDB fault hunt lsn: {} requests, {} reads, {:.1}% on replicas, {} stale",
        lsn.requests,
        lsn.reads,
        lsn.replica_share * 100.0,
        lsn.stale_reads
    );
    assert!(lsn.reads > 100, "{lsn:?}");
    assert_eq!(lsn.stale_reads, 0, "{lsn:?}");
    assert!(
        lsn.replica_share > 0.01,
        "the hunt must exercise replicas, not only the fail-safe: {lsn:?}"
    );
    let refused = run(&mut t, Strategy::LsnRoundTrip, &hunt, &redis, |_| {}).await;
    assert!(
        refused.is_err_and(|e| e.to_string().contains("not supported on mariadb")),
        "lsn-round-trip is refused on MariaDB"
    );
    t.finish().await;
}

/// The oracle counts a read as servable when the user had not written, or when a replica
/// sample at the read's start had the write: the strict oracle takes the last sample before
/// it, the generous one the first at or after it.
#[test]
fn the_oracle_matches_each_read_with_the_replay_position_of_its_time() {
    use pindb_examples::loadtest::oracle_share;
    let ms = Duration::from_millis;
    let replay = [(ms(0), 100), (ms(2), 200), (ms(4), 300)];
    let reads = [
        (ms(1), 0),   // no write: servable
        (ms(1), 150), // strict: 100 (sample at 0) < 150; generous: 200 (sample at 2)
        (ms(3), 200), // both: strict 200, generous 300
        (ms(5), 400), // never replayed
    ];
    assert_eq!(oracle_share(&reads, &replay, true), 0.5);
    assert_eq!(oracle_share(&reads, &replay, false), 0.75);
    assert_eq!(oracle_share(&[], &replay, false), 0.0);
}
