//! `populate_replicas`: from masters plus per-replica overrides to the final alias map.
//!
//! This module owns alias naming (`default`, `default-1`, ...), the merge of a replica's
//! overrides on top of its master's settings, and every structural config error. It does not
//! open connections and knows nothing about routing.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use percent_encoding::percent_decode_str;
use serde::Deserialize;
use url::Url;

use crate::error::PinDbError;

/// Default TCP port when neither the URL nor the settings give one.
pub const DEFAULT_PORT: u16 = 5432;

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
    /// it sees itself (`inet_server_addr()`:`inet_server_port()`; `host` alone takes 5432).
    /// Each becomes a replica of its own (`<set>-<n>`, in this order) whose connections are
    /// opened through the endpoint and kept only when they reached it: positions and lag hold
    /// per server. See "Poolers and load balancers" in the README.
    #[serde(default)]
    pub servers: Vec<String>,
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

/// Where a database sits in the topology.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Membership {
    /// The writable master of a set (its alias is the set's name).
    Master {
        /// The set name.
        set: String,
    },
    /// The `index`-th replica (1-based) of a set; its alias is `<set>-<index>`, or
    /// `<set>-<index>.<k>` for the `k`-th server behind a reader endpoint (`servers`).
    Replica {
        /// The set name.
        set: String,
        /// 1-based position in the set's replica list.
        index: usize,
    },
    /// The `index`-th host (1-based) of a set given as a list of hosts; its alias is
    /// `<set>-<index>`. Whether it is the set's primary or a standby is discovered at run time
    /// (the set's name routes to whichever is the primary now).
    Host {
        /// The set name.
        set: String,
        /// 1-based position in the set's host list.
        index: usize,
    },
    /// A database outside every set.
    Unmanaged,
}

/// Pool settings, with defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    /// Largest number of pooled connections (default 10).
    pub max_size: u32,
    /// Idle connections kept open (default: none).
    pub min_idle: Option<u32>,
    /// Checkout / connect timeout (default 5 s).
    pub connect_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_size: 10,
            min_idle: None,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// One entry of the final alias map: everything an adapter needs to open a pool.
///
/// `Debug` never shows the password.
///
/// ```
/// use pindb_core::Config;
///
/// let config = Config::single_set("postgres://app:pw@10.0.0.1/app", ["postgres://app:pw@10.0.0.2/app"]);
/// let replica = &config.databases().unwrap()[1];
/// assert_eq!(replica.alias, "default-1");
/// assert_eq!(replica.url(), "postgres://app:pw@10.0.0.2:5432/app");
/// assert!(!format!("{replica:?}").contains("pw"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Database {
    /// The alias (`default`, `default-1`, `legacy`...).
    pub alias: String,
    /// Master, replica or unmanaged.
    pub membership: Membership,
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Role, if given.
    pub user: Option<String>,
    /// Password, if given.
    pub password: Option<String>,
    /// Database name, if given.
    pub dbname: Option<String>,
    /// Extra connection parameters, rendered as URL query parameters.
    pub options: BTreeMap<String, String>,
    /// Pool settings.
    pub pool: PoolSettings,
    /// How it follows its master (replicas; `Streaming` for masters and unmanaged databases).
    pub kind: ReplicaKind,
    /// A runtime replica's slot (`[masters.<set>.discovery]`): its host is set while the
    /// service runs, and `host` here is empty. Adapters ask
    /// [`Topology::database_now`](crate::adapter::Topology::database_now) for where it is.
    pub runtime: bool,
    /// Its pool opens every connection read-only with a startup parameter
    /// (`options=-c default_transaction_read_only=on`, in [`Database::pool_url`]): logical
    /// and emulated replicas, which would accept a write. A streaming standby refuses writes
    /// by itself and gets nothing, so it works behind any pooler. Startup parameters are no
    /// session state a pooler hands on: PgBouncer refuses them (`start_monitor` then says
    /// so) or drops them (it warns).
    pub read_only: bool,
    /// A server behind a reader endpoint (`servers`), as `host:port`: connections opened
    /// with this database's URL are kept only when they reached it ([`Database::reaches`]).
    pub server: Option<String>,
}

