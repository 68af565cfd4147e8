//! Replicas behind a load-balanced reader endpoint (a Kubernetes Service, HAProxy, a cloud
//! reader endpoint): one URL that reaches several standbys.
//!
//! Read-your-writes needs the position of the server a read lands on, and the monitor's
//! connection reaches one server while the pool's connections reach the others. So a replica
//! declares the servers behind its endpoint, each as the server names itself (PostgreSQL:
//! `servers = ["10.0.0.5:5432", ...]`, `inet_server_addr()`:`inet_server_port()`; MariaDB,
//! which cannot tell the address a client reached it at: `servers = ["2", ...]`, its
//! `server_id`), and each becomes a replica of its own: its own alias, health, position and
//! pool. Every connection of that pool (and of pindb's own probes) is opened through the
//! endpoint and kept only if it reached that server (one query per new connection, none per
//! statement); connections that reached another are closed and the next one tried. Positions
//! thus hold per server, as if each standby were configured directly, and nothing on the hot
//! path changes.
//!
//! Not behind a transaction-mode pooler: it may move a client to another server between
//! statements, which no check at connect time can see.

use crate::backend::Backend;
use crate::populate::{normal_address, Database};

mod search;

pub use search::ServerSearch;

/// The SQL expression of the address a server sees itself at, as `host:port` (IPv6 in
/// brackets): what `servers` entries are compared with.
macro_rules! server_address {
    () => {
        "CASE WHEN family(inet_server_addr()) = 6 \
         THEN '[' || host(inet_server_addr()) || ']' \
         ELSE coalesce(host(inet_server_addr()), 'a local socket') END \
         || ':' || coalesce(inet_server_port()::text, '-')"
    };
}
pub(crate) use server_address;

/// The address a server sees itself at ([`Database::reaches`] takes it): one row, one text
/// column.
pub const SERVER_ADDRESS_SQL: &str = concat!("SELECT ", server_address!(), " AS address");

/// What a MariaDB server behind an endpoint is asked: its `@@server_id` (unique among the
/// servers of a replication topology; MariaDB cannot tell the address a client reached it at).
pub const MARIADB_SERVER_SQL: &str = "SELECT CAST(@@server_id AS CHAR) AS address";

/// Connections opened through an endpoint to reach one server before giving up: with `n`
/// servers picked at random, all miss with odds of ((n-1)/n)^64: 1 in 10^19 for 2, 1 in 10^8
/// for 4, 1 in 5,000 for 8, 1 in 60 for 16. Each try is a connection set-up, within the
/// pool's `connect_timeout_ms` (pindb's own: `check_timeout_ms`).
pub const SERVER_TRIES: usize = 64;

/// Attempts that may fail (no answer, a broken connection) before a search gives up: a server
/// down behind the endpoint costs a miss, but a failure every server gives is not repeated
/// [`SERVER_TRIES`] times. An async search ([`ServerSearch::find`]) may see one more, the
/// attempt in flight when the fourth fails.
pub const FAILED_TRIES: usize = 4;

/// Why an attempt through a reader endpoint failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failed {
    /// No answer in time, or the connection broke: the server it landed on may be down or
    /// hang while another behind the endpoint serves. A miss (at most [`FAILED_TRIES`], and
    /// one in flight).
    Unreachable(String),
    /// A server answered with a refusal (a login refused, no such database): the servers
    /// behind one endpoint share their users, so the search ends at once rather than repeat
    /// a failed login.
    Refused(String),
}

impl Failed {
    /// A failed connection attempt by its error's text, for drivers that keep no error code
    /// for it (diesel's): a login or a database the server refused is [`Failed::Refused`]
    /// (every server behind the endpoint would say so), anything else (no answer, a broken
    /// connection, too many clients, a server starting up) [`Failed::Unreachable`]. English
    /// server messages, PostgreSQL's and MariaDB's; an unknown one is a miss, as before.
    ///
    /// ```
    /// use pindb_core::adapter::Failed;
    ///
    /// let role = r#"role "app" does not exist"#;
    /// assert!(matches!(Failed::from_message(role.into()), Failed::Refused(_)));
    /// let denied = "Access denied for user 'app'@'10.0.0.9' (using password: YES)";
    /// assert!(matches!(Failed::from_message(denied.into()), Failed::Refused(_)));
    /// let full = "sorry, too many clients already";
    /// assert!(matches!(Failed::from_message(full.into()), Failed::Unreachable(_)));
    /// ```
    pub fn from_message(message: String) -> Failed {
        // Found anywhere: libpq puts its own words before the server's ("connection to
        // server at ... failed: FATAL:  ..."), and no statement's text is in a login's error.
        const REFUSED: [&str; 7] = [
            "password authentication failed",
            "no pg_hba.conf entry",
            "pg_hba.conf rejects connection",
            "is not permitted to log in",
            "permission denied for database",
            "Access denied for user",
            "Unknown database",
        ];
        // PostgreSQL's 28000 and 3D000: `role "app" does not exist`, `database "app" ...`.
        let missing = message.contains(" does not exist")
            && (message.contains("role \"") || message.contains("database \""));
        match missing || REFUSED.iter().any(|r| message.contains(r)) {
            true => Failed::Refused(message),
            false => Failed::Unreachable(message),
        }
    }
}

