//! Configuration: what the user writes (TOML or code), validated.
//!
//! This module owns parsing and validation; the sections live in `settings.rs`, environment
//! overrides in `env.rs`. Turning databases into the final alias map is
//! [`populate_replicas`](crate::adapter::populate_replicas)'s job; routing is the router's.
//! Loading always validates, so a `Config` that exists can be turned into a router.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::error::PinDbError;
use crate::populate::{populate_replicas, Database, DatabaseSettings};

mod env;
mod settings;

pub use env::ENV_URL_PREFIX;
pub use settings::{
    AllLaggingPolicy, MonitorSettings, ReadSettings, ReplicaPolicy, RouterMode, StickinessSettings,
    TopologyCheck, WebSettings,
};

/// Top-level keys that moved to `[web]`: named in the parse error, with the fix.
const MOVED_TO_WEB: &[&str] = &[
    "pinning_seconds",
    "cookie_name",
    "cookie_secret",
    "cookie_old_secrets",
    "ephemeral_cookie_key",
    "cookie_secure",
];

/// Parses TOML into a `Config`; `source` names the document in the error.
fn parse(toml_text: &str, source: &str) -> Result<Config, PinDbError> {
    toml::from_str(toml_text).map_err(|e| {
        let text = e.to_string();
        let moved = MOVED_TO_WEB
            .iter()
            .find(|k| text.contains(&format!("unknown field `{k}`")));
        PinDbError::config_global(match moved {
            Some(key) => format!(
                "{source}: `{key}` belongs in the `[web]` section now; move it under `[web]`"
            ),
            None => format!("{source} does not parse: {}", text.trim_end()),
        })
    })
}

/// The whole pindb configuration.
///
/// ```
/// use pindb_core::{Config, RouterMode};
///
/// let config = Config::from_toml_str(r#"
///     router = "strict"
///     [masters.default]
///     url = "postgres://app@127.0.0.1:5432/app"
///     [sets]
///     default = [{ port = 5433 }, { port = 5434 }]
/// "#).unwrap();
/// assert_eq!(config.router, RouterMode::Strict);
/// let aliases: Vec<_> = config.databases().unwrap().into_iter().map(|d| d.alias).collect();
/// assert_eq!(aliases, ["default", "default-1", "default-2"]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Config {
    /// `false` sends everything to masters with no pinning, errors or cookies (for test suites).
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// Strict or greedy handling of unpinned writes.
    #[serde(default)]
    pub router: RouterMode,
    /// How a context picks a replica.
    #[serde(default)]
    pub replica_policy: ReplicaPolicy,
    /// Allow the `default` alias to be an unmanaged database instead of a master.
    #[serde(default)]
    pub unmanaged_default: bool,
    /// Master settings by set name.
    #[serde(default)]
    pub masters: BTreeMap<String, DatabaseSettings>,
    /// Replica overrides by set name, merged on top of the set's master settings.
    #[serde(default)]
    pub sets: BTreeMap<String, Vec<DatabaseSettings>>,
    /// Databases outside every set.
    #[serde(default)]
    pub unmanaged: BTreeMap<String, DatabaseSettings>,
    /// The replica monitor.
    #[serde(default)]
    pub monitor: MonitorSettings,
    /// Read-your-writes across contexts.
    #[serde(default)]
    pub stickiness: StickinessSettings,
    /// The pin cookie and the signing key (the tower layer, consistency tokens).
    #[serde(default)]
    pub web: WebSettings,
    /// Reads that a replica fails: timeouts and retries.
    #[serde(default)]
    pub reads: ReadSettings,
    /// Functions that write although a `SELECT` calls them (pgpool-II's write function
    /// list): a statement that calls one runs on the master. Names match case-insensitively,
    /// with or without a schema.
    #[serde(default)]
    pub write_functions: Vec<String>,
    /// Relations (views) whose reads write or lock (a view over `nextval()` or `FOR UPDATE`):
    /// a statement that names one runs on the master.
    #[serde(default)]
    pub write_relations: Vec<String>,
    /// For test suites with one PostgreSQL: every set gets this many replicas that are its
    /// master opened with read-only sessions (`default_transaction_read_only = on`), instead
    /// of its configured ones. Reads really take the replica path, and a write that would
    /// reach a replica in production fails in the tests the same way. 0 (the default): off.
    /// `PINDB_EMULATE_REPLICAS` sets it.
    #[serde(default)]
    pub emulate_replicas: u32,
}

