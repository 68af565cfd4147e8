#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
//! Read-your-writes across contexts, the replica monitor and the stickiness stores, through
//! the diesel-async adapter, against the real cluster and real Redis.

use std::sync::Arc;
use std::time::Duration;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use pindb_core::{
    Config, Context, Lsn, MemoryStore, PinDbError, RedisStore, Router, RouterMode, Store,
    TopologyCheck,
};
use pindb_diesel::bb8::PinDb;
use pindb_testkit::{wait_until, Cluster, PrivateRedis};

mod common;

use common::{notes, NewNote, World};

const SOON: Duration = Duration::from_secs(10);

/// A greedy config over the given replicas with a fast monitor. The replica faults here are
/// paused replay and stopped servers (refused at once): the check timeout is long enough
/// that a loaded machine never marks a healthy replica down.
fn config(w: &World, replicas: &[usize]) -> Config {
    let mut config = w.config(RouterMode::Greedy, replicas);
    config.monitor.interval_ms = 20;
    config.monitor.check_timeout_ms = 2_000;
    config.monitor.failures_before_down = 2;
    config
}

async fn started(config: Config) -> PinDb {
    started_with(config, Arc::new(MemoryStore::new(100_000))).await
}

/// A started `PinDb` whose router keeps positions in `store`.
async fn started_with(config: Config, store: Arc<dyn Store>) -> PinDb {
    let router = Router::builder(config).store(store).build().unwrap();
    let db = PinDb::from_router(router).unwrap();
    db.router().start_monitor().await.unwrap();
    for alias in replicas_of(&db) {
        let router = db.router().clone();
        wait_until(&format!("the monitor has seen {alias}"), SOON, || {
            router
                .topology()
                .replica_status(&alias)
                .unwrap()
                .unwrap()
                .replay_lsn
                .0
                > 0
        })
        .await;
    }
    db
}

/// A short position lifetime (with a lag limit it outlives, with the time to notice it), so
/// tests can wait out the time a store that may have lost positions is not trusted.
fn short_ttl(mut config: Config) -> Config {
    config.monitor.max_lag_ms = 2_500;
    config.stickiness.ttl_seconds = 6;
    config
}

