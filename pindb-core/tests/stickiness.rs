//! Read-your-writes bookkeeping that needs no database: what a keyed context records when the
//! master cannot tell its position, and what a full memory store does.

use std::sync::Arc;
use std::time::Duration;

use pindb_core::stickiness::{MemoryStore, Store};
use pindb_core::{Config, Hint, Lsn, Reason, Router};

/// A set whose master and replica refuse connections (port 1, port 2): nothing answers.
fn router() -> Router {
    Router::new(Config::single_set(
        "postgres://app@127.0.0.1:1/app",
        ["postgres://app@127.0.0.1:2/app"],
    ))
    .unwrap()
}

async fn read_reason(router: &Router, key: &str) -> Reason {
    router
        .scope_with_key(Some(key), async {
            router.db_for_read(&Hint::default()).unwrap().reason
        })
        .await
}

#[tokio::test]
async fn a_write_whose_position_the_master_cannot_tell_sends_the_key_to_the_master() {
    let router = router();
    let store = Arc::new(MemoryStore::new(10));
    router.set_store(store.clone());
    router
        .scope_with_key(Some("alice"), async {
            // What a write does to the context; the master is gone when it ends.
            router.pin("default").unwrap();
        })
        .await;
    assert_eq!(
        store.load("alice").await.unwrap(),
        [("default".to_string(), Lsn(u64::MAX))]
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
        store.lost_until(ttl).is_none(),
        "only an expired position went"
    );
    assert_eq!(store.load("a").await.unwrap(), p(2));
    // Full of live positions: one must go, and the store says so.
    store.save("c", &p(4), ttl).await.unwrap();
    let until = store.lost_until(ttl).expect("a live position was evicted");
    assert!(until > std::time::SystemTime::now() + Duration::from_secs(50));
}
