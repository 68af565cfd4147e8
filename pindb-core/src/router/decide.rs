//! The decisions themselves: resolving a hint to a set (delegates, the alias table), then the
//! read and write rules (guards, pins, strict or greedy, stickiness) and the replica choice.
//! One uncontended lock on the context per decision, none for a replica read that decides as
//! the context's last one did (`read_again`); no I/O, no allocation after a set's first use in
//! a context.

use std::sync::MutexGuard;

use super::{Hint, Operation, Reason, Role, Route, Router};

use crate::config::RouterMode;
use crate::context::{with_current, Context, GuardKind, Remembered, State, Sticky};
use crate::error::PinDbError;
use crate::replica::NoReplica;
use crate::topology::{SetEntry, Target};

impl Router {
    pub(super) fn resolve(&self, hint: &Hint<'_>, op: Operation) -> Result<Target, PinDbError> {
        if let Some(alias) = hint.alias {
            return self.inner.topology.target(alias);
        }
        for delegate in &self.inner.delegates {
            if let Some(alias) = delegate.route(hint, op) {
                return self.inner.topology.target(alias);
            }
        }
        Ok(self.inner.topology.default_target())
    }

    pub(super) fn route(&self, index: usize, role: Role, reason: Reason) -> Route<'_> {
        let db = &self.inner.topology.databases()[index];
        Route {
            alias: &db.alias,
            index,
            set: db.set(),
            role,
            reason,
            epoch: self.inner.topology.epoch(index),
            pin: None,
        }
    }

    /// The set's master now; [`PinDbError::NoPrimary`] while a set given as hosts has none.
    pub(super) fn master_route(&self, set: usize, reason: Reason) -> Result<Route<'_>, PinDbError> {
        let topology = &self.inner.topology;
        let entry = topology.set(set);
        match entry.master() {
            Some(i) => Ok(self.route(i, Role::Master, reason)),
            None => Err(entry.no_primary(topology.databases())),
        }
    }

    /// `commit`: a read that will run (counted for monotonic reads), not an `explain`.
    pub(super) fn read_route(
        &self,
        hint: &Hint<'_>,
        commit: bool,
    ) -> Result<Route<'_>, PinDbError> {
        let enabled = self.inner.config.enabled;
        let s = match self.resolve(hint, Operation::Read)? {
            Target::Unmanaged(i) => return Ok(self.route(i, Role::Unmanaged, Reason::Unmanaged)),
            Target::Set(s) | Target::Replica { set: s, .. } if !enabled => {
                return self.master_route(s, Reason::Disabled)
            }
            Target::Replica { set, .. } | Target::Set(set)
                if !self.inner.topology.set(set).replicas_enabled() =>
            {
                if commit {
                    self.read_from_master(set);
                }
                return self.master_route(set, Reason::ReplicasDisabled);
            }
            Target::Replica { set, replica } => {
                let i = self.inner.topology.set(set).replicas[replica];
                if self.inner.topology.slot(i).is_some() {
                    return self.runtime_replica_route(set, replica, commit);
                }
                return Ok(self.route(i, Role::Replica, Reason::ExplicitReplica));
            }
            Target::Set(s) => s,
        };
        // Before any replica's health is read (see `Route::epoch`).
        let epoch = self.inner.topology.set(s).epoch();
        if commit {
            if let Some(i) = self.read_again(s, hint) {
                return Ok(Route {
                    epoch,
                    ..self.route(i, Role::Replica, Reason::Replica)
                });
            }
        }
        let name = &self.inner.topology.set(s).name;
        // One lock for guard, pin, stickiness and the replica choice.
        let (reason, pick) = with_current(|ctx| {
            let mut state = ctx.lock();
            let (reason, pick) = match state.guard(name) {
                Some(GuardKind::Master) => (Reason::MasterGuard, None),
                // The guard accepts stale reads: positions are not required, health still is.
                Some(GuardKind::UnpinnedReplica) => (
                    Reason::ReplicaGuard,
                    Some(self.pick_replica(s, Some(&mut state), false, commit, hint.into())),
                ),
                None if state.is_pinned(name) => (Reason::Pinned, None),
                None if state.store_unavailable => (Reason::StoreUnavailable, None),
                None => (
                    Reason::Replica,
                    Some(self.pick_replica(s, Some(&mut state), true, commit, hint.into())),
                ),
            };
            // Whatever sent it there, a read the master serves moves the context past every
            // replica (monotonic reads), tables no replica carries included (a join of one
            // with a carried table shows the carried one as of now). Not when there is no
            // master to serve it (the read fails: nothing was seen).
            let master_serves = !matches!(pick, Some(Ok(_)));
            if commit && master_serves && self.inner.topology.set(s).master().is_some() {
                state.set_mut(name).read_master = true;
            }
            if commit && reason == Reason::Replica && !master_serves {
                self.remember_read(ctx, &state, s);
            }
            (reason, pick)
        })
        .unwrap_or_else(|| {
            (
                Reason::Replica,
                Some(self.pick_replica(s, None, true, commit, hint.into())),
            )
        });
        match pick {
            None => self.master_route(s, reason),
            Some(Ok(i)) => Ok(Route {
                epoch,
                ..self.route(i, Role::Replica, reason)
            }),
            Some(Err(no)) => {
                let reason = fallback_reason(no);
                metrics::counter!("pindb_replica_fallbacks_total", "reason" => reason.as_str())
                    .increment(1);
                self.master_route(s, reason)
            }
        }
    }

    /// The replica the context's last read of set `s` went to, when that read changed
    /// nothing ([`Router::remember_read`]) and a full decision would choose it again: the
    /// context unchanged since (no lock taken on it), no staleness hint, and the replica on
    /// the same host, carrying what this read reads and fit now. Takes no lock.
    fn read_again(&self, s: usize, hint: &Hint<'_>) -> Option<usize> {
        if hint.max_staleness.is_some() {
            return None;
        }
        let memo = with_current(Context::recall_read).flatten()?;
        let set = self.inner.topology.set(s);
        let r = memo.replica.replica;
        let again = memo.set == s
            && set.replicas_enabled()
            && r < set.replicas.len()
            && self.sticky(set, r) == memo.replica
            && set.covers(r, hint.footprint)
            && set.health[r].fit(memo.required);
        again.then(|| set.replicas[r])
    }

    /// After a read of set `s` went to the replica the context keeps (no guard, pin,
    /// fallback or unreadable store: `pick_replica` said so), under the context's lock, its
    /// last change: once the reads are settled, the next read of the set may take the same
    /// decision without the lock ([`Router::read_again`]).
    fn remember_read(&self, ctx: &Context, state: &MutexGuard<'_, State>, s: usize) {
        let Some(entry) = state.entry(&self.inner.topology.set(s).name) else {
            return;
        };
        if let Some(kept) = entry.replica.filter(|_| entry.settled()) {
            let required = entry.required;
            ctx.remember_read(
                state,
                Remembered {
                    set: s,
                    replica: kept,
                    required,
                },
            );
        }
    }

    /// The master serves the current context a read of set `s` (monotonic reads: see
    /// `SetState::read_master`).
    pub(super) fn read_from_master(&self, s: usize) {
        let name = &self.inner.topology.set(s).name;
        with_current(|ctx| ctx.lock().set_mut(name).read_master = true);
    }

    /// `set`'s replica `r` as a context keeps it, now.
    pub(super) fn sticky(&self, set: &SetEntry, r: usize) -> Sticky {
        Sticky {
            router: self.inner.id,
            replica: r,
            generation: self.inner.topology.generation(set.replicas[r]),
        }
    }

    /// A runtime replica named by its alias. Its host changes, so the name says nothing of
    /// what it has replayed: it serves only while it is up and has replayed the context's
    /// position, and, if the context read from it before, still has the same host (monotonic
    /// reads); the set's master serves otherwise.
    fn runtime_replica_route(
        &self,
        s: usize,
        r: usize,
        commit: bool,
    ) -> Result<Route<'_>, PinDbError> {
        let topology = &self.inner.topology;
        let set = topology.set(s);
        let i = set.replicas[r];
        // Before the health is read (see `Route::epoch`).
        let (epoch, now) = (set.epoch(), self.sticky(set, r));
        let health = &set.health[r];
        let verdict = with_current(|ctx| {
            let mut state = ctx.lock();
            let entry = state.set_mut(&set.name);
            let read_before = entry
                .replica
                .filter(|k| k.router == now.router && entry.replica_reads > 0);
            let verdict = match read_before {
                Some(k) if k.replica == r && k != now => Err(Reason::ReplicaFailed),
                // It may be behind what the context read elsewhere (monotonic reads).
                Some(k) if k.replica != r => Err(Reason::Monotonic),
                _ if entry.read_master || entry.failed_over => Err(Reason::Monotonic),
                _ if !health.fit(entry.required) => Err(Reason::NotCaughtUp),
                _ => Ok(()),
            };
            if commit {
                match verdict {
                    Ok(()) => {
                        entry.replica = Some(now);
                        entry.replica_reads = entry.replica_reads.saturating_add(1);
                    }
                    Err(_) => entry.read_master |= set.master().is_some(),
                }
            }
            verdict
        })
        .unwrap_or_else(|| health.fit(None).then_some(()).ok_or(Reason::ReplicaDown));
        match verdict {
            Ok(()) => Ok(Route {
                epoch,
                ..self.route(i, Role::Replica, Reason::ExplicitReplica)
            }),
            Err(_) if !health.status().up => self.master_route(s, Reason::ReplicaDown),
            Err(reason) => self.master_route(s, reason),
        }
    }

    pub(super) fn write_route(
        &self,
        hint: &Hint<'_>,
        commit: bool,
    ) -> Result<Route<'_>, PinDbError> {
        let s = match self.resolve(hint, Operation::Write)? {
            Target::Unmanaged(i) => return Ok(self.route(i, Role::Unmanaged, Reason::Unmanaged)),
            Target::Set(s) | Target::Replica { set: s, .. } => s,
        };
        if !self.inner.config.enabled {
            return self.master_route(s, Reason::Disabled);
        }
        let set = &self.inner.topology.set(s);
        // No primary (a set given as hosts, mid-failover): refused before anything is pinned,
        // since nothing will be written (a pin would send the key's reads to the master for a
        // write that never happened).
        // Read once: the route below is this primary, whatever the monitor decides meanwhile.
        let Some(master) = set.master() else {
            return Err(set.no_primary(self.inner.topology.databases()));
        };
        let strict = self.inner.config.router == RouterMode::Strict;
        let refused = || PinDbError::UnpinnedWrite {
            set: set.name.to_string(),
        };
        let (reason, pin) = with_current(|ctx| {
            let mut state = ctx.lock();
            let guard = state.guard(&set.name);
            // A write to a set carried in from a cookie pins it anew: the client's pin must
            // outlive this write, not the earlier one.
            let reason = match guard {
                Some(GuardKind::Master) => {
                    // What it returns (RETURNING, a transaction's reads) is the master's now:
                    // no replica serves the set again in this context (monotonic reads).
                    if commit {
                        state.set_mut(&set.name).read_master = true;
                        // Not pinned, so never reported: a position learned with an earlier
                        // write of the context would not cover it.
                        state.write_unlearned(&set.name, set.gtid.outside_seen());
                    }
                    return Ok((Reason::MasterGuard, None));
                }
                None if state.is_pinned(&set.name) => Reason::Pinned,
                _ if strict => return Err(refused()),
                _ => Reason::GreedyPin,
            };
            // Taken before the write is sent: see `Consistency::master_positions`.
            let pin = commit.then(|| state.pin_for_write(&set.name, set.gtid.outside_seen()));
            Ok((reason, pin))
        })
        .unwrap_or_else(|| {
            if strict {
                Err(refused())
            } else {
                Ok((Reason::NoContextWrite, None))
            }
        })?;
        Ok(Route {
            pin,
            ..self.route(master, Role::Master, reason)
        })
    }

    /// The database index of the replica set `s` reads from: inside a context, chosen once
    /// and kept while it stays fit (up, within lag limits and, with `honor_required`, past
    /// the context's required position); outside, a fresh choice. A read of tables the
    /// context's replica does not carry goes to the master (which then serves the set for
    /// the rest of the context).
    pub(super) fn pick_replica(
        &self,
        s: usize,
        state: Option<&mut State>,
        honor_required: bool,
        count: bool,
        read: ReadNeeds<'_>,
    ) -> Result<usize, NoReplica> {
        let set = &self.inner.topology.set(s);
        if !set.replicas_enabled() {
            return Err(NoReplica::Disabled);
        }
        let covers = |r: usize| set.covers(r, read.footprint);
        if set.partial && !(0..set.replicas.len()).any(covers) {
            return Err(NoReplica::NotCarried);
        }
        let Some(state) = state else {
            return self
                .choose(set, None, None, read.staleness, &covers)
                .map(|i| set.replicas[i]);
        };
        let entry = state.set_mut(&set.name);
        if entry.failed_over {
            return Err(NoReplica::FailedOver);
        }
        // An `unpinned_replica` guard (`honor_required` off) asks for a replica whatever the
        // context saw: going back in time is what it accepts.
        if entry.read_master && honor_required {
            return Err(NoReplica::ReadMaster);
        }
        let kept = entry.replica.filter(|k| k.router == self.inner.id);
        let mut keep = kept.map(|k| k.replica);
        if kept.is_some_and(|k| k != self.sticky(set, k.replica)) {
            // A runtime replica whose host changed: the new host may be behind what the
            // context read from the old one (monotonic reads), as when a replica fails.
            if entry.replica_reads > 0 {
                if count {
                    entry.failed_over = true;
                }
                return Err(NoReplica::FailedOver);
            }
            keep = None;
        }
        if keep.is_some_and(|k| !covers(k)) {
            if entry.replica_reads > 0 {
                // Its replica does not carry these tables, and another replica may be behind
                // what the context read: the master serves it (and the set, from now on).
                return Err(NoReplica::NotCarried);
            }
            keep = None;
        }
        let required = if honor_required { entry.required } else { None };
        let i = self.choose(set, required, keep, read.staleness, &covers)?;
        if keep.is_some_and(|k| k != i) && entry.replica_reads > 0 {
            // The replica it read from is no longer fit; another one may be behind what it
            // read, so its reads stay on the master (monotonic reads).
            if count {
                entry.failed_over = true;
            }
            return Err(NoReplica::FailedOver);
        }
        if count || keep.is_none() {
            entry.replica = Some(self.sticky(set, i));
        }
        if count {
            entry.replica_reads = entry.replica_reads.saturating_add(1);
        }
        Ok(set.replicas[i])
    }
}

