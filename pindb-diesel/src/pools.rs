//! One pool per alias of the router's topology, in its order, with checkout counts: shared by
//! the bb8 and r2d2 entry points, which differ only in the pool type. A runtime replica's
//! pool follows its host (pindb-core's [`PoolTable`]).

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};

use pindb_core::adapter::{Database, DatabaseRef, PoolTable};
use pindb_core::{PinDbError, Route, Router};

use crate::backend::RoutedBackend;
use crate::error::Error;

/// Refuses a router with a set of another database than `B`, the pools' connections'.
pub(crate) fn check_backend<B: RoutedBackend>(router: &Router) -> Result<(), Error> {
    let databases = router.topology().databases();
    match databases.iter().find(|db| db.backend != B::BACKEND) {
        Some(db) => Err(Error::OtherDatabase {
            alias: db.alias.clone(),
            set: db.backend,
            pool: B::BACKEND,
        }),
        None => Ok(()),
    }
}

/// The router and one pool per alias (parallel to `router.topology().databases()`), with checkout
/// counts. Shared by the bb8 and r2d2 `PinDb`s.
pub(crate) struct Pools<P> {
    router: Router,
    pools: PoolTable<P>,
    checkouts: Vec<AtomicU64>,
    build: fn(&Database) -> P,
}

impl<P: Clone> Pools<P> {
    pub(crate) fn new(router: Router, build: fn(&Database) -> P) -> Self {
        let topology = router.topology();
        Pools {
            pools: PoolTable::build(topology, build),
            checkouts: topology
                .databases()
                .iter()
                .map(|_| AtomicU64::new(0))
                .collect(),
            build,
            router,
        }
    }

    pub(crate) fn router(&self) -> &Router {
        &self.router
    }

    /// The checkout for `route` (an explicit write handle) failed: nothing was sent, so the
    /// pin its decision made goes back.
    pub(crate) fn not_sent(&self, route: &Route<'_>) {
        if let Some(pin) = route.pin {
            self.router.write_not_sent(route.index, pin);
        }
    }

    /// The pool of the database at `index` (for a runtime replica, of its host now), counting
    /// the checkout about to be made. [`PinDbError::NoHost`] for a runtime replica whose host
    /// was removed or replaced since the route was decided (at `epoch`).
    pub(crate) fn pool_for_checkout(
        &self,
        index: usize,
        epoch: u64,
    ) -> Result<(Cow<'_, P>, DatabaseRef<'_>), Error> {
        self.checkouts[index].fetch_add(1, Ordering::Relaxed);
        let build = |db: &Database| Ok::<_, Error>((self.build)(db));
        self.pools.get(self.router.topology(), index, epoch, build)
    }

    pub(crate) fn checkouts(&self, alias: &str) -> Result<u64, PinDbError> {
        Ok(self.checkouts[self.router.topology().index_of(alias)?].load(Ordering::Relaxed))
    }
}