fn default_enabled() -> bool {
    true
}

impl Config {
    /// A config with one master `default` and the given replica URLs, with default settings.
    ///
    /// ```
    /// let config = pindb_core::Config::single_set(
    ///     "postgres://app@127.0.0.1:5432/app",
    ///     ["postgres://app@127.0.0.1:5433/app"],
    /// );
    /// assert_eq!(config.databases().unwrap().len(), 2);
    /// ```
    pub fn single_set<I, S>(master_url: impl Into<String>, replica_urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Config {
            enabled: true,
            router: RouterMode::default(),
            replica_policy: ReplicaPolicy::default(),
            unmanaged_default: false,
            masters: BTreeMap::from([(
                "default".to_owned(),
                DatabaseSettings::from_url(master_url),
            )]),
            sets: BTreeMap::from([(
                "default".to_owned(),
                replica_urls
                    .into_iter()
                    .map(DatabaseSettings::from_url)
                    .collect(),
            )]),
            unmanaged: BTreeMap::new(),
            monitor: MonitorSettings::default(),
            stickiness: StickinessSettings::default(),
            web: WebSettings::default(),
            reads: ReadSettings::default(),
            write_functions: Vec::new(),
            write_relations: Vec::new(),
            emulate_replicas: 0,
        }
    }

    /// Parses and validates a TOML document. Environment variables are not read.
    ///
    /// ```
    /// let err = pindb_core::Config::from_toml_str("routr = 'strict'").unwrap_err();
    /// assert!(err.to_string().contains("unknown field `routr`"));
    /// ```
    pub fn from_toml_str(toml_text: &str) -> Result<Self, PinDbError> {
        let config = parse(toml_text, "the TOML")?;
        config.validate()?;
        Ok(config)
    }

