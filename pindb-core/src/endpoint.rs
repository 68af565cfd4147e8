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

/// Attempts of one async search unanswered at once ([`ServerSearch::find`]): enough to step
/// past a server that hangs, few enough not to flood the endpoint or its servers.
const ATTEMPTS_IN_FLIGHT: usize = 2;

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

/// An adapter's search for a connection to a server behind an endpoint: open one with the
/// database's URL, ask it [`Database::server_question`], and give the answer to
/// [`ServerSearch::keep`], one connection at a time (a blocking adapter), or let
/// [`ServerSearch::find`] overlap them (an async one). Its clock is tokio's (the standard
/// clock outside a runtime), as the async search's timeouts are.
///
/// ```
/// # let db = pindb_core::Config::single_set("postgres://app@reader/app", Vec::<String>::new()).databases().unwrap().remove(0);
/// let mut search = pindb_core::adapter::ServerSearch::within(&db, std::time::Duration::from_secs(5));
/// assert_eq!(search.keep("10.0.0.6:5432".into()), Ok(true)); // no `servers`: any will do
/// ```
#[derive(Debug)]
pub struct ServerSearch<'a> {
    db: &'a Database,
    seen: Vec<String>,
    failed: Vec<String>,
    until: tokio::time::Instant,
    attempt: std::time::Duration,
}

impl<'a> ServerSearch<'a> {
    /// A search for `db`'s server under the caller's timeout `limit`: it ends at 80 % of it,
    /// so that what it reached is reported rather than a bare timeout.
    pub fn within(db: &'a Database, limit: std::time::Duration) -> Self {
        ServerSearch {
            db,
            seen: Vec::new(),
            failed: Vec::new(),
            until: tokio::time::Instant::now() + limit.mul_f64(0.8),
            attempt: limit / 4,
        }
    }

    /// How long one attempt (a connection and its question) may take (a quarter of the
    /// limit): an attempt that lands on a server that hangs is given up after this, and
    /// another may land elsewhere ([`ServerSearch::find`] starts one beside it sooner).
    pub fn attempt_limit(&self) -> std::time::Duration {
        let left = self
            .until
            .saturating_duration_since(tokio::time::Instant::now());
        self.attempt
            .min(left)
            .max(std::time::Duration::from_millis(1))
    }

    /// Whether the connection that reached `address` is kept (`Ok(true)`), closed for another
    /// (`Ok(false)`), or the search is over (`Err`: what to report, after [`SERVER_TRIES`]
    /// or at the deadline).
    pub fn keep(&mut self, address: String) -> Result<bool, String> {
        if self.db.reaches(&address) {
            return Ok(true);
        }
        self.seen.push(address);
        self.go_on().map(|()| false)
    }

    /// An attempt that failed: one that did not connect or answer within [`attempt_limit`]
    /// is a miss, not the end (another server behind the endpoint may be down while this one
    /// is up), up to [`FAILED_TRIES`]; a server's refusal ends the search. `Ok` to try again;
    /// `Err` when the search is over (what to report).
    ///
    /// [`attempt_limit`]: ServerSearch::attempt_limit
    pub fn failed(&mut self, failed: Failed) -> Result<(), String> {
        let refused = matches!(failed, Failed::Refused(_));
        self.failed.push(match failed {
            Failed::Unreachable(e) | Failed::Refused(e) => e,
        });
        match refused || self.failed.len() >= FAILED_TRIES {
            true => Err(self.db.server_missed(&self.seen, &self.failed)),
            false => self.go_on(),
        }
    }

