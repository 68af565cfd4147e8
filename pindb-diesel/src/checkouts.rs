//! The connection one routed connection has checked out, its open transaction, and where its
//! next statement runs.
//!
//! Shared by the async and the sync routed connections. Three rules live here:
//! - **No hold-and-wait.** At most one checkout is held. Before waiting for another pool the
//!   idle one is given back, so two requests taking two pools in opposite orders can never
//!   wait for each other (a transaction never checks out: its statements stay on its
//!   connection).
//! - **A transaction stays on its database.** While a transaction is open every statement goes
//!   to its connection; with delegates, a statement that belongs to another database is
//!   refused instead of running on the wrong one.
//! - **An abandoned transaction is never reused.** A `transaction(..)` whose future was dropped
//!   or whose closure panicked leaves a mark ([`Scopes`]); the next call on the routed
//!   connection discards that connection (the pool closes it, the server rolls back) and
//!   routes normally again.
//!
//! No I/O here: the caller checks out when told to.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use diesel::connection::{CacheSize, Instrumentation};
use diesel::result::QueryResult;
use pindb_core::adapter::{NewPin, Shape, WriteFlight};
use pindb_core::{Hint, Operation, Role, Router};

use crate::error::Error;

pub(crate) use flight::InFlight;

/// What the routed connection needs from a pooled connection, async or sync.
pub(crate) trait Held {
    /// Marks its transaction manager broken: the pool discards it when it comes back instead
    /// of handing out a connection with a transaction open.
    fn poison(&mut self);
    /// Its transaction depth (`Err` when its transaction manager is broken).
    fn depth(&mut self) -> QueryResult<Option<std::num::NonZeroU32>>;
    /// Sets its prepared statement cache size.
    fn set_cache(&mut self, size: CacheSize);
    /// Forwards its events to the routed connection's instrumentation; `None` restores
    /// diesel's default instrumentation.
    fn set_events(&mut self, events: Option<Forward>);
    /// Lets go of it, `write` having been dropped in flight on it: lands `write` once the
    /// driver can tell the write is over, else drops it (its position becomes unknown).
    /// Poisoned when `broken` (a transaction was open on it) or when the driver cannot tell.
    fn land_after(mut self, write: WriteFlight, broken: bool)
    where
        Self: Sized,
    {
        let _ = broken;
        self.poison();
        drop((self, write));
    }
}

/// Where a statement runs.
pub(crate) enum Slot {
    /// On the held connection.
    Held,
    /// On a connection of the database at this index, to check out first (after giving the
    /// held one back).
    Checkout(usize),
}

/// Transaction scopes of one routed connection: how many `transaction(..)` calls are running
/// and whether one ended without finishing (dropped future, panic).
#[derive(Debug, Default)]
pub(crate) struct Scopes {
    active: AtomicU32,
    abandoned: AtomicBool,
}

/// Lives in a `transaction(..)` future: marks the scope abandoned unless it finished.
pub(crate) struct ScopeGuard {
    scopes: Arc<Scopes>,
    finished: bool,
}

impl ScopeGuard {
    /// The scope ran to completion (committed, rolled back or failed to begin).
    pub(crate) fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for ScopeGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.scopes.abandoned.store(true, Ordering::Release);
        }
        self.scopes.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The refusal of a statement (or nested `transaction_on`) of database `own` inside a
/// transaction on database `home`.
fn other_database(router: &Router, own: usize, table: &str, home: usize) -> diesel::result::Error {
    let dbs = router.topology().databases();
    Error::OtherDatabaseInTransaction {
        statement: dbs[own].alias.clone(),
        table: table.to_owned(),
        transaction: dbs[home].alias.clone(),
    }
    .into()
}

