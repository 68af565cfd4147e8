//! What a config file says of a database: [`DatabaseSettings`] (a master, or the overrides of
//! one replica), [`DiscoverySettings`] and [`ReplicaKind`].

use std::collections::BTreeMap;

use serde::Deserialize;

/// Connection settings of one database, or the overrides of one replica.
///
/// Every field is optional so that the same type serves as a replica *override*: only the
/// fields that differ from the master are given. `url` is parsed into parts; explicit parts win
/// over the URL's.
///
/// ```
/// use pindb_core::DatabaseSettings;
///
/// let replica: DatabaseSettings = toml::from_str("port = 5433").unwrap();
/// assert_eq!(replica.port, Some(5433));
/// assert_eq!(replica.url, None);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// A `postgres://user:password@host:port/dbname?param=value` URL.
    pub url: Option<String>,
    /// Host name or IP address.
    pub host: Option<String>,
    /// TCP port.
    pub port: Option<u16>,
    /// Role to connect as.
    pub user: Option<String>,
    /// Password (prefer putting it in the URL from an environment variable).
    pub password: Option<String>,
    /// Database name.
    pub dbname: Option<String>,
    /// Extra connection parameters (`sslmode`, `application_name`, ...), merged key by key.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// Largest number of pooled connections.
    pub max_size: Option<u32>,
    /// Idle connections the pool keeps open.
    pub min_idle: Option<u32>,
    /// How long a checkout or a connection attempt may take, in milliseconds.
    pub connect_timeout_ms: Option<u64>,
    /// Replicas only: how it follows its master (`streaming`, the default, or `logical`).
    pub kind: Option<ReplicaKind>,
    /// Masters only: every host of the set (`host:port`; `host` alone takes `port`, else
    /// 5432, as libpq does; IPv6 in brackets: `[::1]:5432`),
    /// instead of one master and its replicas. The monitor finds which one is the primary
    /// (and which are its standbys) and follows promotions; they are named `<set>-1`...
    /// in this order. A multi-host `url` (`postgres://app@db1:5432,db2:5432/app`, as libpq
    /// takes) says the same.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Masters only: replicas that come and go while the service runs, beside the configured
    /// ones: from DNS, or from [`Router::set_replicas`](crate::Router::set_replicas).
    pub discovery: Option<DiscoverySettings>,
    /// Replicas only: the standbys behind a load-balanced reader endpoint (`url`), each as
    /// it sees itself: on PostgreSQL its address (`inet_server_addr()`:`inet_server_port()`;
    /// `host` alone takes 5432), on MariaDB its `@@server_id` (`"2"`).
    /// Each becomes a replica of its own (`<set>-<n>.<k>`, in this order) whose connections are
    /// opened through the endpoint and kept only when they reached it: positions and lag hold
    /// per server. See "Poolers and load balancers" in the README.
    #[serde(default)]
    pub servers: Vec<String>,
    /// MariaDB replicas only: the named replication connection through which it follows the
    /// set's master (`CHANGE MASTER 'name' TO ..`), on a replica of several masters
    /// (multi-source). pindb then reads that connection's status (`SHOW SLAVE 'name'
    /// STATUS`) instead of the default one's.
    pub replication_connection: Option<String>,
}

/// Where a set's runtime replicas come from (`[masters.<set>.discovery]`), as GitLab's load
/// balancer's service discovery: a DNS name refreshed at an interval, or the application's
/// own calls to [`Router::set_replicas`](crate::Router::set_replicas). Each runtime replica
/// takes one of `max_replicas` slots, named after the configured replicas (`<set>-<n>`), and
/// connects with the master's settings (user, database, options, pool) at its own host.
///
/// ```
/// let m: pindb_core::DatabaseSettings = toml::from_str(r#"
///     url = "postgres://app@db0/app"
///     discovery = { srv = "_postgresql._tcp.replicas.db.internal", interval_ms = 10000 }
/// "#).unwrap();
/// assert_eq!(m.discovery.unwrap().srv.as_deref(), Some("_postgresql._tcp.replicas.db.internal"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoverySettings {
    /// Most runtime replicas at once (default 8): hosts past it are left out, and said so.
    pub max_replicas: Option<usize>,
    /// A name whose A/AAAA records are the replicas, as `name` or `name:port` (without a
    /// port, the master's). Needs pindb-core's `dns` feature.
    pub dns: Option<String>,
    /// A name whose SRV records (target and port) are the replicas. Needs the `dns` feature.
    pub srv: Option<String>,
    /// The name server to ask, `ip:port` (default: the system's, from `/etc/resolv.conf`).
    pub nameserver: Option<String>,
    /// How often the name is resolved again, in milliseconds (default 30000).
    pub interval_ms: Option<u64>,
}

impl DiscoverySettings {
    /// Slots when `max_replicas` is not given.
    pub const DEFAULT_MAX_REPLICAS: usize = 8;
    /// Refresh interval when `interval_ms` is not given.
    pub const DEFAULT_INTERVAL_MS: u64 = 30_000;

    /// `max_replicas`, or its default.
    pub fn max_replicas(&self) -> usize {
        self.max_replicas.unwrap_or(Self::DEFAULT_MAX_REPLICAS)
    }
}

/// How a replica follows its master.
///
/// ```
/// let r: pindb_core::DatabaseSettings = toml::from_str(r#"url = "postgres://app@sub/app"
/// kind = "logical""#).unwrap();
/// assert_eq!(r.kind, Some(pindb_core::ReplicaKind::Logical));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplicaKind {
    /// A hot standby (physical streaming replication): a copy of the whole cluster, its
    /// position is the WAL it replayed.
    #[default]
    Streaming,
    /// A subscriber of publications on the master (logical replication): another cluster,
    /// possibly another major version, carrying only the published tables. Its position is
    /// what its subscription slot on the master confirmed; reads of tables it does not carry
    /// go elsewhere.
    Logical,
}

impl ReplicaKind {
    /// `streaming` or `logical`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaKind::Streaming => "streaming",
            ReplicaKind::Logical => "logical",
        }
    }
}

impl DatabaseSettings {
    /// Whether it gives a set as a list of hosts (`hosts`, or a multi-host `url`).
    pub fn is_multi_host(&self) -> bool {
        !self.hosts.is_empty()
            || self
                .url
                .as_deref()
                .is_some_and(|u| !split_hosts(u).1.is_empty())
    }

    /// Settings from a URL alone.
    ///
    /// ```
    /// let s = pindb_core::DatabaseSettings::from_url("postgres://app@db1/app");
    /// assert_eq!(s.url.as_deref(), Some("postgres://app@db1/app"));
    /// ```
    pub fn from_url(url: impl Into<String>) -> Self {
        DatabaseSettings {
            url: Some(url.into()),
            ..Default::default()
        }
    }
}

/// Splits a libpq multi-host URL (`postgres://u@h1:1,h2:2/db`) into the URL with its first
/// host and the list of hosts; any other URL comes back as it is, with no list.
pub(super) fn split_hosts(text: &str) -> (String, Vec<String>) {
    let Some((scheme, rest)) = text.split_once("://") else {
        return (text.to_owned(), Vec::new());
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let (userinfo, hostlist) = match authority.rfind('@') {
        Some(at) => authority.split_at(at + 1),
        None => ("", authority),
    };
    if !hostlist.contains(',') {
        return (text.to_owned(), Vec::new());
    }
    let hosts: Vec<String> = hostlist.split(',').map(str::to_owned).collect();
    (format!("{scheme}://{userinfo}{}{tail}", hosts[0]), hosts)
}
