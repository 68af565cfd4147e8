//! [`Manager`]: diesel's r2d2 connection manager, and for a server behind a reader endpoint
//! only the connections that reached it.

use std::sync::Arc;

use diesel::r2d2::{ConnectionManager, ManageConnection};
use diesel::ConnectionError;
use pindb_core::adapter::{Database, Failed, ServerSearch};

use super::Driver;

/// The connection manager of pindb's r2d2 pools: diesel's `ConnectionManager<C>`, which for
/// a server behind a reader endpoint (`servers`) closes a new connection that reached another
/// server and opens the next one.
#[derive(Debug)]
pub struct Manager<C: Driver> {
    inner: ConnectionManager<C>,
    server: Option<Arc<Database>>,
    limit: std::time::Duration,
}

impl<C: Driver> Manager<C> {
    pub(crate) fn new(db: &Database) -> Manager<C> {
        Manager {
            inner: ConnectionManager::new(C::pool_url(db)),
            server: db.server.is_some().then(|| Arc::new(db.clone())),
            limit: db.pool.connect_timeout,
        }
    }
}

impl<C: Driver> ManageConnection for Manager<C> {
    type Connection = C;
    type Error = diesel::r2d2::Error;

    fn connect(&self) -> Result<C, Self::Error> {
        // PostgreSQL: each attempt's handshake is bounded by the URL's `connect_timeout`, and
        // no attempt starts past 80 % of the pool's (the search's error then beats the pool's
        // timeout, as in the other adapters). MariaDB: diesel's URL takes no timeout, so a
        // server that never answers holds a connection thread until the OS gives up (r2d2's
        // checkout still fails at `connect_timeout_ms`). The question where it landed runs on
        // the blocking client library without a bound of its own: a server that hangs right
        // after its handshake holds one of r2d2's connection threads until the socket gives
        // up.
        let mut search = self
            .server
            .as_deref()
            .map(|db| ServerSearch::within(db, self.limit));
        let over =
            |missed| diesel::r2d2::Error::ConnectionError(ConnectionError::BadConnection(missed));
        loop {
            let (Some(search), Some(db)) = (search.as_mut(), self.server.as_deref()) else {
                return self.inner.connect();
            };
            // A failed attempt may have landed on another server, down while this one is up:
            // a miss, not the end.
            let attempt = self
                .inner
                .connect()
                .map_err(|e| Failed::from_message(e.to_string()))
                .and_then(|mut conn| {
                    let reached = C::reached(&mut conn, db)
                        .map_err(|e| Failed::Unreachable(e.to_string()))?;
                    Ok((conn, reached))
                });
            match attempt {
                Ok((conn, reached)) => {
                    if search.keep(reached).map_err(over)? {
                        return Ok(conn);
                    }
                }
                // diesel's errors are text: a login refused ends the search, any other
                // failure is a miss, up to `FAILED_TRIES`.
                Err(failed) => search.failed(failed).map_err(over)?,
            }
        }
    }

    fn is_valid(&self, conn: &mut C) -> Result<(), Self::Error> {
        self.inner.is_valid(conn)
    }

    fn has_broken(&self, conn: &mut C) -> bool {
        self.inner.has_broken(conn)
    }
}
