//! pindb's own small connections to each database (the monitor's checks, master positions
//! for stickiness, direct replica checks), so a saturated application pool cannot blind it.
//! Every call is bounded by the check timeout; a failure drops the connection.
//!
//! Pooler-safe by construction: every statement is the unnamed one, parsed, bound and run in
//! one round trip (`query_typed`), and a connection sets nothing on its session (its name is a
//! startup parameter), so a transaction-mode pooler (PgBouncer) may hand its server
//! connection to anyone between statements.
//!
//! A probe of a MariaDB database (`mariadb.rs`) answers the backend-neutral questions
//! ([`Probe::shared_reading`], [`Probe::standby`]); the PostgreSQL queries of the features
//! MariaDB sets do not have yet ([`Probe::row`]) fail on it, naming the backend.

#[cfg(feature = "mariadb")]
mod mariadb;

#[cfg(feature = "mariadb")]
pub(crate) use mariadb::SlaveStatus;

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls, Row};

use crate::backend::Backend;
use crate::endpoint::{Failed, ServerSearch, SERVER_ADDRESS_SQL};
use crate::gtid::GtidPosition;
use crate::lsn::Lsn;
use crate::populate::Database;

/// A position pindb asks a server for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Asked {
    /// A master's current position: what replica lag is measured against.
    Master,
    /// A master's position after a write committed, covering it: read-your-writes.
    Written,
    /// What a replica has applied (replayed).
    Applied,
}

impl Asked {
    fn postgres_sql(self) -> &'static str {
        match self {
            Asked::Master => "SELECT pg_current_wal_lsn()::text",
            Asked::Written => "SELECT pg_current_wal_insert_lsn()::text",
            Asked::Applied => "SELECT pg_last_wal_replay_lsn()::text",
        }
    }
}

/// A server's position, as it reads it.
#[derive(Debug)]
pub(crate) struct Reading {
    /// PostgreSQL: its WAL position. MariaDB: its sequence number in `domain`.
    pub(crate) position: Option<Lsn>,
    /// MariaDB: its position outside `domain`, which `position` does not cover (empty for
    /// PostgreSQL).
    pub(crate) outside: GtidPosition,
    /// MariaDB: the domain `position` is in: the server's own `gtid_domain_id` as read, its
    /// set's once [`Reading::in_domain`] moved it there; `None` for PostgreSQL.
    pub(crate) domain: Option<u32>,
    /// MariaDB: the whole GTID position it was read from.
    whole: GtidPosition,
}

impl Reading {
    /// A PostgreSQL position: one WAL, nothing outside it.
    pub(crate) fn of_wal(position: Option<Lsn>) -> Reading {
        Reading {
            position,
            outside: GtidPosition::default(),
            domain: None,
            whole: GtidPosition::default(),
        }
    }

    /// A MariaDB position, in `domain`.
    pub(crate) fn of_gtids(whole: GtidPosition, domain: u32) -> Reading {
        Reading {
            position: whole.seq_in(domain).map(Lsn),
            outside: whole.outside(domain),
            domain: Some(domain),
            whole,
        }
    }

    /// The same reading in another replication `domain` (a replica's set's: a replica of
    /// several masters has a domain of its own, which it never writes in).
    pub(crate) fn in_domain(self, domain: u32) -> Reading {
        match self.domain {
            Some(own) if own != domain => Reading::of_gtids(self.whole, domain),
            _ => self,
        }
    }
}

/// What a replica says of itself.
pub(crate) struct Applied {
    /// What it has applied (replayed).
    pub(crate) reading: Reading,
    /// Whether it applies changes now (a PostgreSQL standby always does; a MariaDB replica
    /// whose SQL thread stopped, or a logical subscription that is not applying, does not).
    pub(crate) applying: bool,
}

/// A small connection of pindb's own, reconnected on demand.
pub(crate) struct Probe {
    url: String,
    pub(crate) alias: String,
    /// Where it connects, password hidden: for messages.
    pub(crate) redacted_url: String,
    /// For a runtime replica: the slot generation whose host it connects to.
    pub(crate) generation: u64,
    timeout: Duration,
    /// A server behind a reader endpoint: the database, whose connections are kept only when
    /// they reached it.
    server: Option<Arc<Database>>,
    client: Option<Arc<Connected>>,
    /// A connection attempt under way, in a task of its own: a caller that gives up (its
    /// own deadline, a dropped future) leaves it running for the next caller, so a wait
    /// shorter than a connection's set-up still gets a connection the next time.
    connecting: Option<tokio::task::JoinHandle<Result<Connected, String>>>,
    backend: Backend,
    /// A MariaDB database's connection (`None` for PostgreSQL, or a url that does not parse:
    /// then every question says so).
    #[cfg(feature = "mariadb")]
    mariadb: Option<Result<mariadb::Server, String>>,
}

