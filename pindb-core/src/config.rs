//! Configuration: what the user writes (TOML or code), and environment overrides for URLs.
//!
//! This module owns parsing and the shape of the settings. Turning them into the final alias map
//! is [`populate_replicas`](crate::populate_replicas)'s job; routing is the router's. Loading
//! always validates, so a `Config` that exists can be turned into a router.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::error::PinDbError;
use crate::populate::{populate_replicas, Database};

/// How writes to a set that is not pinned are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RouterMode {
    /// The first write to a set pins it for the rest of the context and goes to the master.
    /// Ordinary ORM code keeps working unchanged, so this is the default.
    #[default]
    Greedy,
    /// A write to a set that is not pinned (and not under a `master()` guard) is an
    /// [`PinDbError::UnpinnedWrite`] error, raised before any I/O.
    Strict,
}

/// How a context picks among a set's replicas (once per context and set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplicaPolicy {
    /// Each new context takes the next replica in turn.
    #[default]
    RoundRobin,
    /// Each new context takes a replica at random.
    Random,
    /// The replica with the least lag, as the replica monitor last saw it.
    LeastLag,
}

/// What to do when the start-up topology check finds a misconfigured database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TopologyCheck {
    /// Refuse to start (a `PinDbError::Config` naming the alias).
    #[default]
    Error,
    /// Log a warning and go on.
    Warn,
    /// Do not check.
    Off,
}

/// The replica monitor's settings (`[monitor]`).
///
/// ```
/// let m: pindb_core::config::MonitorSettings = toml::from_str("max_lag_ms = 5000").unwrap();
/// assert_eq!(m.max_lag_ms, 5000);
/// assert_eq!(m.interval_ms, 250);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorSettings {
    /// How often each replica and master is polled.
    pub interval_ms: u64,
    /// A health query (and a connection attempt) that takes longer fails.
    pub check_timeout_ms: u64,
    /// Consecutive failed checks before a replica is marked down.
    pub failures_before_down: u32,
    /// A replica further behind than this many bytes of WAL is not read from.
    pub max_lag_bytes: u64,
    /// A replica that has not replayed WAL the master has had for this long is not read from.
    /// Must stay below `stickiness.ttl_seconds` minus the detection time (see
    /// [`Config::validate`]).
    pub max_lag_ms: u64,
    /// The start-up topology check.
    pub topology_check: TopologyCheck,
}

impl Default for MonitorSettings {
    fn default() -> Self {
        MonitorSettings {
            interval_ms: 250,
            check_timeout_ms: 500,
            failures_before_down: 2,
            max_lag_bytes: 16 * 1024 * 1024,
            max_lag_ms: 10_000,
            topology_check: TopologyCheck::Error,
        }
    }
}

/// Read-your-writes across contexts (`[stickiness]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StickinessSettings {
    /// How long a recorded write position is kept for a key.
    pub ttl_seconds: u64,
    /// At a keyed context's start, how long to wait for a replica to catch up with the key's
    /// last write before reading that set from the master (0: do not wait).
    pub max_wait_ms: u64,
    /// Keys the in-memory store keeps at most (the oldest are dropped first).
    pub memory_capacity: usize,
    /// Prefix of the Redis keys.
    pub redis_prefix: String,
    /// Timeout of each Redis command and connection attempt.
    pub redis_timeout_ms: u64,
}

impl Default for StickinessSettings {
    fn default() -> Self {
        StickinessSettings {
            ttl_seconds: 30,
            max_wait_ms: 0,
            memory_capacity: 100_000,
            redis_prefix: "pindb:lsn:".to_owned(),
            redis_timeout_ms: 100,
        }
    }
}

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
}