impl Database {
    /// Whether it is a logical replica (a subscriber, not a standby).
    pub fn is_logical(&self) -> bool {
        self.is_replica() && self.kind == ReplicaKind::Logical
    }

    /// Whether it is a host of a set given as a list of hosts (its role is discovered).
    pub fn is_host(&self) -> bool {
        matches!(self.membership, Membership::Host { .. })
    }

    /// Whether it is one of a set's replicas.
    pub fn is_replica(&self) -> bool {
        matches!(self.membership, Membership::Replica { .. })
    }

    /// The set this database belongs to, if any.
    pub fn set(&self) -> Option<&str> {
        match &self.membership {
            Membership::Master { set }
            | Membership::Replica { set, .. }
            | Membership::Host { set, .. } => Some(set),
            Membership::Unmanaged => None,
        }
    }

    /// The connection URL, password included (give it to the pool, never to a log).
    pub fn url(&self) -> String {
        self.render(true)
    }

    /// The URL an application pool connects with: [`Database::url`] plus a `connect_timeout`
    /// (whole seconds, from the pool's `connect_timeout`) unless `options` set one. libpq and
    /// tokio-postgres both read it; without it a server that accepts and never answers keeps
    /// a pool's connection attempt (bb8's, r2d2's) waiting forever, and its slot with it.
    ///
    /// Options only sqlx knows (`statement-cache-capacity`) are left out (tokio-postgres and
    /// libpq refuse them), and a [`Database::read_only`] pool gets its startup parameter.
    pub fn pool_url(&self) -> String {
        let mut pool = self.clone();
        pool.options.retain(|k, _| !options::only_sqlx(k));
        if !self.options.contains_key("connect_timeout") {
            let secs = self.pool.connect_timeout.as_secs_f64().ceil().max(1.0) as u64;
            pool.options
                .insert("connect_timeout".to_owned(), secs.to_string());
        }
        if self.read_only {
            let net = pool.options.entry("options".to_owned()).or_default();
            if !net.is_empty() {
                net.push(' ');
            }
            net.push_str(READ_ONLY_OPTION);
        }
        pool.url()
    }

    /// The URL pindb's own connections use (the monitor, positions, checks): only what
    /// tokio-postgres understands, and the pool's read-only startup parameter, so a check
    /// fails the way the pool would.
    pub(crate) fn probe_url(&self) -> String {
        let mut probe = self.clone();
        probe.options.retain(|k, _| options::for_tokio_postgres(k));
        probe.pool_url()
    }

    /// The connection URL with the password replaced by `***`, for logs and errors.
    pub fn redacted_url(&self) -> String {
        self.render(false)
    }

    fn render(&self, with_password: bool) -> String {
        let mut s = String::from("postgres://");
        let enc = |v: &str| {
            percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        if let Some(user) = &self.user {
            s.push_str(&enc(user));
            if let Some(pw) = &self.password {
                s.push(':');
                s.push_str(&if with_password { enc(pw) } else { "***".into() });
            }
            s.push('@');
        }
        s.push_str(&self.host);
        s.push(':');
        s.push_str(&self.port.to_string());
        if let Some(db) = &self.dbname {
            s.push('/');
            s.push_str(&enc(db));
        }
        for (i, (k, v)) in self.options.iter().enumerate() {
            s.push(if i == 0 { '?' } else { '&' });
            s.push_str(&enc(k));
            s.push('=');
            s.push_str(&enc(v));
        }
        s
    }
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Database")
            .field("alias", &self.alias)
            .field("membership", &self.membership)
            .field("url", &self.redacted_url())
            .field("pool", &self.pool)
            .field("kind", &self.kind)
            .field("server", &self.server)
            .finish()
    }
}

