//! # pindb-seaorm
//!
//! A SeaORM connection that routes every statement to a replica or the master, decided by the
//! pinning context (see `pindb-core`). Pass a [`PinDb`] wherever a
//! `DatabaseConnection` goes: `Entity::find().all(&db)`, `ActiveModel::insert(&db)`,
//! `update_many`, `delete_by_id`, `count`, `paginate`, streams, `db.transaction(..)`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), sea_orm::DbErr> {
//! use sea_orm::{ConnectionTrait, Statement, DbBackend};
//! use pindb_seaorm::PinDb;
//!
//! let config = pindb_seaorm::pindb_core::Config::load("pindb.toml").map_err(pindb_seaorm::Error::from)?;
//! let db = PinDb::connect(config).await?;
//! pindb_core::scope(async {
//!     db.query_all_raw(Statement::from_string(DbBackend::Postgres, "SELECT 1")).await?; // a replica
//!     db.execute_unprepared("INSERT INTO notes (body) VALUES ('hi')").await?;          // the master
//!     Ok::<_, sea_orm::DbErr>(())
//! }).await
//! # }
//! ```
//!
//! ## Routing rules
//! - Every statement is routed by its **text** with pindb-core's classifier, never by the
//!   method that sent it: SeaORM sends `INSERT ... RETURNING` through `query_one`.
//! - `execute_unprepared` always goes to the master (under the router's write rules): it is
//!   for DDL and scripts, which the classifier could only call writes anyway.
//! - `begin` / `transaction` run on the master (strict: an error if the set is not pinned;
//!   greedy: they pin it). With `AccessMode::ReadOnly` (`begin_with_config`,
//!   `begin_with_options`, `transaction_with_config`) they run on the context's replica.
//!   Every statement inside a transaction runs on its connection (a SeaORM
//!   `DatabaseTransaction`).
//! - A transaction whose future is dropped, whose closure panics, or that is begun and dropped
//!   is rolled back by SeaORM and sqlx (the pooled connection runs the queued `ROLLBACK`
//!   before it is reused); the routed connection keeps no transaction state of its own, so
//!   nothing else is needed (tests: `tests/lifecycle.rs`).
//! - With several sets, `begin` / `transaction` open on the `default` set's master;
//!   [`PinDb::begin_on`] / [`PinDb::transaction_on`] open on another
//!   set's. SeaORM hands every statement of a transaction straight to its own
//!   `DatabaseTransaction`, so pindb cannot refuse a statement of another set inside one:
//!   choose the set when the transaction begins.
//! - Delegate-router hints: the statement's main table, from
//!   [`pindb_core::adapter::main_table`] (the target of `INSERT INTO` / `UPDATE` /
//!   `DELETE FROM`, else the first table after the top-level `FROM`). Only worked out when a
//!   delegate is configured.
//! - A read-only request never acquires a master connection: each statement acquires from the
//!   pool of the alias it is routed to, and reads are never routed to the master unless the
//!   set is pinned or guarded.
//!
//! ## APIs that need the master accessor
//! These take a concrete `&DatabaseConnection` (or are inherent to it), so call them on
//! [`PinDb::master`] (or [`PinDb::connection`] for another alias):
//! migrations (`sea-orm-migration`'s `Migrator::up(db.master(), ..)`, `SchemaManager`),
//! `DatabaseConnection::ping`, `close` / `close_by_ref`, `set_metric_callback`,
//! `get_postgres_connection_pool` (raw sqlx pool), `get_schema_builder` /
//! `get_schema_registry`, the inherent `transaction_async` / `transaction_with_config_async`,
//! RBAC (`load_rbac`, `restricted_for`), and any function of your own typed `&DatabaseConnection`.
//!
//! Routing errors reach the caller as a `DbErr` (see [`routing_error`]); constructors return
//! [`Error`], which `?` turns into a `DbErr`.
#![forbid(unsafe_code)]

pub use pindb_core;

mod connection;
mod error;
mod pool;
mod server;
mod stream;
mod unsent;

pub use connection::PinDb;
pub use error::{is_unpinned_write, routing_error, Error};
