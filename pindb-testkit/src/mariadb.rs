//! The dev cluster's MariaDB set (`scripts/mariadb`, which `scripts/cluster up` runs): a primary
//! with three GTID replicas, the third following it through the named replication connection
//! [`MULTI_SOURCE_CONNECTION`] (as a replica of several masters does). Its addresses (from the environment), queries through the `mariadb`
//! command-line client, GTID positions and waiting for replicas, and stopping a replica's SQL
//! (apply) thread under a lock that keeps such tests apart from tests that need it flowing.
//!
//! Everything here blocks (it runs the `mariadb` client, no driver): from an async test, call it
//! inside `tokio::task::spawn_blocking`, or accept that the test's own runtime thread waits.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::cluster::REPLICATION_TIMEOUT;

/// The primary's URL variable (the application user `pindb`), printed by `scripts/cluster env`.
pub const MARIADB_MASTER_URL_VAR: &str = "PINDB_MARIADB_MASTER_URL";
/// Replica 1's URL variable (the application user).
pub const MARIADB_REPLICA1_URL_VAR: &str = "PINDB_MARIADB_REPLICA1_URL";
/// Replica 2's URL variable (the application user).
pub const MARIADB_REPLICA2_URL_VAR: &str = "PINDB_MARIADB_REPLICA2_URL";
/// Replica 3's URL variable (the application user): the replica on a named connection.
pub const MARIADB_REPLICA3_URL_VAR: &str = "PINDB_MARIADB_REPLICA3_URL";
/// The replication connection replica 3 follows the primary through (`CHANGE MASTER 'main'
/// TO`): pindb's `replication_connection` for it.
pub const MULTI_SOURCE_CONNECTION: &str = "main";
/// The admin user's URL variable (`pindb_admin` on the primary; the same user exists on the
/// replicas, by replication).
pub const MARIADB_ADMIN_URL_VAR: &str = "PINDB_MARIADB_ADMIN_URL";

/// How long one `mariadb` client call may take before it counts as failed.
const CLIENT_TIMEOUT_SECS: u32 = 120;

const START_HINT: &str = "Start it with `scripts/cluster up` (or `scripts/mariadb up`) and \
                          `eval \"$(scripts/cluster env)\"`; `scripts/mariadb status` shows it.";

/// The MariaDB primary and its three replicas; see the module doc. Nodes are numbered 0 (the
/// primary), 1, 2 and 3 (the replicas; 3 on the named connection).
#[derive(Debug, Clone)]
pub struct MariaDbCluster {
    master_url: String,
    replica_urls: [String; 3],
    admin_url: String,
}

/// What a `mysql://user:password@host:port/database` URL names (no percent-escapes).
#[derive(Debug, Clone)]
struct Endpoint {
    host: String,
    port: u16,
    user: String,
    password: String,
    database: String,
}

fn endpoint(url: &str) -> Endpoint {
    let parsed = (|| {
        let rest = url
            .strip_prefix("mysql://")
            .or_else(|| url.strip_prefix("mariadb://"))?;
        let (auth, rest) = rest.rsplit_once('@')?;
        let (user, password) = auth.split_once(':').unwrap_or((auth, ""));
        let (host_port, database) = rest.split_once('/').unwrap_or((rest, ""));
        let database = database.split('?').next().unwrap_or("");
        let (host, port) = match host_port.rsplit_once(':') {
            Some((host, port)) => (host, port.parse().ok()?),
            None => (host_port, 3306),
        };
        Some(Endpoint {
            host: host.to_owned(),
            port,
            user: user.to_owned(),
            password: password.to_owned(),
            database: database.to_owned(),
        })
    })();
    parsed.unwrap_or_else(|| panic!("`{url}` is not a mysql://user:password@host:port/db URL"))
}

fn env_url(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => {
            panic!("{name} is not set: the tests need the dev cluster's MariaDB set. {START_HINT}")
        }
    }
}

