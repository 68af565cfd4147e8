//! Running one strategy: the simulated users, the replica lag, the Redis faults, and the
//! [`Outcome`] they add up to.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pindb_core::{PinDbError, Router};
use serde::Serialize;

use super::backend::{Backend, Target};
use super::cpu::{clock_ticks, master_cpu_ticks};
use super::strategy::{config, Settings, Strategy};
use super::user::{simulate_user, Tally};

/// Port of the private Redis the fault hunt restarts and freezes.
const FAULT_REDIS_PORT: u16 = 26_399;

/// What one strategy did.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Outcome {
    /// The strategy.
    pub strategy: Strategy,
    /// Requests completed.
    pub requests: u64,
    /// Requests per second.
    pub throughput: f64,
    /// Latency percentiles of a request, in ms.
    pub p50_ms: f64,
    /// See `p50_ms`.
    pub p95_ms: f64,
    /// See `p50_ms`.
    pub p99_ms: f64,
    /// The 99th percentile of the requests that neither wrote nor came right after the
    /// user's write, in ms: what a wait for the replicas must not slow down.
    #[serde(default)]
    pub quiet_p99_ms: f64,
    /// Latency percentiles of the requests that wrote, in ms.
    #[serde(default)]
    pub writer_p50_ms: f64,
    /// See `writer_p50_ms`.
    #[serde(default)]
    pub writer_p99_ms: f64,
    /// Round trips to the master for write positions per writing request.
    #[serde(default)]
    pub master_round_trips_per_write: f64,
    /// Reads done.
    pub reads: u64,
    /// Routing decisions (statements) per second.
    pub decisions_per_second: f64,
    /// The time a request spent outside its own statements (the context, loading and
    /// recording positions: what pindb adds), median and 99th percentile, in µs.
    pub pindb_p50_us: f64,
    /// See `pindb_p50_us`.
    pub pindb_p99_us: f64,
    /// Share of reads a replica served.
    pub replica_share: f64,
    /// Share of reads a perfect oracle could have sent to a replica: reads for which some
    /// replica had replayed the user's last write when the read began (from replay positions
    /// sampled every 2 ms, applied GTIDs on MariaDB; see [`oracle_share`]).
    pub oracle_share: f64,
    /// The same with a strict oracle: the replica had replayed the write by the last sample
    /// sent before the read began.
    pub strict_oracle_share: f64,
    /// Lists that lacked the user's own acknowledged write.
    pub stale_reads: u64,
    /// Database round trips spent on consistency per 1,000 reads.
    pub round_trips_per_1000_reads: f64,
    /// Those of them made to the master (write positions).
    pub master_round_trips_per_1000_reads: f64,
    /// CPU time of the primary's processes (MariaDB: its `mariadbd`) during the run, if
    /// readable.
    pub master_cpu_ms: Option<u64>,
    /// Requests completed in each second of the run.
    pub per_second: Vec<u64>,
}

/// Restarts (empty) or freezes the private Redis at random until told to stop. Faults are
/// 5-7 s apart, longer than the distrust each one causes (the 3 s position lifetime plus the
/// 1 s retry pause), so replicas serve between them.
async fn break_redis(mut redis: pindb_testkit::PrivateRedis, stop: Arc<AtomicBool>) {
    let mut rng = fastrand::Rng::new();
    while !AtomicBool::load(&stop, Ordering::Relaxed) {
        nap(&stop, Duration::from_millis(rng.u64(5_000..7_000))).await;
        if rng.bool() {
            redis.resume(); // killed and started again: empty
        } else {
            redis.freeze();
            nap(&stop, Duration::from_millis(300)).await;
            redis.thaw();
        }
    }
}

