//! pindb's own connection to a MariaDB server ([`Server`]) and what it asks: positions in the
//! set's replication domain, and whether a replica applies.
//!
//! Pooler-safe as the PostgreSQL side: every statement goes in the text protocol (no
//! prepared statement), nothing is set on the session. A connection is taken out while a
//! statement runs: a caller dropped mid-statement drops it too (its state is unknown), and
//! the next call connects again.

use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, Row};

use crate::gtid::GtidPosition;
use crate::lsn::Lsn;

/// One connection to a MariaDB server, made on demand.
pub(super) struct Server {
    opts: Opts,
    conn: Option<Conn>,
}

impl Server {
    pub(super) fn new(url: &str) -> Result<Server, String> {
        let opts = Opts::from_url(url).map_err(|e| format!("the url does not parse: {e}"))?;
        let opts = OptsBuilder::from_opts(opts)
            // mysql_async would move a connection to 127.0.0.1 onto the server's local
            // socket: pindb measures the server the URL names, as the pools reach it.
            .prefer_socket(false)
            .stmt_cache_size(0);
        Ok(Server {
            opts: opts.into(),
            conn: None,
        })
    }

    pub(super) fn disconnect(&mut self) {
        self.conn = None;
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
            let mut conn = match self.conn.take() {
                Some(conn) => conn,
                None => Conn::new(self.opts.clone())
                    .await
                    .map_err(|e| Failure::Other(format!("no connection: {e}")))?,
            };
            let row = conn.query_first::<Row, _>(sql).await.map_err(|e| match e {
                mysql_async::Error::Server(e) => Failure::Server(e),
                e => Failure::Other(e.to_string()),
            })?;
            self.conn = Some(conn);
            Ok(row)
        };
        tokio::time::timeout(timeout, asked)
            .await
            .unwrap_or_else(|_| Err(Failure::Other(format!("no answer within {timeout:?}"))))
    }

    /// `SHOW SLAVE STATUS`, which needs the `SLAVE MONITOR` privilege.
    pub(super) async fn slave_status(&mut self, timeout: Duration) -> Result<SlaveStatus, String> {
        match self.ask("SHOW SLAVE STATUS", timeout).await {
            Ok(Some(row)) => Ok(SlaveStatus::Replica(row)),
            Ok(None) => Ok(SlaveStatus::NotReplica),
            // ER_SPECIFIC_ACCESS_DENIED_ERROR: the statement is kept back (the server runs
            // fine); the connection stays usable.
            Err(Failure::Server(e)) if e.code == 1227 => Ok(SlaveStatus::Denied),
            Err(Failure::Server(e)) => Err(e.to_string()),
            Err(Failure::Other(e)) => Err(e),
        }
    }

    /// The server's position in its own replication domain: what it has written
    /// (`@@gtid_binlog_pos`, a master) or applied as a replica (`@@gtid_slave_pos`). `None`
    /// before the domain's first transaction.
    pub(super) async fn position(
        &mut self,
        applied: bool,
        timeout: Duration,
    ) -> Result<Option<Lsn>, String> {
        let sql = match applied {
            true => "SELECT @@gtid_domain_id, @@gtid_slave_pos",
            false => "SELECT @@gtid_domain_id, @@gtid_binlog_pos",
        };
        let row = self.row(sql, timeout).await?.ok_or("no row")?;
        let domain: u32 = column(&row, 0)?.ok_or("no gtid_domain_id")?;
        let text: String = column(&row, 1)?.unwrap_or_default();
        let position = GtidPosition::parse(&text).map_err(|e| e.to_string())?;
        Ok(position.seq_in(domain).map(Lsn))
    }

    /// A replica's applied position and whether its SQL thread runs; the inner error says
    /// why it is not a replica at all.
    ///
    /// Without `SLAVE MONITOR` the position alone tells (anyone may read it): a stopped SQL
    /// thread then shows as lag once the master writes, not at once (the start-up check warns).
    pub(super) async fn replica(
        &mut self,
        timeout: Duration,
    ) -> Result<Result<(Option<Lsn>, bool), String>, String> {
        let status = match self.slave_status(timeout).await? {
            SlaveStatus::Replica(row) => row,
            SlaveStatus::Denied => return Ok(Ok((self.position(true, timeout).await?, true))),
            SlaveStatus::NotReplica => {
                return Ok(Err(
                    "no replication is configured (SHOW SLAVE STATUS is empty: a \
                     master, or CHANGE MASTER TO was never run); not reading from it"
                        .to_owned(),
                ))
            }
        };
        let applying = status
            .get_opt::<String, _>("Slave_SQL_Running")
            .and_then(Result::ok)
            .is_some_and(|running| running == "Yes");
        let position = self.position(true, timeout).await?;
        Ok(Ok((position, applying)))
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

fn column<T: mysql_async::prelude::FromValue>(row: &Row, i: usize) -> Result<Option<T>, String> {
    match row.get_opt::<Option<T>, _>(i) {
        Some(Ok(value)) => Ok(value),
        Some(Err(e)) => Err(format!("column {i}: {e}")),
        None => Err(format!("no column {i}")),
    }
}
