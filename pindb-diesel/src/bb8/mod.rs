//! [`PinDb`]: one bb8 pool of diesel-async connections per alias (`AsyncPgConnection`, or
//! `AsyncMysqlConnection` for MariaDB: the [`Driver`]), and the checkouts the routed
//! connection and the explicit handles make from them.
//!
//! This module owns pool construction (settings from the config; logical and emulated
//! replicas opened read-only by a startup parameter) and checkout accounting. It makes no routing decision
//! of its own: callers pass the router's [`Route`](pindb_core::Route).

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::{Duration, Instant};

use diesel_async::pooled_connection::{ManagerConfig, PoolError};
use diesel_async::AsyncPgConnection;
use futures_util::FutureExt;
use pindb_core::adapter::Database;
use pindb_core::{Config, Hint, PinDbError, Router};

use crate::error::Error;
use crate::fallback::checkout_error;
use crate::pools::Pools;

mod attempt;
mod connection;
mod driver;
mod flight;
mod position;
mod read_only;
mod save_changes;
mod transaction;

pub use connection::PinDbConnection;
pub use driver::Driver;
pub use read_only::{ReadOnlyQuery, ReplicaConnection};
pub use transaction::{RoutedTransactionManager, TransactionCallback};

/// A pooled diesel-async connection, as bb8 hands it out.
pub type Pooled<C = AsyncPgConnection> = bb8::PooledConnection<'static, Manager<C>>;

/// The connection manager of pindb's bb8 pools: diesel-async's for `C`
/// (`AsyncDieselConnectionManager<C>`, with pindb's connection set-up).
pub struct Manager<C: Driver>(C::Manager);

impl<C: Driver> std::fmt::Debug for Manager<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager").finish_non_exhaustive()
    }
}

impl<C: Driver> bb8::ManageConnection for Manager<C> {
    type Connection = C;
    type Error = PoolError;

    fn connect(&self) -> impl Future<Output = Result<C, PoolError>> + Send {
        self.0.connect()
    }

    fn is_valid(&self, conn: &mut C) -> impl Future<Output = Result<(), PoolError>> + Send {
        self.0.is_valid(conn)
    }

    fn has_broken(&self, conn: &mut C) -> bool {
        self.0.has_broken(conn)
    }
}

/// A bb8 pool and its last connection failure: bb8 gives a failed connection's error to no
/// checkout (one that waited only times out), so a checkout that timed out says it from here.
struct Pool<C: Driver> {
    pool: bb8::Pool<Manager<C>>,
    failed: Arc<Mutex<Option<(Instant, String)>>>,
}

impl<C: Driver> Clone for Pool<C> {
    fn clone(&self) -> Self {
        Pool {
            pool: self.pool.clone(),
            failed: Arc::clone(&self.failed),
        }
    }
}

impl<C: Driver> Pool<C> {
    /// The last connection failure, if within `window` (a checkout's own wait: an older
    /// one says nothing about it).
    fn failed_within(&self, window: Duration) -> Option<String> {
        let failed = self.failed.lock().unwrap_or_else(PoisonError::into_inner);
        let (at, why) = failed.as_ref()?;
        (at.elapsed() <= window).then(|| why.clone())
    }
}

/// The entry point: the router plus a pool per alias. Cheap to clone.
///
/// `C` is the diesel-async connection of the sets' database: `AsyncPgConnection` (the
/// default, built with [`PinDb::new`]) or, with the feature `mariadb`, `AsyncMysqlConnection`
/// (built with [`PinDb::from_config`]: `PinDb::<AsyncMysqlConnection>::from_config(config)`).
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use diesel_async::RunQueryDsl;
/// use pindb_diesel::bb8::PinDb;
///
/// let db = PinDb::new(pindb_core::Config::load("pindb.toml")?)?; // inside the runtime
/// pindb_core::scope(async {
///     let mut conn = db.get();
///     // Ordinary diesel-async code: reads go to a replica, writes to the master.
///     let n: i64 = diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>("1")).get_result(&mut conn).await?;
///     Ok::<_, diesel::result::Error>(n)
/// }).await?;
/// # Ok(()) }
/// ```
pub struct PinDb<C: Driver = AsyncPgConnection> {
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

impl PinDb {
    /// Builds the router and one pool per alias, for PostgreSQL sets. No connection is opened
    /// until first use, so a server that is down at start-up does not stop the application.
    /// Must be called inside a tokio runtime (bb8 starts its reaper task there):
    /// [`Error::NoRuntime`] otherwise.
    pub fn new(config: Config) -> Result<PinDb, Error> {
        PinDb::from_config(config)
    }

