//! The start-up checks: the topology (every master a primary, every replica a standby or a
//! subscriber of its master), the read-only safety net of replicas that would accept writes,
//! that a replica URL reaches one server, and waiting for the monitor's first bounds.

use std::time::{Duration, Instant};

use crate::config::{MonitorSettings, TopologyCheck};
use crate::error::PinDbError;
use crate::populate::Database;
use crate::probe::Probe;
use crate::roles::{Roles, Verdict};
use crate::subscription;
use crate::topology::Topology;

use super::source::{host_report, SYSTEM_SQL};
use super::timeout;

/// Connections opened (at once) to check that a replica's URL reaches one server.
const SERVER_SAMPLES: usize = 4;

/// Whether a replica's URL reaches one server, from a few fresh connections: a load-balanced
/// reader endpoint reaches several, while the monitor measures the one its connection
/// reached, so a keyed read could land on a server that lacks the key's write: refused unless
/// its servers are declared (`servers`). For a declared server, the connections kept at its
/// address must reach one server (two standbys that see themselves at the same address, or
/// a pooler in front that moves clients between servers, would defeat the check at connect
/// time). A server is told by its cluster and start time (one server reached over IPv4 and
/// IPv6 is one); a second round must agree (a restart in between).
async fn one_server(db: &Database, settings: &MonitorSettings, problems: &mut Vec<PinDbError>) {
    let sql = concat!(
        "SELECT system_identifier::text || '/' || \
         extract(epoch from pg_postmaster_start_time())::text, ",
        crate::endpoint::server_address!(),
        " FROM pg_control_system()"
    );
    // For a declared server, the probe keeps only connections that reached its address.
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
    if seen.len() < 2 {
        return;
    }
    let addresses: Vec<&str> = seen.iter().map(|(_, a)| a.as_str()).collect();
    let problem = match &db.server {
        Some(server) => format!(
            "several servers answer at {server} through {} (their start times differ): \
             servers behind a reader endpoint are told apart by the address each sees itself \
             at, so each needs its own, and no pooler in front may move a client from one \
             server to another. Declare each standby as its own replica",
            db.redacted_url()
        ),
        None if addresses.iter().any(|a| !a.contains(['.', '['])) => format!(
            "{} reaches several servers ({}): a load-balanced reader endpoint, whose servers \
             cannot be told apart by address (local sockets). Declare each standby as its own \
             replica",
            db.redacted_url(),
            addresses.join(", "),
        ),
        None => format!(
            "{} reaches several servers ({}): a load-balanced reader endpoint. pindb \
             measures each replica's position on one server, so a keyed read could land on \
             one that lacks the user's write. Declare the servers behind it on this \
             replica, `servers = [\"{}\"]` (each becomes a replica of its own, reached \
             through the endpoint), or each standby as its own replica",
            db.redacted_url(),
            addresses.join(", "),
            addresses.join("\", \"")
        ),
    };
    problems.push(PinDbError::config(db.alias.clone(), problem));
}

/// Whether a [`Database::read_only`](crate::adapter::Database::read_only) replica's
/// connections really are read-only: a pooler in front may refuse the startup parameter that
/// makes them so (the pool could not connect: a problem), or drop it (a warning: writes sent
/// there would be applied).
async fn read_only_net(
    db: &Database,
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
async fn refused_for_the_net(db: &Database, settings: &MonitorSettings) -> bool {
    let plain = Database {
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
        #[cfg(feature = "mariadb")]
        if master_db.backend == crate::backend::Backend::MariaDb {
            let replicas: Vec<_> = replicas
                .iter()
                .map(|&index| &topology.databases()[index])
                .collect();
            let found = super::mariadb::Findings {
                warnings: &mut warnings,
                problems: &mut problems,
            };
            super::mariadb::verify_set(master_db, &replicas, settings, found).await;
            continue;
        }
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
