//! The strategies compared, the shape of the load, and the pindb config of each strategy.

use std::time::Duration;

use pindb_core::{Config, ReplicaPolicy};
use serde::Serialize;

use super::backend::Backend;

/// A consistency strategy, as users deploy them today and as pindb offers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// No replicas at all.
    MasterOnly,
    /// Every read on a random replica, no pinning (many hand-rolled setups).
    RandomReplica,
    /// pindb greedy router, pins last for one request only.
    PinRequest,
    /// django-pindb: pins carried to the user's next requests for 15 s.
    #[value(name = "cookie-15s")]
    Cookie15s,
    /// Rails' default: all of a user's reads on the master for 2 s after a write.
    #[value(name = "delay-2s")]
    Delay2s,
    /// pindb: per-user LSN stickiness with the replica monitor, in-memory store. On MariaDB
    /// the positions are GTID sequence numbers (the same config keys).
    Lsn,
    /// The same without the recheck after a write (`monitor.recheck_after_write_ms = 0`):
    /// replica positions only as fresh as the monitor interval.
    LsnNoRecheck,
    /// The same with the Redis store.
    LsnRedis,
    /// `lsn` without waiting for a replica at a keyed request's start
    /// (`stickiness.max_wait_ms = 0`, the default before 5 ms): such a request reads from the
    /// master at once.
    LsnNoWait,
    /// `lsn` with the master's position read at the end of each writing request, one round
    /// trip (`stickiness.pipeline_positions = false`, what sync diesel and SeaORM do) instead
    /// of learned in the write's own flight.
    LsnRoundTrip,
}

impl Strategy {
    /// Every strategy, in report order.
    pub const ALL: [Strategy; 10] = [
        Strategy::MasterOnly,
        Strategy::RandomReplica,
        Strategy::PinRequest,
        Strategy::Cookie15s,
        Strategy::Delay2s,
        Strategy::Lsn,
        Strategy::LsnNoRecheck,
        Strategy::LsnRedis,
        Strategy::LsnNoWait,
        Strategy::LsnRoundTrip,
    ];

    /// The kebab-case name.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::MasterOnly => "master-only",
            Strategy::RandomReplica => "random-replica",
            Strategy::PinRequest => "pin-request",
            Strategy::Cookie15s => "cookie-15s",
            Strategy::Delay2s => "delay-2s",
            Strategy::Lsn => "lsn",
            Strategy::LsnNoRecheck => "lsn-no-recheck",
            Strategy::LsnRedis => "lsn-redis",
            Strategy::LsnNoWait => "lsn-no-wait",
            Strategy::LsnRoundTrip => "lsn-round-trip",
        }
    }

    /// Why this strategy does not run on `backend`, if it does not.
    pub fn unsupported_on(self, backend: Backend) -> Option<&'static str> {
        match (backend, self) {
            (Backend::Mariadb, Strategy::LsnRoundTrip) => Some(
                "`lsn-round-trip` is `lsn` with `stickiness.pipeline_positions = false`, and on \
                 MariaDB there is nothing to turn off: diesel-async's MySQL driver runs one \
                 statement at a time, so pindb never pipelines a write's position there and \
                 every `lsn` strategy already asks the master in one round trip at the \
                 context's end (`lsn-round-trip` would measure `lsn` again)",
            ),
            _ => None,
        }
    }

    /// pindb's per-user LSN stickiness (keyed contexts, the replica monitor).
    pub(super) fn keyed(self) -> bool {
        matches!(
            self,
            Strategy::Lsn
                | Strategy::LsnNoRecheck
                | Strategy::LsnRedis
                | Strategy::LsnNoWait
                | Strategy::LsnRoundTrip
        )
    }

    /// How long a write keeps the user on the master, for the time-based strategies.
    pub(super) fn carry(self) -> Option<Duration> {
        match self {
            Strategy::Cookie15s => Some(Duration::from_secs(15)),
            Strategy::Delay2s => Some(Duration::from_secs(2)),
            _ => None,
        }
    }
}

/// How the load is shaped.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Concurrent users.
    pub users: usize,
    /// How long each strategy runs.
    pub duration: Duration,
    /// Share of iterations that write (the rest only list).
    pub write_ratio: f64,
    /// Share of writes whose list happens in the same request (the rest: the next request).
    pub same_request_ratio: f64,
    /// Replay is paused for `lag_pause` out of every `lag_period` on the lagging replicas.
    pub lag_pause: Duration,
    /// See `lag_pause`.
    pub lag_period: Duration,
    /// Which replicas lag (1 and/or 2).
    pub lagging_replicas: Vec<usize>,
    /// Pool size per alias.
    pub pool_size: u32,
    /// Pause between a user's iterations (a person reading the page).
    pub think: Duration,
    /// With a `think_max` above `think`, each pause is drawn uniformly between the two.
    pub think_max: Duration,
    /// `stickiness.max_wait_ms` for the `lsn` strategies but `lsn-no-wait`: a keyed request
    /// whose write no replica is known to have replayed asks the replicas directly for up to
    /// this long. `None`: pindb's default (5 ms).
    pub max_wait: Option<Duration>,
    /// The fault-injecting stale-read hunt, for the `lsn` strategies: writing requests
    /// cancelled (dropped right after the insert committed) or panicking after it, a private
    /// Redis restarted empty or frozen every 5-7 s (`lsn-redis`), and 3 s position lifetimes
    /// so the distrust windows pass. A cancelled or panicked write counts as the user's: it
    /// committed. (A full memory store has its own test: here it would distrust all the
    /// time.)
    pub faults: bool,
}

/// The config of a strategy, from the greedy config of the target's set (the master and both
/// replicas).
pub(super) fn config(mut config: Config, s: Strategy, settings: &Settings) -> Config {
    config.monitor.interval_ms = 50;
    for db in config
        .masters
        .values_mut()
        .chain(config.sets.values_mut().flatten())
    {
        db.max_size = Some(settings.pool_size);
    }
    match s {
        Strategy::MasterOnly => config.enabled = false,
        Strategy::RandomReplica => config.replica_policy = ReplicaPolicy::Random,
        Strategy::LsnNoRecheck => config.monitor.recheck_after_write_ms = 0,
        Strategy::LsnRoundTrip => config.stickiness.pipeline_positions = false,
        _ => {}
    }
    if let Some(wait) = settings.max_wait {
        config.stickiness.max_wait_ms = wait.as_millis() as u64;
    }
    if s == Strategy::LsnNoWait {
        config.stickiness.max_wait_ms = 0;
    }
    if settings.faults {
        // Short distrust windows, so replicas serve between faults.
        config.monitor.max_lag_ms = 1_200;
        config.stickiness.ttl_seconds = 3;
    }
    config
}
