//! The fallback of a read outside a transaction, shared by the bb8 and r2d2 connections:
//! what an attempt on a replica came to, and what follows (pindb-core's `Router::reroute`
//! decides where it goes next).

use diesel::result::QueryResult;
use pindb_core::adapter::{Abandoned, ReplicaFailure};
use pindb_core::{PinDbError, Router};

use crate::error::{replica_failure, Error};

/// What one attempt of a read on a replica came to.
pub(crate) enum Attempted<T> {
    /// It ran: its result.
    Done(QueryResult<T>),
    /// No connection could be checked out.
    CheckoutFailed(Error),
    /// Given up: no answer within `reads.timeout_ms`, or the monitor declared the replica
    /// down meanwhile.
    Abandoned(Abandoned),
}

/// What follows an attempt on the database at `index`.
pub(crate) enum Next<T> {
    /// Hand this to the caller.
    Return(QueryResult<T>),
    /// Run the statement again on the database at `index` (the failed connection, if it
    /// failed or hung, must be discarded first: `discard`).
    Retry {
        index: usize,
        /// The new route's [`Route::epoch`](pindb_core::Route::epoch).
        epoch: u64,
        discard: bool,
        /// The replica refused it: it may write (a function), so on a master it is a write
        /// in flight until it lands.
        refused: bool,
    },
    /// The checkout failed and nowhere else can serve: ask pindb-core what really happened.
    Diagnose(Error),
}

/// The fallback of a read outside a transaction, shared by the async and sync connections:
/// the failure is classified here and pindb-core's `Router::reroute` says where it goes next
/// (another replica, the master, or nowhere). `tries`: retries so far. `sql`: the statement,
/// rendered only when a replica refused it (pindb-core remembers it).
pub(crate) fn after_attempt<T>(
    router: &Router,
    index: usize,
    attempted: Attempted<T>,
    tries: u32,
    sql: impl FnOnce() -> String,
) -> Next<T> {
    let failure = match &attempted {
        Attempted::Done(Ok(_)) => None,
        Attempted::Done(Err(e)) => replica_failure(e, router.topology().backend()),
        Attempted::CheckoutFailed(Error::PoolTimeout { .. }) => Some(ReplicaFailure::Busy),
        Attempted::CheckoutFailed(Error::Routing(PinDbError::NoHost { .. })) => {
            Some(ReplicaFailure::Moved)
        }
        Attempted::CheckoutFailed(_) => Some(ReplicaFailure::Unreachable),
        Attempted::Abandoned(given_up) => Some(given_up.failure()),
    };
    let rerouted = match failure {
        Some(failure) => {
            let sql = if failure == ReplicaFailure::Refused {
                sql()
            } else {
                String::new()
            };
            // Rendered only if it is logged.
            let cause: &dyn std::fmt::Display = match &attempted {
                Attempted::Done(Err(e)) => e,
                Attempted::CheckoutFailed(e) => e,
                Attempted::Abandoned(given_up) => given_up,
                Attempted::Done(Ok(_)) => &"",
            };
            router
                .reroute(index, failure, tries, &sql, cause)
                .map(|route| route.map(|r| (r.index, r.epoch)))
        }
        None => Ok(None),
    };
    // A connection that failed, hung or was cancelled mid-statement is not reused.
    let discard = !matches!(
        failure,
        None | Some(ReplicaFailure::Refused | ReplicaFailure::Busy | ReplicaFailure::Moved)
    );
    match (rerouted, attempted) {
        (Err(refused), _) => Next::Return(Err(Error::Routing(refused).into())),
        (Ok(Some((next, epoch))), _) => Next::Retry {
            index: next,
            epoch,
            discard,
            refused: failure == Some(ReplicaFailure::Refused),
        },
        (Ok(None), Attempted::Done(result)) => Next::Return(result),
        (Ok(None), Attempted::CheckoutFailed(e)) => Next::Diagnose(e),
        (Ok(None), Attempted::Abandoned(_)) => Next::Return(Err(timed_out(router, index))),
    }
}

/// The database at `index` did not answer within `reads.timeout_ms`.
pub(crate) fn timed_out(router: &Router, index: usize) -> diesel::result::Error {
    Error::ReadTimeout {
        alias: router.topology().databases()[index].alias.clone(),
        timeout: router.config().reads.timeout(),
    }
    .into()
}

/// A checkout of the database at `index` failed: [`PinDbError::Unreachable`] when pindb's own
/// fresh connection fails too (with what really happened), else the pool's own error. A
/// runtime replica whose host changed after the route was decided is said as such: no
/// server is to blame.
pub(crate) async fn checkout_error(router: &Router, index: usize, e: Error) -> Error {
    // Already said (a runtime host gone, or found refused while the checkout waited).
    if matches!(
        e,
        Error::Routing(PinDbError::NoHost { .. } | PinDbError::Unreachable { .. })
    ) {
        return e;
    }
    match router.diagnose(index).await {
        Some(unreachable) => Error::Routing(unreachable),
        None => e,
    }
}
