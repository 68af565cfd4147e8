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
#![deny(missing_docs)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

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

const DEFAULT_PRIMARY: &str = "postgres://pindb@127.0.0.1:25432/pindb";
const DEFAULT_REPLICA1: &str = "postgres://pindb@127.0.0.1:25433/pindb";
const DEFAULT_REPLICA2: &str = "postgres://pindb@127.0.0.1:25434/pindb";
const DEFAULT_REDIS: &str = "redis://127.0.0.1:6379/";
const DEFAULT_STRANGER: &str = "postgres://pindb@127.0.0.1:25435/pindb";

/// Advisory lock key that serialises replay control across test processes.
const REPLAY_LOCK: i64 = 0x7069_6e64_6201;

/// How long helpers wait for replication before failing the test.
pub const REPLICATION_TIMEOUT: Duration = Duration::from_secs(30);

pub use pindb_core::Lsn;

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
        }
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

    /// A schema of its own for one test, created on the primary. Use [`TestSchema::url`] to
    /// point connections at it.
    pub async fn fresh_schema(&self) -> TestSchema {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "t_{}_{}_{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let client = self.primary().await;
        client
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .await
            .unwrap_or_else(|e| panic!("CREATE SCHEMA {name} failed: {e:?}"));
        TestSchema {
            name,
            primary_url: self.primary_url.clone(),
        }
    }

    /// Exclusive control of replay: waits until no other test holds replay control or needs
    /// replay flowing, then lets this test pause and resume replicas. Dropping it resumes every
    /// replica it paused.
    pub async fn exclusive(&self) -> ReplayControl {
        let lock = self.primary().await;
        lock.execute("SELECT pg_advisory_lock($1)", &[&REPLAY_LOCK])
            .await
            .unwrap_or_else(|e| panic!("taking the replay-control lock failed: {e:?}"));
        ReplayControl {
            cluster: self.clone(),
            paused: Vec::new(),
            _lock: lock,
        }
    }

    /// Shared access with replay flowing: waits while another test has paused a replica.
    /// Hold it for as long as the test needs replicas to catch up.
    pub async fn shared(&self) -> SharedReplay {
        let lock = self.primary().await;
        lock.execute("SELECT pg_advisory_lock_shared($1)", &[&REPLAY_LOCK])
            .await
            .unwrap_or_else(|e| panic!("taking the shared replay lock failed: {e:?}"));
        SharedReplay { _lock: lock }
    }
}

/// Holds the shared replay lock: no replica is paused while it lives.
pub struct SharedReplay {
    _lock: Client,
}

/// Exclusive replay control; see [`Cluster::exclusive`].
pub struct ReplayControl {
    cluster: Cluster,
    paused: Vec<usize>,
    // Last field: dropped after `Drop::drop` resumed replay, which releases the lock.
    _lock: Client,
}

impl ReplayControl {
    /// Pauses WAL replay on replica `n` and waits until it is really paused.
    pub async fn pause(&mut self, n: usize) {
        pause_replay(self.cluster.replica_url(n)).await;
        if !self.paused.contains(&n) {
            self.paused.push(n);
        }
    }

    /// Resumes WAL replay on replica `n`.
    pub async fn resume(&mut self, n: usize) {
        resume_replay(self.cluster.replica_url(n)).await;
        self.paused.retain(|&p| p != n);
    }
}

impl Drop for ReplayControl {
    fn drop(&mut self) {
        if self.paused.is_empty() {
            return;
        }
        // Drop cannot await: resume on a thread with its own runtime, and wait for it, so the
        // next test never finds a replica paused.
        let urls: Vec<String> = self
            .paused
            .iter()
            .map(|&n| self.cluster.replica_url(n).to_owned())
            .collect();
        let resumed = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current-thread runtime builds");
            rt.block_on(async {
                for url in &urls {
                    resume_replay(url).await;
                }
            })
        })
        .join();
        if resumed.is_err() && !std::thread::panicking() {
            panic!("could not resume replay on {:?}", self.paused);
        }
    }
}