pub(crate) struct Checkouts<C: Held> {
    /// `(database index, connection)`: the one checkout this routed connection holds.
    held: Option<(usize, C)>,
    /// The [`Route::epoch`](pindb_core::Route::epoch) of the last decision: what the next
    /// checkout is made for.
    epoch: u64,
    /// The epoch `held` was checked out for. A route decided at another one does not run on
    /// it: a runtime replica's host may have changed in between.
    held_epoch: u64,
    /// The pin the last decision made (a write): given back if its checkout fails.
    pin: Option<NewPin>,
    /// The last decision was a write's (pinning or not: under a `master()` guard).
    writes: bool,
    /// The role the last decision routed to: what a failed checkout's error names (a host
    /// the monitor demoted meanwhile was the master the write was sent to).
    role: Role,
    /// The database index of the open transaction; `held` is its connection.
    tx: Option<usize>,
    scopes: Option<Arc<Scopes>>,
    /// The open transaction was begun by hand, outside `transaction(..)`.
    manual: bool,
    /// A statement is in flight on `held` (marked only where a dropped statement leaves the
    /// connection unusable, or is a write: [`Checkouts::flight`]).
    in_flight: InFlight,
    /// The set the next top-level transaction opens on (`transaction_on`).
    next_tx: Option<String>,
    cache: Option<CacheSize>,
    /// The user's instrumentation, forwarded to every checkout.
    events: Option<Forward>,
    /// What `instrumentation()` hands out when the user set none.
    none: Option<Box<dyn Instrumentation>>,
}

impl<C: Held> Drop for Checkouts<C> {
    fn drop(&mut self) {
        if self.tx.is_some() || self.in_flight.marked {
            // Dropped with a transaction open or a statement in flight (a dropped request
            // future): never back to the pool as it is.
            self.let_go(self.tx.is_some());
        } else {
            self.release();
        }
    }
}

impl<C: Held> Checkouts<C> {
    pub(crate) fn new() -> Self {
        Checkouts {
            held: None,
            epoch: 0,
            held_epoch: 0,
            pin: None,
            writes: false,
            role: Role::Master,
            tx: None,
            scopes: None,
            manual: false,
            in_flight: InFlight::default(),
            next_tx: None,
            cache: None,
            events: None,
            none: None,
        }
    }

    /// Settles what an abandoned transaction scope left behind; called first by every
    /// operation. The abandoned transaction's connection is poisoned and given back (the pool
    /// discards it: the server rolls the transaction back). While an enclosing scope is still
    /// running, its statements fail with [`Error::TransactionAbandoned`]: it has lost its
    /// transaction and must not go on outside one.
    pub(crate) fn recover(&mut self) -> QueryResult<()> {
        if std::mem::take(&mut self.in_flight.marked) {
            // Its future was dropped mid-statement: the connection may be half-way through
            // an answer. Inside a transaction, the transaction is lost with it (its
            // connection goes with `discard_abandoned`, a `COMMIT` in flight with it).
            if self.tx.is_some() {
                let scopes = self.scopes.get_or_insert_with(Default::default);
                scopes.abandoned.store(true, Ordering::Release);
            } else if self.held.is_some() {
                self.let_go(false);
                tracing::info!(target: "pindb", "a statement was dropped in flight; its connection is not reused mid-answer (discarded, or a dropped write's awaited first)");
            }
        }
        if !self.discard_abandoned() {
            return Ok(());
        }
        let active = self
            .scopes
            .as_ref()
            .is_some_and(|s| s.active.load(Ordering::Acquire) > 0);
        // A transaction begun by hand (`begin_test_transaction`) around the abandoned one has
        // lost its transaction too, until its own commit or rollback ends it.
        if active || self.manual {
            return Err(Error::TransactionAbandoned.into());
        }
        if let Some(scopes) = &self.scopes {
            scopes.abandoned.store(false, Ordering::Release);
        }
        Ok(())
    }

