//! The topology's runtime replicas (`[masters.<set>.discovery]`): the host behind each slot
//! now, its generation and its set's epoch, and the changes `set_replicas` and DNS make.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use super::{SetEntry, Target, Topology};
use crate::discovery::{self, DatabaseRef, Slot};
use crate::error::PinDbError;
use crate::populate::Database;

impl Topology {
    /// How many times the host behind `index` changed: 0 for every database but a runtime
    /// replica (`[masters.<set>.discovery]`). An adapter that built a pool for one
    /// generation builds another when this moves, and lets the old one close once its
    /// connections come back.
    pub fn generation(&self, index: usize) -> u64 {
        self.slots
            .get(index)
            .and_then(Option::as_ref)
            .map_or(0, |s| s.generation())
    }

    /// The database at `index` as it is now, with its [`Topology::generation`]: for a runtime
    /// replica, its current host ([`PinDbError::NoHost`] while it has none); for any other,
    /// [`Topology::databases`]' entry.
    ///
    /// ```
    /// let config = pindb_core::Config::from_toml_str(r#"
    ///     [masters.default]
    ///     url = "postgres://app@db0:5432/app"
    ///     discovery = { max_replicas = 2 }
    ///     [sets]
    ///     default = []
    /// "#)?;
    /// let router = pindb_core::Router::new(config)?;
    /// let index = router.topology().index_of("default-1")?;
    /// assert!(router.topology().database_now(index).is_err(), "no host yet");
    /// router.set_replicas("default", ["db7", "db8:6432"])?;
    /// let (generation, db) = router.topology().database_now(index)?;
    /// assert_eq!((generation, db.host.as_str(), db.port), (1, "db7", 5432));
    /// # Ok::<(), pindb_core::PinDbError>(())
    /// ```
    pub fn database_now(&self, index: usize) -> Result<(u64, DatabaseRef<'_>), PinDbError> {
        discovery::database_now(
            self.database_at(index)?,
            self.slots.get(index).and_then(Option::as_deref),
            None,
        )
    }

    /// [`Topology::database_now`] for a route decided at `epoch` ([`Route::epoch`](crate::Route::epoch)):
    /// [`PinDbError::NoHost`] for a runtime replica if a runtime host of its set changed since.
    pub(crate) fn database_for(
        &self,
        index: usize,
        epoch: u64,
    ) -> Result<(u64, DatabaseRef<'_>), PinDbError> {
        discovery::database_now(
            self.database_at(index)?,
            self.slots.get(index).and_then(Option::as_deref),
            Some(epoch),
        )
    }

    fn database_at(&self, index: usize) -> Result<&Database, PinDbError> {
        self.databases
            .get(index)
            .ok_or_else(|| PinDbError::UnknownAlias {
                alias: format!("#{index}"),
                known: format!("indexes 0..{}", self.databases.len()),
            })
    }

    /// The epoch of the set of the database at `index`: how many times one of the set's
    /// runtime replicas changed host (0 for a set without any, or an unmanaged database).
    /// A [`Route`](crate::Route) carries it as read before the decision.
    pub fn epoch(&self, index: usize) -> u64 {
        self.set_of
            .get(index)
            .copied()
            .flatten()
            .map_or(0, |s| self.sets[s].epoch.load(Ordering::Acquire))
    }

    /// How many times any runtime replica's host changed: an adapter that sees it move drops
    /// the pools of hosts that left (see [`PoolTable`](crate::adapter::PoolTable)).
    pub fn runtime_changes(&self) -> u64 {
        self.runtime_changes.load(Ordering::Acquire)
    }

    /// The slot of a runtime replica, for the monitor.
    pub(crate) fn slot(&self, index: usize) -> Option<&Arc<Slot>> {
        self.slots.get(index).and_then(Option::as_ref)
    }

