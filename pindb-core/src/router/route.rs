//! The vocabulary of a routing decision: read or write, the hint an adapter passes, delegate
//! routers, and the [`Route`] that comes back (alias, role, reason).

use std::fmt;
use std::sync::Arc;

use crate::classify::{classify, main_table, Dialect, Footprint, StatementKind};
use crate::context::NewPin;

/// Read or write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// A statement [`classify`](crate::adapter::classify) calls a read.
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
    /// A read that tolerates this much lag may use a replica up to it behind (a looser or a
    /// tighter bound than `max_lag_ms`), capped at the configured lag ceiling; a context's
    /// own writes are still never missed.
    pub max_staleness: Option<std::time::Duration>,
    /// Every relation the read names and function it calls, when known: a replica that
    /// carries only some tables (a logical replica) serves the read only when it carries all
    /// of them. `None`: not known, so only replicas that carry every table serve it.
    pub footprint: Option<&'a Footprint>,
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

    /// Bounded staleness for this read (CockroachDB's bounded-staleness reads).
    ///
    /// ```
    /// use std::time::Duration;
    /// let hint = pindb_core::Hint::default().with_max_staleness(Duration::from_secs(30));
    /// assert_eq!(hint.max_staleness, Some(Duration::from_secs(30)));
    /// ```
    pub fn with_max_staleness(self, max_staleness: std::time::Duration) -> Self {
        Hint {
            max_staleness: Some(max_staleness),
            ..self
        }
    }

    /// Adds the read's footprint (see [`Footprint::of_sql`]).
    pub fn with_footprint(self, footprint: Option<&'a Footprint>) -> Self {
        Hint { footprint, ..self }
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
/// let router = Router::builder(config).delegate(by_table).build()?;
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
    /// A replica refused the statement because it writes (a function that writes, a view
    /// over `nextval()`...): it runs on the master under the write rules.
    ReplicaRefused,
    /// The replica this context read from failed (no connection, no answer, a recovery
    /// conflict) or became unfit after it had read from it: the master serves the set's
    /// reads for the rest of the context.
    ReplicaFailed,
    /// The set's replicas are switched off (`Topology::set_replicas_enabled`): the master
    /// serves every read.
    ReplicasDisabled,
    /// The read names a table (or calls a function) that the context's replica does not
    /// carry, nor any other it could use (a logical replica's publications): the master
    /// serves it.
    NotReplicated,
    /// The master already served this context a read of the set (a pin, a guard, the kill
    /// switch, no fit replica at that moment...): a replica may be behind what it saw, so the
    /// master serves the set's reads for the rest of the context (monotonic reads).
    Monotonic,
}

impl Reason {
    /// Every reason, at its [`Reason::index`].
    pub(crate) const ALL: [Reason; 19] = [
        Reason::Disabled,
        Reason::Unmanaged,
        Reason::Pinned,
        Reason::MasterGuard,
        Reason::ReplicaGuard,
        Reason::Replica,
        Reason::ExplicitReplica,
        Reason::NoReplica,
        Reason::GreedyPin,
        Reason::NoContextWrite,
        Reason::ReplicaDown,
        Reason::LagFallback,
        Reason::NotCaughtUp,
        Reason::StoreUnavailable,
        Reason::ReplicaRefused,
        Reason::ReplicaFailed,
        Reason::ReplicasDisabled,
        Reason::NotReplicated,
        Reason::Monotonic,
    ];

    /// Its position in [`Reason::ALL`]; exhaustive, so a new reason must be placed there.
    pub(crate) fn index(self) -> usize {
        match self {
            Reason::Disabled => 0,
            Reason::Unmanaged => 1,
            Reason::Pinned => 2,
            Reason::MasterGuard => 3,
            Reason::ReplicaGuard => 4,
            Reason::Replica => 5,
            Reason::ExplicitReplica => 6,
            Reason::NoReplica => 7,
            Reason::GreedyPin => 8,
            Reason::NoContextWrite => 9,
            Reason::ReplicaDown => 10,
            Reason::LagFallback => 11,
            Reason::NotCaughtUp => 12,
            Reason::StoreUnavailable => 13,
            Reason::ReplicaRefused => 14,
            Reason::ReplicaFailed => 15,
            Reason::ReplicasDisabled => 16,
            Reason::NotReplicated => 17,
            Reason::Monotonic => 18,
        }
    }

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
            Reason::ReplicaRefused => "replica-refused",
            Reason::ReplicaFailed => "replica-failed",
            Reason::ReplicasDisabled => "replicas-disabled",
            Reason::NotReplicated => "not-replicated",
            Reason::Monotonic => "monotonic",
        }
    }
}