impl Database {
    /// What a new connection through this database's endpoint is asked, one row with one text
    /// column: where it landed, as the server names itself ([`SERVER_ADDRESS_SQL`] on
    /// PostgreSQL, [`MARIADB_SERVER_SQL`] on MariaDB).
    pub fn server_question(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => SERVER_ADDRESS_SQL,
            Backend::MariaDb => MARIADB_SERVER_SQL,
        }
    }

    /// Whether a connection that answered `address` to [`Database::server_question`] may
    /// serve this database: always, unless it is a server behind an endpoint and `address` is
    /// another.
    pub fn reaches(&self, address: &str) -> bool {
        match (&self.server, self.backend) {
            (None, _) => true,
            (Some(server), Backend::Postgres) => same_address(server, address),
            (Some(server), Backend::MariaDb) => server == address.trim(),
        }
    }

    /// How `servers` names a server, for messages.
    fn named_by(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => "as it sees itself, inet_server_addr():inet_server_port()",
            Backend::MariaDb => "by its @@server_id",
        }
    }

    /// A server as an answer to [`Database::server_question`] names it, for messages.
    fn server_named(&self, answer: &str) -> String {
        match self.backend {
            Backend::Postgres => answer.to_owned(),
            Backend::MariaDb => format!("server_id {answer}"),
        }
    }

    /// Why no connection could be kept: [`SERVER_TRIES`] connections through the endpoint
    /// reached only `seen`, or `failed` (their errors).
    pub fn server_missed(&self, seen: &[String], failed: &[String]) -> String {
        let tries = seen.len() + failed.len();
        let mut reached: Vec<String> = seen.iter().map(|s| self.server_named(s)).collect();
        reached.sort();
        reached.dedup();
        if let (true, Some(last)) = (reached.is_empty(), failed.last()) {
            return format!(
                "{tries} connections through the reader endpoint {} failed, the last: {last}",
                self.redacted_url(),
            );
        }
        let reached = reached.join(", ");
        let failed = match failed.last() {
            None => String::new(),
            Some(last) => format!(" ({} failed, the last: {last})", failed.len()),
        };
        format!(
            "{tries} connections through the reader endpoint {} reached {reached}{failed}, \
             never {}: is that server still behind it? (`servers` lists each {})",
            self.redacted_url(),
            self.server_named(self.server.as_deref().unwrap_or("-")),
            self.named_by(),
        )
    }

    /// Why a connection that reached `address` is not kept (another is opened).
    pub fn wrong_server(&self, address: &str) -> String {
        format!(
            "`{}` is {} behind the reader endpoint {}; this connection reached {}: closed, \
             another is opened",
            self.alias,
            self.server_named(self.server.as_deref().unwrap_or("-")),
            self.redacted_url(),
            self.server_named(address),
        )
    }
}