    /// The whole search for an async adapter: `attempt` opens a connection and asks it where
    /// it landed, within [`attempt_limit`]; a connection that reached another server goes to
    /// `close`; the first that reached this one is the answer, else what the search met.
    ///
    /// Attempts overlap, two at most: one unanswered after a quarter to three quarters of its
    /// limit (at random) gets another beside it, and a miss starts the next at once. So a
    /// server that hangs behind the endpoint costs half an attempt limit on average, not a
    /// whole one, and the other clients of a round-robin balancer are much less likely to
    /// keep the search in step with it (its every attempt landing there): its rhythm is
    /// neither the timeouts' nor fixed. An attempt still unanswered when another reaches the
    /// server, or when the search is dropped, is dropped with its connection (on MariaDB an
    /// aborted connect in the server's counters). With overlap, a search may see up to five
    /// failures (four and the one in flight) where a sequential one sees [`FAILED_TRIES`].
    ///
    /// [`attempt_limit`]: ServerSearch::attempt_limit
    pub async fn find<C, A, F>(
        mut self,
        mut attempt: A,
        mut close: impl FnMut(C),
    ) -> Result<C, String>
    where
        A: FnMut() -> F,
        F: std::future::Future<Output = Result<(C, String), Failed>>,
    {
        use futures_util::stream::{FuturesUnordered, StreamExt};
        let mut flying = FuturesUnordered::new();
        let mut hedge = std::pin::pin!(tokio::time::sleep(std::time::Duration::ZERO));
        // Once no attempt may start, none does; those in flight may still reach the server.
        let mut over = false;
        loop {
            // Start one: at first, after a miss, or when the hedge is due.
            if !over && flying.len() < ATTEMPTS_IN_FLIGHT {
                match self.room(flying.len()) {
                    Ok(()) => {
                        let within = self.attempt_limit();
                        let next = tokio::time::timeout(within, attempt());
                        flying.push(async move { (within, next.await) });
                        let hedged = self.attempt.mul_f64(0.25 + fastrand::f64() / 2.0);
                        let due = tokio::time::Instant::now() + hedged;
                        hedge.as_mut().reset(due);
                    }
                    Err(_) => over = true,
                }
            }
            let Some((within, done)) = (tokio::select! {
                done = flying.next(), if !flying.is_empty() => done,
                () = &mut hedge, if !over && flying.len() < ATTEMPTS_IN_FLIGHT => continue,
                // Nothing in flight and nothing may start.
                else => None,
            }) else {
                return Err(self.db.server_missed(&self.seen, &self.failed));
            };
            let went = match done {
                Ok(Ok((conn, reached))) => match self.keep(reached) {
                    Ok(true) => return Ok(conn),
                    went => {
                        close(conn);
                        went.map(drop)
                    }
                },
                Ok(Err(failed)) => {
                    let refused = matches!(failed, Failed::Refused(_));
                    match self.failed(failed) {
                        // The servers behind one endpoint share their users: none will let
                        // it in, so the attempt in flight is not waited for.
                        Err(e) if refused => return Err(e),
                        went => went,
                    }
                }
                Err(_) => {
                    let late = format!("no answer within {within:?}");
                    self.failed(Failed::Unreachable(late))
                }
            };
            over |= went.is_err();
        }
    }

    fn go_on(&self) -> Result<(), String> {
        self.room(0)
    }

