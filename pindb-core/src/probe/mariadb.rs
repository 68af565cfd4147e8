//! pindb's own connection to a MariaDB server ([`Server`]) and what it asks: positions in the
//! set's replication domain, and whether a replica applies.
//!
//! Pooler-safe as the PostgreSQL side: every statement goes in the text protocol (no
//! prepared statement), nothing is set on the session. A statement (and a connection attempt)
//! runs in a task of its own that owns the connection: a caller that gives up (a 5 ms
//! `max_wait_ms`, a dropped future) leaves it to finish, and the next call takes the
//! connection back instead of opening another. Only a timeout drops it.

use std::sync::Arc;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, Row};
use tokio::task::JoinHandle;

use super::{Applied, Reading};
use crate::endpoint::{Failed, ServerSearch, MARIADB_SERVER_SQL};
use crate::gtid::GtidPosition;
use crate::populate::Database;

/// One connection to a MariaDB server, made on demand.
pub(super) struct Server {
    opts: Opts,
    /// A server behind a reader endpoint: connections are kept only if they reached it.
    behind: Option<Arc<Database>>,
    conn: Option<Conn>,
    /// A statement under way, which owns the connection until it ends.
    pending: Option<JoinHandle<Asked>>,
    /// `SHOW SLAVE STATUS` for the default replication connection, or `SHOW SLAVE 'name'
    /// STATUS` for the one a replica follows its master through (`replication_connection`).
    show_status: Arc<str>,
}

/// What a statement's task gives back: the connection (unless it broke) and the answer.
type Asked = (Option<Conn>, Result<Option<Row>, Failure>);

