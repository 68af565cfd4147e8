//! Role discovery: which host of a set given as a list of hosts is its primary.
//!
//! The monitor reports what each host says of itself (recovery, cluster, timeline, position);
//! this module decides, from the latest reports, which one takes the set's writes. It does no
//! I/O. The rules, so that a write never lands on a host that is not the current primary:
//! - only a writable host of the set's cluster (the `system_identifier` most of its hosts
//!   report) can be the primary;
//! - of several writable hosts (a former primary came back: a split brain), the one on the
//!   highest timeline wins (the newest promotion) and the others are reported, never written to;
//!   a tie on the highest timeline leaves the set with no primary: writes are refused with a
//!   retryable error until one is left;
//! - a writable host on an older timeline than one a host that answers has (a primary's, or
//!   one a standby receives) is never the primary, even when the newer primary does not answer;
//! - a primary that stops answering stays the primary (writes to it fail as unreachable, which
//!   is retryable) until another host wins: a slow primary is not a write outage;
//! - a host that stops answering (after `failures_before_down` checks) cannot become the
//!   primary; the set's cluster changes only when most of its hosts say so.
//!
//! A standby serves reads only while it follows the primary's timeline: one still on the old
//! timeline may hold writes the new primary never had.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use crate::lsn::Lsn;

/// What a host said of itself at its last check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Report {
    /// `pg_is_in_recovery()`: a standby.
    pub(crate) in_recovery: bool,
    /// `pg_control_system().system_identifier`: which cluster it is a copy of.
    pub(crate) system_id: String,
    /// The timeline it writes on (a primary) or receives (a standby; `None`: no receiver).
    pub(crate) timeline: Option<u32>,
    /// Its WAL position (a primary) or replay position (a standby).
    pub(crate) position: Option<Lsn>,
    /// A standby: the newest timeline whose history it has. Taken as its timeline only while
    /// none is known (its primary was down when pindb started): once a timeline was received,
    /// a standby without a receiver keeps that one (it may have fetched a newer history and
    /// failed to follow it).
    pub(crate) history: Option<u32>,
}

/// What a report changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// The same primary, or none as before.
    None,
    /// Another primary (or none) on the timeline already known.
    Primary,
    /// A primary on a new timeline (a promotion): every other host must prove again that it
    /// follows it before it serves a read, and lag is measured afresh.
    Timeline,
}

/// What the set's hosts are now, after a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// It is the primary.
    Primary,
    /// A host of another cluster: a configuration mistake (the start-up check refuses it).
    OtherCluster(String),
    /// A standby following the primary: it may serve reads.
    Standby,
    /// It answers, but serves nothing; the reason, in words.
    Excluded(String),
}

#[derive(Default)]
struct State {
    /// Parallel to the hosts: the latest report (`None`: unreachable or not checked yet; the
    /// primary's last report is kept while it does not answer, see `silent`).
    reports: Vec<Option<Report>>,
    /// Parallel to the hosts: does not answer now.
    silent: Vec<bool>,
    /// Parallel to the hosts: the last timeline each standby received (kept while its receiver
    /// is down: it stays on that timeline until it follows another).
    timelines: Vec<Option<u32>>,
    /// Parallel to the hosts: the last `system_identifier` each reported (whose timeline
    /// counts only if it is the set's cluster).
    ids: Vec<Option<String>>,
    /// The set's cluster: the `system_identifier` most hosts report.
    system_id: Option<String>,
    /// Writable hosts that lost to the primary (split brain), reported once each.
    split: Vec<bool>,
    /// The timeline of the last primary: while there is none (it died, nothing promoted
    /// yet), standbys still on it keep serving reads.
    last_timeline: Option<u32>,
    /// Parallel to the hosts: checked at least once. Until every host was, "no primary" is
    /// only the start-up's not knowing yet (the first host, assumed primary, is a standby).
    heard: Vec<bool>,
}

/// The roles of one set's hosts.
pub(crate) struct Roles {
    /// Host names, for logs (`alias (host:port)`).
    hosts: Vec<String>,
    /// The primary's host position, or [`NONE`].
    primary: AtomicUsize,
    state: Mutex<State>,
}

const NONE: usize = usize::MAX;

