//! `populate_replicas`: from masters plus per-replica overrides to the final alias map.
//!
//! This module owns alias naming (`default`, `default-1`, ...), the merge of a replica's
//! overrides on top of its master's settings, and every structural config error. It does not
//! open connections and knows nothing about routing.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use percent_encoding::percent_decode_str;
use url::Url;

use crate::config::DatabaseSettings;
use crate::error::PinDbError;

/// Default TCP port when neither the URL nor the settings give one.
pub const DEFAULT_PORT: u16 = 5432;

/// Where a database sits in the topology.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Membership {
    /// The writable master of a set (its alias is the set's name).
    Master {
        /// The set name.
        set: String,
    },
    /// The `index`-th replica (1-based) of a set; its alias is `<set>-<index>`.
    Replica {
        /// The set name.
        set: String,
        /// 1-based position in the set's replica list.
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
}

impl Database {
    /// The set this database belongs to, if any.
    pub fn set(&self) -> Option<&str> {
        match &self.membership {
            Membership::Master { set } | Membership::Replica { set, .. } => Some(set),
            Membership::Unmanaged => None,
        }
    }

    /// The connection URL, password included (give it to the pool, never to a log).
    pub fn url(&self) -> String {
        self.render(true)
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
            .finish()
    }
}

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
    }

    fn finish(self, alias: String, membership: Membership) -> Result<Database, PinDbError> {
        let host = self.host.filter(|h| !h.is_empty()).ok_or_else(|| {
            PinDbError::config(
                alias.clone(),
                "no host: give a `url` (postgres://user@host:port/db) or a `host`",
            )
        })?;
        let defaults = PoolSettings::default();
        let max_size = self.max_size.unwrap_or(defaults.max_size);
        if max_size == 0 {
            return Err(PinDbError::config(
                alias,
                "max_size = 0 would make every checkout time out; use at least 1",
            ));
        }
        Ok(Database {
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

fn parse_url(alias: &str, text: &str) -> Result<Parts, PinDbError> {
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
        ..Parts::default()
    })
}

/// Builds the final alias map, as django-pindb's `populate_replicas` does.
///
/// For every master `M` with `n` replica overrides this yields `M`, `M-1`, ... `M-n`; each
/// replica's settings are the master's with the override merged on top. Unmanaged databases
/// follow. Sets come in name order, so the result is deterministic.
///
/// Errors ([`PinDbError::Config`], naming the alias and the fix): no masters; a master without
/// a `sets` entry (an empty list is fine); a `sets` entry without a master; no master named
/// `default` unless `unmanaged_default` is set and an unmanaged `default` exists; two databases
/// with the same alias; an unparsable URL; no host.
///
/// ```
/// use std::collections::BTreeMap;
/// use pindb_core::{populate_replicas, DatabaseSettings};
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
    for master in masters.keys() {
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
        let master = Parts::from_settings(set, master_settings)?;
        out.push(
            master
                .clone()
                .finish(set.clone(), Membership::Master { set: set.clone() })?,
        );
        for (i, overrides) in sets[set].iter().enumerate() {
            let index = i + 1;
            let alias = format!("{set}-{index}");
            claim(&alias, "a generated replica alias")?;
            let mut parts = master.clone();
            parts.overlay(Parts::from_settings(&alias, overrides)?);
            out.push(parts.finish(
                alias,
                Membership::Replica {
                    set: set.clone(),
                    index,
                },
            )?);
        }
    }
    for (alias, settings) in unmanaged {
        claim(alias, "an unmanaged database")?;
        out.push(
            Parts::from_settings(alias, settings)?.finish(alias.clone(), Membership::Unmanaged)?,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    fn err(toml: &str) -> (Option<String>, String) {
        match Config::from_toml_str(toml).unwrap_err() {
            PinDbError::Config { alias, problem } => (alias, problem),
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn no_masters() {
        let (alias, problem) = err("");
        assert_eq!(alias, None);
        assert!(
            problem.contains("no masters") && problem.contains("[masters.default]"),
            "{problem}"
        );
    }

    #[test]
    fn master_without_sets_entry() {
        let (alias, problem) = err("[masters.default]\nurl = 'postgres://h/d'");
        assert_eq!(alias.as_deref(), Some("default"));
        assert!(problem.contains("default = []"), "{problem}");
    }

    #[test]
    fn empty_sets_entry_means_zero_replicas() {
        let c = Config::from_toml_str(
            "[masters.default]\nurl = 'postgres://h/d'\n[sets]\ndefault = []",
        )
        .unwrap();
        assert_eq!(c.databases().unwrap().len(), 1);
    }

    #[test]
    fn sets_entry_without_master() {
        let (alias, problem) = err(
            "[masters.default]\nurl = 'postgres://h/d'\n[sets]\ndefault = []\nanalytics = [{}]",
        );
        assert_eq!(alias.as_deref(), Some("analytics"));
        assert!(problem.contains("[masters.analytics]"), "{problem}");
    }

    #[test]
    fn no_default_master() {
        let (alias, problem) = err("[masters.main]\nurl = 'postgres://h/d'\n[sets]\nmain = []");
        assert_eq!(alias.as_deref(), Some("default"));
        assert!(problem.contains("unmanaged_default"), "{problem}");
    }

    #[test]
    fn unmanaged_default_needs_an_unmanaged_default() {
        let (alias, problem) = err(
            "unmanaged_default = true\n[masters.main]\nurl = 'postgres://h/d'\n[sets]\nmain = []",
        );
        assert_eq!(alias.as_deref(), Some("default"));
        assert!(problem.contains("[unmanaged.default]"), "{problem}");
    }

    #[test]
    fn unmanaged_default_is_accepted() {
        let c = Config::from_toml_str(
            "unmanaged_default = true\n[masters.main]\nurl = 'postgres://h/d'\n[sets]\nmain = []\n\
             [unmanaged.default]\nurl = 'postgres://legacy/d'",
        )
        .unwrap();
        let dbs = c.databases().unwrap();
        assert_eq!(dbs[1].alias, "default");
        assert_eq!(dbs[1].membership, Membership::Unmanaged);
    }

    #[test]
    fn unmanaged_default_beside_a_default_master_collides() {
        let (alias, problem) = err(
            "[masters.default]\nurl = 'postgres://h/d'\n[sets]\ndefault = []\n\
             [unmanaged.default]\nurl = 'postgres://legacy/d'",
        );
        assert_eq!(alias.as_deref(), Some("default"));
        assert!(problem.contains("used twice"), "{problem}");
    }

    #[test]
    fn generated_replica_alias_collides_with_a_master() {
        let (alias, problem) = err(
            "[masters.default]\nurl = 'postgres://h/d'\n[masters.default-1]\nurl = 'postgres://h2/d'\n\
             [sets]\ndefault = [{ host = 'r' }]\n'default-1' = []",
        );
        assert_eq!(alias.as_deref(), Some("default-1"));
        assert!(problem.contains("used twice"), "{problem}");
    }

    #[test]
    fn unparsable_url_names_the_alias_and_hides_the_password() {
        let (alias, problem) = err(
            "[masters.default]\nurl = 'postgres://u:secret@h:notaport/d'\n[sets]\ndefault = []",
        );
        assert_eq!(alias.as_deref(), Some("default"));
        assert!(
            problem.contains("does not parse") && !problem.contains("secret"),
            "{problem}"
        );
    }

    #[test]
    fn wrong_scheme() {
        let (_, problem) = err("[masters.default]\nurl = 'mysql://h/d'\n[sets]\ndefault = []");
        assert!(problem.contains("postgres://"), "{problem}");
    }

    #[test]
    fn replica_url_error_names_the_replica_alias() {
        let (alias, _) = err(
            "[masters.default]\nurl = 'postgres://h/d'\n[sets]\ndefault = [{}, { url = 'nonsense' }]",
        );
        assert_eq!(alias.as_deref(), Some("default-2"));
    }

    #[test]
    fn missing_host() {
        let (alias, problem) = err("[masters.default]\ndbname = 'd'\n[sets]\ndefault = []");
        assert_eq!(alias.as_deref(), Some("default"));
        assert!(problem.contains("no host"), "{problem}");
    }

    #[test]
    fn zero_max_size() {
        let (_, problem) =
            err("[masters.default]\nurl = 'postgres://h/d'\nmax_size = 0\n[sets]\ndefault = []");
        assert!(problem.contains("max_size"), "{problem}");
    }

    #[test]
    fn aliases_are_named_and_ordered_deterministically() {
        let c = Config::from_toml_str(
            "[masters.default]\nurl = 'postgres://h/d'\n[masters.analytics]\nurl = 'postgres://a/d'\n\
             [sets]\ndefault = [{ host = 'r1' }, { host = 'r2' }]\nanalytics = [{ host = 'a1' }]\n\
             [unmanaged.legacy]\nurl = 'postgres://l/d'",
        )
        .unwrap();
        let names: Vec<_> = c
            .databases()
            .unwrap()
            .into_iter()
            .map(|d| d.alias)
            .collect();
        assert_eq!(
            names,
            [
                "analytics",
                "analytics-1",
                "default",
                "default-1",
                "default-2",
                "legacy"
            ]
        );
    }

    #[test]
    fn overrides_merge_on_top_of_the_master() {
        let c = Config::from_toml_str(
            "[masters.default]\nurl = 'postgres://app:p%40ss@m:5000/app?sslmode=disable&application_name=web'\n\
             max_size = 20\nconnect_timeout_ms = 1500\n\
             [sets]\ndefault = [\n\
               { host = 'r1', options = { application_name = 'web-ro' } },\n\
               { url = 'postgres://reader@r2:6000', max_size = 4 },\n\
             ]",
        )
        .unwrap();
        let dbs = c.databases().unwrap();
        let (m, r1, r2) = (&dbs[0], &dbs[1], &dbs[2]);
        assert_eq!(m.password.as_deref(), Some("p@ss"));
        assert_eq!(r1.host, "r1");
        assert_eq!(r1.port, 5000);
        assert_eq!(r1.user.as_deref(), Some("app"));
        assert_eq!(r1.password.as_deref(), Some("p@ss"));
        assert_eq!(r1.options["sslmode"], "disable");
        assert_eq!(r1.options["application_name"], "web-ro");
        assert_eq!(r1.pool.max_size, 20);
        assert_eq!(r1.pool.connect_timeout, Duration::from_millis(1500));
        assert_eq!((r2.host.as_str(), r2.port), ("r2", 6000));
        assert_eq!(r2.user.as_deref(), Some("reader"));
        assert_eq!(
            r2.dbname.as_deref(),
            Some("app"),
            "the database name is inherited"
        );
        assert_eq!(r2.pool.max_size, 4);
        assert_eq!(
            r1.url(),
            "postgres://app:p%40ss@r1:5000/app?application%5Fname=web%2Dro&sslmode=disable"
        );
        assert_eq!(
            r1.membership,
            Membership::Replica {
                set: "default".into(),
                index: 1
            }
        );
        assert_eq!(r1.set(), Some("default"));
    }

    #[test]
    fn rendered_url_round_trips_through_the_parser() {
        let c = Config::single_set(
            "postgres://a%20b:p%2Fw@h:1/d%20b?x=y%20z",
            Vec::<String>::new(),
        );
        let db = &c.databases().unwrap()[0];
        let again = parse_url("x", &db.url()).unwrap();
        assert_eq!(again.user.as_deref(), Some("a b"));
        assert_eq!(again.password.as_deref(), Some("p/w"));
        assert_eq!(again.dbname.as_deref(), Some("d b"));
        assert_eq!(again.options["x"], "y z");
    }
}
