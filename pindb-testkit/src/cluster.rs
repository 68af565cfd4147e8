//! The dev cluster: its addresses (from the environment), connections, WAL positions and
//! waiting for replicas, stopping and starting replicas. Replay control is in `replay.rs`
//! ([`Cluster::exclusive`], [`Cluster::shared`]), fresh schemas in `schema.rs`
//! ([`Cluster::fresh_schema`]).

use std::time::{Duration, Instant};

use pindb_core::Lsn;
use tokio_postgres::{Client, NoTls};

/// Environment variables (printed by `scripts/cluster env`) and their defaults.
pub const PRIMARY_URL_VAR: &str = "PINDB_PRIMARY_URL";
/// Replica 1's URL variable.
pub const REPLICA1_URL_VAR: &str = "PINDB_REPLICA1_URL";
/// Replica 2's URL variable.
pub const REPLICA2_URL_VAR: &str = "PINDB_REPLICA2_URL";
/// Redis URL variable.
pub const REDIS_URL_VAR: &str = "PINDB_REDIS_URL";
/// The unrelated primary's URL variable.
pub const STRANGER_URL_VAR: &str = "PINDB_STRANGER_URL";
/// The logical subscriber's URL variable.
pub const LOGICAL_URL_VAR: &str = "PINDB_LOGICAL_URL";
/// The dev cluster's PgBouncer (its `pindb` database: the primary in transaction mode).
pub const PGBOUNCER_URL_VAR: &str = "PINDB_PGBOUNCER_URL";

const DEFAULT_PRIMARY: &str = "postgres://pindb@127.0.0.1:25432/pindb";
const DEFAULT_REPLICA1: &str = "postgres://pindb@127.0.0.1:25433/pindb";
const DEFAULT_REPLICA2: &str = "postgres://pindb@127.0.0.1:25434/pindb";
const DEFAULT_REDIS: &str = "redis://127.0.0.1:6379/";
const DEFAULT_STRANGER: &str = "postgres://pindb@127.0.0.1:25435/pindb";
const DEFAULT_LOGICAL: &str = "postgres://pindb@127.0.0.1:25436/pindb";
const DEFAULT_PGBOUNCER: &str = "postgres://pindb@127.0.0.1:25462/pindb";

/// How long helpers wait for replication before failing the test.
pub const REPLICATION_TIMEOUT: Duration = Duration::from_secs(30);

/// The dev cluster's addresses.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// The primary.
    pub primary_url: String,
    /// Replica 1 and replica 2 (index 0 and 1).
    pub replica_urls: [String; 2],
    /// Redis.
    pub redis_url: String,
    /// A primary of another cluster (its own `initdb`), for topology checks.
    pub stranger_url: String,
    /// A logical-replication subscriber of the primary (its own `initdb`).
    pub logical_url: String,
    /// PgBouncer in front of the primary and both replicas: see [`Cluster::pooled_url`].
    pub pgbouncer_url: String,
}

fn var_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

impl Cluster {
    /// Reads `PINDB_PRIMARY_URL`, `PINDB_REPLICA1_URL`, `PINDB_REPLICA2_URL`,
    /// `PINDB_REDIS_URL`, falling back to `scripts/cluster`'s defaults.
    pub fn from_env() -> Cluster {
        Cluster {
            primary_url: var_or(PRIMARY_URL_VAR, DEFAULT_PRIMARY),
            replica_urls: [
                var_or(REPLICA1_URL_VAR, DEFAULT_REPLICA1),
                var_or(REPLICA2_URL_VAR, DEFAULT_REPLICA2),
            ],
            redis_url: var_or(REDIS_URL_VAR, DEFAULT_REDIS),
            stranger_url: var_or(STRANGER_URL_VAR, DEFAULT_STRANGER),
            logical_url: var_or(LOGICAL_URL_VAR, DEFAULT_LOGICAL),
            pgbouncer_url: var_or(PGBOUNCER_URL_VAR, DEFAULT_PGBOUNCER),
        }
    }

