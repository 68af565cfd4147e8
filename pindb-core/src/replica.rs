//! Replica choice and replica health: which of a set's replicas a context reads from, and
//! which ones are fit to be read at all.
//!
//! This module owns the per-set policy state (the round-robin counter) and the per-replica
//! health cells that the monitor writes and the router reads without locks. It picks an index
//! and nothing else: stickiness within a context is the router's, via the context's state; I/O
//! is the monitor's.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};

use crate::config::ReplicaPolicy;
use crate::freshness::{self, Proof};
use crate::lsn::Lsn;

/// Live state of one replica. Written by the monitor, read lock-free by every decision.
///
/// Without a monitor a replica counts as up, not lagging, with an unknown position (so a
/// context that needs a position reads that set from the master).
#[derive(Debug)]
pub(crate) struct Health {
    up: AtomicBool,
    over_lag: AtomicBool,
    replay_lsn: AtomicU64,
    lag_bytes: AtomicU64,
    /// The proof of freshness: every transaction the master committed before this instant
    /// ([`freshness`] microseconds) has been replayed. Staleness *now* is at most now minus this,
    /// so it grows between checks. [`NOT_MEASURED`]: no monitor, counts as fresh;
    /// [`NO_PROOF`]: infinitely stale.
    fresh_at: AtomicI64,
    /// `monitor.max_lag_ms`, decided at each read against the staleness then.
    max_lag_ms: AtomicU64,
    /// Bumped each time a read failed on this replica (it is then down at once): the monitor
    /// restarts its count of good checks, so the replica comes back only after
    /// `successes_before_up` of them.
    suspicions: AtomicU64,
    /// When the last suspicion was raised (ms since the Unix epoch; 0: the monitor's verdict
    /// stands). A suspicion lapses after [`SUSPICION`]: without a monitor nothing else would
    /// ever bring the replica back.
    suspected_at_ms: AtomicU64,
    /// Taken out of rotation by hand (`Topology::drain`).
    drained: AtomicBool,
    /// Down because the monitor's checks failed (no answer, refused): reads in flight on it
    /// are given up. Not for a host that left or changed role: those finish their reads.
    unreachable: AtomicBool,
}

/// How long a suspicion keeps a replica out when no monitor check says otherwise.
const SUSPICION: std::time::Duration = std::time::Duration::from_secs(5);

/// [`Health::fresh_at`] of a replica no monitor measures.
const NOT_MEASURED: i64 = i64::MAX;

/// [`Health::fresh_at`] of a replica nothing proves fresh: infinitely stale.
const NO_PROOF: i64 = i64::MIN;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Default for Health {
    fn default() -> Self {
        Health {
            up: AtomicBool::new(true),
            over_lag: AtomicBool::new(false),
            replay_lsn: AtomicU64::new(0),
            lag_bytes: AtomicU64::new(0),
            fresh_at: AtomicI64::new(NOT_MEASURED),
            max_lag_ms: AtomicU64::new(u64::MAX),
            suspicions: AtomicU64::new(0),
            suspected_at_ms: AtomicU64::new(0),
            drained: AtomicBool::new(false),
            unreachable: AtomicBool::new(false),
        }
    }
}

/// A snapshot of one replica's health, for observability and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaStatus {
    /// Answering health checks.
    pub up: bool,
    /// Beyond `max_lag_bytes` or `max_lag_ms` now (or not applying its subscription): not
    /// read from.
    pub over_lag: bool,
    /// The last replay position seen (`0/0` until the first check).
    pub replay_lsn: Lsn,
    /// Bytes of WAL the master has that the replica has not replayed.
    pub lag_bytes: u64,
    /// How stale it may be now, at most: the time since the master sample that proves what
    /// it has replayed (so it grows between checks; an idle master is not lag). `u64::MAX`:
    /// nothing proves it (no master sample at or below its position, no replay position).
    /// 0 without a monitor.
    pub lag_ms: u64,
    /// Taken out of rotation by hand (`Topology::drain`).
    pub drained: bool,
}

impl Health {
    pub(crate) fn status(&self) -> ReplicaStatus {
        let lag_ms = self.staleness_ms(freshness::now());
        ReplicaStatus {
            up: self.is_up(),
            over_lag: self.over_lag.load(Ordering::Relaxed)
                || lag_ms > self.max_lag_ms.load(Ordering::Relaxed),
            replay_lsn: Lsn(self.replay_lsn.load(Ordering::Relaxed)),
            lag_bytes: self.lag_bytes.load(Ordering::Relaxed),
            lag_ms,
            drained: self.drained.load(Ordering::Relaxed),
        }
    }