/// A Redis command timeout far above a loaded machine's slowest answer: a command that times
/// out makes the store untrusted for ttl. The outages here are a stopped or restarted Redis,
/// which refuses commands at once.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// Waits until keyed reads go to replicas again: a store that is new (or lost data) is
/// trusted only `ttl_seconds` after pindb first saw it.
async fn until_store_trusted(db: &PinDb) {
    let deadline = std::time::Instant::now() + 2 * SOON;
    loop {
        let (_, held) = read_as(db, "probe").await;
        if !on_master(&held) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the store is still not trusted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn replicas_of(db: &PinDb) -> Vec<String> {
    db.router()
        .topology()
        .databases()
        .iter()
        .filter(|d| {
            matches!(
                d.membership,
                pindb_core::adapter::Membership::Replica { .. }
            )
        })
        .map(|d| d.alias.clone())
        .collect()
}

/// One keyed request that reads the notes: `(bodies, aliases it used)`.
async fn read_as(db: &PinDb, key: &str) -> (Vec<String>, Vec<String>) {
    db.router()
        .consistency()
        .scope_with_key(Some(key), async {
            let mut conn = db.get();
            let rows = notes::table
                .select(notes::body)
                .order(notes::id)
                .load::<String>(&mut conn)
                .await
                .unwrap();
            (
                rows,
                conn.held_aliases().iter().map(|a| a.to_string()).collect(),
            )
        })
        .await
}

/// One keyed request that writes a note.
async fn write_as(db: &PinDb, key: &str, body: &str) {
    db.router()
        .consistency()
        .scope_with_key(Some(key), async {
            diesel::insert_into(notes::table)
                .values(NewNote { author: key, body })
                .execute(&mut db.get())
                .await
                .unwrap();
        })
        .await;
}

fn on_master(held: &[String]) -> bool {
    held == ["default"]
}

#[tokio::test]
async fn a_writer_reads_its_write_from_the_master_until_a_replica_catches_up() {
    let mut w = World::new().await;
    let db = started(config(&w, &[1, 2])).await;
    w.control.pause(1).await;
    w.control.pause(2).await;

    write_as(&db, "alice", "mine").await;
    let (rows, held) = read_as(&db, "alice").await;
    assert_eq!(rows, ["old", "mine"], "alice reads her own write");
    assert!(
        on_master(&held),
        "from the master while the replicas lag: {held:?}"
    );
    let (rows, held) = read_as(&db, "bob").await;
    assert_eq!(
        rows,
        ["old"],
        "bob, who wrote nothing, reads a (stale) replica"
    );
    assert!(!on_master(&held), "{held:?}");

    w.control.resume(1).await;
    w.control.resume(2).await;
    let lsn = w.cluster.primary_lsn().await;
    for alias in replicas_of(&db) {
        let router = db.router().clone();
        wait_until("the monitor sees the replicas caught up", SOON, || {
            router
                .topology()
                .replica_status(&alias)
                .unwrap()
                .unwrap()
                .replay_lsn
                >= lsn
        })
        .await;
    }
    let (rows, held) = read_as(&db, "alice").await;
    assert_eq!(rows, ["old", "mine"]);
    assert!(
        !on_master(&held),
        "caught up: alice reads a replica again: {held:?}"
    );
    w.finish().await;
}

#[tokio::test]
async fn no_stale_read_in_a_thousand_write_then_read_rounds_with_replicas_pausing() {
    let mut w = World::new().await;
    let mut config = config(&w, &[1, 2]);
    config.stickiness.max_wait_ms = 20;
    let db = started(config).await;
    let mut rng = fastrand::Rng::with_seed(7);
    let (mut stale, mut from_replica) = (0, 0);
    for i in 0..1000 {
        if i % 40 == 0 {
            w.control.flip(rng.usize(1..=2)).await;
        }
        let body = format!("w{i}");
        write_as(&db, "alice", &body).await;
        let (rows, held) = read_as(&db, "alice").await;
        if rows.last() != Some(&body) {
            stale += 1;
        }
        if !on_master(&held) {
            from_replica += 1;
        }
    }
    assert_eq!(stale, 0, "alice read her own write stale {stale} times");
    assert!(
        from_replica > 100,
        "the replicas served alice too ({from_replica} of 1000)"
    );
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stale_read_while_runtime_replica_hosts_come_and_go() {
    let mut w = World::new().await;
    // Only runtime replicas: one slot whose host flips between the standbys (one of them
    // paused, so behind every write) while keyed writers read their writes back.
    let mut config = config(&w, &[]);
    config.stickiness.max_wait_ms = 20;
    config.monitor.successes_before_up = 1;
    config.monitor.recheck_after_write_ms = 0;
    let discovery = pindb_core::DiscoverySettings {
        max_replicas: Some(1),
        ..Default::default()
    };
    config.masters.get_mut("default").unwrap().discovery = Some(discovery);
    // Not `started`: the slots have no host to wait for yet.
    let db = PinDb::new(config).unwrap();
    db.router().start_monitor().await.unwrap();
    let host = |n: usize| {
        let url = w.cluster.replica_url(n);
        let port = url.rsplit_once(':').unwrap().1.split('/').next().unwrap();
        format!("127.0.0.1:{port}")
    };
    let lists = [vec![host(1)], vec![host(2)], vec![host(1)], vec![]];
    w.control.pause(2).await;
    let done = std::sync::atomic::AtomicBool::new(false);
    let flips = async {
        let mut rng = fastrand::Rng::with_seed(11);
        let mut flips = 0;
        // Not `done.load`: diesel's `RunQueryDsl::load` would be taken for it.
        while !std::sync::atomic::AtomicBool::load(&done, std::sync::atomic::Ordering::Relaxed) {
            db.router()
                .set_replicas("default", &lists[rng.usize(..lists.len())])
                .unwrap();
            flips += 1;
            tokio::time::sleep(Duration::from_millis(rng.u64(1..10))).await;
        }
        flips
    };
    let rounds = async {
        let (mut stale, mut from_replica) = (0, 0);
        for i in 0..400 {
            let key = format!("user{}", i % 8);
            let body = format!("w{i}");
            write_as(&db, &key, &body).await;
            let (rows, held) = read_as(&db, &key).await;
            if !rows.contains(&body) {
                stale += 1;
            }
            from_replica += usize::from(!on_master(&held));
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (stale, from_replica)
    };
    let (flips, (stale, from_replica)) = tokio::join!(flips, rounds);
    w.control.resume(2).await;
    assert_eq!(stale, 0, "a write read back stale {stale} times");
    assert!(flips > 50, "the hosts changed {flips} times");
    assert!(
        from_replica > 40,
        "runtime replicas served keyed reads ({from_replica} of 400)"
    );
    eprintln!("{flips} host changes, {from_replica} of 400 keyed reads on a replica, none stale");
    w.finish().await;
}

#[tokio::test]
async fn reads_cost_no_extra_round_trips_on_a_healthy_cluster() {
    let w = World::new().await;
    let mut config = config(&w, &[1, 2]);
    config.stickiness.max_wait_ms = 20;
    let db = started(config).await;
    write_as(&db, "alice", "once").await;
    let after_write = db.router().consistency().round_trips();
    assert_eq!(
        after_write, 0,
        "the write's position is learned in its own flight: no round trip of its own"
    );
    // Healthy: the replicas replay the write and the monitor sees it (a loaded machine may
    // take longer than the reads' wait, which then asks the replicas or reads the master).
    let consistency = db.router().consistency();
    // Not `.load`: diesel's `RunQueryDsl::load` would be taken for it.
    let positions = Store::load(&**consistency.store(), "alice").await.unwrap();
    let [(_, written)] = positions[..] else {
        panic!("alice's one position: {positions:?}");
    };
    for alias in replicas_of(&db) {
        pindb_testkit::monitor_saw_replay(db.router(), &alias, written).await;
    }
    let mut from_replica = 0;
    for _ in 0..1000 {
        let (rows, held) = read_as(&db, "alice").await;
        assert_eq!(rows.last().map(String::as_str), Some("once"));
        from_replica += usize::from(!on_master(&held));
    }
    let extra = db.router().consistency().round_trips() - after_write;
    assert!(extra < 10, "{extra} extra round trips for 1,000 reads");
    assert!(
        from_replica > 990,
        "{from_replica} of 1,000 reads on replicas"
    );
    w.finish().await;
}

#[tokio::test]
async fn two_app_instances_share_positions_through_redis() {
    let mut w = World::new().await;
    let prefix = format!("pindb:test:{}:", w.schema.name);
    let mut instances = Vec::new();
    for _ in 0..2 {
        let db = started_with(
            short_ttl(config(&w, &[1])),
            Arc::new(RedisStore::new(&w.cluster.redis_url, &prefix, REDIS_TIMEOUT).unwrap()),
        )
        .await;
        until_store_trusted(&db).await;
        instances.push(db);
    }
    w.control.pause(1).await;
    write_as(&instances[0], "alice", "via-a").await;
    let (rows, held) = read_as(&instances[1], "alice").await;
    assert_eq!(
        rows,
        ["old", "via-a"],
        "instance B knows alice's write position"
    );
    assert!(on_master(&held), "{held:?}");
    let (rows, _) = read_as(&instances[1], "bob").await;
    assert_eq!(rows, ["old"]);
    w.finish().await;
}

#[tokio::test]
async fn redis_going_down_never_errors_and_sends_keyed_reads_to_the_master() {
    let w = World::new().await;
    let mut redis = PrivateRedis::start(26391);
    let db = started_with(
        short_ttl(config(&w, &[1])),
        Arc::new(RedisStore::new(&redis.url(), "pindb:", REDIS_TIMEOUT).unwrap()),
    )
    .await;
    until_store_trusted(&db).await;
    write_as(&db, "alice", "before").await;
    let (_, held) = read_as(&db, "carol").await;
    assert!(
        !on_master(&held),
        "redis up: a key with no write reads a replica"
    );

    redis.stop();
    write_as(&db, "alice", "during").await; // no error, although its position is lost
    for key in ["alice", "carol"] {
        let (rows, held) = read_as(&db, key).await;
        assert_eq!(rows.last().map(String::as_str), Some("during"));
        assert!(
            on_master(&held),
            "store down: {key} reads the master: {held:?}"
        );
    }

    redis.resume();
    // Back, but empty, and a save failed while it was down: keyed reads stay on the master
    // until the lost positions would have expired, then return to the replicas.
    let (rows, held) = read_as(&db, "alice").await;
    assert_eq!(rows.last().map(String::as_str), Some("during"));
    assert!(on_master(&held), "redis back but forgetful: {held:?}");
    until_store_trusted(&db).await;
    w.finish().await;
}

/// Restarts the replicas a test stopped, even when the test fails.
struct Restart<'a>(&'a Cluster, Vec<usize>);

impl Drop for Restart<'_> {
    fn drop(&mut self) {
        for &n in &self.1 {
            self.0.start_replica(n);
        }
    }
}

#[tokio::test]
async fn a_killed_replica_is_skipped_then_used_again_when_it_returns() {
    let w = World::new().await;
    let db = started(config(&w, &[1, 2])).await;
    let router = db.router().clone();
    {
        let _restart = Restart(&w.cluster, vec![2, 1]);
        w.cluster.stop_replica(2);
        wait_until("replica 2 is marked down", SOON, || {
            !router
                .topology()
                .replica_status("default-2")
                .unwrap()
                .unwrap()
                .up
        })
        .await;
        for _ in 0..6 {
            let (_, held) = read_as(&db, "reader").await;
            assert_eq!(held, ["default-1"], "the other replica serves");
        }
        w.cluster.stop_replica(1);
        wait_until("replica 1 is marked down", SOON, || {
            !router
                .topology()
                .replica_status("default-1")
                .unwrap()
                .unwrap()
                .up
        })
        .await;
        let (rows, held) = read_as(&db, "reader").await;
        assert_eq!(rows, ["old"]);
        assert!(on_master(&held), "both down: the master serves: {held:?}");
        pindb_core::scope(async {
            let route = db.router().db_for_read(&Default::default()).unwrap();
            assert_eq!(route.reason, pindb_core::Reason::ReplicaDown);
        })
        .await;
    }
    for alias in ["default-1", "default-2"] {
        wait_until("the replicas are back up", SOON, || {
            router.topology().replica_status(alias).unwrap().unwrap().up
        })
        .await;
    }
    let mut used = std::collections::BTreeSet::new();
    for _ in 0..4 {
        used.extend(read_as(&db, "reader").await.1);
    }
    assert_eq!(
        used.into_iter().collect::<Vec<_>>(),
        ["default-1", "default-2"]
    );
    w.finish().await;
}

#[tokio::test]
async fn a_replica_past_max_lag_bytes_is_ejected_for_everyone_and_returns() {
    let mut w = World::new().await;
    let mut config = config(&w, &[1]);
    config.monitor.max_lag_bytes = 256 * 1024;
    let db = started(config).await;
    let router = db.router().clone();
    w.write_unseen_by(
        1,
        // Random text, so that compression cannot shrink the WAL below the limit.
        "INSERT INTO {schema}.notes (author, body)
         SELECT 'bulk', (SELECT string_agg(md5(random()::text || g || i), '') FROM generate_series(1, 64) i)
         FROM generate_series(1, 1000) g",
    )
    .await;
    wait_until("replica 1 is over the lag limit", SOON, || {
        router
            .topology()
            .replica_status("default-1")
            .unwrap()
            .unwrap()
            .over_lag
    })
    .await;
    let (_, held) = read_as(&db, "anyone").await;
    assert!(on_master(&held), "{held:?}");
    pindb_core::scope(async {
        let route = router.db_for_read(&Default::default()).unwrap();
        assert_eq!(route.reason, pindb_core::Reason::LagFallback);
    })
    .await;
    w.control.resume(1).await;
    wait_until("replica 1 is back within limits", SOON, || {
        !router
            .topology()
            .replica_status("default-1")
            .unwrap()
            .unwrap()
            .over_lag
    })
    .await;
    let (_, held) = read_as(&db, "anyone").await;
    assert_eq!(held, ["default-1"]);
    w.finish().await;
}

/// An idle primary is not replica lag: caught-up replicas stay within `max_lag_ms` however
/// long nothing is written (a lag counted from the last write, as replay timestamps count
/// it, takes them out once the primary has been idle that long).
#[tokio::test]
async fn an_idle_primary_is_not_replica_lag() {
    let w = World::new().await;
    let mut config = config(&w, &[1, 2]);
    // Far above what a stalled machine adds to a checked replica's bound (checked every
    // 20 ms); below the idle stretch watched for.
    config.monitor.max_lag_ms = 2_000;
    let db = started(config).await;
    // Watched until the primary has stayed idle for 3 s (a test holds the replay lock for
    // its whole run, so only tests without it may write meanwhile; PostgreSQL itself logs
    // a snapshot of running transactions at most every 15 s), for at most 20 s.
    let primary = w.cluster.primary().await;
    let position = async || {
        let row = primary.query_one("SELECT pg_current_wal_lsn()::text", &[]);
        lsn(&row.await.unwrap().get::<_, String>(0))
    };
    let (mut last, mut idle_since) = (position().await, std::time::Instant::now());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while idle_since.elapsed() < Duration::from_secs(3) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        for alias in ["default-1", "default-2"] {
            let status = db
                .router()
                .topology()
                .replica_status(alias)
                .unwrap()
                .unwrap();
            assert!(
                status.up && !status.over_lag,
                "{alias}, the primary idle for {:?}: {status:?}",
                idle_since.elapsed()
            );
        }
        let now = position().await;
        if now != last {
            (last, idle_since) = (now, std::time::Instant::now());
        }
    }
    assert!(
        idle_since.elapsed() >= Duration::from_secs(3),
        "the primary was never idle for 3 s in 20 s: nothing proved"
    );
    w.finish().await;
}

#[tokio::test]
async fn topology_check_refuses_a_replica_of_another_cluster() {
    let cluster = Cluster::from_env();
    // A "replica" that is an unrelated primary.
    let config = Config::single_set(cluster.primary_url.clone(), [cluster.stranger_url.clone()]);
    let router = pindb_core::Router::new(config.clone()).unwrap();
    let err = router.start_monitor().await.unwrap_err();
    assert!(
        matches!(&err, PinDbError::Config { alias: Some(a), .. } if a == "default-1"),
        "{err}"
    );
    assert!(err.to_string().contains("not in recovery"), "{err}");

    // Real standbys, but of another master.
    let config = Config::single_set(
        cluster.stranger_url.clone(),
        [cluster.replica_urls[0].clone()],
    );
    let err = pindb_core::Router::new(config.clone())
        .unwrap()
        .start_monitor()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("another cluster"), "{err}");

    let mut warn = config;
    warn.monitor.topology_check = TopologyCheck::Warn;
    let warnings = pindb_core::Router::new(warn)
        .unwrap()
        .start_monitor()
        .await
        .unwrap();
    assert!(
        warnings.iter().any(|w| w.contains("another cluster")),
        "{warnings:?}"
    );
}

