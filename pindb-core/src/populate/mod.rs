//! `populate_replicas`: from masters plus per-replica overrides to the final alias map.
//!
//! This module owns alias naming (`default`, `default-1`, ...), the merge of a replica's
//! overrides on top of its master's settings, and every structural config error. It does not
//! open connections and knows nothing about routing.

use std::collections::{BTreeMap, BTreeSet};

use crate::backend::Backend;
use crate::error::PinDbError;

/// Default TCP port of PostgreSQL when neither the URL nor the settings give one (see
/// [`Backend::default_port`](crate::adapter::Backend::default_port)).
pub const DEFAULT_PORT: u16 = 5432;

/// What a MariaDB set cannot have yet: every database of a set runs one backend, and the
/// features built on PostgreSQL's catalogs are refused by name.
fn refuse_for_mariadb(
    alias: &str,
    settings: &DatabaseSettings,
    master: Backend,
    parts: &Parts,
) -> Result<(), PinDbError> {
    let backend = parts.backend.unwrap_or(master);
    if backend != master {
        return Err(PinDbError::config(
            alias,
            format!(
                "its url is {} and its master's is {}: a set runs on one database; give it a \
                 {}:// url",
                backend.name(),
                master.name(),
                master.scheme()
            ),
        ));
    }
    if backend != Backend::MariaDb {
        return Ok(());
    }
    let feature = if settings.discovery.is_some() {
        "`discovery`"
    } else if settings.is_multi_host() || !settings.hosts.is_empty() {
        "a list of hosts"
    } else {
        return Ok(());
    };
    Err(PinDbError::config(
        alias,
        format!(
            "{feature} is PostgreSQL's only for now; a MariaDB set is a master with its \
             replicas listed one by one"
        ),
    ))
}

/// `hosts` and `discovery` describe a set: only a master takes them.
fn refuse_hosts(alias: &str, settings: &DatabaseSettings) -> Result<(), PinDbError> {
    if settings.discovery.is_some() {
        return Err(PinDbError::config(
            alias,
            "`discovery` finds the replicas of a set: give it to a master \
             (`[masters.<set>.discovery]`)",
        ));
    }
    match settings.hosts.is_empty() {
        true => Ok(()),
        false => Err(PinDbError::config(
            alias,
            "`hosts` names the hosts of a set: give it to a master (`[masters.<set>]`); a \
             replica or an unmanaged database is one host",
        )),
    }
}

/// The slots of a set's runtime replicas, after its configured ones (`<set>-<n>`...): the
/// master's settings, no host yet.
fn runtime_slots(
    set: &str,
    master: &Parts,
    discovery: &DiscoverySettings,
    first: usize,
    claim: &mut dyn FnMut(&str, &str) -> Result<(), PinDbError>,
) -> Result<Vec<Database>, PinDbError> {
    if discovery.dns.is_some() && discovery.srv.is_some() {
        return Err(PinDbError::config(
            set,
            "discovery gives both `dns` and `srv`: keep one (`srv` when the records carry ports)",
        ));
    }
    if discovery.max_replicas() == 0 || discovery.max_replicas() > 1024 {
        return Err(PinDbError::config(
            set,
            "discovery.max_replicas must be between 1 and 1024",
        ));
    }
    if cfg!(not(feature = "dns")) && (discovery.dns.is_some() || discovery.srv.is_some()) {
        return Err(PinDbError::config(
            set,
            "discovery from DNS needs pindb-core's `dns` feature; enable it in Cargo.toml \
             (pindb-core = { features = [\"dns\"] })",
        ));
    }
    if let Some(name) = &discovery.dns {
        host_port(set, name)?;
    }
    if let Some(text) = &discovery.nameserver {
        if text.parse::<std::net::SocketAddr>().is_err() {
            return Err(PinDbError::config(
                set,
                format!(
                    "discovery.nameserver `{text}` is not `ip:port`; write e.g. \"10.0.0.2:53\""
                ),
            ));
        }
    }
    if discovery.interval_ms == Some(0) {
        return Err(PinDbError::config(
            set,
            "discovery.interval_ms = 0 would resolve without pause; give the refresh period \
             in milliseconds (e.g. 30000)",
        ));
    }
    if discovery.dns.is_none()
        && discovery.srv.is_none()
        && (discovery.nameserver.is_some() || discovery.interval_ms.is_some())
    {
        return Err(PinDbError::config(
            set,
            "discovery.nameserver and interval_ms say how to resolve a DNS name, and no `dns` or \
             `srv` name is given: add one, or remove them (hosts then come from set_replicas)",
        ));
    }
    (first..first + discovery.max_replicas())
        .map(|index| {
            let alias = format!("{set}-{index}");
            claim(&alias, "a runtime replica slot")?;
            let mut parts = master.clone();
            // Placeholder so the parts finish; the slot's host is set at run time.
            parts.host = Some("(none yet)".to_owned());
            let mut db = parts.finish(
                alias,
                Membership::Replica {
                    set: set.to_owned(),
                    index,
                },
            )?;
            db.host.clear();
            db.runtime = true;
            Ok(db)
        })
        .collect()
}

