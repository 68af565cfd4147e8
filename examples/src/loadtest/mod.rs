//! The load test: simulated users doing read-after-write against the real dev cluster with
//! real replica lag, under each consistency strategy in turn, measuring throughput, latency,
//! replica offload and stale reads.
//!
//! A *stale read* is a list that lacks the user's own acknowledged write: every user writes
//! rows with an increasing sequence number and checks that a later list sees the last one.
//!
//! Files: `strategy.rs` ([`Strategy`], [`Settings`]), `user.rs` (one simulated user,
//! [`SCHEMA_SQL`]), `run.rs` ([`run()`], [`Outcome`]), `cpu.rs` (the primary's CPU time),
//! `report.rs` ([`table`], [`plot`]). The binary is `src/bin/loadtest.rs`, an example run's
//! results are in `examples/loadtest/results/`.

mod cpu;
mod report;
mod run;
mod strategy;
mod user;

pub use report::{plot, table};
pub use run::{oracle_share, run, Outcome};
pub use strategy::{Settings, Strategy};
pub use user::SCHEMA_SQL;
