//! The topology: every alias of the config, which set each belongs to and in what role, and
//! one health cell per replica (written by the monitor, read by every routing decision).
//!
//! Built once from the [`Config`]; it does no I/O and makes no decision.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::backend::Backend;
use crate::classify::Footprint;
use crate::config::Config;
use crate::coverage::Coverage;
use crate::discovery::Slot;
use crate::domain::SetDomain;
use crate::error::PinDbError;
use crate::lsn::Lsn;
use crate::populate::{Database, Membership};
use crate::replica::{Health, Picker, ReplicaStatus};
use crate::roles::Roles;

mod runtime;

/// What an alias names.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target {
    /// A set, by its master's alias (the set's name).
    Set(usize),
    /// One replica of a set.
    Replica { set: usize, replica: usize },
    /// A database outside every set, by its index in `databases`.
    Unmanaged(usize),
}

/// One set: its master, its replicas and their health.
pub(crate) struct SetEntry {
    pub(crate) name: Arc<str>,
    /// Index into `databases` of the configured master (the first host of a discovered set).
    configured_master: usize,
    /// Indexes into `databases`, in replica order (every host, for a discovered set).
    pub(crate) replicas: Vec<usize>,
    /// A set given as a list of hosts: which one is the primary, found by the monitor.
    pub(crate) roles: Option<Arc<Roles>>,
    /// Parallel to `replicas`; written by the monitor.
    pub(crate) health: Arc<[Health]>,
    /// Parallel to `replicas`: the tables each carries (learned by the monitor for logical
    /// replicas).
    pub(crate) coverage: Arc<[Coverage]>,
    /// Whether some replica may carry only some tables (a logical one): only then does a
    /// read's footprint matter.
    pub(crate) partial: bool,
    /// Parallel to `replicas`: a context recorded a write position, check again soon.
    pub(crate) written: Arc<[tokio::sync::Notify]>,
    pub(crate) picker: Picker,
    /// The kill switch: `false` sends every read of the set to its master.
    replicas_enabled: AtomicBool,
    /// Positions in `replicas` of the runtime replica slots (`[masters.<set>.discovery]`).
    pub(crate) runtime: Range<usize>,
    /// Taken while the runtime replicas change: one list replaces another whole.
    assigning: Mutex<()>,
    /// Bumped at every change of one of its runtime replicas' hosts (see [`Topology::epoch`]).
    epoch: Arc<AtomicU64>,
    /// MariaDB: the set's replication domain, and what its master has outside it.
    pub(crate) gtid: Arc<SetDomain>,
}

impl SetEntry {
    /// Index into `databases` of the master now; `None` while a set given as hosts has no
    /// primary (a failover in progress, a split brain on one timeline).
    pub(crate) fn master(&self) -> Option<usize> {
        match &self.roles {
            None => Some(self.configured_master),
            Some(roles) => roles.primary().map(|h| self.replicas[h]),
        }
    }

    /// The error for a write (or a master read) while there is no primary: retryable.
    pub(crate) fn no_primary(&self, databases: &[Database]) -> PinDbError {
        PinDbError::NoPrimary {
            set: self.name.to_string(),
            hosts: self
                .replicas
                .iter()
                .map(|&i| databases[i].redacted_url())
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    /// Whether replica `r` (index among the set's) carries what a read with this footprint
    /// reads.
    pub(crate) fn covers(&self, r: usize, footprint: Option<&Footprint>) -> bool {
        !self.partial || self.coverage[r].covers(footprint)
    }

    /// See [`Topology::epoch`].
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    pub(crate) fn replicas_enabled(&self) -> bool {
        self.replicas_enabled.load(Ordering::Relaxed)
    }
}

/// The alias table of a router: what adapters open pools for, and what the monitor watches.
///
/// ```
/// let config = pindb_core::Config::single_set("postgres://m/app", ["postgres://r/app"]);
/// let router = pindb_core::Router::new(config)?;
/// let topology = router.topology();
/// assert_eq!(topology.index_of("default-1")?, 1);
/// assert!(topology.is_set("default"));
/// assert!(topology.replica_status("default-1")?.unwrap().up);
/// # Ok::<(), pindb_core::PinDbError>(())
/// ```
pub struct Topology {
    databases: Vec<Database>,
    by_alias: HashMap<String, Target>,
    sets: Vec<SetEntry>,
    default: Target,
    /// Some set has a logical replica (reads need their footprint); fixed by the config.
    partial: bool,
    /// Parallel to `databases`: the index of each one's set (none for unmanaged ones), so
    /// that a per-statement question about a database finds its set without a search.
    set_of: Vec<Option<usize>>,
    /// Parallel to `databases`: the slot of each runtime replica (none for the others).
    slots: Vec<Option<Arc<Slot>>>,
    /// Bumped whenever a runtime replica's host changes (see [`Topology::runtime_changes`]).
    runtime_changes: AtomicU64,
    /// `emulate_replicas`: runtime replicas are off.
    emulated: bool,
}

impl std::fmt::Debug for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topology")
            .field("databases", &self.databases)
            .finish_non_exhaustive()
    }
}

