//! # pindb-diesel
//!
//! pindb for Diesel: ordinary diesel-async code, with every statement routed to a replica or
//! the master by the pinning context (see `pindb-core`).
//!
//! Three ways to use it:
//! 1. **Automatic**: `db.get()` returns a [`PinDbConnection`] implementing diesel-async's
//!    connection traits. Reads go to the context's replica, writes and transactions to the
//!    master (strict: an unpinned write is an error before any I/O; greedy: it pins the set).
//!    See [`connection`] for how the first statement reaches a connection not yet checked out,
//!    and the known limitations.
//! 2. **Explicit**: [`PinDb::read`] / [`PinDb::write`] return plain pooled `AsyncPgConnection`s
//!    chosen by the router.
//! 3. **Checked at compile time**: [`PinDb::replica`] returns a [`ReplicaConnection`] that only
//!    accepts [`ReadOnlyQuery`] queries (unlocked selects).
//!
//! With the `sync` feature, [`sync`] offers the same over r2d2 pools of `PgConnection`.
//!
//! Routing errors ride inside `diesel::result::Error::QueryBuilderError`; recognise them with
//! [`routing_error`] and [`is_unpinned_write`].
#![deny(missing_docs)]

mod checkouts;
pub mod connection;
pub mod error;
pub mod pool;
pub mod read_only;
mod statement;
#[cfg(feature = "sync")]
pub mod sync;

pub use connection::{PinDbConnection, RoutedTransactionManager};
pub use error::{is_unpinned_write, routing_error, Error};
pub use pool::{PinDb, Pooled};
pub use read_only::{ReadOnlyQuery, ReplicaConnection};
