//! What the demo's two services (diesel-async and SeaORM) share: the HTTP surface, the
//! capture of routing decisions, the dev-cluster set-up, and the scripted scenario that drives
//! a running service over real HTTP and checks what it sees. Also the library part of the load
//! test (`pindb-loadtest`).
//!
//! Files, one concept each: `service.rs` (the HTTP surface), `capture.rs` ([`capture`]),
//! `scenario.rs` ([`scenario`]), `demo.rs` (set-up and [`run_demo`]), the load test
//! ([`loadtest`]).

pub mod capture;
mod demo;
pub mod loadtest;
pub mod scenario;
mod service;

pub use demo::{demo_config, replicas_reached, run_demo};
pub use service::{
    metrics_routes, respond, serve, user_key, AppError, ListQuery, NewNote, Reply, SCHEMA_SQL,
};