    /// Node `node` (0: the primary, 1 or 2: a replica) through the dev cluster's PgBouncer,
    /// in transaction mode or, with `session`, session mode.
    pub fn pooled_url(&self, node: usize, session: bool) -> String {
        let db = match node {
            0 => "pindb".to_owned(),
            1 | 2 => format!("pindb_replica{node}"),
            _ => panic!("the dev cluster has nodes 0, 1 and 2, not {node}"),
        };
        let suffix = if session { "_session" } else { "" };
        let base = self.pgbouncer_url.rsplit_once('/').map_or("", |(b, _)| b);
        format!("{base}/{db}{suffix}")
    }

    /// Stops replica `n`'s server process (`scripts/cluster stop-node`, immediate mode: like
    /// a crash). Hold [`Cluster::exclusive`] while a replica is down.
    pub fn stop_replica(&self, n: usize) {
        run_cluster_script(&["stop-node", &format!("replica{n}")]);
    }

    /// Starts replica `n` again and waits until it streams.
    pub fn start_replica(&self, n: usize) {
        run_cluster_script(&["start-node", &format!("replica{n}")]);
    }

    /// The URL of replica `n` (1 or 2).
    pub fn replica_url(&self, n: usize) -> &str {
        match n {
            1 | 2 => &self.replica_urls[n - 1],
            _ => panic!("the dev cluster has replicas 1 and 2, not {n}"),
        }
    }

    /// A connection to the primary.
    pub async fn primary(&self) -> Client {
        connect(&self.primary_url).await
    }

    /// A connection to replica `n` (1 or 2).
    pub async fn replica(&self, n: usize) -> Client {
        connect(self.replica_url(n)).await
    }

    /// The primary's current WAL write position (everything committed so far is before it).
    pub async fn primary_lsn(&self) -> Lsn {
        let client = self.primary().await;
        query_lsn(&client, "SELECT pg_current_wal_lsn()::text").await
    }

    /// Waits until replica `n` has replayed `lsn`; panics after [`REPLICATION_TIMEOUT`].
    pub async fn wait_for_replay(&self, n: usize, lsn: Lsn) {
        let client = self.replica(n).await;
        self.wait_for(&client, n, lsn, "pg_last_wal_replay_lsn()")
            .await
    }

    /// Waits until replica `n` has *received* `lsn` (whether or not it replayed it): proof that
    /// a paused replica is behind because of the pause, not because it is slow.
    pub async fn wait_for_receive(&self, n: usize, lsn: Lsn) {
        let client = self.replica(n).await;
        self.wait_for(&client, n, lsn, "pg_last_wal_receive_lsn()")
            .await
    }

    async fn wait_for(&self, client: &Client, n: usize, lsn: Lsn, position: &str) {
        let sql = format!("SELECT coalesce({position} >= $1::text::pg_lsn, false)");
        let target = lsn.to_string();
        let deadline = Instant::now() + REPLICATION_TIMEOUT;
        loop {
            let row = client
                .query_one(&sql, &[&target])
                .await
                .unwrap_or_else(|e| panic!("replica {n}: {position} query failed: {e:?}"));
            if row.get::<_, bool>(0) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "replica {n} did not reach {position} >= {lsn} within {REPLICATION_TIMEOUT:?}; \
                     check `scripts/cluster status`"
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until both replicas have replayed everything committed on the primary so far.
    pub async fn sync_replicas(&self) {
        let lsn = self.primary_lsn().await;
        self.wait_for_replay(1, lsn).await;
        self.wait_for_replay(2, lsn).await;
    }
}

/// Connects to `url`, or panics with a message that says how to start the cluster.
pub async fn connect(url: &str) -> Client {
    match tokio_postgres::connect(url, NoTls).await {
        Ok((client, connection)) => {
            tokio::spawn(async move {
                // The connection ends when the client is dropped; errors surface on queries.
                let _ = connection.await;
            });
            client
        }
        Err(e) => panic!(
            "cannot connect to the pindb dev cluster at {url}: {e}\n\
             Start it with `scripts/cluster up` (or point PINDB_PRIMARY_URL / PINDB_REPLICA1_URL / \
             PINDB_REPLICA2_URL at another cluster)."
        ),
    }
}

async fn query_lsn(client: &Client, sql: &str) -> Lsn {
    let text: String = client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql} failed: {e:?}"))
        .get(0);
    Lsn::parse(&text).unwrap_or_else(|| panic!("{sql} returned `{text}`, not an LSN"))
}

fn run_cluster_script(args: &[&str]) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/cluster");
    let out = std::process::Command::new(&script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {} failed: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}