    /// Like [`PinDb::new`], from a router you built (delegates, a shared global router...).
    pub fn from_router(router: Router) -> Result<PinDb, Error> {
        PinDb::with_router(router)
    }
}

impl<C: Driver> PinDb<C> {
    /// [`PinDb::new`] for the connection type `C`: `PinDb::<AsyncMysqlConnection>::from_config`
    /// for MariaDB sets. A set of another database is refused
    /// ([`Error::OtherDatabase`]).
    pub fn from_config(config: Config) -> Result<PinDb<C>, Error> {
        PinDb::with_router(Router::new(config)?)
    }

    /// [`PinDb::from_router`] for the connection type `C`.
    pub fn with_router(router: Router) -> Result<PinDb<C>, Error> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::NoRuntime);
        }
        crate::pools::check_backend::<C::Backend>(&router)?;
        Ok(PinDb {
            inner: Arc::new(Pools::new(router, build_pool::<C>)),
        })
    }

    /// The router.
    pub fn router(&self) -> &Router {
        self.inner.router()
    }

    /// A routed connection. Nothing is checked out yet: the first read checks out the
    /// context's replica, the first write (or transaction) the master, each at most once.
    pub fn get(&self) -> PinDbConnection<C> {
        PinDbConnection::new(self.clone())
    }

    /// An explicit read connection: the router's read route for `hint` (the context's
    /// replica, or the master when the set is pinned). A plain pooled connection, no routing.
    pub async fn read_with(&self, hint: &Hint<'_>) -> Result<Pooled<C>, Error> {
        let route = self.inner.router().db_for_read(hint)?;
        let checkout = self.checkout_diagnosed(route.index, route.epoch).await;
        checkout.map_err(|e| e.routed_as(route.role))
    }

    /// [`PinDb::read_with`] for the `default` set.
    pub async fn read(&self) -> Result<Pooled<C>, Error> {
        self.read_with(&Hint::default()).await
    }

    /// An explicit write connection: the master of the hinted set, under the router's rules
    /// (strict: an error if the set is not pinned; greedy: pins it).
    pub async fn write_with(&self, hint: &Hint<'_>) -> Result<Pooled<C>, Error> {
        let route = self.inner.router().db_for_write(hint)?;
        let checkout = self.checkout_diagnosed(route.index, route.epoch).await;
        if checkout.is_err() {
            self.inner.not_sent(&route);
        }
        checkout.map_err(|e| e.routed_as(route.role))
    }

    /// [`PinDb::write_with`] for the `default` set.
    pub async fn write(&self) -> Result<Pooled<C>, Error> {
        self.write_with(&Hint::default()).await
    }

    /// A connection that only accepts queries that are reads by construction
    /// ([`ReadOnlyQuery`]), on the read route for `hint`.
    pub async fn replica_with(&self, hint: &Hint<'_>) -> Result<ReplicaConnection<C>, Error> {
        Ok(ReplicaConnection::new(self.read_with(hint).await?))
    }

    /// [`PinDb::replica_with`] for the `default` set.
    pub async fn replica(&self) -> Result<ReplicaConnection<C>, Error> {
        self.replica_with(&Hint::default()).await
    }

    /// How many checkouts of `alias`'s pool have been asked for so far.
    pub fn checkouts(&self, alias: &str) -> Result<u64, PinDbError> {
        self.inner.checkouts(alias)
    }

    /// [`PinDb::checkout`], with a failure explained: [`PinDbError::Unreachable`] (what really
    /// happened) when the server cannot be reached.
    async fn checkout_diagnosed(&self, index: usize, epoch: u64) -> Result<Pooled<C>, Error> {
        match self.checkout(index, epoch).await {
            Ok((_, conn)) => Ok(conn),
            Err(e) => Err(checkout_error(self.router(), index, e).await),
        }
    }

    /// Checks out a connection of the database at `index` in `router.topology().databases()`,
    /// for a route decided at `epoch` ([`Route::epoch`](pindb_core::Route::epoch)). A write's
    /// checkout still waiting when the monitor finds another primary (a set given as hosts)
    /// moves to it: nothing was sent. The index the connection is of comes with it.
    pub(crate) async fn checkout(
        &self,
        mut index: usize,
        mut epoch: u64,
    ) -> Result<(usize, Pooled<C>), Error> {
        loop {
            let (pool, db) = self.inner.pool_for_checkout(index, epoch)?;
            let promotion = self.router().watch_promotion(index);
            let get = pool.pool.get_owned();
            tokio::pin!(get);
            // Handed over at once: no timer.
            let first = std::future::poll_fn(|cx| Poll::Ready(get.as_mut().poll(cx))).await;
            let got = match first {
                Poll::Ready(got) => got,
                // bb8 retries a refused connection until `connect_timeout_ms` (5 s by
                // default): after a short grace, pindb's own attempt (at most one a second)
                // says whether nothing listens there, and then the checkout fails at once with
                // that. A server that answers, is slow, full or hangs leaves the pool its own
                // timeout, unless the monitor meanwhile finds another primary for a write
                // waiting here. The pool's check of a connection (`SELECT 1`) makes most
                // checkouts wait here: one timer per checkout, none per statement.
                Poll::Pending => tokio::select! {
                    got = &mut get => got,
                    refused = self.router().refused_while_waiting(index) => {
                        return Err(Error::Routing(refused));
                    }
                    moved = promotion.wait() => {
                        tracing::info!(target: "pindb", from = %db.alias, to = %self.router().topology().databases()[moved].alias, "pindb: a write waiting for a connection follows the new primary (nothing was sent)");
                        (index, epoch) = (moved, self.router().topology().epoch(moved));
                        continue;
                    }
                },
            };
            return got.map(|conn| (index, conn)).map_err(|e| match e {
                // Every connection busy: the pool is exhausted, the server may be fine.
                bb8::RunError::TimedOut
                    if pool.pool.state().connections >= db.pool.max_size
                        && pool.pool.state().idle_connections == 0 =>
                {
                    Error::PoolTimeout {
                        alias: db.alias.clone(),
                        timeout: db.pool.connect_timeout,
                    }
                }
                bb8::RunError::TimedOut => {
                    let within = db.pool.connect_timeout;
                    let why = match pool.failed_within(within) {
                        Some(last) => format!(
                            "no connection could be made within {within:?}; the last attempt: {last}"
                        ),
                        None => format!("no connection could be made within {within:?}"),
                    };
                    Error::connect(&db, why)
                }
                bb8::RunError::User(e) => Error::connect(
                    &db,
                    match e {
                        PoolError::ConnectionError(e) => e.to_string(),
                        PoolError::QueryError(e) => e.to_string(),
                    },
                ),
            });
        }
    }
}

