//! The DNS refresh of runtime replicas (`discovery.dns` or `srv`): one task per set, which
//! resolves the name at an interval and hands the hosts to `Topology::set_replicas`
//! (pindb-core's `dns` feature, hickory-resolver).

use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::{ResolveError, TokioResolver};

use crate::error::PinDbError;
use crate::populate::DiscoverySettings;
use crate::topology::Topology;

/// What to ask.
enum Query {
    /// A/AAAA records, each host at `port`.
    Ip { name: String, port: u16 },
    /// SRV records: target and port each.
    Srv(String),
}

/// Starts the refresh of `set`'s runtime replicas from its DNS name, if it has one:
/// resolved at once, then every `interval_ms`. A failed lookup (no answer, a refused
/// query) keeps the hosts the set has, logged; a name with no records empties the set;
/// past `max_replicas` hosts, the first ones by name are kept (logged).
pub(crate) fn spawn_dns(
    topology: Arc<Topology>,
    set: &str,
    settings: &DiscoverySettings,
    default_port: u16,
) -> Result<Option<tokio::task::AbortHandle>, PinDbError> {
    let query = match (&settings.dns, &settings.srv) {
        (Some(name), _) => {
            let (host, port) = crate::populate::host_port(set, name)?;
            Query::Ip {
                name: host,
                port: port.unwrap_or(default_port),
            }
        }
        (None, Some(name)) => Query::Srv(name.clone()),
        (None, None) => return Ok(None),
    };
    let resolver = resolver(set, settings)?;
    let every = Duration::from_millis(
        settings
            .interval_ms
            .unwrap_or(DiscoverySettings::DEFAULT_INTERVAL_MS),
    );
    let (set, max) = (set.to_owned(), settings.max_replicas());
    Ok(Some(
        tokio::spawn(async move {
            let mut logged = false;
            loop {
                // Bounded whatever the resolver's own timeouts and search list add up to.
                let answer = tokio::time::timeout(every, lookup(&resolver, &query)).await;
                match answer.unwrap_or_else(|_| Err(ResolveError::from("no answer within discovery.interval_ms"))) {
                    Ok(mut hosts) => {
                        logged = false;
                        if hosts.len() > max {
                            tracing::warn!(target: "pindb", %set, found = hosts.len(), max, "pindb discovery: more hosts than discovery.max_replicas; the first ones (by name) serve");
                            hosts.truncate(max);
                        }
                        // It runs beside a monitor: new hosts wait for their checks.
                        if let Err(e) = topology.set_replicas(&set, &hosts, false, "dns") {
                            tracing::warn!(target: "pindb", %set, error = %e, "pindb discovery: hosts left out");
                        }
                    }
                    Err(e) => {
                        metrics::counter!("pindb_discovery_failures_total", "set" => set.clone())
                            .increment(1);
                        if !logged {
                            tracing::warn!(target: "pindb", %set, error = %e, "pindb discovery: lookup failed; keeping the replicas the set has");
                            logged = true;
                        }
                    }
                }
                tokio::time::sleep(every).await;
            }
        })
        .abort_handle(),
    ))
}

fn resolver(set: &str, settings: &DiscoverySettings) -> Result<TokioResolver, PinDbError> {
    let provider = TokioConnectionProvider::default();
    let mut builder = match &settings.nameserver {
        None => TokioResolver::builder(provider).map_err(|e| {
            PinDbError::config(
                set,
                format!("the system's DNS configuration cannot be read ({e}); give discovery.nameserver = \"ip:port\""),
            )
        })?,
        Some(text) => {
            // Checked when the config was loaded.
            let address: std::net::SocketAddr = text.parse().map_err(|_| {
                PinDbError::config(set, format!("discovery.nameserver `{text}` is not `ip:port`"))
            })?;
            let servers =
                NameServerConfigGroup::from_ips_clear(&[address.ip()], address.port(), true);
            let config = ResolverConfig::from_parts(None, Vec::new(), servers);
            TokioResolver::builder_with_config(config, provider)
        }
    };
    // Every refresh asks again: the records' TTL is the server's business (and a cached
    // negative answer would keep a new replica out).
    builder.options_mut().cache_size = 0;
    Ok(builder.build())
}

/// The name exists with no such records, or does not exist: no hosts. Not a failing
/// server (SERVFAIL, REFUSED), which hickory reports the same way with another code.
fn no_records(e: &ResolveError) -> bool {
    matches!(
        e.proto().map(|p| p.kind()),
        Some(ProtoErrorKind::NoRecordsFound {
            response_code: ResponseCode::NoError | ResponseCode::NXDomain,
            ..
        })
    )
}

/// The hosts a name gives now, in a stable order; empty when it has no records.
async fn lookup(
    resolver: &TokioResolver,
    query: &Query,
) -> Result<Vec<(String, u16)>, ResolveError> {
    let mut hosts: Vec<(String, u16)> = match query {
        Query::Ip { name, port } => match resolver.lookup_ip(name.as_str()).await {
            Ok(ips) => ips
                .iter()
                .map(|ip| match ip {
                    std::net::IpAddr::V4(v4) => (v4.to_string(), *port),
                    std::net::IpAddr::V6(v6) => (format!("[{v6}]"), *port),
                })
                .collect(),
            Err(e) if no_records(&e) => Vec::new(),
            Err(e) => return Err(e),
        },
        Query::Srv(name) => match resolver.srv_lookup(name.as_str()).await {
            Ok(records) => records
                .iter()
                .map(|srv| {
                    let target = srv.target().to_utf8();
                    (target.trim_end_matches('.').to_owned(), srv.port())
                })
                // A target of "." says the service is not offered there (RFC 2782).
                .filter(|(target, _)| !target.is_empty())
                .collect(),
            Err(e) if no_records(&e) => Vec::new(),
            Err(e) => return Err(e),
        },
    };
    hosts.sort();
    hosts.dedup();
    Ok(hosts)
}
