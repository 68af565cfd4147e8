//! Running one strategy: the simulated users, the replica lag, the Redis faults, and the
//! [`Outcome`] they add up to.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pindb_core::{PinDbError, Router};
use pindb_diesel::bb8::PinDb;
use pindb_testkit::Fixture;
use serde::Serialize;

use super::cpu::{clock_ticks, master_cpu_ticks};
use super::strategy::{config, Settings, Strategy};
use super::user::{simulate_user, Tally};

/// Port of the private Redis the fault hunt restarts and freezes.
const FAULT_REDIS_PORT: u16 = 26_399;

/// What one strategy did.
#[derive(Debug, Clone, Serialize)]
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
    /// Reads done.
    pub reads: u64,
    /// Share of reads a replica served.
    pub replica_share: f64,
    /// Lists that lacked the user's own acknowledged write.
    pub stale_reads: u64,
    /// Database round trips spent on consistency per 1,000 reads.
    pub round_trips_per_1000_reads: f64,
    /// CPU time of the primary's processes during the run, if readable.
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

/// Runs one strategy under load; `progress` is told the elapsed time.
pub async fn run(
    f: &mut Fixture,
    strategy: Strategy,
    settings: &Settings,
    redis_url: &str,
    progress: impl Fn(Duration) + Send + Sync + 'static,
) -> Result<Outcome, PinDbError> {
    let mut private = None;
    let mut builder = Router::builder(config(f, strategy, settings));
    if strategy == Strategy::LsnRedis {
        let prefix = format!("pindb:loadtest:{}:", f.schema.name);
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
    let db = PinDb::from_router(builder.build()?).map_err(|e| PinDbError::Config {
        alias: None,
        problem: e.to_string(),
    })?;
    if matches!(strategy, Strategy::Lsn | Strategy::LsnRedis) {
        db.router().start_monitor().await?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let breaker = private.map(|r| tokio::spawn(break_redis(r, Arc::clone(&stop))));
    let round_trips_before = db.router().consistency().round_trips();
    let cpu_before = master_cpu_ticks();

    let lag = tokio::spawn(make_lag(
        f.cluster.clone(),
        settings.clone(),
        Arc::clone(&stop),
    ));
    let start = Instant::now();
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
    if let Some(breaker) = breaker {
        let _ = breaker.await;
    }
    for n in &settings.lagging_replicas {
        f.control.resume(*n).await;
    }
    let elapsed = start.elapsed();
    let cpu = cpu_before
        .zip(master_cpu_ticks())
        .map(|(a, b)| (b.saturating_sub(a)) * 1000 / clock_ticks());
    let round_trips = db.router().consistency().round_trips() - round_trips_before;
    let mut t = std::mem::take(&mut *tally.lock().unwrap_or_else(|p| p.into_inner()));
    t.latencies_us.sort_unstable();
    let pct = |p: f64| -> f64 {
        if t.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((t.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        t.latencies_us[i] as f64 / 1000.0
    };
    Ok(Outcome {
        strategy,
        requests: t.latencies_us.len() as u64,
        throughput: t.latencies_us.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: pct(0.50),
        p95_ms: pct(0.95),
        p99_ms: pct(0.99),
        reads: t.reads,
        replica_share: if t.reads == 0 {
            0.0
        } else {
            t.replica_reads as f64 / t.reads as f64
        },
        stale_reads: t.stale,
        round_trips_per_1000_reads: if t.reads == 0 {
            0.0
        } else {
            round_trips as f64 * 1000.0 / t.reads as f64
        },
        master_cpu_ms: cpu,
        per_second: t.per_second,
    })
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