impl Roles {
    /// `hosts` in configured order; the first is taken as the primary until a check says
    /// otherwise (libpq's order: without a monitor the set behaves as a plain master).
    pub(crate) fn new(hosts: Vec<String>) -> Roles {
        let n = hosts.len();
        Roles {
            hosts,
            primary: AtomicUsize::new(0),
            state: Mutex::new(State {
                reports: vec![None; n],
                silent: vec![true; n],
                timelines: vec![None; n],
                ids: vec![None; n],
                system_id: None,
                split: vec![false; n],
                last_timeline: None,
                heard: vec![false; n],
            }),
        }
    }

    /// A fresh copy with the same hosts and no reports: for a look that must not change the
    /// set's roles (`pindb check` on a running router).
    pub(crate) fn scratch(&self) -> Roles {
        Roles::new(self.hosts.clone())
    }

    /// The primary's host position; `None` while the set has none (failover in progress,
    /// split brain on one timeline).
    pub(crate) fn primary(&self) -> Option<usize> {
        match self.primary.load(Ordering::Acquire) {
            NONE => None,
            h => Some(h),
        }
    }

    /// Records what host `h` said (`None`: it is unreachable), decides the primary again, and
    /// says what `h` is now, and what changed.
    pub(crate) fn report(&self, h: usize, report: Option<Report>) -> (Verdict, Change) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let before = self.primary();
        state.silent[h] = report.is_none();
        let was_starting = !state.heard.iter().all(|&heard| heard);
        state.heard[h] = true;
        match report {
            Some(r) => {
                if r.timeline.is_some() {
                    state.timelines[h] = r.timeline;
                } else if state.timelines[h].is_none() {
                    state.timelines[h] = r.history;
                }
                state.ids[h] = Some(r.system_id.clone());
                state.reports[h] = Some(r);
            }
            // The primary's last report stays: it remains the primary until another host
            // wins (its writes fail as unreachable meanwhile, which is retryable).
            None if before == Some(h) => {}
            None => state.reports[h] = None,
        }
        let id = cluster(&state);
        let cluster_changed = state.system_id.is_some() && id != state.system_id;
        if id != state.system_id {
            // Another cluster than the first answers suggested: what it taught is void.
            state.last_timeline = None;
            state.system_id = id;
        }
        let now = decide(&state);
        let previous_timeline = state.last_timeline;
        if let Some(t) = now.and_then(|p| state.reports[p].as_ref()?.timeline) {
            state.last_timeline = Some(t);
        }
        self.primary.store(now.unwrap_or(NONE), Ordering::Release);
        let new_timeline = previous_timeline.is_some() && state.last_timeline != previous_timeline;
        let change = match (before != now, new_timeline || cluster_changed) {
            (_, true) => Change::Timeline,
            (true, false) => Change::Primary,
            (false, false) => Change::None,
        };
        // At start-up, until every host has answered once, finding the primary is no event.
        let starting = !state.heard.iter().all(|&heard| heard);
        // Start-up ended with no primary: said now, as the change it is.
        let no_primary = now.is_none() && was_starting && !starting;
        if before != now || no_primary {
            match now {
                Some(p) => {
                    metrics::counter!("pindb_primary_changes_total", "host" => self.hosts[p].clone())
                        .increment(1);
                    if was_starting {
                        tracing::info!(target: "pindb", host = %self.hosts[p], "pindb monitor: primary found");
                    } else {
                        tracing::warn!(target: "pindb", host = %self.hosts[p], "pindb monitor: new primary");
                    }
                }
                None if starting => {
                    tracing::debug!(target: "pindb", host = %self.hosts[h], "pindb monitor: no primary known yet: not every host has answered");
                }
                None => {
                    let newest = newest_timeline(&state);
                    tracing::error!(target: "pindb", hosts = %self.hosts.join(", "), newest_timeline = ?newest, "pindb monitor: no primary (writes are refused until one is found): no writable host of the set's cluster on the newest timeline a host reports");
                }
            }
        }
        let verdict = self.judge(&mut state, h, now);
        (verdict, change)
    }

    /// What host `h` is, from the reports so far.
    pub(crate) fn verdict(&self, h: usize) -> Verdict {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let primary = self.primary();
        self.judge(&mut state, h, primary)
    }

    fn judge(&self, state: &mut State, h: usize, primary: Option<usize>) -> Verdict {
        let Some(r) = state.reports[h].as_ref().filter(|_| !state.silent[h]) else {
            return Verdict::Excluded("unreachable".into());
        };
        if state.system_id.as_ref() != Some(&r.system_id) {
            return Verdict::OtherCluster(format!(
                "{} belongs to another cluster (system_identifier {}, the set's is {}); remove it from the hosts",
                self.hosts[h],
                r.system_id,
                state.system_id.as_deref().unwrap_or("?")
            ));
        }
        if primary == Some(h) {
            state.split[h] = false;
            return Verdict::Primary;
        }
        if !r.in_recovery {
            if !state.split[h] {
                state.split[h] = true;
                metrics::counter!("pindb_split_brain_total", "host" => self.hosts[h].clone())
                    .increment(1);
                tracing::error!(target: "pindb", host = %self.hosts[h], primary = ?primary.map(|p| &self.hosts[p]), "pindb monitor: split brain: a second writable host; never writing to it");
            }
            return Verdict::Excluded(format!(
                "{} is writable but not the primary (split brain: a former primary came back?); not using it",
                self.hosts[h]
            ));
        }
        state.split[h] = false;
        // No primary: the last one's timeline, or (none known yet: its primary was down at
        // start-up) the newest a host reports; standbys there serve reads meanwhile.
        let primary_timeline = match primary {
            Some(p) => state.reports[p].as_ref().and_then(|r| r.timeline),
            None => state.last_timeline.or_else(|| newest_timeline(state)),
        };
        match (state.timelines[h], primary_timeline) {
            (Some(mine), Some(theirs)) if mine == theirs => Verdict::Standby,
            (mine, theirs) => Verdict::Excluded(format!(
                "{} is a standby on timeline {} but the primary is on {}: not reading from it \
                 until it follows the primary",
                self.hosts[h],
                mine.map_or("?".into(), |t| t.to_string()),
                theirs.map_or("?".into(), |t| t.to_string()),
            )),
        }
    }

    /// Writable hosts that are not the primary (split brain), by host position.
    pub(crate) fn split_brain(&self) -> Vec<usize> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        (0..state.split.len()).filter(|&h| state.split[h]).collect()
    }
}

