//! Test support for pindb's integration tests: the local primary + two streaming replicas
//! started by `scripts/cluster up`, fresh schemas, WAL replay pause/resume, and waiting for a
//! replica to reach an LSN.
//!
//! Dev-only. Nothing is skipped silently: when the cluster is not reachable, every helper
//! panics with a message that says to run `scripts/cluster up`.
//!
//! Tests run in parallel (threads and, under nextest, processes). Pausing replay on a replica
//! affects every test that reads from it, so tests coordinate through advisory locks on the
//! primary: [`Cluster::exclusive`] for tests that pause replay, [`Cluster::shared`] for tests
//! that need replay flowing.
//!
//! ```no_run
//! # #[tokio::main] async fn main() {
//! use pindb_testkit::Cluster;
//!
//! let cluster = Cluster::from_env();
//! let mut control = cluster.exclusive().await;
//! let schema = cluster.fresh_schema().await;
//! control.pause(1).await;
//! // ... writes on the primary stay invisible on replica 1 ...
//! control.resume(1).await;
//! schema.drop().await;
//! # }
//! ```
//!
//! Files, one concept each: `cluster.rs` ([`Cluster`]: addresses, connections, waiting for
//! replicas), `replay.rs` (pausing replay, the replay locks), `schema.rs` ([`TestSchema`]),
//! `fixture.rs` ([`Fixture`], [`bench_users`]), `gate.rs` ([`Gate`]: a write held in flight), `logical.rs` (the logical subscriber,
//! [`SubscriptionControl`]), `isolation.rs`
//! ([`contexts_that_saw_foreign_pins`]), `hunt.rs` ([`ticker`], [`MasterSamples`]: what the
//! promise hunts measure with), `redis.rs` ([`PrivateRedis`]), `dns.rs` ([`DnsServer`]), `wait.rs`
//! ([`wait_until`]), `mariadb.rs` ([`MariaDbCluster`]: the MariaDB primary and its two GTID
//! replicas, stopping a replica's SQL thread under [`MariaDbCluster::exclusive`]).
#![forbid(unsafe_code)]

pub mod ab;
mod cluster;
mod dns;
mod failover;
mod fixture;
mod gate;
mod hunt;
mod isolation;
mod logical;
mod mariadb;
mod proxy;
mod redis;
mod redis_cli;
mod redis_cluster;
mod replay;
mod schema;
mod sentinel;
mod wait;

pub use cluster::{
    connect, Cluster, LOGICAL_URL_VAR, PGBOUNCER_URL_VAR, PRIMARY_URL_VAR, REDIS_URL_VAR,
    REPLICA1_URL_VAR, REPLICA2_URL_VAR, REPLICATION_TIMEOUT, STRANGER_URL_VAR,
};
pub use dns::DnsServer;
pub use failover::{FailoverCluster, FAILOVER_PORT_BASE_VAR};
pub use fixture::{bench_set, bench_users, BenchSet, Fixture};
pub use gate::Gate;
pub use hunt::{
    keyed_rounds, keyed_rounds_in_turns, monitor_finds_fit, monitor_saw_replay, monitor_started,
    monotonic_hunt, staleness_hunt, ticker, ticker_world, Background, HuntReport, MasterSamples,
};
pub use isolation::contexts_that_saw_foreign_pins;
pub use logical::{as_superuser, SubscriptionControl, PUBLICATION, SUBSCRIPTION};
pub use mariadb::{
    gtid_seq, MariaDbApplyControl, MariaDbCluster, MariaDbSharedApply, MARIADB_ADMIN_URL_VAR,
    MARIADB_MASTER_URL_VAR, MARIADB_REPLICA1_URL_VAR, MARIADB_REPLICA2_URL_VAR,
    MARIADB_REPLICA3_URL_VAR, MULTI_SOURCE_CONNECTION,
};
pub use pindb_core::Lsn;
pub use proxy::{address, with_address, Proxy};
pub use redis::PrivateRedis;
pub use redis_cluster::RedisCluster;
pub use replay::{pause_replay, resume_replay, ReplayControl, SharedReplay};
pub use schema::TestSchema;
pub use sentinel::{SentinelRedis, SENTINEL_MASTER};
pub use wait::wait_until;
