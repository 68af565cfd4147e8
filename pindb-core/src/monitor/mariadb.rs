//! The start-up topology check of a MariaDB set: its master writes a binary log and is not
//! `read_only` (and `gtid_strict_mode` keeps its sequence numbers in order, a warning); each
//! replica replicates from that master (by `server_id`; its own GTID domain does not matter,
//! its position is read in the master's), without filters, is `read_only` (and pindb's user there cannot write past it), and its URL reaches
//! one server.

use mysql_async::Row;

use crate::config::MonitorSettings;
use crate::error::PinDbError;
use crate::populate::Database;
use crate::probe::{Probe, SlaveStatus};

use super::timeout;

/// What the check found: problems name an alias and the fix; warnings say what could not be
/// checked, or what is unsafe but works.
pub(super) struct Findings<'a> {
    pub(super) warnings: &'a mut Vec<String>,
    pub(super) problems: &'a mut Vec<PinDbError>,
}

const SERVER_SQL: &str = "SELECT @@server_id, @@gtid_domain_id, @@read_only, @@log_bin";

/// `(server_id, gtid_domain_id, read_only, log_bin)` of a server.
async fn server(probe: &mut Probe) -> Result<(u32, u32, bool, bool), String> {
    let row = probe.mariadb_row(SERVER_SQL).await?.ok_or("no row")?;
    let int = |i: usize| -> Result<u64, String> {
        row.get_opt::<u64, _>(i)
            .and_then(Result::ok)
            .ok_or_else(|| format!("`{SERVER_SQL}`: column {i} is not a number"))
    };
    Ok((int(0)? as u32, int(1)? as u32, int(2)? != 0, int(3)? != 0))
}

/// The replication filters a replica has, in words (`None`: none).
fn filters(status: &Row) -> Option<String> {
    // The domain filters too: what they skip counts as applied in another domain, which
    // pindb compares (see `MasterTrack::lag`).
    const FILTERS: [&str; 9] = [
        "Replicate_Do_DB",
        "Replicate_Ignore_DB",
        "Replicate_Do_Table",
        "Replicate_Ignore_Table",
        "Replicate_Wild_Do_Table",
        "Replicate_Wild_Ignore_Table",
        "Replicate_Ignore_Server_Ids",
        "Replicate_Do_Domain_Ids",
        "Replicate_Ignore_Domain_Ids",
    ];
    let set: Vec<String> = FILTERS
        .iter()
        .map(|column| (column, text(status, column)))
        .filter(|(_, value)| !value.is_empty())
        .map(|(column, value)| format!("{column}={value}"))
        .collect();
    (!set.is_empty()).then(|| set.join(", "))
}

fn text(row: &Row, column: &str) -> String {
    row.get_opt::<Option<String>, _>(column)
        .and_then(Result::ok)
        .flatten()
        .unwrap_or_default()
}

/// Connections opened at once to check that a replica's URL reaches one server.
const SERVER_SAMPLES: usize = 4;

/// Whether a replica's URL reaches one server, from a few connections opened at once, told
/// apart by `server_id` and where each says it runs (`@@hostname:@@port`): a load-balanced
/// reader endpoint reaches several, while the monitor measures the one its connection
/// reached, so a keyed read could land on a server that lacks the key's write. For a server
/// declared behind an endpoint (`servers`), the probes keep only connections that answered
/// its `server_id`: two servers answering so (one `server_id` given twice) are refused. Best
/// effort, as for PostgreSQL: a balancer that sent every sample to one server is not seen.
async fn one_server(db: &Database, settings: &MonitorSettings, problems: &mut Vec<PinDbError>) {
    let samples = (0..SERVER_SAMPLES).map(|_| async {
        let mut probe = Probe::new(db, timeout(settings));
        let row = probe
            .mariadb_row("SELECT @@server_id, @@hostname, @@port")
            .await
            .ok()??;
        let id = row.get_opt::<u64, _>(0)?.ok()?;
        let host = row.get_opt::<String, _>(1)?.ok()?;
        let port = row.get_opt::<u64, _>(2)?.ok()?;
        Some((id, format!("{host}:{port}")))
    });
    let mut seen: Vec<(u64, String)> = Vec::new();
    for sample in futures_util::future::join_all(samples)
        .await
        .into_iter()
        .flatten()
    {
        if !seen.contains(&sample) {
            seen.push(sample);
        }
    }
    if let Some(problem) = several_servers(db, &seen) {
        problems.push(PinDbError::config(db.alias.clone(), problem));
    }
}