    /// At most how stale the replica is at `now` ([`freshness::now`] microseconds), in whole
    /// milliseconds rounded up: what every bound is checked against.
    pub(crate) fn staleness_ms(&self, now: i64) -> u64 {
        match self.fresh_at.load(Ordering::Acquire) {
            NOT_MEASURED => 0,
            NO_PROOF => u64::MAX,
            at => u64::try_from(now.saturating_sub(at))
                .unwrap_or(0)
                .div_ceil(1000),
        }
    }

    /// Nothing proves it fresh until the monitor's first check (a monitor runs).
    pub(crate) fn unproved(&self) {
        self.fresh_at.store(NO_PROOF, Ordering::Release);
    }

    /// The monitor gave a verdict since [`Health::unproved`]: a bound on its staleness, or
    /// down (derived: no separate flag to keep in step).
    pub(crate) fn checked(&self) -> bool {
        self.fresh_at.load(Ordering::Acquire) != NO_PROOF || !self.up.load(Ordering::Acquire)
    }

    /// The limit `monitor.max_lag_ms` puts on [`Health::staleness_ms`] (set by the monitor).
    pub(crate) fn limit_lag(&self, max_lag_ms: u64) {
        self.max_lag_ms.store(max_lag_ms, Ordering::Relaxed);
    }

    /// Down by the monitor's verdict for another reason than failed checks (it answered: a
    /// wrong role, no host yet).
    pub(crate) fn set_down(&self) {
        self.suspected_at_ms.store(0, Ordering::Relaxed);
        self.unreachable.store(false, Ordering::Release);
        self.up.store(false, Ordering::Relaxed);
    }

    /// The monitor's checks failed `failures_before_down` times: down, and reads in flight on
    /// it are given up ([`Health::declared_down`]).
    pub(crate) fn set_unreachable(&self) {
        self.set_down();
        self.unreachable.store(true, Ordering::Release);
    }

    /// A good check: the position and byte lag it saw, what proves that position fresh,
    /// whether it is over the byte limit or frozen (`over`), and whether
    /// the replica may be read from (the monitor keeps one that was down out until enough
    /// checks in a row were good).
    /// `seen`: [`Health::suspicions`] when the check began; a suspicion raised since wins.
    /// Whether it was recorded (not, when a suspicion or a new host came since).
    pub(crate) fn set_position(
        &self,
        replay: Lsn,
        lag_bytes: u64,
        fresh: Proof,
        over_lag: bool,
        up: bool,
        seen: u64,
    ) -> bool {
        if self.suspicions() != seen {
            // What it saw may be of a host this slot no longer points at: keep nothing
            // (whatever raised the suspicion already took it out).
            return false;
        }
        self.replay_lsn.store(replay.0, Ordering::Relaxed);
        self.lag_bytes.store(lag_bytes, Ordering::Relaxed);
        let fresh_at = match fresh {
            Proof::Always => NOT_MEASURED,
            Proof::At(at) => freshness::micros(at),
            Proof::None => NO_PROOF,
        };
        self.fresh_at.store(fresh_at, Ordering::Release);
        self.over_lag.store(over_lag, Ordering::Relaxed);
        // It answered.
        self.unreachable.store(false, Ordering::Release);
        self.up.store(up, Ordering::Release);
        // A read failed on it (or its slot got another host) since the test above: the
        // suspicion wins over this check.
        if up && self.suspicions() != seen {
            self.up.store(false, Ordering::Release);
        }
        true
    }

    /// A read failed on this replica (no connection, no answer): down now, back after the
    /// monitor's good checks.
    pub(crate) fn suspect(&self) {
        self.up.store(false, Ordering::Release);
        self.suspected_at_ms.store(now_ms(), Ordering::Relaxed);
        self.suspicions.fetch_add(1, Ordering::AcqRel);
    }

    /// Out until the monitor's checks bring it back (no lapse, unlike a suspicion): a check
    /// that began before this cannot bring it back either.
    pub(crate) fn revoke(&self) {
        self.up.store(false, Ordering::Release);
        self.suspected_at_ms.store(0, Ordering::Relaxed);
        self.suspicions.fetch_add(1, Ordering::AcqRel);
    }