impl Probe {
    pub(crate) fn new(db: &Database, timeout: Duration) -> Probe {
        let server = db.server.is_some().then(|| Arc::new(db.clone()));
        Probe {
            url: db.probe_url(),
            // A runtime replica's alias names whichever host it has: say which.
            alias: match db.runtime {
                true => format!("{} ({}:{})", db.alias, db.host, db.port),
                false => db.alias.clone(),
            },
            redacted_url: db.redacted_url(),
            generation: 0,
            timeout,
            #[cfg(feature = "mariadb")]
            mariadb: (db.backend == Backend::MariaDb).then(|| {
                mariadb::Server::new(
                    &db.url(),
                    server.clone(),
                    db.replication_connection.as_deref(),
                )
            }),
            server,
            client: None,
            connecting: None,
            backend: db.backend,
        }
    }

    /// The position `asked` of the server behind `probe`, shared by concurrent callers as
    /// [`Probe::shared_row`]. A MariaDB connection answers one caller at a time: a caller
    /// waits at most `limit` for its turn, so callers queued behind a hung server give up
    /// after `limit` and its statement's own timeout, not after all those before them.
    /// `backend`: the probe's (known to the caller, so PostgreSQL's path takes no lock).
    pub(crate) async fn shared_reading(
        probe: &tokio::sync::Mutex<Probe>,
        backend: Backend,
        asked: Asked,
        limit: Duration,
    ) -> Result<Reading, String> {
        if backend != Backend::Postgres {
            // The statement has its own timeout, which drops a connection that hangs.
            let mut p = tokio::time::timeout(limit, probe.lock())
                .await
                .map_err(|_| format!("no turn within {limit:?} (the server answers slowly)"))?;
            return p.reading(asked).await;
        }
        let row = Probe::shared_row(probe, asked.postgres_sql()).await?;
        Ok(Reading::of_wal(lsn_column(&row, 0)?))
    }

    /// The position `asked` of this probe's server.
    pub(crate) async fn reading(&mut self, asked: Asked) -> Result<Reading, String> {
        #[cfg(feature = "mariadb")]
        if self.backend == Backend::MariaDb {
            let timeout = self.timeout;
            return self
                .with_mariadb(|server| server.position(asked == Asked::Applied, timeout))
                .await;
        }
        let row = self.row(asked.postgres_sql()).await?;
        Ok(Reading::of_wal(lsn_column(&row, 0)?))
    }

    /// A replica's reading of itself. The inner error: it is not a replica (a primary,
    /// promoted, no replication configured), in words.
    pub(crate) async fn standby(&mut self) -> Result<Result<Applied, String>, String> {
        #[cfg(feature = "mariadb")]
        if self.backend == Backend::MariaDb {
            let timeout = self.timeout;
            return self.with_mariadb(|server| server.replica(timeout)).await;
        }
        let row = self
            .row("SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text")
            .await?;
        let in_recovery: bool = row.try_get(0).map_err(|e| e.to_string())?;
        Ok(match in_recovery {
            true => Ok(Applied {
                reading: Reading::of_wal(lsn_column(&row, 1)?),
                applying: true,
            }),
            false => Err(format!(
                "`{}` is not in recovery (promoted?); not reading from it",
                self.alias
            )),
        })
    }

    /// Runs `sql` on a MariaDB database and returns its first row (`None`: no row).
    #[cfg(feature = "mariadb")]
    pub(crate) async fn mariadb_row(
        &mut self,
        sql: &str,
    ) -> Result<Option<mysql_async::Row>, String> {
        let timeout = self.timeout;
        self.with_mariadb(|server| server.row(sql, timeout)).await
    }

    /// `SHOW SLAVE STATUS` of a MariaDB database.
    #[cfg(feature = "mariadb")]
    pub(crate) async fn mariadb_status(&mut self) -> Result<mariadb::SlaveStatus, String> {
        let timeout = self.timeout;
        self.with_mariadb(|server| server.slave_status(timeout))
            .await
    }

    #[cfg(feature = "mariadb")]
    async fn with_mariadb<'p, T, F>(
        &'p mut self,
        ask: impl FnOnce(&'p mut mariadb::Server) -> F,
    ) -> Result<T, String>
    where
        F: std::future::Future<Output = Result<T, String>> + 'p,
    {
        let alias = self.alias.clone();
        match self.mariadb.as_mut() {
            Some(Ok(server)) => ask(server).await,
            Some(Err(e)) => Err(e.clone()),
            None => Err("not a MariaDB database".to_owned()),
        }
        .map_err(|e| format!("`{alias}`: {e}"))
    }

    /// Closes its connection (the next call opens another).
    pub(crate) fn disconnect(&mut self) {
        self.client = None;
        #[cfg(feature = "mariadb")]
        if let Some(Ok(server)) = self.mariadb.as_mut() {
            server.disconnect();
        }
        // An attempt under way may be to a host that left: stopped.
        if let Some(connecting) = self.connecting.take() {
            connecting.abort();
        }
    }

