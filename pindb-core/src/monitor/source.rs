//! Where a replica's position comes from ([`Source`]): a standby, the master opened read-only,
//! a logical subscriber, a host of a set given as hosts, a runtime replica's host now.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::coverage::{Carried, Coverage};
use crate::discovery::Slot;
use crate::probe::{lsn_column, Applied, Probe, Reading};
use crate::replica::Health;
use crate::roles::{Change, Report, Roles, Verdict};
use crate::subscription;

use super::MasterTrack;

/// Where a replica's position comes from.
pub(super) enum Source {
    /// A streaming standby: `pg_last_wal_replay_lsn()`, while it is in recovery; a MariaDB
    /// replica: its `@@gtid_slave_pos` in its domain, applying while its SQL thread runs.
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
pub(super) const SYSTEM_SQL: &str =
    "SELECT pg_is_in_recovery(), system_identifier::text FROM pg_control_system()";

/// What a host's report changed, applied: after a promotion (a new timeline) a standby's
/// position on the old timeline says nothing of the new one (it may even be ahead with writes
/// the new primary never had), so every other host serves reads again only after a check that
/// began after this, and lag is measured afresh.
pub(super) fn after_change(change: Change, r: usize, track: &MasterTrack, health: &[Health]) {
    if change == Change::Timeline {
        track.clear();
        for (_, cell) in health.iter().enumerate().filter(|(h, _)| *h != r) {
            cell.revoke();
        }
    }
}

/// A host's answer to [`HOST_SQL`].
pub(super) async fn host_report(probe: &mut Probe) -> Result<Report, String> {
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

impl Source {
    /// A runtime replica's slot and the generation of the host its last check asked.
    pub(super) fn checked_slot(&self) -> Option<(&Slot, u64)> {
        match self {
            Source::Runtime {
                slot,
                current: Some((generation, _)),
                ..
            } => Some((slot, *generation)),
            _ => None,
        }
    }

    pub(super) fn alias(&self) -> &str {
        match self {
            Source::Standby(p) | Source::Emulated(p) | Source::Host { probe: p, .. } => &p.alias,
            Source::Logical { replica, .. } => &replica.alias,
            Source::Runtime { alias, .. } => alias,
        }
    }

    /// The replica's position. The outer error: it could not be asked. The inner one: it is
    /// not a replica of this master (promoted, a primary, not subscribed), in words.
    pub(super) async fn position(&mut self, r: usize) -> Result<Result<Applied, String>, String> {
        let observed = |position| Applied {
            reading: Reading::of_wal(position),
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
            Source::Standby(probe) => probe.standby().await,
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
                Ok(Ok(Applied {
                    reading: Reading::of_wal(following.position),
                    applying: following.applying,
                }))
            }
        }
    }
}