/// A routing decision: the alias to use, its role, its set, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route<'r> {
    /// The alias whose pool should run the statement.
    pub alias: &'r str,
    /// Position of that alias in [`Topology::databases`](crate::adapter::Topology::databases),
    /// so adapters can keep their pools in a
    /// `Vec` and skip a lookup by name.
    pub index: usize,
    /// The set it belongs to (`None` for unmanaged aliases).
    pub set: Option<&'r str>,
    /// Master, replica or unmanaged.
    pub role: Role,
    /// Why.
    pub reason: Reason,
    /// [`Topology::epoch`](crate::adapter::Topology::epoch) of its set, read before the
    /// decision: hand it to [`PoolTable::get`](crate::adapter::PoolTable::get), which
    /// refuses a runtime replica whose set's hosts changed since (the read is then routed
    /// again), so a replica chosen for what was known of one host never runs it on another.
    pub epoch: u64,
    /// For a write that pinned its set in its context (greedy mode, or a carried pin made
    /// new): hand it to [`Router::write_not_sent`](crate::Router::write_not_sent) when the
    /// write never reached the server (its checkout failed), so nothing stays pinned.
    pub pin: Option<NewPin>,
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

/// What an adapter knows about one statement before it runs: read or write, and its main
/// table (only looked for when delegates need it). Adapters that cache it per statement type
/// route it with [`Router::route_shape`](crate::Router::route_shape).
///
/// ```
/// use pindb_core::{adapter::Shape, Operation};
///
/// let shape = Shape::of_sql("INSERT INTO notes (body) VALUES ($1)", true);
/// assert_eq!(shape.op, Operation::Write);
/// assert_eq!(shape.table.as_deref(), Some("notes"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    /// Read or write, by pindb's classifier.
    pub op: Operation,
    /// The main table, when asked for and found.
    pub table: Option<Arc<str>>,
    /// A read's relations and functions, worked out only when some replica carries only
    /// some tables ([`Router::shape_of`](crate::Router::shape_of) knows).
    pub footprint: Option<Arc<Footprint>>,
}

impl Shape {
    /// Classifies `sql` (PostgreSQL); looks for its main table only `with_table` (it costs a
    /// second scan).
    pub fn of_sql(sql: &str, with_table: bool) -> Shape {
        Shape {
            op: match classify(sql) {
                StatementKind::Read => Operation::Read,
                StatementKind::Write => Operation::Write,
            },
            table: with_table.then(|| main_table(sql).map(Arc::from)).flatten(),
            footprint: None,
        }
    }

    /// [`Shape::of_sql`] in `dialect`.
    pub fn of_sql_in(dialect: Dialect, sql: &str, with_table: bool) -> Shape {
        if dialect == Dialect::Postgres {
            return Shape::of_sql(sql, with_table);
        }
        Shape {
            op: match dialect.classify(sql) {
                StatementKind::Read => Operation::Read,
                StatementKind::Write => Operation::Write,
            },
            table: with_table
                .then(|| dialect.main_table(sql).map(Arc::from))
                .flatten(),
            footprint: None,
        }
    }

    /// A statement known to be `op`, with no table (a transaction, an explicit checkout).
    pub fn of(op: Operation) -> Shape {
        Shape {
            op,
            table: None,
            footprint: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Reason;

    #[test]
    fn every_reason_is_listed_at_its_own_index() {
        for (i, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), i, "{reason:?}");
        }
    }
}