impl Server {
    pub(super) fn new(
        url: &str,
        behind: Option<Arc<Database>>,
        connection: Option<&str>,
    ) -> Result<Server, String> {
        let opts = Opts::from_url(url).map_err(|e| format!("the url does not parse: {e}"))?;
        let opts = OptsBuilder::from_opts(opts)
            // mysql_async would move a connection to 127.0.0.1 onto the server's local
            // socket: pindb measures the server the URL names, as the pools reach it.
            .prefer_socket(false)
            .stmt_cache_size(0);
        Ok(Server {
            opts: opts.into(),
            behind,
            conn: None,
            pending: None,
            // The name is letters, digits, `_` and `-` (checked with the config).
            show_status: match connection {
                Some(name) => {
                    debug_assert!(name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c)));
                    format!("SHOW SLAVE '{name}' STATUS").into()
                }
                None => "SHOW SLAVE STATUS".into(),
            },
        })
    }

    pub(super) fn disconnect(&mut self) {
        self.conn = None;
        if let Some(pending) = self.pending.take() {
            pending.abort();
        }
    }

    /// Runs `sql` and returns its first row (`None`: no row), within `timeout`.
    pub(super) async fn row(
        &mut self,
        sql: &str,
        timeout: Duration,
    ) -> Result<Option<Row>, String> {
        match self.ask(sql, timeout).await {
            Ok(row) => Ok(row),
            Err(Failure::Server(e)) => Err(e.to_string()),
            Err(Failure::Other(e)) => Err(e),
        }
    }

    async fn ask(&mut self, sql: &str, timeout: Duration) -> Result<Option<Row>, Failure> {
        let asked = async {
            // A statement a caller gave up on: its connection comes back when it ends (its
            // answer is old news).
            if let Some(pending) = self.pending.as_mut() {
                if let Ok((conn, _)) = pending.await {
                    self.conn = conn;
                }
                self.pending = None;
            }
            let (conn, opts, sql) = (self.conn.take(), self.opts.clone(), sql.to_owned());
            let behind = self.behind.clone();
            let task = self
                .pending
                .insert(tokio::spawn(run(conn, opts, behind, timeout, sql)));
            let (conn, answer) = task
                .await
                .unwrap_or_else(|e| (None, Err(Failure::Other(format!("the probe task: {e}")))));
            self.pending = None;
            self.conn = conn;
            answer
        };
        match tokio::time::timeout(timeout, asked).await {
            Ok(answer) => answer,
            Err(_) => {
                // A server that does not answer: its connection is given up.
                self.disconnect();
                Err(Failure::Other(format!("no answer within {timeout:?}")))
            }
        }
    }

    /// `SHOW SLAVE STATUS` (of its replication connection), which needs the `SLAVE MONITOR`
    /// privilege.
    pub(super) async fn slave_status(&mut self, timeout: Duration) -> Result<SlaveStatus, String> {
        let sql = Arc::clone(&self.show_status);
        match self.ask(&sql, timeout).await {
            Ok(Some(row)) => Ok(SlaveStatus::Replica(row)),
            Ok(None) => Ok(SlaveStatus::NotReplica),
            // WARN_NO_MASTER_INFO: no replication connection of that name.
            Err(Failure::Server(e)) if e.code == 1617 => Ok(SlaveStatus::NotReplica),
            // ER_SPECIFIC_ACCESS_DENIED_ERROR: the statement is kept back (the server runs
            // fine); the connection stays usable.
            Err(Failure::Server(e)) if e.code == 1227 => Ok(SlaveStatus::Denied),
            Err(Failure::Server(e)) => Err(e.to_string()),
            Err(Failure::Other(e)) => Err(e),
        }
    }

    /// The server's position in its own replication domain (which `SetDomain` holds to the
    /// set's): what it has written (`@@gtid_binlog_pos`, a master) or applied as a replica
    /// (`@@gtid_slave_pos`), `None` before the domain's first transaction; and its position
    /// outside that domain (other domains' GTIDs: an old topology's, another master's, writes
    /// made with `SET gtid_domain_id`), which the position in the domain does not cover.
    pub(super) async fn position(
        &mut self,
        applied: bool,
        timeout: Duration,
    ) -> Result<Reading, String> {
        let (domain, position) = self.gtid(applied, timeout).await?;
        Ok(Reading::of_gtids(position, domain))
    }

    /// The server's `gtid_domain_id` and its written or applied GTID position.
    async fn gtid(
        &mut self,
        applied: bool,
        timeout: Duration,
    ) -> Result<(u32, GtidPosition), String> {
        // The server's own domain (a session's `SET gtid_domain_id` is not the server's); a
        // master's reading must come from a writable server: a URL that reached a replica
        // (a balancer, a VIP mid-change) would measure lag against the replica itself.
        let sql = match applied {
            true => "SELECT @@global.gtid_domain_id, @@gtid_slave_pos, 0",
            false => "SELECT @@global.gtid_domain_id, @@gtid_binlog_pos, @@global.read_only",
        };
        let row = self.row(sql, timeout).await?.ok_or("no row")?;
        if column::<u64>(&row, 2)? != Some(0) {
            return Err(
                "it is read_only (a replica?), so its position is not the master's; \
                        point the master's url at the writable master"
                    .to_owned(),
            );
        }
        let domain: u32 = column(&row, 0)?.ok_or("no gtid_domain_id")?;
        let text: String = column(&row, 1)?.unwrap_or_default();
        let position = GtidPosition::parse(&text).map_err(|e| e.to_string())?;
        Ok((domain, position))
    }

    /// A replica's applied position in its domain, whether its SQL thread runs, and its
    /// position outside the domain; the inner error says why it is not a replica at all.
    ///
    /// Without `SLAVE MONITOR` the position alone tells (anyone may read it): a stopped SQL
    /// thread then shows as lag once the master writes, not at once (the start-up check warns).
    pub(super) async fn replica(
        &mut self,
        timeout: Duration,
    ) -> Result<Result<Applied, String>, String> {
        let applying = match self.slave_status(timeout).await? {
            SlaveStatus::Replica(status) => status
                .get_opt::<String, _>("Slave_SQL_Running")
                .and_then(Result::ok)
                .is_some_and(|running| running == "Yes"),
            SlaveStatus::Denied => true,
            SlaveStatus::NotReplica => {
                return Ok(Err(format!(
                    "no replication is configured ({} is empty or unknown: a master, or \
                     CHANGE MASTER TO was never run); not reading from it",
                    self.show_status
                )))
            }
        };
        Ok(Ok(Applied {
            reading: self.position(true, timeout).await?,
            applying,
        }))
    }
}

/// What `SHOW SLAVE STATUS` said.
pub(crate) enum SlaveStatus {
    /// Its row: the server replicates.
    Replica(Row),
    /// No row: no replication configured.
    NotReplica,
    /// The user may not ask (no `SLAVE MONITOR`).
    Denied,
}

enum Failure {
    /// The server answered with an error.
    Server(mysql_async::ServerError),
    /// No connection, no answer in time, a broken connection.
    Other(String),
}

impl Drop for Server {
    fn drop(&mut self) {
        // A statement under way would keep its task and socket after the probe is gone.
        self.disconnect();
    }
}

