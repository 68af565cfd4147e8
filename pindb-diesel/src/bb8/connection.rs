//! [`PinDbConnection`]: a diesel-async connection that routes every statement.
//!
//! This module owns the connection type, its checkouts (at most one per alias, made lazily on
//! first use) and its transaction manager. Decisions come from pindb-core's router;
//! classification from the private `statement` module.
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
//! # What pindb guarantees beyond a plain diesel-async connection
//!
//! - **Cancellation and panics.** A `transaction(..)` whose future is dropped (a timeout, a
//!   client that disconnects, `select!`) or whose closure panics leaves a mark; the next call
//!   on the routed connection discards the database connection that held it (bb8 closes it;
//!   the server rolls the transaction back; if the future was dropped while `COMMIT` was in
//!   flight the outcome is unknown, as with any client) and routes normally again: strict checks apply,
//!   nothing runs inside the dead transaction, and a statement that returns `Ok` is
//!   committed. If an enclosing transaction is still running (an inner `transaction` dropped
//!   inside a `select!`), its next statement and its commit fail with
//!   [`Error::TransactionAbandoned`] rather than go on
//!   outside a transaction; so does a transaction begun by hand (`begin_test_transaction`)
//!   around it, until its own commit or rollback. A routed connection dropped with a transaction open never returns
//!   that connection to the pool. (A plain diesel-async connection that outlives a cancelled
//!   transaction stays inside it; only a pool that checks it on return protects you.)
//! - **No hold-and-wait.** A routed connection holds at most one checkout. Before it waits for
//!   another pool it gives the idle one back, so requests that take two small pools in
//!   opposite orders (read then write, `master()` then a plain read) cannot deadlock. The price:
//!   a connection that alternates between a replica and the master checks out again each time
//!   it switches. A transaction never checks out: its statements stay on its connection.
//! - **A transaction runs on one database.** `transaction(..)` opens on the master of the
//!   `default` set (or of the set a delegate picks for a hint-less write);
//!   [`PinDbConnection::transaction_on`] opens on another set's master. With delegates, a
//!   statement inside the transaction that belongs to another database is refused with
//!   [`Error::OtherDatabaseInTransaction`](crate::Error::OtherDatabaseInTransaction) instead of
//!   running on the wrong one (a statement whose read *or* write route is the transaction's
//!   database is accepted). Delegates must therefore claim every table of a non-default set:
//!   an unclaimed table belongs to `default`, and is refused inside another set's
//!   transaction. Strict mode checks the set the transaction really runs on.
//! - **Settings follow every checkout.** `set_prepared_statement_cache_size` and
//!   `set_instrumentation` apply to the connection held now and to every later checkout (and
//!   are undone when the connection goes back to its pool); query events name the alias that
//!   served them: `/* pindb: default-1 */ SELECT ...`. The first statement of a checkout is
//!   prepared under the same cache key as the typed query, so it is prepared once.
//!
//! # Known limitations
//!
//! - A custom PostgreSQL type (`#[diesel(postgres_type(name = ..))]`) bound in the *first*
//!   statement on a connection not yet checked out needs an OID lookup, which needs a
//!   connection: it fails with [`Error::CustomTypeBeforeCheckout`]. Call
//!   [`PinDbConnection::checkout_for_write`] / [`checkout_for_read`](PinDbConnection::checkout_for_read)
//!   first, or run it in a transaction.
//! - Session state set with `batch_execute("SET ...")` outside a transaction lives on one
//!   checkout; it is lost when the routed connection switches database. Use `SET LOCAL` inside
//!   a transaction, or the pool's connection setup.
//! - Without delegates pindb cannot tell which set a statement belongs to, so inside a
//!   transaction every statement runs on the transaction's database.
//! - Manual `TransactionManager::begin_transaction` calls (outside `transaction(..)`) are not
//!   tracked for cancellation; the pool still discards a connection returned with a
//!   transaction open.
//! - `AsyncConnection::establish` is refused: a routed connection comes from [`PinDb::get`].
//! - Inherent `AsyncPgConnection` methods (`build_transaction`, `cancel_token`, notifications)
//!   are not on the routed connection; use [`PinDb::write`] for a plain master connection.

use std::future::Future;

use diesel::connection::{CacheSize, Instrumentation, TransactionManagerStatus};
use diesel::query_builder::{AsQuery, QueryFragment, QueryId};
use diesel::result::QueryResult;
use diesel::{ConnectionError, ConnectionResult};
use diesel_async::{
    AsyncConnection, AsyncConnectionCore, AsyncPgConnection, SimpleAsyncConnection,
};
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, TryFutureExt};
use pindb_core::adapter::Shape;
use pindb_core::Operation;

