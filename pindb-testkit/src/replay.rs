//! Replay control: pausing and resuming WAL replay on a replica, and the advisory locks on the
//! primary that keep tests which pause replay apart from tests that need it flowing.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::cluster::{connect, Cluster, REPLICATION_TIMEOUT};

/// Advisory lock key that serialises replay control across test processes.
const REPLAY_LOCK: i64 = 0x7069_6e64_6201;

impl Cluster {
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

    /// Pauses replica `n` if this control has not paused it, else resumes it (a hunt's
    /// replicas coming and going). Dropping the control resumes whatever is left paused.
    pub async fn flip(&mut self, n: usize) {
        if self.paused.contains(&n) {
            self.resume(n).await;
        } else {
            self.pause(n).await;
        }
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

impl std::fmt::Debug for SharedReplay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedReplay").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for ReplayControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayControl")
            .field("paused", &self.paused)
            .finish_non_exhaustive()
    }
}
