//! [`PoolTable`]: an adapter's pools, one per database of the topology, that follow runtime
//! replicas' hosts. Shared by every adapter, whatever its pool type.
//!
//! A fixed database's pool is built once. A runtime replica's pool is built for one host (one
//! [`Topology::generation`]) at its first use, and replaced when the host changed. A replaced
//! pool is only dropped from the table: the connections it lent out keep it alive until they
//! come back, so their work finishes, and then it closes. Each use also notices whether any
//! runtime host changed since the last one ([`Topology::runtime_changes`]) and drops the
//! pools of hosts that left, so a slot nobody reads any more does not keep its old host's
//! idle connections.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use crate::discovery::DatabaseRef;
use crate::error::PinDbError;
use crate::populate::Database;
use crate::topology::Topology;

/// The pool of one database.
#[derive(Debug)]
enum Cell<P> {
    Fixed(P),
    /// The pool of the runtime replica's host now, with that host's generation.
    Runtime(Mutex<Option<(u64, P)>>),
}

/// One pool per entry of [`Topology::databases`], in its order. `P` is the adapter's pool
/// handle (cheap to clone: bb8's, r2d2's, a SeaORM `DatabaseConnection`).
///
/// ```
/// use pindb_core::adapter::PoolTable;
///
/// let config = pindb_core::Config::from_toml_str(r#"
///     [masters.default]
///     url = "postgres://app@db0/app"
///     discovery = { max_replicas = 1 }
///     [sets]
///     default = []
/// "#)?;
/// let router = pindb_core::Router::new(config)?;
/// let topology = router.topology();
/// // The adapter builds the fixed pools itself (here a pool is just its host).
/// let table = PoolTable::new(topology, |db| (!db.runtime).then(|| db.host.clone()));
/// let build = |db: &pindb_core::adapter::Database| Ok::<_, pindb_core::PinDbError>(db.host.clone());
/// let epoch = topology.epoch(1);
/// assert!(table.get(topology, 1, epoch, build).is_err(), "no host yet");
/// router.set_replicas("default", ["db1"])?;
/// assert!(table.get(topology, 1, epoch, build).is_err(), "decided before the change");
/// let epoch = topology.epoch(1);
/// assert_eq!(table.get(topology, 1, epoch, build)?.0.as_str(), "db1");
/// router.set_replicas("default", ["db2"])?;
/// let epoch = topology.epoch(1);
/// assert_eq!(table.get(topology, 1, epoch, build)?.0.as_str(), "db2");
/// # Ok::<(), pindb_core::PinDbError>(())
/// ```
#[derive(Debug)]
pub struct PoolTable<P> {
    cells: Vec<Cell<P>>,
    /// `Topology::runtime_changes` when the table last dropped the pools of hosts that left.
    swept: AtomicU64,
}

impl<P: Clone> PoolTable<P> {
    /// A table whose fixed pools `fixed` gives (called for every database; for a runtime
    /// replica, whose `host` is empty, return `None`: those are built at their first use).
    pub fn new(topology: &Topology, mut fixed: impl FnMut(&Database) -> Option<P>) -> Self {
        let cells = topology
            .databases()
            .iter()
            .map(|db| match (db.runtime, fixed(db)) {
                (false, Some(pool)) => Cell::Fixed(pool),
                _ => Cell::Runtime(Mutex::new(None)),
            })
            .collect();
        PoolTable {
            cells,
            swept: AtomicU64::new(0),
        }
    }

    /// Like [`PoolTable::new`], when every fixed pool is built without fail or wait.
    pub fn build(topology: &Topology, build: impl Fn(&Database) -> P) -> Self {
        PoolTable::new(topology, |db| (!db.runtime).then(|| build(db)))
    }

    /// The pool of the database at `index` now, and the database it connects to: for a
    /// runtime replica, of its current host (`build` makes it when the host changed).
    /// `epoch`: the route's [`Route::epoch`](crate::Route::epoch) (or [`Topology::epoch`]
    /// now, for a pool asked for by name). For a runtime replica, [`PinDbError::NoHost`]
    /// while it has no host or when a runtime host of its set changed since `epoch`: the
    /// route may have been chosen for what was known of another host.
    pub fn get<'a, E: From<PinDbError>>(
        &'a self,
        topology: &'a Topology,
        index: usize,
        epoch: u64,
        build: impl FnOnce(&Database) -> Result<P, E>,
    ) -> Result<(Cow<'a, P>, DatabaseRef<'a>), E> {
        self.sweep(topology);
        let Some(cell) = self.cells.get(index) else {
            return Err(PinDbError::UnknownAlias {
                alias: format!("#{index}"),
                known: String::new(),
            }
            .into());
        };
        match cell {
            Cell::Fixed(pool) => Ok((
                Cow::Borrowed(pool),
                DatabaseRef::Fixed(&topology.databases()[index]),
            )),
            Cell::Runtime(cell) => {
                // Read under the lock, so a pool is never replaced by one for an older host.
                let mut cell = cell.lock().unwrap_or_else(PoisonError::into_inner);
                let (generation, db) = topology.database_for(index, epoch)?;
                let pool = match &*cell {
                    Some((built, pool)) if *built == generation => pool.clone(),
                    _ => {
                        let pool = build(&db)?;
                        *cell = Some((generation, pool.clone()));
                        pool
                    }
                };
                Ok((Cow::Owned(pool), db))
            }
        }
    }

    /// [`PoolTable::get`] for a pool asked for by name, not by a route: as the database is
    /// now.
    pub fn get_now<'a, E: From<PinDbError>>(
        &'a self,
        topology: &'a Topology,
        index: usize,
        build: impl FnOnce(&Database) -> Result<P, E>,
    ) -> Result<(Cow<'a, P>, DatabaseRef<'a>), E> {
        self.get(topology, index, topology.epoch(index), build)
    }

    /// A table built from `pools`, parallel to [`Topology::databases`]: `Some` for each fixed
    /// database, `None` for each runtime replica (built at its first use).
    pub fn from_fixed(pools: Vec<Option<P>>) -> Self {
        PoolTable {
            cells: pools
                .into_iter()
                .map(|pool| match pool {
                    Some(pool) => Cell::Fixed(pool),
                    None => Cell::Runtime(Mutex::new(None)),
                })
                .collect(),
            swept: AtomicU64::new(0),
        }
    }

    /// Drops the pools built for hosts that left, once per change of the topology's runtime
    /// hosts (one atomic load otherwise).
    fn sweep(&self, topology: &Topology) {
        let changes = topology.runtime_changes();
        let swept = self.swept.load(Ordering::Acquire);
        if changes == swept
            || self
                .swept
                .compare_exchange(swept, changes, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return;
        }
        for (index, cell) in self.cells.iter().enumerate() {
            if let Cell::Runtime(cell) = cell {
                let mut cell = cell.lock().unwrap_or_else(PoisonError::into_inner);
                if cell
                    .as_ref()
                    .is_some_and(|(built, _)| *built != topology.generation(index))
                {
                    *cell = None;
                }
            }
        }
    }
}
