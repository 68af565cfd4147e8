//! The replica monitor: background tasks that keep each replica's health and position fresh,
//! and the start-up topology check.
//!
//! It takes the [`Topology`] and writes its health cells, over [`Probe`]s (connections of
//! pindb's own): one task per master (its WAL position) and one per replica (recovery state,
//! replay position). Routing
//! never waits for it; it only reads the health cells the monitor writes.
//!
//! Time lag is a bound proved from the master's own history, not replay timestamps: each
//! master sample is kept with the instant it was *asked for*, so every transaction committed
//! before that instant is at or below its position. A replica that has replayed a sample's
//! position therefore has everything committed before the sample was asked for, and its
//! staleness at any later instant t is at most t minus that instant: the bound grows between
//! checks, and every read is decided against it then (`replica::Health`). An idle master is
//! not lag; a NULL replay position (receiver stopped) is unbounded.
//!
//! Files: this one spawns and runs the tasks; `source.rs` asks each kind of replica for its
//! position; `track.rs` keeps the master's history and proves freshness from it; `startup.rs`
//! holds the start-up checks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::AbortHandle;

use crate::config::MonitorSettings;
use crate::freshness::{self, Proof};
use crate::lsn::Lsn;
use crate::probe::{Applied, Probe, Reading};
use crate::replica::Health;
use crate::topology::Topology;

#[cfg(feature = "mariadb")]
mod mariadb;
mod source;
mod startup;
mod track;

use source::{after_change, Source};
pub(crate) use startup::{first_checks, verify_topology};
use track::MasterTrack;

/// Starts one task per master and per replica. Returns their abort handles.
/// `emulated`: replicas are their masters opened read-only (`emulate_replicas`): always
/// caught up, never in recovery.
pub(crate) fn spawn(
    topology: &Topology,
    settings: &MonitorSettings,
    emulated: bool,
) -> Vec<AbortHandle> {
    let mut handles = Vec::new();
    for entry in topology.sets() {
        let (replicas, health) = (&entry.replicas, &entry.health);
        let (coverage, written) = (&entry.coverage, &entry.written);
        let set = &*entry.name;
        let master_probe = match (entry.roles.is_some(), entry.master()) {
            (false, Some(m)) => Some(tokio::sync::Mutex::new(Probe::new(
                &topology.databases()[m],
                timeout(settings),
            ))),
            _ => None,
        };
        let track = Arc::new(MasterTrack::new(
            master_probe,
            topology.backend(),
            timeout(settings),
            Arc::clone(&entry.gtid),
        ));
        // From now on a bound is proved by the monitor's checks: until a replica's first
        // one, nothing proves it fresh (emulated replicas are the master itself).
        for cell in health.iter() {
            cell.limit_lag(settings.max_lag_ms);
            if !emulated {
                cell.unproved();
            }
        }
        let spawn_replica = |source, r| {
            tokio::spawn(watch_replica(
                set.to_owned(),
                source,
                Arc::clone(&track),
                Replica {
                    health: Arc::clone(health),
                    written: Arc::clone(written),
                    r,
                },
                settings.clone(),
            ))
            .abort_handle()
        };
        if let Some(roles) = &entry.roles {
            // Every host is watched alike; the primary's checks feed the lag track.
            for (h, &index) in replicas.iter().enumerate() {
                let source = Source::Host {
                    probe: Probe::new(&topology.databases()[index], timeout(settings)),
                    roles: Arc::clone(roles),
                    track: Arc::clone(&track),
                    health: Arc::clone(health),
                    set: set.to_owned(),
                };
                handles.push(spawn_replica(source, h));
            }
            continue;
        }
        let Some(master) = entry.master() else {
            continue;
        };
        let master_db = &topology.databases()[master];
        handles.push(
            tokio::spawn(watch_master(
                set.to_owned(),
                Arc::clone(&track),
                interval(settings),
            ))
            .abort_handle(),
        );
        for (r, &index) in replicas.iter().enumerate() {
            if let Some(slot) = topology.slot(index) {
                let source = Source::Runtime {
                    alias: topology.databases()[index].alias.clone(),
                    slot: Arc::clone(slot),
                    current: None,
                    master: Probe::new(master_db, timeout(settings)),
                    master_id: None,
                    timeout: timeout(settings),
                };
                handles.push(spawn_replica(source, r));
                continue;
            }
            let db = &topology.databases()[index];
            let probe = Probe::new(db, timeout(settings));
            let source = match (emulated, db.is_logical()) {
                (true, _) => Source::Emulated(probe),
                (false, false) => Source::Standby(probe),
                (false, true) => Source::Logical {
                    replica: probe,
                    master: Probe::new(master_db, timeout(settings)),
                    coverage: Arc::clone(coverage),
                    functions: None,
                },
            };
            handles.push(spawn_replica(source, r));
        }
    }
    handles
}

