//! A one-shot look at every database of the topology, for `pindb status` and operators: role,
//! reachability, replication position and lag, and the WAL each primary keeps for its
//! replication slots. Its own connections (the probes), one query per database, and for a
//! replica that is behind, the few it takes to measure its time lag (`time_lag`); no monitor
//! needed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::backend::Backend;
use crate::gtid::GtidPosition;
use crate::lsn::Lsn;
use crate::populate::{Database, Membership};
use crate::probe::{Applied, Asked, Probe, Reading};
use crate::subscription;
use crate::topology::Topology;

/// What one database looks like right now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct DatabaseStatus {
    /// The alias.
    pub alias: String,
    /// Its set, for masters and replicas.
    pub set: Option<String>,
    /// `master`, `replica` or `unmanaged`.
    pub role: &'static str,
    /// Replicas: `streaming` or `logical`; else empty.
    pub kind: &'static str,
    /// It answered.
    pub up: bool,
    /// Why it did not answer.
    pub error: Option<String>,
    /// Whether it is a standby (`pg_is_in_recovery()`; MariaDB: it replicates).
    pub in_recovery: Option<bool>,
    /// Masters: the current WAL position; replicas: the replayed one (`X/Y`). MariaDB: the
    /// sequence number in the set's GTID domain.
    pub position: Option<String>,
    /// Replicas: WAL bytes the master has that this one has not replayed (MariaDB:
    /// transactions of the domain).
    pub lag_bytes: Option<u64>,
    /// Replicas: how long the master has had WAL this one has not replayed (the README's
    /// lag; an idle master is never lag): 0 when it had replayed the master's position as
    /// sampled, else at most this much, measured by waiting for it to replay that position
    /// (at least this much when `lag_ms_at_least`). `None`: not known (logical replicas
    /// that are behind: only the monitor measures their time lag).
    pub lag_ms: Option<u64>,
    /// `lag_ms` is a lower bound: the replica had not replayed the master's sampled position
    /// within the check timeout.
    pub lag_ms_at_least: bool,
    /// Masters: WAL kept for each replication slot.
    pub slots: Vec<SlotStatus>,
    /// Logical replicas: the tables their publications carry (`*`: all of them).
    pub published: Vec<String>,
}

/// A replication slot on a master.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct SlotStatus {
    /// The slot's name.
    pub name: String,
    /// Whether a consumer is connected.
    pub active: bool,
    /// WAL bytes the master keeps for it.
    pub retained_bytes: u64,
}

// Also right on a standby (a misconfigured master, an unmanaged standby): its replay position.
const MASTER: &str = "SELECT pg_is_in_recovery(), (CASE WHEN pg_is_in_recovery() \
    THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text, \
    coalesce((SELECT string_agg(slot_name || ' ' || active::text || ' ' || \
      coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint::text, ',') \
      FROM pg_replication_slots WHERE NOT pg_is_in_recovery()), '')";
const REPLICA: &str = "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text";
/// How often a replica that is behind is asked its replay position again.
const POLL: Duration = Duration::from_millis(5);

/// A master's position as status sampled it, and its connection, to sample it again.
struct MasterSample {
    lsn: Lsn,
    probe: Probe,
    /// MariaDB: the master's domain and what it has outside it, which a replica must have
    /// too to be as fresh as `lsn` says.
    outside: GtidPosition,
    domain: Option<u32>,
}

impl MasterSample {
    /// `None` without a position (a master that wrote nothing yet).
    fn new(probe: Probe, reading: Reading) -> Option<MasterSample> {
        Some(MasterSample {
            lsn: reading.position?,
            probe,
            outside: reading.outside,
            domain: reading.domain,
        })
    }
}