#[tokio::test]
async fn a_job_that_imports_the_token_never_reads_stale() {
    let mut w = World::new().await;
    let db = started(config(&w, &[1])).await;
    w.control.pause(1).await;
    let token = pindb_core::scope(async {
        diesel::insert_into(notes::table)
            .values(NewNote {
                author: "web",
                body: "enqueued",
            })
            .execute(&mut db.get())
            .await
            .unwrap();
        db.router().consistency().token().await.to_string()
    })
    .await;
    assert!(token.starts_with("default@"), "{token}");

    // The worker, in another context, with the token from the job payload.
    let job = Context::new();
    token
        .parse::<pindb_core::ConsistencyToken>()
        .unwrap()
        .apply_to(&job);
    let rows = job
        .scope(async {
            notes::table
                .select(notes::body)
                .load::<String>(&mut db.get())
                .await
                .unwrap()
        })
        .await;
    assert!(rows.contains(&"enqueued".to_string()), "{rows:?}");
    // Without the token the same job would have read the stale replica.
    let (rows, _) = read_as(&db, "no-token").await;
    assert!(!rows.contains(&"enqueued".to_string()));
    w.finish().await;
}

/// A recorded write makes the monitor check the set's replicas again soon
/// (`monitor.recheck_after_write_ms`): with a monitor that otherwise polls once a minute, the
/// writer's next request reads from a replica that has replayed the write; without the
/// recheck, the cached positions predate the write and the master serves it.
#[tokio::test]
async fn a_recorded_write_makes_the_monitor_recheck_the_replicas() {
    let w = World::new().await;
    let mut served = Vec::new();
    for recheck_ms in [10, 0] {
        let mut config = config(&w, &[2]);
        config.monitor.interval_ms = 60_000;
        config.stickiness.ttl_seconds = 600;
        config.monitor.recheck_after_write_ms = recheck_ms;
        // Only the recheck may show the write replayed: no direct asking at the next start.
        config.stickiness.max_wait_ms = 0;
        let db = started(config).await;
        let key = format!("recheck-{recheck_ms}");
        write_as(&db, &key, "fresh").await;
        // Replication takes about a millisecond here; the recheck comes 10 ms after, and
        // again 20, 40, 80... ms later while the replica is behind (a loaded host).
        tokio::time::sleep(Duration::from_millis(700)).await;
        let (bodies, held) = read_as(&db, &key).await;
        assert!(bodies.contains(&"fresh".to_owned()), "{bodies:?}");
        served.push(held);
    }
    assert_eq!(
        served,
        [vec!["default-1".to_owned()], vec!["default".to_owned()]],
        "with the recheck a replica, without it the master"
    );
}