/// Builds the final alias map, as django-pindb's `populate_replicas` does.
///
/// For every master `M` with `n` replica overrides this yields `M`, `M-1`, ... `M-n`; each
/// replica's settings are the master's with the override merged on top (an override with
/// `servers` yields `M-i.1`, `M-i.2`... instead of `M-i`). Unmanaged databases follow. Sets come in name order, so the result is deterministic.
///
/// Errors ([`PinDbError::Config`], naming the alias and the fix): no masters; a master without
/// a `sets` entry (an empty list is fine); a `sets` entry without a master; no master named
/// `default` unless `unmanaged_default` is set and an unmanaged `default` exists; two databases
/// with the same alias; an unparsable URL; no host.
///
/// ```
/// use std::collections::BTreeMap;
/// use pindb_core::{adapter::populate_replicas, DatabaseSettings};
///
/// let masters = BTreeMap::from([("default".to_string(), DatabaseSettings::from_url("postgres://app@db0/app"))]);
/// let sets = BTreeMap::from([("default".to_string(), vec![
///     DatabaseSettings { host: Some("db1".into()), ..Default::default() },
/// ])]);
/// let dbs = populate_replicas(&masters, &sets, &BTreeMap::new(), false)?;
/// assert_eq!(dbs[1].alias, "default-1");
/// assert_eq!(dbs[1].host, "db1");
/// assert_eq!(dbs[1].user.as_deref(), Some("app"));
/// # Ok::<(), pindb_core::PinDbError>(())
/// ```
pub fn populate_replicas(
    masters: &BTreeMap<String, DatabaseSettings>,
    sets: &BTreeMap<String, Vec<DatabaseSettings>>,
    unmanaged: &BTreeMap<String, DatabaseSettings>,
    unmanaged_default: bool,
) -> Result<Vec<Database>, PinDbError> {
    if masters.is_empty() {
        return Err(PinDbError::config_global(
            "no masters configured; add a [masters.default] table with a `url`",
        ));
    }
    for name in masters.keys().chain(unmanaged.keys()) {
        if name.is_empty() || name.chars().any(char::is_whitespace) {
            return Err(PinDbError::config(
                name.clone(),
                "an alias must be non-empty and contain no whitespace; rename it",
            ));
        }
    }
    for set in sets.keys() {
        if !masters.contains_key(set) {
            return Err(PinDbError::config(
                set.clone(),
                format!("[sets] has an entry `{set}` but there is no master of that name; add [masters.{set}] or remove sets.{set}"),
            ));
        }
    }
    for (master, settings) in masters {
        if settings.is_multi_host() {
            if settings.discovery.is_some() {
                return Err(PinDbError::config(
                    master.clone(),
                    format!("master `{master}` is given as a list of hosts, whose roles are discovered; `discovery` adds replicas to a set with one master: remove one of them"),
                ));
            }
            if sets.get(master).is_some_and(|r| !r.is_empty()) {
                return Err(PinDbError::config(
                    master.clone(),
                    format!("master `{master}` is given as a list of hosts, whose standbys are found among them; list every host there and remove the replicas of sets.{master}"),
                ));
            }
            continue;
        }
        if !sets.contains_key(master) {
            return Err(PinDbError::config(
                master.clone(),
                format!("master `{master}` has no entry in [sets]; add `{master} = []` for a set with no replicas"),
            ));
        }
    }
    if !masters.contains_key("default") {
        if !unmanaged_default {
            return Err(PinDbError::config(
                "default",
                "no master is named `default`; rename one master to `default`, or set \
                 unmanaged_default = true and add an unmanaged `default` database",
            ));
        }
        if !unmanaged.contains_key("default") {
            return Err(PinDbError::config(
                "default",
                "unmanaged_default = true but there is no [unmanaged.default] database; add it",
            ));
        }
    }

    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    let mut claim = |alias: &str, what: &str| {
        if seen.insert(alias.to_owned()) {
            Ok(())
        } else {
            Err(PinDbError::config(
                alias,
                format!("alias `{alias}` is used twice ({what} collides with another database); rename one of them"),
            ))
        }
    };
    for (set, master_settings) in masters {
        claim(set, "a master")?;
        servers::refuse_servers(set, master_settings)?;
        let master = Parts::from_settings(set, master_settings)?;
        let backend = master.backend.unwrap_or_default();
        connection::refuse_replication_connection(set, master_settings)?;
        refuse_for_mariadb(set, master_settings, backend, &master)?;
        let hosts = match master_settings.hosts.is_empty() {
            true => master.url_hosts.clone(),
            false => master_settings.hosts.clone(),
        };
        if !hosts.is_empty() {
            for (i, text) in hosts.iter().enumerate() {
                let index = i + 1;
                let alias = format!("{set}-{index}");
                claim(&alias, "a generated host alias")?;
                let (host, port) = host_port(set, text)?;
                let mut parts = master.clone();
                parts.host = Some(host);
                parts.port = port.or(master_settings.port);
                out.push(parts.finish(
                    alias,
                    Membership::Host {
                        set: set.clone(),
                        index,
                    },
                )?);
            }
            continue;
        }
        out.push(
            master
                .clone()
                .finish(set.clone(), Membership::Master { set: set.clone() })?,
        );
        for (i, overrides) in sets[set].iter().enumerate() {
            let index = i + 1;
            let alias = format!("{set}-{index}");
            refuse_hosts(&alias, overrides)?;
            let own = Parts::from_settings(&alias, overrides)?;
            refuse_for_mariadb(&alias, overrides, backend, &own)?;
            let mut parts = master.clone();
            parts.overlay(own);
            let membership = Membership::Replica {
                set: set.clone(),
                index,
            };
            // A replica behind a reader endpoint is one replica per server behind it,
            // `<set>-<n>.<k>`: the entry keeps its number (its env override, its settings).
            let servers = servers::servers(&alias, overrides, backend)?;
            let connection = connection::replication_connection(&alias, overrides, backend)?;
            if servers.is_empty() {
                claim(&alias, "a generated replica alias")?;
                let mut db = parts.finish(alias, membership)?;
                db.replication_connection = connection;
                out.push(db);
                continue;
            }
            for (k, server) in servers.into_iter().enumerate() {
                let alias = format!("{alias}.{}", k + 1);
                claim(&alias, "a generated replica alias")?;
                let mut db = parts.clone().finish(alias, membership.clone())?;
                db.server = Some(server);
                db.replication_connection = connection.clone();
                out.push(db);
            }
        }
        if let Some(discovery) = &master_settings.discovery {
            let first = sets[set].len() + 1;
            out.extend(runtime_slots(set, &master, discovery, first, &mut claim)?);
        }
    }
    for (alias, settings) in unmanaged {
        claim(alias, "an unmanaged database")?;
        refuse_hosts(alias, settings)?;
        servers::refuse_servers(alias, settings)?;
        connection::refuse_replication_connection(alias, settings)?;
        out.push(
            Parts::from_settings(alias, settings)?.finish(alias.clone(), Membership::Unmanaged)?,
        );
    }
    Ok(out)
}

mod connection;
mod database;
mod options;
mod parts;
mod servers;
mod settings;
#[cfg(test)]
mod tests;

pub use database::{Database, Membership, PoolSettings};
pub(crate) use parts::host_port;
use parts::Parts;
pub(crate) use servers::normal_address;
pub use settings::{DatabaseSettings, DiscoverySettings, ReplicaKind};
