//! A one-shot look at every database of the topology, for `pindb status` and operators: role,
//! reachability, replication position and lag, and the WAL each primary keeps for its
//! replication slots. Its own connections (the probes), one query per database; no monitor
//! needed.

use std::time::Duration;

use serde::Serialize;

use crate::lsn::Lsn;
use crate::populate::{Database, Membership};
use crate::probe::Probe;
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
    /// Whether it is a standby (`pg_is_in_recovery()`).
    pub in_recovery: Option<bool>,
    /// Masters: the current WAL position; replicas: the replayed one (`X/Y`).
    pub position: Option<String>,
    /// Replicas: WAL bytes the master has that this one has not replayed.
    pub lag_bytes: Option<u64>,
    /// Replicas: since when the last replayed transaction committed on the master, when
    /// behind (0 when caught up).
    pub lag_ms: Option<u64>,
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
const REPLICA: &str = "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, \
    coalesce((extract(epoch FROM now() - pg_last_xact_replay_timestamp()) * 1000)::bigint, 0)";

pub(crate) async fn status(topology: &Topology, timeout: Duration) -> Vec<DatabaseStatus> {
    let mut out = Vec::new();
    // Per set: a replica is compared with its own master only.
    let mut masters: std::collections::HashMap<String, Lsn> = std::collections::HashMap::new();
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
        match Probe::new(db, timeout).row(sql).await {
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
                    let master = db.set().and_then(|set| masters.get(set)).copied();
                    if let (Some(master), Some(replay)) = (master, lsn) {
                        let behind = master.0.saturating_sub(replay.0);
                        status.lag_bytes = Some(behind);
                        let since: i64 = row.try_get(2).unwrap_or(0);
                        status.lag_ms = Some(if behind == 0 { 0 } else { since.max(0) as u64 });
                    }
                } else {
                    if let (Membership::Master { set }, Some(lsn)) = (&db.membership, lsn) {
                        masters.insert(set.clone(), lsn);
                    }
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
                }
            }
        }
        out.push(status);
    }
    out
}

/// A logical replica: its position is its subscription slot's on the master.
async fn logical(
    topology: &Topology,
    db: &Database,
    timeout: Duration,
    masters: &std::collections::HashMap<String, Lsn>,
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
        let behind = master.0.saturating_sub(position.0);
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
