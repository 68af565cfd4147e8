#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
//! The positions store on a Redis Cluster (three primaries with a replica each, of the test's
//! own: `pindb_testkit::RedisCluster`). A shard that fails over losing its last saves makes
//! only its own keys forgetful; and two application instances, users writing on one and
//! reading on the other in closed loops, read nothing stale and fail nothing while slots
//! move, a shard restarts empty and a primary is killed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use pindb_core::{Lsn, RedisStore, Store};
use pindb_scenarios::store_hunt::{self, keyed_user, Phases, StoreFailures};
use pindb_scenarios::{Adapter, DieselAsync, SeaOrm};
use pindb_testkit::{Fixture, RedisCluster};

/// The command timeout where the faults are kills, restarts, failovers and slot moves, which
/// fail or redirect commands at once: long enough that a loaded machine never times one out
/// (a failed command makes its bucket untrusted for ttl; the first also connects the client).
const TIMEOUT: Duration = Duration::from_secs(2);
/// The command timeout of the tests of a seed that hangs: connecting waits this long for it.
const HUNG_SEED_TIMEOUT: Duration = Duration::from_millis(200);

fn store_on(redis: &RedisCluster) -> RedisStore {
    RedisStore::cluster(&redis.seed_urls(), "pindb:", TIMEOUT).expect("a cluster store")
}

async fn start(base: u16) -> RedisCluster {
    tokio::task::spawn_blocking(move || RedisCluster::start(base))
        .await
        .unwrap()
}

/// A cluster the test's tasks share.
type Shared = Arc<std::sync::Mutex<RedisCluster>>;

/// Runs `f` on the cluster on a blocking thread (it waits for `redis-cli` and the cluster).
async fn on_redis<T: Send + 'static>(
    redis: &Shared,
    f: impl FnOnce(&mut RedisCluster) -> T + Send + 'static,
) -> T {
    let redis = Arc::clone(redis);
    tokio::task::spawn_blocking(move || f(&mut redis.lock().unwrap()))
        .await
        .unwrap()
}

/// The primary that holds `key`'s positions (its bucket's hash tag is pindb's business: the
/// test finds it by pattern).
async fn holder(redis: &Shared, key: &str) -> Option<u16> {
    let pattern = format!("pindb:{{*}}{key}");
    on_redis(redis, move |r| r.primary_with(&pattern)).await
}

#[tokio::test]
async fn a_prefix_with_a_hash_tag_is_refused_with_the_fix() {
    let e = RedisStore::cluster(&["redis://127.0.0.1:1/"], "app:{lsn}:", TIMEOUT).unwrap_err();
    let message = e.to_string();
    assert!(
        message.contains("app:{lsn}:") && message.contains("redis_prefix"),
        "{message}"
    );
}

/// A lossless failover and a failback with no command in between: the old primary, the same
/// process, serves the shard again, but it was a replica meanwhile (what it acknowledged last
/// before the first failover may be gone): its keys are not trusted.
#[tokio::test]
async fn a_failback_within_ttl_is_noticed() {
    let redis = Arc::new(std::sync::Mutex::new(start(26660).await));
    let store = store_on(&redis.lock().unwrap());
    let ttl = Duration::from_secs(2);
    let position = [("default".to_owned(), Lsn(7))];
    store
        .save("user1", &position, Duration::from_secs(60))
        .await
        .unwrap();
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    store.load("user1").await.unwrap();
    let trusted = |store: &RedisStore| {
        store
            .lost_until("user1", ttl)
            .is_none_or(|u| u <= SystemTime::now())
    };
    assert!(trusted(&store), "trusted before the failover");
    let shard = holder(&redis, "user1").await.expect("the key is stored");
    on_redis(&redis, move |r| {
        let interim = r.manual_failover(shard);
        assert_eq!(r.manual_failover(interim), shard, "failed back");
    })
    .await;
    assert_eq!(store.load("user1").await.unwrap(), position);
    assert!(!trusted(&store), "a failback is a failover too");
}

