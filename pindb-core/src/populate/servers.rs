//! `servers`: the standbys a replica's settings put behind its reader endpoint (each becomes
//! a replica of its own, see [`crate::endpoint`]), as addresses.

use super::{host_port, DatabaseSettings, DEFAULT_PORT};
use crate::backend::Backend;
use crate::error::PinDbError;

/// The servers a replica's settings put behind its endpoint, normalised as each names itself
/// (see [`crate::endpoint`]): `ip:port` on PostgreSQL (the way `inet_server_addr()` prints
/// the address), the `server_id` on MariaDB; empty for a plain replica.
pub(crate) fn servers(
    alias: &str,
    settings: &DatabaseSettings,
    backend: Backend,
) -> Result<Vec<String>, PinDbError> {
    let mut out: Vec<String> = Vec::new();
    for text in &settings.servers {
        let normal = match backend {
            Backend::Postgres => normal_address(text),
            // 0 is no server_id: such a server cannot replicate.
            Backend::MariaDb => text
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|id| *id != 0)
                .map(|id| id.to_string()),
        };
        let normal = normal.ok_or_else(|| {
            let how = match backend {
                Backend::Postgres => {
                    "is not `ip:port` (`10.0.0.5:5432`, `[fd00::5]:5432`): list each server by \
                     the address it sees itself at, `SELECT inet_server_addr(), \
                     inet_server_port()` on it (a host name never matches)"
                }
                Backend::MariaDb => {
                    "is not a `server_id`: list each MariaDB server behind the endpoint by its \
                     `SELECT @@server_id` (`servers = [\"2\", \"3\"]`)"
                }
            };
            PinDbError::config(alias, format!("`servers` entry `{text}` {how}"))
        })?;
        if out.contains(&normal) {
            return Err(PinDbError::config(
                alias,
                format!("`servers` lists {normal} twice; list each server once"),
            ));
        }
        out.push(normal);
    }
    Ok(out)
}

/// `servers` puts standbys behind a replica's endpoint: a master or an unmanaged database
/// is one server.
pub(crate) fn refuse_servers(alias: &str, settings: &DatabaseSettings) -> Result<(), PinDbError> {
    match settings.servers.is_empty() {
        true => Ok(()),
        false => Err(PinDbError::config(
            alias,
            "`servers` lists the standbys behind a replica's reader endpoint: give it to a \
             replica (`[sets]`); a master is one server",
        )),
    }
}

/// `ip:port` (IPv6 in brackets, PostgreSQL's canonical text), from `ip`, `ip:port` or
/// `[ipv6]:port`; `None` for anything else (a host name, a socket).
pub(crate) fn normal_address(text: &str) -> Option<String> {
    let (host, port) = host_port("", text).ok()?;
    let ip: std::net::IpAddr = host.trim_matches(['[', ']']).parse().ok()?;
    Some(std::net::SocketAddr::new(ip, port.unwrap_or(DEFAULT_PORT)).to_string())
}