/// What is wrong with a replica URL whose connections reached the servers `seen`
/// (`server_id`, `host:port`), each once; `None` for one server.
fn several_servers(db: &Database, seen: &[(u64, String)]) -> Option<String> {
    if seen.len() < 2 {
        return None;
    }
    let servers: Vec<String> = seen
        .iter()
        .map(|(id, at)| format!("server_id {id} at {at}"))
        .collect();
    // Each server once, in the order met: fewer ids than servers means some share one.
    let mut ids: Vec<String> = Vec::new();
    for (id, _) in seen {
        if !ids.contains(&id.to_string()) {
            ids.push(id.to_string());
        }
    }
    let shared = ids.len() < seen.len();
    Some(match (&db.server, shared) {
        (Some(id), _) => format!(
            "several servers answer as server_id {id} through {} ({}): servers behind a \
             reader endpoint are told apart by server_id, so each needs its own",
            db.redacted_url(),
            servers.join(", ")
        ),
        (None, true) => format!(
            "{} reaches several servers ({}), and some share a server_id: a load-balanced \
             reader endpoint, whose servers cannot be told apart. Give each server its own \
             server_id, or declare each replica as its own entry",
            db.redacted_url(),
            servers.join(", ")
        ),
        (None, false) => format!(
            "{} reaches several servers ({}): a load-balanced reader endpoint. pindb \
             measures each replica's position on one server, so a keyed read could land on \
             one that lacks the user's write. Declare the servers behind it on this replica \
             by server_id, `servers = [\"{}\"]` (each becomes a replica of its own, reached \
             through the endpoint), or each replica as its own entry",
            db.redacted_url(),
            servers.join(", "),
            ids.join("\", \"")
        ),
    })
}

pub(super) async fn verify_set(
    master_db: &Database,
    replicas: &[&Database],
    settings: &MonitorSettings,
    found: Findings<'_>,
) {
    let mut master = Probe::new(master_db, timeout(settings));
    let master_id = match server(&mut master).await {
        Ok((id, _, read_only, log_bin)) => {
            let problem = if !log_bin {
                Some(
                    "writes no binary log (log_bin is OFF): replicas cannot follow it and pindb \
                     cannot learn its GTID position; start it with log_bin",
                )
            } else if read_only {
                Some("is read_only (a replica?); point it at the writable master")
            } else {
                None
            };
            if let Some(problem) = problem {
                found.problems.push(PinDbError::config(
                    master_db.alias.clone(),
                    format!(
                        "configured as a master but {} {problem}",
                        master_db.redacted_url()
                    ),
                ));
            }
            if let Ok(Some(row)) = master.mariadb_row("SELECT @@gtid_strict_mode").await {
                if row.get_opt::<u64, _>(0).and_then(Result::ok) == Some(0) {
                    found.warnings.push(format!(
                        "`{}`: gtid_strict_mode is OFF on {}: after a manual failover a \
                         domain's sequence numbers may go out of order, and pindb compares \
                         them; set gtid_strict_mode = ON on every server of the set",
                        master_db.alias,
                        master_db.redacted_url()
                    ));
                }
            }
            id
        }
        Err(e) => {
            found.warnings.push(format!(
                "topology not checked for `{}`: {e}",
                master_db.alias
            ));
            return;
        }
    };
    for db in replicas {
        one_server(db, settings, found.problems).await;
        let mut probe = Probe::new(db, timeout(settings));
        let checked = async {
            let (_, _, read_only, _) = server(&mut probe).await?;
            let status = probe.mariadb_status().await?;
            Ok::<_, String>((read_only, status))
        };
        let (read_only, status) = match checked.await {
            Ok(answers) => answers,
            Err(e) => {
                found
                    .warnings
                    .push(format!("topology not checked for `{}`: {e}", db.alias));
                continue;
            }
        };
        let url = db.redacted_url();
        let problem = match status {
            SlaveStatus::Denied => {
                found.warnings.push(format!(
                    "`{}`: pindb may not read the replica status of {url} (SHOW SLAVE STATUS \
                     needs the SLAVE MONITOR privilege): which master it follows is not \
                     checked, and a stopped SQL thread is seen only as lag once the master \
                     writes; GRANT SLAVE MONITOR ON *.* to its user",
                    db.alias
                ));
                None
            }
            SlaveStatus::NotReplica => Some(match &db.replication_connection {
                Some(name) => format!(
                    "configured to follow `{}` through the replication connection `{name}`, \
                     but {url} has no such connection (SHOW SLAVE '{name}' STATUS: unknown \
                     or empty); give a `Connection_name` that `SHOW ALL SLAVES STATUS` lists",
                    master_db.alias
                ),
                None => format!(
                    "configured as a replica but {url} replicates from nothing on its default \
                     connection (SHOW SLAVE STATUS is empty); point it at a replica of `{0}`, \
                     or, if it follows `{0}` through a named connection (a replica of several \
                     masters), name it: `replication_connection = \"<Connection_name>\"`",
                    master_db.alias
                ),
            }),
            SlaveStatus::Replica(status)
                if text(&status, "Master_Server_Id") != master_id.to_string() =>
            {
                Some(format!(
                    "{url} replicates from server_id {} ({}:{}), not from its master `{}` \
                     (server_id {master_id}); point it at a replica of that master (a replica \
                     of several masters: name the connection that follows it, \
                     `replication_connection = \"<Connection_name>\"`)",
                    text(&status, "Master_Server_Id"),
                    text(&status, "Master_Host"),
                    text(&status, "Master_Port"),
                    master_db.alias
                ))
            }
            SlaveStatus::Replica(status) => filters(&status).map(|filters| {
                format!(
                    "{url} replicates with filters ({filters}): the GTIDs of what it skips count \
                     as applied, so it would pass for having writes it lacks; remove the \
                     filters, or do not list it as a replica"
                )
            }),
        };
        if let Some(problem) = problem {
            found
                .problems
                .push(PinDbError::config(db.alias.clone(), problem));
        } else if !read_only {
            found.warnings.push(format!(
                "`{}`: {url} is not read_only: a write sent there by mistake would be applied \
                 on the replica alone; set read_only = ON",
                db.alias
            ));
        } else {
            match writes_past_read_only(&mut probe).await {
                Ok(None) => {}
                Ok(Some(privilege)) => found.warnings.push(format!(
                    "`{}`: {url} is read_only, but pindb's user there has {privilege} on *.*, \
                     which lets it write anyway: a write sent there by mistake would be applied \
                     on the replica alone; connect as a user without it",
                    db.alias
                )),
                Err(e) => found.warnings.push(format!(
                    "`{}`: whether pindb's user can write past read_only on {url} was not \
                     checked: {e}",
                    db.alias
                )),
            }
        }
    }
}