impl Router {
    /// The replica (index among the set's) a read may use: within the lag limits, or within
    /// `staleness` (a hint, capped at the lag ceiling); when every replica is over the limits
    /// and the policy says `least-lag`, the least-lagging one within the ceiling.
    fn choose(
        &self,
        set: &crate::topology::SetEntry,
        required: Option<crate::lsn::Lsn>,
        keep: Option<usize>,
        staleness: Option<std::time::Duration>,
        eligible: crate::replica::Eligible<'_>,
    ) -> Result<usize, NoReplica> {
        let policy = self.inner.config.replica_policy;
        let monitor = &self.inner.config.monitor;
        let ceiling = monitor.lag_ceiling();
        let chosen = match staleness {
            Some(s) => {
                let ms = u64::try_from(s.as_millis())
                    .unwrap_or(u64::MAX)
                    .min(ceiling);
                set.picker
                    .choose_within(policy, &set.health, required, keep, ms, eligible)
            }
            None => set
                .picker
                .choose(policy, &set.health, required, keep, None, eligible),
        };
        match chosen {
            // A hint's own bound is the caller's: never loosened to the ceiling.
            Err(NoReplica::AllLagging)
                if staleness.is_none()
                    && monitor.when_all_lagging == crate::config::AllLaggingPolicy::LeastLag =>
            {
                metrics::counter!("pindb_all_lagging_reads_total").increment(1);
                set.picker.choose_within(
                    crate::config::ReplicaPolicy::LeastLag,
                    &set.health,
                    required,
                    keep,
                    ceiling,
                    eligible,
                )
            }
            other => other,
        }
    }
}

