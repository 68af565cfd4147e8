//! [`PinDb`]: one SeaORM `DatabaseConnection` (a pool) per alias, and the
//! `ConnectionTrait` / `TransactionTrait` / `StreamTrait` implementations that route each
//! statement with pindb-core's router and classifier.
//!
//! It owns no per-request state: a `DatabaseConnection` acquires a pooled connection per
//! statement, so routing is a choice of pool. Decisions are pindb-core's.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use pindb_core::adapter::{Database, NewPin, PoolTable, ReplicaFailure, Shape};
use pindb_core::{Config, Hint, Operation, Role, Route, Router};
use sea_orm::{
    AccessMode, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr,
    ExecResult, IsolationLevel, QueryResult, Statement, TransactionError, TransactionOptions,
    TransactionTrait,
};

use crate::error::{replica_failure, to_db_err, Error};
use crate::pool::pool;
use crate::unsent::{self, Unsent};

struct Inner {
    router: Router,
    /// Parallel to `router.topology().databases()`; a runtime replica's follows its host.
    conns: PoolTable<DatabaseConnection>,
    /// What [`PinDb::master`] would hand out if `default` were a runtime replica, which the
    /// config never makes it: a reference that cannot panic.
    disconnected: DatabaseConnection,
    /// SeaORM's name of the router's database: how statements are built for it.
    backend: DbBackend,
}

/// The pool a statement was routed to, and the pin its decision made (a write), given back if
/// no connection could be had from it ([`PinDb::settle`]).
struct RoutedPool<'a> {
    conn: Cow<'a, DatabaseConnection>,
    index: usize,
    pin: Option<NewPin>,
}

/// A pool that could not be had: pindb's reason, or SeaORM's.
enum Routed {
    Routing(pindb_core::PinDbError),
    Db(DbErr),
}

impl Routed {
    fn into_db_err(self) -> DbErr {
        match self {
            Routed::Routing(e) => to_db_err(e),
            Routed::Db(e) => e,
        }
    }
}

impl From<pindb_core::PinDbError> for Routed {
    fn from(e: pindb_core::PinDbError) -> Self {
        Routed::Routing(e)
    }
}

/// A routed SeaORM connection. Cheap to clone; clones share the pools.
#[derive(Clone)]
pub struct PinDb {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PinDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinDb")
            .field("router", &self.inner.router)
            .finish()
    }
}

impl PinDb {
    /// Builds the router and one lazily connecting `DatabaseConnection` per alias: a server
    /// that is down at start-up does not stop the application.
    pub async fn connect(config: Config) -> Result<PinDb, Error> {
        PinDb::from_router(Router::new(config)?).await
    }

    /// Like [`PinDb::connect`], from a router you built (delegates...).
    pub async fn from_router(router: Router) -> Result<PinDb, Error> {
        let mut conns = Vec::with_capacity(router.topology().databases().len());
        for db in router.topology().databases() {
            // A runtime replica's pool is built for its host, at its first use.
            let conn = (!db.runtime).then(|| pool(db)).transpose();
            conns.push(conn.map_err(|source| Error::Pool {
                alias: db.alias.clone(),
                url: db.redacted_url(),
                source,
            })?);
        }
        let conns = PoolTable::from_fixed(conns);
        let backend = match router.topology().backend() {
            pindb_core::adapter::Backend::MariaDb => DbBackend::MySql,
            _ => DbBackend::Postgres,
        };
        Ok(PinDb {
            inner: Arc::new(Inner {
                router,
                conns,
                disconnected: DatabaseConnection::default(),
                backend,
            }),
        })
    }

    /// The router.
    pub fn router(&self) -> &Router {
        &self.inner.router
    }

    /// The `default` set's master, for APIs that need a concrete `DatabaseConnection`
    /// (migrations, `ping`, `close`...). Statements sent through it are not routed.
    pub fn master(&self) -> &DatabaseConnection {
        // Router::new refuses a config without a `default` database, so the lookup succeeds.
        let index = self
            .inner
            .router
            .topology()
            .index_of("default")
            .unwrap_or(0);
        match self.conn_now(index) {
            Ok(Cow::Borrowed(conn)) => conn,
            // A master is never a runtime replica.
            _ => &self.inner.disconnected,
        }
    }

