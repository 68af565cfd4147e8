//! [`PinDbConnection`]: a routed sync diesel connection over r2d2 checkouts, and its
//! transaction manager.

use std::num::NonZeroU32;

use diesel::connection::{
    AnsiTransactionManager, CacheSize, Connection, ConnectionSealed, DefaultLoadingMode,
    Instrumentation, LoadConnection, SimpleConnection, TransactionManager,
    TransactionManagerStatus,
};
use diesel::query_builder::{Query, QueryFragment, QueryId};
use diesel::result::QueryResult;
use diesel::PgConnection;
use diesel::{ConnectionError, ConnectionResult};
use pindb_core::adapter::Shape;

use super::{Driver, PinDb, Pooled};
use crate::checkouts::{Checkouts, Forward, Held, Slot};
use crate::fallback::{after_attempt, timed_out, Attempted, Next};
use crate::statement;

/// A routed sync diesel connection, from [`PinDb::get`]: `RunQueryDsl`, `transaction`
/// and `save_changes` work on it as on a `PgConnection`. Same rules as the async
/// [`bb8::PinDbConnection`](crate::bb8::PinDbConnection): at most one checkout held, transactions on
/// their set's master, a panicked transaction never reused.
pub struct PinDbConnection<C: Driver = PgConnection> {
    db: PinDb<C>,
    slots: Checkouts<Pooled<C>>,
    idle: TransactionManagerStatus,
}

impl<C: Driver> std::fmt::Debug for PinDbConnection<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinDbConnection")
            .field("held", &self.held_aliases())
            .field("in_transaction", &self.slots.in_transaction())
            .finish()
    }
}

impl<C: Driver> Held for Pooled<C> {
    fn poison(&mut self) {
        AnsiTransactionManager::transaction_manager_status_mut(&mut **self).set_in_error();
    }

    fn depth(&mut self) -> QueryResult<Option<NonZeroU32>> {
        AnsiTransactionManager::transaction_manager_status_mut(&mut **self).transaction_depth()
    }

    fn set_cache(&mut self, size: CacheSize) {
        Connection::set_prepared_statement_cache_size(&mut **self, size);
    }

    fn set_events(&mut self, events: Option<Forward>) {
        match events {
            Some(events) => Connection::set_instrumentation(&mut **self, events),
            None => Connection::set_instrumentation(
                &mut **self,
                diesel::connection::get_default_instrumentation(),
            ),
        }
    }
}

impl<C: Driver> PinDbConnection<C> {
    pub(super) fn new(db: PinDb<C>) -> Self {
        PinDbConnection {
            db,
            slots: Checkouts::new(),
            idle: TransactionManagerStatus::default(),
        }
    }

    /// The alias of the connection this routed connection holds, if any (at most one).
    pub fn held_aliases(&self) -> Vec<&str> {
        self.slots.aliases(self.db.router())
    }

    /// Runs `f` in a transaction on the master of `set` instead of the `default` set's (see
    /// [`bb8::PinDbConnection::transaction_on`](crate::bb8::PinDbConnection::transaction_on)).
    pub fn transaction_on<T, E, F>(&mut self, set: &str, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Self) -> Result<T, E>,
        E: From<diesel::result::Error>,
    {
        RoutedTransactionManager::run(self, Some(set.to_owned()), f)
    }

    /// Runs a read outside a transaction, first on the replica at `index`; if the replica
    /// refuses it or fails, pindb-core says where it runs next (another replica, the master).
    /// Sync connections have no client-side timeout: a hung replica is bounded by the
    /// server's and the network's own timeouts only (see the crate docs).
    fn read_with_fallback<R>(
        &mut self,
        mut index: usize,
        mut run: impl FnMut(&mut C) -> QueryResult<R>,
        refused: impl Fn() -> String,
    ) -> QueryResult<R> {
        let router = self.db.router().clone();
        let mut tries = 0u32;
        loop {
            let attempted = if self.slots.holds(&router, index) {
                Attempted::Done(self.slots.get().and_then(|conn| run(conn)))
            } else {
                self.slots.release();
                match self.db.checkout(index, self.slots.epoch()) {
                    Ok((index, conn)) => {
                        let alias = &router.topology().databases()[index].alias;
                        Attempted::Done(run(self.slots.hold(index, alias, conn)))
                    }
                    Err(e) => Attempted::CheckoutFailed(e),
                }
            };
            if tries > 0 && !self.is_replica(index) {
                // The master (or an unmanaged database): nothing else to try.
                return match attempted {
                    Attempted::Done(result) => result,
                    Attempted::CheckoutFailed(e) => Err(e.into()),
                    // Sync attempts are not timed; said, not assumed.
                    Attempted::Abandoned(_) => Err(timed_out(&router, index)),
                };
            }
            match after_attempt(&router, index, attempted, tries, &refused) {
                Next::Return(result) => return result,
                Next::Diagnose(e) => return Err(e.into()),
                Next::Retry {
                    index: next,
                    epoch,
                    discard,
                    ..
                } => {
                    if discard {
                        self.slots.discard();
                    }
                    self.slots.set_epoch(epoch);
                    index = next;
                    tries += 1;
                }
            }
        }
    }