    /// Runs `sql` (no parameters) and returns its single row. Any failure, including a
    /// timeout, drops the connection so the next call reconnects.
    pub(crate) async fn row(&mut self, sql: &str) -> Result<Row, String> {
        let mut rows = self.rows(sql, &[]).await?;
        match rows.len() {
            1 => Ok(rows.remove(0)),
            n => Err(format!("`{}`: {n} rows where one was expected", self.alias)),
        }
    }

    /// Runs `sql` with `params` (each with its type: no round trip to learn them) and
    /// returns its rows; failures as [`Probe::row`].
    pub(crate) async fn rows(
        &mut self,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Vec<Row>, String> {
        if self.backend != Backend::Postgres {
            return Err(self.not_postgres());
        }
        let result = tokio::time::timeout(self.timeout, async {
            let client = self.client().await?;
            client
                .query_typed(sql, params)
                .await
                .map_err(|e| describe(&e))
        })
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {:?}", self.timeout)));
        if result.is_err() {
            self.client = None;
        }
        result.map_err(|e| format!("`{}`: {e}", self.alias))
    }

    /// Runs a one-row query on the connection behind `probe`, holding the lock only to
    /// (re)connect, so concurrent callers share the connection (tokio-postgres pipelines).
    pub(crate) async fn shared_row(
        probe: &tokio::sync::Mutex<Probe>,
        sql: &str,
    ) -> Result<Row, String> {
        let (client, timeout, alias) = {
            let mut p = probe.lock().await;
            if p.backend != Backend::Postgres {
                return Err(p.not_postgres());
            }
            let client = tokio::time::timeout(p.timeout, p.client())
                .await
                .unwrap_or_else(|_| Err(format!("no connection within {:?}", p.timeout)));
            (client, p.timeout, p.alias.clone())
        };
        let client = client.map_err(|e| format!("`{alias}`: {e}"))?;
        match tokio::time::timeout(timeout, client.query_typed(sql, &[])).await {
            Ok(Ok(mut rows)) if rows.len() == 1 => Ok(rows.remove(0)),
            Ok(Ok(rows)) => Err(format!(
                "`{alias}`: {} rows where one was expected",
                rows.len()
            )),
            Ok(Err(e)) => Err(format!("`{alias}`: {}", describe(&e))),
            Err(_) => {
                // A connection that hangs is not asked again: the next caller reconnects
                // (unless another caller already did).
                let mut p = probe.lock().await;
                if p.client.as_ref().is_some_and(|c| Arc::ptr_eq(c, &client)) {
                    p.client = None;
                }
                Err(format!("`{alias}`: no answer within {timeout:?}"))
            }
        }
    }

    fn not_postgres(&self) -> String {
        format!(
            "`{}` is a {} database: this is asked of PostgreSQL only",
            self.alias,
            self.backend.name()
        )
    }

    async fn client(&mut self) -> Result<Arc<Connected>, String> {
        if let Some(c) = self.client.as_ref().filter(|c| !c.is_closed()) {
            return Ok(Arc::clone(c));
        }
        // An attempt that ended while nobody waited: its failure, or a connection that has
        // closed since, is old news; a fresh attempt says what is true now.
        if let Some(ended) = self.connecting.take_if(|c| c.is_finished()) {
            if let Ok(Ok(client)) = ended.await {
                if !client.is_closed() {
                    let client = Arc::new(client);
                    self.client = Some(Arc::clone(&client));
                    return Ok(client);
                }
            }
        }
        let connecting = match &mut self.connecting {
            Some(connecting) => connecting,
            None => {
                let mut config: tokio_postgres::Config =
                    self.url.parse().map_err(|e| describe(&e))?;
                // Told apart from the application's own connections (`pg_stat_activity`).
                config.application_name("pindb-monitor");
                let (timeout, server) = (self.timeout, self.server.clone());
                self.connecting.insert(tokio::spawn(async move {
                    // No `SET statement_timeout`: session state a pooler would hand on. Every
                    // call is bounded instead, and a connection that timed out is dropped.
                    let connecting = connect(config, server.as_deref(), timeout);
                    tokio::time::timeout(timeout, connecting)
                        .await
                        .map_err(|_| format!("no connection within {timeout:?}"))?
                }))
            }
        };
        // Dropped here, the attempt goes on; the next caller awaits the same one.
        let connected = connecting.await;
        self.connecting = None;
        let client = Arc::new(connected.map_err(|e| format!("connection attempt failed: {e}"))??);
        self.client = Some(Arc::clone(&client));
        Ok(client)
    }
}

/// A client of pindb's own, whose connection's task ends at most `limit` after it is dropped.
pub(crate) struct Connected {
    client: Client,
    /// Dropped with the client: tells the connection's task.
    _gone: tokio::sync::oneshot::Sender<()>,
}

impl std::ops::Deref for Connected {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

/// A connection with `config`; for a server behind a reader endpoint, the first of up to
/// [`SERVER_TRIES`](crate::endpoint::SERVER_TRIES) that reached it.
async fn connect(
    config: tokio_postgres::Config,
    server: Option<&Database>,
    limit: Duration,
) -> Result<Connected, String> {
    let open = || async {
        let (client, connection) = config.connect(NoTls).await?;
        let (gone, dropped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            // Ends when the client is dropped (errors surface on the next query)...
            tokio::pin!(connection);
            tokio::select! {
                _ = &mut connection => return,
                _ = dropped => {}
            }
            // ...unless a query is still unanswered: on a server that hangs, tokio-postgres
            // would wait for its answer for good (a search's attempt dropped, a check timed
            // out).
            let _ = tokio::time::timeout(limit, connection).await;
        });
        Ok::<_, tokio_postgres::Error>(Connected {
            client,
            _gone: gone,
        })
    };
    let Some(db) = server else {
        return open().await.map_err(|e| describe(&e));
    };
    let attempt = || async {
        let client = open().await.map_err(|e| match e.as_db_error() {
            // A login refused, no such database: every server behind the endpoint says so.
            // Too many clients, or starting up / shutting down: this one only.
            Some(db) if !matches!(db.code().code(), "53300" | "57P01" | "57P03") => {
                Failed::Refused(describe(&e))
            }
            _ => Failed::Unreachable(describe(&e)),
        })?;
        let rows = client
            .query_typed(SERVER_ADDRESS_SQL, &[])
            .await
            .map_err(|e| Failed::Unreachable(describe(&e)))?;
        let address: String = rows
            .first()
            .and_then(|row| row.try_get(0).ok())
            .unwrap_or_default();
        Ok((client, address))
    };
    ServerSearch::within(db, limit).find(attempt, drop).await
}

/// The server's message, or the client error with its causes ("error connecting to server:
/// Connection refused (os error 111)"): tokio-postgres keeps the cause out of its own text.
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} ({})", db.message(), db.code().code());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