/// The startup parameter that opens a [`Database::read_only`] pool's connections read-only.
pub(crate) const READ_ONLY_OPTION: &str = "-c default_transaction_read_only=on";

/// Connection parts before defaults are filled in; `None` means "not said here".
#[derive(Default, Clone)]
struct Parts {
    host: Option<String>,
    port: Option<u16>,
    user: Option<String>,
    password: Option<String>,
    dbname: Option<String>,
    options: BTreeMap<String, String>,
    max_size: Option<u32>,
    min_idle: Option<u32>,
    connect_timeout_ms: Option<u64>,
    kind: Option<ReplicaKind>,
    /// The hosts of a multi-host URL (`host[:port]` each), when it had more than one.
    url_hosts: Vec<String>,
}

impl Parts {
    fn from_settings(alias: &str, s: &DatabaseSettings) -> Result<Parts, PinDbError> {
        let mut parts = match &s.url {
            Some(url) => parse_url(alias, url)?,
            None => Parts::default(),
        };
        parts.overlay(Parts {
            host: s.host.clone(),
            port: s.port,
            user: s.user.clone(),
            password: s.password.clone(),
            dbname: s.dbname.clone(),
            options: s.options.clone(),
            max_size: s.max_size,
            min_idle: s.min_idle,
            connect_timeout_ms: s.connect_timeout_ms,
            kind: s.kind,
            url_hosts: Vec::new(),
        });
        Ok(parts)
    }

    fn overlay(&mut self, top: Parts) {
        fn take<T>(base: &mut Option<T>, top: Option<T>) {
            if top.is_some() {
                *base = top;
            }
        }
        take(&mut self.host, top.host);
        take(&mut self.port, top.port);
        take(&mut self.user, top.user);
        take(&mut self.password, top.password);
        take(&mut self.dbname, top.dbname);
        self.options.extend(top.options);
        take(&mut self.max_size, top.max_size);
        take(&mut self.min_idle, top.min_idle);
        take(&mut self.connect_timeout_ms, top.connect_timeout_ms);
        take(&mut self.kind, top.kind);
        if !top.url_hosts.is_empty() {
            self.url_hosts = top.url_hosts;
        }
    }

    fn finish(self, alias: String, membership: Membership) -> Result<Database, PinDbError> {
        if !self.url_hosts.is_empty() && !matches!(membership, Membership::Host { .. }) {
            return Err(PinDbError::config(
                alias,
                "a multi-host url (host1,host2) names the hosts of a set: give it to a master \
                 (`[masters.<set>] url`); a replica or an unmanaged database is one host",
            ));
        }
        let host = self.host.filter(|h| !h.is_empty()).ok_or_else(|| {
            PinDbError::config(
                alias.clone(),
                "no host: give a `url` (postgres://user@host:port/db) or a `host`",
            )
        })?;
        for key in self.options.keys() {
            options::check(&alias, key)?;
        }
        let defaults = PoolSettings::default();
        let max_size = self.max_size.unwrap_or(defaults.max_size);
        if max_size == 0 {
            return Err(PinDbError::config(
                alias,
                "max_size = 0 would make every checkout time out; use at least 1",
            ));
        }
        let kind = match (&membership, self.kind) {
            (Membership::Replica { .. }, kind) => kind.unwrap_or_default(),
            (_, None) => ReplicaKind::Streaming,
            (_, Some(_)) => {
                return Err(PinDbError::config(
                    alias,
                    "`kind` says how a replica follows its master; remove it from this master \
                     or unmanaged database",
                ))
            }
        };
        Ok(Database {
            read_only: kind == ReplicaKind::Logical,
            kind,
            runtime: false,
            server: None,
            alias,
            membership,
            host,
            port: self.port.unwrap_or(DEFAULT_PORT),
            user: self.user,
            password: self.password,
            dbname: self.dbname,
            options: self.options,
            pool: PoolSettings {
                max_size,
                min_idle: self.min_idle,
                connect_timeout: self
                    .connect_timeout_ms
                    .map(Duration::from_millis)
                    .unwrap_or(defaults.connect_timeout),
            },
        })
    }
}