pub(crate) async fn status(topology: &Topology, timeout: Duration) -> Vec<DatabaseStatus> {
    let mut out = Vec::new();
    // Per set: a replica is compared with its own master only.
    let mut masters: HashMap<String, MasterSample> = HashMap::new();
    for (index, db) in topology.databases().iter().enumerate() {
        // A runtime replica: its host now, or none.
        let now = topology.database_now(index);
        let db: &Database = match &now {
            Ok((_, db)) => db,
            Err(_) => db,
        };
        let replica = matches!(db.membership, Membership::Replica { .. });
        let mut status = DatabaseStatus {
            alias: db.alias.clone(),
            set: db.set().map(str::to_owned),
            role: role(db),
            kind: if replica { db.kind.as_str() } else { "" },
            up: false,
            error: None,
            in_recovery: None,
            position: None,
            lag_bytes: None,
            lag_ms: None,
            lag_ms_at_least: false,
            slots: Vec::new(),
            published: Vec::new(),
        };
        if db.is_logical() {
            logical(topology, db, timeout, &masters, &mut status).await;
            out.push(status);
            continue;
        }
        if now.is_err() {
            status.error = Some("a runtime replica slot with no host now".to_owned());
            out.push(status);
            continue;
        }
        let sql = if replica { REPLICA } else { MASTER };
        let mut probe = Probe::new(db, timeout);
        if db.backend != Backend::Postgres {
            let master = db.set().and_then(|set| masters.get_mut(set));
            let sample = neutral(db, &mut probe, master, timeout, &mut status).await;
            if let (Membership::Master { set }, Some(reading)) = (&db.membership, sample) {
                if let Some(sample) = MasterSample::new(probe, reading) {
                    masters.insert(set.clone(), sample);
                }
            }
            out.push(status);
            continue;
        }
        match probe.row(sql).await {
            Err(e) => status.error = Some(e),
            Ok(row) => {
                status.up = true;
                status.in_recovery = row.try_get(0).ok();
                if db.is_host() {
                    // A set given as hosts: what each one is now.
                    status.role = match status.in_recovery {
                        Some(true) => "replica",
                        _ => "master",
                    };
                }
                let position: Option<String> = row.try_get(1).ok().flatten();
                let lsn = position.as_deref().and_then(Lsn::parse);
                status.position = position;
                if replica && status.in_recovery == Some(false) {
                    // A primary configured as a streaming replica: it answers, but serving its
                    // reads would be wrong (`check` refuses it the same way).
                    status.up = false;
                    status.error = Some(
                        "wrong role: not in recovery (a primary, not a standby); configure it \
                         as a master, or as kind = \"logical\" if it subscribes to the master"
                            .to_owned(),
                    );
                } else if replica {
                    let master = db.set().and_then(|set| masters.get_mut(set));
                    if let (Some(master), Some(_)) = (master, lsn) {
                        let replay = Reading::of_wal(lsn);
                        lag(master, &mut probe, &replay, timeout, &mut status).await;
                    }
                } else {
                    let slots: String = row.try_get(2).unwrap_or_default();
                    status.slots = slots
                        .split(',')
                        .filter_map(|slot| {
                            let mut parts = slot.split(' ');
                            Some(SlotStatus {
                                name: parts.next()?.to_owned(),
                                active: parts.next()? == "true",
                                retained_bytes: parts.next()?.parse().ok()?,
                            })
                        })
                        .collect();
                    if let (Membership::Master { set }, Some(sample)) = (
                        &db.membership,
                        MasterSample::new(probe, Reading::of_wal(lsn)),
                    ) {
                        masters.insert(set.clone(), sample);
                    }
                }
            }
        }
        out.push(status);
    }
    out
}

/// A replica's lag behind its master's sample, in position and in time.
async fn lag(
    master: &mut MasterSample,
    replica: &mut Probe,
    replay: &Reading,
    timeout: Duration,
    status: &mut DatabaseStatus,
) {
    let Some(position) = replay.position else {
        return;
    };
    let behind = master.lsn.0.saturating_sub(position.0);
    status.lag_bytes = Some(behind);
    if behind == 0 && replay.outside.includes(&master.outside) {
        // It had replayed all the master had when status sampled it.
        status.lag_ms = Some(0);
        return;
    }
    match time_lag(&mut master.probe, replica, timeout).await {
        Ok(TimeLag::AtMost(ms)) => status.lag_ms = Some(ms),
        Ok(TimeLag::AtLeast(ms)) => {
            status.lag_ms = Some(ms);
            status.lag_ms_at_least = true;
        }
        Err(e) => status.error = Some(format!("lag not measured: {e}")),
    }
}

/// A database of another backend than PostgreSQL (MariaDB), through the probe's
/// backend-neutral questions: a master's position, a replica's applied position, whether it
/// applies, and its lag. Returns a master's position.
async fn neutral(
    db: &Database,
    probe: &mut Probe,
    master: Option<&mut MasterSample>,
    timeout: Duration,
    status: &mut DatabaseStatus,
) -> Option<Reading> {
    let show = |lsn: Option<Lsn>| lsn.map(|l| l.0.to_string());
    if !db.is_replica() {
        return match probe.reading(Asked::Master).await {
            Err(e) => {
                status.error = Some(e);
                None
            }
            Ok(reading) => {
                status.up = true;
                status.in_recovery = Some(false);
                status.position = show(reading.position);
                Some(reading)
            }
        };
    }
    match probe.standby().await {
        Err(e) => status.error = Some(e),
        // Not a replica at all.
        Ok(Err(problem)) => status.error = Some(problem),
        Ok(Ok(Applied { reading, applying })) => {
            // A MariaDB replica's position, in its master's domain.
            let reading = match master.as_ref().and_then(|m| m.domain) {
                Some(domain) => reading.in_domain(domain),
                None => reading,
            };
            status.up = true;
            status.in_recovery = Some(true);
            status.position = show(reading.position);
            if !applying {
                status.error = Some("not applying: its SQL thread is stopped".to_owned());
            }
            if let Some(master) = master {
                lag(master, probe, &reading, timeout, status).await;
            }
        }
    }
    None
}