impl Topology {
    /// The alias table of a validated config.
    pub(crate) fn new(config: &Config) -> Result<Topology, PinDbError> {
        let databases = config.databases()?;
        if let Some(other) = databases
            .iter()
            .find(|db| db.backend != databases[0].backend)
        {
            return Err(PinDbError::config(
                other.alias.clone(),
                format!(
                    "it is {} and `{}` is {}: one router routes one kind of database (its \
                     statements are classified in one SQL dialect); build a router per kind",
                    other.backend.name(),
                    databases[0].alias,
                    databases[0].backend.name()
                ),
            ));
        }
        let mut sets: Vec<SetEntry> = Vec::new();
        let mut by_alias = HashMap::new();
        for (i, db) in databases.iter().enumerate() {
            if let Membership::Host { set, index: 1 } | Membership::Master { set } = &db.membership
            {
                by_alias.insert(set.clone(), Target::Set(sets.len()));
                sets.push(SetEntry {
                    name: Arc::from(set.as_str()),
                    configured_master: i,
                    replicas: Vec::new(),
                    roles: None,
                    health: Arc::from([]),
                    coverage: Arc::from([]),
                    partial: false,
                    written: Arc::from([]),
                    picker: Picker::default(),
                    replicas_enabled: AtomicBool::new(true),
                    runtime: 0..0,
                    assigning: Mutex::new(()),
                    epoch: Arc::new(AtomicU64::new(0)),
                    gtid: Arc::default(),
                });
            }
            // Every host of a set given as hosts is a replica slot too: a standby serves
            // reads, the primary's slot is down (set below and by the monitor).
            match &db.membership {
                Membership::Replica { set, .. } | Membership::Host { set, .. } => {
                    // populate_replicas yields each master (or first host) before the rest.
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
                Membership::Master { .. } => {}
            }
        }
        for set in &mut sets {
            set.health = set.replicas.iter().map(|_| Health::default()).collect();
            let runtime: Vec<usize> = (0..set.replicas.len())
                .filter(|&r| databases[set.replicas[r]].runtime)
                .collect();
            if let (Some(&first), Some(&last)) = (runtime.first(), runtime.last()) {
                set.runtime = first..last + 1;
                // No host yet: nothing to read from.
                runtime.iter().for_each(|&r| set.health[r].set_down());
            }
            set.coverage = set
                .replicas
                .iter()
                .map(|&i| match databases[i].is_logical() {
                    true => Coverage::learned(),
                    false => Coverage::Everything,
                })
                .collect();
            set.partial = set.replicas.iter().any(|&i| databases[i].is_logical());
            set.written = set
                .replicas
                .iter()
                .map(|_| tokio::sync::Notify::new())
                .collect();
            if databases[set.configured_master].is_host() {
                let hosts = set
                    .replicas
                    .iter()
                    .map(|&i| {
                        let db = &databases[i];
                        format!("{} ({}:{})", db.alias, db.host, db.port)
                    })
                    .collect();
                set.roles = Some(Arc::new(Roles::new(hosts)));
                // The first host is taken as the primary until checked: not a replica.
                set.health[0].set_down();
            }
        }
        let default = *by_alias
            .get("default")
            .ok_or_else(|| PinDbError::config("default", "no `default` database"))?;
        let set_of: Vec<Option<usize>> = databases
            .iter()
            .map(|db| {
                db.set()
                    .and_then(|n| sets.iter().position(|e| &*e.name == n))
            })
            .collect();
        Ok(Topology {
            partial: sets.iter().any(|s| s.partial),
            slots: databases
                .iter()
                .zip(&set_of)
                .map(|(db, s)| {
                    let epoch = s.map(|s| Arc::clone(&sets[s].epoch))?;
                    db.runtime.then(|| Arc::new(Slot::vacant(epoch)))
                })
                .collect(),
            set_of,
            runtime_changes: AtomicU64::new(0),
            emulated: config.emulate_replicas > 0,
            databases,
            by_alias,
            sets,
            default,
        })
    }

    /// Every database, in `populate_replicas` order: each master, then its replicas, then the
    /// unmanaged ones. Adapters keep their pools in a `Vec` in this order.
    pub fn databases(&self) -> &[Database] {
        &self.databases
    }

    /// The database every set runs (one per router).
    pub fn backend(&self) -> Backend {
        self.databases
            .first()
            .map(|db| db.backend)
            .unwrap_or_default()
    }

    /// The database behind an alias.
    pub fn database(&self, alias: &str) -> Result<&Database, PinDbError> {
        Ok(&self.databases[self.index_of(alias)?])
    }

    /// The position of an alias in [`Topology::databases`] (what [`Route::index`](crate::Route::index) holds).
    pub fn index_of(&self, alias: &str) -> Result<usize, PinDbError> {
        Ok(match self.target(alias)? {
            Target::Set(s) => {
                let set = &self.sets[s];
                set.master()
                    .ok_or_else(|| set.no_primary(&self.databases))?
            }
            Target::Replica { set, replica } => self.sets[set].replicas[replica],
            Target::Unmanaged(i) => i,
        })
    }

    /// Whether `name` is a set (a master's alias).
    pub fn is_set(&self, name: &str) -> bool {
        self.sets.iter().any(|s| &*s.name == name)
    }

    /// Health of a replica alias; `None` for masters and unmanaged aliases.
    pub fn replica_status(&self, alias: &str) -> Result<Option<ReplicaStatus>, PinDbError> {
        Ok(match self.target(alias)? {
            Target::Replica { set, replica } => Some(self.sets[set].health[replica].status()),
            _ => None,
        })
    }

    /// The alias of the database that takes the writes of `set` now: its master, or for a set
    /// given as hosts the primary the monitor found (`None` while there is none).
    ///
    /// ```
    /// let config = pindb_core::Config::from_toml_str(r#"
    ///     [masters.default]
    ///     url = "postgres://app@db1:5432,db2:5432/app"
    /// "#)?;
    /// let router = pindb_core::Router::new(config)?;
    /// // Before the monitor's first check, the first host is taken as the primary.
    /// assert_eq!(router.topology().primary("default")?, Some("default-1"));
    /// assert!(router.topology().split_brain("default")?.is_empty());
    /// # Ok::<(), pindb_core::PinDbError>(())
    /// ```
    pub fn primary(&self, set: &str) -> Result<Option<&str>, PinDbError> {
        let entry = &self.sets[self.managed_set(set)?];
        Ok(entry.master().map(|i| self.databases[i].alias.as_str()))
    }

    /// The hosts of a set given as hosts that are writable but not its primary (a former
    /// primary that came back: a split brain). pindb never writes to them; this reports them.
    pub fn split_brain(&self, set: &str) -> Result<Vec<&str>, PinDbError> {
        let entry = &self.sets[self.managed_set(set)?];
        Ok(match &entry.roles {
            None => Vec::new(),
            Some(roles) => roles
                .split_brain()
                .into_iter()
                .map(|h| self.databases[entry.replicas[h]].alias.as_str())
                .collect(),
        })
    }

    /// Whether the database at `index` is a replica now: a configured replica, or a host of a
    /// set given as hosts that is not its primary at this moment. Adapters retry a failed
    /// read elsewhere only there.
    pub fn is_replica_now(&self, index: usize) -> bool {
        let db = &self.databases[index];
        match &db.membership {
            Membership::Replica { .. } => true,
            Membership::Host { .. } => {
                self.set_of[index].is_some_and(|s| self.sets[s].master() != Some(index))
            }
            Membership::Master { .. } | Membership::Unmanaged => false,
        }
    }

    /// Whether the database at `index` is a replica the monitor has declared down (see
    /// [`Router::watch_replica_read`](crate::Router::watch_replica_read)).
    pub(crate) fn declared_down(&self, index: usize) -> bool {
        let Some(set) = self.set_entry_of(index) else {
            return false;
        };
        set.replicas
            .iter()
            .position(|&i| i == index)
            .is_some_and(|r| set.health[r].declared_down())
    }

    /// What the database at `index` is now, in words: `master`, `replica` (a discovered set's
    /// hosts: by their role at this moment) or `unmanaged database`.
    pub fn role_of(&self, index: usize) -> &'static str {
        match self.databases[index].membership {
            Membership::Unmanaged => "unmanaged database",
            _ if self.is_replica_now(index) => "replica",
            _ => "master",
        }
    }

