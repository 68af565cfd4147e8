//! The router: given a hint and the current pinning context, which alias serves a read or a
//! write, and why.
//!
//! This module owns the strict/greedy/disabled rules, delegate chains and guards; `route.rs`
//! holds the vocabulary ([`Route`], [`Hint`], ...), `builder.rs` the construction, `global.rs`
//! the router behind the free functions. A decision reads the context under one uncontended
//! lock (none for a replica read that decides as the context's last one did: its read memo)
//! and does not allocate (the first decision for a set in a context adds its entry). It
//! does no I/O: the alias table is the [`Topology`], the I/O of read-your-writes is
//! [`Consistency`]'s, and adapters act on the [`Route`] returned.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::task::AbortHandle;

use crate::config::Config;
use crate::consistency::Consistency;
use crate::context::GuardKind;
use crate::context::{with_current, NewPin, PinOrigin};
use crate::error::PinDbError;
use crate::flight::WriteFlight;
use crate::guard::Guard;
use crate::lsn::Lsn;
use crate::topology::{Target, Topology};

mod builder;
mod decide;
mod fallback;
mod global;
#[cfg(test)]
mod lagging_tests;
#[cfg(test)]
mod memo_tests;
#[cfg(test)]
mod monotonic_tests;
mod promotion;
mod route;
mod statements;

use decide::trace;

pub use builder::RouterBuilder;
pub use fallback::{Abandoned, ReplicaFailure, REFUSED_GRACE};
pub use global::{db_for_read, db_for_write, get_replica, global, master, pin, unpinned_replica};
pub use promotion::Promotion;
pub use route::{Delegate, Hint, Operation, Reason, Role, Route, Shape};

/// When, for which host generation, and what pindb's own connection attempt found: the cause
/// and whether it was refused (`None`: it connected).
type Diagnosis = (std::time::Instant, u64, bool, Option<(String, bool)>);

struct Inner {
    id: u64,
    config: Config,
    topology: Arc<Topology>,
    consistency: Arc<Consistency>,
    delegates: Vec<Box<dyn Delegate>>,
    /// Statements that write although their text reads: configured lists, and statements a
    /// replica refused.
    statements: statements::Statements,
    /// The monitor's tasks, stopped when the last clone of the router is dropped.
    monitor: Mutex<Vec<AbortHandle>>,
    /// When each database's unreachability was last logged (ms since `started`; `MAX`:
    /// never), to log once per outage rather than once per failed statement.
    unreachable_logged: Box<[AtomicU64]>,
    /// Each database's last diagnosis and when it was made: failed checkouts within a
    /// second share one connection attempt instead of storming a server that is down.
    diagnosed: Box<[Mutex<Option<Diagnosis>>]>,
    started: std::time::Instant,
}

/// The routing engine. Build it once from a [`Config`]; clones share it.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), pindb_core::PinDbError> {
/// use pindb_core::{Config, Hint, Reason, Role, Router, RouterMode};
///
/// let mut config = Config::single_set("postgres://m/app", ["postgres://r1/app", "postgres://r2/app"]);
/// config.router = RouterMode::Strict;
/// let router = Router::new(config)?;
///
/// pindb_core::scope(async {
///     let read = router.db_for_read(&Hint::default())?;
///     assert_eq!(read.role, Role::Replica);
///
///     let refused = router.db_for_write(&Hint::default()).unwrap_err();
///     assert!(matches!(refused, pindb_core::PinDbError::UnpinnedWrite { .. }));
///
///     router.pin("default")?;
///     assert_eq!(router.db_for_write(&Hint::default())?.alias, "default");
///     assert_eq!(router.db_for_read(&Hint::default())?.reason, Reason::Pinned);
///     Ok(())
/// }).await
/// # }
/// ```
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("enabled", &self.inner.config.enabled)
            .field("mode", &self.inner.config.router)
            .field("databases", &self.inner.topology.databases())
            .finish()
    }
}

static NEXT_ROUTER_ID: AtomicU64 = AtomicU64::new(1);

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop_monitor();
    }
}