pub(crate) fn lsn_column(row: &Row, i: usize) -> Result<Option<Lsn>, String> {
    let text: Option<String> = row.try_get(i).map_err(|e| e.to_string())?;
    text.map(|t| {
        t.parse()
            .map_err(|e: crate::lsn::ParseLsnError| e.to_string())
    })
    .transpose()
}

/// Why `db` cannot be used right now, from a fresh connection attempt bounded by `timeout`:
/// `None` when it connects (the trouble was elsewhere: a busy pool, a hung session), else the
/// cause and whether the connection was refused (nothing listens, or the server accepts none
/// now: definitive for the moment, and immediate). With `find_server`, for a server behind a
/// reader endpoint, a connection reaches it within the same `timeout`, or what it reached
/// instead is the cause.
pub(crate) async fn diagnose(
    db: &Database,
    timeout: Duration,
    find_server: bool,
) -> Option<(String, bool)> {
    #[cfg(feature = "mariadb")]
    if db.backend == Backend::MariaDb {
        return mariadb::diagnose(db, timeout, find_server).await;
    }
    let deadline = tokio::time::Instant::now() + timeout;
    match tokio::time::timeout_at(deadline, tokio_postgres::connect(&db.probe_url(), NoTls)).await {
        Ok(Ok((client, connection))) => {
            drop(client);
            // Closes as soon as the client is gone.
            let _ = tokio::time::timeout_at(deadline, connection).await;
            let server = db.server.as_deref().filter(|_| find_server)?;
            let config = db.probe_url().parse().ok()?;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout_at(deadline, connect(config, Some(db), left)).await {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some((e, false)),
                Err(_) => Some((
                    format!(
                        "no connection through the reader endpoint reached {server} within \
                         {timeout:?}"
                    ),
                    false,
                )),
            }
        }
        Ok(Err(e)) => Some((describe(&e), refused(&e))),
        Err(_) => Some((
            format!(
                "no answer within {timeout:?} (the host accepts connections but the server \
                 does not respond, or packets are dropped)"
            ),
            false,
        )),
    }
}

/// Whether a connection attempt failed because nothing listens at the address, or the server
/// says it accepts no connection now (57P03: shutting down, starting up, in recovery mode);
/// drivers retry both until their timeout. Not a full server (53300): a connection may free up.
fn refused(e: &tokio_postgres::Error) -> bool {
    if e.code() == Some(&tokio_postgres::error::SqlState::CANNOT_CONNECT_NOW) {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::ConnectionRefused;
        }
        source = cause.source();
    }
    false
}

#[cfg(test)]
mod tests;
