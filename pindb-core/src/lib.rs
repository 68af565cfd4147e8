//! # pindb-core
//!
//! The routing engine of pindb, with no ORM in it: which PostgreSQL database (a set's master,
//! one of its replicas, or an unmanaged database) serves each statement, decided per unit of
//! work by a *pinning context*. The adapters (`pindb-diesel`, `pindb-seaorm`) ask it for a
//! [`Route`] and run the statement there.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), pindb_core::PinDbError> {
//! use pindb_core::{Config, Hint, Role, Router};
//!
//! let router = Router::new(Config::from_toml_str(r#"
//!     [masters.default]
//!     url = "postgres://app@10.0.0.1/app"
//!     [sets]
//!     default = [{ host = "10.0.0.2" }, { host = "10.0.0.3" }]
//! "#)?)?;
//!
//! pindb_core::scope(async {
//!     // What an adapter does for each statement: classify it, then decide.
//!     let read = router.route_sql("SELECT * FROM users WHERE id = $1")?;
//!     assert_eq!(read.role, Role::Replica);
//!     // Code that knows it reads or writes can ask directly.
//!     assert_eq!(router.db_for_read(&Hint::default())?.alias, read.alias);
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
//! Every public item has one path: the crate root, except what only adapters need, under
//! [`adapter`]. Inside, one module per concept: `config` (settings, loading), `populate` (the
//! alias map), `topology` (aliases, sets, health cells), `context` (the pinning context and
//! its propagation), `flight` (writes sent whose outcome is not known yet), `guard` (`master` / `unpinned_replica`), `router` (decisions, the
//! builder, the global router), `replica` (replica choice and health), `probe` and `monitor`
//! (pindb's own connections, replica polling, the topology check), `roles` (who is the
//! primary of a set given as hosts), `discovery` (runtime replicas: slots, `set_replicas`),
//! `dns` (their DNS refresh), `pool_table` (adapters' pools that follow them), `consistency`
//! (read-your-writes across contexts, tokens), `store` (where positions are kept), `lsn`,
//! `gtid` (MariaDB's positions), `domain` (a MariaDB set's replication domain), `classify` (read or write, per SQL dialect), `jobs`, `web`
//! (the tower layer), `error`.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backend;
mod classify;
mod config;
mod consistency;
mod context;
mod coverage;
mod discovery;
#[cfg(feature = "dns")]
mod dns;
mod domain;
mod endpoint;
mod error;
mod flight;
mod freshness;
mod gtid;
mod guard;
mod jobs;
mod lsn;
mod monitor;
mod pool_table;
mod populate;
mod probe;
mod replica;
mod roles;
mod router;
mod status;
mod store;
mod subscription;
mod topology;
#[cfg(feature = "tower")]
mod web;

pub use config::{
    AllLaggingPolicy, Config, MonitorSettings, ReadSettings, ReplicaPolicy, RouterMode,
    StickinessSettings, TopologyCheck, WebSettings, ENV_URL_PREFIX,
};
pub use consistency::{Consistency, ConsistencyToken};
pub use context::{
    get_newly_pinned, get_pinned, is_pinned, scope, spawn, spawn_blocking, unpin_all, Context,
    GuardKind, InContext, Scoped,
};
pub use error::PinDbError;
pub use gtid::{Gtid, GtidPosition, ParseGtidError};
pub use guard::Guard;
pub use jobs::{import_token, run_job, run_worker, UnpinOnDrop, WorkerReport};
pub use lsn::{Lsn, ParseLsnError};
pub use populate::{DatabaseSettings, DiscoverySettings, ReplicaKind};
pub use replica::ReplicaStatus;
pub use router::{
    db_for_read, db_for_write, get_replica, global, master, pin, unpinned_replica, Delegate, Hint,
    Operation, Reason, Role, Route, Router, RouterBuilder,
};
pub use status::{DatabaseStatus, SlotStatus};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use store::RedisStore;
pub use store::{MemoryStore, Positions, Store, StoreFuture};
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub use web::{PinDbLayer, PinDbService, TOKEN_HEADER};

pub mod adapter {
    //! What adapters (pindb-diesel, pindb-seaorm, your own) need and applications do not:
    //! the alias map to open pools for, the classifier, statement shapes.
    //!
    //! An adapter opens one pool per entry of [`Topology::databases`] (reached with
    //! [`Router::topology`](crate::Router::topology)), keeps them in that order, and runs each
    //! statement on the pool at the index of the [`Route`](crate::Route) that
    //! [`Router::route_sql`](crate::Router::route_sql) (or
    //! [`Router::route_shape`](crate::Router::route_shape) for a cached [`Shape`]) returns.
    //! A write whose checkout fails gives its [`Route::pin`](crate::Route::pin) back with
    //! [`Router::write_not_sent`](crate::Router::write_not_sent).
    pub use crate::backend::Backend;
    pub use crate::classify::{classify, main_table, Dialect, Footprint, StatementKind};
    pub use crate::context::NewPin;
    pub use crate::discovery::DatabaseRef;
    pub use crate::endpoint::{
        Failed, ServerSearch, FAILED_TRIES, MARIADB_SERVER_SQL, SERVER_ADDRESS_SQL, SERVER_TRIES,
    };
    pub use crate::flight::WriteFlight;
    pub use crate::pool_table::PoolTable;
    pub use crate::populate::{
        populate_replicas, Database, Membership, PoolSettings, DEFAULT_PORT,
    };
    pub use crate::router::{Abandoned, Promotion, ReplicaFailure, Shape, REFUSED_GRACE};
    pub use crate::topology::Topology;
}
