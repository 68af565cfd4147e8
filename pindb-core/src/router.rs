//! The router: given a hint and the current pinning context, which alias serves a read or a
//! write, and why.
//!
//! This module owns the alias table built from the config, the strict/greedy/disabled rules,
//! delegate chains, and the global router behind the free functions. A decision reads the
//! context under one uncontended lock and does not allocate (the first decision for a set in a
//! context adds its entry). It does no I/O: adapters act on the [`Route`] it returns.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crate::config::{Config, RouterMode};
use crate::context::{with_current, PinOrigin, State};
use crate::error::PinDbError;
use crate::guard::{Guard, GuardKind};
use crate::lsn::Lsn;
use crate::monitor::{lsn_column, Probe};
use crate::populate::{Database, Membership};
use crate::replica::{Health, NoReplica, Picker, ReplicaStatus};
use crate::stickiness::{MemoryStore, Store};

/// Read or write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// A statement [`classify`](crate::classify) calls a read.
    Read,
    /// Anything else.
    Write,
}

/// What the router knows about a query: an explicit alias, the tables, the model type.
/// All empty (the `Default`) means "the `default` set, unless a delegate says otherwise".
///
/// ```
/// use pindb_core::Hint;
///
/// let hint = Hint::tables(&["events"]).with_model("Event");
/// assert_eq!(hint.tables, ["events"]);
/// assert_eq!(Hint::alias("analytics").alias, Some("analytics"));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hint<'a> {
    /// Route within this alias's set (or to this unmanaged alias); skips delegates.
    pub alias: Option<&'a str>,
    /// Tables the statement touches, when the adapter knows them.
    pub tables: &'a [&'a str],
    /// The model / entity type name, when the adapter knows it.
    pub model: Option<&'a str>,
}

impl<'a> Hint<'a> {
    /// A hint naming an alias (a set's master, one of its replicas, or an unmanaged database).
    /// A replica alias is an explicit choice: reads go to that replica whatever the context
    /// pinned or requires (use the set's name to let pindb choose safely).
    pub fn alias(alias: &'a str) -> Self {
        Hint {
            alias: Some(alias),
            ..Hint::default()
        }
    }

    /// A hint carrying table names, for delegates.
    pub fn tables(tables: &'a [&'a str]) -> Self {
        Hint {
            tables,
            ..Hint::default()
        }
    }

    /// Adds a model type name.
    pub fn with_model(self, model: &'a str) -> Self {
        Hint {
            model: Some(model),
            ..self
        }
    }
}

/// User code that picks which database (usually a set's master alias) a query belongs to.
/// Delegates are asked in order; the first `Some` wins; when none answers, `default` is used.
///
/// Any `Fn(&Hint, Operation) -> Option<&'static str>` is a delegate:
///
/// ```
/// use pindb_core::{Config, Hint, Operation, Router};
///
/// let config = Config::from_toml_str(r#"
///     [masters.default]
///     url = "postgres://db/app"
///     [masters.analytics]
///     url = "postgres://olap/stats"
///     [sets]
///     default = []
///     analytics = []
/// "#)?;
/// let by_table = |hint: &Hint, _: Operation| {
///     hint.tables.iter().any(|t| t.starts_with("stats_")).then_some("analytics")
/// };
/// let router = Router::with_delegates(config, vec![Box::new(by_table)])?;
/// assert_eq!(router.db_for_read(&Hint::tables(&["stats_daily"]))?.alias, "analytics");
/// assert_eq!(router.db_for_read(&Hint::tables(&["users"]))?.alias, "default");
/// # Ok::<(), pindb_core::PinDbError>(())
/// ```
pub trait Delegate: Send + Sync + 'static {
    /// The alias to use for this query, or `None` to let the next delegate decide.
    fn route(&self, hint: &Hint<'_>, op: Operation) -> Option<&str>;
}