    /// The connection of any alias (`default-2`, `analytics`, `legacy`...), unrouted. A
    /// runtime replica's host changes: ask [`PinDb::connection_now`] for it.
    pub fn connection(&self, alias: &str) -> Result<&DatabaseConnection, DbErr> {
        match self.conn_now(self.index_of(alias)?)? {
            Cow::Borrowed(conn) => Ok(conn),
            Cow::Owned(_) => Err(DbErr::Custom(format!(
                "`{alias}` is a runtime replica whose host changes; use connection_now(\"{alias}\")"
            ))),
        }
    }

    /// The connection of any alias as it is now, unrouted: for a runtime replica, a pool of
    /// its current host ([`pindb_core::PinDbError::NoHost`] while it has none).
    pub fn connection_now(&self, alias: &str) -> Result<DatabaseConnection, DbErr> {
        Ok(self.conn_now(self.index_of(alias)?)?.into_owned())
    }

    fn index_of(&self, alias: &str) -> Result<usize, DbErr> {
        let topology = self.inner.router.topology();
        topology.index_of(alias).map_err(to_db_err)
    }

    /// The pool of the database at `index` asked for by name, not by a route.
    fn conn_now(&self, index: usize) -> Result<Cow<'_, DatabaseConnection>, DbErr> {
        let topology = self.inner.router.topology();
        let built = self
            .inner
            .conns
            .get_now(topology, index, |db| pool(db).map_err(Routed::Db));
        built.map(|(conn, _)| conn).map_err(Routed::into_db_err)
    }

    /// The pool of the database at `index` for a route decided at `epoch`: for a runtime
    /// replica, of its host now (built at the first use after the host changed), refused if
    /// a runtime host changed since the route was decided.
    pub(crate) fn conn(
        &self,
        index: usize,
        epoch: u64,
    ) -> Result<Cow<'_, DatabaseConnection>, DbErr> {
        let topology = self.inner.router.topology();
        let build = |db: &Database| pool(db).map_err(Routed::Db);
        let built = self.inner.conns.get(topology, index, epoch, build);
        built.map(|(conn, _)| conn).map_err(Routed::into_db_err)
    }

    /// Runs `stmt` where the router sends it. A read on a replica that the replica refuses,
    /// fails or leaves unanswered for `reads.timeout_ms` runs again where pindb-core says
    /// (another replica, the master): SeaORM's `ConnectionTrait` calls here never run inside
    /// a transaction (those go to a `DatabaseTransaction`), so a retry is always safe.
    async fn run<'s, T, F, Fut>(&'s self, mut stmt: Statement, run: F) -> Result<T, DbErr>
    where
        F: Fn(Cow<'s, DatabaseConnection>, Statement) -> Fut,
        Fut: Future<Output = Result<T, DbErr>>,
    {
        let router = &self.inner.router;
        let shape = router.shape_of(&stmt.sql);
        let route = router.route_shape(&shape).map_err(to_db_err)?;
        let pin = route.pin;
        // On a master, a write (pinning or under a `master()` guard) or a read a replica
        // refused (it may write: a function) is in flight until it lands.
        let mut may_write = shape.op == Operation::Write;
        let (mut index, mut role, mut epoch) = (route.index, route.role, route.epoch);
        let mut tries = 0u32;
        loop {
            let conn = match self.conn(index, epoch) {
                Ok(conn) => conn,
                // A runtime replica removed or replaced after the route was chosen: elsewhere.
                Err(e) if role == Role::Replica && moved(&e) => {
                    let next = router
                        .reroute(index, ReplicaFailure::Moved, tries, &stmt.sql, &e)
                        .map_err(to_db_err)?;
                    match next {
                        Some(next) => {
                            (index, role, epoch) = (next.index, next.role, next.epoch);
                            tries += 1;
                            continue;
                        }
                        None => return Err(e),
                    }
                }
                Err(e) => return self.settle(index, pin, Err(e)),
            };
            if role != Role::Replica {
                let promotion = router.watch_promotion(index);
                // Kept to send it to a new primary, only where a promotion can come.
                let again = promotion.armed().then(|| stmt.clone());
                let statement = unsent::unless_unsent(router, index, &promotion, run(conn, stmt));
                // Dropped before it lands, the write may still commit: its set's position is
                // unknown (sqlx gives no way to wait for a dropped statement).
                let flight = may_write.then(|| router.write_flight(index)).flatten();
                let landed = statement.await;
                if let Some(flight) = flight {
                    flight.landed();
                }
                let sent = match (landed, again) {
                    (Ok(sent), _) => sent,
                    (Err(Unsent::Moved(primary)), Some(copy)) => {
                        let dbs = router.topology().databases();
                        tracing::info!(target: "pindb", from = %dbs[index].alias, to = %dbs[primary].alias, "pindb: a write waiting for a connection follows the new primary (nothing was sent)");
                        (index, epoch) = (primary, router.topology().epoch(primary));
                        stmt = copy;
                        continue;
                    }
                    (Err(unsent), _) => {
                        // Nothing was sent: the write pins nothing.
                        if let Some(pin) = pin {
                            router.write_not_sent(index, pin);
                        }
                        return Err(unsent.into_db_err(role.as_str()));
                    }
                };
                return match self.settle(index, pin, sent) {
                    Err(e)
                        if never_sent(&e)
                            || replica_failure(&e) == Some(ReplicaFailure::Unreachable) =>
                    {
                        Err(match router.diagnose(index).await {
                            Some(unreachable) => to_db_err(unreachable.routed_as(role.as_str())),
                            None => e,
                        })
                    }
                    result => result,
                };
            }
            let pool = conn.clone();
            let result = router
                .watch_replica_read(index, run(conn, stmt.clone()))
                .await;
            let failure = match &result {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => replica_failure(e).map(|f| busy_or(&pool, f)),
                Err(given_up) => Some(given_up.failure()),
            };
            let next = match failure {
                Some(failure) => {
                    may_write |= failure == ReplicaFailure::Refused;
                    // Rendered only if it is logged.
                    let cause: &dyn std::fmt::Display = match &result {
                        Ok(Err(e)) => e,
                        Err(given_up) => given_up,
                        Ok(Ok(_)) => &"",
                    };
                    router
                        .reroute(index, failure, tries, &stmt.sql, cause)
                        .map_err(to_db_err)?
                }
                None => None,
            };
            match (next, result) {
                (Some(next), _) => {
                    (index, role, epoch) = (next.index, next.role, next.epoch);
                    tries += 1;
                }
                (None, Ok(result)) => return result,
                (None, Err(given_up)) => {
                    return Err(DbErr::Custom(format!(
                        "a read on `{}` was given up: {given_up} ({:?}); raise \
                         `reads.timeout_ms` for long reads, or check the server",
                        router.topology().databases()[index].alias,
                        router.config().reads.timeout(),
                    )))
                }
            }
        }
    }

    /// The pool for `op` whatever `sql` looks like; `sql` only feeds delegate hints.
    fn route(&self, op: Operation, sql: &str) -> Result<RoutedPool<'_>, DbErr> {
        let router = &self.inner.router;
        let shape = Shape {
            op,
            ..router.shape_of(sql)
        };
        let route = router.route_shape(&shape).map_err(to_db_err)?;
        self.routed(route)
    }

    /// Read-only transactions may run on a replica; every other one runs on the master.
    fn route_transaction(&self, access: Option<AccessMode>) -> Result<RoutedPool<'_>, DbErr> {
        match access {
            Some(AccessMode::ReadOnly) => self.route(Operation::Read, ""),
            _ => self.route(Operation::Write, ""),
        }
    }

    /// The master of `set` (a set name or an unmanaged alias), under the router's write rules.
    fn route_set(&self, set: &str) -> Result<RoutedPool<'_>, DbErr> {
        let route = self
            .inner
            .router
            .db_for_write(&Hint::alias(set))
            .map_err(to_db_err)?;
        self.routed(route)
    }

    fn routed(&self, route: Route<'_>) -> Result<RoutedPool<'_>, DbErr> {
        let conn = self.conn(route.index, route.epoch);
        let conn = self.settle(route.index, route.pin, conn)?;
        Ok(RoutedPool {
            conn,
            index: route.index,
            pin: route.pin,
        })
    }

    /// The outcome of a statement routed with `pin` (a write's) to the database at `index`:
    /// when no connection could be had (nothing was sent), the pin is given back, so the
    /// write that never happened pins nothing and records no position.
    fn settle<T>(
        &self,
        index: usize,
        pin: Option<NewPin>,
        result: Result<T, DbErr>,
    ) -> Result<T, DbErr> {
        if let (Err(e), Some(pin)) = (&result, pin) {
            if never_sent(e) {
                self.inner.router.write_not_sent(index, pin);
            }
        }
        result
    }

    /// [`PinDb::settle`] for a transaction: only its `BEGIN` can find no connection.
    fn settle_transaction<T, E>(
        &self,
        routed: &RoutedPool<'_>,
        result: Result<T, TransactionError<E>>,
    ) -> Result<T, TransactionError<E>> {
        if let Err(TransactionError::Connection(e)) = &result {
            if let (true, Some(pin)) = (never_sent(e), routed.pin) {
                self.inner.router.write_not_sent(routed.index, pin);
            }
        }
        result
    }

    /// Begins a transaction on the master of `set` instead of the `default` set's: what a
    /// transaction needs when delegates send its tables to another set. Strict: refused
    /// unless `set` is pinned or under `master()`; greedy: pins it.
    ///
    /// SeaORM hands every statement of a transaction straight to its own
    /// `DatabaseTransaction`, so pindb cannot check the statements inside: choose the set
    /// here.
    pub async fn begin_on(&self, set: &str) -> Result<DatabaseTransaction, DbErr> {
        let routed = self.route_set(set)?;
        let begun = routed.conn.begin().await;
        self.settle(routed.index, routed.pin, begun)
    }

    /// [`TransactionTrait::transaction`] on the master of `set` (see
    /// [`PinDb::begin_on`]).
    ///
    /// ```no_run
    /// # async fn demo(db: pindb_seaorm::PinDb) -> Result<(), sea_orm::DbErr> {
    /// use sea_orm::ConnectionTrait;
    ///
    /// db.transaction_on::<_, _, sea_orm::DbErr>("analytics", |txn| {
    ///     Box::pin(async move {
    ///         txn.execute_unprepared("INSERT INTO stats_daily (n) VALUES (1)").await?;
    ///         Ok(())
    ///     })
    /// })
    /// .await
    /// .map_err(|e| sea_orm::DbErr::Custom(e.to_string()))?;
    /// # Ok(()) }
    /// ```
    pub async fn transaction_on<F, T, E>(
        &self,
        set: &str,
        callback: F,
    ) -> Result<T, TransactionError<E>>
    where
        F: for<'c> FnOnce(
                &'c DatabaseTransaction,
            ) -> Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'c>>
            + Send,
        T: Send,
        E: std::fmt::Display + std::fmt::Debug + Send,
    {
        let routed = self.route_set(set).map_err(TransactionError::Connection)?;
        let result = routed.conn.transaction(callback).await;
        self.settle_transaction(&routed, result)
    }
}