use super::driver::drained;
use super::driver::Learn;
use super::flight::in_flight;
use super::{Driver, PinDb, Pooled};
use crate::checkouts::{Checkouts, Slot};

use crate::error::Error;
use crate::fallback::{after_attempt, checkout_error, timed_out, Attempted, Next};
use crate::statement::{self, OwnedQuery};

use super::attempt::{Attempt, Batch, Execute, Load};
use super::transaction::{Ansi, RoutedTransactionManager, TransactionCallback};

/// A routed diesel-async connection, from [`PinDb::get`]. Use it wherever an
/// `AsyncPgConnection` goes: `RunQueryDsl`, `transaction`, `save_changes`...
///
/// ```no_run
/// # async fn demo(db: pindb_diesel::bb8::PinDb) -> diesel::QueryResult<()> {
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
pub struct PinDbConnection<C: Driver = AsyncPgConnection> {
    pub(super) db: PinDb<C>,
    pub(super) slots: Checkouts<Pooled<C>>,
    /// The status reported when no transaction is open.
    pub(super) idle: TransactionManagerStatus,
}

impl<C: Driver> std::fmt::Debug for PinDbConnection<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinDbConnection")
            .field("held", &self.held_aliases())
            .field("in_transaction", &self.slots.in_transaction())
            .finish()
    }
}

impl<C: Driver> PinDbConnection<C> {
    pub(crate) fn new(db: PinDb<C>) -> Self {
        PinDbConnection {
            db,
            slots: Checkouts::new(),
            idle: TransactionManagerStatus::default(),
        }
    }

    /// The alias of the connection this routed connection holds, if any (at most one: it gives
    /// an idle connection back before checking out another, so it never waits for a pool
    /// while holding one).
    pub fn held_aliases(&self) -> Vec<&str> {
        self.slots.aliases(self.db.router())
    }

    /// Checks out the connection the next read would use (see the module docs for when this
    /// is needed).
    pub async fn checkout_for_read(&mut self) -> QueryResult<()> {
        self.slot(&Shape::of(Operation::Read)).await
    }

    /// Checks out the connection the next write would use, under the router's rules.
    pub async fn checkout_for_write(&mut self) -> QueryResult<()> {
        self.slot(&Shape::of(Operation::Write)).await
    }