    /// The kill switch: `enabled = false` sends every read of `set` (every set, with `None`)
    /// to its master at once, for an incident; `true` lets replicas serve again.
    pub fn set_replicas_enabled(&self, set: Option<&str>, enabled: bool) -> Result<(), PinDbError> {
        let sets: Vec<&SetEntry> = match set {
            None => self.sets.iter().collect(),
            Some(alias) => vec![&self.sets[self.managed_set(alias)?]],
        };
        for entry in sets {
            entry.replicas_enabled.store(enabled, Ordering::Relaxed);
            tracing::warn!(target: "pindb", set = %entry.name, enabled, "pindb: replicas switched");
        }
        Ok(())
    }

    /// Takes a replica out of rotation (maintenance) or, with `drained = false`, back in. New
    /// contexts skip it at once; a context reading from it moves to the master (another
    /// replica could be behind what it read).
    pub fn drain(&self, alias: &str, drained: bool) -> Result<(), PinDbError> {
        match self.target(alias)? {
            Target::Replica { set, replica } => {
                self.sets[set].health[replica].set_drained(drained);
                Ok(())
            }
            _ => Err(PinDbError::config(
                alias,
                "only a replica can be drained; to send a set's reads to its master, use \
                 `set_replicas_enabled`",
            )),
        }
    }

