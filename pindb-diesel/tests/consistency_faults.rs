#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
//! Read-your-writes under faults, against the real cluster and real Redis processes: saves
//! that arrive out of order, keyed contexts cancelled or panicking after their write, a Redis
//! restarted empty or hung while positions were being saved, a full memory store, and a
//! replica that never answers while a context waits for catch-up.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use futures_util::FutureExt;
use pindb_core::TopologyCheck;
use pindb_core::{Config, Lsn, Router, RouterMode};
use pindb_core::{MemoryStore, RedisStore, Store};
use pindb_diesel::bb8::PinDb;
use pindb_testkit::{monitor_saw_replay, wait_until, Gate, PrivateRedis};

mod common;

use common::{notes, NewNote, World};

const SOON: Duration = Duration::from_secs(10);
const TTL: Duration = Duration::from_secs(4);

/// Greedy, a fast monitor, and a short position lifetime (with a lag limit it outlives).
fn config(w: &World, replicas: &[usize]) -> Config {
    let mut config = w.config(RouterMode::Greedy, replicas);
    config.monitor.interval_ms = 20;
    config.monitor.check_timeout_ms = 300;
    config.monitor.failures_before_down = 2;
    config.monitor.max_lag_ms = 2_500;
    config.stickiness.ttl_seconds = TTL.as_secs();
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
    let router = db.router().clone();
    wait_until("the monitor has seen default-1", SOON, || {
        router
            .topology()
            .replica_status("default-1")
            .unwrap()
            .unwrap()
            .replay_lsn
            .0
            > 0
    })
    .await;
    db
}

async fn bodies(db: &PinDb) -> (Vec<String>, Vec<String>) {
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
}

async fn read_as(db: &PinDb, key: &str) -> (Vec<String>, Vec<String>) {
    db.router()
        .consistency()
        .scope_with_key(Some(key), bodies(db))
        .await
}

async fn insert(db: &PinDb, author: &str, body: &str) {
    diesel::insert_into(notes::table)
        .values(NewNote { author, body })
        .execute(&mut db.get())
        .await
        .unwrap();
}

async fn write_as(db: &PinDb, key: &str, body: &str) {
    db.router()
        .consistency()
        .scope_with_key(Some(key), insert(db, key, body))
        .await
}

fn on_master(held: &[String]) -> bool {
    held == ["default"]
}