/// The privilege of the connection's user that lets it write on a `read_only` server, if it
/// has one: `READ ONLY ADMIN`, or `SUPER` before MariaDB 10.11 (which took it out of
/// `SUPER`). Global grants of the user itself (not through a role).
async fn writes_past_read_only(probe: &mut Probe) -> Result<Option<&'static str>, String> {
    // The user part is all before the last `@` (a user name may hold one).
    const SQL: &str = "SELECT \
        (SELECT GROUP_CONCAT(PRIVILEGE_TYPE) FROM information_schema.USER_PRIVILEGES \
         WHERE GRANTEE = CONCAT('''', \
               LEFT(me.cu, CHAR_LENGTH(me.cu) - CHAR_LENGTH(SUBSTRING_INDEX(me.cu, '@', -1)) - 1), \
               '''@''', SUBSTRING_INDEX(me.cu, '@', -1), '''') \
           AND PRIVILEGE_TYPE IN ('SUPER', 'READ ONLY ADMIN', 'READ_ONLY ADMIN')), \
        @@version FROM (SELECT CURRENT_USER() AS cu) AS me";
    let row = probe.mariadb_row(SQL).await?.ok_or("no row")?;
    let unreadable = |column: usize| format!("`{SQL}`: column {column} is unreadable");
    let granted = row
        .get_opt::<Option<String>, _>(0)
        .and_then(Result::ok)
        .ok_or_else(|| unreadable(0))?
        .unwrap_or_default();
    let version = row
        .get_opt::<String, _>(1)
        .and_then(Result::ok)
        .ok_or_else(|| unreadable(1))?;
    let before_10_11 = {
        let mut parts = version
            .split(['.', '-'])
            .map(|p| p.parse::<u32>().unwrap_or(0));
        (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) < (10, 11)
    };
    let has = |privilege: &str| granted.split(',').any(|p| p == privilege);
    Ok(match () {
        // 10.11 spells it `READ_ONLY ADMIN` here.
        () if has("READ ONLY ADMIN") || has("READ_ONLY ADMIN") => Some("READ ONLY ADMIN"),
        () if has("SUPER") && before_10_11 => Some("SUPER"),
        () => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(servers: &[&str]) -> Database {
        let mut config =
            crate::Config::single_set("mysql://app@db0/app", ["mysql://app@reader:3306/app"]);
        if let Some(entry) = config.sets.get_mut("default").and_then(|s| s.first_mut()) {
            entry.servers = servers.iter().map(|s| s.to_string()).collect();
        }
        config.databases().expect("valid").remove(1)
    }

    #[test]
    fn a_url_reaching_several_servers_is_named_with_the_fix() {
        let at = |id: u64, port: u16| (id, format!("db:{port}"));
        let undeclared = replica(&[]);
        assert_eq!(several_servers(&undeclared, &[at(2, 3306)]), None);
        let two = several_servers(&undeclared, &[at(2, 3306), at(3, 3307)]).unwrap();
        assert!(two.contains(r#"servers = ["2", "3"]"#), "{two}");
        let shared = several_servers(&undeclared, &[at(2, 3306), at(2, 3307)]).unwrap();
        assert!(shared.contains("share a server_id"), "{shared}");
        // A declared server's probes keep only connections that answered its server_id: two
        // places answering it are two servers.
        let declared = replica(&["2", "3"]);
        assert_eq!(declared.alias, "default-1.1");
        assert_eq!(several_servers(&declared, &[at(2, 3306)]), None);
        let twice = several_servers(&declared, &[at(2, 3306), at(2, 3307)]).unwrap();
        assert!(
            twice.contains("several servers answer as server_id 2"),
            "{twice}"
        );
    }
}