    pub(crate) fn target(&self, alias: &str) -> Result<Target, PinDbError> {
        self.by_alias
            .get(alias)
            .copied()
            .ok_or_else(|| PinDbError::UnknownAlias {
                alias: alias.to_owned(),
                known: self
                    .databases
                    .iter()
                    .map(|d| d.alias.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// The set an alias belongs to: [`PinDbError::NotManaged`] for an unmanaged alias.
    pub(crate) fn managed_set(&self, alias: &str) -> Result<usize, PinDbError> {
        match self.target(alias)? {
            Target::Set(s) | Target::Replica { set: s, .. } => Ok(s),
            Target::Unmanaged(_) => Err(PinDbError::NotManaged {
                alias: alias.to_owned(),
            }),
        }
    }

    /// What a hint naming no alias and answered by no delegate routes to.
    pub(crate) fn default_target(&self) -> Target {
        self.default
    }

    /// The set of the database at `index` (`None`: unmanaged).
    pub(crate) fn set_entry_of(&self, index: usize) -> Option<&SetEntry> {
        self.set_of
            .get(index)
            .copied()
            .flatten()
            .map(|s| &self.sets[s])
    }

    pub(crate) fn sets(&self) -> &[SetEntry] {
        &self.sets
    }

    pub(crate) fn set(&self, s: usize) -> &SetEntry {
        &self.sets[s]
    }

    pub(crate) fn set_named(&self, name: &str) -> Option<&SetEntry> {
        self.sets.iter().find(|e| &*e.name == name)
    }

    /// Whether any set has a logical replica: only then do reads need their footprint.
    pub(crate) fn has_partial(&self) -> bool {
        self.partial
    }

    /// The highest position the replicas of `set` are known to have replayed.
    /// Whether the replicas of `set` are switched on (the kill switch): a wait for one to
    /// catch up is pointless otherwise. (A replica that is down may come back meanwhile: the
    /// monitor runs while a context waits.)
    pub(crate) fn may_serve_reads(&self, set: &str) -> bool {
        self.set_named(set).is_some_and(SetEntry::replicas_enabled)
    }

    pub(crate) fn best_replay(&self, set: &str) -> Option<Lsn> {
        self.set_named(set)?
            .health
            .iter()
            .map(Health::replay_lsn)
            .max()
    }
}