impl Inner {
    fn stop_monitor(&self) {
        let mut tasks = self.monitor.lock().unwrap_or_else(PoisonError::into_inner);
        for task in tasks.drain(..) {
            task.abort();
        }
    }
}

impl Router {
    /// A router with no delegate and the in-memory store: `Router::builder(config).build()`.
    pub fn new(config: Config) -> Result<Router, PinDbError> {
        Router::builder(config).build()
    }

    /// Starts building a router: delegates, a store, then [`RouterBuilder::build`].
    pub fn builder(config: Config) -> RouterBuilder {
        RouterBuilder::new(config)
    }

    fn from_parts(
        config: Config,
        delegates: Vec<Box<dyn Delegate>>,
        store: Option<Arc<dyn crate::store::Store>>,
    ) -> Result<Router, PinDbError> {
        config.validate()?;
        let topology = Arc::new(Topology::new(&config)?);
        let databases = topology.databases().len();
        let statements = statements::Statements::new(&config, topology.backend().dialect());
        let store = store.unwrap_or_else(|| {
            Arc::new(crate::store::MemoryStore::new(
                config.stickiness.memory_capacity,
            ))
        });
        Ok(Router {
            inner: Arc::new(Inner {
                id: NEXT_ROUTER_ID.fetch_add(1, Ordering::Relaxed),
                consistency: Arc::new(Consistency::new(Arc::clone(&topology), &config, store)),
                topology,
                statements,
                config,
                delegates,
                monitor: Mutex::new(Vec::new()),
                unreachable_logged: (0..databases).map(|_| AtomicU64::new(u64::MAX)).collect(),
                diagnosed: (0..databases).map(|_| Mutex::new(None)).collect(),
                started: std::time::Instant::now(),
            }),
        })
    }

    /// Checks the topology (as `monitor.topology_check` says) and starts the replica
    /// monitor: from then on replicas that are down, too far behind, or behind a context's
    /// last write are skipped. Runs until [`Router::stop_monitor`] or until the last clone of
    /// the router is dropped. Calling it again restarts it. Returns once the monitor has a
    /// bound on every configured replica's staleness, or found it down (at most two
    /// `check_timeout_ms`): until then the master serves a replica's reads.
    ///
    /// Returns the topology warnings. Must run inside a tokio runtime.
    pub async fn start_monitor(&self) -> Result<Vec<String>, PinDbError> {
        let settings = &self.inner.config.monitor;
        let emulated = self.inner.config.emulate_replicas > 0;
        let warnings =
            crate::monitor::verify_topology(&self.inner.topology, settings, emulated, true).await?;
        let dns = self.dns_refreshes(emulated)?;
        self.register_counters();
        let mut tasks = crate::monitor::spawn(&self.inner.topology, settings, emulated);
        tasks.extend(dns);
        // Swapped and stopped under one lock: two concurrent starts leave one set of tasks.
        {
            let mut running = self
                .inner
                .monitor
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for task in std::mem::replace(&mut *running, tasks) {
                task.abort();
            }
        }
        // A check (master sample, then the replica) takes up to two timeouts.
        let limit = 2 * std::time::Duration::from_millis(settings.check_timeout_ms);
        crate::monitor::first_checks(&self.inner.topology, limit).await;
        Ok(warnings)
    }

    /// Every counter the dashboard queries, at 0 with each label it can have, so a healthy
    /// system shows 0 from the start instead of "No data" (`increment(0)`: a second start
    /// keeps the counts).
    fn register_counters(&self) {
        for db in self.inner.topology.databases() {
            metrics::counter!("pindb_unreachable_total", "alias" => db.alias.clone()).increment(0);
            if db.is_replica() {
                for failure in ReplicaFailure::ALL {
                    metrics::counter!("pindb_replica_failures_total", "alias" => db.alias.clone(), "reason" => failure.as_str())
                        .increment(0);
                }
            }
        }
        let store = self.inner.consistency.store().name();
        for op in ["load", "save", "lost", "pending"] {
            metrics::counter!("pindb_store_failures_total", "store" => store, "op" => op)
                .increment(0);
        }
        for to in ["master", "replica"] {
            metrics::counter!("pindb_consistency_round_trips_total", "to" => to).increment(0);
        }
    }