/// A replica slow to replay a write (its replay paused past the first recheck, then
/// resumed): the monitor checks it again, twice as late each time, so the writer soon reads
/// from the replica, not a regular interval (a minute here) after the write.
#[tokio::test]
async fn a_recheck_that_finds_the_replica_behind_checks_again() {
    let mut w = World::new().await;
    let mut config = config(&w, &[2]);
    config.monitor.interval_ms = 60_000;
    config.stickiness.ttl_seconds = 600;
    config.monitor.recheck_after_write_ms = 10;
    config.stickiness.max_wait_ms = 0;
    let db = started(config).await;
    w.control.pause(2).await;
    write_as(&db, "slow-replay", "fresh").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (bodies, held) = read_as(&db, "slow-replay").await;
    assert!(bodies.contains(&"fresh".to_owned()), "{bodies:?}");
    assert!(
        on_master(&held),
        "the replica has not replayed it: {held:?}"
    );
    w.control.resume(2).await;
    let deadline = std::time::Instant::now() + SOON;
    loop {
        let (bodies, held) = read_as(&db, "slow-replay").await;
        assert!(bodies.contains(&"fresh".to_owned()), "{bodies:?}");
        if held == ["default-1"] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the writer's reads stayed on the master: no recheck saw the replica catch up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    w.finish().await;
}

#[derive(QueryableByName)]
struct Position {
    #[diesel(sql_type = diesel::sql_types::Text)]
    lsn: String,
}

fn lsn(text: &str) -> Lsn {
    Lsn::parse(text).unwrap()
}

/// A write outside a transaction learns the master's position in its own flight (a query
/// pipelined behind it on its connection): recording it costs no round trip, and the position
/// is past the write's commit, whether the write's statement was cached, prepared anew (it
/// holds the connection's statement cache while preparing) or ran on the held connection.
#[tokio::test]
async fn a_write_outside_a_transaction_learns_its_position_in_its_own_flight() {
    let w = World::new().await;
    let db = started(config(&w, &[1, 2])).await;
    let consistency = db.router().consistency();
    let typed = |body: &'static str| {
        diesel::insert_into(notes::table)
            .values(NewNote { author: "a", body })
            .returning(diesel::dsl::sql::<diesel::sql_types::Text>(
                "pg_current_wal_insert_lsn()::text",
            ))
    };
    for round in 0..20 {
        // Each case in a context of its own, so its recorded position is its last write's
        // alone: the position must be past where that write ran.
        for case in ["checked out", "held", "prepared anew"] {
            let ctx = Context::new();
            let at = ctx
                .clone()
                .scope(async {
                    let mut conn = db.get();
                    let at: String = match case {
                        // Typed: cached after its first use on a connection.
                        "checked out" => typed("one").get_result(&mut conn).await.unwrap(),
                        "held" => {
                            typed("one").get_result::<String>(&mut conn).await.unwrap();
                            typed("two").get_result(&mut conn).await.unwrap()
                        }
                        // Never cached (its text changes): prepared in a round trip first.
                        _ => {
                            diesel::sql_query(format!(
                                "INSERT INTO notes (author, body) VALUES ('a', 'three-{round}') \
                                 RETURNING pg_current_wal_insert_lsn()::text AS lsn"
                            ))
                            .get_result::<Position>(&mut conn)
                            .await
                            .unwrap()
                            .lsn
                        }
                    };
                    lsn(&at)
                })
                .await;
            let before = consistency.master_round_trips();
            let positions = consistency.record_positions(&ctx, "a").await;
            assert_eq!(
                consistency.master_round_trips(),
                before,
                "round {round}, {case}: the position was read from the master at the end"
            );
            let [(ref set, recorded)] = positions[..] else {
                panic!("round {round}, {case}: positions {positions:?}");
            };
            assert_eq!(set, "default");
            assert!(
                recorded > at,
                "round {round}, {case}: recorded {recorded} is not past its write, at {at}"
            );
        }
    }
    w.finish().await;
}

