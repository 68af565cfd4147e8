//! Where write positions are kept between contexts: the [`Store`] trait, the in-memory store
//! (`memory.rs`) and the Redis store (`redis/`, feature `redis`).
//!
//! Stores fail safe: when one cannot be read, the context reads every set from its master;
//! when one cannot be written, the write itself is already committed, so nothing is lost but
//! the replica offload of the key's next request. Neither ever reaches the caller as an error.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use crate::error::PinDbError;
use crate::lsn::Lsn;

mod memory;
#[cfg(feature = "redis")]
mod redis;

pub use memory::MemoryStore;
#[cfg(feature = "redis")]
pub use redis::RedisStore;

/// A boxed, `Send` future, as [`Store`] methods return.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, PinDbError>> + Send + 'a>>;

/// Write positions per set, as stored for a key.
pub type Positions = Vec<(String, Lsn)>;

/// Where positions are kept between contexts.
pub trait Store: Send + Sync + 'static {
    /// The positions recorded for `key` (empty when none or expired).
    fn load<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Positions>;

    /// Records positions for `key` for `ttl`; per set, the higher position wins.
    fn save<'a>(
        &'a self,
        key: &'a str,
        positions: &'a [(String, Lsn)],
        ttl: Duration,
    ) -> StoreFuture<'a, ()>;

    /// A short name for logs and metrics labels.
    fn name(&self) -> &'static str;

    /// Until when this store may be missing positions it was given: after a restart or flush
    /// it cannot see, a save that failed, a live position evicted. Positions expire after
    /// `ttl`, so a loss stops mattering `ttl` after it happened. `None`: nothing lost that
    /// could still matter. While it is in the future, keyed contexts read from the masters.
    /// Asked right after a successful [`Store::load`] of `key`: a store that spreads keys
    /// over servers answers for the one that holds `key`.
    fn lost_until(&self, key: &str, ttl: Duration) -> Option<SystemTime> {
        let _ = (key, ttl);
        None
    }
}

/// Longer TTLs are cut to this (about 10 years): `Instant` arithmetic must not overflow.
pub(crate) const MAX_TTL: Duration = Duration::from_secs(315_360_000);

/// Merges `new` into `into`, keeping the higher position per set.
pub(crate) fn merge(into: &mut Positions, new: &[(String, Lsn)]) {
    for (set, lsn) in new {
        match into.iter_mut().find(|(s, _)| s == set) {
            Some((_, old)) => *old = (*old).max(*lsn),
            None => into.push((set.clone(), *lsn)),
        }
    }
}