/// A seed that accepts and never answers: the driver waits for every seed while it connects,
/// which takes the whole command timeout; the store still gets connected and serves.
#[tokio::test]
async fn a_hung_seed_does_not_keep_the_store_from_connecting() {
    let redis = start(26680).await;
    let hung = pindb_testkit::Proxy::black_hole().await;
    let mut seeds = vec![format!("redis://127.0.0.1:{}/", hung.port())];
    seeds.extend(redis.seed_urls());
    let store = RedisStore::cluster(&seeds, "pindb:", HUNG_SEED_TIMEOUT).unwrap();
    let position = [("default".to_owned(), Lsn(7))];
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut failed = 0;
    while store
        .save("user1", &position, Duration::from_secs(60))
        .await
        .is_err()
    {
        failed += 1;
        assert!(
            Instant::now() < deadline,
            "no save went through in 8 s ({failed} failed)"
        );
    }
    // Loads skip the bucket for a second after a failed command.
    loop {
        match store.load("user1").await {
            Ok(loaded) => break assert_eq!(loaded, position),
            Err(e) => assert!(Instant::now() < deadline, "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A store first used on a runtime that then shuts down (a test's, a CLI command's): the
/// cluster connection it made there dies with it, and commands on the next runtime make
/// another instead of failing for ever ("redis_cluster: Unable to send command").
#[test]
fn a_store_whose_runtime_ended_connects_again_on_the_next() {
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    };
    let proxies = runtime();
    let hung = proxies.block_on(pindb_testkit::Proxy::black_hole());
    let redis = RedisCluster::start(26690);
    let mut seeds = vec![format!("redis://127.0.0.1:{}/", hung.port())];
    seeds.extend(redis.seed_urls());
    let position = [("default".to_owned(), Lsn(7))];
    let first = runtime();
    let store =
        first.block_on(async { RedisStore::cluster(&seeds, "pindb:", HUNG_SEED_TIMEOUT).unwrap() });
    let save = first.block_on(store.save("user1", &position, Duration::from_secs(60)));
    assert!(
        save.is_err(),
        "the hung seed holds the first attempt past the timeout"
    );
    drop(first);
    let second = runtime();
    second.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(8);
        while let Err(e) = store
            .save("user1", &position, Duration::from_secs(60))
            .await
        {
            assert!(
                Instant::now() < deadline,
                "no save went through in 8 s: {e}"
            );
        }
    });
}

#[tokio::test]
async fn keys_spread_over_the_shards_and_a_lossy_shard_failover_makes_only_its_keys_forgetful() {
    let redis = Arc::new(std::sync::Mutex::new(start(26600).await));
    let store = store_on(&redis.lock().unwrap());
    let ttl = Duration::from_secs(2);
    let keys: Vec<String> = (0..60).map(|i| format!("user{i}")).collect();
    for (i, key) in keys.iter().enumerate() {
        let position = [("default".to_owned(), Lsn(100 + i as u64))];
        store
            .save(key, &position, Duration::from_secs(60))
            .await
            .unwrap();
    }
    // Where each key lives: every shard holds some.
    let mut on = std::collections::HashMap::new();
    for key in &keys {
        let port = holder(&redis, key).await.expect("the key is stored");
        on.insert(key.clone(), port);
    }
    let primaries = redis.lock().unwrap().primaries();
    for p in &primaries {
        let held = on.values().filter(|h| *h == p).count();
        assert!(held >= 5, "{held} of 60 keys on the shard of {p}: {on:?}");
    }
    // A new cluster is trusted `ttl` after pindb first used each bucket.
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    for key in &keys {
        store.load(key).await.unwrap();
        let lost = store
            .lost_until(key, ttl)
            .filter(|u| *u > SystemTime::now());
        assert_eq!(lost, None, "{key} is trusted before the failover");
    }

    // The first shard's replica stops hearing from its primary; its keys' next saves are
    // acknowledged, then lost when the primary dies and the replica takes over.
    let victim = primaries[0];
    on_redis(&redis, move |r| r.freeze_replica_of(victim)).await;
    let victims: Vec<&String> = keys.iter().filter(|k| on[*k] == victim).collect();
    for key in &victims {
        let position = [("default".to_owned(), Lsn(10_000))];
        store
            .save(key, &position, Duration::from_secs(60))
            .await
            .unwrap();
    }
    let promoted = on_redis(&redis, move |r| r.fail_over(victim)).await;
    // The loss is real: the new primary lacks the last saves.
    let mut lost_saves = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    for key in &keys {
        let positions = loop {
            match store.load(key).await {
                Ok(positions) => break positions,
                // The driver is still finding the new primary, or the bucket is skipped for
                // a second after a failure.
                Err(e) => {
                    assert!(Instant::now() < deadline, "{key}: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        let forgetful = store
            .lost_until(key, ttl)
            .is_some_and(|u| u > SystemTime::now());
        if on[key] == victim {
            assert!(
                forgetful,
                "{key} was on the failed shard: it must not be trusted"
            );
            lost_saves += usize::from(positions != [("default".to_owned(), Lsn(10_000))]);
        } else {
            assert!(!forgetful, "{key} was on another shard: still trusted");
            let i: u64 = key[4..].parse().unwrap();
            assert_eq!(positions, [("default".to_owned(), Lsn(100 + i))], "{key}");
        }
    }
    assert_eq!(
        lost_saves,
        victims.len(),
        "the failover (to {promoted}) lost every save made after the replica froze"
    );
}

/// Names the shard a round's fault will hit (and readies the fault).
type Prepare = Box<dyn FnOnce(&mut RedisCluster) -> u16 + Send>;
/// The fault that loses that shard's data.
type Lose = Box<dyn FnOnce(&mut RedisCluster, u16) + Send>;

/// What one round of late users saw.
#[derive(Debug, Default)]
struct Late {
    took: Duration,
    /// Late users whose keys were on the shard that lost data, and how many kept them.
    on_shard: usize,
    kept: usize,
    reads: usize,
    stale: usize,
    /// Reads of those users that the master served.
    lost_on_master: usize,
}

impl Late {
    fn report(&self) -> String {
        format!(
            "{:.1?}, {} of 16 late users on its shard, {} of their positions kept, {} of {} \
             late reads stale, {} of {} on the master",
            self.took,
            self.on_shard,
            self.kept,
            self.stale,
            self.reads,
            self.lost_on_master,
            self.on_shard * 3
        )
    }
}

const TTL: Duration = Duration::from_secs(6);

async fn instance<A: Adapter>(w: &Fixture, redis: &RedisCluster, failures: &StoreFailures) -> A {
    store_hunt::instance(w, failures.wrap(store_on(redis)), TTL).await
}

/// Two instances share the cluster store; eight users write on one and read their newest row
/// on the other, in closed loops, while the cluster moves 2,000 slots, restarts a shard empty
/// and fails another over losing its last saves (standby 1 paused for 3 s around each fault).
/// Sixteen late users write just before each data-losing fault and read after it: those on
/// the shard that lost their position must read from the master, never stale.
async fn no_stale_read_across_cluster_faults<A: Adapter>(base: u16) {
    let mut w =
        Fixture::new("CREATE TABLE {schema}.notes (author int NOT NULL, n int NOT NULL);").await;
    let table = format!("{}.notes", w.schema.name);
    let redis = start(base).await;
    let failures = StoreFailures::default();
    let instances = [
        instance::<A>(&w, &redis, &failures).await,
        instance::<A>(&w, &redis, &failures).await,
    ];
    let redis = Arc::new(std::sync::Mutex::new(redis));
    let primary = pindb_scenarios::port_of(&w.cluster.primary().await).await;
    let control = tokio::sync::Mutex::new(&mut w.control);
    let phases = Phases::default();
    let stop = AtomicBool::new(false);
    let user = |id: i32| keyed_user(id, &instances, &table, primary, &phases, &stop);
    let set_phase = || phases.next();
    let late: Vec<i32> = (101..=116).collect();
    let late_write = async |n: i32| {
        for id in &late {
            let written = store_hunt::write_row(&instances[0], &table, *id, n).await;
            written.expect("a late user's write");
        }
    };
    // A round of the late users around a fault that loses data: standby 1 paused, `prepare`
    // names the shard about to lose it (and freezes its replica for a failover), the late
    // users write row `n` on instance 0, `lose` happens, and they read on instance 1 (three
    // times each). Those whose keys were on that shard lost this position: the store must
    // know it and send them to the master (that is what fails without the detection; their
    // earlier positions have expired, and standby 1 may have left rotation by then, so a
    // stale read is unlikely even then). Standby 1 resumes at least 3 s after the pause.
    let late_round = async |n: i32, prepare: Prepare, lose: Lose| {
        control.lock().await.pause(1).await;
        let started = Instant::now();
        let shard = on_redis(&redis, prepare).await;
        late_write(n).await;
        let mut on_shard = Vec::new();
        for id in &late {
            if holder(&redis, &format!("user{id}")).await == Some(shard) {
                on_shard.push(*id);
            }
        }
        on_redis(&redis, move |r| lose(r, shard)).await;
        let took = started.elapsed();
        let mut round = Late {
            on_shard: on_shard.len(),
            took,
            ..Late::default()
        };
        for id in &on_shard {
            round.kept += usize::from(holder(&redis, &format!("user{id}")).await.is_some());
        }
        // Instance 1 skips a bucket whose command failed for a second.
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        for _ in 0..3 {
            for id in &late {
                let got = store_hunt::read_newest(&instances[1], &table, *id).await;
                let got = got.expect("a late user's read");
                round.reads += 1;
                round.stale += usize::from(got / 100_000 != n);
                round.lost_on_master +=
                    usize::from(on_shard.contains(id) && got % 100_000 == primary);
            }
        }
        tokio::time::sleep(Duration::from_secs(3).saturating_sub(started.elapsed())).await;
        control.lock().await.resume(1).await;
        round
    };
    let script = async {
        // Sixteen late users write once now: their buckets' epochs reach the replicas.
        late_write(1).await;
        // A new cluster is trusted `ttl_seconds` after pindb first used each bucket.
        tokio::time::sleep(TTL + Duration::from_millis(500)).await;
        let before = set_phase();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let faults = set_phase();
        // Every store command since the first must have answered for the share before.
        let failed_before = failures.count();
        // Slots move (nothing is lost): standby 1 lacks every write from the move's start
        // until 3 s later, yet stays in rotation: a read that lost its position may land there.
        control.lock().await.pause(1).await;
        let started = Instant::now();
        on_redis(&redis, |r| {
            let p = r.primaries();
            r.move_slots(p[0], p[1], 2_000);
        })
        .await;
        let moved = started.elapsed();
        tokio::time::sleep(Duration::from_secs(3).saturating_sub(moved)).await;
        control.lock().await.resume(1).await;
        // A shard restarted empty, then another failed over losing its last saves.
        let restarted = late_round(
            2,
            Box::new(|r| r.primaries()[1]),
            Box::new(|r, port| r.restart_empty(port)),
        )
        .await;
        let failed_over = late_round(
            3,
            Box::new(|r| {
                let port = r.primaries()[2];
                r.freeze_replica_of(port);
                port
            }),
            Box::new(|r, port| {
                r.fail_over(port);
            }),
        )
        .await;
        // Failures from now on would still count against 'after'.
        let settled = failures.count();
        // Whatever was lost would have expired by then.
        tokio::time::sleep(TTL + Duration::from_millis(500)).await;
        let after = set_phase();
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.store(true, Ordering::Relaxed);
        let failed = (failed_before, failures.count() - settled, failures.count());
        (before, faults, after, moved, restarted, failed_over, failed)
    };
    let users = futures_util::future::join_all((1..=8).map(user));
    let (_, script) = tokio::join!(users, script);
    let (before, faults, after, moved, restarted, failed_over, failed) = script;
    let (failed_before, failed_after, failed_in_all) = failed;
    let summary = format!(
        "{}: 2,000 slots moved in {moved:.1?}; a shard restarted empty: {}; a lossy failover: \
         {}; {}; {}; {}; store commands failed: {failed_before} up to the end of 'before', \
         {failed_after} from ttl before 'after' to its end, {failed_in_all} in all",
        A::NAME,
        restarted.report(),
        failed_over.report(),
        before.report("before"),
        faults.report("during the faults"),
        after.report("after ttl"),
    );
    eprintln!("{summary}");
    for round in [&restarted, &failed_over] {
        assert!(
            round.on_shard > 0 && round.kept == 0,
            "the fault lost their positions: {summary}"
        );
        assert_eq!(round.stale, 0, "{summary}");
        // The store knows it lost them: the master serves them.
        assert_eq!(round.lost_on_master, round.on_shard * 3, "{summary}");
    }
    for c in [&before, &faults, &after] {
        assert_eq!(c.stale.load(Ordering::Relaxed), 0, "{summary}");
        assert_eq!(c.failed.load(Ordering::Relaxed), 0, "{summary}");
    }
    assert!(
        faults.reads.load(Ordering::Relaxed) > 0,
        "reads are served during the faults: {summary}"
    );
    // A failed command keeps its bucket's keyed reads on the master for ttl, whatever the
    // routing: the shares below would say nothing.
    assert_eq!(
        (failed_before, failed_after),
        (0, 0),
        "no store command fails outside the faults: {summary}"
    );
    assert!(
        before.share() > 0.2 && after.share() > 0.2,
        "the replicas serve keyed reads before the faults and again after: {summary}"
    );
    drop(instances);
    w.finish().await;
}

#[tokio::test]
async fn no_stale_read_across_cluster_faults_diesel_async() {
    no_stale_read_across_cluster_faults::<DieselAsync>(26620).await;
}

#[tokio::test]
async fn no_stale_read_across_cluster_faults_seaorm() {
    no_stale_read_across_cluster_faults::<SeaOrm>(26640).await;
}