#[async_trait::async_trait]
impl ConnectionTrait for PinDb {
    fn get_database_backend(&self) -> DbBackend {
        self.inner.backend
    }

    async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        self.run(
            stmt,
            |conn, stmt| async move { conn.execute_raw(stmt).await },
        )
        .await
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        let router = &self.inner.router;
        let mut routed = self.route(Operation::Write, sql)?;
        // Named by its role when the statement is routed (a primary, after a move).
        let mut role = router.topology().role_of(routed.index);
        loop {
            let promotion = router.watch_promotion(routed.index);
            let statement = routed.conn.execute_unprepared(sql);
            let flight = router.write_flight(routed.index);
            let landed = unsent::unless_unsent(router, routed.index, &promotion, statement).await;
            if let Some(flight) = flight {
                flight.landed();
            }
            match landed {
                Ok(result) => return self.settle(routed.index, routed.pin, result),
                // Nothing was sent: the text runs on the new primary.
                Err(Unsent::Moved(primary)) => {
                    let epoch = router.topology().epoch(primary);
                    let conn = self.conn(primary, epoch);
                    routed = RoutedPool {
                        conn: self.settle(primary, routed.pin, conn)?,
                        index: primary,
                        pin: routed.pin,
                    };
                    role = Role::Master.as_str();
                }
                Err(unsent) => {
                    // Nothing was sent: the write pins nothing.
                    if let Some(pin) = routed.pin {
                        router.write_not_sent(routed.index, pin);
                    }
                    return Err(unsent.into_db_err(role));
                }
            }
        }
    }

    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        self.run(
            stmt,
            |conn, stmt| async move { conn.query_one_raw(stmt).await },
        )
        .await
    }

    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        self.run(
            stmt,
            |conn, stmt| async move { conn.query_all_raw(stmt).await },
        )
        .await
    }
}

