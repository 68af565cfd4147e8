//! The statement in flight on a routed connection's held connection ([`InFlight`]): marked
//! while it runs where a drop would leave the connection unusable or a write's outcome
//! unknown, and what becomes of the connection when it was dropped in flight.

use diesel::result::QueryResult;
use pindb_core::adapter::WriteFlight;
use pindb_core::{Role, Router};

use super::{Checkouts, Held};
use crate::error::Error;

/// The statement in flight on the held connection ([`Checkouts::flight`]).
#[derive(Default)]
pub(crate) struct InFlight {
    /// Dropped before it lands, the connection is not reused as it is.
    pub(super) marked: bool,
    /// The write it is, if it is one (or a `COMMIT`): its outcome is unknown until it lands.
    write: Option<WriteFlight>,
}

impl InFlight {
    /// The statement is sent now: marked, with its write's flight if it is one.
    pub(crate) fn take_off(&mut self, write: Option<WriteFlight>) {
        if write.is_some() {
            self.marked = true;
        }
        self.write = write;
    }

    /// Whether it must be landed: dropped before, the connection is not reused as it is.
    pub(crate) fn is_marked(&self) -> bool {
        self.marked
    }

    /// The statement's answer is in: the connection is usable, a write's outcome known.
    pub(crate) fn land(&mut self) {
        self.marked = false;
        if let Some(write) = self.write.take() {
            write.landed();
        }
    }
}

impl<C: Held> Checkouts<C> {
    /// The held connection for a statement, marked in flight when `mark` (a driver whose
    /// connection a statement dropped mid-flight leaves unusable) or when it is `write`,
    /// until the caller lands what it gets back ([`InFlight::land`]): dropped before, the
    /// connection is discarded instead of reused ([`Checkouts::recover`], `Drop`), a
    /// transaction open on it is abandoned (its next statement or commit fails with
    /// [`Error::TransactionAbandoned`] instead of reading the dropped statement's answer as
    /// its own), and the write is landed once the driver can tell it is over
    /// ([`Held::land_after`]).
    pub(crate) fn flight(
        &mut self,
        mark: bool,
        write: Option<WriteFlight>,
    ) -> QueryResult<(&mut C, &mut InFlight)> {
        self.in_flight = InFlight {
            marked: mark || write.is_some(),
            write,
        };
        match &mut self.held {
            Some((_, conn)) => Ok((conn, &mut self.in_flight)),
            None => Err(Error::Unsupported("no connection is checked out").into()),
        }
    }

    /// The master the statement about to run on the held connection writes to, when it is
    /// a write outside a transaction (pinning or under a `master()` guard): its outcome is
    /// unknown until it lands ([`Router::write_flight`]).
    pub(crate) fn write_target(&self) -> Option<usize> {
        match (self.tx, self.writes, self.role, &self.held) {
            (None, true, Role::Master, Some((index, _))) => Some(*index),
            _ => None,
        }
    }

    /// A flight for the `COMMIT` about to run: the transaction's writes land with it.
    pub(crate) fn commit_flight(&self, router: &Router) -> Option<WriteFlight> {
        let index = self.tx?;
        (!router.topology().is_replica_now(index))
            .then(|| router.write_flight(index))
            .flatten()
    }

    /// Gives the held connection up, poisoned (the pool discards it), unless a write dropped
    /// in flight on it can be waited for there: then it goes with the write, to land it once
    /// the driver can tell it is over, and back to the pool after unless `broken`.
    pub(super) fn let_go(&mut self, broken: bool) {
        let InFlight { write, .. } = std::mem::take(&mut self.in_flight);
        if let Some((_, mut conn)) = self.held.take() {
            match write {
                Some(write) => {
                    self.restore(&mut conn);
                    conn.land_after(write, broken);
                }
                None => conn.poison(),
            }
        }
    }
}
