//! A second cluster for failover tests: a primary and two streaming standbys made by
//! `scripts/cluster` with `PINDB_CLUSTER_NODES=streaming` in `target/pindb-failover/`, on ports
//! `PINDB_FAILOVER_PORT_BASE` (default 25440) to +2. Promotions there never disturb the tests
//! that run on the dev cluster at the same time.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::cluster::Cluster;

/// The failover cluster's port-base variable.
pub const FAILOVER_PORT_BASE_VAR: &str = "PINDB_FAILOVER_PORT_BASE";

/// One test at a time changes the failover cluster's roles.
static EXCLUSIVE: Mutex<()> = Mutex::new(());

/// The failover cluster, held by one test; dropping it (even in a failing test) brings back
/// the standard topology: node 0 the primary, nodes 1 and 2 its standbys.
#[derive(Debug)]
pub struct FailoverCluster {
    /// Its nodes: addresses, and promoting, stopping and starting them (a `Copy` handle, to
    /// change roles from another thread while the test's task runs a workload).
    pub nodes: Nodes,
    _exclusive: MutexGuard<'static, ()>,
}

/// The nodes of the [`FailoverCluster`].
#[derive(Debug, Clone, Copy)]
pub struct Nodes {
    base: u16,
}

impl FailoverCluster {
    /// Takes the cluster for this test, starting (or creating, or repairing) it in the standard
    /// topology, verified by `scripts/cluster verify`. Panics with "SET-UP FAILED" when that
    /// fails: the test's own behaviour was never tried.
    pub fn exclusive() -> FailoverCluster {
        let exclusive = EXCLUSIVE.lock().unwrap_or_else(PoisonError::into_inner);
        let base = std::env::var(FAILOVER_PORT_BASE_VAR)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(25440);
        let cluster = FailoverCluster {
            nodes: Nodes { base },
            _exclusive: exclusive,
        };
        for step in ["up", "verify"] {
            let out = run_script(base, &[step]);
            match out {
                Ok(out) if out.status.success() => {}
                Ok(out) => panic!(
                    "SET-UP FAILED (not the behaviour under test): `scripts/cluster {step}` on \
                     the failover cluster (ports {base}-{}) failed:\n{}",
                    base + 2,
                    String::from_utf8_lossy(&out.stderr)
                ),
                Err(e) => panic!("SET-UP FAILED: cannot run scripts/cluster: {e}"),
            }
        }
        cluster
    }
}

impl Nodes {
    /// The port of node `n` (0: the standard primary; 1, 2: its standbys).
    pub fn port(&self, n: usize) -> u16 {
        self.base + n as u16
    }

    /// The URL of node `n`.
    pub fn url(&self, n: usize) -> String {
        format!("postgres://pindb@127.0.0.1:{}/pindb", self.port(n))
    }

    /// A libpq multi-host URL of the nodes, in this order.
    pub fn multi_host_url(&self, nodes: &[usize]) -> String {
        let hosts: Vec<String> = nodes
            .iter()
            .map(|&n| format!("127.0.0.1:{}", self.port(n)))
            .collect();
        format!("postgres://pindb@{}/pindb", hosts.join(","))
    }

    /// The nodes as a [`Cluster`] in the standard topology (for its fixtures: schemas,
    /// connections, waiting for replay).
    pub fn as_cluster(&self) -> Cluster {
        let mut cluster = Cluster::from_env();
        cluster.primary_url = self.url(0);
        cluster.replica_urls = [self.url(1), self.url(2)];
        cluster
    }

    /// `scripts/cluster promote n`: the primary stops cleanly, node `n` is promoted and the
    /// others follow it (`old_down`: the old primary stays stopped). Returns how long the
    /// script took.
    pub fn promote(&self, n: usize, old_down: bool) -> Duration {
        let start = Instant::now();
        let node = n.to_string();
        let mut args = vec!["promote", node.as_str()];
        if old_down {
            args.push("--old-down");
        }
        self.script(&args);
        start.elapsed()
    }

    /// Stops node `n` at once (immediate mode: like a crash).
    pub fn stop_node(&self, n: usize) {
        self.script(&["stop-node", node_name(n)]);
    }

    /// Starts node `n` again as it was: a standby streams; a former primary comes back
    /// writable (a split brain).
    pub fn start_node(&self, n: usize) {
        self.script(&["start-node", node_name(n)]);
    }

    /// Starts node `n` without waiting for it to stream (a standby whose primary is gone).
    pub fn start_node_no_wait(&self, n: usize) {
        self.script(&["start-node", node_name(n), "--no-wait"]);
    }

    fn script(&self, args: &[&str]) {
        let out = run_script(self.base, args)
            .unwrap_or_else(|e| panic!("running scripts/cluster failed: {e}"));
        assert!(
            out.status.success(),
            "scripts/cluster {args:?} on the failover cluster failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for FailoverCluster {
    fn drop(&mut self) {
        // `up` restores the standard topology, whatever the test left.
        let _ = run_script(self.nodes.base, &["up"]);
    }
}

fn run_script(base: u16, args: &[&str]) -> std::io::Result<std::process::Output> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    std::process::Command::new(root.join("scripts/cluster"))
        .args(args)
        .env("PINDB_CLUSTER_DIR", root.join("target/pindb-failover"))
        .env("PINDB_PORT_BASE", base.to_string())
        .env("PINDB_CLUSTER_NODES", "streaming")
        .output()
}

fn node_name(n: usize) -> &'static str {
    match n {
        0 => "primary",
        1 => "replica1",
        2 => "replica2",
        _ => panic!("the failover cluster has nodes 0, 1 and 2, not {n}"),
    }
}