    /// The part of [`Checkouts::recover`] that cannot fail: when a scope was abandoned, the
    /// transaction's connection is poisoned and given back. True when a scope was abandoned.
    /// Also run before reporting the transaction state, so nobody sees a dead transaction
    /// as open.
    pub(crate) fn discard_abandoned(&mut self) -> bool {
        if !self
            .scopes
            .as_ref()
            .is_some_and(|s| s.abandoned.load(Ordering::Acquire))
        {
            return false;
        }
        if self.tx.take().is_some() && self.held.is_some() {
            self.let_go(true);
            tracing::warn!(target: "pindb", "a transaction was abandoned (future dropped or closure panicked); its connection was discarded, so the server rolls it back (or, if COMMIT was in flight, its outcome is unknown until it lands)");
        }
        true
    }

    /// What a commit runs on: the open transaction's connection. An abandoned transaction
    /// cannot be committed: [`Error::TransactionAbandoned`], and it is over.
    pub(crate) fn for_commit(&mut self) -> QueryResult<&mut C> {
        if let Err(e) = self.recover() {
            self.end_abandoned();
            return Err(e);
        }
        self.tx_conn()
            .ok_or(diesel::result::Error::NotInTransaction)
    }

    /// What a rollback runs on: the open transaction's connection, or `None` when the
    /// transaction was abandoned (its connection was discarded: nothing left to roll back).
    pub(crate) fn for_rollback(&mut self) -> QueryResult<Option<&mut C>> {
        if let Err(e) = self.recover() {
            return match crate::error::routing_error(&e) {
                Some(Error::TransactionAbandoned) => {
                    self.end_abandoned();
                    Ok(None)
                }
                _ => Err(e),
            };
        }
        self.tx_conn()
            .map(Some)
            .ok_or(diesel::result::Error::NotInTransaction)
    }

    /// The commit or rollback that ends a transaction found abandoned: a hand-begun
    /// transaction around it is over now.
    fn end_abandoned(&mut self) {
        let active = self
            .scopes
            .as_ref()
            .is_some_and(|s| s.active.load(Ordering::Acquire) > 0);
        if !active {
            self.manual = false;
        }
    }

    /// Enters a `transaction(..)` scope.
    pub(crate) fn enter_scope(&mut self) -> ScopeGuard {
        let scopes = Arc::clone(self.scopes.get_or_insert_with(Default::default));
        scopes.active.fetch_add(1, Ordering::AcqRel);
        ScopeGuard {
            scopes,
            finished: false,
        }
    }

    /// Decides where a statement of this shape runs. Synchronous: a strict refusal, an
    /// unknown alias or a statement of another database inside a transaction is reported
    /// before any I/O.
    pub(crate) fn decide(&mut self, router: &Router, shape: &Shape) -> QueryResult<Slot> {
        self.pin = None;
        self.writes = false;
        self.recover()?;
        let op = shape.op;
        let tables;
        let hint = match &shape.table {
            Some(table) if router.has_delegates() => {
                tables = [&**table];
                Hint::tables(&tables)
            }
            _ => Hint::default(),
        }
        .with_footprint(shape.footprint.as_deref());
        if let Some(home) = self.tx {
            if !hint.tables.is_empty() {
                // Refused only when neither the statement's own operation nor a write would
                // go to the transaction's database: a delegate may send reads of a table
                // elsewhere (a reporting copy) while its writes, and so the transaction,
                // belong here.
                let own = router.home_of(&hint, op).map_err(Error::from)?;
                let write_home = router
                    .home_of(&hint, Operation::Write)
                    .map_err(Error::from)?;
                if own != home && write_home != home {
                    return Err(other_database(router, own, hint.tables[0], home));
                }
            }
            return Ok(Slot::Held);
        }
        let route = match op {
            Operation::Read => router.db_for_read(&hint),
            Operation::Write => router.db_for_write(&hint),
        }
        .map_err(Error::from)?;
        (self.epoch, self.pin, self.role) = (route.epoch, route.pin, route.role);
        self.writes = op == Operation::Write;
        Ok(self.slot_for(router, route.index))
    }

    /// The pin of the last decision when it was a write outside a transaction whose master
    /// position the adapter should learn in the write's own flight
    /// ([`Router::write_position`]).
    pub(crate) fn pin_to_learn(&self, router: &Router) -> Option<NewPin> {
        self.pin
            .filter(|_| self.tx.is_none() && router.learns_positions())
    }

