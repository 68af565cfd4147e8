//! [`Database`]: one database of the alias map, as pools and pindb's own connections open it,
//! with its place in the topology ([`Membership`]) and its pool's settings.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use super::options;
use super::settings::ReplicaKind;
use crate::backend::Backend;

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
    /// The database it runs, from its URL's scheme (PostgreSQL without a URL).
    pub backend: Backend,
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
    /// A server behind a reader endpoint (`servers`), as it names itself (PostgreSQL:
    /// `host:port`; MariaDB: its `server_id`): connections opened with this database's URL
    /// are kept only when they reached it ([`Database::reaches`]).
    pub server: Option<String>,
    /// MariaDB: the named replication connection this replica follows its master through
    /// (`replication_connection`; `None`: the default connection).
    pub replication_connection: Option<String>,
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
    /// A MariaDB database's is its [`Database::url`].
    pub fn pool_url(&self) -> String {
        if self.backend != Backend::Postgres {
            // No url options (refused at start-up): the pool bounds its connection attempts.
            return self.url();
        }
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
        let mut s = format!("{}://", self.backend.scheme());
        // RFC 3986's unreserved characters stay as they are: diesel's MySQL driver does not
        // decode a database name, so `app_db` must not reach it as `app%5Fdb`.
        const COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
            .remove(b'-')
            .remove(b'_')
            .remove(b'.')
            .remove(b'~');
        let enc = |v: &str| percent_encoding::utf8_percent_encode(v, COMPONENT).to_string();
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
