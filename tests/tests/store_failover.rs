#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
//! The positions store on Redis Sentinel (a primary, its replica and three Sentinels of the
//! test's own, `pindb_testkit::SentinelRedis`), through every adapter: two application
//! instances share it while four users write on one and read on the other in closed loops;
//! replay pauses on one standby, eight more users write on one instance, the Redis primary is
//! killed after acknowledging their saves (its replica, frozen, never got them: the test
//! checks they are gone), the Sentinels promote the replica, and those users read on the other
//! instance. No read is stale, none fails, the late users' reads go to the master, and the
//! replicas serve keyed reads again once the lost positions would have expired.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pindb_core::RedisStore;
use pindb_scenarios::store_hunt::{self, keyed_user, Phases, StoreFailures};
use pindb_scenarios::{Adapter, DieselAsync, DieselSync, SeaOrm};
use pindb_testkit::{Fixture, SentinelRedis, SENTINEL_MASTER};

const TTL: Duration = Duration::from_secs(6);

/// A store on the set's Sentinels, as each application instance opens it. The faults here
/// are kills and failovers, which fail commands at once, and a frozen Sentinel, which the
/// others outvote: the timeout is long enough that a loaded machine never times a command
/// out (a failed one makes the store untrusted for ttl).
fn store_on(redis: &SentinelRedis) -> RedisStore {
    let urls = redis.sentinel_urls();
    let store = RedisStore::sentinel(&urls, SENTINEL_MASTER, "pindb:", Duration::from_secs(2));
    store.expect("a Sentinel store")
}

async fn instance<A: Adapter>(w: &Fixture, redis: &SentinelRedis, failures: &StoreFailures) -> A {
    store_hunt::instance(w, failures.wrap(store_on(redis)), TTL).await
}

