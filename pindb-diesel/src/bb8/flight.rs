//! A statement's flight on the held connection: a write takes off when first polled and
//! lands when its answer is in ([`in_flight`]), its rows read whole first ([`drained`]). A
//! write dropped in flight is awaited on its own connection where the driver answers in
//! order (`Held::land_after`, with the drivers).

use diesel::result::QueryResult;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use pindb_core::adapter::WriteFlight;

use crate::checkouts::InFlight;

/// `run`, on a connection [`Checkouts::flight`](crate::checkouts::Checkouts::flight) marked: the mark is cleared when it lands.
/// A write takes off when first polled (its flight made in the caller's context): dropped
/// unpolled, it was never sent and lands at once. Boxed again only when marked (a driver a
/// dropped statement breaks) or a write: not on PostgreSQL's read path.
pub(super) fn in_flight<'a, T: Send + 'a>(
    flight: &'a mut InFlight,
    write: Option<WriteFlight>,
    run: BoxFuture<'a, QueryResult<T>>,
) -> BoxFuture<'a, QueryResult<T>> {
    if !flight.is_marked() && write.is_none() {
        return run;
    }
    let mut unsent = Unsent(write);
    async move {
        flight.take_off(unsent.0.take());
        let done = run.await;
        flight.land();
        done
    }
    .boxed()
}

/// A write's flight until its statement is first polled.
struct Unsent(Option<WriteFlight>);

impl Drop for Unsent {
    fn drop(&mut self) {
        // Never polled: never sent.
        if let Some(write) = self.0.take() {
            write.landed();
        }
    }
}
