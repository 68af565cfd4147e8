//! The master's position history ([`MasterTrack`]): what replica lag is measured against, and
//! the proof of how fresh a replica is (see the module above).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::backend::Backend;
use crate::domain::SetDomain;
use crate::freshness::Proof;
use crate::gtid::GtidPosition;
use crate::lsn::Lsn;
use crate::probe::{Asked, Probe, Reading};

/// The master's recent positions, in the order they were recorded: what replica lag is
/// measured against.
pub(super) struct MasterTrack {
    /// When it was made (the monitor started): a master never heard since is silent.
    started: Instant,
    samples: Mutex<VecDeque<Sample>>,
    /// The master's probe, shared (pipelined) by its task and the replicas' checks: each
    /// replica check samples the master just before asking the replica, so a caught-up
    /// replica is proved fresh as of its check, not as of the master's last tick. `None`
    /// for a set given as hosts (the primary's own checks feed the track).
    pub(super) master: Option<tokio::sync::Mutex<Probe>>,
    /// The last sample failed: replica checks do not wait on the master (its task alone
    /// retries), so a dead master does not delay every replica's check.
    failing: std::sync::atomic::AtomicBool,
    /// How long a sample may take (the check timeout).
    limit: Duration,
    /// The master's database.
    backend: Backend,
    /// MariaDB: the set's domain, which every sample must be in, and where the fingerprint
    /// of what the master has outside it goes.
    pub(super) domain: Arc<SetDomain>,
}

/// When the master was asked, its position in the set's domain, and (MariaDB) its position
/// outside it, which a replica must have too to be proved as fresh (`None`: nothing outside
/// it; one `Arc` shared by consecutive samples that agree, so a still master's samples hold
/// no copy each).
type Sample = (Instant, Lsn, Option<Arc<GtidPosition>>);

impl Default for MasterTrack {
    fn default() -> Self {
        MasterTrack {
            started: Instant::now(),
            samples: Mutex::default(),
            master: None,
            failing: std::sync::atomic::AtomicBool::default(),
            limit: Duration::from_secs(1),
            backend: Backend::Postgres,
            domain: Arc::default(),
        }
    }
}

impl MasterTrack {
    const CAPACITY: usize = 4096;

    /// A track sampled through `master` (`None`: fed by a set's host checks), each sample
    /// within `limit`.
    pub(super) fn new(
        master: Option<tokio::sync::Mutex<Probe>>,
        backend: Backend,
        limit: Duration,
        domain: Arc<SetDomain>,
    ) -> MasterTrack {
        MasterTrack {
            master,
            backend,
            limit,
            domain,
            ..MasterTrack::default()
        }
    }