/// `pg_wal_replay_pause()` on the replica at `url`, then waits for the `paused` state.
pub async fn pause_replay(url: &str) {
    let client = connect(url).await;
    client
        .execute("SELECT pg_wal_replay_pause()", &[])
        .await
        .unwrap_or_else(|e| panic!("pg_wal_replay_pause() on {url} failed: {e:?}"));
    let deadline = Instant::now() + REPLICATION_TIMEOUT;
    loop {
        let state: String = client
            .query_one("SELECT pg_get_wal_replay_pause_state()", &[])
            .await
            .unwrap_or_else(|e| panic!("reading the pause state on {url} failed: {e:?}"))
            .get(0);
        if state == "paused" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "replay on {url} is still `{state}`"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `pg_wal_replay_resume()` on the replica at `url`.
pub async fn resume_replay(url: &str) {
    connect(url)
        .await
        .execute("SELECT pg_wal_replay_resume()", &[])
        .await
        .unwrap_or_else(|e| panic!("pg_wal_replay_resume() on {url} failed: {e:?}"));
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

/// A schema created for one test.
#[derive(Debug, Clone)]
pub struct TestSchema {
    /// The schema name (`t_<pid>_<n>_<nanos>`).
    pub name: String,
    primary_url: String,
}

impl TestSchema {
    /// `base` with this schema as the search path, for any of the cluster's URLs.
    ///
    /// ```
    /// # let schema = pindb_testkit::TestSchema::for_tests("t_1");
    /// assert_eq!(
    ///     schema.url("postgres://pindb@127.0.0.1:25432/pindb"),
    ///     "postgres://pindb@127.0.0.1:25432/pindb?options=-c%20search_path%3Dt_1",
    /// );
    /// ```
    pub fn url(&self, base: &str) -> String {
        let sep = if base.contains('?') { '&' } else { '?' };
        format!("{base}{sep}options=-c%20search_path%3D{}", self.name)
    }

    /// A schema value without creating anything (for examples and unit tests).
    pub fn for_tests(name: &str) -> TestSchema {
        TestSchema {
            name: name.to_owned(),
            primary_url: String::new(),
        }
    }

    /// Drops the schema and everything in it.
    pub async fn drop(self) {
        connect(&self.primary_url)
            .await
            .batch_execute(&format!("DROP SCHEMA {} CASCADE", self.name))
            .await
            .unwrap_or_else(|e| panic!("DROP SCHEMA {} failed: {e:?}", self.name));
    }
}

/// One integration test's world: a fresh schema set up by `setup_sql`, replicas caught up, and
/// exclusive control of replay (so pausing a replica cannot disturb another test).
///
/// In `setup_sql` and the other SQL given to it, `{schema}` stands for the schema name.
pub struct Fixture {
    /// The cluster.
    pub cluster: Cluster,
    /// This test's schema.
    pub schema: TestSchema,
    /// Replay control, held for the whole test.
    pub control: ReplayControl,
}

impl Fixture {
    /// Creates the schema, runs `setup_sql` on the primary and waits for both replicas.
    pub async fn new(setup_sql: &str) -> Fixture {
        let cluster = Cluster::from_env();
        let control = cluster.exclusive().await;
        let schema = cluster.fresh_schema().await;
        let fixture = Fixture {
            cluster,
            schema,
            control,
        };
        fixture.on_primary(setup_sql).await;
        fixture.cluster.sync_replicas().await;
        fixture
    }

    /// A pindb config over the primary and the given replicas (1 and/or 2), in this schema.
    pub fn config(&self, mode: pindb_core::RouterMode, replicas: &[usize]) -> pindb_core::Config {
        let mut config = pindb_core::Config::single_set(
            self.schema.url(&self.cluster.primary_url),
            replicas
                .iter()
                .map(|&n| self.schema.url(self.cluster.replica_url(n))),
        );
        config.router = mode;
        config
    }

    /// Runs SQL on the primary directly.
    pub async fn on_primary(&self, sql: &str) {
        let sql = sql.replace("{schema}", &self.schema.name);
        self.cluster
            .primary()
            .await
            .batch_execute(&sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }

    /// Pauses replay on replica `n`, then runs `sql` on the primary and waits until the
    /// replica has received (not replayed) it: from now on the replica is provably stale.
    pub async fn write_unseen_by(&mut self, n: usize, sql: &str) {
        self.control.pause(n).await;
        self.on_primary(sql).await;
        let lsn = self.cluster.primary_lsn().await;
        self.cluster.wait_for_receive(n, lsn).await;
    }

    /// The first column of `sql`'s rows, as text, read on the primary.
    pub async fn primary_column(&self, sql: &str) -> Vec<String> {
        let sql = sql.replace("{schema}", &self.schema.name);
        self.cluster
            .primary()
            .await
            .simple_query(&sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
            .collect()
    }

    /// Resumes replay and drops the schema.
    pub async fn finish(self) {
        drop(self.control);
        self.schema.drop().await;
    }
}

/// Runs `count` tasks concurrently, each in its own pinning context (`pindb_core::scope`),
/// where task `i` pins the `default` set when `i` is even and then runs `check(i, pinned)`;
/// returns how many checks failed. The isolation test every adapter runs.
pub async fn contexts_that_saw_foreign_pins<F, Fut>(
    router: &pindb_core::Router,
    count: usize,
    check: F,
) -> usize
where
    F: Fn(usize, bool) -> Fut,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        let pinned = i % 2 == 0;
        let router = router.clone();
        let checked = check(i, pinned);
        tasks.push(tokio::spawn(pindb_core::scope(async move {
            if pinned {
                router
                    .pin("default")
                    .expect("inside a scope, `default` exists");
            }
            tokio::task::yield_now().await;
            checked.await
        })));
    }
    let mut failed = 0;
    for task in tasks {
        if !task.await.expect("an isolation task panicked") {
            failed += 1;
        }
    }
    failed
}

/// Creates a schema with a `bench_users (id int primary key, name text)` table of 1,000 rows
/// and waits for both replicas: the benchmarks' common data set.
pub async fn bench_users(cluster: &Cluster) -> TestSchema {
    let schema = cluster.fresh_schema().await;
    cluster
        .primary()
        .await
        .batch_execute(&format!(
            "CREATE TABLE {s}.bench_users (id int PRIMARY KEY, name text NOT NULL);
             INSERT INTO {s}.bench_users SELECT g, 'user ' || g FROM generate_series(1, 1000) g;",
            s = schema.name
        ))
        .await
        .unwrap_or_else(|e| panic!("creating bench_users failed: {e:?}"));
    cluster.sync_replicas().await;
    schema
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

/// A Redis server of a test's own, on its own loopback port, that the test may stop and start
/// (the shared one on 6379 must stay up for everyone else).
pub struct PrivateRedis {
    port: u16,
    /// Where snapshots go, for a server that keeps them.
    dir: Option<std::path::PathBuf>,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    /// Starts `redis-server` on `port` (no persistence) and waits until it answers.
    pub fn start(port: u16) -> PrivateRedis {
        let mut redis = PrivateRedis {
            port,
            dir: None,
            child: None,
        };
        redis.resume();
        redis
    }

    /// Starts `redis-server` on `port` with snapshots in a fresh folder: after
    /// [`PrivateRedis::snapshot`] and a restart ([`PrivateRedis::resume`]) it comes back with
    /// the data of the snapshot, as a crashed server with RDB persistence does.
    pub fn start_persistent(port: u16) -> PrivateRedis {
        let dir = std::env::temp_dir().join(format!("pindb-redis-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temporary folder for Redis");
        let mut redis = PrivateRedis {
            port,
            dir: Some(dir),
            child: None,
        };
        redis.resume();
        redis
    }

    /// Writes a snapshot now (`SAVE`).
    pub fn snapshot(&self) {
        let status = std::process::Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "SAVE"])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("redis-cli runs");
        assert!(status.success(), "SAVE failed");
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = std::process::Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): it accepts connections and answers nothing, like a hung
    /// peer, without losing its data.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Thaws a frozen server (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("the private Redis is running");
        let status = std::process::Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} failed");
    }

    /// Starts the server again (after [`PrivateRedis::stop`]) and waits until it answers.
    pub fn resume(&mut self) {
        self.stop();
        let mut command = std::process::Command::new("redis-server");
        command
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"]);
        if let Some(dir) = &self.dir {
            command.arg("--dir").arg(dir);
        }
        let child = command
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("redis-server could not start ({e}); `scripts/cluster up` installs it")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Polls `cond` every 10 ms until it holds; panics with `what` after `timeout`.
pub async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