    /// The DNS refresh of each set with a `discovery.dns` or `srv` name.
    #[cfg(feature = "dns")]
    fn dns_refreshes(&self, emulated: bool) -> Result<Vec<tokio::task::AbortHandle>, PinDbError> {
        let mut tasks = Vec::new();
        for (set, master) in &self.inner.config.masters {
            let (Some(discovery), false) = (&master.discovery, emulated) else {
                continue;
            };
            let topology = Arc::clone(&self.inner.topology);
            let spawned =
                self.inner.topology.database(set).and_then(|master| {
                    crate::dns::spawn_dns(topology, set, discovery, master.port)
                });
            match spawned {
                Ok(task) => tasks.extend(task),
                Err(e) => {
                    // None is left running (dropping a handle would not stop its task).
                    tasks.iter().for_each(tokio::task::AbortHandle::abort);
                    return Err(e);
                }
            }
        }
        Ok(tasks)
    }

    /// Without the `dns` feature no set has a DNS name (the config refuses one).
    #[cfg(not(feature = "dns"))]
    fn dns_refreshes(&self, _emulated: bool) -> Result<Vec<tokio::task::AbortHandle>, PinDbError> {
        Ok(Vec::new())
    }

    /// Every database as it is right now (role, reachability, position, lag, replication
    /// slots), over pindb's own connections: what `pindb status` prints.
    pub async fn status(&self) -> Vec<crate::status::DatabaseStatus> {
        let timeout = std::time::Duration::from_millis(self.inner.config.monitor.check_timeout_ms);
        crate::status::status(&self.inner.topology, timeout).await
    }

    /// The topology check (every master a primary, every replica a standby of its master),
    /// strict whatever `monitor.topology_check` says: the first problem is an error naming
    /// the alias; servers that cannot be reached are warnings. What `pindb check` runs.
    pub async fn check_topology(&self) -> Result<Vec<String>, PinDbError> {
        let settings = crate::config::MonitorSettings {
            topology_check: crate::config::TopologyCheck::Error,
            ..self.inner.config.monitor.clone()
        };
        let emulated = self.inner.config.emulate_replicas > 0;
        // A look only: a running monitor's roles and health are left alone.
        crate::monitor::verify_topology(&self.inner.topology, &settings, emulated, false).await
    }

    /// Stops the replica monitor; replicas keep their last known state.
    pub fn stop_monitor(&self) {
        self.inner.stop_monitor();
    }

    /// Replaces the runtime replicas of `set` (slots declared with
    /// `[masters.<set>.discovery]`) with `hosts` (`host`, `host:port`, `[v6]:port`; without a
    /// port, the master's). A host already there keeps its alias, pool and health; a host
    /// left out serves no new read at once, and its pool closes once the connections it lent
    /// out come back (their work finishes first); a new host serves reads once the monitor
    /// has checked it (at once without a monitor). Returns the aliases that changed.
    ///
    /// Refused, nothing changed: a set with no slots, a bad host, more hosts than slots.
    /// With `discovery.dns` or `srv`, the DNS refresh calls this at every interval too (the
    /// last call wins until the next refresh).
    ///
    /// ```
    /// let config = pindb_core::Config::from_toml_str(r#"
    ///     [masters.default]
    ///     url = "postgres://app@db0:5432/app"
    ///     discovery = { max_replicas = 4 }
    ///     [sets]
    ///     default = []
    /// "#)?;
    /// let router = pindb_core::Router::new(config)?;
    /// assert_eq!(router.set_replicas("default", ["db1", "db2"])?, ["default-1", "default-2"]);
    /// // db1 stays where it is; db2 leaves; db3 takes a free slot.
    /// router.set_replicas("default", ["db1", "db3"])?;
    /// let hosts: Vec<_> = router.topology().runtime_replicas("default")?.into_iter().map(|(_, h)| h).collect();
    /// assert_eq!(hosts, ["db1:5432", "db3:5432"]);
    /// assert!(router.set_replicas("default", ["a", "b", "c", "d", "e"]).is_err());
    /// # Ok::<(), pindb_core::PinDbError>(())
    /// ```
    pub fn set_replicas<S: AsRef<str>>(
        &self,
        set: &str,
        hosts: impl IntoIterator<Item = S>,
    ) -> Result<Vec<String>, PinDbError> {
        let topology = &self.inner.topology;
        let wanted = topology.replica_hosts(set, hosts)?;
        // Without a monitor to check them, new hosts serve at once (as configured ones do).
        let monitored = !self
            .inner
            .monitor
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty();
        topology.set_replicas(set, &wanted, !monitored, "set_replicas")
    }