fn same_address(server: &str, address: &str) -> bool {
    normal_address(address).is_some_and(|a| a == server)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DatabaseSettings;

    fn replica(servers: &[&str]) -> DatabaseSettings {
        DatabaseSettings {
            url: Some("postgres://app@reader:5432/app".into()),
            servers: servers.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn each_server_behind_an_endpoint_is_a_replica_of_its_own() {
        use std::collections::BTreeMap;
        let masters = BTreeMap::from([(
            "default".to_string(),
            DatabaseSettings::from_url("postgres://app@db0/app"),
        )]);
        let sets = BTreeMap::from([(
            "default".to_string(),
            vec![
                replica(&["10.0.0.5:5432", "10.0.0.6"]),
                DatabaseSettings::from_url("postgres://app@db3/app"),
            ],
        )]);
        let dbs = crate::adapter::populate_replicas(&masters, &sets, &BTreeMap::new(), false)
            .expect("valid");
        let replicas: Vec<(&str, &str, Option<&str>)> = dbs[1..]
            .iter()
            .map(|d| (d.alias.as_str(), d.host.as_str(), d.server.as_deref()))
            .collect();
        assert_eq!(
            replicas,
            [
                ("default-1.1", "reader", Some("10.0.0.5:5432")),
                ("default-1.2", "reader", Some("10.0.0.6:5432")),
                ("default-2", "db3", None),
            ]
        );
        assert!(dbs[1].reaches("10.0.0.5:5432"));
        assert!(!dbs[1].reaches("10.0.0.6:5432"));
        assert!(!dbs[1].reaches("a local socket:-"));
        assert!(dbs[3].reaches("anything:1"));
        let missed = dbs[1].server_missed(&["10.0.0.6:5432".into()], &[]);
        assert!(missed.contains("never 10.0.0.5:5432"), "{missed}");
    }

    #[test]
    fn mariadb_servers_are_named_by_server_id() {
        use std::collections::BTreeMap;
        let masters = BTreeMap::from([(
            "default".to_string(),
            DatabaseSettings::from_url("mysql://app@db0/app"),
        )]);
        let endpoint = |servers: &[&str]| DatabaseSettings {
            url: Some("mysql://app@reader:3306/app".into()),
            servers: servers.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let sets = BTreeMap::from([("default".to_string(), vec![endpoint(&["2", " 3 "])])]);
        let dbs = crate::adapter::populate_replicas(&masters, &sets, &BTreeMap::new(), false)
            .expect("valid");
        let servers: Vec<(&str, Option<&str>)> = dbs[1..]
            .iter()
            .map(|d| (d.alias.as_str(), d.server.as_deref()))
            .collect();
        assert_eq!(
            servers,
            [("default-1.1", Some("2")), ("default-1.2", Some("3"))]
        );
        assert_eq!(dbs[1].server_question(), MARIADB_SERVER_SQL);
        assert!(dbs[1].reaches("2") && !dbs[1].reaches("3") && !dbs[1].reaches(""));
        let missed = dbs[1].server_missed(&["3".into()], &["connection closed".into()]);
        assert!(
            missed.contains("1 failed, the last: connection closed"),
            "{missed}"
        );
        assert!(missed.contains("never server_id 2"), "{missed}");
        assert!(missed.contains("reached server_id 3"), "{missed}");
        for bad in ["10.0.0.5:3306", "replica-1", "-1", "0", "2", "server_id=2"] {
            let servers: &[&str] = match bad {
                "2" => &["2", "02"], // the same server twice
                other => &[other],
            };
            let sets = BTreeMap::from([("default".to_string(), vec![endpoint(servers)])]);
            let e = crate::adapter::populate_replicas(&masters, &sets, &BTreeMap::new(), false)
                .expect_err("refused");
            let text = e.to_string();
            match bad {
                "2" => assert!(text.contains("twice"), "{text}"),
                _ => assert!(text.contains("@@server_id"), "{bad}: {text}"),
            }
        }
    }

    #[test]
    fn ipv6_addresses_compare_as_addresses() {
        let mut db = crate::Config::single_set("postgres://app@reader/app", Vec::<String>::new())
            .databases()
            .unwrap()
            .remove(0);
        db.server = normal_address("[2001:DB8:0::1]:5433");
        assert!(db.reaches("[2001:db8::1]:5433"));
        assert!(!db.reaches("[2001:db8::1]:5432"));
    }

    #[test]
    fn servers_are_refused_where_they_mean_nothing() {
        use std::collections::BTreeMap;
        let sets = BTreeMap::from([("default".to_string(), vec![])]);
        let masters = BTreeMap::from([("default".to_string(), replica(&["10.0.0.5:5432"]))]);
        let e = crate::adapter::populate_replicas(&masters, &sets, &BTreeMap::new(), false)
            .expect_err("a master is one server");
        assert!(e.to_string().contains("give it to a replica"), "{e}");
        let masters = BTreeMap::from([(
            "default".to_string(),
            DatabaseSettings::from_url("postgres://app@db0/app"),
        )]);
        let sets = BTreeMap::from([(
            "default".to_string(),
            vec![replica(&["10.0.0.5:5432", "10.0.0.5"])],
        )]);
        let e = crate::adapter::populate_replicas(&masters, &sets, &BTreeMap::new(), false)
            .expect_err("listed twice");
        assert!(e.to_string().contains("twice"), "{e}");
        for bad in ["10.0.0.5/24", "replica-1.internal:5432", "localhost"] {
            let sets = BTreeMap::from([("default".to_string(), vec![replica(&[bad])])]);
            let e = crate::adapter::populate_replicas(&masters, &sets, &BTreeMap::new(), false)
                .expect_err("not an address");
            assert!(e.to_string().contains("inet_server_addr"), "{bad}: {e}");
        }
    }
}