    /// Runs `callback` in a transaction on the master of `set` (a set name, or an unmanaged
    /// alias) instead of the `default` set's: what a transaction needs when delegates send
    /// its tables to another set. Strict: refused unless `set` is pinned or under `master()`;
    /// greedy: pins it. Inside a transaction already open on another database it is refused
    /// ([`Error::OtherDatabaseInTransaction`](crate::Error::OtherDatabaseInTransaction)).
    ///
    /// ```no_run
    /// # async fn demo(db: pindb_diesel::bb8::PinDb) -> diesel::QueryResult<()> {
    /// use diesel_async::RunQueryDsl;
    ///
    /// let mut conn = db.get();
    /// conn.transaction_on("analytics", async |conn| {
    ///     diesel::sql_query("INSERT INTO stats_daily (n) VALUES (1)").execute(conn).await
    /// }).await?;
    /// # Ok(()) }
    /// ```
    pub fn transaction_on<'a, 'conn, R, E, F>(
        &'conn mut self,
        set: &str,
        callback: F,
    ) -> impl Future<Output = Result<R, E>> + Send + 'conn
    where
        for<'r> F: AsyncFnOnce(&'r mut Self) -> Result<R, E>
            + TransactionCallback<&'r mut Self, Result<R, E>, Fut: Send>
            + Send
            + 'a,
        E: From<diesel::result::Error> + Send + 'a,
        R: Send + 'a,
        'a: 'conn,
    {
        RoutedTransactionManager::run(self, Some(set.to_owned()), callback)
    }

    /// Makes sure the connection for this shape is held, checking it out if needed.
    async fn slot(&mut self, shape: &Shape) -> QueryResult<()> {
        match self.slots.decide(self.db.router(), shape)? {
            Slot::Held => Ok(()),
            Slot::Checkout(index) => self.hold(index).await.map(drop),
        }
    }

    /// Gives the held connection back, then checks out one of the database at `index`: never
    /// waits for a pool while holding another pool's connection. A failed checkout says
    /// whether the server is unreachable and why.
    pub(super) async fn hold(&mut self, index: usize) -> QueryResult<&mut Pooled<C>> {
        match self.try_hold(index).await {
            Ok(()) => self.slots.get(),
            Err(e) => {
                self.slots.not_sent(self.db.router(), index);
                let e = checkout_error(self.db.router(), index, e).await;
                Err(e.routed_as(self.slots.role()).into())
            }
        }
    }

    async fn try_hold(&mut self, index: usize) -> Result<(), Error> {
        self.slots.release();
        // Boxed when taken: a statement's future holds what it awaits, and is moved into its
        // own box on every statement; a checkout's (bb8's, the promotion watch) is kilobytes.
        let checkout = Box::pin(self.db.checkout(index, self.slots.epoch()));
        let (index, conn) = checkout.await?;
        let alias = &self.db.router().topology().databases()[index].alias;
        self.slots.hold(index, alias, conn);
        Ok(())
    }

    /// Runs a read outside a transaction, first on the replica at `index`; if the replica
    /// refuses it, fails or does not answer within `reads.timeout_ms`, pindb-core says where
    /// it runs next (another replica, the master) and it runs there.
    async fn read_with_fallback<A: Attempt<C>>(
        &mut self,
        mut index: usize,
        attempt: A,
    ) -> QueryResult<A::Output> {
        let router = self.db.router().clone();
        let mut tries = 0u32;
        let mut refused = false;
        loop {
            let replica = tries == 0 || self.is_replica(index);
            let attempted = if replica {
                router
                    .watch_replica_read(index, self.attempt_on(index, &attempt, false))
                    .await
                    .unwrap_or_else(Attempted::Abandoned)
            } else {
                self.attempt_on(index, &attempt, refused).await
            };
            if !replica {
                return match attempted {
                    Attempted::Done(result) => result,
                    Attempted::CheckoutFailed(e) => {
                        Err(checkout_error(&router, index, e).await.into())
                    }
                    // Only replica attempts are watched; said, not assumed.
                    Attempted::Abandoned(_) => Err(timed_out(&router, index)),
                };
            }
            match after_attempt(&router, index, attempted, tries, || attempt.refused()) {
                Next::Return(result) => return result,
                Next::Diagnose(e) => return Err(checkout_error(&router, index, e).await.into()),
                Next::Retry {
                    index: next,
                    epoch,
                    discard,
                    refused: by_refusal,
                } => {
                    refused |= by_refusal;
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

    /// One attempt on the database at `index`, checking it out unless it is held; one that
    /// `may_write` (a replica refused it) is a write in flight on a master, its rows read
    /// whole before it lands.
    async fn attempt_on<A: Attempt<C>>(
        &mut self,
        index: usize,
        attempt: &A,
        may_write: bool,
    ) -> Attempted<A::Output> {
        if !self.slots.holds(self.db.router(), index) {
            if let Err(e) = self.try_hold(index).await {
                return Attempted::CheckoutFailed(e);
            }
        }
        let write = match may_write && !self.is_replica(index) {
            true => self.db.router().write_flight(index),
            false => None,
        };
        let whole = write.is_some();
        match self.slots.flight(C::DROP_BREAKS, write) {
            Ok((conn, flight)) => {
                let done = attempt.run(conn, whole).await;
                flight.land();
                Attempted::Done(done)
            }
            Err(e) => Attempted::Done(Err(e)),
        }
    }

    fn alias(&self, index: usize) -> &str {
        &self.db.router().topology().databases()[index].alias
    }

    pub(super) fn status_mut(&mut self) -> &mut TransactionManagerStatus {
        self.slots.discard_abandoned();
        match self.slots.tx_conn() {
            Some(conn) => Ansi::transaction_manager_status_mut(conn),
            None => &mut self.idle,
        }
    }

    fn load_owned<'conn, 'query, Q>(
        &'conn mut self,
        index: usize,
        query: Q,
    ) -> <Self as AsyncConnectionCore>::LoadFuture<'conn, 'query>
    where
        Q: AsQuery + Send + 'query + 'conn,
        Q::Query: QueryFragment<C::Backend> + QueryId + Send + 'query,
    {
        let learn = self.learn(index);
        async move {
            self.hold(index).await?;
            let router = self.db.router();
            let write = self
                .slots
                .write_target()
                .and_then(|i| router.write_flight(i));
            let drain = write.is_some() && learn.is_none();
            let (conn, flight) = self.slots.flight(C::DROP_BREAKS, write)?;
            let run = C::run_load(learn, &mut **conn, query);
            // A write's rows are read whole in its flight: it is not over before.
            let done = if drain {
                drained::<C>(run).await
            } else {
                run.await
            };
            flight.land();
            done
        }
        .boxed()
    }

    fn execute_owned<'conn, 'query, Q>(
        &'conn mut self,
        index: usize,
        query: Q,
    ) -> <Self as AsyncConnectionCore>::ExecuteFuture<'conn, 'query>
    where
        Q: QueryFragment<C::Backend> + QueryId + Send + 'query + 'conn,
    {
        let learn = self.learn(index);
        async move {
            self.hold(index).await?;
            let router = self.db.router();
            let write = self
                .slots
                .write_target()
                .and_then(|i| router.write_flight(i));
            let (conn, flight) = self.slots.flight(C::DROP_BREAKS, write)?;
            let done = C::run_execute(learn, &mut **conn, query).await;
            flight.land();
            done
        }
        .boxed()
    }

    /// For a write outside a transaction on the database at `index` whose position is
    /// learned in its own flight ([`Driver::LEARNS_IN_FLIGHT`]): the router to tell, and the
    /// write's pin. An owned statement has no custom type (it could not be rendered without a
    /// connection).
    fn learn(&self, index: usize) -> Option<Learn> {
        if !C::LEARNS_IN_FLIGHT {
            return None;
        }
        let router = self.db.router();
        let pin = self.slots.pin_to_learn(router)?;
        Some((router.clone(), index, pin))
    }

    /// [`PinDbConnection::learn`] for a statement on the held connection; never for one with
    /// a custom type (its type lookup would run outside the flight's order).
    fn held_learn<T: QueryFragment<C::Backend>>(&self, query: &T) -> Option<Learn> {
        let learn = self.learn(self.slots.held_index()?)?;
        (!statement::looks_up_types::<C::Backend, _>(query)).then_some(learn)
    }
}

impl<C: Driver> SimpleAsyncConnection for PinDbConnection<C> {
    async fn batch_execute(&mut self, query: &str) -> QueryResult<()> {
        let shape = self.db.router().shape_of(query);
        let slot = self.slots.decide(self.db.router(), &shape)?;
        if let Some(index) = self.slots.replica_read(self.db.router(), &slot) {
            return self
                .read_with_fallback(index, Batch(query.to_owned()))
                .await;
        }
        if let Slot::Checkout(index) = slot {
            self.hold(index).await?;
        }
        let router = self.db.router();
        let write = self
            .slots
            .write_target()
            .and_then(|i| router.write_flight(i));
        let (conn, flight) = self.slots.flight(C::DROP_BREAKS, write)?;
        let done = conn.batch_execute(query).await;
        flight.land();
        done
    }
}

fn ready<'a, T: Send + 'a>(result: QueryResult<T>) -> BoxFuture<'a, QueryResult<T>> {
    std::future::ready(result).boxed()
}

impl<C: Driver> AsyncConnectionCore for PinDbConnection<C> {
    type ExecuteFuture<'conn, 'query> = BoxFuture<'conn, QueryResult<usize>>;
    type LoadFuture<'conn, 'query> = BoxFuture<'conn, QueryResult<Self::Stream<'conn, 'query>>>;
    type Stream<'conn, 'query> = C::Rows<'conn>;
    type Row<'conn, 'query> = C::OwnedRow;
    type Backend = C::Backend;

    fn load<'conn, 'query, T>(&'conn mut self, source: T) -> Self::LoadFuture<'conn, 'query>
    where
        T: AsQuery + 'query,
        T::Query: QueryFragment<C::Backend> + QueryId + 'query,
    {
        let query = source.as_query();
        let router = self.db.router();
        let slot = match statement::shape::<C::Backend, _>(&query, router)
            .and_then(|shape| self.slots.decide(router, &shape))
        {
            Ok(slot) => slot,
            Err(e) => return ready(Err(e)),
        };
        if let Some(index) = self.slots.replica_read(router, &slot) {
            match statement::to_owned::<C::Backend, _>(&query, self.alias(index)) {
                Ok(OwnedQuery::Static(owned)) => {
                    return self
                        .read_with_fallback(index, Load(owned))
                        .map_ok(C::attach)
                        .boxed()
                }
                Ok(OwnedQuery::Dynamic(owned)) => {
                    return self
                        .read_with_fallback(index, Load(owned))
                        .map_ok(C::attach)
                        .boxed()
                }
                // A custom type is looked up on a connection: with one held, the statement
                // runs there as before, without a fallback.
                Err(e) if matches!(slot, Slot::Held) && statement::needs_lookup(&e) => {}
                Err(e) => return ready(Err(e)),
            }
        }
        match slot {
            Slot::Held => {
                let learn = self.held_learn(&query);
                let router = self.db.router();
                let write = self
                    .slots
                    .write_target()
                    .and_then(|i| router.write_flight(i));
                match self.slots.flight(C::DROP_BREAKS, None) {
                    Ok((conn, flight)) => {
                        let drain = write.is_some() && learn.is_none();
                        let run = C::run_load(learn, &mut **conn, query);
                        // A write's rows are read whole in its flight: it is not over before.
                        let run = if drain { drained::<C>(run) } else { run };
                        in_flight(flight, write, run)
                    }
                    Err(e) => ready(Err(e)),
                }
            }
            Slot::Checkout(index) => {
                match statement::to_owned::<C::Backend, _>(&query, self.alias(index)) {
                    Err(e) => ready(Err(e)),
                    Ok(OwnedQuery::Static(owned)) => self.load_owned(index, owned),
                    Ok(OwnedQuery::Dynamic(owned)) => self.load_owned(index, owned),
                }
            }
        }
    }

    fn execute_returning_count<'conn, 'query, T>(
        &'conn mut self,
        source: T,
    ) -> Self::ExecuteFuture<'conn, 'query>
    where
        T: QueryFragment<C::Backend> + QueryId + 'query,
    {
        let router = self.db.router();
        let slot = match statement::shape::<C::Backend, _>(&source, router)
            .and_then(|shape| self.slots.decide(router, &shape))
        {
            Ok(slot) => slot,
            Err(e) => return ready(Err(e)),
        };
        if let Some(index) = self.slots.replica_read(router, &slot) {
            match statement::to_owned::<C::Backend, _>(&source, self.alias(index)) {
                Ok(OwnedQuery::Static(owned)) => {
                    return self.read_with_fallback(index, Execute(owned)).boxed()
                }
                Ok(OwnedQuery::Dynamic(owned)) => {
                    return self.read_with_fallback(index, Execute(owned)).boxed()
                }
                // A custom type is looked up on a connection: with one held, the statement
                // runs there as before, without a fallback.
                Err(e) if matches!(slot, Slot::Held) && statement::needs_lookup(&e) => {}
                Err(e) => return ready(Err(e)),
            }
        }
        match slot {
            Slot::Held => {
                let learn = self.held_learn(&source);
                let router = self.db.router();
                let write = self
                    .slots
                    .write_target()
                    .and_then(|i| router.write_flight(i));
                match self.slots.flight(C::DROP_BREAKS, None) {
                    Ok((conn, flight)) => {
                        in_flight(flight, write, C::run_execute(learn, &mut **conn, source))
                    }
                    Err(e) => ready(Err(e)),
                }
            }
            Slot::Checkout(index) => {
                match statement::to_owned::<C::Backend, _>(&source, self.alias(index)) {
                    Err(e) => ready(Err(e)),
                    Ok(OwnedQuery::Static(owned)) => self.execute_owned(index, owned),
                    Ok(OwnedQuery::Dynamic(owned)) => self.execute_owned(index, owned),
                }
            }
        }
    }
}

impl<C: Driver> AsyncConnection for PinDbConnection<C> {
    type TransactionManager = RoutedTransactionManager;

    fn establish(_database_url: &str) -> impl Future<Output = ConnectionResult<Self>> + Send {
        std::future::ready(Err(ConnectionError::BadConnection(
            "a PinDbConnection routes between several databases and cannot be established from \
             one URL; build a pindb_diesel::bb8::PinDb from the config and call `db.get()`"
                .to_owned(),
        )))
    }

    fn transaction_state(&mut self) -> &mut TransactionManagerStatus {
        self.status_mut()
    }

    fn instrumentation(&mut self) -> &mut dyn Instrumentation {
        self.slots.instrumentation()
    }

    /// Applies to the connection held now and to every connection checked out later; query
    /// events name the alias that served them (`/* pindb: default-1 */ SELECT ...`).
    fn set_instrumentation(&mut self, instrumentation: impl Instrumentation) {
        self.slots
            .set_instrumentation(self.db.router(), Box::new(instrumentation));
    }

    /// Applies to the connection held now and to every connection checked out later (each
    /// goes back to its pool with the default restored).
    fn set_prepared_statement_cache_size(&mut self, size: CacheSize) {
        self.slots.set_cache_size(size);
    }
}
