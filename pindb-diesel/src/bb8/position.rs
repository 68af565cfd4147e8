//! The master's position after a write, learned in the write's own flight: a tiny query
//! pipelined behind the write on its connection, so a writing context records where the
//! master was without a round trip of its own at its end (`stickiness.pipeline_positions`).
//!
//! Why the answer covers the write: PostgreSQL runs a connection's statements in the order
//! they arrive, and the query is sent after the write. `AsyncPgConnection` takes its statement
//! cache (a tokio mutex) before sending a statement and holds it while preparing one, then
//! sends it in the same poll; the write is polled first in every poll
//! (`futures_util::future::join`), so it takes the cache first, and a poll the runtime's
//! budget holds back holds the query back too. A statement with a custom type is
//! not pipelined: its type lookup runs before the cache is taken, so the query could pass it.
//! The query reports nothing when it ran inside a transaction that wrote
//! (`txid_current_if_assigned()` is set): a transaction's writes are visible at its `COMMIT`,
//! after that position. Transactions are not pipelined: diesel-async commits through
//! `&mut AsyncPgConnection`, which no second statement can share while the `COMMIT` is in
//! flight; a transaction's context reads the position at its end, as before.
//!
//! A write's `RETURNING` rows are read to their end inside the flight (`drained`, with the drivers).
//!
//! Cancellation: dropped with the write in flight, nothing is reported, so the context's
//! end reads the position from the master (the write may have happened).

use diesel::pg::data_types::PgLsn;
use diesel::result::QueryResult;
use diesel::ExpressionMethods;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use pindb_core::adapter::NewPin;

use pindb_core::{Lsn, Router};

diesel::define_sql_function! {
    /// Where the master inserts its next WAL record: past every commit it has answered.
    fn pg_current_wal_insert_lsn() -> diesel::sql_types::PgLsn;
}

diesel::define_sql_function! {
    /// The id of the statement's transaction if it has one (it wrote), else NULL.
    fn txid_current_if_assigned() -> diesel::sql_types::Nullable<diesel::sql_types::BigInt>;
}

/// Runs `write` on `conn` with the position query pipelined behind it, and reports the
/// position to `router` for the write that made `pin` on the database at `index`.
pub(super) fn behind<'a, T: Send + 'a>(
    router: Router,
    index: usize,
    pin: NewPin,
    conn: &'a AsyncPgConnection,
    write: impl FnOnce(&mut &'a AsyncPgConnection) -> BoxFuture<'a, QueryResult<T>>,
) -> BoxFuture<'a, QueryResult<T>> {
    let mut shared = conn;
    let write = write(&mut shared);
    let position = diesel::select((
        pg_current_wal_insert_lsn(),
        txid_current_if_assigned().is_null(),
    ))
    .get_result::<(PgLsn, bool)>(&mut shared);
    // In this order: the write's first poll comes first (see the module's docs).
    futures_util::future::join(write, position)
        .map(move |(written, position)| {
            if let Ok((PgLsn(lsn), true)) = position {
                router.write_position(index, pin, Lsn(lsn));
            }
            written
        })
        .boxed()
}