    /// Forgets every sample: a new timeline's positions are not comparable with the old
    /// primary's last ones (a crash can leave them ahead).
    pub(super) fn clear(&self) {
        self.samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// The master was at `lsn` (at least) when asked at `asked` (taken before the query was
    /// sent: a later instant would claim commits the position may not cover).
    pub(super) fn push(&self, asked: Instant, lsn: Lsn) {
        self.push_reading(asked, lsn, GtidPosition::default());
    }

    /// [`MasterTrack::push`], with the master's position outside the set's domain.
    fn push_reading(&self, asked: Instant, lsn: Lsn, outside: GtidPosition) {
        let mut s = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        let outside = match (outside.gtids().is_empty(), s.back()) {
            (true, _) => None,
            (false, Some((_, _, Some(last)))) if **last == outside => Some(Arc::clone(last)),
            (false, _) => Some(Arc::new(outside)),
        };
        if let Some(last) = s
            .back_mut()
            .filter(|(t, l, o)| *l == lsn && *t <= asked && *o == outside)
        {
            // An idle master: the later instant proves more, the earlier one nothing more.
            last.0 = asked;
            return;
        }
        if s.len() == Self::CAPACITY {
            // Thin the older half (every other sample): recent history stays fine-grained, a
            // far-behind replica is proved by a somewhat older sample (conservative).
            let half = Self::CAPACITY / 2;
            let mut i = 0;
            s.retain(|_| {
                i += 1;
                i > half || i % 2 == 0
            });
        }
        s.push_back((asked, lsn, outside));
    }

    /// Asks the master for its position and records it (nothing for a set given as hosts).
    /// `before_check`: asked by a replica check, which skips it while the master fails.
    pub(super) async fn sample(&self, before_check: bool) -> Result<Option<Lsn>, String> {
        let Some(master) = &self.master else {
            return Ok(None);
        };
        if before_check && self.failing.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let asked = Instant::now();
        let reading = Probe::shared_reading(master, self.backend, Asked::Master, self.limit)
            .await
            .and_then(|r| self.domain.master_read(&r).map(|()| r));
        self.failing.store(reading.is_err(), Ordering::Relaxed);
        let Reading {
            position, outside, ..
        } = reading?;
        if let Some(lsn) = position {
            self.push_reading(asked, lsn, outside);
        }
        Ok(position)
    }

    /// `(lag bytes, proof)` of a replica at `replay` (and, MariaDB, `outside` the set's
    /// domain): bytes behind the newest position, and the latest instant before which it
    /// provably has every commit. `None` before the first master sample. A sample proves it
    /// fresh only if it has the master's other domains as that sample saw them too (domain by
    /// domain): a replica behind in another domain is as stale as the last sample it has
    /// whole.
    ///
    /// A master silent for `silent` (no sample answered: it is down, or unreachable) commits
    /// nothing a replica could miss if it is down: a replica that has everything it last
    /// reported is then as stale as the silence allows, `silent`, and no more (so standbys
    /// keep serving while the master is down, as a failover needs). A replica past the last
    /// sample shows a master still writing (a partition): no such allowance.
    pub(super) fn lag(
        &self,
        replay: Lsn,
        outside: &GtidPosition,
        silent: Duration,
    ) -> Option<(u64, Proof)> {
        let s = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(newest) = s.iter().map(|(_, lsn, _)| *lsn).max() else {
            // No master heard since the monitor started (none found, or unreachable): nothing
            // is being committed that we know of, so a standby is as stale as the silence.
            return (self.started.elapsed() > silent && !self.domain.changed())
                .then(|| Instant::now().checked_sub(silent))
                .flatten()
                .map(|at| (0, Proof::At(at)));
        };
        let bytes = newest.0.saturating_sub(replay.0);
        if self.domain.changed() {
            // The master now writes in another domain, which its refused samples would have
            // shown: no sample proves anything since, and its silence is no allowance.
            return Some((bytes, Proof::None));
        }
        let has = |(_, lsn, other): &&Sample| {
            *lsn <= replay && other.as_deref().is_none_or(|o| outside.includes(o))
        };
        // Samples taken concurrently (pipelined) may be recorded out of order: the latest
        // instant of any sample the replica has.
        let last = s.iter().filter(has).map(|(t, _, _)| *t).max();
        let heard = s.iter().max_by_key(|(t, _, _)| *t);
        let proof = match (last, heard) {
            (Some(_), Some(latest))
                if replay == newest && has(&latest) && latest.0.elapsed() > silent =>
            {
                Instant::now()
                    .checked_sub(silent)
                    .map_or(Proof::None, Proof::At)
            }
            (Some(at), _) => Proof::At(at),
            (None, _) => Proof::None,
        };
        Some((bytes, proof))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_master_is_not_lag() {
        let t = MasterTrack::default();
        let (first, second) = (Instant::now(), Instant::now());
        t.push(first, Lsn(100));
        t.push(second, Lsn(100));
        assert_eq!(
            t.lag(Lsn(100), &GtidPosition::default(), HOUR),
            Some((0, Proof::At(second)))
        );
        assert_eq!(
            t.lag(Lsn(120), &GtidPosition::default(), HOUR),
            Some((0, Proof::At(second))),
            "a replica ahead of the last sample is as fresh as that sample"
        );
    }

    #[test]
    fn freshness_is_proved_by_the_last_sample_a_replica_has_replayed() {
        let t = MasterTrack::default();
        assert_eq!(
            t.lag(Lsn(1), &GtidPosition::default(), HOUR),
            None,
            "no master sample yet"
        );
        assert!(
            matches!(
                t.lag(Lsn(1), &GtidPosition::default(), Duration::ZERO),
                Some((0, Proof::At(_)))
            ),
            "a master silent since the start"
        );
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(30);
        t.push(t0, Lsn(100));
        t.push(t1, Lsn(200));
        // At 150 it has everything committed before the first sample was asked for, and
        // nothing proves more: its staleness grows from t0, not from when the master passed
        // 150 (which the samples cannot tell).
        assert_eq!(
            t.lag(Lsn(150), &GtidPosition::default(), HOUR),
            Some((50, Proof::At(t0)))
        );
        assert_eq!(
            t.lag(Lsn(200), &GtidPosition::default(), HOUR),
            Some((0, Proof::At(t1)))
        );
        assert_eq!(
            t.lag(Lsn(50), &GtidPosition::default(), HOUR),
            Some((150, Proof::None)),
            "older than every sample"
        );
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn a_silent_master_freezes_the_bound_of_a_replica_that_has_all_it_reported() {
        let t = MasterTrack::default();
        let long_ago = Instant::now().checked_sub(Duration::from_secs(60)).unwrap();
        t.push(long_ago, Lsn(100));
        let silent = Duration::from_secs(1);
        let Some((0, Proof::At(at))) = t.lag(Lsn(100), &GtidPosition::default(), silent) else {
            panic!("caught up with the last sample")
        };
        let staleness = at.elapsed();
        assert!(
            staleness >= silent && staleness < Duration::from_secs(5),
            "as stale as the silence allows, not 60 s: {staleness:?}"
        );
        // Behind the last sample: the bound keeps growing from the proof.
        t.push(long_ago + Duration::from_millis(1), Lsn(200));
        assert_eq!(
            t.lag(Lsn(100), &GtidPosition::default(), silent),
            Some((100, Proof::At(long_ago)))
        );
    }

    #[test]
    fn a_full_track_thins_its_older_half_and_merges_an_idle_master() {
        let t = MasterTrack::default();
        let start = Instant::now();
        for i in 0..MasterTrack::CAPACITY as u64 + 10 {
            t.push(start + Duration::from_micros(i), Lsn(i + 1));
        }
        let len = t.samples.lock().unwrap().len();
        assert!(len < MasterTrack::CAPACITY, "{len}");
        assert_eq!(
            t.lag(Lsn(2), &GtidPosition::default(), HOUR).unwrap().1,
            Proof::At(start + Duration::from_micros(1)),
            "the second oldest is kept"
        );
        let last = t.samples.lock().unwrap().back().unwrap().clone();
        t.push(last.0 + Duration::from_millis(5), last.1);
        assert_eq!(
            t.samples.lock().unwrap().len(),
            len,
            "an idle master: one sample"
        );
    }

    #[test]
    fn a_replica_behind_in_another_domain_is_as_stale_as_the_last_sample_it_has_whole() {
        let t = MasterTrack::default();
        let at = |text: &str| GtidPosition::parse(text).unwrap();
        let start = Instant::now();
        let (first, second, third) = (
            start,
            start + Duration::from_millis(1),
            start + Duration::from_millis(2),
        );
        // Domain 0 is the set's; domain 1's GTIDs come from elsewhere.
        t.push_reading(first, Lsn(10), at("1-5-7"));
        t.push_reading(second, Lsn(10), at("1-5-8"));
        t.push_reading(third, Lsn(10), at("1-5-8"));
        assert_eq!(t.samples.lock().unwrap().len(), 2, "domain 1 still: merged");
        assert_eq!(
            t.lag(Lsn(10), &at("1-5-8"), HOUR),
            Some((0, Proof::At(third)))
        );
        assert_eq!(
            t.lag(Lsn(10), &at("1-5-7"), HOUR),
            Some((0, Proof::At(first))),
            "all of domain 0 but not domain 1's last write: fresh as of the sample before it"
        );
        assert_eq!(t.lag(Lsn(10), &at(""), HOUR), Some((0, Proof::None)));
        assert_eq!(
            t.lag(Lsn(10), &at("1-5-9,2-1-1"), HOUR),
            Some((0, Proof::At(third))),
            "ahead, or with domains the master lacks: as fresh as the last sample"
        );
        // The master's domain changed while pindb runs: its samples since were refused.
        let reading = |text: &str, domain| {
            crate::probe::Reading::of_gtids(GtidPosition::parse(text).unwrap(), domain)
        };
        t.domain.master_read(&reading("0-1-10", 0)).unwrap();
        assert!(t.domain.master_read(&reading("0-1-10,1-1-1", 1)).is_err());
        assert_eq!(
            t.lag(Lsn(10), &at("1-5-8"), HOUR),
            Some((0, Proof::None)),
            "nothing proves it fresh after the master's domain changed"
        );
    }
}
