#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
//! Read-your-writes bookkeeping that needs no database: what a keyed context records when the
//! master cannot tell its position, and what a full memory store does.

use std::sync::Arc;
use std::time::Duration;

use pindb_core::{Config, Hint, Lsn, Reason, Router};
use pindb_core::{MemoryStore, Store};

/// A set whose master and replica refuse connections (port 1, port 2): nothing answers.
fn router_with(store: Arc<dyn Store>) -> Router {
    Router::builder(Config::single_set(
        "postgres://app@127.0.0.1:1/app",
        ["postgres://app@127.0.0.1:2/app"],
    ))
    .store(store)
    .build()
    .unwrap()
}

async fn read_reason(router: &Router, key: &str) -> Reason {
    router
        .consistency()
        .scope_with_key(Some(key), async {
            router.db_for_read(&Hint::default()).unwrap().reason
        })
        .await
}

#[tokio::test]
async fn a_write_whose_position_the_master_cannot_tell_sends_the_key_to_the_master() {
    let store = Arc::new(MemoryStore::new(10));
    let router = router_with(store.clone());
    router
        .consistency()
        .scope_with_key(Some("alice"), async {
            // What a write does to the context; the master is gone when it ends.
            router.pin("default").unwrap();
        })
        .await;
    // Unknown until `ttl_seconds` from now (kept apart from real positions, with its end).
    let saved = store.load("alice").await.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        matches!(&saved[..], [(set, Lsn(until))]
            if set == "default unknown until" && (now + 25..=now + 31).contains(until)),
        "{saved:?}"
    );
    assert_eq!(read_reason(&router, "alice").await, Reason::NotCaughtUp);
    assert_eq!(read_reason(&router, "bob").await, Reason::Replica);
}

#[tokio::test]
async fn a_full_memory_store_fails_safe_until_the_evicted_position_would_have_expired() {
    let store = MemoryStore::new(2);
    let ttl = Duration::from_secs(60);
    let p = |n| [("default".to_string(), Lsn(n))];
    store.save("gone", &p(1), Duration::ZERO).await.unwrap();
    store.save("a", &p(2), ttl).await.unwrap();
    // Full, but the expired entry makes room: nothing live is lost.
    store.save("b", &p(3), ttl).await.unwrap();
    assert!(
        store.lost_until("", ttl).is_none(),
        "only an expired position went"
    );
    assert_eq!(store.load("a").await.unwrap(), p(2));
    // Full of live positions: one must go, and the store says so.
    store.save("c", &p(4), ttl).await.unwrap();
    let until = store
        .lost_until("", ttl)
        .expect("a live position was evicted");
    assert!(until > std::time::SystemTime::now() + Duration::from_secs(50));
}

/// A memory store whose saves of set `slow` take a while.
struct SlowFor(MemoryStore, &'static str);

impl Store for SlowFor {
    fn load<'a>(&'a self, key: &'a str) -> pindb_core::StoreFuture<'a, Vec<(String, Lsn)>> {
        self.0.load(key)
    }

    fn save<'a>(
        &'a self,
        key: &'a str,
        positions: &'a [(String, Lsn)],
        ttl: Duration,
    ) -> pindb_core::StoreFuture<'a, ()> {
        Box::pin(async move {
            if positions.iter().any(|(s, _)| s == self.1) {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            self.0.save(key, positions, ttl).await
        })
    }

    fn name(&self) -> &'static str {
        "slow"
    }
}

#[tokio::test]
async fn the_next_context_waits_for_every_recording_of_its_key_still_in_flight() {
    let router = Router::builder(
        Config::from_toml_str(
            r#"
            [masters.default]
            url = "postgres://app@127.0.0.1:1/app"
            [masters.b]
            url = "postgres://app@127.0.0.1:1/b"
            [sets]
            default = [{ port = 2 }]
            b = [{ port = 2 }]
            "#,
        )
        .unwrap(),
    )
    .store(Arc::new(SlowFor(MemoryStore::new(10), "default")))
    .build()
    .unwrap();
    // Two requests of alice, each cut off after its write: one to `default` (slow to
    // record), then one to `b` (quick).
    for set in ["default", "b"] {
        let cut = tokio::time::timeout(
            Duration::from_millis(20),
            router.consistency().scope_with_key(Some("alice"), async {
                router.pin(set).unwrap();
                std::future::pending::<()>().await
            }),
        )
        .await;
        assert!(cut.is_err());
    }
    tokio::time::sleep(Duration::from_millis(50)).await; // `b` is recorded, `default` is not
    let reason = router
        .consistency()
        .scope_with_key(Some("alice"), async {
            router.db_for_read(&Hint::default()).unwrap().reason
        })
        .await;
    assert_eq!(
        reason,
        Reason::NotCaughtUp,
        "alice's `default` write is honoured"
    );
}