    /// The database index of the held connection.
    pub(crate) fn held_index(&self) -> Option<usize> {
        self.held.as_ref().map(|(index, _)| *index)
    }

    /// The role of the last decision's database when it was decided.
    pub(crate) fn role(&self) -> Role {
        self.role
    }

    /// The checkout for the last decision failed: nothing was sent, so a write gives back the
    /// pin its decision made ([`Router::write_not_sent`]).
    pub(crate) fn not_sent(&mut self, router: &Router, index: usize) {
        if let Some(pin) = self.pin.take() {
            router.write_not_sent(index, pin);
        }
    }

    fn slot_for(&self, router: &Router, index: usize) -> Slot {
        match self.holds(router, index) {
            true => Slot::Held,
            false => Slot::Checkout(index),
        }
    }

    /// The epoch the next checkout is made for.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// A read moves to another database on pindb-core's route, decided at `epoch`.
    pub(crate) fn set_epoch(&mut self, epoch: u64) {
        self.epoch = epoch;
    }

    /// Where a transaction that begins now runs: the open transaction's connection (a
    /// savepoint), else the master of the set named by `transaction_on` or of the `default`
    /// set (strict: refused when that set is not pinned; greedy: pins it).
    pub(crate) fn decide_begin(&mut self, router: &Router) -> QueryResult<Slot> {
        let named = self.next_tx.take();
        self.pin = None;
        self.writes = false;
        self.recover()?;
        let hint = named.as_deref().map(Hint::alias).unwrap_or_default();
        if let Some(home) = self.tx {
            if named.is_some() {
                let own = router
                    .home_of(&hint, Operation::Write)
                    .map_err(Error::from)?;
                if own != home {
                    return Err(other_database(router, own, "", home));
                }
            }
            return Ok(Slot::Held);
        }
        let route = router.db_for_write(&hint).map_err(Error::from)?;
        (self.epoch, self.pin, self.role) = (route.epoch, route.pin, route.role);
        Ok(self.slot_for(router, route.index))
    }

    /// Names the set the next top-level transaction opens on.
    pub(crate) fn set_next_transaction(&mut self, set: String) {
        self.next_tx = Some(set);
    }

    /// The database a read of this slot runs on, when it is a replica outside a transaction:
    /// such a read moves elsewhere if the replica fails it (see [`after_attempt`]).
    pub(crate) fn replica_read(&self, router: &Router, slot: &Slot) -> Option<usize> {
        if self.tx.is_some() {
            return None;
        }
        let index = match slot {
            Slot::Checkout(index) => *index,
            Slot::Held => self.held.as_ref()?.0,
        };
        router.topology().is_replica_now(index).then_some(index)
    }

    /// Whether the connection of the database at `index` is held and may serve the last
    /// decision: for a runtime replica, only if its set's hosts did not change since it was
    /// checked out (the decision may be about another host; the held connection's session
    /// state is kept for every other database).
    pub(crate) fn holds(&self, router: &Router, index: usize) -> bool {
        let topology = router.topology();
        self.held.as_ref().is_some_and(|(i, _)| *i == index)
            && (!topology.databases()[index].runtime
                || (self.held_epoch == self.epoch && self.held_epoch == topology.epoch(index)))
    }

    /// Drops the held connection without giving it back for reuse: it failed or hung
    /// mid-statement.
    pub(crate) fn discard(&mut self) {
        self.let_go(true);
    }

    /// Gives the held connection back (before waiting for another pool).
    pub(crate) fn release(&mut self) {
        debug_assert!(
            self.tx.is_none(),
            "a transaction's connection is never released"
        );
        if self.in_flight.marked {
            // Its statement was dropped in flight.
            return self.let_go(false);
        }
        if let Some((_, mut conn)) = self.held.take() {
            self.restore(&mut conn);
        }
    }

