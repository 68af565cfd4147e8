//! Runtime replicas: hosts that join and leave a set while the service runs, from
//! [`Router::set_replicas`](crate::Router::set_replicas) or from DNS (`[masters.<set>.discovery]`).
//!
//! Each runtime replica takes a *slot*: an alias fixed at start-up (`<set>-<n>`, with its own
//! health cell, pool and monitor task) whose host changes. A slot carries a generation,
//! bumped at every change, so that whoever holds something built for its old host (an
//! adapter's pool, a probe, a check under way) sees that it is stale. A host that stays in
//! the list keeps its slot, so its pool and its health survive every refresh; a removed
//! host's slot is emptied at once for new reads, while the connections its pool lent out
//! finish their work and close when they come back (the pool lives as long as they do).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use crate::error::PinDbError;
use crate::populate::Database;

/// One runtime replica slot: the host it points at now, if any.
#[derive(Debug)]
pub(crate) struct Slot {
    /// Mirrors `now.0`: read on every checkout without the lock.
    generation: AtomicU64,
    now: RwLock<(u64, Option<Arc<Database>>)>,
    /// Its set's epoch ([`Topology::epoch`](crate::adapter::Topology::epoch)): bumped at
    /// every change of any of the set's runtime replicas.
    epoch: Arc<AtomicU64>,
}

