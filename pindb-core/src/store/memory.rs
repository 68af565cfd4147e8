//! [`MemoryStore`]: positions in this process's memory, bounded and expiring.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use super::{merge, Positions, Store, StoreFuture, MAX_TTL};
use crate::lsn::Lsn;

/// The default store: positions in this process's memory, bounded and expiring. Enough for
/// one application instance; use Redis when several share users.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::time::Duration;
/// use pindb_core::{Lsn, MemoryStore, Store};
///
/// let store = MemoryStore::new(1000);
/// store.save("user:1", &[("default".into(), Lsn(42))], Duration::from_secs(30)).await.unwrap();
/// assert_eq!(store.load("user:1").await.unwrap(), [("default".to_string(), Lsn(42))]);
/// assert!(store.load("user:2").await.unwrap().is_empty());
/// # }
/// ```
#[derive(Debug)]
pub struct MemoryStore {
    capacity: usize,
    entries: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    by_key: HashMap<String, (Positions, Instant)>,
    /// When the latest live position this store had to evict would have expired.
    evicted_until: Option<Instant>,
}

impl MemoryStore {
    /// A store keeping at most `capacity` keys. When full, expired positions go first; if a
    /// live one must go (the soonest to expire), every keyed context reads from the masters
    /// until it would have expired (the key it belonged to must not read stale), and
    /// `pindb_store_evictions_total` counts it: raise `memory_capacity`.
    pub fn new(capacity: usize) -> MemoryStore {
        MemoryStore {
            capacity: capacity.max(1),
            entries: Mutex::new(Entries::default()),
        }
    }
}

impl Store for MemoryStore {
    fn load<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Positions> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let found = match entries.by_key.get(key) {
            Some((positions, expires)) if *expires > Instant::now() => positions.clone(),
            _ => Vec::new(),
        };
        Box::pin(std::future::ready(Ok(found)))
    }

    fn save<'a>(
        &'a self,
        key: &'a str,
        positions: &'a [(String, Lsn)],
        ttl: Duration,
    ) -> StoreFuture<'a, ()> {
        let now = Instant::now();
        let mut guard = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let Entries {
            by_key: entries,
            evicted_until,
        } = &mut *guard;
        if !entries.contains_key(key) && entries.len() >= self.capacity {
            entries.retain(|_, (_, expires)| *expires > now);
            if entries.len() >= self.capacity {
                if let Some((oldest, expires)) = entries
                    .iter()
                    .min_by_key(|(_, (_, expires))| *expires)
                    .map(|(k, (_, e))| (k.clone(), *e))
                {
                    entries.remove(&oldest);
                    *evicted_until = Some(evicted_until.map_or(expires, |u| u.max(expires)));
                    metrics::counter!("pindb_store_evictions_total", "store" => "memory")
                        .increment(1);
                }
            }
        }
        let entry = entries
            .entry(key.to_owned())
            .or_insert_with(|| (Vec::new(), now));
        if entry.1 <= now {
            entry.0.clear();
        }
        merge(&mut entry.0, positions);
        entry.1 = now + ttl.min(MAX_TTL);
        Box::pin(std::future::ready(Ok(())))
    }

    fn name(&self) -> &'static str {
        "memory"
    }

    fn lost_until(&self, _key: &str, _ttl: Duration) -> Option<SystemTime> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let left = entries
            .evicted_until?
            .checked_duration_since(Instant::now())?;
        SystemTime::now().checked_add(left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_store_merges_expires_and_stays_bounded() {
        let store = MemoryStore::new(2);
        let ttl = Duration::from_secs(60);
        store.save("a", &[("s".into(), Lsn(5))], ttl).await.unwrap();
        store
            .save("a", &[("s".into(), Lsn(3)), ("t".into(), Lsn(1))], ttl)
            .await
            .unwrap();
        let mut got = store.load("a").await.unwrap();
        got.sort();
        assert_eq!(got, [("s".to_string(), Lsn(5)), ("t".to_string(), Lsn(1))]);
        store.save("b", &[("s".into(), Lsn(1))], ttl).await.unwrap();
        store.save("c", &[("s".into(), Lsn(1))], ttl).await.unwrap();
        let mut kept = 0;
        for key in ["a", "b", "c"] {
            kept += usize::from(!store.load(key).await.unwrap().is_empty());
        }
        assert_eq!(kept, 2, "capacity 2");
        store
            .save("gone", &[("s".into(), Lsn(1))], Duration::ZERO)
            .await
            .unwrap();
        assert!(store.load("gone").await.unwrap().is_empty(), "expired");
    }
}