    /// Back to the pool as it came: no setting of this routed connection leaks.
    fn restore(&self, conn: &mut C) {
        if self.cache.is_some() {
            conn.set_cache(CacheSize::Unbounded);
        }
        if self.events.is_some() {
            conn.set_events(None);
        }
    }

    /// Keeps a new checkout of the database at `index`, with this routed connection's
    /// settings applied.
    pub(crate) fn hold(&mut self, index: usize, alias: &str, mut conn: C) -> &mut C {
        if let Some(size) = self.cache {
            conn.set_cache(size);
        }
        if let Some(events) = &self.events {
            conn.set_events(Some(events.with_alias(alias)));
        }
        self.held_epoch = self.epoch;
        &mut self.held.insert((index, conn)).1
    }

    /// The held connection. Callers only ask after `decide` said [`Slot::Held`] or after
    /// `hold`.
    pub(crate) fn get(&mut self) -> QueryResult<&mut C> {
        match &mut self.held {
            Some((_, conn)) => Ok(conn),
            None => Err(Error::Unsupported("no connection is checked out").into()),
        }
    }

    /// The open transaction's connection.
    pub(crate) fn tx_conn(&mut self) -> Option<&mut C> {
        match (self.tx, &mut self.held) {
            (Some(_), Some((_, conn))) => Some(conn),
            _ => None,
        }
    }

    /// Marks the held connection as running a transaction. Called *before* `BEGIN` is sent,
    /// so a drop while it is in flight still poisons the connection.
    pub(crate) fn start_transaction(&mut self) {
        if self.tx.is_none() {
            self.manual = self
                .scopes
                .as_ref()
                .is_none_or(|s| s.active.load(Ordering::Acquire) == 0);
        }
        self.tx = self.held.as_ref().map(|(i, _)| *i);
    }

    /// After a begin, commit or rollback: still open keeps the transaction mode; closed
    /// leaves it (the connection stays held, idle); a broken transaction manager also gives
    /// the connection back (the pool discards it), so the next statement is routed afresh
    /// instead of sticking to a dead connection.
    pub(crate) fn settle(&mut self) {
        if self.tx.is_none() {
            return;
        }
        let depth = match &mut self.held {
            Some((_, conn)) => conn.depth(),
            None => Ok(None),
        };
        match depth {
            Ok(Some(_)) => {}
            Ok(None) => {
                self.tx = None;
                self.manual = false;
            }
            Err(_) => {
                self.tx = None;
                self.manual = false;
                self.held = None;
            }
        }
    }

    pub(crate) fn in_transaction(&self) -> bool {
        self.tx.is_some()
    }

    pub(crate) fn aliases<'r>(&self, router: &'r Router) -> Vec<&'r str> {
        let dbs = router.topology().databases();
        self.held
            .iter()
            .map(|(i, _)| dbs[*i].alias.as_str())
            .collect()
    }

    /// Applies a statement cache size to the held connection and every later checkout.
    pub(crate) fn set_cache_size(&mut self, size: CacheSize) {
        self.cache = Some(size);
        if let Some((_, conn)) = &mut self.held {
            conn.set_cache(size);
        }
    }

    /// Forwards the events of the held connection and every later checkout to
    /// `instrumentation`.
    pub(crate) fn set_instrumentation(
        &mut self,
        router: &Router,
        instrumentation: Box<dyn Instrumentation>,
    ) {
        let events = Forward::new(instrumentation);
        if let Some((i, conn)) = &mut self.held {
            conn.set_events(Some(
                events.with_alias(&router.topology().databases()[*i].alias),
            ));
        }
        self.events = Some(events);
    }

    /// The instrumentation, for diesel's transaction events on the routed connection itself.
    pub(crate) fn instrumentation(&mut self) -> &mut dyn Instrumentation {
        match &mut self.events {
            Some(events) => events,
            None => &mut self.none,
        }
    }
}

mod flight;
mod forward;
#[cfg(test)]
mod tests;

pub(crate) use forward::Forward;
