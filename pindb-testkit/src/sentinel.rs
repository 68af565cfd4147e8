//! [`SentinelRedis`]: a Redis primary, its replica and three Sentinels of a test's own, whose
//! primary the test may kill to make the Sentinels promote the replica.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::redis_cli::{cli, cli_checked, port_free, signal, wait_for_port};

/// The master name the Sentinels monitor.
pub const SENTINEL_MASTER: &str = "positions";

/// A primary on `base`, its replica on `base + 1`, Sentinels on `base + 10..=base + 12`
/// (quorum 2, the primary down after 400 ms without an answer), all on loopback, without
/// persistence. Everything is killed when it is dropped.
#[derive(Debug)]
pub struct SentinelRedis {
    base: u16,
    dir: PathBuf,
    /// Data servers by port; `None` once killed.
    servers: Vec<(u16, Option<Child>)>,
    sentinels: Vec<Child>,
    /// The replica's process while it is frozen.
    frozen: Option<u32>,
    /// Frozen Sentinels' processes.
    frozen_sentinels: Vec<u32>,
}

impl SentinelRedis {
    /// Starts the five servers and waits until every Sentinel knows the primary and its
    /// replica.
    pub fn start(base: u16) -> SentinelRedis {
        let dir =
            std::env::temp_dir().join(format!("pindb-sentinel-{}-{base}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temporary folder for the Sentinels");
        let mut set = SentinelRedis {
            base,
            dir,
            servers: Vec::new(),
            sentinels: Vec::new(),
            frozen: None,
            frozen_sentinels: Vec::new(),
        };
        set.start_server(base, None);
        set.start_server(base + 1, Some(base));
        for port in base + 10..=base + 12 {
            let conf = set.dir.join(format!("sentinel-{port}.conf"));
            let text = format!(
                "bind 127.0.0.1\nport {port}\ndaemonize no\ndir {dir}\n\
                 sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {base} 2\n\
                 sentinel down-after-milliseconds {SENTINEL_MASTER} 400\n\
                 sentinel failover-timeout {SENTINEL_MASTER} 2000\n\
                 sentinel parallel-syncs {SENTINEL_MASTER} 1\n",
                dir = set.dir.display()
            );
            std::fs::write(&conf, text).expect("writing a Sentinel's config");
            port_free(port);
            let child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("redis-server --sentinel could not start ({e})"));
            set.sentinels.push(child);
            wait_for_port(port);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while !(base + 10..=base + 12).all(|p| {
            cli(p, &["SENTINEL", "replicas", SENTINEL_MASTER]).contains(&(base + 1).to_string())
        }) {
            assert!(
                Instant::now() < deadline,
                "the Sentinels did not find the replica"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        set
    }

    /// The Sentinels' URLs.
    pub fn sentinel_urls(&self) -> Vec<String> {
        (self.base + 10..=self.base + 12)
            .map(|p| format!("redis://127.0.0.1:{p}/"))
            .collect()
    }

    /// Freezes Sentinel `i` (0, 1 or 2; SIGSTOP): it accepts connections and answers
    /// nothing, like a hung host. Thawed when the set is dropped.
    pub fn freeze_sentinel(&mut self, i: usize) {
        let pid = self.sentinels[i].id();
        signal(pid, "-STOP");
        self.frozen_sentinels.push(pid);
    }

    /// Whether the primary the Sentinels name now has `key`.
    pub fn primary_has(&self, key: &str) -> bool {
        match cli_checked(self.primary_port(), &["EXISTS", key]).trim() {
            "1" => true,
            "0" => false,
            other => panic!("EXISTS {key} answered {other:?}"),
        }
    }

    /// The port of the primary the Sentinels name now.
    pub fn primary_port(&self) -> u16 {
        // The last Sentinel: tests freeze the first.
        let answer = cli(
            self.base + 12,
            &["SENTINEL", "get-master-addr-by-name", SENTINEL_MASTER],
        );
        answer
            .lines()
            .nth(1)
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("the Sentinels name no primary: {answer:?}"))
    }

    /// Freezes the replica (SIGSTOP) and fills the link to it: what the primary acknowledges
    /// from now on never reaches it before [`SentinelRedis::fail_over`] kills the primary.
    pub fn freeze_replica(&mut self) {
        let primary = self.primary_port();
        let replica = self
            .servers
            .iter()
            .find(|(p, c)| *p != primary && c.is_some())
            .and_then(|(_, c)| c.as_ref().map(Child::id))
            .expect("a live replica");
        signal(replica, "-STOP");
        self.frozen = Some(replica);
        // 32 MB of filler, more than the kernel buffers between the two: what follows stays
        // in the primary's memory until the replica reads again.
        let filler = cli(
            primary,
            &[
                "EVAL",
                "for i = 1, 32 do redis.call('SET', 'filler:' .. i, string.rep('x', 1048576)) end return 1",
                "0",
            ],
        );
        assert_eq!(filler.trim(), "1", "writing the filler failed: {filler:?}");
    }

    /// Kills the primary (SIGKILL), thaws the replica if it was frozen, and waits until the
    /// Sentinels have promoted it: after [`SentinelRedis::freeze_replica`], a failover that
    /// loses the primary's last writes, as asynchronous replication can. Returns the new
    /// primary's port; the killed server stays down.
    pub fn fail_over(&mut self) -> u16 {
        let old = self.primary_port();
        if let Some((_, child)) = self.servers.iter_mut().find(|(p, _)| *p == old) {
            if let Some(mut child) = child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if let Some(frozen) = self.frozen.take() {
            signal(frozen, "-CONT");
        }
        self.primary_other_than(old)
    }

    /// `SENTINEL FAILOVER`: the replica is promoted while the old primary stays up (the
    /// Sentinels demote it a few seconds later). Returns once the Sentinels name the new one.
    pub fn manual_failover(&self) -> u16 {
        let old = self.primary_port();
        // Refused (NOGOODSLAVE) until the Sentinels see the replica in sync: asked again.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let answer = cli(self.base + 10, &["SENTINEL", "FAILOVER", SENTINEL_MASTER]);
            if answer.starts_with("OK") {
                break;
            }
            assert!(Instant::now() < deadline, "SENTINEL FAILOVER: {answer:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
        self.primary_other_than(old)
    }

    /// Waits until the Sentinels name a primary other than `old` that says it is one.
    fn primary_other_than(&self, old: u16) -> u16 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now = self.primary_port();
            if now != old && cli(now, &["ROLE"]).starts_with("master") {
                return now;
            }
            assert!(Instant::now() < deadline, "the Sentinels did not fail over");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn start_server(&mut self, port: u16, replica_of: Option<u16>) {
        let mut command = Command::new("redis-server");
        command
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            // Redis 7 waits 5 s for more replicas before a first sync.
            .args(["--repl-diskless-sync-delay", "0"])
            .arg("--dir")
            .arg(&self.dir);
        if let Some(primary) = replica_of {
            command.args(["--replicaof", "127.0.0.1", &primary.to_string()]);
        }
        port_free(port);
        let mut child = command
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("redis-server could not start ({e})"));
        wait_for_port(port);
        assert!(
            matches!(child.try_wait(), Ok(None)),
            "redis-server on {port} exited"
        );
        self.servers.push((port, Some(child)));
    }
}

impl Drop for SentinelRedis {
    fn drop(&mut self) {
        // Best effort: a panic here, while a test unwinds, would abort and leave them running.
        let frozen = self.frozen.take().into_iter();
        for pid in frozen.chain(self.frozen_sentinels.drain(..)) {
            let _ = Command::new("kill")
                .args(["-CONT", &pid.to_string()])
                .status();
        }
        let servers = self.servers.iter_mut().filter_map(|(_, c)| c.as_mut());
        for child in self.sentinels.iter_mut().chain(servers) {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