/// One statement on `conn` (or a new connection): the connection back unless it broke.
async fn run(
    conn: Option<Conn>,
    opts: Opts,
    behind: Option<Arc<Database>>,
    limit: Duration,
    sql: String,
) -> Asked {
    let mut conn = match conn {
        Some(conn) => conn,
        None => match connect(opts, behind.as_deref(), limit).await {
            Ok(conn) => conn,
            Err(e) => return (None, Err(Failure::Other(e))),
        },
    };
    match conn.query_first::<Row, _>(sql).await {
        Ok(row) => (Some(conn), Ok(row)),
        // The server refused the statement; the connection is fine.
        Err(mysql_async::Error::Server(e)) => (Some(conn), Err(Failure::Server(e))),
        Err(e) => (None, Err(Failure::Other(e.to_string()))),
    }
}

/// A connection with `opts`; for a server behind a reader endpoint, the first of up to
/// [`SERVER_TRIES`](crate::endpoint::SERVER_TRIES) that reached it.
async fn connect(opts: Opts, behind: Option<&Database>, limit: Duration) -> Result<Conn, String> {
    let Some(db) = behind else {
        return Conn::new(opts)
            .await
            .map_err(|e| format!("no connection: {e}"));
    };
    let attempt = || async {
        let mut conn = Conn::new(opts.clone()).await.map_err(|e| {
            let text = format!("no connection: {e}");
            match e {
                // A login refused, no such database: every server behind the endpoint says
                // so. Too many connections, or shutting down: this one only.
                mysql_async::Error::Server(s) if !matches!(s.code, 1040 | 1053 | 1203) => {
                    Failed::Refused(text)
                }
                _ => Failed::Unreachable(text),
            }
        })?;
        let asked = |e: String| Failed::Unreachable(format!("asking where it landed: {e}"));
        let reached: String = conn
            .query_first(MARIADB_SERVER_SQL)
            .await
            .map_err(|e| asked(e.to_string()))?
            .ok_or_else(|| asked("no row".to_owned()))?;
        Ok((conn, reached))
    };
    // Another server's connection: said goodbye to in the background (a connection just
    // dropped is an aborted client in the server's log), the search going on.
    let close = |conn: Conn| drop(tokio::spawn(conn.disconnect()));
    ServerSearch::within(db, limit).find(attempt, close).await
}

/// Why a fresh connection to `db` cannot be made within `timeout` (`None`: it can), and
/// whether it was refused (nothing listens; the server is shutting down). With `find_server`,
/// for a server behind a reader endpoint, a connection reaches it within the same `timeout`,
/// or what it reached instead is the cause.
pub(super) async fn diagnose(
    db: &Database,
    timeout: Duration,
    find_server: bool,
) -> Option<(String, bool)> {
    let opts: Opts = match Opts::from_url(&db.url()) {
        Ok(opts) => OptsBuilder::from_opts(opts).prefer_socket(false).into(),
        Err(e) => return Some((format!("the url does not parse: {e}"), false)),
    };
    let deadline = tokio::time::Instant::now() + timeout;
    match tokio::time::timeout_at(deadline, Conn::new(opts.clone())).await {
        Ok(Ok(conn)) => {
            // Closed in the background: the answer does not wait for it.
            drop(conn);
            let server = db.server.as_deref().filter(|_| find_server)?;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout_at(deadline, connect(opts, Some(db), left)).await {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some((e, false)),
                Err(_) => Some((
                    format!(
                        "no connection through the reader endpoint reached server_id {server} \
                         within {timeout:?}"
                    ),
                    false,
                )),
            }
        }
        Ok(Err(e)) => {
            let refused = match &e {
                mysql_async::Error::Io(mysql_async::IoError::Io(io)) => {
                    io.kind() == std::io::ErrorKind::ConnectionRefused
                }
                // ER_SERVER_SHUTDOWN.
                mysql_async::Error::Server(s) => s.code == 1053,
                _ => false,
            };
            Some((e.to_string(), refused))
        }
        Err(_) => Some((
            format!(
                "no answer within {timeout:?} (the host accepts connections but the server \
                 does not respond, or packets are dropped)"
            ),
            false,
        )),
    }
}

fn column<T: mysql_async::prelude::FromValue>(row: &Row, i: usize) -> Result<Option<T>, String> {
    match row.get_opt::<Option<T>, _>(i) {
        Some(Ok(value)) => Ok(value),
        Some(Err(e)) => Err(format!("column {i}: {e}")),
        None => Err(format!("no column {i}")),
    }
}
