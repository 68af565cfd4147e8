//! [`PinDb`]: one SeaORM `DatabaseConnection` (a pool) per alias, and the
//! `ConnectionTrait` / `TransactionTrait` / `StreamTrait` implementations that route each
//! statement with pindb-core's router and classifier.
//!
//! It owns no per-request state: a `DatabaseConnection` acquires a pooled connection per
//! statement, so routing is a choice of pool. Decisions are pindb-core's.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use pindb_core::adapter::{Database, ReplicaFailure, Shape};
use pindb_core::{Config, Hint, Operation, Role, Router};
use sea_orm::{
    AccessMode, ConnectOptions, ConnectionTrait, DatabaseConnection, DatabaseTransaction,
    DbBackend, DbErr, ExecResult, IsolationLevel, QueryResult, QueryStream, Statement, StreamTrait,
    TransactionError, TransactionOptions, TransactionTrait,
};

use crate::error::{replica_failure, to_db_err, Error};

struct Inner {
    router: Router,
    /// Parallel to `router.topology().databases()`.
    conns: Vec<DatabaseConnection>,
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

fn connect_options(db: &Database) -> ConnectOptions {
    let mut opts = ConnectOptions::new(db.url());
    opts.max_connections(db.pool.max_size)
        .acquire_timeout(db.pool.connect_timeout)
        .connect_timeout(db.pool.connect_timeout)
        .connect_lazy(true)
        .sqlx_logging(false);
    if let Some(min) = db.pool.min_idle {
        opts.min_connections(min);
    }
    if db.is_replica() {
        // Safety net: a write that reaches a replica pool fails with SQLSTATE 25006.
        opts.map_sqlx_postgres_opts(|o| o.options([("default_transaction_read_only", "on")]));
    }
    opts
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
            let conn = sea_orm::Database::connect(connect_options(db))
                .await
                .map_err(|source| Error::Pool {
                    alias: db.alias.clone(),
                    url: db.redacted_url(),
                    source,
                })?;
            conns.push(conn);
        }
        Ok(PinDb {
            inner: Arc::new(Inner { router, conns }),
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
        &self.inner.conns[index]
    }

    /// The connection of any alias (`default-2`, `analytics`, `legacy`...), unrouted.
    pub fn connection(&self, alias: &str) -> Result<&DatabaseConnection, DbErr> {
        let index = self
            .inner
            .router
            .topology()
            .index_of(alias)
            .map_err(to_db_err)?;
        Ok(&self.inner.conns[index])
    }

    /// The pool a statement with this text goes to, under the router's rules.
    fn route_sql(&self, sql: &str) -> Result<&DatabaseConnection, DbErr> {
        let route = self.inner.router.route_sql(sql).map_err(to_db_err)?;
        Ok(&self.inner.conns[route.index])
    }

    /// Runs `stmt` where the router sends it. A read on a replica that the replica refuses,
    /// fails or leaves unanswered for `reads.timeout_ms` runs again where pindb-core says
    /// (another replica, the master): SeaORM's `ConnectionTrait` calls here never run inside
    /// a transaction (those go to a `DatabaseTransaction`), so a retry is always safe.
    async fn run<'s, T, F, Fut>(&'s self, stmt: Statement, run: F) -> Result<T, DbErr>
    where
        F: Fn(&'s DatabaseConnection, Statement) -> Fut,
        Fut: Future<Output = Result<T, DbErr>>,
    {
        let router = &self.inner.router;
        let route = router.route_sql(&stmt.sql).map_err(to_db_err)?;
        let (mut index, mut role) = (route.index, route.role);
        let timeout = router.config().reads.timeout();
        let mut tries = 0u32;
        loop {
            let conn = &self.inner.conns[index];
            if role != Role::Replica {
                return match run(conn, stmt).await {
                    Err(e) if replica_failure(&e) == Some(ReplicaFailure::Unreachable) => {
                        Err(match router.diagnose(index).await {
                            Some(unreachable) => to_db_err(unreachable),
                            None => e,
                        })
                    }
                    result => result,
                };
            }
            let result = tokio::time::timeout(timeout, run(conn, stmt.clone())).await;
            let failure = match &result {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => replica_failure(e).map(|f| self.busy_or(index, f)),
                Err(_) => Some(ReplicaFailure::Timeout),
            };
            let next = match failure {
                Some(failure) => router
                    .reroute(index, failure, tries, &stmt.sql)
                    .map_err(to_db_err)?,
                None => None,
            };
            match (next, result) {
                (Some(next), _) => {
                    (index, role) = (next.index, next.role);
                    tries += 1;
                }
                (None, Ok(result)) => return result,
                (None, Err(_)) => {
                    return Err(DbErr::Custom(format!(
                        "no answer from `{}` within {timeout:?} (reads.timeout_ms); raise \
                         `reads.timeout_ms` for long reads, or check the server",
                        router.topology().databases()[index].alias
                    )))
                }
            }
        }
    }

    /// The pool for `op` whatever `sql` looks like; `sql` only feeds delegate hints.
    fn route(&self, op: Operation, sql: &str) -> Result<&DatabaseConnection, DbErr> {
        let router = &self.inner.router;
        let shape = Shape {
            op,
            ..router.shape_of(sql)
        };
        let route = router.route_shape(&shape).map_err(to_db_err)?;
        Ok(&self.inner.conns[route.index])
    }

    /// `failure`, unless the pool of `index` has every connection busy: then the replica is
    /// fine and merely saturated.
    fn busy_or(&self, index: usize, failure: ReplicaFailure) -> ReplicaFailure {
        let pool = self.inner.conns[index].get_postgres_connection_pool();
        let full = pool.size() >= pool.options().get_max_connections() && pool.num_idle() == 0;
        match failure {
            ReplicaFailure::Unreachable if full => ReplicaFailure::Busy,
            failure => failure,
        }
    }

    /// Read-only transactions may run on a replica; every other one runs on the master.
    fn route_transaction(&self, access: Option<AccessMode>) -> Result<&DatabaseConnection, DbErr> {
        match access {
            Some(AccessMode::ReadOnly) => self.route(Operation::Read, ""),
            _ => self.route(Operation::Write, ""),
        }
    }

    /// The master of `set` (a set name or an unmanaged alias), under the router's write rules.
    fn route_set(&self, set: &str) -> Result<&DatabaseConnection, DbErr> {
        let route = self
            .inner
            .router
            .db_for_write(&Hint::alias(set))
            .map_err(to_db_err)?;
        Ok(&self.inner.conns[route.index])
    }

    /// Begins a transaction on the master of `set` instead of the `default` set's: what a
    /// transaction needs when delegates send its tables to another set. Strict: refused
    /// unless `set` is pinned or under `master()`; greedy: pins it.
    ///
    /// SeaORM hands every statement of a transaction straight to its own
    /// `DatabaseTransaction`, so pindb cannot check the statements inside: choose the set
    /// here.
    pub async fn begin_on(&self, set: &str) -> Result<DatabaseTransaction, DbErr> {
        self.route_set(set)?.begin().await
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
        self.route_set(set)
            .map_err(TransactionError::Connection)?
            .transaction(callback)
            .await
    }
}

#[async_trait::async_trait]
impl ConnectionTrait for PinDb {
    fn get_database_backend(&self) -> DbBackend {
        DbBackend::Postgres
    }