impl DatabaseSettings {
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
    /// How long a set pinned in a request stays pinned for the same client (cookie pinning).
    #[serde(default = "default_pinning_seconds")]
    pub pinning_seconds: u64,
    /// Name of the pin cookie.
    #[serde(default = "default_cookie_name")]
    pub cookie_name: String,
    /// Secret that signs the pin cookie and consistency tokens (at least 32 bytes, the same on
    /// every instance; set it from the environment with `PINDB_COOKIE_SECRET`). The tower
    /// layer refuses to start without one unless `ephemeral_cookie_key` is set.
    #[serde(default)]
    pub cookie_secret: Option<String>,
    /// Earlier secrets, still accepted for the cookies and tokens they signed, never used to
    /// sign: rotate by moving the current secret here and setting a new `cookie_secret`; drop
    /// it after `pinning_seconds` / `stickiness.ttl_seconds`.
    #[serde(default)]
    pub cookie_old_secrets: Vec<String>,
    /// Without `cookie_secret`, sign with a random per-process key. Only for single-process
    /// demos and tests: every restart and every other instance ignores the pins users carry,
    /// so a user who just wrote could read stale.
    #[serde(default)]
    pub ephemeral_cookie_key: bool,
    /// Mark the pin cookie `Secure` (HTTPS only).
    #[serde(default)]
    pub cookie_secure: bool,
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
}

fn default_enabled() -> bool {
    true
}
fn default_pinning_seconds() -> u64 {
    15
}
fn default_cookie_name() -> String {
    "pindb_pinned_set".to_owned()
}

