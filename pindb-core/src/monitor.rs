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

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::task::AbortHandle;

use crate::config::{MonitorSettings, TopologyCheck};
use crate::coverage::{Carried, Coverage};
use crate::discovery::Slot;
use crate::error::PinDbError;
use crate::lsn::Lsn;
use crate::probe::{lsn_column, Probe};
use crate::replica::{clock, Health, Proof};
use crate::roles::{Change, Report, Roles, Verdict};
use crate::subscription;
use crate::topology::Topology;

/// The master's recent positions, in the order they were recorded: what replica lag is
/// measured against.
struct MasterTrack {
    /// When it was made (the monitor started): a master never heard since is silent.
    started: Instant,
    samples: Mutex<VecDeque<(Instant, Lsn)>>,
    /// The master's probe, shared (pipelined) by its task and the replicas' checks: each
    /// replica check samples the master just before asking the replica, so a caught-up
    /// replica is proved fresh as of its check, not as of the master's last tick. `None`
    /// for a set given as hosts (the primary's own checks feed the track).
    master: Option<tokio::sync::Mutex<Probe>>,
    /// The last sample failed: replica checks do not wait on the master (its task alone
    /// retries), so a dead master does not delay every replica's check.
    failing: std::sync::atomic::AtomicBool,
}

impl Default for MasterTrack {
    fn default() -> Self {
        MasterTrack {
            started: Instant::now(),
            samples: Mutex::default(),
            master: None,
            failing: std::sync::atomic::AtomicBool::default(),
        }
    }
}

impl MasterTrack {
    const CAPACITY: usize = 4096;