fn build_pool<C: Driver>(db: &Database) -> Pool<C> {
    let mut config = ManagerConfig::default();
    // The whole set-up is bounded: a server can also hang after the handshake. (A replica
    // that would accept writes is opened read-only by a startup parameter in `pool_url`:
    // nothing is set on the session, which a pooler could hand to another client.)
    // Ended before the checkout's own wait, so that the failure is kept by the time the
    // checkout that waited for it times out and says it.
    let limit = db.pool.connect_timeout.mul_f64(0.9);
    let server = db.server.is_some().then(|| Arc::new(db.clone()));
    let failed = Arc::new(Mutex::new(None));
    let record = Arc::clone(&failed);
    config.custom_setup = Box::new(move |url| {
        let open = C::open(url.to_owned(), server.clone(), limit);
        let record = Arc::clone(&record);
        async move {
            let opened = tokio::time::timeout(limit, open).await.unwrap_or_else(|_| {
                Err(diesel::ConnectionError::BadConnection(format!(
                    "no answer within {limit:?} while setting up the connection"
                )))
            });
            // Once per new connection, not per checkout. A success clears it: an older
            // failure would be told as the last attempt's.
            let mut last = record.lock().unwrap_or_else(PoisonError::into_inner);
            *last = opened
                .as_ref()
                .err()
                .map(|e| (Instant::now(), e.to_string()));
            opened
        }
        .boxed()
    });
    let manager = Manager(C::manager(db.pool_url(), config));
    let pool = bb8::Pool::builder()
        .max_size(db.pool.max_size)
        .min_idle(db.pool.min_idle)
        .connection_timeout(db.pool.connect_timeout)
        .build_unchecked(manager);
    Pool { pool, failed }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checkout that timed out can say why the pool made no connection: bb8 hands the
    /// failure to no waiter, the pool keeps the last one.
    #[tokio::test]
    async fn a_pool_keeps_its_last_connection_failure() {
        let hole = pindb_testkit::Proxy::black_hole().await;
        let url = format!("postgres://app@127.0.0.1:{}/app", hole.port());
        let config = Config::single_set(url.as_str(), Vec::<String>::new());
        let mut db = config.databases().unwrap().remove(0);
        db.pool.connect_timeout = Duration::from_millis(300);
        db.pool.min_idle = None;
        let pool = build_pool::<AsyncPgConnection>(&db);
        let window = Duration::from_secs(60);
        assert_eq!(pool.failed_within(window), None);
        assert!(matches!(
            pool.pool.get().await,
            Err(bb8::RunError::TimedOut)
        ));
        // The set-up's own timeout ends with bb8's wait or just after it.
        let mut why = None;
        for _ in 0..100 {
            why = pool.failed_within(window);
            if why.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let why = why.expect("the failure was kept");
        assert!(why.contains("no answer within 270ms"), "{why}");
        assert_eq!(
            pool.failed_within(Duration::ZERO),
            None,
            "an older one says nothing"
        );
    }
}