/// Prefix of the environment variables that override a database URL:
/// `PINDB_URL_DEFAULT`, `PINDB_URL_DEFAULT_1`, `PINDB_URL_ANALYTICS`...
pub const ENV_URL_PREFIX: &str = "PINDB_URL_";

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
            pinning_seconds: default_pinning_seconds(),
            cookie_name: default_cookie_name(),
            cookie_secret: None,
            cookie_old_secrets: Vec::new(),
            ephemeral_cookie_key: false,
            cookie_secure: false,
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
        }
    }

    /// Parses and validates a TOML document. Environment variables are not read.
    ///
    /// ```
    /// let err = pindb_core::Config::from_toml_str("routr = 'strict'").unwrap_err();
    /// assert!(err.to_string().contains("unknown field `routr`"));
    /// ```
    pub fn from_toml_str(toml_text: &str) -> Result<Self, PinDbError> {
        let config: Config = toml::from_str(toml_text).map_err(|e| {
            PinDbError::config_global(format!(
                "the TOML does not parse: {}",
                e.to_string().trim_end()
            ))
        })?;
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
        let mut config: Config = toml::from_str(&text).map_err(|e| {
            PinDbError::config_global(format!(
                "{} does not parse: {}",
                path.display(),
                e.to_string().trim_end()
            ))
        })?;
        config.apply_env_overrides(std::env::vars())?;
        config.validate()?;
        Ok(config)
    }

    /// Replaces database URLs from `PINDB_URL_<ALIAS>` variables, so secrets stay out of files.
    ///
    /// The alias is upper-cased with every non-alphanumeric character turned into `_`
    /// (`default-1` -> `PINDB_URL_DEFAULT_1`). The variable replaces the whole connection target
    /// (URL, host, port, user, password, dbname); options and pool settings are kept. A master's
    /// URL is replaced before replicas inherit from it. A variable that names no alias is an error.
    ///
    /// ```
    /// let mut config = pindb_core::Config::single_set("postgres://app@db1/app", ["postgres://app@db2/app"]);
    /// config.apply_env_overrides([(
    ///     "PINDB_URL_DEFAULT".to_owned(),
    ///     "postgres://app:s3cret@db1/app".to_owned(),
    /// )])?;
    /// assert_eq!(config.databases()?[0].password.as_deref(), Some("s3cret"));
    /// # Ok::<(), pindb_core::PinDbError>(())
    /// ```
    pub fn apply_env_overrides<I>(&mut self, vars: I) -> Result<(), PinDbError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        for (key, value) in vars {
            if key == "PINDB_COOKIE_SECRET" {
                self.cookie_secret = Some(value);
                continue;
            }
            if key == "PINDB_COOKIE_OLD_SECRETS" {
                // Comma-separated: secrets are base64 or hex in practice, never commas.
                self.cookie_old_secrets = value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect();
                continue;
            }
            let Some(suffix) = key.strip_prefix(ENV_URL_PREFIX) else {
                continue;
            };
            let known = self.env_names();
            let target = self.settings_for_env_suffix(suffix).ok_or_else(|| {
                PinDbError::config(
                    key.clone(),
                    format!(
                        "environment variable {key} names no configured database; \
                         expected one of: {}",
                        known.join(", ")
                    ),
                )
            })?;
            *target = DatabaseSettings {
                url: Some(value),
                host: None,
                port: None,
                user: None,
                password: None,
                dbname: None,
                ..std::mem::take(target)
            };
        }
        Ok(())
    }

    fn env_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for name in self.masters.keys().chain(self.unmanaged.keys()) {
            names.push(format!("{ENV_URL_PREFIX}{}", env_key(name)));
        }
        for (set, replicas) in &self.sets {
            for i in 1..=replicas.len() {
                names.push(format!(
                    "{ENV_URL_PREFIX}{}",
                    env_key(&format!("{set}-{i}"))
                ));
            }
        }
        names
    }

    fn settings_for_env_suffix(&mut self, suffix: &str) -> Option<&mut DatabaseSettings> {
        if let Some((_, s)) = self.masters.iter_mut().find(|(n, _)| env_key(n) == suffix) {
            return Some(s);
        }
        if let Some((_, s)) = self
            .unmanaged
            .iter_mut()
            .find(|(n, _)| env_key(n) == suffix)
        {
            return Some(s);
        }
        for (set, replicas) in self.sets.iter_mut() {
            for (i, s) in replicas.iter_mut().enumerate() {
                if env_key(&format!("{set}-{}", i + 1)) == suffix {
                    return Some(s);
                }
            }
        }
        None
    }

    /// Checks everything [`Config::databases`] checks, plus the policy.
    pub fn validate(&self) -> Result<(), PinDbError> {
        if self
            .cookie_secret
            .iter()
            .chain(&self.cookie_old_secrets)
            .any(|s| s.len() < 32)
        {
            return Err(PinDbError::config(
                "cookie_secret",
                "the cookie secret must be at least 32 bytes; generate one with \
                 `openssl rand -base64 48` and set PINDB_COOKIE_SECRET",
            ));
        }
        const TEN_YEARS: u64 = 315_360_000;
        if self.pinning_seconds > TEN_YEARS || self.stickiness.ttl_seconds > TEN_YEARS {
            return Err(PinDbError::config(
                "pinning_seconds",
                "pinning_seconds and stickiness.ttl_seconds must be at most 315360000 (10 years)",
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
        m.max_lag_ms
            .saturating_add(m.interval_ms.saturating_mul(2))
            .saturating_add(m.check_timeout_ms)
            // Positions live whole seconds (token issue times): one second of margin.
            .saturating_add(1_000)
    }

    /// The final alias map: see [`populate_replicas`].
    pub fn databases(&self) -> Result<Vec<Database>, PinDbError> {
        populate_replicas(
            &self.masters,
            &self.sets,
            &self.unmanaged,
            self.unmanaged_default,
        )
    }

    /// `pinning_seconds` as a `Duration`.
    pub fn pinning_duration(&self) -> Duration {
        Duration::from_secs(self.pinning_seconds)
    }
}

/// `default-1` -> `DEFAULT_1`.
fn env_key(alias: &str) -> String {
    alias
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_django_pindb() {
        let c = Config::from_toml_str(
            "[masters.default]\nurl = 'postgres://h/d'\n[sets]\ndefault = []",
        )
        .unwrap();
        assert!(c.enabled);
        assert_eq!(c.router, RouterMode::Greedy);
        assert_eq!(c.replica_policy, ReplicaPolicy::RoundRobin);
        assert_eq!(c.pinning_seconds, 15);
        assert_eq!(c.cookie_name, "pindb_pinned_set");
    }

    #[test]
    fn toml_errors_are_config_errors_naming_the_field() {
        let e = Config::from_toml_str("[masters.default]\nport = 'x'").unwrap_err();
        assert!(matches!(e, PinDbError::Config { .. }), "{e}");
        assert!(e.to_string().contains("port"), "{e}");
    }

    #[test]
    fn monitor_and_stickiness_sections() {
        let c = Config::from_toml_str(
            "replica_policy = 'least-lag'\n[masters.default]\nurl = 'postgres://h/d'\n[sets]\ndefault = []\n\
             [monitor]\nmax_lag_bytes = 1024\ntopology_check = 'warn'\n[stickiness]\nmax_wait_ms = 50",
        )
        .unwrap();
        assert_eq!(c.replica_policy, ReplicaPolicy::LeastLag);
        assert_eq!(c.monitor.max_lag_bytes, 1024);
        assert_eq!(c.monitor.topology_check, TopologyCheck::Warn);
        assert_eq!(c.stickiness.max_wait_ms, 50);
        assert_eq!(c.stickiness.ttl_seconds, 30);
        let e = Config::from_toml_str(
            "[masters.default]\nurl = 'postgres://h/d'\n[sets]\ndefault = []\n[monitor]\ninterval_ms = 0",
        )
        .unwrap_err();
        assert!(e.to_string().contains("interval_ms"), "{e}");
    }

    #[test]
    fn env_override_replaces_master_target_and_replicas_inherit() {
        let mut c = Config::from_toml_str(
            "[masters.default]\nhost = 'file-host'\nuser = 'app'\ndbname = 'app'\nmax_size = 3\n\
             [sets]\ndefault = [{ host = 'replica-host' }]",
        )
        .unwrap();
        c.apply_env_overrides([
            ("PATH".to_owned(), "/bin".to_owned()),
            (
                "PINDB_URL_DEFAULT".to_owned(),
                "postgres://app:pw@env-host:6000/app".to_owned(),
            ),
        ])
        .unwrap();
        let dbs = c.databases().unwrap();
        assert_eq!(dbs[0].host, "env-host");
        assert_eq!(dbs[0].port, 6000);
        assert_eq!(dbs[0].pool.max_size, 3);
        assert_eq!(dbs[1].host, "replica-host");
        assert_eq!(dbs[1].password.as_deref(), Some("pw"));
        assert_eq!(dbs[1].port, 6000);
    }

    #[test]
    fn absurd_durations_are_refused() {
        let e = Config::from_toml_str(
            "pinning_seconds = 18446744073709551615\n[masters.default]\nurl = 'postgres://h/d'\n[sets]\ndefault = []",
        )
        .unwrap_err();
        assert!(e.to_string().contains("10 years"), "{e}");
    }

    #[test]
    fn env_override_of_a_replica() {
        let mut c = Config::single_set("postgres://app@m/app", ["postgres://app@r1/app"]);
        c.apply_env_overrides([(
            "PINDB_URL_DEFAULT_1".to_owned(),
            "postgres://app@r9:7/app".to_owned(),
        )])
        .unwrap();
        let dbs = c.databases().unwrap();
        assert_eq!((dbs[1].host.as_str(), dbs[1].port), ("r9", 7));
    }

    #[test]
    fn env_override_for_unknown_alias_is_an_error() {
        let mut c = Config::single_set("postgres://app@m/app", ["postgres://app@r1/app"]);
        let e = c
            .apply_env_overrides([("PINDB_URL_NOPE".to_owned(), "postgres://x/y".to_owned())])
            .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("PINDB_URL_NOPE") && msg.contains("PINDB_URL_DEFAULT_1"),
            "{msg}"
        );
    }

    #[test]
    fn a_position_must_outlive_the_lag_a_replica_in_rotation_can_have() {
        let mut c = Config::single_set("postgres://app@m/app", ["postgres://app@r1/app"]);
        assert!(c.validate().is_ok(), "the defaults are consistent");
        // The old defaults: a replica 30 s behind stayed in rotation while 30 s positions
        // expired.
        c.monitor.max_lag_ms = 30_000;
        c.stickiness.ttl_seconds = 30;
        let msg = c.validate().unwrap_err().to_string();
        assert!(
            msg.contains("ttl_seconds (30 s)") && msg.contains("at least 32"),
            "{msg}"
        );
        c.stickiness.ttl_seconds = 32;
        assert!(c.validate().is_ok());
        assert_eq!(c.min_ttl_ms(), 32_000);
    }
}
