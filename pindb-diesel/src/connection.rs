//! [`PinDbConnection`]: a diesel-async connection that routes every statement.
//!
//! This module owns the connection type, its checkouts (at most one per alias, made lazily on
//! first use) and its transaction manager. Decisions come from pindb-core's router;
//! classification from [`statement`](crate::statement).
//!
//! # How a statement reaches a connection that is not checked out yet
//!
//! diesel-async's `load`/`execute_returning_count` take the query by value, the query is
//! neither `Send` nor `'static`, and the returned future must be `Send`: the query cannot wait
//! across the `.await` of a pool checkout. When the connection the router picks is already
//! held, the query goes straight to it (the common case after the first statement). When it is
//! not, the query is rendered synchronously into diesel's `CollectedQuery` (SQL text plus bind
//! bytes, `Send + 'static`), the connection is checked out, and the collected query runs there.
//! That is how greedy mode's first write reaches the master: it never errors and never touches
//! a replica. The price is one extra rendering of that first statement.
//!
//! Known limitations:
//! - A custom PostgreSQL type (`#[diesel(postgres_type(name = ..))]`) bound in the *first*
//!   statement on a connection not yet checked out needs an OID lookup, which needs a
//!   connection: it fails with [`Error::CustomTypeBeforeCheckout`]. Call
//!   [`PinDbConnection::checkout_for_write`] / [`checkout_for_read`](PinDbConnection::checkout_for_read)
//!   first, or run it in a transaction.
//! - Transactions run on the master of the `default` set (or of the set a delegate picks for a
//!   hint-less write); every statement inside one goes to that connection.
//! - `AsyncConnection::establish` is refused: a routed connection comes from [`PinDb::get`].
//! - Inherent `AsyncPgConnection` methods (`build_transaction`, `cancel_token`, notifications)
//!   are not on the routed connection; use [`PinDb::write`] for a plain master connection.

use std::future::Future;

use diesel::connection::{CacheSize, Instrumentation, TransactionManagerStatus};
use diesel::pg::Pg;
use diesel::query_builder::{AsQuery, QueryFragment, QueryId};
use diesel::result::QueryResult;
use diesel::{ConnectionError, ConnectionResult};
use diesel_async::{
    AnsiTransactionManager, AsyncConnection, AsyncConnectionCore, AsyncPgConnection,
    SimpleAsyncConnection, TransactionManager,
};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use pindb_core::StatementKind;

use crate::checkouts::{Checkouts, Slot};
use crate::pool::{PinDb, Pooled};
use crate::statement::{self, Shape};

/// A routed diesel-async connection, from [`PinDb::get`]. Use it wherever an
/// `AsyncPgConnection` goes: `RunQueryDsl`, `transaction`, `save_changes`...
///
/// ```no_run
/// # async fn demo(db: pindb_diesel::PinDb) -> diesel::QueryResult<()> {
/// use diesel_async::{AsyncConnection, RunQueryDsl};
///
/// pindb_core::scope(async {
///     let mut conn = db.get();
///     diesel::sql_query("SELECT 1").execute(&mut conn).await?;           // a replica
///     conn.transaction(async |conn| {                                   // the master
///         diesel::sql_query("INSERT INTO notes (body) VALUES ('hi')").execute(conn).await
///     }).await?;
///     Ok(())
/// }).await
/// # }
/// ```
pub struct PinDbConnection {
    db: PinDb,
    slots: Checkouts<Pooled>,
    /// The status reported when no transaction is open.
    idle: TransactionManagerStatus,
    instrumentation: Option<Box<dyn Instrumentation>>,
}

impl std::fmt::Debug for PinDbConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinDbConnection")
            .field("held", &self.held_aliases())
            .field("in_transaction", &self.slots.tx().is_some())
            .finish()
    }
}

impl PinDbConnection {
    pub(crate) fn new(db: PinDb) -> Self {
        PinDbConnection {
            db,
            slots: Checkouts::new(),
            idle: TransactionManagerStatus::default(),
            instrumentation: None,
        }
    }

    /// The aliases this connection has checked out so far.
    pub fn held_aliases(&self) -> Vec<&str> {
        self.slots.aliases(self.db.router())
    }

    /// Checks out the connection the next read would use (see the module docs for when this
    /// is needed).
    pub async fn checkout_for_read(&mut self) -> QueryResult<()> {
        self.slot(&Shape::of(StatementKind::Read)).await.map(drop)
    }

    /// Checks out the connection the next write would use, under the router's rules.
    pub async fn checkout_for_write(&mut self) -> QueryResult<()> {
        self.slot(&Shape::of(StatementKind::Write)).await.map(drop)
    }

    fn decide(&self, shape: &Shape) -> QueryResult<Slot> {
        self.slots.decide(self.db.router(), shape)
    }

