//! Runtime replicas: hosts that join and leave a set while the service runs, from
//! [`Router::set_replicas`](crate::Router::set_replicas) or from DNS (`[masters.<set>.discovery]`).
//!
//! Each runtime replica takes a *slot*: an alias fixed at start-up (`<set>-<n>`, with its own
//! health cell, pool and monitor task) whose host changes. A slot carries a generation,
//! bumped at every change, so that whoever holds something built for its old host (an
//! adapter's pool, a probe, a check under way) sees that it is stale. A host that stays in
//! the list keeps its slot, so its pool and its health survive every refresh; a removed
//! host's slot is emptied at once for new reads, while the connections its pool lent out
//! finish their work and close when they come back (the pool lives as long as they do).

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use crate::error::PinDbError;
use crate::populate::Database;

/// One runtime replica slot: the host it points at now, if any.
#[derive(Debug)]
pub(crate) struct Slot {
    /// Mirrors `now.0`: read on every checkout without the lock.
    generation: AtomicU64,
    now: RwLock<(u64, Option<Arc<Database>>)>,
}

impl Slot {
    pub(crate) fn vacant() -> Slot {
        Slot {
            generation: AtomicU64::new(0),
            now: RwLock::new((0, None)),
        }
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The generation and the host, read together.
    pub(crate) fn now(&self) -> (u64, Option<Arc<Database>>) {
        self.now
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// `host:port` of the host now, if any.
    fn address(&self) -> Option<(String, u16)> {
        self.now().1.map(|db| (db.host.clone(), db.port))
    }

    fn assign(&self, db: Option<Database>) {
        let mut now = self.now.write().unwrap_or_else(PoisonError::into_inner);
        let generation = now.0 + 1;
        *now = (generation, db.map(Arc::new));
        self.generation.store(generation, Ordering::Release);
    }
}

/// What [`plan`] decided for a set's slots: `(slot, new host)` for each slot that changes
/// (`None`: emptied).
pub(crate) type Moves = Vec<(usize, Option<(String, u16)>)>;

/// Parses `hosts` (`host`, `host:port`, `[v6]:port`; without a port, `default_port`) and
/// removes repeats. An error names the entry and the fix.
pub(crate) fn parse_hosts<S: AsRef<str>>(
    set: &str,
    hosts: impl IntoIterator<Item = S>,
    default_port: u16,
) -> Result<Vec<(String, u16)>, PinDbError> {
    let mut parsed: Vec<(String, u16)> = Vec::new();
    for text in hosts {
        let (host, port) = crate::populate::host_port(set, text.as_ref().trim())?;
        let address = (host, port.unwrap_or(default_port));
        if !parsed.contains(&address) {
            parsed.push(address);
        }
    }
    Ok(parsed)
}

/// Which slots change so that `slots` hold exactly `wanted`: a host already in a slot stays
/// there, a host no longer wanted leaves its slot empty, a new host takes an empty slot
/// (the one emptied longest ago first, so a check of a removed host still under way does not
/// meet its successor). `Err` with the number of hosts when they do not fit.
pub(crate) fn plan(
    current: &[Option<(String, u16)>],
    wanted: &[(String, u16)],
) -> Result<Moves, usize> {
    if wanted.len() > current.len() {
        return Err(wanted.len());
    }
    let mut moves = Vec::new();
    let (mut vacant, mut emptied) = (Vec::new(), Vec::new());
    for (s, now) in current.iter().enumerate() {
        match now {
            Some(address) if wanted.contains(address) => {}
            Some(_) => {
                moves.push((s, None));
                emptied.push(s);
            }
            None => vacant.push(s),
        }
    }
    let mut free = vacant.into_iter().chain(emptied);
    for address in wanted {
        if !current.iter().any(|c| c.as_ref() == Some(address)) {
            // `wanted.len() <= current.len()`, so a slot is free for every new host.
            let Some(s) = free.next() else {
                return Err(wanted.len());
            };
            match moves.iter_mut().find(|(m, _)| *m == s) {
                Some(emptied) => emptied.1 = Some(address.clone()),
                None => moves.push((s, Some(address.clone()))),
            }
        }
    }
    Ok(moves)
}

/// The slots of one set, in slot order, with the template each host is opened with.
pub(crate) struct SetSlots<'a> {
    pub(crate) slots: Vec<&'a Slot>,
    pub(crate) templates: Vec<&'a Database>,
}

impl SetSlots<'_> {
    pub(crate) fn addresses(&self) -> Vec<Option<(String, u16)>> {
        self.slots.iter().map(|s| s.address()).collect()
    }

