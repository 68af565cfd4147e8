//! # pindb-diesel
//!
//! pindb for Diesel: ordinary diesel code, with every statement routed to a replica or the
//! master by the pinning context (see [`pindb_core`], re-exported here: one dependency line is
//! enough).
//!
//! One module per pool, with the same names in each (diesel-async's `pooled_connection` is the
//! model):
//!
//! | role | diesel-async over bb8 | sync diesel over r2d2 (feature `r2d2`) |
//! |---|---|---|
//! | the pools, built once, cheap to clone | [`bb8::PinDb`] | `r2d2::PinDb` |
//! | a routed connection (`db.get()`) | [`bb8::PinDbConnection`] | `r2d2::PinDbConnection` |
//! | a plain pooled connection | [`bb8::Pooled`] | `r2d2::Pooled` |
//! | its transaction manager | [`bb8::RoutedTransactionManager`] | `r2d2::RoutedTransactionManager` |
//! | the connection type it pools | [`bb8::Driver`] | `r2d2::Driver` |
//!
//! Each is generic over its connection type: PostgreSQL's by default (`PinDb::new`), and
//! MariaDB's with the features `mariadb` (`bb8::PinDb::<AsyncMysqlConnection>::from_config`)
//! and `r2d2-mariadb` (`r2d2::PinDb::<MysqlConnection>::from_config`).
//!
//! Three ways to use it:
//! 1. **Automatic**: `db.get()` returns a `PinDbConnection` implementing diesel's connection
//!    traits. Reads go to the context's replica, writes and transactions to the master
//!    (strict: an unpinned write is an error before any I/O; greedy: it pins the set). See
//!    [`bb8::PinDbConnection`] for how the first statement reaches a connection not yet
//!    checked out, and the known limitations.
//! 2. **Explicit**: `PinDb::read` / `PinDb::write` (`read_with` / `write_with` for a hint)
//!    return plain pooled connections chosen by the router.
//! 3. **Checked at compile time** (bb8): [`bb8::PinDb::replica`] returns a
//!    [`bb8::ReplicaConnection`] that only accepts [`bb8::ReadOnlyQuery`] queries (unlocked
//!    selects).
//!
//! Routing errors ride inside `diesel::result::Error::QueryBuilderError`; recognise them with
//! [`routing_error`] and [`is_unpinned_write`].
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use pindb_core;

mod backend;
pub mod bb8;
mod checkouts;
mod error;
mod fallback;
mod pools;
#[cfg(feature = "r2d2")]
#[cfg_attr(docsrs, doc(cfg(feature = "r2d2")))]
pub mod r2d2;
mod server;
mod statement;

pub use backend::RoutedBackend;
pub use error::{is_unpinned_write, routing_error, Error};