/// A transaction's position is read from the master at the context's end (diesel-async
/// commits through `&mut AsyncPgConnection`: nothing can be pipelined behind its `COMMIT`);
/// so is a transaction begun by hand, whose writes' pipelined positions ran inside it.
#[tokio::test]
async fn a_transactions_position_is_read_from_the_master_at_the_end() {
    let w = World::new().await;
    let db = started(config(&w, &[1, 2])).await;
    let consistency = db.router().consistency();
    for by_hand in [false, true] {
        let ctx = Context::new();
        ctx.clone()
            .scope(async {
                let mut conn = db.get();
                let insert = diesel::insert_into(notes::table).values(NewNote {
                    author: "t",
                    body: "in a transaction",
                });
                if by_hand {
                    diesel_async::SimpleAsyncConnection::batch_execute(&mut conn, "BEGIN")
                        .await
                        .unwrap();
                    insert.execute(&mut conn).await.unwrap();
                    diesel_async::SimpleAsyncConnection::batch_execute(&mut conn, "COMMIT")
                        .await
                        .unwrap();
                } else {
                    diesel_async::AsyncConnection::transaction(&mut conn, async |c| {
                        insert.execute(c).await
                    })
                    .await
                    .unwrap();
                }
            })
            .await;
        let before = consistency.master_round_trips();
        let positions = consistency.record_positions(&ctx, "t").await;
        assert_eq!(
            consistency.master_round_trips(),
            before + 1,
            "by hand: {by_hand}: the master was not asked"
        );
        assert_eq!(positions.len(), 1, "by hand: {by_hand}: {positions:?}");
    }
    w.finish().await;
}

