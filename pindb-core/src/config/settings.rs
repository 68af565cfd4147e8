//! The settings sections of a [`Config`](super::Config): router and replica policies, the
//! monitor, stickiness, and the web layer.

use std::time::Duration;

use serde::Deserialize;

/// How writes to a set that is not pinned are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RouterMode {
    /// The first write to a set pins it for the rest of the context and goes to the master.
    /// Ordinary ORM code keeps working unchanged, so this is the default.
    #[default]
    Greedy,
    /// A write to a set that is not pinned (and not under a `master()` guard) is an
    /// [`PinDbError::UnpinnedWrite`](crate::PinDbError::UnpinnedWrite) error, raised before any I/O.
    Strict,
}

/// How a context picks among a set's replicas (once per context and set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplicaPolicy {
    /// Each new context takes the next replica in turn.
    #[default]
    RoundRobin,
    /// Each new context takes a replica at random.
    Random,
    /// The replica with the least lag, as the replica monitor last saw it.
    LeastLag,
}

/// What to do when the start-up topology check finds a misconfigured database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TopologyCheck {
    /// Refuse to start (a `PinDbError::Config` naming the alias).
    #[default]
    Error,
    /// Log a warning and go on.
    Warn,
    /// Do not check.
    Off,
}

/// What unkeyed reads do when every replica that is up lags beyond `max_lag_bytes` /
/// `max_lag_ms`. Keyed reads never read stale whatever the policy: they still need a replica
/// past their own last write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AllLaggingPolicy {
    /// The master serves them (the safe default).
    #[default]
    Master,
    /// The least-lagging replica within `lag_ceiling_ms` serves them, so a general lag spike
    /// does not throw the whole read load onto the primary; beyond the ceiling, the master.
    LeastLag,
}

impl MonitorSettings {
    /// The most lag any read may see (the least-lag policy, a `max_staleness` hint):
    /// `lag_ceiling_ms`, and never less than `max_lag_ms`.
    pub fn lag_ceiling(&self) -> u64 {
        self.lag_ceiling_ms.max(self.max_lag_ms)
    }
}

/// The replica monitor's settings (`[monitor]`).
///
/// ```
/// let m: pindb_core::MonitorSettings = toml::from_str("max_lag_ms = 5000").unwrap();
/// assert_eq!(m.max_lag_ms, 5000);
/// assert_eq!(m.interval_ms, 250);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct MonitorSettings {
    /// How often each replica and master is polled.
    pub interval_ms: u64,
    /// A health query (and a connection attempt) that takes longer fails.
    pub check_timeout_ms: u64,
    /// Consecutive failed checks before a replica is marked down.
    pub failures_before_down: u32,
    /// Consecutive good checks before a replica that was down (or that a failed read made
    /// suspect) is read from again: a flapping replica does not bounce in and out.
    pub successes_before_up: u32,
    /// A replica further behind than this many bytes of WAL is not read from.
    pub max_lag_bytes: u64,
    /// A replica that has not replayed WAL the master has had for this long is not read from.
    /// Must stay below `stickiness.ttl_seconds` minus the detection time (see
    /// [`Config::validate`](super::Config::validate)).
    pub max_lag_ms: u64,
    /// The start-up topology check.
    pub topology_check: TopologyCheck,
    /// What unkeyed reads do when every replica that is up is over the lag limits.
    pub when_all_lagging: AllLaggingPolicy,
    /// The most lag a read may ever see: the least-lag policy's limit and the cap of
    /// `max_staleness` hints (below `max_lag_ms`: `max_lag_ms`). `stickiness.ttl_seconds`
    /// must outlive it (checked).
    pub lag_ceiling_ms: u64,
    /// A replica whose position has not moved while the master had WAL for it this long is
    /// reported stalled (`pindb_replica_stalled`, a warning): a paused replay or
    /// subscription, a broken receiver.
    pub stalled_after_ms: u64,
    /// When a context records a write position (a keyed context or a token), the set's
    /// replicas are checked again this long after, besides the regular `interval_ms`: the
    /// user's next request then finds a replica position that shows the write replayed,
    /// instead of one up to an interval old. A recheck that finds the replica behind the
    /// master's position it saw is repeated, twice as late each time, until the replica has
    /// that position or the delay reaches `interval_ms` (a loaded host that replays late). Checks of one replica are
    /// never closer than this. 0: only the regular interval.
    pub recheck_after_write_ms: u64,
}

impl Default for MonitorSettings {
    fn default() -> Self {
        MonitorSettings {
            interval_ms: 250,
            check_timeout_ms: 500,
            failures_before_down: 2,
            successes_before_up: 2,
            max_lag_bytes: 16 * 1024 * 1024,
            max_lag_ms: 10_000,
            topology_check: TopologyCheck::Error,
            stalled_after_ms: 60_000,
            recheck_after_write_ms: 10,
            when_all_lagging: AllLaggingPolicy::Master,
            lag_ceiling_ms: 0,
        }
    }
}