/// Waits until keyed reads go to replicas: a store pindb has just met (or that lost data) is
/// trusted `ttl_seconds` later.
async fn until_store_trusted(db: &PinDb) {
    let deadline = Instant::now() + SOON;
    while on_master(&read_as(db, "probe").await.1) {
        assert!(Instant::now() < deadline, "the store is still not trusted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn until_saved(store: &dyn Store, key: &str) {
    let deadline = Instant::now() + SOON;
    while Store::load(store, key).await.unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "no position was ever recorded for {key}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn redis_keeps_the_higher_position_when_saves_arrive_out_of_order() {
    let w = World::new().await;
    let store = RedisStore::new(
        &w.cluster.redis_url,
        &format!("pindb:test:{}:", w.schema.name),
        Duration::from_secs(2),
    )
    .unwrap();
    let ttl = Duration::from_secs(60);
    // Two requests of one user on two instances: the later write's save lands first.
    store
        .save("alice", &[("default".into(), Lsn(0x2_0000_0010))], ttl)
        .await
        .unwrap();
    store
        .save(
            "alice",
            &[
                ("default".into(), Lsn(0x1_FFFF_FFFF)),
                ("other".into(), Lsn(7)),
            ],
            ttl,
        )
        .await
        .unwrap();
    let mut got = Store::load(&store, "alice").await.unwrap();
    got.sort();
    assert_eq!(
        got,
        [
            ("default".to_string(), Lsn(0x2_0000_0010)),
            ("other".to_string(), Lsn(7))
        ]
    );
    w.finish().await;
}

#[tokio::test]
async fn a_keyed_context_cancelled_after_its_write_still_records_the_position() {
    let mut w = World::new().await;
    let store = Arc::new(MemoryStore::new(1000));
    let db = started_with(config(&w, &[1]), store.clone()).await;
    w.control.pause(1).await;
    let (written, committed) = tokio::sync::oneshot::channel();
    let context = db
        .router()
        .consistency()
        .scope_with_key(Some("alice"), async {
            insert(&db, "alice", "mine").await;
            written.send(()).unwrap();
            std::future::pending::<()>().await;
        });
    // The client goes away (or a timeout layer fires) after the commit: the context is
    // dropped.
    tokio::select! {
        () = context => unreachable!("the context never ends"),
        sent = committed => sent.unwrap(),
    }
    // Her very next request, at once: it waits for the recording still in flight.
    let (rows, held) = read_as(&db, "alice").await;
    assert_eq!(rows, ["old", "mine"], "alice reads her write");
    assert!(on_master(&held), "{held:?}");
    until_saved(&*store, "alice").await;
    w.finish().await;
}

#[tokio::test]
async fn a_keyed_context_that_panics_after_its_write_still_records_the_position() {
    let mut w = World::new().await;
    let store = Arc::new(MemoryStore::new(1000));
    let db = started_with(config(&w, &[1]), store.clone()).await;
    w.control.pause(1).await;
    let caught = AssertUnwindSafe(
        db.router()
            .consistency()
            .scope_with_key(Some("alice"), async {
                insert(&db, "alice", "mine").await;
                panic!("handler bug after the commit");
            }),
    )
    .catch_unwind()
    .await;
    assert!(caught.is_err());
    until_saved(&*store, "alice").await;
    let (rows, _) = read_as(&db, "alice").await;
    assert_eq!(rows, ["old", "mine"]);
    w.finish().await;
}

#[tokio::test]
async fn a_redis_restarted_empty_sends_keyed_reads_to_the_master_on_every_instance() {
    let mut w = World::new().await;
    let mut redis = PrivateRedis::start(26392);
    let mut instances = Vec::new();
    let mut stores = Vec::new();
    for _ in 0..2 {
        // The restart fails fast (refused): a slow answer on a loaded machine must not lose
        // the store besides.
        let store =
            Arc::new(RedisStore::new(&redis.url(), "pindb:", Duration::from_secs(2)).unwrap());
        let db = started_with(config(&w, &[1]), store.clone()).await;
        instances.push(db);
        stores.push(store);
    }
    for db in &instances {
        until_store_trusted(db).await;
    }
    w.control.pause(1).await;
    write_as(&instances[0], "alice", "mine").await;
    // Restarted without persistence: alice's position is gone. Wait until every instance
    // talks to the new Redis (the first command after a restart may fail on the old
    // connection, which is not what is tested here).
    redis.resume();
    for store in &stores {
        let deadline = Instant::now() + SOON;
        while Store::load(&**store, "someone").await.is_err() {
            assert!(
                Instant::now() < deadline,
                "the restarted Redis never answered"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for (i, db) in instances.iter().enumerate() {
        let (rows, held) = read_as(db, "alice").await;
        assert_eq!(rows, ["old", "mine"], "instance {i}: alice reads her write");
        assert!(on_master(&held), "instance {i}: {held:?}");
    }
    // Once the lost positions would have expired, keyed reads use the replicas again.
    w.control.resume(1).await;
    until_store_trusted(&instances[1]).await;
    w.finish().await;
}

#[tokio::test]
async fn a_save_lost_while_redis_hung_is_known_to_every_instance() {
    let mut w = World::new().await;
    let redis = PrivateRedis::start(26393);
    let mut instances = Vec::new();
    let mut stores = Vec::new();
    for _ in 0..3 {
        let store =
            Arc::new(RedisStore::new(&redis.url(), "pindb:", Duration::from_millis(100)).unwrap());
        let db = started_with(config(&w, &[1]), store.clone()).await;
        instances.push(db);
        stores.push(store);
    }
    for db in &instances {
        until_store_trusted(db).await;
    }
    w.control.pause(1).await;
    redis.freeze();
    // Instance 0's save times out; instance 1 sees the outage on a read; instance 2 sees
    // nothing at all.
    write_as(&instances[0], "alice", "mine").await;
    let (_, held) = read_as(&instances[1], "carol").await;
    assert!(on_master(&held), "store unreachable: master");
    redis.thaw();

    let (rows, held) = read_as(&instances[1], "alice").await;
    assert_eq!(rows, ["old", "mine"], "instance 1 does not trust the store");
    assert!(on_master(&held));
    // Instance 0 tells Redis as soon as it answers, without waiting for traffic.
    let deadline = Instant::now() + SOON;
    loop {
        Store::load(&*stores[2], "someone").await.unwrap();
        if stores[2]
            .lost_until("someone", TTL)
            .is_some_and(|u| u > SystemTime::now())
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "instance 2 never learned of the lost save"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (rows, held) = read_as(&instances[2], "alice").await;
    assert_eq!(rows, ["old", "mine"], "instance 2 does not trust the store");
    assert!(on_master(&held));
    w.finish().await;
}

#[tokio::test]
async fn a_full_memory_store_sends_keyed_reads_to_the_master_instead_of_forgetting() {
    let mut w = World::new().await;
    let db = started_with(config(&w, &[1]), Arc::new(MemoryStore::new(2))).await;
    w.control.pause(1).await;
    write_as(&db, "alice", "a").await;
    write_as(&db, "bob", "b").await;
    // A third writer: a live position (alice's, the soonest to expire) must go.
    write_as(&db, "carol", "c").await;
    let (rows, held) = read_as(&db, "alice").await;
    assert_eq!(rows, ["old", "a", "b", "c"], "alice still reads her write");
    assert!(on_master(&held), "{held:?}");
    w.finish().await;
}

/// A TCP endpoint that accepts connections and never answers.
async fn hung_endpoint() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (port, task)
}

#[tokio::test]
async fn max_wait_ends_at_its_deadline_when_a_replica_never_answers() {
    let mut w = World::new().await;
    let (port, hung) = hung_endpoint().await;
    let mut config = config(&w, &[1]);
    config.monitor.topology_check = TopologyCheck::Off;
    // The hung replica stays "up" for the whole test, and each probe of it would take 5 s.
    config.monitor.check_timeout_ms = 5_000;
    config.monitor.failures_before_down = 1_000;
    config.monitor.max_lag_ms = 10_000;
    config.stickiness.ttl_seconds = 30;
    config.stickiness.max_wait_ms = 50;
    config
        .sets
        .get_mut("default")
        .unwrap()
        .push(pindb_core::DatabaseSettings::from_url(format!(
            "postgres://pindb@127.0.0.1:{port}/pindb"
        )));
    let db = started(config).await;
    w.control.pause(1).await;
    write_as(&db, "alice", "mine").await;
    let start = Instant::now();
    let (rows, _) = read_as(&db, "alice").await;
    let took = start.elapsed();
    assert_eq!(rows, ["old", "mine"]);
    assert!(
        took < Duration::from_millis(2_500),
        "max_wait_ms = 50, but the context start waited {took:?} for a probe"
    );
    hung.abort();
    w.finish().await;
}

#[tokio::test]
async fn a_token_position_beyond_the_master_is_not_trusted() {
    use pindb_core::ConsistencyToken;
    let w = World::new().await;
    let db = started(config(&w, &[1])).await;
    let router = db.router();
    let now = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // Validly signed, but from a restored backup or another cluster.
    let far = format!("default@FFFFFFFF/0~{now}")
        .parse::<ConsistencyToken>()
        .unwrap()
        .sign(router.consistency().cookie_key());
    let accepted = router.consistency().accept_token(&far).await.unwrap();
    assert!(accepted.positions().is_empty(), "{accepted:?}");
    // pindb's own "unknown position" marker stays unknown (a write dropped in flight may
    // still commit past the master's position now): the set is read from the master.
    let marker = format!("default@FFFFFFFF/FFFFFFFF~{now}")
        .parse::<ConsistencyToken>()
        .unwrap()
        .sign(router.consistency().cookie_key());
    let accepted = router.consistency().accept_token(&marker).await.unwrap();
    assert_eq!(
        accepted.positions(),
        [("default".to_string(), Lsn(u64::MAX))]
    );
    // A real position, even one no replica has replayed yet, is kept.
    let real = w.cluster.primary_lsn().await;
    let token = ConsistencyToken::new(vec![("default".into(), real)])
        .sign(router.consistency().cookie_key());
    let accepted = router.consistency().accept_token(&token).await.unwrap();
    assert_eq!(accepted.positions(), [("default".to_string(), real)]);
    w.finish().await;
}

#[tokio::test]
async fn a_redis_that_restarts_from_an_older_snapshot_is_not_trusted() {
    let mut redis = PrivateRedis::start_persistent(26394);
    // The restart fails fast (refused): only it may change the store's trust.
    let store = RedisStore::new(&redis.url(), "pindb:", Duration::from_secs(2)).unwrap();
    let ttl = Duration::from_secs(30);
    let p = |n| [("default".to_string(), Lsn(n))];
    Store::save(&store, "alice", &p(0x100), ttl).await.unwrap();
    redis.snapshot();
    Store::save(&store, "alice", &p(0x900), ttl).await.unwrap();
    // Pretend the store has been trusted for long: only the restart may change that.
    tokio::time::sleep(Duration::from_millis(10)).await;
    // A crash: the server comes back with the snapshot, epoch key included.
    redis.resume();
    let deadline = Instant::now() + SOON;
    let loaded = loop {
        match Store::load(&store, "alice").await {
            Ok(positions) => break positions,
            Err(_) => {
                assert!(
                    Instant::now() < deadline,
                    "the restarted Redis never answered"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(loaded, p(0x100), "the snapshot's older position came back");
    let until = store.lost_until("", ttl).expect("the restart is noticed");
    assert!(
        until > SystemTime::now() + Duration::from_secs(25),
        "keyed reads go to the master for ttl after the restart: {until:?}"
    );
}

/// The write still runs on the master when its keyed context is dropped (a timeout layer, a
/// client gone): it commits later, and the key must not read from a replica that has
/// everything up to the drop but not that write.
#[tokio::test]
async fn a_keyed_context_dropped_while_its_write_runs_records_a_position_past_the_write() {
    let mut w = World::new().await;
    let store = Arc::new(MemoryStore::new(1000));
    let mut config = config(&w, &[1]);
    // The context's end waits up to 30 s (3 × `redis_timeout_ms`, which nothing else uses
    // with a memory store) for its write in flight: longer than the test holds it.
    config.stickiness.redis_timeout_ms = 10_000;
    let db = started_with(config, store.clone()).await;
    let gate = Gate::close(&w.cluster, &w.schema.name).await;
    let slow = format!(
        "INSERT INTO notes (author, body) SELECT 'alice', 'mine' FROM {}",
        gate.lock()
    );
    let context = db
        .router()
        .consistency()
        .scope_with_key(Some("alice"), async {
            // Commits once the gate opens.
            diesel::sql_query(&slow)
                .execute(&mut db.get())
                .await
                .unwrap();
        });
    // Dropped once the write waits at the gate: sent, unanswered.
    tokio::select! {
        () = context => panic!("the write finished before the drop"),
        () = gate.until_waited_on() => {}
    }
    // Replica 1 has everything the master had at the drop, and stops before the write. A
    // commit of the test's own flushes the master's WAL: all it had at the drop is before
    // `at_drop` (pindb reads `pg_current_wal_insert_lsn()`, which may be ahead of the flush).
    w.on_primary("CREATE TABLE {schema}.flushes ()").await;
    let at_drop = w.cluster.primary_lsn().await;
    w.cluster.wait_for_replay(1, at_drop).await;
    monitor_saw_replay(db.router(), "default-1", at_drop).await;
    w.control.pause(1).await;
    assert_eq!(
        w.primary_bodies().await,
        ["old"],
        "the write committed before the pause"
    );
    gate.open().await;
    let deadline = Instant::now() + SOON;
    while w.primary_bodies().await.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the dropped write never committed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..3 {
        let (rows, held) = read_as(&db, "alice").await;
        assert_eq!(
            rows,
            ["old", "mine"],
            "alice reads her write (from {held:?})"
        );
    }
    // Known once the write landed (a query behind it on its own connection), not "unknown".
    let saved = Store::load(&*store, "alice").await.unwrap();
    assert!(
        matches!(saved[..], [(_, lsn)] if lsn > at_drop && lsn < Lsn(u64::MAX)),
        "{saved:?}"
    );
    w.finish().await;
}

/// A position recorded as unknown (a write lost in flight) sends the key to the master for
/// `ttl_seconds`, not for as long as the key keeps writing: stores refresh a key's expiry at
/// every save, so it is kept apart from the real positions, with its own end.
#[tokio::test]
async fn an_unknown_position_expires_while_the_key_keeps_writing() {
    unknown_expires_while_writing(Arc::new(MemoryStore::new(1000)), false).await;
}

/// The same on a real Redis: its save script keeps the higher value per field and refreshes
/// the key's expiry, and the "unknown until" field must still end on its own.
#[tokio::test]
async fn an_unknown_position_expires_on_redis_while_the_key_keeps_writing() {
    let redis = PrivateRedis::start(26395);
    // No outage here: a slow answer on a loaded machine must not lose the store.
    let store = RedisStore::new(&redis.url(), "pindb:", Duration::from_secs(2)).unwrap();
    unknown_expires_while_writing(Arc::new(store), true).await;
}

async fn unknown_expires_while_writing(store: Arc<dyn Store>, new_store: bool) {
    let w = World::new().await;
    let db = started_with(config(&w, &[1]), store).await;
    if new_store {
        until_store_trusted(&db).await;
    }
    let consistency = db.router().consistency().clone();
    consistency
        .scope_with_key(Some("alice"), async {
            insert(&db, "alice", "lost").await;
            // A write whose outcome nobody will know (as SeaORM's or MariaDB's, dropped).
            drop(db.router().write_flight(0));
        })
        .await;
    assert!(
        on_master(&read_as(&db, "alice").await.1),
        "unknown: the master"
    );
    let unknown_since = Instant::now();
    // Alice goes on writing, every 0.5 s, past the unknown position's end.
    while unknown_since.elapsed() < TTL + Duration::from_millis(500) {
        write_as(&db, "alice", "more").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let lsn = w.cluster.primary_lsn().await;
    w.cluster.wait_for_replay(1, lsn).await;
    monitor_saw_replay(db.router(), "default-1", lsn).await;
    let (rows, held) = read_as(&db, "alice").await;
    assert!(!on_master(&held), "still unknown after its end: {held:?}");
    assert_eq!(rows.last().map(String::as_str), Some("more"));
    w.finish().await;
}

/// A write lost in flight is forgotten with the pins by `unpin_all` (a worker clearing
/// between jobs in one long context): the next job's token carries a real position, not
/// "unknown" for as long as the worker lives.
#[tokio::test]
async fn unpin_all_forgets_a_write_lost_in_flight() {
    let w = World::new().await;
    let db = started(config(&w, &[1])).await;
    pindb_core::scope(async {
        insert(&db, "alice", "job 1").await;
        // A write whose outcome nobody will know (as SeaORM's or MariaDB's, dropped).
        drop(db.router().write_flight(0));
        let token = db.router().consistency().token().await;
        assert_eq!(token.positions()[0].1, Lsn(u64::MAX), "job 1: unknown");
        pindb_core::unpin_all();
        insert(&db, "alice", "job 2").await;
        let token = db.router().consistency().token().await;
        assert!(
            matches!(token.positions(), [(_, lsn)] if *lsn < Lsn(u64::MAX)),
            "job 2: {token:?}"
        );
    })
    .await;
    w.finish().await;
}
