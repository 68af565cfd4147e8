//! Sync diesel over r2d2 (feature `r2d2`): the same routing over r2d2 pools of `PgConnection`
//! (or `MysqlConnection` for MariaDB sets, feature `r2d2-mariadb`: the [`Driver`]), for actix-web /
//! `web::block` users. The same names as [`crate::bb8`]: [`PinDb`] (the pools),
//! [`PinDbConnection`] (a routed connection), [`Pooled`], [`RoutedTransactionManager`].
//!
//! Everything is synchronous here, so a connection is simply checked out when the router
//! first sends a statement to it. The pinning context is a tokio task-local: capture it before
//! leaving the async world and re-enter it in the blocking closure, with
//! [`pindb_core::spawn_blocking`] or `Context::current()` + [`Context::enter`](pindb_core::Context::enter):
//!
//! ```no_run
//! # async fn handler(db: pindb_diesel::r2d2::PinDb) -> Result<(), Box<dyn std::error::Error>> {
//! use diesel::prelude::*;
//!
//! pindb_core::scope(async {
//!     pindb_core::spawn_blocking(move || {
//!         let mut conn = db.get();
//!         diesel::sql_query("SELECT 1").execute(&mut conn)   // routed by the request's context
//!     }).await
//! }).await??;
//! # Ok(()) }
//! ```
//!
//! Classification, routing and checkout bookkeeping are the async adapter's (shared modules);
//! only the connection traits differ.

use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::r2d2::PooledConnection;
use diesel::PgConnection;
use pindb_core::adapter::{Database, REFUSED_GRACE};
use pindb_core::{Config, Hint, PinDbError, Router};

use crate::error::Error;
use crate::pools::Pools;

mod connection;
mod driver;
mod manager;
#[cfg(feature = "r2d2-mariadb")]
mod mysql_row;

pub use connection::{PinDbConnection, RoutedTransactionManager};
pub use driver::Driver;
pub use manager::Manager;
#[cfg(feature = "r2d2-mariadb")]
pub use mysql_row::{OwnedMysqlField, OwnedMysqlRow};

/// A pooled sync diesel connection (a `C`).
pub type Pooled<C = PgConnection> = PooledConnection<Manager<C>>;

type Pool<C> = diesel::r2d2::Pool<Manager<C>>;

/// The sync entry point: the router plus an r2d2 pool per alias. Cheap to clone.
///
/// `C` is the diesel connection of the sets' database: `PgConnection` (the default, built
/// with [`PinDb::new`]) or, with the feature `r2d2-mariadb`, `MysqlConnection` (built with
/// [`PinDb::from_config`]: `PinDb::<MysqlConnection>::from_config(config)`).
pub struct PinDb<C: Driver = PgConnection> {
    inner: Arc<Pools<Pool<C>>>,
}

impl<C: Driver> Clone for PinDb<C> {
    fn clone(&self) -> Self {
        PinDb {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<C: Driver> std::fmt::Debug for PinDb<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinDb")
            .field("router", self.inner.router())
            .finish()
    }
}

fn build_pool<C: Driver>(db: &Database) -> Pool<C> {
    let builder = Pool::builder()
        .max_size(db.pool.max_size)
        // As bb8 and sqlx: none unless asked (r2d2 alone would open `max_size` at once).
        .min_idle(Some(db.pool.min_idle.unwrap_or(0)))
        .connection_timeout(db.pool.connect_timeout);
    // A replica that would accept writes is opened read-only by a startup parameter in
    // `pool_url`: nothing is set on the session, which a pooler could hand to another client.
    builder.build_unchecked(Manager::new(db))
}

/// How often a waiting checkout looks again whether another host became the primary.
const SLICE: Duration = Duration::from_millis(100);

impl PinDb {
    /// Builds the router and one r2d2 pool per alias, for PostgreSQL sets; no connection is
    /// opened yet.
    pub fn new(config: Config) -> Result<PinDb, Error> {
        PinDb::from_config(config)
    }

    /// Like [`PinDb::new`], from a router you built.
    pub fn from_router(router: Router) -> Result<PinDb, Error> {
        PinDb::with_router(router)
    }
}

impl<C: Driver> PinDb<C> {
    /// [`PinDb::new`] for the connection type `C`: `PinDb::<MysqlConnection>::from_config`
    /// for MariaDB sets. A set of another database is refused ([`Error::OtherDatabase`]).
    pub fn from_config(config: Config) -> Result<PinDb<C>, Error> {
        PinDb::with_router(Router::new(config)?)
    }

    /// [`PinDb::from_router`] for the connection type `C`.
    pub fn with_router(router: Router) -> Result<PinDb<C>, Error> {
        crate::pools::check_backend::<C::Backend>(&router)?;
        Ok(PinDb {
            inner: Arc::new(Pools::new(router, build_pool::<C>)),
        })
    }

    /// The router.
    pub fn router(&self) -> &Router {
        self.inner.router()
    }

