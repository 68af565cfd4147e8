//! [`RedisCluster`]: a Redis Cluster of a test's own (three primaries, one replica each), whose
//! slots the test may move and whose primaries it may kill or restart empty.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::redis_cli::{cli, cli_checked, port_free, signal, wait_for_port};

/// Six nodes on `base..base + 6` (their cluster bus on `base + 1000..`: the default, port +
/// 10,000, falls in the range the kernel hands out to client sockets), on loopback, without
/// persistence: three primaries and a replica of each (a node is failed after 1 s without an answer; a replica fails over however
/// long it was cut off). Everything is killed when it is dropped.
#[derive(Debug)]
pub struct RedisCluster {
    base: u16,
    dir: PathBuf,
    /// Nodes by port; `None` once killed.
    nodes: Vec<(u16, Option<Child>)>,
    /// The port of a replica while it is frozen (the cluster soon marks it failed: it is
    /// found by this).
    frozen: Option<u16>,
}

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone)]
struct Node {
    id: String,
    port: u16,
    primary: bool,
    failed: bool,
    /// The id of its primary (replicas).
    of: String,
    /// Slot ranges it serves (primaries).
    slots: Vec<(u16, u16)>,
}

impl RedisCluster {
    /// Starts the six nodes, makes them a cluster and waits until every node says it is ok.
    pub fn start(base: u16) -> RedisCluster {
        let dir =
            std::env::temp_dir().join(format!("pindb-rcluster-{}-{base}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temporary folder for the cluster");
        let mut cluster = RedisCluster {
            base,
            dir,
            nodes: Vec::new(),
            frozen: None,
        };
        for port in base..base + 6 {
            port_free(port);
            port_free(port + 1000);
            let child = cluster.spawn(port);
            cluster.nodes.push((port, Some(child)));
        }
        let addresses: Vec<String> = (base..base + 6).map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("timeout")
            .args(["60", "redis-cli", "--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.wait_ok("the new cluster");
        cluster
    }

    /// Every node's URL, as an application lists its seeds.
    pub fn seed_urls(&self) -> Vec<String> {
        (self.base..self.base + 6)
            .map(|p| format!("redis://127.0.0.1:{p}/"))
            .collect()
    }

    /// The ports of the primaries that serve slots now.
    pub fn primaries(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self
            .topology()
            .into_iter()
            .filter(|n| n.primary && !n.failed && !n.slots.is_empty())
            .map(|n| n.port)
            .collect();
        ports.sort_unstable();
        ports
    }

    /// The primary that holds a key matching `pattern` (`KEYS` on each primary), if any.
    pub fn primary_with(&self, pattern: &str) -> Option<u16> {
        self.primaries()
            .into_iter()
            .find(|p| !cli_checked(*p, &["KEYS", pattern]).trim().is_empty())
    }

    /// Freezes the replica of `primary` (SIGSTOP) and fills the link to it: what `primary`
    /// acknowledges from now on never reaches it before [`RedisCluster::fail_over`].
    pub fn freeze_replica_of(&mut self, primary: u16) {
        let replica = self.replica_of(primary);
        let pid = self.pid(replica.port).expect("a live replica");
        signal(pid, "-STOP");
        self.frozen = Some(replica.port);
        // 32 MB of filler in one of its slots, more than the kernel buffers between the two.
        let key = self.key_on(primary);
        let filler = cli(
            primary,
            &[
                "EVAL",
                "redis.call('SET', KEYS[1], string.rep('x', 33554432)) return 1",
                "1",
                &key,
            ],
        );
        assert_eq!(filler.trim(), "1", "writing the filler failed: {filler:?}");
    }

    /// Kills `primary` (SIGKILL), thaws its replica if it was frozen, and waits until the
    /// replica serves its slots and the cluster is ok again. Returns the new primary's port;
    /// the killed node stays down.
    pub fn fail_over(&mut self, primary: u16) -> u16 {
        let frozen = self.frozen.take();
        let replica = frozen.unwrap_or_else(|| self.replica_of(primary).port);
        self.kill(primary);
        if let Some(pid) = frozen.and_then(|port| self.pid(port)) {
            signal(pid, "-CONT");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cli(replica, &["ROLE"]).starts_with("master") {
            assert!(
                Instant::now() < deadline,
                "the replica of {primary} was not promoted"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.wait_slots("the failover");
        replica
    }

    /// `CLUSTER FAILOVER` on the replica of `primary`: it takes over once it has everything,
    /// and `primary` becomes its replica, up and in sync. Returns the new primary's port.
    pub fn manual_failover(&mut self, primary: u16) -> u16 {
        let replica = self.replica_of(primary).port;
        let deadline = Instant::now() + Duration::from_secs(30);
        // The primaries vote once per shard per two node timeouts: a failover right after
        // another is refused, and the request lapses after 5 s. Asked again until it takes.
        'asked: loop {
            let answer = cli(replica, &["CLUSTER", "FAILOVER"]);
            assert!(answer.starts_with("OK"), "CLUSTER FAILOVER: {answer:?}");
            let asked = Instant::now();
            while asked.elapsed() < Duration::from_secs(6) {
                if cli(replica, &["ROLE"]).starts_with("master") {
                    break 'asked;
                }
                assert!(
                    Instant::now() < deadline,
                    "{replica} did not take over from {primary}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.wait_ok("a manual failover");
        replica
    }

    /// Kills `primary` (SIGKILL) and starts it again at once, empty (no persistence), before
    /// the cluster fails it over: its shard restarted without its data.
    pub fn restart_empty(&mut self, primary: u16) {
        self.kill(primary);
        let child = self.spawn(primary);
        let slot = self
            .nodes
            .iter_mut()
            .find(|(p, _)| *p == primary)
            .expect("a known node");
        slot.1 = Some(child);
        self.wait_ok("the restart");
    }

    /// Moves `count` slots from `from` to `to` (`redis-cli --cluster reshard`: each key
    /// migrated with `MIGRATE` while the cluster serves).
    pub fn move_slots(&self, from: u16, to: u16, count: usize) {
        let nodes = self.topology();
        let id = |port: u16| {
            nodes
                .iter()
                .find(|n| n.port == port)
                .map(|n| n.id.clone())
                .expect("a known node")
        };
        let out = Command::new("timeout")
            .args(["120", "redis-cli", "--cluster", "reshard"])
            .arg(format!("127.0.0.1:{from}"))
            .args(["--cluster-from", &id(from), "--cluster-to", &id(to)])
            .args(["--cluster-slots", &count.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "redis-cli --cluster reshard failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn spawn(&self, port: u16) -> Child {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            // Redis 7 waits 5 s for more replicas before a first sync: meanwhile a replica
            // has nothing, and a failover would lose everything, not the last writes.
            .args(["--repl-diskless-sync-delay", "0"])
            .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"])
            .args(["--cluster-replica-validity-factor", "0"])
            .args(["--cluster-port", &(port + 1000).to_string()])
            .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
            .args(["--dbfilename", &format!("dump-{port}.rdb")])
            .args(["--logfile", &format!("redis-{port}.log")])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("redis-server could not start ({e})"));
        wait_for_port(port);
        child
    }

    fn kill(&mut self, port: u16) {
        if let Some((_, child)) = self.nodes.iter_mut().find(|(p, _)| *p == port) {
            if let Some(mut child) = child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    fn pid(&self, port: u16) -> Option<u32> {
        self.nodes
            .iter()
            .find(|(p, _)| *p == port)
            .and_then(|(_, c)| c.as_ref().map(Child::id))
    }

    /// Waits until every live node says `cluster_state:ok`, every slot is served, and every
    /// primary has a replica in sync with it.
    fn wait_ok(&self, after: &str) {
        self.wait_slots(after);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let nodes = self.topology();
            let synced = nodes
                .iter()
                .filter(|n| n.primary && !n.slots.is_empty())
                .all(|p| {
                    nodes.iter().any(|r| {
                        r.of == p.id
                            && !r.failed
                            && self.pid(r.port).is_some()
                            && cli(r.port, &["INFO", "replication"])
                                .contains("master_link_status:up")
                    })
                });
            if synced {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "a primary has no replica in sync after {after}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every live node says `cluster_state:ok` and every slot is served.
    fn wait_slots(&self, after: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let live: Vec<u16> = self
                .nodes
                .iter()
                .filter(|(_, c)| c.is_some())
                .map(|(p, _)| *p)
                .filter(|p| Some(*p) != self.frozen)
                .collect();
            let ok = live.iter().all(|p| {
                let info = cli(*p, &["CLUSTER", "INFO"]);
                info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384")
            });
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster is not ok after {after}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `CLUSTER NODES`, as a live node sees it.
    fn topology(&self) -> Vec<Node> {
        let asked = self
            .nodes
            .iter()
            .filter(|(_, c)| c.is_some())
            .map(|(p, _)| *p)
            .find(|p| Some(*p) != self.frozen)
            .expect("a live node");
        cli(asked, &["CLUSTER", "NODES"])
            .lines()
            .filter_map(parse_node)
            .collect()
    }

    fn replica_of(&self, primary: u16) -> Node {
        let nodes = self.topology();
        let id = &nodes
            .iter()
            .find(|n| n.port == primary)
            .expect("a known primary")
            .id;
        nodes
            .iter()
            .find(|n| !n.primary && !n.failed && &n.of == id)
            .cloned()
            .unwrap_or_else(|| {
                let logs: Vec<String> = nodes
                    .iter()
                    .filter(|n| n.of == *id)
                    .map(|n| {
                        let log =
                            std::fs::read_to_string(self.dir.join(format!("redis-{}.log", n.port)))
                                .unwrap_or_default();
                        let tail: Vec<&str> = log.lines().rev().take(15).collect();
                        format!("{}: {}", n.port, tail.join("\n"))
                    })
                    .collect();
                panic!("no replica of {primary}: {nodes:?}\n{}", logs.join("\n"))
            })
    }

    /// A key in one of the slots `primary` serves.
    fn key_on(&self, primary: u16) -> String {
        let node = self
            .topology()
            .into_iter()
            .find(|n| n.port == primary)
            .expect("a known primary");
        (0..10_000)
            .map(|i| format!("filler{{{i}}}"))
            .find(|key| {
                let slot: u16 = cli(primary, &["CLUSTER", "KEYSLOT", key])
                    .trim()
                    .parse()
                    .unwrap_or(u16::MAX);
                node.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
            })
            .expect("a key in one of its slots")
    }
}

fn parse_node(line: &str) -> Option<Node> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let port = fields
        .get(1)?
        .split('@')
        .next()?
        .rsplit(':')
        .next()?
        .parse()
        .ok()?;
    let flags = fields.get(2)?;
    let slots = fields
        .iter()
        .skip(8)
        .filter(|s| !s.starts_with('['))
        .filter_map(|s| match s.split_once('-') {
            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
            None => s.parse().ok().map(|a| (a, a)),
        })
        .collect();
    Some(Node {
        id: fields[0].to_owned(),
        port,
        primary: flags.contains("master"),
        failed: flags.contains("fail") && !flags.contains("fail?"),
        of: fields.get(3)?.to_string(),
        slots,
    })
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        // Best effort: a panic here, while a test unwinds, would abort and leave them running.
        if let Some(pid) = self.frozen.take().and_then(|port| self.pid(port)) {
            let _ = Command::new("kill")
                .args(["-CONT", &pid.to_string()])
                .status();
        }
        for child in self.nodes.iter_mut().filter_map(|(_, c)| c.as_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