    /// Reads a TOML file, applies `PINDB_URL_<ALIAS>` environment overrides and validates.
    ///
    /// ```no_run
    /// let config = pindb_core::Config::load("pindb.toml")?;
    /// # Ok::<(), pindb_core::PinDbError>(())
    /// ```
    pub fn load(path: impl AsRef<std::path::Path>) -> Result<Self, PinDbError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            PinDbError::config_global(format!(
                "cannot read config file {}: {e}; check the path",
                path.display()
            ))
        })?;
        let mut config = parse(&text, &path.display().to_string())?;
        config.apply_env_overrides(std::env::vars())?;
        config.validate()?;
        Ok(config)
    }

    /// Checks everything [`Config::databases`] checks, plus the policy.
    pub fn validate(&self) -> Result<(), PinDbError> {
        if self
            .web
            .cookie_secret
            .iter()
            .chain(&self.web.cookie_old_secrets)
            .any(|s| s.len() < 32)
        {
            return Err(PinDbError::config(
                "web.cookie_secret",
                "the cookie secret must be at least 32 bytes; generate one with \
                 `openssl rand -base64 48` and set PINDB_COOKIE_SECRET",
            ));
        }
        const TEN_YEARS: u64 = 315_360_000;
        if self.web.pinning_seconds > TEN_YEARS || self.stickiness.ttl_seconds > TEN_YEARS {
            return Err(PinDbError::config(
                "pinning_seconds",
                "pinning_seconds and stickiness.ttl_seconds must be at most 315360000 (10 years)",
            ));
        }
        if self.reads.timeout_ms == 0 || self.reads.replica_connect_timeout_ms == 0 {
            return Err(PinDbError::config(
                "reads",
                "timeout_ms and replica_connect_timeout_ms must be at least 1",
            ));
        }
        if self.monitor.interval_ms == 0 || self.monitor.check_timeout_ms == 0 {
            return Err(PinDbError::config(
                "monitor",
                "interval_ms and check_timeout_ms must be at least 1",
            ));
        }
        let needed = self.min_ttl_ms();
        if self.stickiness.ttl_seconds.saturating_mul(1000) < needed {
            return Err(PinDbError::config(
                "stickiness",
                format!(
                    "ttl_seconds ({} s) must outlive the longest lag a replica in rotation can \
                     have: monitor.max_lag_ms ({} ms) plus the time to notice it and a second of \
                     rounding (two monitor.interval_ms, one monitor.check_timeout_ms, 1000 ms: \
                     {} ms). Otherwise a \
                     user's write position expires while a replica that has not replayed it is \
                     still read from. Raise ttl_seconds to at least {} or lower max_lag_ms",
                    self.stickiness.ttl_seconds,
                    self.monitor.max_lag_ms,
                    needed - self.monitor.max_lag_ms,
                    needed.div_ceil(1000),
                ),
            ));
        }
        self.databases().map(|_| ())
    }

    /// The shortest `stickiness.ttl_seconds` (in ms) without a stale window: a replica is
    /// read from until its measured lag exceeds `max_lag_ms`, and that lag is measured at most
    /// two intervals plus a check timeout late, so a write position must live at least that
    /// long, plus a second of rounding.
    pub fn min_ttl_ms(&self) -> u64 {
        let m = &self.monitor;
        m.lag_ceiling()
            .saturating_add(m.interval_ms.saturating_mul(2))
            .saturating_add(m.check_timeout_ms)
            // Positions live whole seconds (token issue times): one second of margin.
            .saturating_add(1_000)
    }

    /// The final alias map: see [`populate_replicas`]. Replicas whose settings (their own or
    /// their master's) give no `connect_timeout_ms` get `reads.replica_connect_timeout_ms`.
    pub fn databases(&self) -> Result<Vec<Database>, PinDbError> {
        let emulated;
        let sets = match self.emulate_replicas {
            0 => &self.sets,
            n => {
                // Replicas with no override at all: each is its master's database.
                // A set given as hosts keeps them: its standbys are real, and its primary is
                // found the same way in tests.
                emulated = self
                    .sets
                    .keys()
                    .filter(|set| !self.masters.get(*set).is_some_and(|m| m.is_multi_host()))
                    .map(|set| (set.clone(), vec![DatabaseSettings::default(); n as usize]))
                    .collect();
                &emulated
            }
        };
        // Emulated replicas stand for every replica: runtime ones have no slots then.
        let without_discovery;
        let masters = match self.emulate_replicas {
            0 => &self.masters,
            _ => {
                without_discovery = self
                    .masters
                    .iter()
                    .map(|(name, m)| {
                        let mut m = m.clone();
                        m.discovery = None;
                        (name.clone(), m)
                    })
                    .collect();
                &without_discovery
            }
        };
        let mut databases =
            populate_replicas(masters, sets, &self.unmanaged, self.unmanaged_default)?;
        for db in &mut databases {
            if self.emulate_replicas > 0 && db.backend != crate::backend::Backend::Postgres {
                return Err(PinDbError::config(
                    db.alias.clone(),
                    "emulate_replicas opens the master read-only with a PostgreSQL startup \
                     parameter; a MariaDB set has no such net yet: set emulate_replicas = 0",
                ));
            }
            if let crate::populate::Membership::Replica { set, .. } = &db.membership {
                // An emulated replica is its master: it would accept a write.
                db.read_only |= self.emulate_replicas > 0
                    && !self.masters.get(set).is_some_and(|m| m.is_multi_host());
            }
            if let crate::populate::Membership::Replica { set, index } = &db.membership {
                // A timeout the replica or its master sets is kept (replicas inherit).
                let own = sets[set]
                    .get(index - 1)
                    .and_then(|r| r.connect_timeout_ms)
                    .or_else(|| self.masters.get(set).and_then(|m| m.connect_timeout_ms));
                if own.is_none() {
                    db.pool.connect_timeout =
                        std::time::Duration::from_millis(self.reads.replica_connect_timeout_ms);
                }
            }
        }
        Ok(databases)
    }
}

#[cfg(test)]
mod tests;