    /// The config this router was built from.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The alias table: databases, sets, replica health.
    pub fn topology(&self) -> &Topology {
        &self.inner.topology
    }

    /// Read-your-writes across contexts: keyed scopes, tokens, the store.
    pub fn consistency(&self) -> &Arc<Consistency> {
        &self.inner.consistency
    }

    /// Distinct for each router built (clones share it), never reused: per-router caches
    /// (the adapters', pindb-core's shapes of SQL texts) are keyed by it.
    pub fn instance_id(&self) -> u64 {
        self.inner.id
    }

    /// Whether any delegate router is configured: adapters only work out table names for
    /// hints when one is.
    pub fn has_delegates(&self) -> bool {
        !self.inner.delegates.is_empty()
    }

    /// Where a statement with this SQL text goes: classified by pindb's classifier, with its
    /// main table as the hint when delegates exist, then decided as [`Router::db_for_read`] /
    /// [`Router::db_for_write`] would. The one entry point adapters need.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), pindb_core::PinDbError> {
    /// use pindb_core::{Config, Role, Router};
    ///
    /// let router = Router::new(Config::single_set("postgres://m/app", ["postgres://r/app"]))?;
    /// pindb_core::scope(async {
    ///     assert_eq!(router.route_sql("SELECT * FROM notes")?.role, Role::Replica);
    ///     assert_eq!(router.route_sql("DELETE FROM notes")?.role, Role::Master);
    ///     assert_eq!(router.route_sql("SELECT * FROM notes")?.role, Role::Master, "greedy: pinned");
    ///     Ok(())
    /// }).await
    /// # }
    /// ```
    pub fn route_sql(&self, sql: &str) -> Result<Route<'_>, PinDbError> {
        self.route_shape(&self.shape_of(sql))
    }

    /// What the router makes of `sql`: pindb's classifier, then the configured
    /// `write_functions` / `write_relations` and the statements a replica refused (a read
    /// that names one is a write); the main table when delegates need it; the read's
    /// footprint when a logical replica may carry only some tables. Kept per thread for the
    /// texts seen last, each with the count of refusals learned when it was classified: a
    /// refusal learned since, on any thread, makes it be classified again.
    pub fn shape_of(&self, sql: &str) -> Shape {
        let (table, footprint) = (self.has_delegates(), self.inner.topology.has_partial());
        (self.inner.statements).shape_of(self.inner.id, sql, table, footprint)
    }

    /// A count that moves whenever a replica's refusal of a statement is learned (it is a
    /// write from then on): a shape an adapter kept from before it moved must be asked for
    /// again ([`Router::shape_of`]), so a refusal seen on one thread reaches the others'
    /// caches. Compare it for equality only.
    pub fn refusals_learned(&self) -> u64 {
        self.inner.statements.learned()
    }

    /// The decision [`Router::route_sql`] would make, without pinning anything: how
    /// `explain` sees a statement, including one that a replica refused earlier.
    pub fn explain_sql(&self, sql: &str) -> Result<Route<'_>, PinDbError> {
        let shape = self.shape_of(sql);
        let route = self.with_hint(&shape, |hint| self.explain(shape.op, hint))?;
        Ok(match self.inner.statements.refused(sql) {
            true => Route {
                reason: Reason::ReplicaRefused,
                ..route
            },
            false => route,
        })
    }

    /// [`Router::route_sql`] for a statement already classified (adapters that cache a
    /// [`Shape`] per statement type).
    pub fn route_shape(&self, shape: &Shape) -> Result<Route<'_>, PinDbError> {
        self.with_hint(shape, |hint| match shape.op {
            Operation::Read => self.db_for_read(hint),
            Operation::Write => self.db_for_write(hint),
        })
    }

    /// Calls `f` with the hint [`Router::route_shape`] decides `shape` with: its main table
    /// when delegates need one, its footprint.
    pub fn with_hint<R>(&self, shape: &Shape, f: impl FnOnce(&Hint<'_>) -> R) -> R {
        let footprint = shape.footprint.as_deref();
        match shape.table.as_deref() {
            Some(table) if self.has_delegates() => {
                f(&Hint::tables(&[table]).with_footprint(footprint))
            }
            _ => f(&Hint::default().with_footprint(footprint)),
        }
    }

    /// Where a read should go.
    pub fn db_for_read(&self, hint: &Hint<'_>) -> Result<Route<'_>, PinDbError> {
        let route = self.read_route(hint, true)?;
        trace(Operation::Read, &route);
        Ok(route)
    }

    /// Where a write should go. Strict: [`PinDbError::UnpinnedWrite`] for an unpinned managed
    /// set. Greedy: pins the set.
    pub fn db_for_write(&self, hint: &Hint<'_>) -> Result<Route<'_>, PinDbError> {
        let result = self.write_route(hint, true);
        match &result {
            Ok(route) => trace(Operation::Write, route),
            Err(PinDbError::UnpinnedWrite { set }) => {
                tracing::debug!(target: "pindb", op = "write", set = %set, reason = "strict-error", "pindb route refused");
            }
            Err(_) => {}
        }
        result
    }

    /// The write routed to the database at `index` with [`Route::pin`] `pin` never reached
    /// its server: its checkout failed (connection refused, pool timeout, a host gone). The
    /// pin its decision made is taken back, so the context records no position for it and
    /// its later reads are not sent to a master that may be down. A write that may have been
    /// sent (its outcome unknown) must keep its pin: do not call this for it.
    pub fn write_not_sent(&self, index: usize, pin: NewPin) {
        if let Some(set) = self.set_of(index) {
            with_current(|ctx| ctx.lock().unpin_unsent(set, pin));
        }
    }

    /// Marks a write about to be sent to the database at `index` as in flight in the current
    /// context, until the returned flight is landed ([`WriteFlight`]). `None` outside a
    /// context or for a database outside any set (no position is recorded for it).
    pub fn write_flight(&self, index: usize) -> Option<WriteFlight> {
        let set = self.set_of(index)?;
        with_current(|ctx| WriteFlight::start(ctx, set))
    }

    /// The set the database at `index` belongs to.
    fn set_of(&self, index: usize) -> Option<&str> {
        self.inner
            .topology
            .databases()
            .get(index)
            .and_then(|db| db.set())
    }

    /// Whether an adapter that can should learn the master's position in a write's own
    /// flight and report it with [`Router::write_position`] (`stickiness.pipeline_positions`,
    /// on by default).
    pub fn learns_positions(&self) -> bool {
        self.inner.config.stickiness.pipeline_positions
    }

    /// The write routed to the database at `index` with [`Route::pin`] `pin` is behind the
    /// master position `lsn`: the adapter read it on the write's own connection, after the
    /// write completed there and outside any transaction (for PostgreSQL,
    /// `pg_current_wal_insert_lsn()` in a statement that has no transaction id). When every
    /// write of a set in the context reported its position, the context's end records the
    /// highest without a round trip to the master. Report nothing when unsure: the context
    /// then reads the position at its end, as for any write. PostgreSQL's only: a MariaDB
    /// position in the set's domain does not cover a write made in another (the context's
    /// end checks that), so it is ignored for a MariaDB set.
    pub fn write_position(&self, index: usize, pin: NewPin, lsn: Lsn) {
        if self.inner.topology.backend() != crate::backend::Backend::Postgres {
            return;
        }
        if let Some(set) = self.set_of(index) {
            with_current(|ctx| ctx.lock().learned(set, pin, lsn));
        }
    }

    /// The database a statement with this hint belongs to: the index in [`Topology::databases`]
    /// of its set's master, or of the unmanaged alias it names. No decision, no pin, no
    /// strict check: adapters use it to keep every statement of a transaction on the
    /// transaction's database.
    pub fn home_of(&self, hint: &Hint<'_>, op: Operation) -> Result<usize, PinDbError> {
        Ok(match self.resolve(hint, op)? {
            Target::Unmanaged(i) => i,
            Target::Set(s) | Target::Replica { set: s, .. } => {
                let topology = &self.inner.topology;
                let set = topology.set(s);
                set.master()
                    .ok_or_else(|| set.no_primary(topology.databases()))?
            }
        })
    }

    /// The decision `db_for_read`/`db_for_write` would make, without pinning anything.
    pub fn explain(&self, op: Operation, hint: &Hint<'_>) -> Result<Route<'_>, PinDbError> {
        match op {
            Operation::Read => self.read_route(hint, false),
            Operation::Write => self.write_route(hint, false),
        }
    }

    /// Pins the set of `alias` in the current context: its reads go to the master from now on.
    /// A replica alias pins its set. Disabled mode: does nothing.
    pub fn pin(&self, alias: &str) -> Result<(), PinDbError> {
        if !self.inner.config.enabled {
            return Ok(());
        }
        let set = &self
            .inner
            .topology
            .set(self.inner.topology.managed_set(alias)?);
        with_current(|ctx| ctx.lock().pin(&set.name, PinOrigin::New))
            .ok_or(PinDbError::NoContext { operation: "pin" })
    }

    /// A guard that sends the set's reads and writes to its master while it lives, without
    /// pinning it. Disabled mode: an inert guard.
    pub fn master(&self, alias: &str) -> Result<Guard, PinDbError> {
        self.guard(alias, GuardKind::Master, "master")
    }

    /// A guard that sends the set's reads to a replica while it lives, even if the set is
    /// pinned. Disabled mode: an inert guard.
    pub fn unpinned_replica(&self, alias: &str) -> Result<Guard, PinDbError> {
        self.guard(alias, GuardKind::UnpinnedReplica, "unpinned_replica")
    }

    fn guard(
        &self,
        alias: &str,
        kind: GuardKind,
        operation: &'static str,
    ) -> Result<Guard, PinDbError> {
        if !self.inner.config.enabled {
            return Ok(Guard::inert(kind));
        }
        let set = &self
            .inner
            .topology
            .set(self.inner.topology.managed_set(alias)?);
        with_current(|ctx| Guard::push(ctx, Arc::clone(&set.name), kind))
            .ok_or(PinDbError::NoContext { operation })
    }

    /// The alias of the replica this context reads the set of `alias` from (chosen by the
    /// policy and then kept); the master's alias when the set has no replica or pindb is
    /// disabled.
    pub fn get_replica(&self, alias: &str) -> Result<&str, PinDbError> {
        let s = self.inner.topology.managed_set(alias)?;
        let set = &self.inner.topology.set(s);
        let replica = if self.inner.config.enabled {
            // The caller may run anything there: no footprint, so only a replica that
            // carries every table.
            let any = decide::ReadNeeds::default();
            with_current(|ctx| self.pick_replica(s, Some(&mut ctx.lock()), true, false, any))
                .unwrap_or_else(|| self.pick_replica(s, None, true, false, any))
                .ok()
        } else {
            None
        };
        let i = match replica.or_else(|| set.master()) {
            Some(i) => i,
            None => return Err(set.no_primary(self.inner.topology.databases())),
        };
        Ok(&self.inner.topology.databases()[i].alias)
    }
}