    /// Whether another attempt may start beside `in_flight` unanswered ones.
    fn room(&self, in_flight: usize) -> Result<(), String> {
        let tries = self.seen.len() + self.failed.len() + in_flight;
        let late = tokio::time::Instant::now() >= self.until;
        match tries < SERVER_TRIES && !late {
            true => Ok(()),
            false => Err(self.db.server_missed(&self.seen, &self.failed)),
        }
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
    fn a_refusal_ends_a_search_and_failures_are_few() {
        let mut db = crate::Config::single_set("postgres://app@reader/app", Vec::<String>::new())
            .databases()
            .unwrap()
            .remove(0);
        db.server = normal_address("10.0.0.5:5432");
        let limit = std::time::Duration::from_secs(60);
        let mut search = ServerSearch::within(&db, limit);
        assert_eq!(search.keep("10.0.0.6:5432".into()), Ok(false));
        let refused = search.failed(Failed::Refused("password authentication failed".into()));
        let refused = refused.expect_err("a refusal ends it");
        assert!(
            refused.contains("the last: password authentication failed"),
            "{refused}"
        );
        let mut search = ServerSearch::within(&db, limit);
        for _ in 1..FAILED_TRIES {
            assert_eq!(search.failed(Failed::Unreachable("closed".into())), Ok(()));
        }
        let over = search
            .failed(Failed::Unreachable("closed".into()))
            .unwrap_err();
        assert!(
            over.contains("4 connections") && over.contains("failed"),
            "{over}"
        );
    }

    /// A balancer for [`ServerSearch::find`]: the `n`th attempt lands where `lands(n)` says
    /// ("hang": a server that accepts and never answers; "late": another server, answering
    /// after 400 ms). Counts the connections alive.
    struct Balancer {
        started: std::sync::atomic::AtomicUsize,
        alive: std::sync::Arc<()>,
    }

    /// A connection the balancer handed out, alive until dropped.
    struct Conn(#[allow(dead_code)] std::sync::Arc<()>);

    impl Balancer {
        fn new() -> Self {
            Balancer {
                started: Default::default(),
                alive: std::sync::Arc::new(()),
            }
        }

        fn attempt(
            &self,
            lands: impl Fn(usize) -> &'static str,
        ) -> impl std::future::Future<Output = Result<(Conn, String), Failed>> + '_ {
            use std::sync::atomic::Ordering;
            let n = self.started.fetch_add(1, Ordering::SeqCst) + 1;
            let conn = Conn(std::sync::Arc::clone(&self.alive));
            let server = lands(n);
            async move {
                match server {
                    "hang" => std::future::pending().await,
                    "late" => {
                        let late = std::time::Duration::from_millis(400);
                        tokio::time::sleep(late).await;
                        Ok((conn, "10.0.0.6:5432".to_owned()))
                    }
                    "refuse" => Err(Failed::Refused("password authentication failed".into())),
                    other => Ok((conn, other.to_owned())),
                }
            }
        }

        fn alive(&self) -> usize {
            std::sync::Arc::strong_count(&self.alive) - 1
        }
    }

    fn behind_endpoint(server: &str) -> Database {
        let mut db = crate::Config::single_set("postgres://app@reader/app", Vec::<String>::new())
            .databases()
            .unwrap()
            .remove(0);
        db.server = normal_address(server);
        db
    }

    /// Whether an attempt got another beside it after `elapsed`: after a quarter to three
    /// quarters of its limit (the tests run on tokio's paused clock: elapsed times are exact).
    fn hedged(db: &Database, limit: std::time::Duration, elapsed: std::time::Duration) -> bool {
        let attempt = ServerSearch::within(db, limit).attempt_limit();
        (attempt / 4..=attempt * 3 / 4).contains(&elapsed)
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_that_hangs_behind_the_endpoint_costs_half_an_attempt() {
        let db = behind_endpoint("10.0.0.5:5432");
        let limit = std::time::Duration::from_secs(2);
        let balancer = Balancer::new();
        // Round robin over a server that hangs and this one.
        let lands = |n: usize| if n % 2 == 1 { "hang" } else { "10.0.0.5:5432" };
        let start = tokio::time::Instant::now();
        let found = ServerSearch::within(&db, limit)
            .find(|| balancer.attempt(lands), drop)
            .await;
        assert!(found.is_ok(), "{:?}", found.err());
        // The second attempt started beside the hung one, not after it.
        assert!(hedged(&db, limit, start.elapsed()), "{:?}", start.elapsed());
        drop(found);
        assert_eq!(balancer.alive(), 0, "the hung attempt was dropped");
    }

    /// Four attempts in a row landing on a hung server (1 in 16 with two servers behind a
    /// random balancer, every time for a search kept in step with a round robin by other
    /// clients) used to end the search: four failures, the deadline.
    #[tokio::test(start_paused = true)]
    async fn four_attempts_on_a_hung_server_do_not_end_the_search() {
        let db = behind_endpoint("10.0.0.5:5432");
        let limit = std::time::Duration::from_secs(2);
        let balancer = Balancer::new();
        let lands = |n: usize| if n <= 4 { "hang" } else { "10.0.0.5:5432" };
        let found = ServerSearch::within(&db, limit)
            .find(|| balancer.attempt(lands), drop)
            .await;
        assert!(found.is_ok(), "{:?}", found.err());
        drop(found);
        assert_eq!(balancer.alive(), 0);
        // Never more than ATTEMPTS_IN_FLIGHT at once; every server hanging, the search ends
        // after its fourth failure and the one in flight, within the deadline.
        let balancer = Balancer::new();
        let most = std::sync::atomic::AtomicUsize::new(0);
        let found = ServerSearch::within(&db, limit)
            .find(
                || {
                    let alive = balancer.alive() + 1;
                    most.fetch_max(alive, std::sync::atomic::Ordering::SeqCst);
                    balancer.attempt(|_| "hang")
                },
                drop,
            )
            .await;
        let missed = found.err().expect("every attempt hangs");
        assert!(
            missed.contains("5 connections") && missed.contains("no answer within"),
            "{missed}"
        );
        assert_eq!(most.into_inner(), ATTEMPTS_IN_FLIGHT);
        assert_eq!(balancer.alive(), 0);
    }

    /// After its fourth failure a search starts nothing more, even when an attempt still in
    /// flight then lands on another server (a miss that is not a failure).
    #[tokio::test(start_paused = true)]
    async fn four_failures_end_a_search_for_good() {
        let db = behind_endpoint("10.0.0.5:5432");
        let limit = std::time::Duration::from_secs(2);
        let balancer = Balancer::new();
        // Four hang (the fourth fails by 1.375 s: it starts by 0.875 s), the fifth (started
        // at 1 s, when the third fails) answers late (1.4 s) from another server; a sixth
        // would reach this one.
        let lands = |n: usize| match n {
            1..=4 => "hang",
            5 => "late",
            _ => "10.0.0.5:5432",
        };
        let found = ServerSearch::within(&db, limit)
            .find(|| balancer.attempt(lands), drop)
            .await;
        let missed = found.err().expect("over after four failures");
        assert!(missed.contains("4 failed"), "{missed}");
        assert_eq!(balancer.started.into_inner(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_ends_a_search_with_attempts_in_flight() {
        let db = behind_endpoint("10.0.0.5:5432");
        let limit = std::time::Duration::from_secs(2);
        let balancer = Balancer::new();
        let lands = |n: usize| if n == 1 { "hang" } else { "refuse" };
        let start = tokio::time::Instant::now();
        let found = ServerSearch::within(&db, limit)
            .find(|| balancer.attempt(lands), drop)
            .await;
        let refused = found.err().expect("refused");
        assert!(
            refused.contains("password authentication failed"),
            "{refused}"
        );
        // Refused beside the hung attempt, which was not waited for.
        assert!(hedged(&db, limit, start.elapsed()), "{:?}", start.elapsed());
        assert_eq!(balancer.alive(), 0, "the hung attempt was dropped");
        assert_eq!(balancer.started.into_inner(), 2);
    }

    /// A connection that reached another server is given to `close`, and the search goes on.
    #[tokio::test(start_paused = true)]
    async fn another_servers_connection_is_closed_and_the_search_goes_on() {
        let db = behind_endpoint("10.0.0.5:5432");
        let limit = std::time::Duration::from_secs(2);
        let closed = std::cell::Cell::new(0);
        let balancer = Balancer::new();
        let lands = |n: usize| match n {
            1 => "10.0.0.6:5432",
            _ => "10.0.0.5:5432",
        };
        let found = ServerSearch::within(&db, limit)
            .find(|| balancer.attempt(lands), |_| closed.set(closed.get() + 1))
            .await;
        assert!(found.is_ok(), "{:?}", found.err());
        assert_eq!(closed.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_search_dropped_midway_drops_every_attempt() {
        let db = behind_endpoint("10.0.0.5:5432");
        let balancer = Balancer::new();
        let search = ServerSearch::within(&db, std::time::Duration::from_secs(2))
            .find(|| balancer.attempt(|_| "hang"), drop);
        // Dropped with two attempts in flight (the second starts by 375 ms, the first ends at
        // 500 ms).
        let gave_up = tokio::time::timeout(std::time::Duration::from_millis(450), search).await;
        assert!(gave_up.is_err());
        assert_eq!(
            balancer.started.load(std::sync::atomic::Ordering::SeqCst),
            2
        );
        assert_eq!(balancer.alive(), 0);
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