    /// Forgets every sample: a new timeline's positions are not comparable with the old
    /// primary's last ones (a crash can leave them ahead).
    fn clear(&self) {
        self.samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// The master was at `lsn` (at least) when asked at `asked` (taken before the query was
    /// sent: a later instant would claim commits the position may not cover).
    fn push(&self, asked: Instant, lsn: Lsn) {
        let mut s = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(last) = s.back_mut().filter(|(t, l)| *l == lsn && *t <= asked) {
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
        s.push_back((asked, lsn));
    }

    /// Asks the master for its position and records it (nothing for a set given as hosts).
    /// `before_check`: asked by a replica check, which skips it while the master fails.
    async fn sample(&self, before_check: bool) -> Result<Option<Lsn>, String> {
        let Some(master) = &self.master else {
            return Ok(None);
        };
        if before_check && self.failing.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(None);
        }
        let asked = Instant::now();
        let row = Probe::shared_row(master, "SELECT pg_current_wal_lsn()::text").await;
        self.failing
            .store(row.is_err(), std::sync::atomic::Ordering::Relaxed);
        let lsn = lsn_column(&row?, 0)?;
        if let Some(lsn) = lsn {
            self.push(asked, lsn);
        }
        Ok(lsn)
    }

    /// `(lag bytes, proof)` of a replica at `replay`: bytes behind the newest position, and
    /// the latest instant before which it provably has every commit. `None` before the first
    /// master sample.
    ///
    /// A master silent for `silent` (no sample answered: it is down, or unreachable) commits
    /// nothing a replica could miss if it is down: a replica that has everything it last
    /// reported is then as stale as the silence allows, `silent`, and no more (so standbys
    /// keep serving while the master is down, as a failover needs). A replica past the last
    /// sample shows a master still writing (a partition): no such allowance.
    fn lag(&self, replay: Lsn, silent: Duration) -> Option<(u64, Proof)> {
        let s = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(newest) = s.iter().map(|(_, lsn)| *lsn).max() else {
            // No master heard since the monitor started (none found, or unreachable): nothing
            // is being committed that we know of, so a standby is as stale as the silence.
            return (self.started.elapsed() > silent)
                .then(|| Instant::now().checked_sub(silent))
                .flatten()
                .map(|at| (0, Proof::At(at)));
        };
        let bytes = newest.0.saturating_sub(replay.0);
        // Samples taken concurrently (pipelined) may be recorded out of order: the latest
        // instant of any sample at or below `replay`.
        let last = s
            .iter()
            .filter(|(_, lsn)| *lsn <= replay)
            .map(|(t, _)| *t)
            .max();
        let heard = s.iter().map(|(t, _)| *t).max();
        let proof = match (last, heard) {
            (Some(_), Some(heard)) if replay == newest && heard.elapsed() > silent => {
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
        let track = Arc::new(MasterTrack {
            master: master_probe,
            ..MasterTrack::default()
        });
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

/// Connections opened (at once) to check that a replica's URL reaches one server.
const SERVER_SAMPLES: usize = 4;

/// Whether a replica's URL reaches one server, from a few fresh connections: a load-balanced
/// reader endpoint reaches several, while the monitor measures the one its connection
/// reached, so a keyed read could land on a server that lacks the key's write. Refused until
/// positions are kept per server. A server is told by its cluster and start time (one server
/// reached over IPv4 and IPv6 is one); a second round must agree (a restart in between).
async fn one_server(
    db: &crate::populate::Database,
    settings: &MonitorSettings,
    problems: &mut Vec<PinDbError>,
) {
    let sql = "SELECT system_identifier::text || '/' || \
               extract(epoch from pg_postmaster_start_time())::text, \
               CASE WHEN family(inet_server_addr()) = 6 \
                 THEN '[' || host(inet_server_addr()) || ']' \
                 ELSE coalesce(host(inet_server_addr()), 'a local socket') END \
               || ':' || coalesce(inet_server_port()::text, '-') \
               FROM pg_control_system()";
    let round = || async {
        let samples = (0..SERVER_SAMPLES).map(|_| async {
            let row = Probe::new(db, timeout(settings)).row(sql).await.ok()?;
            Some((
                row.try_get::<_, String>(0).ok()?,
                row.try_get::<_, String>(1).ok()?,
            ))
        });
        let mut seen: Vec<(String, String)> = Vec::new();
        for (id, address) in futures_util::future::join_all(samples)
            .await
            .into_iter()
            .flatten()
        {
            if !seen.iter().any(|(known, _)| *known == id) {
                seen.push((id, address));
            }
        }
        seen
    };
    if round().await.len() < 2 {
        return;
    }
    let seen = round().await;
    if seen.len() > 1 {
        let addresses: Vec<&str> = seen.iter().map(|(_, a)| a.as_str()).collect();
        problems.push(PinDbError::config(
            db.alias.clone(),
            format!(
                "{} reaches several servers ({}): a load-balanced reader endpoint. pindb \
                 measures each replica's position on one server, so a keyed read could land on \
                 one that lacks the user's write. Declare each standby as its own replica",
                db.redacted_url(),
                addresses.join(", ")
            ),
        ));
    }
}

/// Whether a [`Database::read_only`](crate::adapter::Database::read_only) replica's
/// connections really are read-only: a pooler in front may refuse the startup parameter that
/// makes them so (the pool could not connect: a problem), or drop it (a warning: writes sent
/// there would be applied).
async fn read_only_net(
    db: &crate::populate::Database,
    settings: &MonitorSettings,
    warnings: &mut Vec<String>,
    problems: &mut Vec<PinDbError>,
) {
    if !db.read_only || db.runtime {
        return;
    }
    let alias = &db.alias;
    match Probe::new(db, timeout(settings))
        .row("SHOW default_transaction_read_only")
        .await
    {
        Ok(row) if row.try_get::<_, String>(0).is_ok_and(|v| v == "on") => {}
        Ok(_) => warnings.push(format!(
            "`{alias}`: the read-only safety net is off: its connections ask for \
             `default_transaction_read_only=on` at start-up but get it off (a pooler in front \
             drops startup parameters: PgBouncer's `ignore_startup_parameters = options`); a \
             write sent to this logical or emulated replica would be applied. Connect it \
             directly, or through a pooler that passes `options`"
        )),
        // Refused for the startup parameter (PgBouncer says so; other poolers word it their
        // own way): the same connection without it opens.
        Err(e) if refused_for_the_net(db, settings).await => problems.push(PinDbError::config(
            alias.clone(),
            format!(
                "{e}: the pooler in front refuses the startup parameter `options`, which \
                     opens this logical or emulated replica read-only (it would accept \
                     writes), so no connection to it can open. Connect it directly (or, for \
                     `emulate_replicas`, the master), or through a pooler that passes \
                     `options`"
            ),
        )),
        // Not reachable now: the monitor's checks say so.
        Err(_) => {}
    }
}

/// Whether `db` can be reached without its read-only startup parameter (after a failure
/// with it).
async fn refused_for_the_net(db: &crate::populate::Database, settings: &MonitorSettings) -> bool {
    let plain = crate::populate::Database {
        read_only: false,
        ..db.clone()
    };
    Probe::new(&plain, timeout(settings))
        .row("SELECT 1")
        .await
        .is_ok()
}

/// Waits until the monitor has proved every configured replica fresh to some bound, or found
/// it down (a runtime slot's host comes later), at most `limit`: until then nothing proves a
/// replica fresh, so
/// [`Router::start_monitor`](crate::Router::start_monitor) returns with replicas ready to
/// serve rather than a first burst of reads on the masters.
pub(crate) async fn first_checks(topology: &Topology, limit: Duration) {
    let deadline = Instant::now() + limit;
    let pending = || {
        topology.sets().iter().any(|set| {
            set.replicas
                .iter()
                .zip(set.health.iter())
                .any(|(&index, cell)| topology.slot(index).is_none() && !cell.checked())
        })
    };
    while pending() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Where a replica's position comes from.
enum Source {
    /// A streaming standby: `pg_last_wal_replay_lsn()`, while it is in recovery.
    Standby(Probe),
    /// The master opened read-only (`emulate_replicas`): always caught up.
    Emulated(Probe),
    /// A logical replica: its subscription slot on the master. The tables it carries are
    /// learned at every check, after the position (a table dropped from the publication must
    /// not stay carried while the position moves past the drop); its functions every
    /// [`FUNCTIONS_EVERY`].
    Logical {
        replica: Probe,
        master: Probe,
        coverage: Arc<[Coverage]>,
        /// The replica's own functions, and when they were learned.
        functions: Option<(Instant, Arc<HashSet<Box<str>>>)>,
    },
    /// A host of a set given as a list of hosts: it reports what it is, the set's roles
    /// decide, and it serves reads only as a standby following the primary. The primary's
    /// checks feed the set's lag track.
    Host {
        probe: Probe,
        roles: Arc<Roles>,
        track: Arc<MasterTrack>,
        /// The set's health cells: a promotion takes every other host out until its own
        /// check shows it follows the new timeline.
        health: Arc<[Health]>,
        set: String,
    },
    /// A runtime replica: a standby of the master at whatever host its slot points at now
    /// (checked to be of the master's cluster, since DNS can name anything).
    Runtime {
        alias: String,
        slot: Arc<Slot>,
        /// The probe of the slot's host, and the generation it was made for.
        current: Option<(u64, Probe)>,
        master: Probe,
        /// The master's `system_identifier`, once known.
        master_id: Option<String>,
        timeout: Duration,
    },
}

/// What a host is (works on a primary and on a standby): recovery, cluster, timeline (written,
/// or received: NULL with no receiver running), position (written or replayed), and for a
/// standby with no receiver the newest timeline whose history file it has (1 with none; the
/// `pg_wal` listing runs only then).
const HOST_SQL: &str = "SELECT pg_is_in_recovery(), system_identifier::text, \
    CASE WHEN pg_is_in_recovery() THEN (SELECT received_tli FROM pg_stat_wal_receiver) \
    ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END, \
    (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text, \
    CASE WHEN pg_is_in_recovery() AND NOT EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE received_tli IS NOT NULL) \
      THEN coalesce((SELECT max(('x' || substr(name, 1, 8))::bit(32)::int) \
      FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{8}\\.history$'), 1) END \
    FROM pg_control_system()";

/// Recovery and cluster of a server.
const SYSTEM_SQL: &str =
    "SELECT pg_is_in_recovery(), system_identifier::text FROM pg_control_system()";

/// What a host's report changed, applied: after a promotion (a new timeline) a standby's
/// position on the old timeline says nothing of the new one (it may even be ahead with writes
/// the new primary never had), so every other host serves reads again only after a check that
/// began after this, and lag is measured afresh.
fn after_change(change: Change, r: usize, track: &MasterTrack, health: &[Health]) {
    if change == Change::Timeline {
        track.clear();
        for (_, cell) in health.iter().enumerate().filter(|(h, _)| *h != r) {
            cell.revoke();
        }
    }
}

/// A host's answer to [`HOST_SQL`].
async fn host_report(probe: &mut Probe) -> Result<Report, String> {
    let row = probe.row(HOST_SQL).await?;
    let timeline: Option<i32> = row.try_get(2).map_err(|e| e.to_string())?;
    let history: Option<i32> = row.try_get(4).map_err(|e| e.to_string())?;
    Ok(Report {
        in_recovery: row.try_get(0).map_err(|e| e.to_string())?,
        system_id: row.try_get(1).map_err(|e| e.to_string())?,
        timeline: timeline.map(|t| t as u32),
        position: lsn_column(&row, 3)?,
        history: history.map(|t| t as u32),
    })
}

/// How often a logical replica's own functions are learned again.
const FUNCTIONS_EVERY: Duration = Duration::from_secs(5);

/// A replica's position, and whether it moves at all.
struct Observed {
    position: Option<Lsn>,
    /// `false`: a logical replica whose subscription is not applying (disabled, failing): it
    /// serves no read, whatever its position.
    applying: bool,
}

impl Source {
    /// A runtime replica's slot and the generation of the host its last check asked.
    fn checked_slot(&self) -> Option<(&Slot, u64)> {
        match self {
            Source::Runtime {
                slot,
                current: Some((generation, _)),
                ..
            } => Some((slot, *generation)),
            _ => None,
        }
    }

    fn alias(&self) -> &str {
        match self {
            Source::Standby(p) | Source::Emulated(p) | Source::Host { probe: p, .. } => &p.alias,
            Source::Logical { replica, .. } => &replica.alias,
            Source::Runtime { alias, .. } => alias,
        }
    }

    /// The replica's position. The outer error: it could not be asked. The inner one: it is
    /// not a replica of this master (promoted, a primary, not subscribed), in words.
    async fn position(&mut self, r: usize) -> Result<Result<Observed, String>, String> {
        let observed = |position| Observed {
            position,
            applying: true,
        };
        match self {
            Source::Host {
                probe,
                roles,
                track,
                health,
                set,
            } => {
                let asked = Instant::now();
                let report = host_report(probe).await?;
                let position = report.position;
                let (verdict, change) = roles.report(r, Some(report));
                after_change(change, r, track, health);
                match verdict {
                    Verdict::Standby => Ok(Ok(observed(position))),
                    Verdict::Primary => {
                        if let Some(lsn) = position {
                            track.push(asked, lsn);
                            metrics::gauge!("pindb_master_wal_position_bytes", "set" => set.clone())
                                .set(lsn.0 as f64);
                        }
                        Ok(Err(format!("`{}` is the primary", probe.alias)))
                    }
                    Verdict::Excluded(why) | Verdict::OtherCluster(why) => Ok(Err(why)),
                }
            }
            Source::Runtime {
                slot,
                current,
                alias: _,
                master,
                master_id,
                timeout,
            } => {
                let (generation, db) = slot.now();
                if current.as_ref().map(|(g, _)| *g) != Some(generation) {
                    *current = db.map(|db| (generation, Probe::new(&db, *timeout)));
                }
                let Some((_, probe)) = current else {
                    return Ok(Err("no host now".to_owned()));
                };
                if master_id.is_none() {
                    let row = master.row(SYSTEM_SQL).await?;
                    *master_id = Some(row.try_get(1).map_err(|e| e.to_string())?);
                    // Asked once: no idle connection to the master per slot.
                    master.disconnect();
                }
                let row = probe
                    .row(
                        "SELECT pg_is_in_recovery(), system_identifier::text, \
                          pg_last_wal_replay_lsn()::text FROM pg_control_system()",
                    )
                    .await?;
                let in_recovery: bool = row.try_get(0).map_err(|e| e.to_string())?;
                let id: String = row.try_get(1).map_err(|e| e.to_string())?;
                let url = probe.redacted_url.clone();
                Ok(if !in_recovery {
                    Err(format!(
                        "{url} is not in recovery (a primary); not reading from it"
                    ))
                } else if master_id.as_deref() != Some(id.as_str()) {
                    Err(format!(
                        "{url} belongs to another cluster (system_identifier {id}, the master \
                         has {}); not reading from it",
                        master_id.as_deref().unwrap_or("?")
                    ))
                } else {
                    Ok(observed(lsn_column(&row, 2)?))
                })
            }
            Source::Emulated(probe) => {
                let row = probe.row("SELECT pg_current_wal_lsn()::text").await?;
                Ok(Ok(observed(lsn_column(&row, 0)?)))
            }
            Source::Standby(probe) => {
                let row = probe
                    .row("SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text")
                    .await?;
                let in_recovery: bool = row.try_get(0).map_err(|e| e.to_string())?;
                Ok(match in_recovery {
                    true => Ok(observed(lsn_column(&row, 1)?)),
                    false => Err(format!(
                        "`{}` is not in recovery (promoted?); not reading from it",
                        probe.alias
                    )),
                })
            }
            Source::Logical {
                replica,
                master,
                coverage,
                functions,
            } => {
                let following = match subscription::follow(replica, master).await? {
                    Ok(f) => f,
                    Err(problem) => {
                        coverage[r].set(None);
                        return Ok(Err(problem));
                    }
                };
                // A failure below fails the whole check: the position is not taken either, so
                // what is known of coverage and position stays consistent (a transient error
                // does not throw away coverage; repeated ones take the replica down).
                let fresh = functions
                    .as_ref()
                    .filter(|(at, _)| at.elapsed() < FUNCTIONS_EVERY)
                    .map(|(_, f)| Arc::clone(f));
                let functions = match fresh {
                    Some(f) => f,
                    None => {
                        let found = Arc::new(subscription::functions(replica).await?);
                        *functions = Some((Instant::now(), Arc::clone(&found)));
                        found
                    }
                };
                // Learned after the position, so never older than it.
                let relations = subscription::tables(replica, master, &following).await?;
                coverage[r].set(Some(Carried {
                    relations,
                    functions,
                }));
                Ok(Ok(Observed {
                    position: following.position,
                    applying: following.applying,
                }))
            }
        }
    }
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
    loop {
        tokio::select! {
            _ = every.tick() => {}
            // A write was recorded: check once it has had time to replicate (signals that
            // arrive meanwhile are one check).
            _ = written[r].notified(), if !recheck.is_zero() => tokio::time::sleep(recheck).await,
        }
        // A suspicion raised while the check runs (a promotion elsewhere, a failed read)
        // wins over what the check saw.
        let seen = health[r].suspicions();
        if !emulated {
            // Just before the replica is asked: what proves it fresh if it has caught up. A
            // failure here leaves the proof to the master's own task.
            let _ = track.sample(true).await;
        }
        let checked = source.position(r).await;
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
            Ok(Ok(Observed {
                position: replay,
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
                    Some(replay) => track.lag(replay, silent).unwrap_or((0, Proof::None)),
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
                let lag_ms = health[r].staleness_ms(clock::now());
                let over = over || lag_ms > settings.max_lag_ms;
                if over != was_over && !applying {
                    tracing::info!(target: "pindb", %alias, "pindb monitor: not applying (its subscription is disabled or its apply worker is not running): no read goes there whatever its lag");
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
                    health[r].set_down();
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

/// Checks that every master is a primary and every replica is a standby of the same cluster
/// as its master (same `system_identifier`). Returns the warnings (unreachable servers cannot
/// be checked; with [`TopologyCheck::Warn`], problems too); a problem is a
/// [`PinDbError::Config`] naming the alias under [`TopologyCheck::Error`]. `live`: what it
/// finds of a set given as hosts is the set's state from now on (start-up), not a look aside
/// (`pindb check` on a running router).
pub(crate) async fn verify_topology(
    topology: &Topology,
    settings: &MonitorSettings,
    emulated: bool,
    live: bool,
) -> Result<Vec<String>, PinDbError> {
    if settings.topology_check == TopologyCheck::Off {
        return Ok(Vec::new());
    }
    let mut warnings = Vec::new();
    let mut problems = Vec::new();
    let sql = SYSTEM_SQL;
    for set in topology.sets() {
        if let Some(roles) = &set.roles {
            let scratch = roles.scratch();
            let roles = if live { roles } else { &scratch };
            let found = Discovered {
                warnings: &mut warnings,
                problems: &mut problems,
                live,
            };
            discover(topology, set, roles, settings, found).await;
            continue;
        }
        let replicas = &set.replicas;
        let Some(master) = set.master() else {
            continue;
        };
        let master_db = &topology.databases()[master];
        for &index in replicas {
            let db = &topology.databases()[index];
            read_only_net(db, settings, &mut warnings, &mut problems).await;
            if !emulated && !db.is_logical() && !db.runtime {
                one_server(db, settings, &mut problems).await;
            }
        }
        let master_id = match Probe::new(master_db, timeout(settings)).row(sql).await {
            Ok(row) => {
                let (in_recovery, id): (bool, String) = (row.get(0), row.get(1));
                if in_recovery {
                    problems.push(PinDbError::config(
                        master_db.alias.clone(),
                        format!(
                            "configured as a master but {} is in recovery (a standby); point it at the primary",
                            master_db.redacted_url()
                        ),
                    ));
                }
                Some(id)
            }
            Err(e) => {
                warnings.push(format!(
                    "topology not checked for `{}`: {e}",
                    master_db.alias
                ));
                None
            }
        };
        for (r, &index) in replicas.iter().enumerate().filter(|_| !emulated) {
            let db = &topology.databases()[index];
            if db.runtime {
                // Checked by the monitor as hosts come, each against the master's cluster.
                continue;
            }
            if db.is_logical() {
                let mut replica = Probe::new(db, timeout(settings));
                let mut master = Probe::new(master_db, timeout(settings));
                match check_logical(&mut replica, &mut master).await {
                    Ok(Ok(carried)) => set.coverage[r].set(Some(carried)),
                    Ok(Err(problem)) => {
                        problems.push(PinDbError::config(db.alias.clone(), problem))
                    }
                    Err(e) => {
                        warnings.push(format!("topology not checked for `{}`: {e}", db.alias))
                    }
                }
                continue;
            }
            match Probe::new(db, timeout(settings)).row(sql).await {
                Ok(row) => {
                    let (in_recovery, id): (bool, String) = (row.get(0), row.get(1));
                    if !in_recovery {
                        problems.push(PinDbError::config(
                            db.alias.clone(),
                            format!(
                                "configured as a replica but {} is not in recovery (a primary, or promoted); \
                                 point it at a streaming standby of `{}`",
                                db.redacted_url(),
                                master_db.alias
                            ),
                        ));
                    } else if master_id.as_ref().is_some_and(|m| *m != id) {
                        problems.push(PinDbError::config(
                            db.alias.clone(),
                            format!(
                                "{} belongs to another cluster (system_identifier {id}, its master `{}` has {}); \
                                 point it at a standby of that master",
                                db.redacted_url(),
                                master_db.alias,
                                master_id.as_deref().unwrap_or("?")
                            ),
                        ));
                    }
                }
                Err(e) => warnings.push(format!("topology not checked for `{}`: {e}", db.alias)),
            }
        }
    }
    if settings.topology_check == TopologyCheck::Error {
        if let Some(first) = problems.into_iter().next() {
            return Err(first);
        }
    } else {
        warnings.extend(problems.into_iter().map(|p| p.to_string()));
    }
    for w in &warnings {
        tracing::warn!(target: "pindb", "{w}");
    }
    Ok(warnings)
}

/// Where [`discover`] puts what it finds.
struct Discovered<'a> {
    warnings: &'a mut Vec<String>,
    problems: &'a mut Vec<PinDbError>,
    /// The set's own roles and health are updated (start-up), not a scratch copy.
    live: bool,
}

/// The first look at a set given as hosts: every host reports, then the roles are decided
/// (so that the service starts writing to the right one). A host of another cluster is a
/// problem; no primary (a failover under way) or a split brain is a warning: writes are
/// refused with a retryable error until the monitor finds one primary.
async fn discover(
    topology: &Topology,
    set: &crate::topology::SetEntry,
    roles: &Roles,
    settings: &MonitorSettings,
    found: Discovered<'_>,
) {
    let Discovered {
        warnings,
        problems,
        live,
    } = found;
    let set_down = |h: usize| {
        if live {
            set.health[h].set_down();
        }
    };
    // Every host is asked first, and the roles change only after the last answer, in one
    // step with no `.await`: a start-up dropped half-way leaves the roles as they were.
    let mut reports = Vec::with_capacity(set.replicas.len());
    for &index in &set.replicas {
        let db = &topology.databases()[index];
        reports.push(host_report(&mut Probe::new(db, timeout(settings))).await);
    }
    let mut answered = Vec::new();
    for (h, report) in reports.into_iter().enumerate() {
        match report {
            Ok(report) => {
                roles.report(h, Some(report));
                answered.push(h);
            }
            Err(e) => {
                roles.report(h, None);
                set_down(h);
                let alias = &topology.databases()[set.replicas[h]].alias;
                warnings.push(format!("topology not checked for `{alias}`: {e}"));
            }
        }
    }
    for h in answered {
        let alias = &topology.databases()[set.replicas[h]].alias;
        let verdict = roles.verdict(h);
        // Only a standby of the primary serves reads before the monitor's first checks.
        if verdict != Verdict::Standby {
            set_down(h);
        }
        match verdict {
            Verdict::Primary | Verdict::Standby => {}
            Verdict::OtherCluster(why) => problems.push(PinDbError::config(alias.clone(), why)),
            Verdict::Excluded(why) => warnings.push(format!("`{alias}`: {why}")),
        }
    }
    if roles.primary().is_none() {
        warnings.push(format!(
            "set `{}` has no writable primary among its hosts now; its writes are refused \
             (PinDbError::NoPrimary, retryable) until the monitor finds one",
            set.name
        ));
    }
}

/// A logical replica subscribes to its master, with every subscription enabled and every
/// publication there: what it carries, or the problem in words.
async fn check_logical(
    replica: &mut Probe,
    master: &mut Probe,
) -> Result<Result<crate::coverage::Carried, String>, String> {
    let following = match subscription::follow(replica, master).await? {
        Ok(f) => f,
        Err(problem) => return Ok(Err(problem)),
    };
    if !following.disabled.is_empty() {
        return Ok(Err(format!(
            "the subscription {} of `{}` to `{}` is disabled, so it applies nothing; \
             ALTER SUBSCRIPTION {} ENABLE",
            following.disabled.join(", "),
            replica.alias,
            master.alias,
            following.disabled[0]
        )));
    }
    Ok(subscription::carried(replica, master, &following).await)
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
        assert_eq!(t.lag(Lsn(100), HOUR), Some((0, Proof::At(second))));
        assert_eq!(
            t.lag(Lsn(120), HOUR),
            Some((0, Proof::At(second))),
            "a replica ahead of the last sample is as fresh as that sample"
        );
    }

    #[test]
    fn freshness_is_proved_by_the_last_sample_a_replica_has_replayed() {
        let t = MasterTrack::default();
        assert_eq!(t.lag(Lsn(1), HOUR), None, "no master sample yet");
        assert!(
            matches!(t.lag(Lsn(1), Duration::ZERO), Some((0, Proof::At(_)))),
            "a master silent since the start"
        );
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(30);
        t.push(t0, Lsn(100));
        t.push(t1, Lsn(200));
        // At 150 it has everything committed before the first sample was asked for, and
        // nothing proves more: its staleness grows from t0, not from when the master passed
        // 150 (which the samples cannot tell).
        assert_eq!(t.lag(Lsn(150), HOUR), Some((50, Proof::At(t0))));
        assert_eq!(t.lag(Lsn(200), HOUR), Some((0, Proof::At(t1))));
        assert_eq!(
            t.lag(Lsn(50), HOUR),
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
        let Some((0, Proof::At(at))) = t.lag(Lsn(100), silent) else {
            panic!("caught up with the last sample")
        };
        let staleness = at.elapsed();
        assert!(
            staleness >= silent && staleness < Duration::from_secs(5),
            "as stale as the silence allows, not 60 s: {staleness:?}"
        );
        // Behind the last sample: the bound keeps growing from the proof.
        t.push(long_ago + Duration::from_millis(1), Lsn(200));
        assert_eq!(t.lag(Lsn(100), silent), Some((100, Proof::At(long_ago))));
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
            t.lag(Lsn(2), HOUR).unwrap().1,
            Proof::At(start + Duration::from_micros(1)),
            "the second oldest is kept"
        );
        let last = *t.samples.lock().unwrap().back().unwrap();
        t.push(last.0 + Duration::from_millis(5), last.1);
        assert_eq!(
            t.samples.lock().unwrap().len(),
            len,
            "an idle master: one sample"
        );
    }
}