/// What a keyed context records when its adapter reported positions learned with the writes
/// (`Router::write_position`): the highest, without asking the master, only when every write
/// of the set reported one and nothing else may have written (an explicit pin, a write under
/// a `master()` guard); otherwise the master is asked (here it is gone: `Lsn::MAX`).
#[tokio::test]
async fn positions_learned_with_the_writes_are_recorded_only_when_they_cover_every_write() {
    use pindb_core::{unpin_all, RouterMode};
    let mut config = Config::single_set(
        "postgres://app@127.0.0.1:1/app",
        ["postgres://app@127.0.0.1:2/app"],
    );
    config.router = RouterMode::Greedy;
    let router = Router::builder(config)
        .store(Arc::new(MemoryStore::new(10)))
        .build()
        .unwrap();
    let learned = |lsn| vec![("default".to_string(), Lsn(lsn))];
    let unknown = learned(u64::MAX);
    type Case = (&'static str, Vec<(String, Lsn)>, fn(&Router));
    let cases: Vec<Case> = vec![
        ("two writes, both learned", learned(20), |r| {
            let (a, b) = (write(r), write(r));
            r.write_position(b.0, b.1, Lsn(20));
            r.write_position(a.0, a.1, Lsn(10));
        }),
        ("two writes, one learned", unknown.clone(), |r| {
            let (a, _) = (write(r), write(r));
            r.write_position(a.0, a.1, Lsn(10));
        }),
        ("a write never sent, one learned", learned(10), |r| {
            let (a, b) = (write(r), write(r));
            r.write_not_sent(a.0, a.1);
            r.write_position(b.0, b.1, Lsn(10));
        }),
        // A pin may stand for writes pindb does not see, before or after its own.
        (
            "an explicit pin, then a learned write",
            unknown.clone(),
            |r| {
                r.pin("default").unwrap();
                let a = write(r);
                r.write_position(a.0, a.1, Lsn(10));
            },
        ),
        (
            "a learned write, then one under a master() guard",
            unknown.clone(),
            |r| {
                let a = write(r);
                r.write_position(a.0, a.1, Lsn(10));
                let _guard = r.master("default").unwrap();
                assert_eq!(r.db_for_write(&Hint::default()).unwrap().pin, None);
            },
        ),
        (
            "a learned write, then an explicit pin",
            unknown.clone(),
            |r| {
                let a = write(r);
                r.write_position(a.0, a.1, Lsn(10));
                r.pin("default").unwrap();
            },
        ),
        // A write still in flight across unpin_all may be acknowledged after it.
        (
            "a write in flight across unpin_all, then a learned write",
            unknown.clone(),
            |r| {
                let _in_flight = write(r);
                unpin_all();
                let b = write(r);
                r.write_position(b.0, b.1, Lsn(20));
            },
        ),
        (
            "the same once the earlier write learned its position",
            learned(30),
            |r| {
                let a = write(r);
                unpin_all();
                let b = write(r);
                r.write_position(b.0, b.1, Lsn(20));
                r.write_position(a.0, a.1, Lsn(30));
            },
        ),
        (
            "a write from before unpin_all learned after it",
            unknown.clone(),
            |r| {
                let (a, b) = (write(r), write(r));
                unpin_all();
                let _c = write(r);
                r.write_position(a.0, a.1, Lsn(10));
                r.write_position(b.0, b.1, Lsn(10));
            },
        ),
    ];
    for (case, expected, run) in cases {
        let before = router.consistency().master_round_trips();
        let ctx = pindb_core::Context::new();
        ctx.clone().scope(async { run(&router) }).await;
        let recorded = router.consistency().record_positions(&ctx, case).await;
        assert_eq!(recorded, expected, "{case}");
        let asked = router.consistency().master_round_trips() - before;
        assert_eq!(
            asked,
            u64::from(expected == unknown),
            "{case}: master asked"
        );
    }
}

/// A greedy write decision: its database and pin.
fn write(router: &Router) -> (usize, pindb_core::adapter::NewPin) {
    let route = router.db_for_write(&Hint::default()).unwrap();
    (route.index, route.pin.unwrap())
}