impl<F> Delegate for F
where
    F: Fn(&Hint<'_>, Operation) -> Option<&'static str> + Send + Sync + 'static,
{
    fn route(&self, hint: &Hint<'_>, op: Operation) -> Option<&str> {
        self(hint, op)
    }
}

/// Which kind of database serves a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A set's master.
    Master,
    /// One of a set's replicas.
    Replica,
    /// A database outside every set.
    Unmanaged,
}

impl Role {
    /// A short lowercase name for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Master => "master",
            Role::Replica => "replica",
            Role::Unmanaged => "unmanaged",
        }
    }
}

/// Why a route was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// pindb is disabled: everything goes to masters.
    Disabled,
    /// The alias is unmanaged: always used directly.
    Unmanaged,
    /// The set is pinned in this context.
    Pinned,
    /// A `master()` guard is live for the set.
    MasterGuard,
    /// An `unpinned_replica()` guard is live for the set.
    ReplicaGuard,
    /// An unpinned read: the context's replica for the set.
    Replica,
    /// The hint named a replica alias explicitly.
    ExplicitReplica,
    /// The set has no replica to read from.
    NoReplica,
    /// Greedy router: this write pinned the set.
    GreedyPin,
    /// Greedy router, outside any context: the write goes to the master but nothing can be pinned.
    NoContextWrite,
    /// Every replica of the set is down: the master serves the read.
    ReplicaDown,
    /// Every replica that is up is beyond the lag limits: the master serves the read.
    LagFallback,
    /// No usable replica has replayed this context's last write yet: the master serves it.
    NotCaughtUp,
    /// The stickiness store could not be read for this context: the master serves its reads.
    StoreUnavailable,
}

impl Reason {
    /// A short kebab-case name for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Disabled => "disabled",
            Reason::Unmanaged => "unmanaged",
            Reason::Pinned => "pinned",
            Reason::MasterGuard => "master-guard",
            Reason::ReplicaGuard => "replica-guard",
            Reason::Replica => "replica",
            Reason::ExplicitReplica => "explicit-replica",
            Reason::NoReplica => "no-replica",
            Reason::GreedyPin => "greedy-pin",
            Reason::NoContextWrite => "no-context-write",
            Reason::ReplicaDown => "replica-down",
            Reason::LagFallback => "lag-fallback",
            Reason::NotCaughtUp => "not-caught-up",
            Reason::StoreUnavailable => "store-unavailable",
        }
    }
}

/// A routing decision: the alias to use, its role, its set, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route<'r> {
    /// The alias whose pool should run the statement.
    pub alias: &'r str,
    /// Position of that alias in [`Router::databases`], so adapters can keep their pools in a
    /// `Vec` and skip a lookup by name.
    pub index: usize,
    /// The set it belongs to (`None` for unmanaged aliases).
    pub set: Option<&'r str>,
    /// Master, replica or unmanaged.
    pub role: Role,
    /// Why.
    pub reason: Reason,
}

impl fmt::Display for Route<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}, {})",
            self.alias,
            self.role.as_str(),
            self.reason.as_str()
        )
    }
}

#[derive(Debug, Clone, Copy)]
enum Target {
    Set(usize),
    Replica { set: usize, replica: usize },
    Unmanaged(usize),
}

struct SetEntry {
    name: Arc<str>,
    /// Index into `databases`.
    master: usize,
    /// Indexes into `databases`, in replica order.
    replicas: Vec<usize>,
    /// Parallel to `replicas`; written by the monitor.
    health: Arc<[Health]>,
    picker: Picker,
}

