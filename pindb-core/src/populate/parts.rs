//! [`Parts`]: the connection parts of a database before defaults are filled in, from a URL
//! and explicit settings, merged (a replica's over its master's) and finished into a
//! [`Database`].

use std::collections::BTreeMap;
use std::time::Duration;

use percent_encoding::percent_decode_str;
use url::Url;

use super::database::{Database, Membership, PoolSettings};
use super::options;
use super::settings::{split_hosts, DatabaseSettings, ReplicaKind};
use crate::backend::Backend;
use crate::error::PinDbError;

/// Connection parts before defaults are filled in; `None` means "not said here".
#[derive(Default, Clone)]
pub(super) struct Parts {
    pub(super) host: Option<String>,
    pub(super) port: Option<u16>,
    pub(super) user: Option<String>,
    pub(super) password: Option<String>,
    pub(super) dbname: Option<String>,
    pub(super) options: BTreeMap<String, String>,
    pub(super) max_size: Option<u32>,
    pub(super) min_idle: Option<u32>,
    pub(super) connect_timeout_ms: Option<u64>,
    pub(super) kind: Option<ReplicaKind>,
    /// The hosts of a multi-host URL (`host[:port]` each), when it had more than one.
    pub(super) url_hosts: Vec<String>,
    /// From the URL's scheme.
    pub(super) backend: Option<Backend>,
}

impl Parts {
    pub(super) fn from_settings(alias: &str, s: &DatabaseSettings) -> Result<Parts, PinDbError> {
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
            backend: None,
        });
        Ok(parts)
    }

    pub(super) fn overlay(&mut self, top: Parts) {
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
        take(&mut self.backend, top.backend);
        if !top.url_hosts.is_empty() {
            self.url_hosts = top.url_hosts;
        }
    }

    pub(super) fn finish(
        self,
        alias: String,
        membership: Membership,
    ) -> Result<Database, PinDbError> {
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
        let backend = self.backend.unwrap_or_default();
        if backend == Backend::MariaDb {
            if let Some(key) = self.options.keys().next() {
                return Err(PinDbError::config(
                    alias,
                    format!("url option `{key}`: MariaDB sets take no url options yet; remove it"),
                ));
            }
        }
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
        if self.connect_timeout_ms == Some(0) {
            return Err(PinDbError::config(
                alias,
                "connect_timeout_ms = 0 would give no connection any time; use at least 1 \
                 (5000 for a master and 1000 for a replica by default)",
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
        if backend == Backend::MariaDb && kind == ReplicaKind::Logical {
            return Err(PinDbError::config(
                alias,
                "`kind = \"logical\"` is PostgreSQL's logical replication; a MariaDB replica \
                 follows its master by GTID: remove `kind`",
            ));
        }
        Ok(Database {
            backend,
            read_only: kind == ReplicaKind::Logical,
            kind,
            runtime: false,
            server: None,
            replication_connection: None,
            alias,
            membership,
            host,
            port: self.port.unwrap_or(backend.default_port()),
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

pub(super) fn parse_url(alias: &str, text: &str) -> Result<Parts, PinDbError> {
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
    let backend = Backend::of_scheme(url.scheme()).ok_or_else(|| {
        PinDbError::config(
            alias,
            format!(
                "unsupported url scheme `{}`: pindb speaks PostgreSQL (postgres://) and MariaDB \
                 (mysql:// or mariadb://)",
                url.scheme()
            ),
        )
    })?;
    if backend == Backend::MariaDb && cfg!(not(feature = "mariadb")) {
        return Err(PinDbError::config(
            alias,
            "a MariaDB url needs pindb-core's `mariadb` feature; enable it in Cargo.toml \
             (pindb-core = { features = [\"mariadb\"] })",
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
        backend: Some(backend),
        ..Parts::default()
    })
}