/// A write dropped in flight (a timeout) reports no position: it may still commit, so the
/// context's end asks the master, as for any write whose position is not known.
#[tokio::test]
async fn a_write_dropped_in_flight_learns_nothing() {
    let w = World::new().await;
    let db = started(config(&w, &[1, 2])).await;
    let consistency = db.router().consistency();
    let ctx = Context::new();
    ctx.clone()
        .scope(async {
            let slow = diesel::sql_query(
                "INSERT INTO notes (author, body) SELECT 'slow', 'late' FROM pg_sleep(1)",
            );
            // Checked out first, so the timeout cuts the write itself, in flight.
            let mut conn = db.get();
            conn.checkout_for_write().await.unwrap();
            let dropped =
                tokio::time::timeout(Duration::from_millis(200), slow.execute(&mut conn)).await;
            assert!(dropped.is_err(), "the write finished within 200 ms");
        })
        .await;
    let before = consistency.master_round_trips();
    consistency.record_positions(&ctx, "slow").await;
    assert_eq!(consistency.master_round_trips(), before + 1);
    // The server finishes the insert on its own: let it, before the schema goes.
    let deadline = std::time::Instant::now() + SOON;
    while !w.primary_bodies().await.iter().any(|b| b == "late") {
        assert!(
            std::time::Instant::now() < deadline,
            "the insert never committed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    w.finish().await;
}

/// A write that returns many rows (`RETURNING` of a batch insert, held and checked out): its
/// rows are read inside the flight, so the position query behind them is answered and the
/// write completes, with its position learned.
#[tokio::test]
async fn a_write_returning_many_rows_completes_and_learns_its_position() {
    let w = World::new().await;
    let db = started(config(&w, &[1, 2])).await;
    let consistency = db.router().consistency();
    let body = "x".repeat(200);
    let rows: Vec<NewNote> = (0..2_000)
        .map(|_| NewNote {
            author: "batch",
            body: &body,
        })
        .collect();
    let ctx = Context::new();
    ctx.clone()
        .scope(async {
            let mut conn = db.get();
            for path in ["checked out", "held"] {
                let inserted = tokio::time::timeout(
                    Duration::from_secs(20),
                    diesel::insert_into(notes::table)
                        .values(&rows)
                        .returning((notes::id, notes::body))
                        .get_results::<(i32, String)>(&mut conn),
                )
                .await
                .unwrap_or_else(|_| panic!("{path}: the write never completed"))
                .unwrap();
                assert_eq!(inserted.len(), 2_000, "{path}");
            }
        })
        .await;
    let before = consistency.master_round_trips();
    consistency.record_positions(&ctx, "batch").await;
    assert_eq!(consistency.master_round_trips(), before);
    w.finish().await;
}