/// Read-your-writes across contexts (`[stickiness]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct StickinessSettings {
    /// How long a recorded write position is kept for a key.
    pub ttl_seconds: u64,
    /// At a keyed context's start, how long to wait for a replica to catch up with the key's
    /// last write before reading that set from the master (0: do not wait). Only a context
    /// whose write no replica is known to have replayed waits: the request right
    /// after a write, usually. 5 ms by default. The probes it asks connect in the
    /// background: a replica slower to connect to than the wait is missed by the wait that
    /// starts the connection, not by the next ones. Replicas are asked one after another.
    pub max_wait_ms: u64,
    /// Keys the in-memory store keeps at most (the oldest are dropped first).
    pub memory_capacity: usize,
    /// Prefix of the Redis keys.
    pub redis_prefix: String,
    /// Timeout of each Redis command and connection attempt.
    pub redis_timeout_ms: u64,
    /// Where the adapter can (diesel-async, for a write outside a transaction), learn the
    /// master's position after a write in the write's own flight: a tiny query pipelined
    /// behind it on its connection, instead of one round trip to the master at the context's
    /// end. On by default; `false` behind anything that may send one client's statements to
    /// different servers (PgBouncer's session and transaction pooling keep them on one).
    pub pipeline_positions: bool,
}

impl Default for StickinessSettings {
    fn default() -> Self {
        StickinessSettings {
            ttl_seconds: 30,
            max_wait_ms: 5,
            memory_capacity: 100_000,
            redis_prefix: "pindb:lsn:".to_owned(),
            redis_timeout_ms: 100,
            pipeline_positions: true,
        }
    }
}

/// What only the tower layer and consistency tokens use (`[web]`): the pin cookie and the key
/// that signs it and tokens.
///
/// ```
/// let web: pindb_core::WebSettings = toml::from_str("pinning_seconds = 30").unwrap();
/// assert_eq!(web.pinning_seconds, 30);
/// assert_eq!(web.cookie_name, "pindb_pinned_set");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct WebSettings {
    /// How long a set pinned in a request stays pinned for the same client (cookie pinning).
    pub pinning_seconds: u64,
    /// Name of the pin cookie.
    pub cookie_name: String,
    /// Secret that signs the pin cookie and consistency tokens (at least 32 bytes, the same on
    /// every instance; set it from the environment with `PINDB_COOKIE_SECRET`). The tower
    /// layer refuses to start without one unless `ephemeral_cookie_key` is set.
    pub cookie_secret: Option<String>,
    /// Earlier secrets, still accepted for the cookies and tokens they signed, never used to
    /// sign: rotate by moving the current secret here and setting a new `cookie_secret`; drop
    /// it after `pinning_seconds` / `stickiness.ttl_seconds`.
    pub cookie_old_secrets: Vec<String>,
    /// Without `cookie_secret`, sign with a random per-process key. Only for single-process
    /// demos and tests: every restart and every other instance ignores the pins users carry,
    /// so a user who just wrote could read stale.
    pub ephemeral_cookie_key: bool,
    /// Mark the pin cookie `Secure` (HTTPS only).
    pub cookie_secure: bool,
}

impl Default for WebSettings {
    fn default() -> Self {
        WebSettings {
            pinning_seconds: 15,
            cookie_name: "pindb_pinned_set".to_owned(),
            cookie_secret: None,
            cookie_old_secrets: Vec::new(),
            ephemeral_cookie_key: false,
            cookie_secure: false,
        }
    }
}

impl WebSettings {
    /// `pinning_seconds` as a `Duration`.
    pub fn pinning_duration(&self) -> Duration {
        Duration::from_secs(self.pinning_seconds)
    }
}

/// Reads outside a transaction that a replica fails (`[reads]`): how fast pindb gives up on a
/// replica, and how often it tries another one before the master.
///
/// ```
/// let reads: pindb_core::ReadSettings = toml::from_str("timeout_ms = 60000").unwrap();
/// assert_eq!(reads.timeout_ms, 60_000);
/// assert_eq!(reads.replica_connect_timeout_ms, 1000);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct ReadSettings {
    /// How long a checkout from a replica's pool may take before the read moves on (a
    /// replica given its own `connect_timeout_ms` keeps it). Masters keep their own
    /// `connect_timeout_ms` (5000 by default): there is nowhere else to write.
    pub replica_connect_timeout_ms: u64,
    /// A read on a replica outside a transaction that has not answered after this long (from
    /// the checkout to the first row of a diesel `load`, to the end of anything else) is
    /// abandoned (its connection discarded) and runs on the master: a replica that hangs
    /// mid-query costs this, not forever. Async adapters only. Raise it for long reports.
    pub timeout_ms: u64,
    /// Other replicas tried after the first fails, before the master.
    pub retries: u32,
}

impl Default for ReadSettings {
    fn default() -> Self {
        ReadSettings {
            replica_connect_timeout_ms: 1_000,
            timeout_ms: 30_000,
            retries: 1,
        }
    }
}

impl ReadSettings {
    /// `timeout_ms` as a `Duration`.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}