    /// A runtime replica slot got another host (or none): nothing known of the old host
    /// counts, and a check that began before this cannot bring it back. `up`: read from at
    /// once (no monitor runs to check it first).
    pub(crate) fn reset(&self, up: bool) {
        self.up.store(false, Ordering::Release);
        self.suspicions.fetch_add(1, Ordering::AcqRel);
        self.suspected_at_ms.store(0, Ordering::Relaxed);
        self.unreachable.store(false, Ordering::Release);
        self.replay_lsn.store(0, Ordering::Relaxed);
        self.lag_bytes.store(0, Ordering::Relaxed);
        // Nothing proves the new host fresh until the monitor checks it.
        let fresh_at = if up { NOT_MEASURED } else { NO_PROOF };
        self.fresh_at.store(fresh_at, Ordering::Release);
        self.over_lag.store(false, Ordering::Relaxed);
        // A drain named the host that left.
        self.drained.store(false, Ordering::Relaxed);
        self.up.store(up, Ordering::Release);
    }

    /// The monitor's checks say it cannot be reached: not a suspicion of one failed read
    /// (which a long query on a healthy replica could raise), nor a host that left its slot
    /// or changed role (its reads under way finish there).
    pub(crate) fn declared_down(&self) -> bool {
        self.unreachable.load(Ordering::Acquire) && !self.up.load(Ordering::Acquire)
    }

    /// How many times [`Health::suspect`] was called.
    pub(crate) fn suspicions(&self) -> u64 {
        self.suspicions.load(Ordering::Relaxed)
    }

    /// Fit to be read from now, for a context that needs `required`.
    pub(crate) fn fit(&self, required: Option<Lsn>) -> bool {
        self.fit_at(required, freshness::now())
    }

    /// Fit to be read from at `now` ([`freshness::now`] microseconds): up, not drained, within the
    /// byte limit, applying, no staler than `max_lag_ms` at that instant, and past
    /// `required`.
    fn fit_at(&self, required: Option<Lsn>, now: i64) -> bool {
        self.usable(now) && self.has_replayed(required)
    }

    /// A direct check saw the replica at `replay` (at least): raise the known position.
    pub(crate) fn raise_replay(&self, replay: Lsn) {
        self.replay_lsn.fetch_max(replay.0, Ordering::Relaxed);
    }

    pub(crate) fn replay_lsn(&self) -> Lsn {
        Lsn(self.replay_lsn.load(Ordering::Relaxed))
    }

    fn usable(&self, now: i64) -> bool {
        self.is_up()
            && !self.over_lag.load(Ordering::Relaxed)
            && !self.drained.load(Ordering::Relaxed)
            && self.staleness_ms(now) <= self.max_lag_ms.load(Ordering::Relaxed)
    }

    pub(crate) fn set_drained(&self, drained: bool) {
        self.drained.store(drained, Ordering::Relaxed);
    }

    /// Up, or suspected longer than [`SUSPICION`] ago with no monitor verdict since.
    fn is_up(&self) -> bool {
        if self.up.load(Ordering::Acquire) {
            return true;
        }
        let at = self.suspected_at_ms.load(Ordering::Relaxed);
        at != 0 && now_ms().saturating_sub(at) >= SUSPICION.as_millis() as u64
    }

    fn has_replayed(&self, required: Option<Lsn>) -> bool {
        required.is_none_or(|r| self.replay_lsn.load(Ordering::Relaxed) >= r.0)
    }
}

/// Why no replica could serve a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoReplica {
    /// The set has none.
    None,
    /// Every replica is down.
    AllDown,
    /// Every replica that is up is over the lag limits.
    AllLagging,
    /// Usable replicas exist, but none has replayed the context's required position.
    NotCaughtUp,
    /// The replica this context read from failed or became unfit: its reads stay on the
    /// master (another replica might be behind what it already read).
    FailedOver,
    /// The set's replicas are switched off (the kill switch).
    Disabled,
    /// The master served this context a read of the set before: a replica may be behind
    /// what it saw.
    ReadMaster,
    /// No replica carries the tables the read needs (logical replicas).
    NotCarried,
}

/// Which replicas (indexes among the set's) may serve this read at all: those that carry its
/// tables.
pub(crate) type Eligible<'a> = &'a dyn Fn(usize) -> bool;

/// Every replica is eligible.
#[cfg(test)]
pub(crate) const EVERY: Eligible<'static> = &|_| true;