    /// A routed sync connection; nothing is checked out until the first statement.
    pub fn get(&self) -> PinDbConnection<C> {
        PinDbConnection::new(self.clone())
    }

    /// An explicit read connection on the router's read route for `hint`.
    pub fn read_with(&self, hint: &Hint<'_>) -> Result<Pooled<C>, Error> {
        let route = self.router().db_for_read(hint)?;
        let checkout = self.checkout(route.index, route.epoch);
        Ok(checkout.map_err(|e| e.routed_as(route.role))?.1)
    }

    /// An explicit write connection on the master of the hinted set, under the router's rules.
    pub fn write_with(&self, hint: &Hint<'_>) -> Result<Pooled<C>, Error> {
        let route = self.router().db_for_write(hint)?;
        let checkout = self.checkout(route.index, route.epoch);
        if checkout.is_err() {
            self.inner.not_sent(&route);
        }
        Ok(checkout.map_err(|e| e.routed_as(route.role))?.1)
    }

    /// How many checkouts of `alias`'s pool have been asked for so far.
    pub fn checkouts(&self, alias: &str) -> Result<u64, PinDbError> {
        self.inner.checkouts(alias)
    }

    /// Checks out a connection of the database at `index`, for a route decided at `epoch`
    /// ([`Route::epoch`](pindb_core::Route::epoch)), with the index the connection is of: a
    /// write's checkout still waiting when the monitor finds another primary (a set given as
    /// hosts) moves to it, since nothing was sent.
    fn checkout(&self, mut index: usize, mut epoch: u64) -> Result<(usize, Pooled<C>), Error> {
        let started = Instant::now();
        let mut asked = false;
        // r2d2 keeps the last connection error for one `get_timeout` only: the last one seen.
        let mut last_cause = None;
        'target: loop {
            let (pool, db) = self.inner.pool_for_checkout(index, epoch)?;
            let promotion = self.router().watch_promotion(index);
            // r2d2 retries a refused connection until `connect_timeout_ms` (5 s by default):
            // it is waited for in slices. After the first, pindb's own attempt (at most one a
            // second) says whether nothing listens there, and the checkout fails at once with
            // that; after each, a write follows a new primary. A checkout served at once
            // never gets here.
            loop {
                let left = db.pool.connect_timeout.saturating_sub(started.elapsed());
                let slice = if asked { SLICE } else { REFUSED_GRACE };
                if left <= slice {
                    return self.last_checkout(&pool, &db, index, left, last_cause);
                }
                match pool.get_timeout(slice) {
                    Ok(conn) => return Ok((index, conn)),
                    Err(e) => {
                        let message = e.to_string();
                        if let Some((_, cause)) = message.split_once(": ") {
                            last_cause = Some(cause.to_owned());
                        }
                    }
                }
                // Asked after every slice (pindb's own attempts are made at most once a
                // second): a server that stops listening while the checkout waits fails it too.
                asked = true;
                if let Some(refused) = self.router().refused_blocking(index) {
                    return Err(Error::Routing(refused));
                }
                if let Some(moved) = promotion.moved() {
                    tracing::info!(target: "pindb", from = %db.alias, to = %self.router().topology().databases()[moved].alias, "pindb: a write waiting for a connection follows the new primary (nothing was sent)");
                    (index, epoch) = (moved, self.router().topology().epoch(moved));
                    continue 'target;
                }
            }
        }
    }

    /// The checkout's last wait, `left`, and its error: what really happened (`last_cause`: the
    /// cause an earlier slice saw, when this one saw none).
    fn last_checkout(
        &self,
        pool: &Pool<C>,
        db: &Database,
        index: usize,
        left: Duration,
        last_cause: Option<String>,
    ) -> Result<(usize, Pooled<C>), Error> {
        // r2d2 only fails after its timeout; its message carries the last connection error,
        // if a connection attempt failed (else the pool was busy).
        pool.get_timeout(left)
            .map(|conn| (index, conn))
            .map_err(|e| {
                let message = e.to_string();
                let state = pool.state();
                let seen = message.split_once(": ").map(|(_, cause)| cause.to_owned());
                let cause = match seen.or(last_cause) {
                    Some(cause) => cause,
                    // Every connection busy: the pool is exhausted, the server may be fine.
                    None if state.connections >= db.pool.max_size
                        && state.idle_connections == 0 =>
                    {
                        return Error::PoolTimeout {
                            alias: db.alias.clone(),
                            timeout: db.pool.connect_timeout,
                        };
                    }
                    // r2d2's own attempt did not end in time to say why: pindb's does.
                    None => match self.router().diagnose_blocking(index) {
                        Some(unreachable) => return Error::Routing(unreachable),
                        None => format!(
                            "no connection could be made within {:?}",
                            db.pool.connect_timeout
                        ),
                    },
                };
                Error::Routing(PinDbError::Unreachable {
                    alias: db.alias.clone(),
                    role: self.router().topology().role_of(index),
                    url: db.redacted_url(),
                    cause,
                })
            })
    }
}