    /// The set named `set`, if it has runtime replica slots; else an error that says how to
    /// give it some.
    fn runtime_set(&self, set: &str) -> Result<&SetEntry, PinDbError> {
        let Some(Target::Set(s)) = self.by_alias.get(set).copied() else {
            return Err(match self.target(set) {
                Err(e) => e,
                Ok(_) => PinDbError::config(
                    set,
                    "runtime replicas belong to a set: name the set (its master's alias)",
                ),
            });
        };
        let entry = &self.sets[s];
        match (entry.runtime.is_empty(), self.emulated) {
            (false, _) => Ok(entry),
            (true, true) => Err(PinDbError::config(
                set,
                "runtime replicas are off under emulate_replicas: the emulated replica stands \
                 for every replica of the set",
            )),
            (true, false) => Err(PinDbError::config(
                set,
                format!(
                    "set `{set}` has no runtime replica slots; add [masters.{set}.discovery] \
                     (max_replicas = N) to its config"
                ),
            )),
        }
    }

    /// `hosts` as `set`'s runtime replicas would take them (`host`, `host:port`, `[v6]:port`;
    /// without a port, the master's), repeats removed.
    pub(crate) fn replica_hosts<S: AsRef<str>>(
        &self,
        set: &str,
        hosts: impl IntoIterator<Item = S>,
    ) -> Result<Vec<(String, u16)>, PinDbError> {
        let entry = self.runtime_set(set)?;
        let port = self.databases[entry.replicas[entry.runtime.start]].port;
        discovery::parse_hosts(set, hosts, port)
    }

    /// Makes `wanted` the runtime replicas of `set`: see
    /// [`Router::set_replicas`](crate::Router::set_replicas). `at_once`: a new host serves
    /// before any check (no monitor runs to check it). `source` says who asked, for the log.
    /// Returns the aliases whose host changed.
    pub(crate) fn set_replicas(
        &self,
        set: &str,
        wanted: &[(String, u16)],
        at_once: bool,
        source: &str,
    ) -> Result<Vec<String>, PinDbError> {
        let entry = self.runtime_set(set)?;
        let _one_at_a_time = entry
            .assigning
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let indexes = &entry.replicas[entry.runtime.clone()];
        let slots: Vec<&Slot> = indexes
            .iter()
            .filter_map(|&i| self.slots[i].as_deref())
            .collect();
        let now: Vec<_> = slots.iter().map(|slot| slot.address()).collect();
        let moves = discovery::plan(&now, wanted).map_err(|n| {
            PinDbError::config(
                set,
                format!(
                    "{n} replica hosts do not fit in the set's {} runtime slots; nothing \
                     changed: raise discovery.max_replicas",
                    indexes.len()
                ),
            )
        })?;
        if !moves.is_empty() {
            self.runtime_changes.fetch_add(1, Ordering::AcqRel);
        }
        let mut changed = Vec::new();
        for (slot, address) in &moves {
            let r = entry.runtime.start + slot;
            let template = &self.databases[indexes[*slot]];
            // Out of rotation with everything known of its old host, in the same step as
            // the host changes.
            slots[*slot].assign(template, address.as_ref(), || {
                entry.health[r].reset(at_once && address.is_some())
            });
            // The monitor checks it now rather than at its next interval.
            entry.written[r].notify_one();
            let host = match address {
                Some((h, p)) => format!("{h}:{p}"),
                None => "none".to_owned(),
            };
            let alias = &template.alias;
            tracing::info!(target: "pindb", %set, %alias, %host, %source, "pindb: runtime replica changed");
            metrics::counter!("pindb_runtime_replica_changes_total", "set" => set.to_owned())
                .increment(1);
            changed.push(alias.clone());
        }
        Ok(changed)
    }

    /// The hosts of `set`'s runtime replicas now, `(alias, host:port)` in slot order (empty
    /// slots left out).
    pub fn runtime_replicas(&self, set: &str) -> Result<Vec<(&str, String)>, PinDbError> {
        let entry = &self.sets[self.managed_set(set)?];
        Ok(entry.replicas[entry.runtime.clone()]
            .iter()
            .filter_map(|&i| {
                let db = self.slots[i].as_ref()?.now().1?;
                Some((
                    self.databases[i].alias.as_str(),
                    format!("{}:{}", db.host, db.port),
                ))
            })
            .collect())
    }
}
