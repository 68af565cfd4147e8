//! One pool per alias of the router's topology, in its order, with checkout counts: shared by
//! the bb8 and r2d2 entry points, which differ only in the pool type.
//!
//! A runtime replica (`[masters.<set>.discovery]`) changes host while the service runs: its
//! pool is built for one host (one [`Topology::generation`](pindb_core::adapter::Topology::generation))
//! and replaced at the first checkout after the host changed. The old pool is only dropped
//! from here: the connections it lent out keep it alive until they come back, so their work
//! finishes, and then it closes.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use pindb_core::adapter::Database;
use pindb_core::{PinDbError, Router};

use crate::error::Error;

/// The pool of one alias.
enum Cell<P> {
    /// A database whose host never changes.
    Fixed(P),
    /// A runtime replica: the pool of its host now, with that host's generation (none
    /// before its first checkout).
    Runtime(Mutex<Option<(u64, P)>>),
}

/// The router and one pool per alias (parallel to `router.topology().databases()`), with checkout
/// counts. Shared by the bb8 and r2d2 `PinDb`s.
pub(crate) struct Pools<P> {
    router: Router,
    pools: Vec<Cell<P>>,
    checkouts: Vec<AtomicU64>,
    build: fn(&Database) -> P,
}

impl<P: Clone> Pools<P> {
    pub(crate) fn new(router: Router, build: fn(&Database) -> P) -> Self {
        let databases = router.topology().databases();
        Pools {
            pools: databases
                .iter()
                .map(|db| match db.runtime {
                    true => Cell::Runtime(Mutex::new(None)),
                    false => Cell::Fixed(build(db)),
                })
                .collect(),
            checkouts: databases.iter().map(|_| AtomicU64::new(0)).collect(),
            build,
            router,
        }
    }

    pub(crate) fn router(&self) -> &Router {
        &self.router
    }

    /// The pool of the database at `index` (for a runtime replica, of its host now), counting
    /// the checkout about to be made. [`PinDbError::NoHost`] for a runtime replica whose host
    /// was removed since the route was chosen.
    pub(crate) fn pool_for_checkout(
        &self,
        index: usize,
    ) -> Result<(Cow<'_, P>, Cow<'_, Database>), Error> {
        self.checkouts[index].fetch_add(1, Ordering::Relaxed);
        let topology = self.router.topology();
        match &self.pools[index] {
            Cell::Fixed(pool) => Ok((
                Cow::Borrowed(pool),
                Cow::Borrowed(&topology.databases()[index]),
            )),
            Cell::Runtime(cell) => {
                // Read under the lock, so a pool is never replaced by one for an older host.
                let mut cell = cell.lock().unwrap_or_else(PoisonError::into_inner);
                let (generation, db) = topology.database_now(index)?;
                let pool = match &*cell {
                    Some((built, pool)) if *built == generation => pool.clone(),
                    _ => {
                        let pool = (self.build)(&db);
                        // The old pool, if any, closes when its last connection comes back.
                        *cell = Some((generation, pool.clone()));
                        pool
                    }
                };
                Ok((Cow::Owned(pool), db))
            }
        }
    }

    pub(crate) fn checkouts(&self, alias: &str) -> Result<u64, PinDbError> {
        Ok(self.checkouts[self.router.topology().index_of(alias)?].load(Ordering::Relaxed))
    }
}
