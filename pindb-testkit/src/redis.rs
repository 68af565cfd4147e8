//! [`PrivateRedis`]: a Redis server a test may stop, freeze and restart.

use std::time::{Duration, Instant};

/// A Redis server of a test's own, on its own loopback port, that the test may stop and start
/// (the shared one on 6379 must stay up for everyone else).
#[derive(Debug)]
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