struct Inner {
    id: u64,
    /// The monitor's tasks, stopped when the last clone of the router is dropped.
    monitor: std::sync::Mutex<Vec<tokio::task::AbortHandle>>,
    /// Small connections of pindb's own, parallel to `databases`: master positions for
    /// stickiness, direct replica checks.
    probes: Vec<tokio::sync::Mutex<Probe>>,
    store: std::sync::RwLock<Arc<dyn Store>>,
    /// When a store failure was last logged (ms since `started`), to log once per interval.
    store_logged_at: AtomicU64,
    started: std::time::Instant,
    /// Database round trips made for consistency (write positions, direct replica checks).
    round_trips: AtomicU64,
    /// Keyed contexts dropped mid-flight whose positions are being recorded: the key's next
    /// context on this instance waits for them (see `RecordOnDrop`).
    pending_records: std::sync::Mutex<HashMap<String, Arc<crate::stickiness::Pending>>>,
    /// Entries in `pending_records`: a keyed context start skips the lock when it is 0.
    pending_len: std::sync::atomic::AtomicUsize,
    /// Verify pin cookies and consistency tokens; the first signs.
    cookie_keys: Vec<cookie::Key>,
    config: Config,
    databases: Vec<Database>,
    by_alias: HashMap<String, Target>,
    sets: Vec<SetEntry>,
    default: Target,
    delegates: Vec<Box<dyn Delegate>>,
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
            .field("databases", &self.inner.databases)
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
        let mut tasks = self
            .monitor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for task in tasks.drain(..) {
            task.abort();
        }
    }
}
static GLOBAL: OnceLock<Router> = OnceLock::new();

impl Router {
    /// Validates the config and builds the alias table.
    pub fn new(config: Config) -> Result<Router, PinDbError> {
        Router::with_delegates(config, Vec::new())
    }

    /// Like [`Router::new`], with a chain of delegate routers.
    pub fn with_delegates(
        config: Config,
        delegates: Vec<Box<dyn Delegate>>,
    ) -> Result<Router, PinDbError> {
        config.validate()?;
        let databases = config.databases()?;
        let mut sets: Vec<SetEntry> = Vec::new();
        let mut by_alias = HashMap::new();
        for (i, db) in databases.iter().enumerate() {
            match &db.membership {
                Membership::Master { set } => {
                    by_alias.insert(db.alias.clone(), Target::Set(sets.len()));
                    sets.push(SetEntry {
                        name: Arc::from(set.as_str()),
                        master: i,
                        replicas: Vec::new(),
                        health: Arc::from([]),
                        picker: Picker::default(),
                    });
                }
                Membership::Replica { set, .. } => {
                    // populate_replicas yields each master before its replicas.
                    let s = sets
                        .iter()
                        .position(|e| &*e.name == set.as_str())
                        .ok_or_else(|| {
                            PinDbError::config(db.alias.clone(), "replica listed before its master")
                        })?;
                    by_alias.insert(
                        db.alias.clone(),
                        Target::Replica {
                            set: s,
                            replica: sets[s].replicas.len(),
                        },
                    );
                    sets[s].replicas.push(i);
                }
                Membership::Unmanaged => {
                    by_alias.insert(db.alias.clone(), Target::Unmanaged(i));
                }
            }
        }
        for set in &mut sets {
            set.health = set.replicas.iter().map(|_| Health::default()).collect();
        }
        let default = *by_alias
            .get("default")
            .ok_or_else(|| PinDbError::config("default", "no `default` database"))?;
        Ok(Router {
            inner: Arc::new(Inner {
                id: NEXT_ROUTER_ID.fetch_add(1, Ordering::Relaxed),
                monitor: std::sync::Mutex::new(Vec::new()),
                probes: databases
                    .iter()
                    .map(|db| {
                        tokio::sync::Mutex::new(Probe::new(
                            db,
                            std::time::Duration::from_millis(config.monitor.check_timeout_ms),
                        ))
                    })
                    .collect(),
                store: std::sync::RwLock::new(Arc::new(MemoryStore::new(
                    config.stickiness.memory_capacity,
                ))),
                store_logged_at: AtomicU64::new(u64::MAX),
                started: std::time::Instant::now(),
                round_trips: AtomicU64::new(0),
                pending_records: std::sync::Mutex::new(HashMap::new()),
                pending_len: std::sync::atomic::AtomicUsize::new(0),
                cookie_keys: std::iter::once(match &config.cookie_secret {
                    Some(secret) => cookie::Key::derive_from(secret.as_bytes()),
                    None => cookie::Key::generate(),
                })
                .chain(
                    config
                        .cookie_old_secrets
                        .iter()
                        .map(|s| cookie::Key::derive_from(s.as_bytes())),
                )
                .collect(),
                config,
                databases,
                by_alias,
                sets,
                default,
                delegates,
            }),
        })
    }