fn fallback_reason(no: NoReplica) -> Reason {
    match no {
        NoReplica::None => Reason::NoReplica,
        NoReplica::AllDown => Reason::ReplicaDown,
        NoReplica::AllLagging => Reason::LagFallback,
        NoReplica::NotCaughtUp => Reason::NotCaughtUp,
        NoReplica::FailedOver => Reason::ReplicaFailed,
        NoReplica::Disabled => Reason::ReplicasDisabled,
        NoReplica::NotCarried => Reason::NotReplicated,
        NoReplica::ReadMaster => Reason::Monotonic,
    }
}

/// What a read needs of a replica besides health and its context's position.
#[derive(Clone, Copy, Default)]
pub(super) struct ReadNeeds<'h> {
    /// A bounded-staleness hint.
    pub(super) staleness: Option<std::time::Duration>,
    /// Only replicas that carry what this footprint reads (`None`: not known, so only those
    /// that carry every table).
    pub(super) footprint: Option<&'h crate::classify::Footprint>,
}

impl<'h> From<&Hint<'h>> for ReadNeeds<'h> {
    fn from(hint: &Hint<'h>) -> Self {
        ReadNeeds {
            staleness: hint.max_staleness,
            footprint: hint.footprint,
        }
    }
}

pub(super) fn trace(op: Operation, route: &Route<'_>) {
    route_counter(op, route).increment(1);
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

/// `pindb_routes_total{op, role, reason}`: every decision, counted without allocating (the
/// handles are registered once, on the first decision: install the metrics recorder before
/// routing).
fn route_counter(op: Operation, route: &Route<'_>) -> &'static metrics::Counter {
    const OPS: [Operation; 2] = [Operation::Read, Operation::Write];
    const ROLES: [Role; 3] = [Role::Master, Role::Replica, Role::Unmanaged];
    static COUNTERS: std::sync::OnceLock<Vec<metrics::Counter>> = std::sync::OnceLock::new();
    let counters = COUNTERS.get_or_init(|| {
        let mut all = Vec::with_capacity(OPS.len() * ROLES.len() * Reason::ALL.len());
        for op in OPS {
            for role in ROLES {
                for reason in Reason::ALL {
                    let op = if op == Operation::Read { "read" } else { "write" };
                    all.push(metrics::counter!("pindb_routes_total", "op" => op, "role" => role.as_str(), "reason" => reason.as_str()));
                }
            }
        }
        all
    });
    let op = OPS.iter().position(|o| *o == op).unwrap_or(0);
    let role = ROLES.iter().position(|r| *r == route.role).unwrap_or(0);
    &counters[(op * ROLES.len() + role) * Reason::ALL.len() + route.reason.index()]
}