async fn no_stale_read_across_a_sentinel_failover<A: Adapter>(base: u16) {
    let mut w =
        Fixture::new("CREATE TABLE {schema}.notes (author int NOT NULL, n int NOT NULL);").await;
    let table = format!("{}.notes", w.schema.name);
    let redis = tokio::task::spawn_blocking(move || SentinelRedis::start(base))
        .await
        .unwrap();
    let failures = StoreFailures::default();
    let instances = [
        instance::<A>(&w, &redis, &failures).await,
        instance::<A>(&w, &redis, &failures).await,
    ];
    let primary = pindb_scenarios::port_of(&w.cluster.primary().await).await;
    let mut redis = Some(redis);
    // A store pindb has just met is trusted `ttl_seconds` after its first command.
    for db in &instances {
        let consistency = db.router().consistency();
        let first = consistency.scope_with_key(Some("first"), db.read()).await;
        first.expect("a first keyed read");
    }
    tokio::time::sleep(TTL + Duration::from_millis(500)).await;
    let control = tokio::sync::Mutex::new(&mut w.control);

    let phases = Phases::default();
    let stop = AtomicBool::new(false);
    let user = |id: i32| keyed_user(id, &instances, &table, primary, &phases, &stop);
    let set_phase = || phases.next();
    let script = async {
        let before = set_phase();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let during = set_phase();
        // Every store command since the first must have answered for the share before.
        let failed_before = failures.count();
        // Replica 1 lacks every write from now on, yet stays in rotation for 4 s: a read
        // that has lost its position may land there.
        control.lock().await.pause(1).await;
        let started = Instant::now();
        // Saves acknowledged in the 300 ms before the kill never reach the new primary.
        let set = redis.take().expect("the Sentinel set");
        let mut set = tokio::task::spawn_blocking(move || {
            let mut set = set;
            set.freeze_replica();
            set
        })
        .await
        .unwrap();
        // Late users write now, on instance 0: saves the new primary will never have.
        let late: Vec<i32> = (101..=108).collect();
        for id in &late {
            let written = store_hunt::write_row(&instances[0], &table, *id, 1).await;
            written.expect("a late user's write");
        }
        let set = tokio::task::spawn_blocking(move || {
            set.fail_over();
            set
        })
        .await
        .unwrap();
        let failover = started.elapsed();
        let kept = late
            .iter()
            .filter(|id| set.primary_has(&format!("pindb:user{id}")))
            .count();
        assert_eq!(
            kept, 0,
            "the late users' positions were lost in the failover"
        );
        redis = Some(set);
        // They read on instance 1 once it uses the store again (it skips a failed store for a
        // second): their positions are gone.
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        let fresh = &instances[1];
        let (mut late_stale, mut late_reads, mut late_on_master) = (0, 0, 0);
        for _ in 0..3 {
            for id in &late {
                let got = store_hunt::read_newest(fresh, &table, *id).await;
                let got = got.expect("a late user's read");
                late_reads += 1;
                late_stale += usize::from(got / 100_000 != 1);
                late_on_master += usize::from(got % 100_000 == primary);
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        control.lock().await.resume(1).await;
        // Failures from now on would still count against 'after'.
        let settled = failures.count();
        // The lost positions would have expired by then.
        tokio::time::sleep(TTL + Duration::from_millis(500)).await;
        let after = set_phase();
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.store(true, Ordering::Relaxed);
        let failed_after = failures.count() - settled;
        (
            (before, during, after),
            failover,
            (late_stale, late_reads, late_on_master),
            (failed_before, failed_after, failures.count()),
        )
    };
    let (_, _, _, _, script) = tokio::join!(user(1), user(2), user(3), user(4), script);
    let ((before, during, after), failover, late, failed) = script;
    let (failed_before, failed_after, failed_in_all) = failed;
    let (late_stale, late_reads, late_on_master) = late;
    let summary = format!(
        "{}: failover {failover:?}; {late_stale} of {late_reads} late reads stale, \
         {late_on_master} on the master; {}; {}; {}; store commands failed: {failed_before} \
         up to the end of 'before', {failed_after} from ttl before 'after' to its end, \
         {failed_in_all} in all",
        A::NAME,
        before.report("before"),
        during.report("during"),
        after.report("after ttl")
    );
    eprintln!("{summary}");
    assert_eq!(late_stale, 0, "{summary}");
    // The store lost their positions and the new instance knows it: the master serves them.
    assert_eq!(late_on_master, late_reads, "{summary}");
    for c in [&before, &during, &after] {
        assert_eq!(c.stale.load(Ordering::Relaxed), 0, "{summary}");
        assert_eq!(c.failed.load(Ordering::Relaxed), 0, "{summary}");
    }
    // A failed command keeps keyed reads on the master for ttl, whatever the routing: the
    // shares below would say nothing.
    assert_eq!(
        (failed_before, failed_after),
        (0, 0),
        "no store command fails outside the failover: {summary}"
    );
    assert!(
        before.share() > 0.2 && after.share() > 0.2,
        "the replicas serve keyed reads before the failover and again after: {summary}"
    );
    drop(instances);
    drop(redis);
    w.finish().await;
}

#[tokio::test]
async fn no_stale_read_across_a_sentinel_failover_diesel_async() {
    no_stale_read_across_a_sentinel_failover::<DieselAsync>(26420).await;
}

#[tokio::test]
async fn no_stale_read_across_a_sentinel_failover_sync_diesel() {
    no_stale_read_across_a_sentinel_failover::<DieselSync>(26440).await;
}

#[tokio::test]
async fn no_stale_read_across_a_sentinel_failover_seaorm() {
    no_stale_read_across_a_sentinel_failover::<SeaOrm>(26460).await;
}

/// A manual failover (`SENTINEL FAILOVER`) leaves the old primary up and writable for a while:
/// no command fails, yet the store follows the Sentinels within its watch and marks a loss.
#[tokio::test]
async fn the_store_follows_a_failover_whose_old_primary_stays_up() {
    use pindb_core::Store;
    let redis = tokio::task::spawn_blocking(|| SentinelRedis::start(26480))
        .await
        .unwrap();
    let store = store_on(&redis);
    let ttl = Duration::from_secs(30);
    let position = [("default".to_owned(), pindb_core::Lsn(1))];
    store.save("before", &position, ttl).await.unwrap();
    // Trusted from the first command's epoch on: a loss moves it later.
    let trusted_until = store.lost_until("", ttl).expect("an epoch");
    let old = redis.primary_port();
    let redis = tokio::task::spawn_blocking(move || {
        redis.manual_failover();
        redis
    })
    .await
    .unwrap();
    assert_ne!(redis.primary_port(), old);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // Commands keep succeeding on the old primary until the store moves.
        let _ = store.save("after", &position, ttl).await;
        if redis.primary_has("pindb:after") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the store never moved to the new primary"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        store.lost_until("", ttl).expect("an epoch") > trusted_until,
        "moving to another primary marks a loss"
    );
}

/// The first Sentinel of the list hangs (its host froze): the store still finds the primary
/// at once from the other two, and follows a failover they make.
#[tokio::test]
async fn a_hung_sentinel_delays_nothing() {
    use pindb_core::Store;
    let mut redis = tokio::task::spawn_blocking(|| SentinelRedis::start(26500))
        .await
        .unwrap();
    redis.freeze_sentinel(0);
    let store = store_on(&redis);
    let ttl = Duration::from_secs(30);
    let position = [("default".to_owned(), pindb_core::Lsn(1))];
    let saved = store.save("before", &position, ttl).await;
    saved.expect("a save with one Sentinel hung");
    assert!(redis.primary_has("pindb:before"));
    let mut redis = redis;
    let redis = tokio::task::spawn_blocking(move || {
        redis.fail_over();
        redis
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let saved = store.save("after", &position, ttl).await;
        if saved.is_ok() && redis.primary_has("pindb:after") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the store never reached the new primary"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