    /// Makes this router the one behind the free functions ([`pin`], [`db_for_read`], ...).
    ///
    /// ```
    /// # fn main() -> Result<(), pindb_core::PinDbError> {
    /// let config = pindb_core::Config::single_set("postgres://m/app", ["postgres://r/app"]);
    /// let router = pindb_core::Router::new(config)?.install_global()?;
    /// assert_eq!(router.get_replica("default")?, "default-1");
    /// # Ok(()) }
    /// ```
    pub fn install_global(self) -> Result<&'static Router, PinDbError> {
        GLOBAL
            .set(self)
            .map_err(|_| PinDbError::GlobalRouterAlreadyInstalled)?;
        global()
    }

    /// Checks the topology ([`verify_topology`](crate::monitor::verify_topology), as
    /// configured) and starts the replica monitor: from then on replicas that are down, too
    /// far behind, or behind a context's last write are skipped. Runs until [`Router::stop_monitor`]
    /// or until the last clone of the router is dropped. Calling it again restarts it.
    ///
    /// Returns the topology warnings. Must run inside a tokio runtime.
    pub async fn start_monitor(&self) -> Result<Vec<String>, PinDbError> {
        let warnings = crate::monitor::verify_topology(self).await?;
        let tasks = crate::monitor::spawn(self);
        self.inner.stop_monitor();
        *self
            .inner
            .monitor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = tasks;
        Ok(warnings)
    }

    /// Replaces the stickiness store (the default keeps positions in memory).
    ///
    /// ```no_run
    /// # async fn demo(router: pindb_core::Router) -> Result<(), pindb_core::PinDbError> {
    /// use std::{sync::Arc, time::Duration};
    /// let redis = pindb_core::stickiness::RedisStore::new("redis://127.0.0.1/", "pindb:lsn:", Duration::from_millis(100))?;
    /// router.set_store(Arc::new(redis));
    /// # Ok(()) }
    /// ```
    pub fn set_store(&self, store: Arc<dyn Store>) {
        *self
            .inner
            .store
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = store;
    }

    pub(crate) fn store(&self) -> Arc<dyn Store> {
        Arc::clone(
            &self
                .inner
                .store
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    fn pending_records(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, Arc<crate::stickiness::Pending>>> {
        self.inner
            .pending_records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The recordings in flight for `key` (contexts dropped mid-flight), if any. Lock-free
    /// when there are none anywhere, the usual case.
    pub(crate) fn pending_for(&self, key: &str) -> Option<Arc<crate::stickiness::Pending>> {
        if self.inner.pending_len.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.pending_records().get(key).cloned()
    }

    /// Counts one more recording in flight for `key`.
    pub(crate) fn start_pending(&self, key: &str) -> Arc<crate::stickiness::Pending> {
        let mut records = self.pending_records();
        let pending = Arc::clone(records.entry(key.to_owned()).or_default());
        pending.start();
        self.inner
            .pending_len
            .store(records.len(), Ordering::Release);
        pending
    }

    /// One recording for `key` is done; the entry goes with its last one.
    pub(crate) fn finish_pending(&self, key: &str, pending: &Arc<crate::stickiness::Pending>) {
        let mut records = self.pending_records();
        if pending.finish() && records.get(key).is_some_and(|p| Arc::ptr_eq(p, pending)) {
            records.remove(key);
        }
        self.inner
            .pending_len
            .store(records.len(), Ordering::Release);
    }

    /// True at most once per 10 s: store outages are logged, not once per request.
    pub(crate) fn should_log_store_failure(&self) -> bool {
        let now = self.inner.started.elapsed().as_millis() as u64;
        let last = self.inner.store_logged_at.load(Ordering::Relaxed);
        (last == u64::MAX || now.saturating_sub(last) >= 10_000)
            && self
                .inner
                .store_logged_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// The key that signs pin cookies and consistency tokens (from `cookie_secret`).
    pub fn cookie_key(&self) -> &cookie::Key {
        &self.inner.cookie_keys[0]
    }

    /// Every key a pin cookie or token may be signed with: `cookie_secret`'s, then
    /// `cookie_old_secrets`' (rotation).
    pub fn cookie_keys(&self) -> &[cookie::Key] {
        &self.inner.cookie_keys
    }

    /// Whether `name` is a set (a master's alias).
    pub fn is_set(&self, name: &str) -> bool {
        self.inner.sets.iter().any(|s| &*s.name == name)
    }

    /// Database round trips pindb has made for consistency so far: one per write position
    /// recorded, one per direct replica check. Reads themselves make none (the monitor's
    /// polling is separate and does not grow with traffic).
    pub fn consistency_round_trips(&self) -> u64 {
        self.inner.round_trips.load(Ordering::Relaxed)
    }

    fn count_round_trip(&self) {
        self.inner.round_trips.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("pindb_consistency_round_trips_total").increment(1);
    }

    /// `pg_current_wal_insert_lsn()` on the master of `set`, over pindb's own connection.
    pub(crate) async fn master_insert_lsn(&self, set: &str) -> Result<Lsn, String> {
        let s = self
            .inner
            .sets
            .iter()
            .find(|e| &*e.name == set)
            .ok_or_else(|| format!("unknown set `{set}`"))?;
        self.count_round_trip();
        let row = Probe::shared_row(
            &self.inner.probes[s.master],
            "SELECT pg_current_wal_insert_lsn()::text",
        )
        .await?;
        lsn_column(&row, 0)?.ok_or_else(|| "the master returned no position".to_owned())
    }

    /// Asks each usable replica of `set` for its replay position and records it. `None` when
    /// the set has no replica.
    pub(crate) async fn check_replicas(&self, set: &str) -> Option<()> {
        let s = self.inner.sets.iter().find(|e| &*e.name == set)?;
        if s.replicas.is_empty() {
            return None;
        }
        for (r, &index) in s.replicas.iter().enumerate() {
            if !s.health[r].status().up {
                continue;
            }
            self.count_round_trip();
            if let Ok(Some(lsn)) = Probe::shared_row(
                &self.inner.probes[index],
                "SELECT pg_last_wal_replay_lsn()::text",
            )
            .await
            .and_then(|row| lsn_column(&row, 0))
            {
                s.health[r].raise_replay(lsn);
            }
        }
        Some(())
    }

    /// Stops the replica monitor; replicas keep their last known state.
    pub fn stop_monitor(&self) {
        self.inner.stop_monitor();
    }

    /// The config this router was built from.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The final alias map, in `populate_replicas` order: what adapters open pools for.
    pub fn databases(&self) -> &[Database] {
        &self.inner.databases
    }

    /// Whether any delegate router is configured: adapters only work out table names for
    /// hints when one is.
    pub fn has_delegates(&self) -> bool {
        !self.inner.delegates.is_empty()
    }

    /// The database behind an alias.
    pub fn database(&self, alias: &str) -> Result<&Database, PinDbError> {
        Ok(&self.inner.databases[self.index_of(alias)?])
    }

    /// The position of an alias in [`Router::databases`] (what [`Route::index`] holds).
    pub fn index_of(&self, alias: &str) -> Result<usize, PinDbError> {
        Ok(match self.target(alias)? {
            Target::Set(s) => self.inner.sets[s].master,
            Target::Replica { set, replica } => self.inner.sets[set].replicas[replica],
            Target::Unmanaged(i) => i,
        })
    }

    /// Where a read should go.
    pub fn db_for_read(&self, hint: &Hint<'_>) -> Result<Route<'_>, PinDbError> {
        let route = self.read_route(hint)?;
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

    /// The database a statement with this hint belongs to: the index in [`Router::databases`]
    /// of its set's master, or of the unmanaged alias it names. No decision, no pin, no
    /// strict check: adapters use it to keep every statement of a transaction on the
    /// transaction's database.
    pub fn home_of(&self, hint: &Hint<'_>, op: Operation) -> Result<usize, PinDbError> {
        Ok(match self.resolve(hint, op)? {
            Target::Unmanaged(i) => i,
            Target::Set(s) | Target::Replica { set: s, .. } => self.inner.sets[s].master,
        })
    }

    /// The decision `db_for_read`/`db_for_write` would make, without pinning anything.
    pub fn explain(&self, op: Operation, hint: &Hint<'_>) -> Result<Route<'_>, PinDbError> {
        match op {
            Operation::Read => self.read_route(hint),
            Operation::Write => self.write_route(hint, false),
        }
    }

    /// Pins the set of `alias` in the current context: its reads go to the master from now on.
    /// A replica alias pins its set. Disabled mode: does nothing.
    pub fn pin(&self, alias: &str) -> Result<(), PinDbError> {
        if !self.inner.config.enabled {
            return Ok(());
        }
        let set = &self.inner.sets[self.managed_set(alias)?];
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
        let set = &self.inner.sets[self.managed_set(alias)?];
        with_current(|ctx| Guard::push(ctx, Arc::clone(&set.name), kind))
            .ok_or(PinDbError::NoContext { operation })
    }

    /// The alias of the replica this context reads the set of `alias` from (chosen by the
    /// policy and then kept); the master's alias when the set has no replica or pindb is
    /// disabled.
    pub fn get_replica(&self, alias: &str) -> Result<&str, PinDbError> {
        let s = self.managed_set(alias)?;
        let set = &self.inner.sets[s];
        let i = if self.inner.config.enabled {
            with_current(|ctx| self.pick_replica(s, Some(&mut ctx.lock()), true))
                .unwrap_or_else(|| self.pick_replica(s, None, true))
                .unwrap_or(set.master)
        } else {
            set.master
        };
        Ok(&self.inner.databases[i].alias)
    }

    fn target(&self, alias: &str) -> Result<Target, PinDbError> {
        self.inner
            .by_alias
            .get(alias)
            .copied()
            .ok_or_else(|| self.unknown(alias))
    }

    fn unknown(&self, alias: &str) -> PinDbError {
        PinDbError::UnknownAlias {
            alias: alias.to_owned(),
            known: self
                .inner
                .databases
                .iter()
                .map(|d| d.alias.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    fn managed_set(&self, alias: &str) -> Result<usize, PinDbError> {
        match self.target(alias)? {
            Target::Set(s) | Target::Replica { set: s, .. } => Ok(s),
            Target::Unmanaged(_) => Err(PinDbError::NotManaged {
                alias: alias.to_owned(),
            }),
        }
    }

    fn resolve(&self, hint: &Hint<'_>, op: Operation) -> Result<Target, PinDbError> {
        if let Some(alias) = hint.alias {
            return self.target(alias);
        }
        for delegate in &self.inner.delegates {
            if let Some(alias) = delegate.route(hint, op) {
                return self.target(alias);
            }
        }
        Ok(self.inner.default)
    }

    fn route(&self, index: usize, role: Role, reason: Reason) -> Route<'_> {
        let db = &self.inner.databases[index];
        Route {
            alias: &db.alias,
            index,
            set: db.set(),
            role,
            reason,
        }
    }

    fn master_route(&self, set: usize, reason: Reason) -> Route<'_> {
        self.route(self.inner.sets[set].master, Role::Master, reason)
    }

    fn read_route(&self, hint: &Hint<'_>) -> Result<Route<'_>, PinDbError> {
        let enabled = self.inner.config.enabled;
        let s = match self.resolve(hint, Operation::Read)? {
            Target::Unmanaged(i) => return Ok(self.route(i, Role::Unmanaged, Reason::Unmanaged)),
            Target::Set(s) | Target::Replica { set: s, .. } if !enabled => {
                return Ok(self.master_route(s, Reason::Disabled))
            }
            Target::Replica { set, replica } => {
                let i = self.inner.sets[set].replicas[replica];
                return Ok(self.route(i, Role::Replica, Reason::ExplicitReplica));
            }
            Target::Set(s) => s,
        };
        let name = &self.inner.sets[s].name;
        // One lock for guard, pin, stickiness and the replica choice.
        let (reason, pick) = with_current(|ctx| {
            let mut state = ctx.lock();
            match state.guard(name) {
                Some(GuardKind::Master) => (Reason::MasterGuard, None),
                // The guard accepts stale reads: positions are not required, health still is.
                Some(GuardKind::UnpinnedReplica) => (
                    Reason::ReplicaGuard,
                    Some(self.pick_replica(s, Some(&mut state), false)),
                ),
                None if state.is_pinned(name) => (Reason::Pinned, None),
                None if state.store_unavailable => (Reason::StoreUnavailable, None),
                None => (
                    Reason::Replica,
                    Some(self.pick_replica(s, Some(&mut state), true)),
                ),
            }
        })
        .unwrap_or_else(|| (Reason::Replica, Some(self.pick_replica(s, None, true))));
        Ok(match pick {
            None => self.master_route(s, reason),
            Some(Ok(i)) => self.route(i, Role::Replica, reason),
            Some(Err(no)) => {
                let reason = fallback_reason(no);
                metrics::counter!("pindb_replica_fallbacks_total", "reason" => reason.as_str())
                    .increment(1);
                self.master_route(s, reason)
            }
        })
    }

    fn write_route(&self, hint: &Hint<'_>, commit: bool) -> Result<Route<'_>, PinDbError> {
        let s = match self.resolve(hint, Operation::Write)? {
            Target::Unmanaged(i) => return Ok(self.route(i, Role::Unmanaged, Reason::Unmanaged)),
            Target::Set(s) | Target::Replica { set: s, .. } => s,
        };
        if !self.inner.config.enabled {
            return Ok(self.master_route(s, Reason::Disabled));
        }
        let set = &self.inner.sets[s];
        let strict = self.inner.config.router == RouterMode::Strict;
        let refused = || PinDbError::UnpinnedWrite {
            set: set.name.to_string(),
        };
        let reason = with_current(|ctx| {
            let mut state = ctx.lock();
            let guard = state.guard(&set.name);
            match guard {
                Some(GuardKind::Master) => Ok(Reason::MasterGuard),
                None if state.is_pinned(&set.name) => {
                    // A write to a set carried in from a cookie pins it anew: the client's
                    // pin must outlive this write, not the earlier one.
                    if commit {
                        state.pin(&set.name, PinOrigin::New);
                    }
                    Ok(Reason::Pinned)
                }
                _ if strict => Err(refused()),
                _ => {
                    if commit {
                        state.pin(&set.name, PinOrigin::New);
                    }
                    Ok(Reason::GreedyPin)
                }
            }
        })
        .unwrap_or_else(|| {
            if strict {
                Err(refused())
            } else {
                Ok(Reason::NoContextWrite)
            }
        })?;
        Ok(self.master_route(s, reason))
    }

    /// The database index of the replica set `s` reads from: inside a context, chosen once
    /// and kept while it stays fit (up, within lag limits and, with `honor_required`, past
    /// the context's required position); outside, a fresh choice.
    fn pick_replica(
        &self,
        s: usize,
        state: Option<&mut State>,
        honor_required: bool,
    ) -> Result<usize, NoReplica> {
        let set = &self.inner.sets[s];
        let policy = self.inner.config.replica_policy;
        let Some(state) = state else {
            return set
                .picker
                .choose(policy, &set.health, None, None)
                .map(|i| set.replicas[i]);
        };
        let entry = state.set_mut(&set.name);
        let keep = entry
            .replica
            .filter(|(router, _)| *router == self.inner.id)
            .map(|(_, i)| i);
        let required = if honor_required { entry.required } else { None };
        let i = set.picker.choose(policy, &set.health, required, keep)?;
        entry.replica = Some((self.inner.id, i));
        Ok(set.replicas[i])
    }

    /// Health of a replica alias; `None` for masters and unmanaged aliases.
    pub fn replica_status(&self, alias: &str) -> Result<Option<ReplicaStatus>, PinDbError> {
        Ok(match self.target(alias)? {
            Target::Replica { set, replica } => Some(self.inner.sets[set].health[replica].status()),
            _ => None,
        })
    }

    /// `(set name, master index, [(replica index, health)])` for each set: what the monitor
    /// watches.
    pub(crate) fn topology(&self) -> impl Iterator<Item = (&str, usize, &[usize], Arc<[Health]>)> {
        self.inner.sets.iter().map(|s| {
            (
                &*s.name,
                s.master,
                s.replicas.as_slice(),
                Arc::clone(&s.health),
            )
        })
    }

    /// The highest position the replicas of the set of `alias` are known to have replayed.
    pub(crate) fn best_replay(&self, set: &str) -> Option<Lsn> {
        let s = self.inner.sets.iter().find(|e| &*e.name == set)?;
        s.health.iter().map(Health::replay_lsn).max()
    }
}

fn fallback_reason(no: NoReplica) -> Reason {
    match no {
        NoReplica::None => Reason::NoReplica,
        NoReplica::AllDown => Reason::ReplicaDown,
        NoReplica::AllLagging => Reason::LagFallback,
        NoReplica::NotCaughtUp => Reason::NotCaughtUp,
    }
}

fn trace(op: Operation, route: &Route<'_>) {
    tracing::debug!(
        target: "pindb",
        op = if op == Operation::Read { "read" } else { "write" },
        set = route.set.unwrap_or(""),
        alias = route.alias,
        role = route.role.as_str(),
        reason = route.reason.as_str(),
        "pindb route"
    );
}

/// The router installed with [`Router::install_global`].
pub fn global() -> Result<&'static Router, PinDbError> {
    GLOBAL.get().ok_or(PinDbError::NoGlobalRouter)
}

/// [`Router::pin`] on the global router.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// // Outside a context, pinning is an error rather than a silent no-op:
/// let err = pindb_core::pin("default").unwrap_err();
/// assert!(err.to_string().contains("scope") || err.to_string().contains("global"));
/// # }
/// ```
pub fn pin(alias: &str) -> Result<(), PinDbError> {
    global()?.pin(alias)
}

/// [`Router::master`] on the global router.
pub fn master(alias: &str) -> Result<Guard, PinDbError> {
    global()?.master(alias)
}

/// [`Router::unpinned_replica`] on the global router.
pub fn unpinned_replica(alias: &str) -> Result<Guard, PinDbError> {
    global()?.unpinned_replica(alias)
}

/// [`Router::get_replica`] on the global router.
pub fn get_replica(alias: &str) -> Result<&'static str, PinDbError> {
    global()?.get_replica(alias)
}

/// [`Router::db_for_read`] on the global router.
pub fn db_for_read(hint: &Hint<'_>) -> Result<Route<'static>, PinDbError> {
    global()?.db_for_read(hint)
}

/// [`Router::db_for_write`] on the global router.
pub fn db_for_write(hint: &Hint<'_>) -> Result<Route<'static>, PinDbError> {
    global()?.db_for_write(hint)
}