/// The set's cluster: once known, it changes only when most of the set's hosts (answering or
/// not, by what each last said) report another one; before that, the most common one so far
/// (on a tie, the earliest host's).
fn cluster(state: &State) -> Option<String> {
    let count = |id: &String| state.ids.iter().flatten().filter(|i| *i == id).count();
    let mut best: Option<&String> = None;
    for id in state.ids.iter().flatten() {
        if best.is_none_or(|b| count(id) > count(b)) {
            best = Some(id);
        }
    }
    match (&state.system_id, best) {
        (Some(current), Some(best)) if best != current && count(best) * 2 <= state.ids.len() => {
            Some(current.clone())
        }
        (current, None) => current.clone(),
        (_, best) => best.cloned(),
    }
}

/// The newest timeline a host of the set's cluster that answers now has (written or
/// received; a standby whose receiver stopped counts with the last one it had).
fn newest_timeline(state: &State) -> Option<u32> {
    (0..state.timelines.len())
        .filter(|&h| !state.silent[h] && state.ids[h] == state.system_id)
        .filter_map(|h| state.timelines[h])
        .max()
}

/// The primary from the latest reports: the one writable host of the set's cluster on the
/// highest timeline; `None` if there is none, two share that timeline, or a host that answers
/// has a newer timeline than the best candidate's (its primary does not answer now: never fall
/// back to an older one).
fn decide(state: &State) -> Option<usize> {
    let writable = state.reports.iter().enumerate().filter_map(|(h, r)| {
        let r = r.as_ref()?;
        (!r.in_recovery && state.system_id.as_ref() == Some(&r.system_id))
            .then_some((h, r.timeline.unwrap_or(0)))
    });
    let mut best: Option<(usize, u32)> = None;
    let mut tied = false;
    for (h, timeline) in writable {
        match best {
            Some((_, t)) if t > timeline => {}
            Some((_, t)) if t == timeline => tied = true,
            _ => {
                best = Some((h, timeline));
                tied = false;
            }
        }
    }
    let newest = newest_timeline(state);
    best.filter(|(_, t)| !tied && newest.is_none_or(|n| *t >= n))
        .map(|(h, _)| h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles(n: usize) -> Roles {
        Roles::new((0..n).map(|h| format!("h{h}")).collect())
    }

    fn primary(timeline: u32) -> Option<Report> {
        Some(Report {
            in_recovery: false,
            system_id: "7".into(),
            timeline: Some(timeline),
            position: Some(Lsn(100)),
            history: None,
        })
    }

    fn standby(timeline: Option<u32>) -> Option<Report> {
        Some(Report {
            in_recovery: true,
            system_id: "7".into(),
            timeline,
            position: Some(Lsn(90)),
            history: None,
        })
    }

    /// The levels of the `pindb` events `f` logs.
    fn levels_logged(f: impl FnOnce()) -> Vec<tracing::Level> {
        use std::sync::{Arc, Mutex};
        use tracing::span::{Attributes, Id, Record};
        use tracing::{Event, Metadata};
        struct Levels(Arc<Mutex<Vec<tracing::Level>>>);
        impl tracing::Subscriber for Levels {
            fn enabled(&self, _: &Metadata<'_>) -> bool {
                true
            }
            fn new_span(&self, _: &Attributes<'_>) -> Id {
                Id::from_u64(1)
            }
            fn record(&self, _: &Id, _: &Record<'_>) {}
            fn record_follows_from(&self, _: &Id, _: &Id) {}
            fn event(&self, event: &Event<'_>) {
                let mut levels = self.0.lock().unwrap();
                levels.push(*event.metadata().level());
            }
            fn enter(&self, _: &Id) {}
            fn exit(&self, _: &Id) {}
        }
        let levels = Arc::new(Mutex::new(Vec::new()));
        tracing::subscriber::with_default(Levels(Arc::clone(&levels)), f);
        let levels = levels.lock().unwrap().clone();
        levels
    }

    #[test]
    fn a_healthy_set_listed_standby_first_logs_no_error_at_start_up() {
        let r = roles(3);
        let levels = levels_logged(|| {
            r.report(0, standby(Some(1)));
            r.report(1, primary(1));
            r.report(2, standby(Some(1)));
        });
        assert_eq!(r.primary(), Some(1));
        assert!(
            levels.iter().all(|l| *l > tracing::Level::WARN),
            "nothing above info while the roles are learned: {levels:?}"
        );
        // A set with no primary once every host answered is an error, said once.
        let r = roles(2);
        let levels = levels_logged(|| {
            r.report(0, standby(Some(1)));
            r.report(1, standby(Some(1)));
            r.report(0, standby(Some(1)));
        });
        assert_eq!(r.primary(), None);
        let errors = levels
            .iter()
            .filter(|l| **l == tracing::Level::ERROR)
            .count();
        assert_eq!(errors, 1, "{levels:?}");
        // Losing the primary later is an error too.
        let r = roles(2);
        let levels = levels_logged(|| {
            r.report(0, primary(1));
            r.report(1, standby(Some(1)));
            r.report(0, standby(Some(2)));
        });
        assert!(levels.contains(&tracing::Level::ERROR), "{levels:?}");
    }

    #[test]
    fn the_writable_host_is_the_primary_whatever_its_place() {
        let r = roles(3);
        assert_eq!(
            r.primary(),
            Some(0),
            "the first host until a check says otherwise"
        );
        assert_eq!(
            r.report(0, standby(Some(1))).0,
            Verdict::Standby,
            "no primary known yet: a standby on the newest timeline reported serves reads"
        );
        assert_eq!(r.primary(), None, "no writable host reported yet");
        let (verdict, _) = r.report(1, standby(Some(0)));
        assert!(
            matches!(verdict, Verdict::Excluded(ref why) if why.contains("timeline 0 but the primary is on 1")),
            "{verdict:?}"
        );
        assert_eq!(r.report(2, primary(1)), (Verdict::Primary, Change::Primary));
        assert_eq!(r.primary(), Some(2));
        assert_eq!(r.report(0, standby(Some(1))).0, Verdict::Standby);
    }

    #[test]
    fn a_promotion_moves_the_primary_and_the_old_timeline_serves_nothing() {
        let r = roles(3);
        r.report(0, primary(1));
        r.report(1, standby(Some(1)));
        assert_eq!(r.report(2, standby(Some(1))).0, Verdict::Standby);
        // The primary dies; host 1 is promoted onto timeline 2.
        assert_eq!(
            r.report(0, None),
            (Verdict::Excluded("unreachable".into()), Change::None)
        );
        assert_eq!(
            r.primary(),
            Some(0),
            "a silent primary stays the primary (its writes fail as unreachable) until another wins"
        );
        assert_eq!(
            r.report(2, standby(None)).0,
            Verdict::Standby,
            "meanwhile a standby on the last primary's timeline still serves reads"
        );
        assert_eq!(
            r.report(1, primary(2)),
            (Verdict::Primary, Change::Timeline)
        );
        // Host 2 still follows timeline 1 (its receiver is down: the last one it had counts).
        assert!(matches!(r.report(2, standby(None)).0, Verdict::Excluded(_)));
        assert_eq!(r.report(2, standby(Some(2))).0, Verdict::Standby);
    }

    #[test]
    fn a_former_primary_that_comes_back_writable_is_never_the_primary() {
        let r = roles(2);
        r.report(0, primary(1));
        r.report(1, primary(2));
        assert_eq!(r.primary(), Some(1), "the newest promotion wins");
        let (verdict, change) = r.report(0, primary(1));
        assert!(matches!(verdict, Verdict::Excluded(ref why) if why.contains("split brain")));
        assert_eq!(change, Change::None);
        // The new primary stops answering: the old one is still never chosen.
        assert_eq!(r.report(1, None).1, Change::None);
        assert_eq!(r.report(0, primary(1)).1, Change::None);
        assert_eq!(
            r.primary(),
            Some(1),
            "the silent newer primary, never the older one"
        );
        r.report(1, primary(2));
        assert_eq!(r.split_brain(), vec![0]);
        // It is rebuilt as a standby of the new primary: no longer reported.
        assert_eq!(r.report(0, standby(Some(2))).0, Verdict::Standby);
        assert!(r.split_brain().is_empty());
    }

    #[test]
    fn an_older_timeline_is_refused_while_a_host_that_answers_has_a_newer_one() {
        let r = roles(3);
        // Start-up: the new primary (host 1) does not answer; its standby (host 2) does.
        r.report(1, None);
        r.report(2, standby(Some(2)));
        r.report(0, primary(1));
        assert_eq!(
            r.primary(),
            None,
            "host 0 is on timeline 1, host 2 receives 2"
        );
        // Host 2 stops answering too: nothing tells host 0 is stale any more.
        r.report(2, None);
        assert_eq!(r.primary(), Some(0));
        // A host that reported a newer timeline and was then rebuilt onto an older one does
        // not block the primary for ever.
        r.report(2, standby(Some(3)));
        assert_eq!(r.primary(), None);
        r.report(2, standby(Some(1)));
        assert_eq!(r.primary(), Some(0));
    }

    #[test]
    fn a_standby_without_a_receiver_keeps_the_timeline_it_received() {
        let r = roles(2);
        let mut silent = standby(None).unwrap();
        silent.history = Some(2);
        // Its primary was down when pindb started: its newest history file is all there is.
        assert_eq!(r.report(1, Some(silent.clone())).0, Verdict::Standby);
        assert_eq!(r.report(0, primary(2)).0, Verdict::Primary);
        assert_eq!(r.report(1, Some(silent.clone())).0, Verdict::Standby);
        // Once it received a timeline, a newer history file (fetched, then failed to follow)
        // does not count.
        r.report(1, standby(Some(2)));
        r.report(0, primary(3));
        silent.history = Some(3);
        assert!(matches!(r.report(1, Some(silent)).0, Verdict::Excluded(_)));
    }

    #[test]
    fn no_host_answering_at_start_up_leaves_no_primary() {
        let r = roles(2);
        r.report(0, None);
        r.report(1, None);
        assert_eq!(r.primary(), None);
    }

    #[test]
    fn two_writable_hosts_on_one_timeline_leave_no_primary() {
        let r = roles(2);
        r.report(0, primary(3));
        assert_eq!(r.primary(), Some(0));
        r.report(1, primary(3));
        assert_eq!(
            r.primary(),
            None,
            "no way to tell which is right: refuse writes"
        );
        r.report(1, None);
        assert_eq!(r.primary(), Some(0));
    }

    #[test]
    fn a_host_of_another_cluster_is_excluded_even_when_it_answers_first() {
        let r = roles(3);
        let mut other = primary(9).unwrap();
        other.system_id = "8".into();
        r.report(2, Some(other.clone()));
        r.report(0, primary(1));
        r.report(1, standby(Some(1)));
        let verdict = r.report(2, Some(other)).0;
        assert!(
            matches!(verdict, Verdict::OtherCluster(ref why) if why.contains("another cluster")),
            "{verdict:?}"
        );
        assert_eq!(
            r.primary(),
            Some(0),
            "the cluster most hosts belong to; a higher timeline elsewhere does not count"
        );
    }
}
