//! One pool per alias of the router's topology, in its order, with checkout counts: shared by
//! the bb8 and r2d2 entry points, which differ only in the pool type.

use std::sync::atomic::{AtomicU64, Ordering};

use pindb_core::adapter::Database;
use pindb_core::{PinDbError, Router};

/// The router and one pool per alias (parallel to `router.topology().databases()`), with checkout
/// counts. Shared by the bb8 and r2d2 `PinDb`s.
pub(crate) struct Pools<P> {
    router: Router,
    pools: Vec<P>,
    checkouts: Vec<AtomicU64>,
}

impl<P> Pools<P> {
    pub(crate) fn new(router: Router, build: impl Fn(&Database) -> P) -> Self {
        Pools {
            pools: router.topology().databases().iter().map(build).collect(),
            checkouts: router
                .topology()
                .databases()
                .iter()
                .map(|_| AtomicU64::new(0))
                .collect(),
            router,
        }
    }

    pub(crate) fn router(&self) -> &Router {
        &self.router
    }

    /// The pool of the database at `index`, counting the checkout about to be made.
    pub(crate) fn pool_for_checkout(&self, index: usize) -> (&P, &Database) {
        self.checkouts[index].fetch_add(1, Ordering::Relaxed);
        (
            &self.pools[index],
            &self.router.topology().databases()[index],
        )
    }

    pub(crate) fn checkouts(&self, alias: &str) -> Result<u64, PinDbError> {
        Ok(self.checkouts[self.router.topology().index_of(alias)?].load(Ordering::Relaxed))
    }
}