    fn is_replica(&self, index: usize) -> bool {
        self.db.router().topology().is_replica_now(index)
    }

    fn take(&mut self, slot: Slot) -> QueryResult<&mut C> {
        Ok(match slot {
            Slot::Held => &mut **self.slots.get()?,
            Slot::Checkout(index) => {
                self.slots.release();
                let (index, conn) = match self.db.checkout(index, self.slots.epoch()) {
                    Ok(checked_out) => checked_out,
                    Err(e) => {
                        self.slots.not_sent(self.db.router(), index);
                        return Err(e.routed_as(self.slots.role()).into());
                    }
                };
                let alias = &self.db.router().topology().databases()[index].alias;
                &mut **self.slots.hold(index, alias, conn)
            }
        })
    }

    fn shape<T: QueryFragment<C::Backend> + QueryId>(&self, query: &T) -> QueryResult<Shape> {
        statement::shape::<C::Backend, _>(query, self.db.router())
    }

    fn status_mut(&mut self) -> &mut TransactionManagerStatus {
        self.slots.discard_abandoned();
        match self.slots.tx_conn() {
            Some(conn) => AnsiTransactionManager::transaction_manager_status_mut(&mut **conn),
            None => &mut self.idle,
        }
    }
}

impl<C: Driver> SimpleConnection for PinDbConnection<C> {
    fn batch_execute(&mut self, query: &str) -> QueryResult<()> {
        let shape = self.db.router().shape_of(query);
        let slot = self.slots.decide(self.db.router(), &shape)?;
        if let Some(index) = self.slots.replica_read(self.db.router(), &slot) {
            return self.read_with_fallback(
                index,
                |conn| conn.batch_execute(query),
                || query.to_owned(),
            );
        }
        self.take(slot)?.batch_execute(query)
    }
}

impl<C: Driver> ConnectionSealed for PinDbConnection<C> {}

impl<C: Driver> Connection for PinDbConnection<C> {
    type Backend = C::Backend;
    type TransactionManager = RoutedTransactionManager;

    fn establish(_database_url: &str) -> ConnectionResult<Self> {
        Err(ConnectionError::BadConnection(
            "a PinDbConnection routes between several databases and cannot be established \
             from one URL; build a pindb_diesel::r2d2::PinDb and call `db.get()`"
                .to_owned(),
        ))
    }

    fn execute_returning_count<T>(&mut self, source: &T) -> QueryResult<usize>
    where
        T: QueryFragment<C::Backend> + QueryId,
    {
        let shape = self.shape(source)?;
        let slot = self.slots.decide(self.db.router(), &shape)?;
        if let Some(index) = self.slots.replica_read(self.db.router(), &slot) {
            return self.read_with_fallback(
                index,
                |conn| conn.execute_returning_count(source),
                || statement::refused::<C::Backend, _>(source),
            );
        }
        self.take(slot)?.execute_returning_count(source)
    }

    fn transaction_state(&mut self) -> &mut TransactionManagerStatus {
        self.status_mut()
    }

    fn instrumentation(&mut self) -> &mut dyn Instrumentation {
        self.slots.instrumentation()
    }

    /// Applies to the connection held now and every later checkout; query events name the
    /// alias that served them.
    fn set_instrumentation(&mut self, instrumentation: impl Instrumentation) {
        self.slots
            .set_instrumentation(self.db.router(), Box::new(instrumentation));
    }

    /// Applies to the connection held now and every later checkout.
    fn set_prepared_statement_cache_size(&mut self, size: CacheSize) {
        self.slots.set_cache_size(size);
    }
}

impl<C: Driver> LoadConnection<DefaultLoadingMode> for PinDbConnection<C> {
    type Cursor<'conn, 'query>
        = C::Rows
    where
        Self: 'conn;
    type Row<'conn, 'query>
        = C::OwnedRow
    where
        Self: 'conn;

    fn load<'conn, 'query, T>(
        &'conn mut self,
        source: T,
    ) -> QueryResult<Self::Cursor<'conn, 'query>>
    where
        T: Query + QueryFragment<C::Backend> + QueryId + 'query,
        C::Backend: diesel::expression::QueryMetadata<T::SqlType>,
    {
        let shape = self.shape(&source)?;
        let slot = self.slots.decide(self.db.router(), &shape)?;
        if let Some(index) = self.slots.replica_read(self.db.router(), &slot) {
            return self.read_with_fallback(
                index,
                |conn| C::load_rows(conn, &source),
                || statement::refused::<C::Backend, _>(&source),
            );
        }
        C::load_rows(self.take(slot)?, source)
    }
}