/// A replica's time lag as [`time_lag`] measured it, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimeLag {
    /// It replayed the master's sampled position: its lag is at most this.
    AtMost(u64),
    /// It had not replayed it by the deadline: its lag is at least this.
    AtLeast(u64),
}

/// The time lag of a replica that is behind, as the README defines lag (how long the master
/// has had WAL the replica has not replayed; an idle master is never lag), measured the way
/// the monitor proves staleness: from master positions and the instants they were asked for.
///
/// Not `now() - pg_last_xact_replay_timestamp()`: that is the age of the last transaction the
/// replica replayed, which grows while the master is idle (a caught-up standby showed 23 s)
/// and says nothing about WAL written since (one write 1 s old showed 9 s). Not
/// `pg_stat_replication.replay_lag` either: its row cannot be matched to a replica reliably
/// (through a proxy or pooler, `client_addr` and `application_name` name neither), and it
/// is only refreshed with the standby's replies (every `wal_receiver_status_interval`).
///
/// Instead: ask the master its position `P` at instant `t0`, then ask the replica its replay
/// position every few milliseconds. Everything the master had written before `t0` is at or
/// below `P`, so once the replica has replayed `P` (its answer came at `t1`), any WAL it still
/// lacks is younger than `t1 - t0`: its lag is at most that. If it has not replayed `P` when
/// asked a check timeout after the master answered (at `ta`), the master has had WAL it has
/// not replayed for at least that long (`P` was written before `ta`): its lag is at least
/// the time since `ta`. Both are measured, neither is a difference of timestamps from two
/// clocks.
async fn time_lag(
    master: &mut Probe,
    replica: &mut Probe,
    deadline: Duration,
) -> Result<TimeLag, String> {
    let position =
        |lsn: Option<Lsn>, alias: &str| lsn.ok_or_else(|| format!("`{alias}`: no position"));
    let asked = Instant::now();
    let target = master.reading(Asked::Master).await?;
    let answered = Instant::now();
    let wanted = position(target.position, &master.alias)?;
    loop {
        let sent = Instant::now();
        let replay = replica.reading(Asked::Applied).await?;
        // MariaDB: the master's other domains as it had them too.
        if position(replay.position, &replica.alias)? >= wanted
            && replay.outside.includes(&target.outside)
        {
            // An upper bound: rounded up.
            let micros = asked.elapsed().as_micros();
            return Ok(TimeLag::AtMost(
                u64::try_from(micros.div_ceil(1000)).unwrap_or(u64::MAX),
            ));
        }
        let waited = sent.saturating_duration_since(answered);
        if waited >= deadline {
            // A lower bound: rounded down.
            return Ok(TimeLag::AtLeast(
                u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A logical replica: its position is its subscription slot's on the master.
async fn logical(
    topology: &Topology,
    db: &Database,
    timeout: Duration,
    masters: &HashMap<String, MasterSample>,
    status: &mut DatabaseStatus,
) {
    let Some(set) = db.set().and_then(|s| topology.set_named(s)) else {
        return;
    };
    let mut replica = Probe::new(db, timeout);
    let Some(master) = set.master() else {
        return status.error = Some(format!("set `{}` has no primary right now", set.name));
    };
    let mut master = Probe::new(&topology.databases()[master], timeout);
    let following = match subscription::follow(&mut replica, &mut master).await {
        Err(e) => return status.error = Some(e),
        Ok(Err(problem)) => {
            status.up = true;
            return status.error = Some(problem);
        }
        Ok(Ok(f)) => f,
    };
    status.up = true;
    status.in_recovery = Some(false);
    status.position = following.position.map(|p| p.to_string());
    if let (Some(master), Some(position)) = (masters.get(&*set.name), following.position) {
        let behind = master.lsn.0.saturating_sub(position.0);
        status.lag_bytes = Some(behind);
        // Only "caught up" is known here; the monitor measures time lag.
        status.lag_ms = (behind == 0).then_some(0);
    }
    if !following.disabled.is_empty() {
        status.error = Some(format!(
            "subscription disabled: {}",
            following.disabled.join(", ")
        ));
    }
    match subscription::carried(&mut replica, &mut master, &following).await {
        Ok(carried) => status.published = carried.tables(),
        Err(e) => status.error = Some(e),
    }
}

fn role(db: &Database) -> &'static str {
    match db.membership {
        Membership::Master { .. } => "master",
        Membership::Replica { .. } => "replica",
        // Found when it answers: `master` or `replica`.
        Membership::Host { .. } => "host",
        Membership::Unmanaged => "unmanaged",
    }
}