    /// The position in `held` of the connection for this shape, checking it out if needed.
    async fn slot(&mut self, shape: &Shape) -> QueryResult<usize> {
        match self.decide(shape)? {
            Slot::Held(h) => Ok(h),
            Slot::Checkout(index) => self.hold(index).await,
        }
    }

    async fn hold(&mut self, index: usize) -> QueryResult<usize> {
        let conn = self.db.checkout(index).await?;
        Ok(self.slots.push(index, conn))
    }

    fn alias(&self, index: usize) -> &str {
        &self.db.router().databases()[index].alias
    }

    fn status_mut(&mut self) -> &mut TransactionManagerStatus {
        match self.slots.tx() {
            Some(h) => Ansi::transaction_manager_status_mut(self.slots.get(h)),
            None => &mut self.idle,
        }
    }

    /// After commit/rollback: the routed connection leaves transaction mode once the held
    /// connection has no transaction open.
    fn settle(&mut self) {
        if let Some(h) = self.slots.tx() {
            let depth = Ansi::transaction_manager_status_mut(self.slots.get(h)).transaction_depth();
            self.slots.settle(depth);
        }
    }
}

impl SimpleAsyncConnection for PinDbConnection {
    async fn batch_execute(&mut self, query: &str) -> QueryResult<()> {
        let shape = statement::shape_of_sql(query, self.db.router().has_delegates());
        let h = self.slot(&shape).await?;
        self.slots.get(h).batch_execute(query).await
    }
}

impl AsyncConnectionCore for PinDbConnection {
    type ExecuteFuture<'conn, 'query> = BoxFuture<'conn, QueryResult<usize>>;
    type LoadFuture<'conn, 'query> = BoxFuture<'conn, QueryResult<Self::Stream<'conn, 'query>>>;
    type Stream<'conn, 'query> = <AsyncPgConnection as AsyncConnectionCore>::Stream<'conn, 'query>;
    type Row<'conn, 'query> = <AsyncPgConnection as AsyncConnectionCore>::Row<'conn, 'query>;
    type Backend = Pg;

    fn load<'conn, 'query, T>(&'conn mut self, source: T) -> Self::LoadFuture<'conn, 'query>
    where
        T: AsQuery + 'query,
        T::Query: QueryFragment<Pg> + QueryId + 'query,
    {
        let query = source.as_query();
        let slot = statement::shape(&query, self.db.router().has_delegates())
            .and_then(|shape| self.decide(&shape));
        match slot {
            Err(e) => std::future::ready(Err(e)).boxed(),
            Ok(Slot::Held(h)) => AsyncConnectionCore::load(&mut **self.slots.get(h), query),
            Ok(Slot::Checkout(index)) => match statement::to_owned(&query, self.alias(index)) {
                Err(e) => std::future::ready(Err(e)).boxed(),
                Ok(owned) => async move {
                    let h = self.hold(index).await?;
                    AsyncConnectionCore::load(&mut **self.slots.get(h), owned).await
                }
                .boxed(),
            },
        }
    }

    fn execute_returning_count<'conn, 'query, T>(
        &'conn mut self,
        source: T,
    ) -> Self::ExecuteFuture<'conn, 'query>
    where
        T: QueryFragment<Pg> + QueryId + 'query,
    {
        let slot = statement::shape(&source, self.db.router().has_delegates())
            .and_then(|shape| self.decide(&shape));
        match slot {
            Err(e) => std::future::ready(Err(e)).boxed(),
            Ok(Slot::Held(h)) => {
                AsyncConnectionCore::execute_returning_count(&mut **self.slots.get(h), source)
            }
            Ok(Slot::Checkout(index)) => match statement::to_owned(&source, self.alias(index)) {
                Err(e) => std::future::ready(Err(e)).boxed(),
                Ok(owned) => async move {
                    let h = self.hold(index).await?;
                    AsyncConnectionCore::execute_returning_count(&mut **self.slots.get(h), owned)
                        .await
                }
                .boxed(),
            },
        }
    }
}

impl AsyncConnection for PinDbConnection {
    type TransactionManager = RoutedTransactionManager;

    fn establish(_database_url: &str) -> impl Future<Output = ConnectionResult<Self>> + Send {
        std::future::ready(Err(ConnectionError::BadConnection(
            "a PinDbConnection routes between several databases and cannot be established from \
             one URL; build a pindb_diesel::PinDb from the config and call `db.get()`"
                .to_owned(),
        )))
    }

    fn transaction_state(&mut self) -> &mut TransactionManagerStatus {
        self.status_mut()
    }

    fn instrumentation(&mut self) -> &mut dyn Instrumentation {
        &mut self.instrumentation
    }