    async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        self.run(stmt, |conn, stmt| conn.execute_raw(stmt)).await
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        self.route(Operation::Write, sql)?
            .execute_unprepared(sql)
            .await
    }

    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        self.run(stmt, |conn, stmt| conn.query_one_raw(stmt)).await
    }

    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        self.run(stmt, |conn, stmt| conn.query_all_raw(stmt)).await
    }
}

impl StreamTrait for PinDb {
    type Stream<'a> = QueryStream;

    fn get_database_backend(&self) -> DbBackend {
        DbBackend::Postgres
    }

    fn stream_raw<'a>(
        &'a self,
        stmt: Statement,
    ) -> Pin<Box<dyn Future<Output = Result<QueryStream, DbErr>> + 'a + Send>> {
        match self.route_sql(&stmt.sql) {
            Ok(conn) => conn.stream_raw(stmt),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }
}

#[async_trait::async_trait]
impl TransactionTrait for PinDb {
    type Transaction = DatabaseTransaction;

    async fn begin(&self) -> Result<DatabaseTransaction, DbErr> {
        self.route_transaction(None)?.begin().await
    }

    async fn begin_with_config(
        &self,
        isolation_level: Option<IsolationLevel>,
        access_mode: Option<AccessMode>,
    ) -> Result<DatabaseTransaction, DbErr> {
        self.route_transaction(access_mode)?
            .begin_with_config(isolation_level, access_mode)
            .await
    }

    async fn begin_with_options(
        &self,
        options: TransactionOptions,
    ) -> Result<DatabaseTransaction, DbErr> {
        self.route_transaction(options.access_mode)?
            .begin_with_options(options)
            .await
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
        self.route_transaction(None)
            .map_err(TransactionError::Connection)?
            .transaction(callback)
            .await
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
        self.route_transaction(access_mode)
            .map_err(TransactionError::Connection)?
            .transaction_with_config(callback, isolation_level, access_mode)
            .await
    }
}