#[async_trait::async_trait]
impl TransactionTrait for PinDb {
    type Transaction = DatabaseTransaction;

    async fn begin(&self) -> Result<DatabaseTransaction, DbErr> {
        let routed = self.route_transaction(None)?;
        let begun = routed.conn.begin().await;
        self.settle(routed.index, routed.pin, begun)
    }

    async fn begin_with_config(
        &self,
        isolation_level: Option<IsolationLevel>,
        access_mode: Option<AccessMode>,
    ) -> Result<DatabaseTransaction, DbErr> {
        let routed = self.route_transaction(access_mode)?;
        let begun = routed
            .conn
            .begin_with_config(isolation_level, access_mode)
            .await;
        self.settle(routed.index, routed.pin, begun)
    }

    async fn begin_with_options(
        &self,
        options: TransactionOptions,
    ) -> Result<DatabaseTransaction, DbErr> {
        let routed = self.route_transaction(options.access_mode)?;
        let begun = routed.conn.begin_with_options(options).await;
        self.settle(routed.index, routed.pin, begun)
    }

    async fn transaction<F, T, E>(&self, callback: F) -> Result<T, TransactionError<E>>
    where
        F: for<'c> FnOnce(
                &'c DatabaseTransaction,
            ) -> Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'c>>
            + Send,
        T: Send,
        E: std::fmt::Display + std::fmt::Debug + Send,
    {
        let routed = self
            .route_transaction(None)
            .map_err(TransactionError::Connection)?;
        let result = routed.conn.transaction(callback).await;
        self.settle_transaction(&routed, result)
    }

    async fn transaction_with_config<F, T, E>(
        &self,
        callback: F,
        isolation_level: Option<IsolationLevel>,
        access_mode: Option<AccessMode>,
    ) -> Result<T, TransactionError<E>>
    where
        F: for<'c> FnOnce(
                &'c DatabaseTransaction,
            ) -> Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'c>>
            + Send,
        T: Send,
        E: std::fmt::Display + std::fmt::Debug + Send,
    {
        let routed = self
            .route_transaction(access_mode)
            .map_err(TransactionError::Connection)?;
        let result = routed
            .conn
            .transaction_with_config(callback, isolation_level, access_mode)
            .await;
        self.settle_transaction(&routed, result)
    }
}