    fn set_instrumentation(&mut self, instrumentation: impl Instrumentation) {
        self.instrumentation = Some(Box::new(instrumentation));
    }

    fn set_prepared_statement_cache_size(&mut self, size: CacheSize) {
        for conn in self.slots.iter_mut() {
            conn.set_prepared_statement_cache_size(size);
        }
    }
}

/// Runs transactions on the master (checked out lazily by `begin`), forwarding to diesel's
/// `AnsiTransactionManager` on that connection. Strict router: beginning a transaction on an
/// unpinned set is an `UnpinnedWrite` error; greedy: it pins the set.
#[derive(Debug, Default, Clone, Copy)]
pub struct RoutedTransactionManager;

/// diesel-async's transaction manager, on a pooled `AsyncPgConnection`.
struct Ansi;

impl Ansi {
    fn transaction_manager_status_mut(conn: &mut Pooled) -> &mut TransactionManagerStatus {
        <AnsiTransactionManager as TransactionManager<AsyncPgConnection>>::transaction_manager_status_mut(conn)
    }
    async fn begin_transaction(conn: &mut Pooled) -> QueryResult<()> {
        <AnsiTransactionManager as TransactionManager<AsyncPgConnection>>::begin_transaction(conn)
            .await
    }
    async fn commit_transaction(conn: &mut Pooled) -> QueryResult<()> {
        <AnsiTransactionManager as TransactionManager<AsyncPgConnection>>::commit_transaction(conn)
            .await
    }
    async fn rollback_transaction(conn: &mut Pooled) -> QueryResult<()> {
        <AnsiTransactionManager as TransactionManager<AsyncPgConnection>>::rollback_transaction(
            conn,
        )
        .await
    }
}

impl TransactionManager<PinDbConnection> for RoutedTransactionManager {
    type TransactionStateData = TransactionManagerStatus;

    async fn begin_transaction(conn: &mut PinDbConnection) -> QueryResult<()> {
        let h = match conn.slots.tx() {
            Some(h) => h,
            None => conn.slot(&Shape::of(StatementKind::Write)).await?,
        };
        Ansi::begin_transaction(conn.slots.get(h)).await?;
        conn.slots.set_tx(Some(h));
        Ok(())
    }

    async fn rollback_transaction(conn: &mut PinDbConnection) -> QueryResult<()> {
        let h = conn
            .slots
            .tx()
            .ok_or(diesel::result::Error::NotInTransaction)?;
        let result = Ansi::rollback_transaction(conn.slots.get(h)).await;
        conn.settle();
        result
    }

    async fn commit_transaction(conn: &mut PinDbConnection) -> QueryResult<()> {
        let h = conn
            .slots
            .tx()
            .ok_or(diesel::result::Error::NotInTransaction)?;
        let result = Ansi::commit_transaction(conn.slots.get(h)).await;
        conn.settle();
        result
    }

    fn transaction_manager_status_mut(conn: &mut PinDbConnection) -> &mut TransactionManagerStatus {
        conn.status_mut()
    }
}

mod save_changes {
    use diesel::query_builder::{AsChangeset, IntoUpdateTarget};
    use diesel_async::methods::LoadQuery;
    use diesel_async::{RunQueryDsl, UpdateAndFetchResults};
    use futures_util::future::BoxFuture;
    use futures_util::FutureExt;

    use super::PinDbConnection;

    /// `save_changes` on the routed connection: an `UPDATE ... RETURNING`, routed as a write.
    impl<'b, Changes, Output, Tab, V> UpdateAndFetchResults<Changes, Output> for PinDbConnection
    where
        Output: Send + 'static,
        Changes: Copy
            + AsChangeset<Target = Tab>
            + Send
            + diesel::associations::Identifiable<Table = Tab>,
        Tab: diesel::Table + diesel::query_dsl::methods::FindDsl<Changes::Id> + 'b,
        diesel::dsl::Find<Tab, Changes::Id>: IntoUpdateTarget<Table = Tab, WhereClause = V>,
        diesel::query_builder::UpdateStatement<Tab, V, Changes::Changeset>:
            diesel::query_builder::AsQuery,
        diesel::dsl::Update<Changes, Changes>: LoadQuery<'b, Self, Output>,
        V: Send + 'b,
        Changes::Changeset: Send + 'b,
        Tab::FromClause: Send,
    {
        fn update_and_fetch<'conn, 'changes>(
            &'conn mut self,
            changeset: Changes,
        ) -> BoxFuture<'changes, diesel::QueryResult<Output>>
        where
            Changes: 'changes,
            Changes::Changeset: 'changes,
            'conn: 'changes,
            Self: 'changes,
        {
            async move {
                diesel::update(changeset)
                    .set(changeset)
                    .get_result(self)
                    .await
            }
            .boxed()
        }
    }
}