impl MariaDbCluster {
    /// Reads `PINDB_MARIADB_MASTER_URL`, `PINDB_MARIADB_REPLICA1_URL` (2, 3) and
    /// `PINDB_MARIADB_ADMIN_URL` (what `scripts/cluster env`
    /// prints); panics, saying to run `scripts/cluster up`, when one is missing.
    pub fn from_env() -> MariaDbCluster {
        let cluster = MariaDbCluster {
            master_url: env_url(MARIADB_MASTER_URL_VAR),
            replica_urls: [
                env_url(MARIADB_REPLICA1_URL_VAR),
                env_url(MARIADB_REPLICA2_URL_VAR),
                env_url(MARIADB_REPLICA3_URL_VAR),
            ],
            admin_url: env_url(MARIADB_ADMIN_URL_VAR),
        };
        // Malformed URLs fail here, not in the middle of a test.
        for node in 0..4 {
            cluster.app(node);
        }
        cluster.admin(0);
        cluster
    }

    /// The primary's URL, as the application user `pindb`.
    pub fn master_url(&self) -> &str {
        &self.master_url
    }

    /// The URL of replica `n` (1, 2 or 3), as the application user.
    pub fn replica_url(&self, n: usize) -> &str {
        match n {
            1..=3 => &self.replica_urls[n - 1],
            _ => panic!("the MariaDB set has replicas 1, 2 and 3, not {n}"),
        }
    }

    /// `SHOW SLAVE {connection} STATUS`: replica `n`'s replication connection, quoted, or
    /// nothing for the default one.
    fn connection(n: usize) -> String {
        match n {
            3 => format!("'{MULTI_SOURCE_CONNECTION}'"),
            _ => String::new(),
        }
    }