impl Slot {
    pub(crate) fn vacant(epoch: Arc<AtomicU64>) -> Slot {
        Slot {
            generation: AtomicU64::new(0),
            now: RwLock::new((0, None)),
            epoch,
        }
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The generation and the host, read together.
    pub(crate) fn now(&self) -> (u64, Option<Arc<Database>>) {
        self.now
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Runs `record` if the slot still points at the host of `generation`, under the lock
    /// that [`Slot::assign`] takes: what a check of a host learned is never recorded after
    /// the slot moved to another.
    pub(crate) fn if_current<R>(&self, generation: u64, record: impl FnOnce() -> R) -> Option<R> {
        let now = self.now.read().unwrap_or_else(PoisonError::into_inner);
        (now.0 == generation).then(record)
    }

    /// `host:port` of the host now, if any.
    pub(crate) fn address(&self) -> Option<(String, u16)> {
        self.now().1.map(|db| (db.host.clone(), db.port))
    }

    /// Points the slot at `db`. Under the same lock, `forget` runs first (what was known of
    /// the old host goes in one step with it, see [`Slot::if_current`]) and the set's epoch
    /// moves last, so that [`Slot::now_for`] sees the new host only with the new epoch.
    /// The host is `address`, opened with `template`'s settings (none: the slot is empty).
    pub(crate) fn assign(
        &self,
        template: &Database,
        address: Option<&(String, u16)>,
        forget: impl FnOnce(),
    ) {
        let db = address.map(|(host, port)| Database {
            host: host.clone(),
            port: *port,
            ..template.clone()
        });
        let mut now = self.now.write().unwrap_or_else(PoisonError::into_inner);
        forget();
        let generation = now.0 + 1;
        *now = (generation, db.map(Arc::new));
        self.generation.store(generation, Ordering::Release);
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// [`Slot::now`] for a route decided at its set's `epoch`: `None` if a runtime host of
    /// the set changed since (what the route was decided on may be of another host).
    pub(crate) fn now_for(&self, epoch: u64) -> Option<(u64, Option<Arc<Database>>)> {
        let now = self.now.read().unwrap_or_else(PoisonError::into_inner);
        (self.epoch.load(Ordering::Acquire) == epoch).then(|| now.clone())
    }
}

/// What [`plan`] decided for a set's slots: `(slot, new host)` for each slot that changes
/// (`None`: emptied).
pub(crate) type Moves = Vec<(usize, Option<(String, u16)>)>;

/// Parses `hosts` (`host`, `host:port`, `[v6]:port`; without a port, `default_port`) and
/// removes repeats. An error names the entry and the fix.
pub(crate) fn parse_hosts<S: AsRef<str>>(
    set: &str,
    hosts: impl IntoIterator<Item = S>,
    default_port: u16,
) -> Result<Vec<(String, u16)>, PinDbError> {
    let mut parsed: Vec<(String, u16)> = Vec::new();
    for text in hosts {
        let (host, port) = crate::populate::host_port(set, text.as_ref().trim())?;
        let address = (host, port.unwrap_or(default_port));
        if !parsed.contains(&address) {
            parsed.push(address);
        }
    }
    Ok(parsed)
}

/// Which slots change so that `slots` hold exactly `wanted`: a host already in a slot stays
/// there, a host no longer wanted leaves its slot empty, a new host takes an empty slot
/// (the one emptied longest ago first, so a check of a removed host still under way does not
/// meet its successor). `Err` with the number of hosts when they do not fit.
pub(crate) fn plan(
    current: &[Option<(String, u16)>],
    wanted: &[(String, u16)],
) -> Result<Moves, usize> {
    if wanted.len() > current.len() {
        return Err(wanted.len());
    }
    let mut moves = Vec::new();
    let (mut vacant, mut emptied) = (Vec::new(), Vec::new());
    for (s, now) in current.iter().enumerate() {
        match now {
            Some(address) if wanted.contains(address) => {}
            Some(_) => {
                moves.push((s, None));
                emptied.push(s);
            }
            None => vacant.push(s),
        }
    }
    let mut free = vacant.into_iter().chain(emptied);
    for address in wanted {
        if !current.iter().any(|c| c.as_ref() == Some(address)) {
            // `wanted.len() <= current.len()`, so a slot is free for every new host.
            let Some(s) = free.next() else {
                return Err(wanted.len());
            };
            match moves.iter_mut().find(|(m, _)| *m == s) {
                Some(emptied) => emptied.1 = Some(address.clone()),
                None => moves.push((s, Some(address.clone()))),
            }
        }
    }
    Ok(moves)
}

/// A database as it is now: a fixed one from the topology, or a runtime replica's current
/// host (shared, not copied: adapters ask on every checkout).
#[derive(Debug, Clone)]
pub enum DatabaseRef<'a> {
    /// A database whose host never changes.
    Fixed(&'a Database),
    /// A runtime replica, at its host now.
    Runtime(Arc<Database>),
}

impl std::ops::Deref for DatabaseRef<'_> {
    type Target = Database;

    fn deref(&self) -> &Database {
        match self {
            DatabaseRef::Fixed(db) => db,
            DatabaseRef::Runtime(db) => db,
        }
    }
}

/// The database behind a slot now: borrowed for a fixed database, the slot's host for a
/// runtime one; [`PinDbError::NoHost`] for an empty slot, or (with `epoch`) when a runtime
/// host changed since the route was decided.
pub(crate) fn database_now<'a>(
    template: &'a Database,
    slot: Option<&Slot>,
    epoch: Option<u64>,
) -> Result<(u64, DatabaseRef<'a>), PinDbError> {
    let Some(slot) = slot else {
        return Ok((0, DatabaseRef::Fixed(template)));
    };
    let now = match epoch {
        None => Some(slot.now()),
        Some(epoch) => slot.now_for(epoch),
    };
    match now {
        Some((generation, Some(db))) => Ok((generation, DatabaseRef::Runtime(db))),
        _ => Err(PinDbError::NoHost {
            alias: template.alias.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(h: &str, p: u16) -> (String, u16) {
        (h.to_owned(), p)
    }

    #[test]
    fn a_host_that_stays_keeps_its_slot() {
        let current = vec![Some(a("r1", 1)), Some(a("r2", 2)), None];
        let moves = plan(&current, &[a("r2", 2), a("r3", 3)]).unwrap();
        // r1 leaves slot 0; r3 takes the slot that was empty before (2), not r1's.
        assert_eq!(moves, vec![(0, None), (2, Some(a("r3", 3)))]);
        assert_eq!(plan(&current, &[a("r1", 1), a("r2", 2)]).unwrap(), vec![]);
    }

    #[test]
    fn an_emptied_slot_is_taken_last() {
        let current = vec![Some(a("r1", 1)), None];
        let moves = plan(&current, &[a("r4", 4), a("r5", 5)]).unwrap();
        assert_eq!(moves, vec![(0, Some(a("r5", 5))), (1, Some(a("r4", 4)))]);
    }

    #[test]
    fn too_many_hosts_change_nothing() {
        let current = vec![Some(a("r1", 1))];
        assert_eq!(plan(&current, &[a("r1", 1), a("r2", 2)]), Err(2));
        assert_eq!(plan(&current, &[]).unwrap(), vec![(0, None)]);
    }

    #[test]
    fn hosts_parse_with_the_default_port_and_without_repeats() {
        let hosts = parse_hosts(
            "default",
            ["db1", "db1:5432", "[::1]:6000", " db2:7 "],
            5432,
        )
        .unwrap();
        assert_eq!(hosts, vec![a("db1", 5432), a("[::1]", 6000), a("db2", 7)]);
        let e = parse_hosts("default", ["db1:x"], 5432).unwrap_err();
        assert!(e.to_string().contains("db1:x"), "{e}");
    }
}
