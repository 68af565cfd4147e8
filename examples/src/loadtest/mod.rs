//! The load test: simulated users doing read-after-write against the real dev cluster with
//! real replica lag, under each consistency strategy in turn, measuring throughput, latency,
//! replica offload and stale reads. On PostgreSQL (streaming replicas, replay paused) or on
//! MariaDB (GTID replicas, SQL threads stopped).
//!
//! A *stale read* is a list that lacks the user's own acknowledged write: every user writes
//! rows with an increasing sequence number and checks that a later list sees the last one.
//!
//! Files: `strategy.rs` ([`Strategy`], [`Settings`]), `backend.rs` ([`Backend`], [`Target`]:
//! the seam between the two databases), `mariadb.rs` (what MariaDB does differently),
//! `user.rs` (one simulated user, [`SCHEMA_SQL`]), `run.rs` ([`run()`], [`Outcome`]), `cpu.rs`
//! (the primary's CPU time), `report.rs` ([`table`], [`plot`]). The binary is
//! `src/bin/loadtest.rs`, an example run's results are in `examples/loadtest/results/`.

mod backend;
mod cpu;
mod mariadb;
mod report;
mod run;
mod strategy;
mod user;

pub use backend::{Backend, Target};
pub use mariadb::MariaDbSet;
pub use report::{plot, table};
pub use run::{oracle_share, run, Outcome};
pub use strategy::{Settings, Strategy};
pub use user::SCHEMA_SQL;