fn timeout(s: &MonitorSettings) -> Duration {
    Duration::from_millis(s.check_timeout_ms)
}

fn interval(s: &MonitorSettings) -> tokio::time::Interval {
    let mut i = tokio::time::interval(Duration::from_millis(s.interval_ms));
    i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    i
}

async fn watch_master(set: String, track: Arc<MasterTrack>, mut every: tokio::time::Interval) {
    let mut logged = false;
    let mut ticks = 0u64;
    loop {
        every.tick().await;
        // Replication slots every 20 checks: what the primary keeps on disk for its replicas.
        if let Some(master) = track.master.as_ref().filter(|_| ticks.is_multiple_of(20)) {
            report_slots(&set, &mut *master.lock().await).await;
        }
        ticks += 1;
        match track.sample(false).await {
            Ok(Some(lsn)) => {
                metrics::gauge!("pindb_master_wal_position_bytes", "set" => set.clone())
                    .set(lsn.0 as f64);
                logged = false;
            }
            Ok(None) => {}
            Err(e) => {
                if !logged {
                    tracing::warn!(target: "pindb", error = %e, "pindb monitor: master position unavailable");
                    logged = true;
                }
            }
        }
    }
}

/// `pindb_replication_slot_retained_bytes{set, slot}` and `pindb_replication_slot_active`: WAL
/// the master keeps for each replication slot, and whether a consumer is connected. A slot nobody consumes (a paused subscription, a dead standby) grows it
/// until the primary's disk is full.
async fn report_slots(set: &str, probe: &mut Probe) {
    let sql = "SELECT coalesce(string_agg(slot_name || ' ' || active::text || ' ' || \
               coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint::text, ','), '') \
               FROM pg_replication_slots";
    let Ok(row) = probe.row(sql).await else {
        return;
    };
    let Ok(text) = row.try_get::<_, String>(0) else {
        return;
    };
    for slot in text.split(',').filter(|s| !s.is_empty()) {
        let mut parts = slot.split(' ');
        let (Some(name), Some(active), Some(bytes)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let labels = [("set", set.to_owned()), ("slot", name.to_owned())];
        metrics::gauge!("pindb_replication_slot_retained_bytes", &labels)
            .set(bytes.parse::<f64>().unwrap_or(0.0));
        metrics::gauge!("pindb_replication_slot_active", &labels).set(if active == "true" {
            1.0
        } else {
            0.0
        });
    }
}

/// The replica a monitor task watches: its set's health cells and write signals, and its
/// index among the set's replicas.
struct Replica {
    health: Arc<[Health]>,
    written: Arc<[tokio::sync::Notify]>,
    r: usize,
}

/// A replica chased after a write: its next check, the wait before it, and the master
/// position it must reach.
struct Chase {
    at: tokio::time::Instant,
    step: Duration,
    target: Lsn,
}

async fn watch_replica(
    set: String,
    mut source: Source,
    track: Arc<MasterTrack>,
    replica: Replica,
    settings: MonitorSettings,
) {
    let Replica { health, written, r } = replica;
    let recheck = Duration::from_millis(settings.recheck_after_write_ms);
    let mut every = interval(&settings);
    let mut failures = 0u32;
    // Good checks in a row since the last failure or suspicion: a replica that was down
    // comes back after `successes_before_up` of them.
    let mut successes = 0u32;
    // A runtime replica: the host generation of the last check.
    let mut checked_generation = None;
    let mut suspicions = health[r].suspicions();
    let (mut last_position, mut was_stalled) = (None, false);
    let mut unchanged_since = Instant::now();
    let alias = source.alias().to_owned();
    let emulated = matches!(source, Source::Emulated(_));
    // How long without a master sample before the master counts as silent (see
    // `MasterTrack::lag`): two checks and their timeout.
    let silent = 2 * Duration::from_millis(settings.interval_ms) + timeout(&settings);
    let gauge_labels = [("set", set.clone()), ("alias", alias.clone())];
    // A write's recheck that found the replica behind: it is checked again, twice as late
    // each time, until it has the master's position that recheck saw, so a replica slow to
    // replay (a loaded host) is seen caught up soon, not an interval later.
    let mut chase: Option<Chase> = None;
    let regular = Duration::from_millis(settings.interval_ms);
    loop {
        // Set when this check is a write's recheck, or a chase's: how long it waited.
        let mut after_write = None;
        let chase_at = chase.as_ref().map(|c| c.at);
        tokio::select! {
            _ = every.tick() => {}
            // A write was recorded: check once it has had time to replicate (signals that
            // arrive meanwhile are one check). It chases the master's position anew.
            _ = written[r].notified(), if !recheck.is_zero() => {
                tokio::time::sleep(recheck).await;
                after_write = Some(recheck);
                chase = None;
            }
            _ = tokio::time::sleep_until(chase_at.unwrap_or_else(tokio::time::Instant::now)),
                if chase_at.is_some() => {
                after_write = chase.as_ref().map(|c| c.step);
            }
        }
        // A suspicion raised while the check runs (a promotion elsewhere, a failed read)
        // wins over what the check saw.
        let seen = health[r].suspicions();
        let mut sampled = None;
        if !emulated {
            // Just before the replica is asked: what proves it fresh if it has caught up. A
            // failure here leaves the proof to the master's own task.
            sampled = track.sample(true).await.ok().flatten();
        }
        // A MariaDB replica's position, in its set's domain.
        let checked = source.position(r).await.map(|checked| {
            checked.map(|a| Applied {
                reading: track.domain.replica_read(a.reading),
                ..a
            })
        });
        if let Some((_, generation)) = source.checked_slot() {
            // A runtime replica's new host: the old one's failures are not its own.
            if checked_generation.replace(generation) != Some(generation) {
                failures = 0;
            }
        }
        let was_up = health[r].status().up;
        if health[r].suspicions() != suspicions {
            suspicions = health[r].suspicions();
            successes = 0;
        }
        match checked {
            Ok(Ok(Applied {
                reading:
                    Reading {
                        position: replay,
                        outside,
                        ..
                    },
                applying,
            })) => {
                failures = 0;
                successes = successes.saturating_add(1);
                let up = was_up || successes >= settings.successes_before_up;
                let (lag_bytes, proof) = match replay {
                    // The master itself, read-only: as fresh as the master.
                    _ if emulated => (0, Proof::Always),
                    // The receiver stopped or never started: infinitely behind.
                    None => (u64::MAX, Proof::None),
                    // No master sample yet: nothing proves it fresh.
                    Some(replay) => track
                        .lag(replay, &outside, silent)
                        .unwrap_or((0, Proof::None)),
                };
                // Time lag is decided at each read against the proof; bytes at the check. A
                // subscription that is not applying is frozen: no read, whatever its lag.
                let over = lag_bytes > settings.max_lag_bytes || !applying;
                let was_over = health[r].status().over_lag;
                let record = || {
                    health[r].set_position(
                        replay.unwrap_or_default(),
                        lag_bytes,
                        proof,
                        over,
                        up,
                        seen,
                    )
                };
                let recorded = match source.checked_slot() {
                    // Recorded only if the slot still has the host that was checked.
                    Some((slot, generation)) => slot.if_current(generation, record),
                    None => Some(record()),
                };
                if recorded != Some(true) {
                    // A check of a host the slot left, or overtaken by a suspicion: it does
                    // not count towards `successes_before_up`.
                    successes = 0;
                }
                let lag_ms = health[r].staleness_ms(freshness::now());
                let over = over || lag_ms > settings.max_lag_ms;
                if over != was_over && !applying {
                    tracing::info!(target: "pindb", %alias, "pindb monitor: not applying (a subscription disabled or its apply worker stopped, a MariaDB SQL thread stopped): no read goes there whatever its lag");
                } else if over != was_over {
                    tracing::info!(target: "pindb", %alias, lag_bytes, lag_ms, over_lag = over, "pindb monitor: replica lag state changed");
                }
                // No position (receiver stopped): infinitely behind, as Prometheus says it.
                let gauge = |v: u64, scale: f64| match v {
                    u64::MAX => f64::INFINITY,
                    v => v as f64 / scale,
                };
                metrics::gauge!("pindb_replica_lag_bytes", &gauge_labels)
                    .set(gauge(lag_bytes, 1.0));
                metrics::gauge!("pindb_replica_lag_seconds", &gauge_labels)
                    .set(gauge(lag_ms, 1000.0));
                if let Some(position) = replay {
                    metrics::gauge!("pindb_replica_replay_position_bytes", &gauge_labels)
                        .set(position.0 as f64);
                }
                // Stalled: behind, and the position (none counts as one) has not moved for
                // `stalled_after_ms` by the monitor's own clock: a paused replay or
                // subscription, a broken receiver. Lag alone can be a burst; this is worth an
                // alert.
                // What a write's recheck chases: the master's position it saw, until this
                // replica has it (a replica down, not applying or without a position is
                // not chased). A regular check meanwhile keeps the chase's rhythm.
                let target = match &chase {
                    Some(c) => Some(c.target),
                    None => sampled.filter(|_| after_write.is_some()),
                };
                chase = match (target, replay) {
                    (Some(target), Some(at)) if at < target && applying && was_up => {
                        match after_write {
                            Some(step) => {
                                Some(step * 2)
                                    .filter(|next| *next < regular)
                                    .map(|step| Chase {
                                        at: tokio::time::Instant::now() + step,
                                        step,
                                        target,
                                    })
                            }
                            None => chase.take(),
                        }
                    }
                    _ => None,
                };
                if replay != last_position || lag_bytes == 0 {
                    last_position = replay;
                    unchanged_since = Instant::now();
                }
                let stalled = lag_bytes > 0
                    && unchanged_since.elapsed()
                        >= Duration::from_millis(settings.stalled_after_ms);
                if stalled != was_stalled {
                    if stalled {
                        tracing::warn!(target: "pindb", %alias, lag_bytes, "pindb monitor: replication to this replica is stalled");
                    }
                    was_stalled = stalled;
                }
                metrics::gauge!("pindb_replica_stalled", &gauge_labels).set(if stalled {
                    1.0
                } else {
                    0.0
                });
            }
            Ok(Err(problem)) => {
                chase = None;
                // Promoted, a primary by mistake, unsubscribed: never read from it. A host of
                // a set given as hosts answered, though: its next failure is its first.
                failures = match source {
                    Source::Host { .. } => 0,
                    _ => settings.failures_before_down,
                };
                successes = 0;
                health[r].set_down();
                if was_up {
                    match &source {
                        // A discovered set's primary, or a standby catching up with a new
                        // timeline: roles change, that is the point.
                        Source::Host { .. } => {
                            tracing::info!(target: "pindb", %alias, %problem, "pindb monitor: host serves no reads")
                        }
                        _ => {
                            tracing::error!(target: "pindb", %alias, %problem, "pindb monitor: not a replica of its master")
                        }
                    }
                }
            }
            Err(e) => {
                chase = None;
                failures = failures.saturating_add(1);
                successes = 0;
                if failures >= settings.failures_before_down {
                    if let Source::Host {
                        roles,
                        track,
                        health,
                        ..
                    } = &source
                    {
                        // It can no longer become the primary, nor serve as a standby.
                        after_change(roles.report(r, None).1, r, track, health);
                    }
                    health[r].set_unreachable();
                    if was_up {
                        tracing::warn!(target: "pindb", %alias, error = %e, "pindb monitor: replica down");
                    }
                }
            }
        }
        let up = health[r].status().up;
        if up != was_up {
            metrics::counter!("pindb_replica_state_changes_total", &gauge_labels).increment(1);
            if up {
                tracing::info!(target: "pindb", %alias, "pindb monitor: replica back up");
            }
        }
        metrics::gauge!("pindb_replica_up", &gauge_labels).set(if up { 1.0 } else { 0.0 });
    }
}