/// Whether SeaORM says no connection could be had (a pool timeout, a refused or failed
/// connection attempt): the statement was never sent.
fn never_sent(e: &DbErr) -> bool {
    matches!(e, DbErr::ConnectionAcquire(_) | DbErr::Conn(_)) || moved(e)
}

/// Whether the pool could not be had because a runtime replica's host changed after the
/// route was decided ([`pindb_core::PinDbError::NoHost`]).
fn moved(e: &DbErr) -> bool {
    matches!(
        crate::error::routing_error(e),
        Some(Error::Routing(pindb_core::PinDbError::NoHost { .. }))
    )
}

/// `failure`, unless `pool` has every connection busy: then the replica is fine and merely
/// saturated.
fn busy_or(pool: &DatabaseConnection, failure: ReplicaFailure) -> ReplicaFailure {
    fn full<DB: sea_orm::sqlx::Database>(pool: &sea_orm::sqlx::Pool<DB>) -> bool {
        pool.size() >= pool.options().get_max_connections() && pool.num_idle() == 0
    }
    let full = match pool.get_database_backend() {
        #[cfg(feature = "mariadb")]
        DbBackend::MySql => full(pool.get_mysql_connection_pool()),
        _ => full(pool.get_postgres_connection_pool()),
    };
    match failure {
        ReplicaFailure::Unreachable if full => ReplicaFailure::Busy,
        failure => failure,
    }
}