/// Splits a libpq multi-host URL (`postgres://u@h1:1,h2:2/db`) into the URL with its first
/// host and the list of hosts; any other URL comes back as it is, with no list.
fn split_hosts(text: &str) -> (String, Vec<String>) {
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

/// `host`, `host:port` or `[v6]:port`.
pub(crate) fn host_port(alias: &str, text: &str) -> Result<(String, Option<u16>), PinDbError> {
    let bad = || {
        PinDbError::config(
            alias,
            format!("host `{text}` is not `host` or `host:port`; write e.g. \"10.0.0.1:5432\""),
        )
    };
    // An IPv6 address keeps its brackets, as `Url::host_str` gives it (URLs need them).
    let (host, port) = match text.strip_prefix('[') {
        Some(v6) => {
            let (inner, rest) = v6.split_once(']').ok_or_else(bad)?;
            let port = match rest {
                "" => None,
                _ => Some(rest.strip_prefix(':').ok_or_else(bad)?),
            };
            (&text[..inner.len() + 2], port)
        }
        None => match text.rsplit_once(':') {
            // `::1` unbracketed: which colon starts the port?
            Some((host, _)) if host.contains(':') => return Err(bad()),
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        },
    };
    if host.is_empty() || host.contains(['/', '@', ',', ' ']) {
        return Err(bad());
    }
    let port = port
        .map(|p| p.parse::<u16>().map_err(|_| bad()))
        .transpose()?;
    Ok((host.to_owned(), port))
}

fn parse_url(alias: &str, text: &str) -> Result<Parts, PinDbError> {
    let (text, url_hosts) = split_hosts(text);
    let text = text.as_str();
    let url = Url::parse(text).map_err(|e| {
        PinDbError::config(
            alias,
            format!(
                "the url does not parse ({e}); expected postgres://user:password@host:port/dbname"
            ),
        )
    })?;
    if url.scheme() != "postgres" && url.scheme() != "postgresql" {
        return Err(PinDbError::config(
            alias,
            format!(
                "unsupported url scheme `{}`: pindb speaks PostgreSQL; use postgres://",
                url.scheme()
            ),
        ));
    }
    let decode = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
    let non_empty = |s: String| (!s.is_empty()).then_some(s);
    Ok(Parts {
        host: url.host_str().map(str::to_owned).and_then(non_empty),
        port: url.port(),
        user: non_empty(decode(url.username())),
        password: url.password().map(decode),
        dbname: non_empty(decode(url.path().trim_start_matches('/'))),
        options: url
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect(),
        url_hosts,
        ..Parts::default()
    })
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
        crate::endpoint::refuse_servers(set, master_settings)?;
        let master = Parts::from_settings(set, master_settings)?;
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
            let mut parts = master.clone();
            parts.overlay(Parts::from_settings(&alias, overrides)?);
            let membership = Membership::Replica {
                set: set.clone(),
                index,
            };
            // A replica behind a reader endpoint is one replica per server behind it,
            // `<set>-<n>.<k>`: the entry keeps its number (its env override, its settings).
            let servers = crate::endpoint::servers(&alias, overrides)?;
            if servers.is_empty() {
                claim(&alias, "a generated replica alias")?;
                out.push(parts.finish(alias, membership)?);
                continue;
            }
            for (k, server) in servers.into_iter().enumerate() {
                let alias = format!("{alias}.{}", k + 1);
                claim(&alias, "a generated replica alias")?;
                let mut db = parts.clone().finish(alias, membership.clone())?;
                db.server = Some(server);
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
        crate::endpoint::refuse_servers(alias, settings)?;
        out.push(
            Parts::from_settings(alias, settings)?.finish(alias.clone(), Membership::Unmanaged)?,
        );
    }
    Ok(out)
}

mod options;
#[cfg(test)]
mod tests;