/// Transactions on the master (checked out by `begin`), forwarded to diesel's
/// `AnsiTransactionManager` on that connection; same rules as the async adapter, including
/// a transaction whose closure panicked: the next call discards its connection.
#[derive(Debug, Default, Clone, Copy)]
pub struct RoutedTransactionManager;

impl RoutedTransactionManager {
    /// diesel's transaction loop inside a scope guard that marks the transaction abandoned if
    /// the closure panics.
    fn run<C, T, E, F>(conn: &mut PinDbConnection<C>, set: Option<String>, f: F) -> Result<T, E>
    where
        C: Driver,
        F: FnOnce(&mut PinDbConnection<C>) -> Result<T, E>,
        E: From<diesel::result::Error>,
    {
        conn.slots.recover()?;
        if let Some(set) = set {
            conn.slots.set_next_transaction(set);
        }
        let scope = conn.slots.enter_scope();
        let result = (|| {
            Self::begin_transaction(conn)?;
            match f(&mut *conn) {
                Ok(value) => {
                    Self::commit_transaction(conn)?;
                    Ok(value)
                }
                Err(user_error) => match Self::rollback_transaction(conn) {
                    Ok(()) | Err(diesel::result::Error::BrokenTransactionManager) => {
                        Err(user_error)
                    }
                    Err(rollback_error) => Err(rollback_error.into()),
                },
            }
        })();
        scope.finish();
        result
    }
}

impl<C: Driver> TransactionManager<PinDbConnection<C>> for RoutedTransactionManager {
    type TransactionStateData = TransactionManagerStatus;

    fn begin_transaction(conn: &mut PinDbConnection<C>) -> QueryResult<()> {
        let slot = conn.slots.decide_begin(conn.db.router())?;
        conn.take(slot)?;
        conn.slots.start_transaction();
        let result = AnsiTransactionManager::begin_transaction(&mut **conn.slots.get()?);
        conn.slots.settle();
        result
    }

    fn rollback_transaction(conn: &mut PinDbConnection<C>) -> QueryResult<()> {
        let Some(tx) = conn.slots.for_rollback()? else {
            return Ok(());
        };
        let result = AnsiTransactionManager::rollback_transaction(&mut **tx);
        conn.slots.settle();
        result
    }

    fn commit_transaction(conn: &mut PinDbConnection<C>) -> QueryResult<()> {
        let result = AnsiTransactionManager::commit_transaction(&mut **conn.slots.for_commit()?);
        conn.slots.settle();
        result
    }

    fn transaction_manager_status_mut(
        conn: &mut PinDbConnection<C>,
    ) -> &mut TransactionManagerStatus {
        conn.status_mut()
    }

    fn transaction<F, R, E>(conn: &mut PinDbConnection<C>, callback: F) -> Result<R, E>
    where
        F: FnOnce(&mut PinDbConnection<C>) -> Result<R, E>,
        E: From<diesel::result::Error>,
    {
        Self::run(conn, None, callback)
    }
}

mod save_changes {
    use diesel::associations::HasTable;
    use diesel::dsl::Update;
    use diesel::expression::{is_aggregate, MixedAggregates, ValidGrouping};
    use diesel::query_builder::{AsChangeset, IntoUpdateTarget};
    use diesel::query_dsl::methods::LoadQuery;
    use diesel::query_dsl::UpdateAndFetchResults;
    use diesel::{RunQueryDsl, Table};

    use super::PinDbConnection;

    /// `save_changes` on the routed sync connection: an `UPDATE ... RETURNING`, a write.
    impl<'b, C, Changes, Output> UpdateAndFetchResults<Changes, Output> for PinDbConnection<C>
    where
        C: super::Driver,
        Changes: Copy + AsChangeset<Target = <Changes as HasTable>::Table> + IntoUpdateTarget,
        Update<Changes, Changes>: LoadQuery<'b, PinDbConnection<C>, Output>,
        <Changes::Table as Table>::AllColumns: ValidGrouping<()>,
        <<Changes::Table as Table>::AllColumns as ValidGrouping<()>>::IsAggregate:
            MixedAggregates<is_aggregate::No, Output = is_aggregate::No>,
    {
        fn update_and_fetch(&mut self, changeset: Changes) -> diesel::QueryResult<Output> {
            diesel::update(changeset).set(changeset).get_result(self)
        }
    }
}
