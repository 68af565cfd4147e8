//! [`RoutedTransactionManager`]: transactions of the routed connection, on the master, with
//! abandoned ones (dropped futures, panics) never reused.

use std::future::Future;

use diesel::connection::TransactionManagerStatus;
use diesel::result::QueryResult;
use diesel_async::{AnsiTransactionManager, TransactionManager};

use super::{Driver, PinDbConnection, Pooled};
use crate::checkouts::Slot;

/// The callback of a transaction, with its future named so it can be required `Send`: the
/// same shape as diesel-async's own bound (which cannot be named outside diesel-async).
/// Every `async |conn| { .. }` closure implements it.
pub trait TransactionCallback<T, R>:
    AsyncFnOnce(T) -> R + FnOnce(T) -> <Self as TransactionCallback<T, R>>::Fut
{
    /// The future the callback returns.
    type Fut: Future<Output = R>;
}

impl<F, T, Fut, R> TransactionCallback<T, R> for F
where
    F: AsyncFnOnce(T) -> R + FnOnce(T) -> Fut,
    Fut: Future<Output = R>,
{
    type Fut = Fut;
}

/// Runs transactions on the master (checked out lazily by `begin`), forwarding to diesel's
/// `AnsiTransactionManager` on that connection. Strict router: beginning a transaction on an
/// unpinned set is an `UnpinnedWrite` error; greedy: it pins the set.
///
/// A `transaction(..)` whose future is dropped (a timeout, a client that went away,
/// `select!`) or whose closure panics leaves nothing behind: the next call on the routed
/// connection discards the connection that held it (the server rolls it back) and routes
/// normally again; an enclosing transaction, if any, fails with
/// [`Error::TransactionAbandoned`](crate::Error::TransactionAbandoned).
#[derive(Debug, Default, Clone, Copy)]
pub struct RoutedTransactionManager;

/// diesel-async's transaction manager, on a pooled connection.
pub(super) struct Ansi;

impl Ansi {
    pub(super) fn transaction_manager_status_mut<C: Driver>(
        conn: &mut Pooled<C>,
    ) -> &mut TransactionManagerStatus {
        <AnsiTransactionManager as TransactionManager<C>>::transaction_manager_status_mut(conn)
    }
    async fn begin_transaction<C: Driver>(conn: &mut Pooled<C>) -> QueryResult<()> {
        <AnsiTransactionManager as TransactionManager<C>>::begin_transaction(conn).await
    }
    async fn commit_transaction<C: Driver>(conn: &mut Pooled<C>) -> QueryResult<()> {
        <AnsiTransactionManager as TransactionManager<C>>::commit_transaction(conn).await
    }
    async fn rollback_transaction<C: Driver>(conn: &mut Pooled<C>) -> QueryResult<()> {
        <AnsiTransactionManager as TransactionManager<C>>::rollback_transaction(conn).await
    }
}

impl RoutedTransactionManager {
    /// diesel-async's transaction loop, inside a scope guard that marks the transaction
    /// abandoned if this future is dropped or the callback panics before it ends.
    pub(super) fn run<'a, 'conn, C, R, E, F>(
        conn: &'conn mut PinDbConnection<C>,
        set: Option<String>,
        callback: F,
    ) -> impl Future<Output = Result<R, E>> + Send + 'conn
    where
        C: Driver,
        for<'r> F: AsyncFnOnce(&'r mut PinDbConnection<C>) -> Result<R, E>
            + TransactionCallback<&'r mut PinDbConnection<C>, Result<R, E>, Fut: Send>
            + Send
            + 'a,
        E: From<diesel::result::Error> + Send,
        R: Send,
        'a: 'conn,
    {
        async move {
            conn.slots.recover()?;
            if let Some(set) = set {
                conn.slots.set_next_transaction(set);
            }
            let scope = conn.slots.enter_scope();
            let result = async {
                Self::begin_transaction(conn).await?;
                match callback(&mut *conn).await {
                    Ok(value) => {
                        Self::commit_transaction(conn).await?;
                        Ok(value)
                    }
                    Err(user_error) => match Self::rollback_transaction(conn).await {
                        Ok(()) | Err(diesel::result::Error::BrokenTransactionManager) => {
                            Err(user_error)
                        }
                        Err(rollback_error) => Err(rollback_error.into()),
                    },
                }
            }
            .await;
            scope.finish();
            result
        }
    }
}

impl<C: Driver> TransactionManager<PinDbConnection<C>> for RoutedTransactionManager {
    type TransactionStateData = TransactionManagerStatus;

    async fn begin_transaction(conn: &mut PinDbConnection<C>) -> QueryResult<()> {
        if let Slot::Checkout(index) = conn.slots.decide_begin(conn.db.router())? {
            conn.hold(index).await?;
        }
        // Marked before BEGIN is sent: dropped while in flight, the connection is poisoned
        // (and, for a driver a dropped statement breaks, the transaction abandoned at once:
        // a hand-begun one has no scope to mark it).
        conn.slots.start_transaction();
        let (tx, flight) = conn.slots.flight(C::DROP_BREAKS, None)?;
        let result = Ansi::begin_transaction(tx).await;
        flight.land();
        conn.slots.settle();
        result
    }

    async fn rollback_transaction(conn: &mut PinDbConnection<C>) -> QueryResult<()> {
        if conn.slots.for_rollback()?.is_none() {
            return Ok(());
        }
        let (tx, flight) = conn.slots.flight(C::DROP_BREAKS, None)?;
        let result = Ansi::rollback_transaction(tx).await;
        flight.land();
        conn.slots.settle();
        result
    }

    async fn commit_transaction(conn: &mut PinDbConnection<C>) -> QueryResult<()> {
        conn.slots.for_commit()?;
        // The transaction's writes land with its COMMIT: dropped in flight, it may still
        // commit.
        let write = conn.slots.commit_flight(conn.db.router());
        let (tx, flight) = conn.slots.flight(C::DROP_BREAKS, write)?;
        let result = Ansi::commit_transaction(tx).await;
        flight.land();
        conn.slots.settle();
        result
    }

    fn transaction_manager_status_mut(
        conn: &mut PinDbConnection<C>,
    ) -> &mut TransactionManagerStatus {
        conn.status_mut()
    }

    fn transaction<'a, 'conn, F, R, E>(
        conn: &'conn mut PinDbConnection<C>,
        callback: F,
    ) -> impl Future<Output = Result<R, E>> + Send + 'conn
    where
        for<'r> F: AsyncFnOnce(&'r mut PinDbConnection<C>) -> Result<R, E>
            + TransactionCallback<&'r mut PinDbConnection<C>, Result<R, E>, Fut: Send>
            + Send
            + 'a,
        E: From<diesel::result::Error> + Send,
        R: Send,
        'a: 'conn,
    {
        Self::run(conn, None, callback)
    }
}