    /// The admin user's URL (the primary); [`MariaDbCluster::query`] uses it, on any node.
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }

    /// The admin user's URL of node `node` (0: the primary, 1 or 2: a replica): for a test
    /// that holds a session there (a lock the replica's SQL thread waits behind).
    pub fn node_admin_url(&self, node: usize) -> String {
        let at = self.admin(node);
        format!(
            "mysql://{}:{}@{}:{}/{}",
            at.user, at.password, at.host, at.port, at.database
        )
    }

    /// The application user's URL of node `node` (0: the primary, 1 or 2: a replica).
    fn node_url(&self, node: usize) -> &str {
        match node {
            0 => &self.master_url,
            1..=3 => self.replica_url(node),
            _ => panic!("the MariaDB set has nodes 0 (primary), 1, 2 and 3, not {node}"),
        }
    }

    fn app(&self, node: usize) -> Endpoint {
        endpoint(self.node_url(node))
    }

    /// The admin user on node `node`: its address, the admin URL's user, password and database.
    fn admin(&self, node: usize) -> Endpoint {
        let at = self.app(node);
        Endpoint {
            host: at.host,
            port: at.port,
            ..endpoint(&self.admin_url)
        }
    }

    /// Both replicas behind one round-robin reader endpoint (the testkit's
    /// [`Proxy`](crate::Proxy), as HAProxy or a Kubernetes Service would balance them), and
    /// the replica entry that declares them by `server_id` (`servers`): each becomes a replica
    /// of its own.
    pub async fn reader_endpoint(&self) -> (crate::Proxy, pindb_core::DatabaseSettings) {
        let (one, two) = (
            crate::address(self.replica_url(1)),
            crate::address(self.replica_url(2)),
        );
        let endpoint = crate::Proxy::round_robin(&[&one, &two]).await;
        let url = crate::with_address(
            self.replica_url(1),
            &format!("127.0.0.1:{}", endpoint.port()),
        );
        let c = self.clone();
        // The `mariadb` client blocks.
        let servers = tokio::task::spawn_blocking(move || {
            [1, 2].map(|node| c.query_ok(node, "SELECT @@server_id").trim().to_owned())
        })
        .await
        .expect("asking the replicas' server_ids");
        let replica = pindb_core::DatabaseSettings {
            servers: servers.to_vec(),
            ..pindb_core::DatabaseSettings::from_url(url)
        };
        (endpoint, replica)
    }

    /// Runs `sql` (one or more `;`-separated statements) on node `node` (0: the primary, 1, 2
    /// or 3: a replica) as the admin user `pindb_admin`, in the database `pindb`. `Ok` is the
    /// output without column names: rows on lines, columns separated by tabs (the client's
    /// `--batch` escapes: `\t`, `\n`, `\\`, `NULL`). `Err` is the client's error, e.g.
    /// `ERROR 1290 (HY000) at line 1: The MariaDB server is running with the --read-only
    /// option ...` (connection failures too: `ERROR 2002`/`2003`).
    pub fn query(&self, node: usize, sql: &str) -> Result<String, String> {
        run(&self.admin(node), sql, false)
    }

    /// [`MariaDbCluster::query`] as the application user `pindb` (ALL on `pindb`.* only, no
    /// `READ ONLY ADMIN`): the replicas refuse its writes with error 1290.
    pub fn query_as_app(&self, node: usize, sql: &str) -> Result<String, String> {
        run(&self.app(node), sql, false)
    }

    /// [`MariaDbCluster::query`] for an answer the test relies on: panics, naming the node and
    /// the error, when it fails.
    fn query_ok(&self, node: usize, sql: &str) -> String {
        self.query(node, sql)
            .unwrap_or_else(|e| panic!("MariaDB node {node}: `{sql}` failed: {e}\n{START_HINT}"))
    }

    /// The primary's `@@gtid_binlog_pos`, e.g. `0-1-42` (domain 0, server 1, sequence 42).
    pub fn gtid_binlog_pos(&self) -> String {
        self.query_ok(0, "SELECT @@gtid_binlog_pos")
    }

    /// Replica `n`'s `@@gtid_slave_pos`: the last transaction its SQL thread applied.
    pub fn gtid_slave_pos(&self, n: usize) -> String {
        self.replica_url(n);
        self.query_ok(n, "SELECT @@gtid_slave_pos")
    }

    /// Replica `n`'s `SHOW SLAVE STATUS`, by column: `Slave_IO_Running`, `Slave_SQL_Running`,
    /// `Gtid_IO_Pos` (what the IO thread received), `Last_SQL_Error`...
    pub fn slave_status(&self, n: usize) -> BTreeMap<String, String> {
        self.replica_url(n);
        let sql = format!("SHOW SLAVE {} STATUS", Self::connection(n));
        let out = run(&self.admin(n), &sql, true).unwrap_or_else(|e| {
            panic!("MariaDB replica {n}: SHOW SLAVE STATUS failed: {e}\n{START_HINT}")
        });
        let mut lines = out.lines();
        let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
            panic!("MariaDB replica {n} is not a replica (SHOW SLAVE STATUS is empty); run `scripts/mariadb up`")
        };
        names
            .split('\t')
            .zip(values.split('\t'))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// Waits until replica `n` has applied `pos` (a GTID position such as
    /// [`MariaDbCluster::gtid_binlog_pos`] returned), with `MASTER_GTID_WAIT`; panics after
    /// [`REPLICATION_TIMEOUT`].
    pub fn wait_for_gtid(&self, n: usize, pos: &str) {
        self.replica_url(n);
        let secs = REPLICATION_TIMEOUT.as_secs();
        let waited = self.query_ok(n, &format!("SELECT MASTER_GTID_WAIT('{pos}', {secs})"));
        assert_eq!(
            waited,
            "0",
            "MariaDB replica {n} did not apply {pos} within {secs} s (it applied {}); \
             check `scripts/mariadb status`",
            self.gtid_slave_pos(n)
        );
    }

    /// Waits until replica `n`'s IO thread has *received* `pos` (`Gtid_IO_Pos`), whether or not
    /// its SQL thread applied it: proof that a replica with apply stopped is behind because of
    /// the stop, not because it is slow. Panics after [`REPLICATION_TIMEOUT`].
    pub fn wait_for_received(&self, n: usize, pos: &str) {
        let deadline = Instant::now() + REPLICATION_TIMEOUT;
        loop {
            let received = self
                .slave_status(n)
                .remove("Gtid_IO_Pos")
                .unwrap_or_default();
            if gtid_covers(&received, pos) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "MariaDB replica {n} did not receive {pos} within {REPLICATION_TIMEOUT:?} \
                 (Gtid_IO_Pos {received}); check `scripts/mariadb status`"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until every replica has applied everything committed on the primary so far.
    pub fn sync_replicas(&self) {
        let pos = self.gtid_binlog_pos();
        for n in 1..=3 {
            self.wait_for_gtid(n, &pos);
        }
    }

    /// The benches' `bench_users` table, with the row they read (42), on every server.
    pub fn bench_users(&self) {
        self.query_as_app(
            0,
            "CREATE TABLE IF NOT EXISTS bench_users (id INT PRIMARY KEY, name VARCHAR(64) NOT NULL); \
             INSERT IGNORE INTO bench_users VALUES (42, 'bench')",
        )
        .expect("the bench table");
        self.sync_replicas();
    }

    /// Exclusive control of the replicas' SQL threads: waits until no other test holds it or
    /// [`MariaDbCluster::shared`], then lets this test stop and start apply. Dropping it starts
    /// again every SQL thread it stopped (before the lock is released).
    ///
    /// The lock is an `flock` on a file in the temporary directory named after the primary's
    /// port, so it keeps apart the tests of every process on this machine that use the same
    /// MariaDB set through this type; `scripts/mariadb stop-apply` by hand does not take it.
    /// It is released when the process dies.
    pub fn exclusive(&self) -> MariaDbApplyControl {
        let lock = self.lock_file();
        lock.lock()
            .unwrap_or_else(|e| panic!("taking the MariaDB apply lock failed: {e}"));
        MariaDbApplyControl {
            cluster: self.clone(),
            stopped: Vec::new(),
            deaf: Vec::new(),
            _lock: lock,
        }
    }

    /// Shared access with apply flowing: waits while another test holds
    /// [`MariaDbCluster::exclusive`]. Hold it for as long as the test needs replicas to catch
    /// up.
    pub fn shared(&self) -> MariaDbSharedApply {
        let lock = self.lock_file();
        lock.lock_shared()
            .unwrap_or_else(|e| panic!("taking the shared MariaDB apply lock failed: {e}"));
        MariaDbSharedApply { _lock: lock }
    }

    fn lock_file(&self) -> File {
        let path =
            std::env::temp_dir().join(format!("pindb-mariadb-apply-{}.lock", self.app(0).port));
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .unwrap_or_else(|e| panic!("cannot open the lock file {}: {e}", path.display()))
    }

    /// `STOP SLAVE SQL_THREAD` or `START SLAVE SQL_THREAD` on replica `n`, then waits until
    /// `Slave_SQL_Running` says `state`.
    fn set_apply(&self, n: usize, verb: &str, state: &str) -> Result<(), String> {
        self.set_thread(n, "SQL", verb, state)
    }

    /// `{verb} SLAVE {thread}_THREAD` on replica `n` (`thread`: `SQL` or `IO`), then waits
    /// until `Slave_{thread}_Running` says `state`.
    fn set_thread(&self, n: usize, thread: &str, verb: &str, state: &str) -> Result<(), String> {
        self.replica_url(n);
        let connection = Self::connection(n);
        self.query(n, &format!("{verb} SLAVE {connection} {thread}_THREAD"))?;
        let deadline = Instant::now() + REPLICATION_TIMEOUT;
        loop {
            let status = self.slave_status(n);
            let running = status
                .get(&format!("Slave_{thread}_Running"))
                .map_or("", String::as_str);
            if running == state {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the {thread} thread of MariaDB replica {n} is `{running}`, not `{state}`, \
                     after {REPLICATION_TIMEOUT:?} ({})",
                    status
                        .get(&format!("Last_{thread}_Error"))
                        .map_or("", String::as_str)
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Holds the shared MariaDB apply lock: no replica's SQL thread is stopped (through
/// [`MariaDbApplyControl`]) while it lives.
#[derive(Debug)]
pub struct MariaDbSharedApply {
    _lock: File,
}

/// Exclusive control of the replicas' SQL threads; see [`MariaDbCluster::exclusive`].
#[derive(Debug)]
pub struct MariaDbApplyControl {
    cluster: MariaDbCluster,
    stopped: Vec<usize>,
    /// Replicas whose IO thread this control stopped.
    deaf: Vec<usize>,
    // Last field: dropped after `Drop::drop` started apply again, which releases the lock.
    _lock: File,
}

impl MariaDbApplyControl {
    /// Stops replica `n`'s SQL thread (`STOP SLAVE SQL_THREAD`; its IO thread keeps
    /// receiving) and waits until `Slave_SQL_Running` is `No`.
    pub fn stop_apply(&mut self, n: usize) {
        if !self.stopped.contains(&n) {
            self.stopped.push(n);
        }
        if let Err(e) = self.cluster.set_apply(n, "STOP", "No") {
            panic!("stopping apply on MariaDB replica {n} failed: {e}");
        }
    }

    /// Stops replica `n`'s IO thread (`STOP SLAVE IO_THREAD`): it receives nothing more, and
    /// its SQL thread still runs (so the monitor sees it applying), having applied
    /// everything it received.
    pub fn stop_receiving(&mut self, n: usize) {
        if !self.deaf.contains(&n) {
            self.deaf.push(n);
        }
        if let Err(e) = self.cluster.set_thread(n, "IO", "STOP", "No") {
            panic!("stopping the IO thread of MariaDB replica {n} failed: {e}");
        }
    }

    /// Starts replica `n`'s IO thread again and waits until `Slave_IO_Running` is `Yes`.
    pub fn start_receiving(&mut self, n: usize) {
        if let Err(e) = self.cluster.set_thread(n, "IO", "START", "Yes") {
            panic!("starting the IO thread of MariaDB replica {n} failed: {e}");
        }
        self.deaf.retain(|&s| s != n);
    }

    /// Starts replica `n`'s SQL thread again and waits until `Slave_SQL_Running` is `Yes`.
    pub fn start_apply(&mut self, n: usize) {
        if let Err(e) = self.cluster.set_apply(n, "START", "Yes") {
            panic!("starting apply on MariaDB replica {n} failed: {e}");
        }
        self.stopped.retain(|&s| s != n);
    }

    /// Stops replica `n`'s SQL thread if this control has not stopped it, else starts it.
    pub fn flip(&mut self, n: usize) {
        match self.stopped.contains(&n) {
            true => self.start_apply(n),
            false => self.stop_apply(n),
        }
    }

    /// Until `end`, flips one replica at random every 50-400 ms: a hunt's replicas stopping
    /// and starting to apply. Blocks (run it with `spawn_blocking`); returns the control, so
    /// that dropping it starts what is left stopped.
    pub fn flip_until(mut self, end: Instant) -> Self {
        while Instant::now() < end {
            self.flip(fastrand::usize(1..=2));
            std::thread::sleep(Duration::from_millis(fastrand::u64(50..400)));
        }
        self
    }
}

impl Drop for MariaDbApplyControl {
    fn drop(&mut self) {
        for n in std::mem::take(&mut self.deaf) {
            if let Err(e) = self.cluster.set_thread(n, "IO", "START", "Yes") {
                if !std::thread::panicking() {
                    panic!("could not start the IO thread again on MariaDB replica {n}: {e}");
                }
            }
        }
        for n in std::mem::take(&mut self.stopped) {
            if let Err(e) = self.cluster.set_apply(n, "START", "Yes") {
                if !std::thread::panicking() {
                    panic!("could not start apply again on MariaDB replica {n}: {e}");
                }
            }
        }
    }
}

/// The sequence number of `domain`'s GTID in the position `pos` (`0-1-42,1-5-7`: domain 0 is
/// at 42), or `None` when `pos` has none for that domain.
pub fn gtid_seq(pos: &str, domain: u32) -> Option<u64> {
    pos.split(',').find_map(|gtid| {
        let mut parts = gtid.trim().splitn(3, '-');
        let d: u32 = parts.next()?.parse().ok()?;
        let _server: u32 = parts.next()?.parse().ok()?;
        let seq: u64 = parts.next()?.parse().ok()?;
        (d == domain).then_some(seq)
    })
}

/// Whether the position `have` is at or past `want` in every domain `want` names.
fn gtid_covers(have: &str, want: &str) -> bool {
    want.split(',')
        .filter_map(|gtid| gtid.trim().split('-').next()?.parse::<u32>().ok())
        .all(|domain| gtid_seq(have, domain) >= gtid_seq(want, domain))
}

/// `mariadb --batch` on `at`: stdout without its last newline, or the client's `ERROR` lines
/// (all of stderr when it has none).
fn run(at: &Endpoint, sql: &str, column_names: bool) -> Result<String, String> {
    let mut cmd = Command::new("timeout");
    // `--no-defaults` first: no ~/.my.cnf or /etc/mysql option applies.
    cmd.args([&CLIENT_TIMEOUT_SECS.to_string(), "mariadb", "--no-defaults"])
        .args(["--batch", "--connect-timeout=5", "--protocol=TCP"])
        .args(["-h", &at.host, "-P", &at.port.to_string(), "-u", &at.user])
        .arg(format!("--password={}", at.password))
        .args(["-D", &at.database, "-e", sql]);
    if !column_names {
        cmd.arg("--skip-column-names");
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run `timeout mariadb`: {e}"));
    match out.status.code() {
        Some(0) => {
            let mut stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            if stdout.ends_with('\n') {
                stdout.pop();
            }
            Ok(stdout)
        }
        Some(127) => panic!("the `mariadb` client is not installed. {START_HINT}"),
        Some(124) => Err(format!(
            "the mariadb client timed out after {CLIENT_TIMEOUT_SECS} s on {}:{}",
            at.host, at.port
        )),
        _ => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("ERROR")).collect();
            Err(if errors.is_empty() {
                stderr.trim().to_owned()
            } else {
                errors.join("\n")
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gtid_positions_parse_and_compare() {
        assert_eq!(gtid_seq("0-1-42", 0), Some(42));
        assert_eq!(gtid_seq("1-5-7, 0-1-42", 0), Some(42));
        assert_eq!(gtid_seq("1-5-7", 0), None);
        assert_eq!(gtid_seq("", 0), None);
        assert!(gtid_covers("0-1-42", "0-1-42"));
        assert!(gtid_covers("0-1-43,1-2-3", "0-1-42"));
        assert!(!gtid_covers("0-1-41", "0-1-42"));
        assert!(!gtid_covers("", "0-1-1"));
    }

    #[test]
    fn urls_parse() {
        let at = endpoint("mysql://pindb:pw@127.0.0.1:25480/pindb");
        assert_eq!(
            (
                at.host.as_str(),
                at.port,
                at.user.as_str(),
                at.password.as_str()
            ),
            ("127.0.0.1", 25480, "pindb", "pw")
        );
        assert_eq!(at.database, "pindb");
    }
}