/// Per-set choice state.
#[derive(Debug, Default)]
pub(crate) struct Picker {
    next: AtomicUsize,
}

impl Picker {
    /// [`Picker::choose`] with the lag limit set to `max_lag_ms` instead of the monitor's
    /// verdict: a read that tolerates that much staleness, or the all-lagging policy's
    /// ceiling. Down, drained and not-caught-up replicas stay out.
    pub(crate) fn choose_within(
        &self,
        policy: ReplicaPolicy,
        health: &[Health],
        required: Option<Lsn>,
        keep: Option<usize>,
        max_lag_ms: u64,
        eligible: Eligible<'_>,
    ) -> Result<usize, NoReplica> {
        let now = freshness::now();
        let lag = |i: usize| health[i].staleness_ms(now);
        let fit = |i: usize| {
            let h = &health[i];
            eligible(i)
                && h.is_up()
                && !h.drained.load(Ordering::Relaxed)
                && lag(i) <= max_lag_ms
                && h.has_replayed(required)
        };
        if let Some(k) = keep.filter(|&k| k < health.len() && fit(k)) {
            return Ok(k);
        }
        let order = (0..health.len()).filter(|&i| fit(i));
        let found = match policy {
            ReplicaPolicy::LeastLag => order.min_by_key(|&i| lag(i)),
            _ => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                let n = health.len().max(1);
                order.min_by_key(|&i| (i + n - start % n) % n)
            }
        };
        found.ok_or_else(|| {
            let usable = |h: &Health| h.is_up() && !h.drained.load(Ordering::Relaxed);
            if health.is_empty() {
                NoReplica::None
            } else if !health.iter().any(usable) {
                NoReplica::AllDown
            } else if health
                .iter()
                .any(|h| usable(h) && h.staleness_ms(now) <= max_lag_ms)
            {
                NoReplica::NotCaughtUp
            } else {
                NoReplica::AllLagging
            }
        })
    }

    /// An index into `health` (the set's replicas): `keep` if it is still fit, else a fresh
    /// choice by `policy` among the fit ones.
    pub(crate) fn choose(
        &self,
        policy: ReplicaPolicy,
        health: &[Health],
        required: Option<Lsn>,
        keep: Option<usize>,
        avoid: Option<usize>,
        eligible: Eligible<'_>,
    ) -> Result<usize, NoReplica> {
        let n = health.len();
        if n == 0 {
            return Err(NoReplica::None);
        }
        let now = freshness::now();
        let fit = |i: usize| Some(i) != avoid && eligible(i) && health[i].fit_at(required, now);
        if let Some(k) = keep.filter(|&k| k < n && fit(k)) {
            return Ok(k);
        }
        let found = match policy {
            ReplicaPolicy::LeastLag => (0..n)
                .filter(|&i| fit(i))
                .min_by_key(|&i| health[i].lag_bytes.load(Ordering::Relaxed)),
            ReplicaPolicy::RoundRobin | ReplicaPolicy::Random => {
                let start = match policy {
                    ReplicaPolicy::Random => fastrand::usize(..n),
                    _ => self.next.fetch_add(1, Ordering::Relaxed) % n,
                };
                (0..n).map(|k| (start + k) % n).find(|&i| fit(i))
            }
        };
        found.ok_or_else(|| {
            let up = |(i, h): (usize, &Health)| Some(i) != avoid && h.is_up();
            if !health.iter().enumerate().any(up) {
                NoReplica::AllDown
            } else if health.iter().any(|h| h.usable(now)) {
                NoReplica::NotCaughtUp
            } else {
                NoReplica::AllLagging
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_suspicion_lapses_unless_the_monitor_says_down() {
        let h = Health::default();
        h.suspect();
        assert!(!h.status().up, "down at once");
        // As if suspected 6 s ago, with no monitor verdict since: tried again.
        h.suspected_at_ms.store(now_ms() - 6_000, Ordering::Relaxed);
        assert!(h.status().up);
        // The monitor's own verdict does not lapse.
        h.set_down();
        assert!(!h.status().up);
    }

    #[test]
    fn a_suspicion_raised_during_a_good_check_wins() {
        let h = Health::default();
        let seen = h.suspicions();
        h.suspect();
        // The check began before the suspicion; its verdict must not bring the replica back.
        assert_ne!(seen, h.suspicions());
        h.set_position(Lsn(1), 0, Proof::ago(0), false, true, seen);
        assert!(!h.status().up);
    }

    fn healthy(n: usize) -> Vec<Health> {
        (0..n).map(|_| Health::default()).collect()
    }

    #[test]
    fn round_robin_cycles() {
        let p = Picker::default();
        let h = healthy(3);
        let picks: Vec<_> = (0..6)
            .map(|_| {
                p.choose(ReplicaPolicy::RoundRobin, &h, None, None, None, EVERY)
                    .unwrap()
            })
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn only_failed_checks_give_up_the_reads_in_flight() {
        let h = Health::default();
        h.suspect();
        assert!(
            !h.declared_down(),
            "one failed read: a long query may be fine"
        );
        h.set_unreachable();
        assert!(h.declared_down(), "the monitor's checks failed");
        h.set_down();
        assert!(
            !h.declared_down(),
            "it answered, with a wrong role: reads finish"
        );
        h.set_unreachable();
        h.reset(false);
        assert!(
            !h.declared_down(),
            "the host left its slot: its reads finish there"
        );
        h.set_unreachable();
        h.set_position(Lsn(1), 0, Proof::Always, false, false, h.suspicions());
        assert!(!h.declared_down(), "a good check, though not up yet");
    }

    #[test]
    fn random_stays_in_range_and_uses_every_replica() {
        let p = Picker::default();
        let h = healthy(3);
        let mut seen = [0usize; 3];
        for _ in 0..3000 {
            seen[p
                .choose(ReplicaPolicy::Random, &h, None, None, None, EVERY)
                .unwrap()] += 1;
        }
        assert!(seen.iter().all(|&n| n > 500), "{seen:?}");
    }

    #[test]
    fn unfit_replicas_are_skipped_and_the_reason_says_why() {
        let p = Picker::default();
        let h = healthy(2);
        h[0].set_down();
        for _ in 0..4 {
            assert_eq!(
                p.choose(ReplicaPolicy::RoundRobin, &h, None, None, None, EVERY),
                Ok(1)
            );
        }
        assert_eq!(
            p.choose(ReplicaPolicy::RoundRobin, &h, None, Some(0), None, EVERY),
            Ok(1),
            "a kept choice that went down is replaced"
        );
        h[1].set_position(Lsn(10), 9_000_000, Proof::ago(0), true, true, 0);
        assert_eq!(
            p.choose(ReplicaPolicy::RoundRobin, &h, None, None, None, EVERY),
            Err(NoReplica::AllLagging)
        );
        h[1].set_down();
        assert_eq!(
            p.choose(ReplicaPolicy::RoundRobin, &h, None, None, None, EVERY),
            Err(NoReplica::AllDown)
        );
        assert_eq!(
            p.choose(ReplicaPolicy::RoundRobin, &[], None, None, None, EVERY),
            Err(NoReplica::None)
        );
    }

    #[test]
    fn required_position_filters_replicas() {
        let p = Picker::default();
        let h = healthy(2);
        h[0].set_position(Lsn(100), 0, Proof::ago(0), false, true, 0);
        h[1].set_position(Lsn(50), 50, Proof::ago(10), false, true, 0);
        for _ in 0..4 {
            assert_eq!(
                p.choose(
                    ReplicaPolicy::RoundRobin,
                    &h,
                    Some(Lsn(80)),
                    None,
                    None,
                    EVERY
                ),
                Ok(0)
            );
        }
        assert_eq!(
            p.choose(
                ReplicaPolicy::RoundRobin,
                &h,
                Some(Lsn(101)),
                None,
                None,
                EVERY
            ),
            Err(NoReplica::NotCaughtUp)
        );
    }

    #[test]
    fn least_lag_takes_the_freshest_fit_replica() {
        let p = Picker::default();
        let h = healthy(3);
        h[0].set_position(Lsn(90), 10, Proof::ago(5), false, true, 0);
        h[1].set_position(Lsn(99), 1, Proof::ago(1), false, true, 0);
        h[2].set_position(Lsn(100), 0, Proof::ago(0), false, true, 0);
        assert_eq!(
            p.choose(ReplicaPolicy::LeastLag, &h, None, None, None, EVERY),
            Ok(2)
        );
        h[2].set_down();
        assert_eq!(
            p.choose(ReplicaPolicy::LeastLag, &h, None, None, None, EVERY),
            Ok(1)
        );
    }
}