/// Runs one strategy under load on `target`'s set; `progress` is told the elapsed time. A
/// strategy the backend does not support ([`Strategy::unsupported_on`]) is a config error.
pub async fn run(
    target: &mut Target,
    strategy: Strategy,
    settings: &Settings,
    redis_url: &str,
    progress: impl Fn(Duration) + Send + Sync + 'static,
) -> Result<Outcome, PinDbError> {
    let backend = target.backend();
    if let Some(why) = strategy.unsupported_on(backend) {
        return Err(PinDbError::Config {
            alias: None,
            problem: format!(
                "{} is not supported on {}: {why}",
                strategy.name(),
                backend.name()
            ),
        });
    }
    let mut private = None;
    let mut builder = Router::builder(config(target.config(), strategy, settings));
    if strategy == Strategy::LsnRedis {
        // One prefix for every run: a Redis pindb has not used before is distrusted for
        // `ttl_seconds` (it looks like one that lost its positions), so a new prefix per run
        // would measure that window, not the steady state. Keys of earlier runs are
        // positions those have long passed. One per backend: a user's LSN kept beside a
        // sequence number of the same name would outweigh it (the higher one is kept).
        let prefix = match backend {
            Backend::Postgres => "pindb:loadtest:",
            Backend::Mariadb => "pindb:loadtest:mariadb:",
        }
        .to_owned();
        private = settings
            .faults
            .then(|| pindb_testkit::PrivateRedis::start(FAULT_REDIS_PORT));
        let url = private.as_ref().map_or(redis_url.to_owned(), |r| r.url());
        builder = builder.store(Arc::new(pindb_core::RedisStore::new(
            &url,
            &prefix,
            Duration::from_millis(100),
        )?));
    }
    let db = target.pindb(builder.build()?)?;
    if strategy.keyed() {
        db.router().start_monitor().await?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let breaker = private.map(|r| tokio::spawn(break_redis(r, Arc::clone(&stop))));
    let round_trips_before = db.router().consistency().round_trips();
    let master_round_trips_before = db.router().consistency().master_round_trips();
    let cpu_before = master_cpu_ticks(backend);

    let lag = match &*target {
        Target::Postgres(f) => tokio::spawn(make_lag(
            f.cluster.clone(),
            settings.clone(),
            Arc::clone(&stop),
        )),
        Target::MariaDb(m) => m.lag(settings.clone(), Arc::clone(&stop)),
    };
    let start = Instant::now();
    let sampler = match &*target {
        Target::Postgres(f) => {
            tokio::spawn(sample_replay(f.cluster.clone(), start, Arc::clone(&stop)))
        }
        Target::MariaDb(m) => tokio::spawn(m.sample_applied(start, Arc::clone(&stop))),
    };
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut users = Vec::new();
    for u in 0..settings.users {
        let (db, settings, tally) = (db.clone(), settings.clone(), Arc::clone(&tally));
        let user = format!("u{u}-{}", strategy.name());
        users.push(tokio::spawn(async move {
            simulate_user(&db, strategy, &settings, &user, start, &tally).await
        }));
    }
    let progress = Arc::new(progress);
    while start.elapsed() < settings.duration {
        tokio::time::sleep(Duration::from_millis(200)).await;
        progress(start.elapsed().min(settings.duration));
    }
    for u in users {
        u.await.map_err(|e| PinDbError::Config {
            alias: None,
            problem: format!("a simulated user panicked: {e}"),
        })?;
    }
    stop.store(true, Ordering::Relaxed);
    let _ = lag.await;
    let replay = sampler.await.unwrap_or_default();
    if let Some(breaker) = breaker {
        let _ = breaker.await;
    }
    if let Target::Postgres(f) = target {
        for n in &settings.lagging_replicas {
            f.control.resume(*n).await;
        }
    } // MariaDB's lag started every SQL thread it stopped before it ended.
    let elapsed = start.elapsed();
    let cpu = cpu_before
        .zip(master_cpu_ticks(backend))
        .map(|(a, b)| (b.saturating_sub(a)) * 1000 / clock_ticks());
    let round_trips = db.router().consistency().round_trips() - round_trips_before;
    let master_round_trips =
        db.router().consistency().master_round_trips() - master_round_trips_before;

    let mut t = std::mem::take(&mut *tally.lock().unwrap_or_else(|p| p.into_inner()));
    let reads = t.reads;
    let per_1000_reads = |n: u64| match reads {
        0 => 0.0,
        reads => n as f64 * 1000.0 / reads as f64,
    };
    t.latencies_us.sort_unstable();
    t.quiet_latencies_us.sort_unstable();
    t.writer_latencies_us.sort_unstable();
    let of = |sorted: &[u64], p: f64| match sorted.len() {
        0 => 0.0,
        n => sorted[((n as f64 - 1.0) * p).round() as usize] as f64 / 1000.0,
    };
    let quiet_p99_ms = of(&t.quiet_latencies_us, 0.99);
    let (writer_p50_ms, writer_p99_ms) = (
        of(&t.writer_latencies_us, 0.50),
        of(&t.writer_latencies_us, 0.99),
    );
    let master_round_trips_per_write = match t.writes {
        0 => 0.0,
        n => master_round_trips as f64 / n as f64,
    };
    let pct = |p: f64| -> f64 {
        if t.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((t.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        t.latencies_us[i] as f64 / 1000.0
    };
    t.overheads_us.sort_unstable();
    let overhead = |p: f64| -> f64 {
        match t.overheads_us.len() {
            0 => 0.0,
            n => t.overheads_us[((n as f64 - 1.0) * p).round() as usize] as f64,
        }
    };
    Ok(Outcome {
        decisions_per_second: t.statements as f64 / elapsed.as_secs_f64(),
        pindb_p50_us: overhead(0.50),
        pindb_p99_us: overhead(0.99),
        strategy,
        requests: t.latencies_us.len() as u64,
        throughput: t.latencies_us.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: pct(0.50),
        p95_ms: pct(0.95),
        p99_ms: pct(0.99),
        quiet_p99_ms,
        writer_p50_ms,
        writer_p99_ms,
        master_round_trips_per_write,
        reads: t.reads,
        replica_share: if t.reads == 0 {
            0.0
        } else {
            t.replica_reads as f64 / t.reads as f64
        },
        oracle_share: oracle_share(&t.read_marks, &replay, false),
        strict_oracle_share: oracle_share(&t.read_marks, &replay, true),
        stale_reads: t.stale,
        round_trips_per_1000_reads: per_1000_reads(round_trips),
        master_round_trips_per_1000_reads: per_1000_reads(master_round_trips),
        master_cpu_ms: cpu,
        per_second: t.per_second,
    })
}

/// The replicas' best replay position, sampled every 2 ms until told to stop: `(when the
/// query was sent, since `start`; the highest `pg_last_wal_replay_lsn()` of the two)`.
async fn sample_replay(
    cluster: pindb_testkit::Cluster,
    start: Instant,
    stop: Arc<AtomicBool>,
) -> Vec<(Duration, u64)> {
    let replicas = [cluster.replica(1).await, cluster.replica(2).await];
    let sql = "SELECT coalesce(pg_last_wal_replay_lsn()::text, '0/0')";
    let mut samples = Vec::new();
    let mut every = tokio::time::interval(Duration::from_millis(2));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        every.tick().await;
        let sent = start.elapsed();
        let (a, b) = tokio::join!(
            replicas[0].query_one(sql, &[]),
            replicas[1].query_one(sql, &[])
        );
        let best = [a, b]
            .into_iter()
            .filter_map(|row| pindb_core::Lsn::parse(&row.ok()?.get::<_, String>(0)))
            .map(|l| l.0)
            .max()
            .unwrap_or(0);
        samples.push((sent, best));
    }
    samples
}

/// The share of reads an oracle could have served from a replica: the user had not written,
/// or some replica had replayed the user's last write when the read began. The write's
/// position is the insert position its statement saw (at or before its commit: generous); on
/// MariaDB its GTID's sequence number, compared with the replicas' `@@gtid_slave_pos`.
/// The generous oracle matches a read with the first sample sent at or after it began
/// (replayed by then, or up to 2 ms later), the `strict` one with the last sample sent before
/// it; the truth lies between.
pub fn oracle_share(reads: &[(Duration, u64)], replay: &[(Duration, u64)], strict: bool) -> f64 {
    if reads.is_empty() {
        return 0.0;
    }
    let servable = reads
        .iter()
        .filter(|&&(at, wrote)| {
            wrote == 0 || {
                let i = replay.partition_point(|&(t, _)| t < at);
                let sample = match strict {
                    true => i.checked_sub(1).and_then(|i| replay.get(i)),
                    false => replay.get(i).or(replay.last()),
                };
                sample.is_some_and(|&(_, lsn)| lsn >= wrote)
            }
        })
        .count();
    servable as f64 / reads.len() as f64
}

/// Pauses and resumes replay on the lagging replicas until told to stop.
async fn make_lag(cluster: pindb_testkit::Cluster, s: Settings, stop: Arc<AtomicBool>) {
    let running = Duration::from_millis(1).max(s.lag_period.saturating_sub(s.lag_pause));
    while !AtomicBool::load(&stop, Ordering::Relaxed) {
        for n in &s.lagging_replicas {
            pindb_testkit::pause_replay(cluster.replica_url(*n)).await;
        }
        nap(&stop, s.lag_pause).await;
        if s.lag_pause >= s.lag_period {
            continue; // paused for the whole run
        }
        for n in &s.lagging_replicas {
            pindb_testkit::resume_replay(cluster.replica_url(*n)).await;
        }
        nap(&stop, running).await;
    }
}

/// Sleeps `d`, or less if told to stop.
async fn nap(stop: &AtomicBool, d: Duration) {
    let until = Instant::now() + d;
    while Instant::now() < until && !AtomicBool::load(stop, Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(20).min(until - Instant::now())).await;
    }
}
