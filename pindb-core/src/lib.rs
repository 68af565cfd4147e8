//! # pindb-core
//!
//! The routing engine of pindb, with no ORM in it: which PostgreSQL database (a set's master,
//! one of its replicas, or an unmanaged database) serves each statement, decided per unit of
//! work by a *pinning context*. The adapters (`pindb-diesel`, `pindb-seaorm`) ask it for a
//! [`Route`] and run the statement there.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), pindb_core::PinDbError> {
//! use pindb_core::{classify, Config, Hint, Operation, Role, Router, StatementKind};
//!
//! let router = Router::new(Config::from_toml_str(r#"
//!     [masters.default]
//!     url = "postgres://app@10.0.0.1/app"
//!     [sets]
//!     default = [{ host = "10.0.0.2" }, { host = "10.0.0.3" }]
//! "#)?)?;
//!
//! pindb_core::scope(async {
//!     let sql = "SELECT * FROM users WHERE id = $1";
//!     assert_eq!(classify(sql), StatementKind::Read);
//!     let read = router.db_for_read(&Hint::default())?;
//!     assert_eq!(read.role, Role::Replica);
//!
//!     // Greedy (the default): the first write pins the set; later reads see the master.
//!     router.db_for_write(&Hint::default())?;
//!     assert_eq!(router.db_for_read(&Hint::default())?.role, Role::Master);
//!     assert_eq!(pindb_core::get_newly_pinned(), ["default"]);
//!     Ok(())
//! }).await
//! # }
//! ```
//!
//! Modules, one concept each: [`config`] (settings, loading), [`populate`] (the alias map),
//! [`context`] (the pinning context and its propagation), [`guard`] (`master` /
//! `unpinned_replica`), [`router`] (decisions), [`replica`] (replica choice and health),
//! [`monitor`] (replica polling, topology check), [`stickiness`] (read-your-writes across
//! contexts: stores, tokens), [`lsn`] (WAL positions), [`classify`] (read or write),
//! [`error`].
#![deny(missing_docs)]

pub mod classify;
pub mod config;
pub mod context;
pub mod error;
pub mod guard;
pub mod jobs;
pub mod lsn;
pub mod monitor;
pub mod populate;
pub mod replica;
pub mod router;
pub mod stickiness;
#[cfg(feature = "tower")]
pub mod web;

pub use classify::{classify, StatementKind};
pub use config::{Config, DatabaseSettings, ReplicaPolicy, RouterMode};
pub use context::{
    get_newly_pinned, get_pinned, is_pinned, scope, spawn, spawn_blocking, unpin_all, Context,
    InContext, Scoped,
};
pub use error::PinDbError;
pub use guard::{Guard, GuardKind};
pub use lsn::Lsn;
pub use populate::{populate_replicas, Database, Membership, PoolSettings};
pub use replica::ReplicaStatus;
pub use router::{
    db_for_read, db_for_write, get_replica, global, master, pin, unpinned_replica, Delegate, Hint,
    Operation, Reason, Role, Route, Router,
};
pub use stickiness::{ConsistencyToken, Store};