    /// Carries out `moves`; returns the slots that changed.
    pub(crate) fn apply(&self, moves: &Moves) -> Vec<usize> {
        for (s, address) in moves {
            self.slots[*s].assign(address.as_ref().map(|(host, port)| {
                let mut db = self.templates[*s].clone();
                db.host = host.clone();
                db.port = *port;
                db
            }));
        }
        moves.iter().map(|(s, _)| *s).collect()
    }
}

/// The database behind a slot now: borrowed for a fixed database, the slot's host for a
/// runtime one; [`PinDbError::NoHost`] for an empty slot.
pub(crate) fn database_now<'a>(
    template: &'a Database,
    slot: Option<&Slot>,
) -> Result<(u64, Cow<'a, Database>), PinDbError> {
    let Some(slot) = slot else {
        return Ok((0, Cow::Borrowed(template)));
    };
    match slot.now() {
        (generation, Some(db)) => Ok((generation, Cow::Owned((*db).clone()))),
        (_, None) => Err(PinDbError::NoHost {
            alias: template.alias.clone(),
        }),
    }
}

#[cfg(feature = "dns")]
pub(crate) use dns::spawn_dns;

#[cfg(feature = "dns")]
mod dns {
    //! The DNS refresh: one task per set with a `dns` or `srv` name.

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
                    match lookup(&resolver, &query).await {
                        Ok(mut hosts) => {
                            logged = false;
                            if hosts.len() > max {
                                tracing::warn!(target: "pindb", %set, found = hosts.len(), max, "pindb discovery: more hosts than discovery.max_replicas; the first ones (by name) serve");
                                hosts.truncate(max);
                            }
                            let names: Vec<String> = hosts
                                .iter()
                                .map(|(h, p)| format!("{h}:{p}"))
                                .collect();
                            if let Err(e) = topology.set_replicas(&set, &names, "dns") {
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
        match &settings.nameserver {
            None => TokioResolver::builder(provider)
                .map(|b| b.build())
                .map_err(|e| {
                    PinDbError::config(
                        set,
                        format!("the system's DNS configuration cannot be read ({e}); give discovery.nameserver = \"ip:port\""),
                    )
                }),
            Some(text) => {
                let address: std::net::SocketAddr = text.parse().map_err(|_| {
                    PinDbError::config(
                        set,
                        format!("discovery.nameserver `{text}` is not `ip:port`; write e.g. \"10.0.0.2:53\""),
                    )
                })?;
                let servers =
                    NameServerConfigGroup::from_ips_clear(&[address.ip()], address.port(), true);
                let config = ResolverConfig::from_parts(None, Vec::new(), servers);
                let mut builder = TokioResolver::builder_with_config(config, provider);
                // Every refresh asks again: the records' TTL is the server's business.
                builder.options_mut().cache_size = 0;
                Ok(builder.build())
            }
        }
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
                    .collect(),
                Err(e) if no_records(&e) => Vec::new(),
                Err(e) => return Err(e),
            },
        };
        hosts.sort();
        hosts.dedup();
        Ok(hosts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(h: &str, p: u16) -> (String, u16) {
        (h.to_owned(), p)
    }

    #[test]
    fn a_host_that_stays_keeps_its_slot() {
        let current = vec![Some(a("r1", 1)), Some(a("r2", 2)), None];
        let moves = plan(&current, &[a("r2", 2), a("r3", 3)]).unwrap();
        // r1 leaves slot 0; r3 takes the slot that was empty before (2), not r1's.
        assert_eq!(moves, vec![(0, None), (2, Some(a("r3", 3)))]);
        assert_eq!(plan(&current, &[a("r1", 1), a("r2", 2)]).unwrap(), vec![]);
    }

    #[test]
    fn an_emptied_slot_is_taken_last() {
        let current = vec![Some(a("r1", 1)), None];
        let moves = plan(&current, &[a("r4", 4), a("r5", 5)]).unwrap();
        assert_eq!(moves, vec![(0, Some(a("r5", 5))), (1, Some(a("r4", 4)))]);
    }

    #[test]
    fn too_many_hosts_change_nothing() {
        let current = vec![Some(a("r1", 1))];
        assert_eq!(plan(&current, &[a("r1", 1), a("r2", 2)]), Err(2));
        assert_eq!(plan(&current, &[]).unwrap(), vec![(0, None)]);
    }

    #[test]
    fn hosts_parse_with_the_default_port_and_without_repeats() {
        let hosts = parse_hosts(
            "default",
            ["db1", "db1:5432", "[::1]:6000", " db2:7 "],
            5432,
        )
        .unwrap();
        assert_eq!(hosts, vec![a("db1", 5432), a("[::1]", 6000), a("db2", 7)]);
        let e = parse_hosts("default", ["db1:x"], 5432).unwrap_err();
        assert!(e.to_string().contains("db1:x"), "{e}");
    }
}
