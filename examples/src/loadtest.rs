//! The load test: simulated users doing read-after-write against the real dev cluster with
//! real replica lag, under each consistency strategy in turn, measuring throughput, latency,
//! replica offload and stale reads.
//!
//! A *stale read* is a list that lacks the user's own acknowledged write: every user writes
//! rows with an increasing sequence number and checks that a later list sees the last one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use diesel::dsl::max;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use futures_util::FutureExt;
use pindb_core::{Config, Context, PinDbError, ReplicaPolicy, RouterMode};
use pindb_diesel::PinDb;
use pindb_testkit::Fixture;
use serde::Serialize;

diesel::table! {
    lt_rows (id) {
        id -> Integer,
        author -> Text,
        seq -> Integer,
    }
}

/// The table the load test writes, in `{schema}`.
pub const SCHEMA_SQL: &str =
    "CREATE TABLE {schema}.lt_rows (id serial PRIMARY KEY, author text NOT NULL, seq int NOT NULL);
     CREATE INDEX ON {schema}.lt_rows (author, seq)";

/// A consistency strategy, as users deploy them today and as pindb offers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
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
    /// pindb: per-user LSN stickiness with the replica monitor, in-memory store.
    Lsn,
    /// The same with the Redis store.
    LsnRedis,
}

impl Strategy {
    /// Every strategy, in report order.
    pub const ALL: [Strategy; 7] = [
        Strategy::MasterOnly,
        Strategy::RandomReplica,
        Strategy::PinRequest,
        Strategy::Cookie15s,
        Strategy::Delay2s,
        Strategy::Lsn,
        Strategy::LsnRedis,
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
            Strategy::LsnRedis => "lsn-redis",
        }
    }

    /// How long a write keeps the user on the master, for the time-based strategies.
    fn carry(self) -> Option<Duration> {
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
    /// The fault-injecting stale-read hunt, for the `lsn` strategies: writing requests
    /// cancelled (dropped right after the insert committed) or panicking after it, a private
    /// Redis restarted empty or frozen every 5-7 s (`lsn-redis`), and 3 s position lifetimes
    /// so the distrust windows pass. A cancelled or panicked write counts as the user's: it
    /// committed. (A full memory store has its own test: here it would distrust all the
    /// time.)
    pub faults: bool,
}

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

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    reads: u64,
    replica_reads: u64,
    stale: u64,
    per_second: Vec<u64>,
}

/// The config of a strategy over the fixture's cluster.
fn config(f: &Fixture, s: Strategy, settings: &Settings) -> Config {
    let mut config = f.config(RouterMode::Greedy, &[1, 2]);
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
        _ => {}
    }
    if settings.faults {
        // Short distrust windows, so replicas serve between faults.
        config.monitor.max_lag_ms = 1_200;
        config.stickiness.ttl_seconds = 3;
    }
    config
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
    let db = PinDb::new(config(f, strategy, settings)).map_err(|e| PinDbError::Config {
        alias: None,
        problem: e.to_string(),
    })?;
    if matches!(strategy, Strategy::Lsn | Strategy::LsnRedis) {
        db.router().start_monitor().await?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut breaker = None;
    if strategy == Strategy::LsnRedis {
        let prefix = format!("pindb:loadtest:{}:", f.schema.name);
        let private = settings
            .faults
            .then(|| pindb_testkit::PrivateRedis::start(FAULT_REDIS_PORT));
        let url = private.as_ref().map_or(redis_url.to_owned(), |r| r.url());
        db.router()
            .set_store(Arc::new(pindb_core::stickiness::RedisStore::new(
                &url,
                &prefix,
                Duration::from_millis(100),
            )?));
        breaker = private.map(|r| tokio::spawn(break_redis(r, Arc::clone(&stop))));
    }
    let round_trips_before = db.router().consistency_round_trips();
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
    let round_trips = db.router().consistency_round_trips() - round_trips_before;
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

/// One user's loop: write-then-list (same request or the next one) or list only.
async fn simulate_user(
    db: &PinDb,
    strategy: Strategy,
    s: &Settings,
    user: &str,
    start: Instant,
    tally: &Mutex<Tally>,
) {
    let mut rng = fastrand::Rng::new();
    let mut acked = 0i32;
    let mut carried_until: Option<Instant> = None;
    while start.elapsed() < s.duration {
        if !s.think.is_zero() {
            tokio::time::sleep(s.think).await;
        }
        let writes = rng.f64() < s.write_ratio;
        let same = writes && rng.f64() < s.same_request_ratio;
        if writes {
            let seq = acked + 1;
            let t0 = Instant::now();
            let fault = s.faults && matches!(strategy, Strategy::Lsn | Strategy::LsnRedis);
            let roll = rng.f64();
            if fault && roll < 0.15 {
                // The client goes away (or a timeout fires) right after the commit, or the
                // handler panics there: the write is the user's all the same.
                let cancel = roll < 0.1;
                let (committed, done) = tokio::sync::oneshot::channel::<()>();
                let work = request(db, strategy, user, &mut carried_until, async {
                    insert(db, user, seq).await;
                    let _ = committed.send(());
                    if !cancel {
                        panic!("load test: a handler bug right after the commit");
                    }
                    std::future::pending::<Option<(i32, bool)>>().await
                });
                let work = std::panic::AssertUnwindSafe(work).catch_unwind();
                tokio::select! {
                    _ = work => {}
                    _ = done => {}
                }
                acked = seq;
                record(tally, start, t0, None, acked);
                continue;
            }
            let seen = request(db, strategy, user, &mut carried_until, async {
                insert(db, user, seq).await;
                if same {
                    Some(list(db, user).await)
                } else {
                    None
                }
            })
            .await;
            acked = seq;
            record(tally, start, t0, seen, acked);
            if same {
                continue;
            }
        }
        let t0 = Instant::now();
        let seen = request(db, strategy, user, &mut carried_until, async {
            Some(list(db, user).await)
        })
        .await;
        record(tally, start, t0, seen, acked);
    }
}

fn record(
    tally: &Mutex<Tally>,
    start: Instant,
    t0: Instant,
    seen: Option<(i32, bool)>,
    acked: i32,
) {
    let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
    t.latencies_us.push(t0.elapsed().as_micros() as u64);
    let second = start.elapsed().as_secs() as usize;
    if t.per_second.len() <= second {
        t.per_second.resize(second + 1, 0);
    }
    t.per_second[second] += 1;
    if let Some((max_seq, on_replica)) = seen {
        t.reads += 1;
        t.replica_reads += u64::from(on_replica);
        t.stale += u64::from(max_seq < acked);
    }
}

/// One request under `strategy`'s rules.
async fn request<F: std::future::Future>(
    db: &PinDb,
    strategy: Strategy,
    user: &str,
    carried_until: &mut Option<Instant>,
    work: F,
) -> F::Output {
    match strategy {
        // Each statement in a context of its own: nothing is ever pinned.
        Strategy::RandomReplica => {
            pindb_core::scope(async { UNPINNED.scope((), work).await }).await
        }
        Strategy::Lsn | Strategy::LsnRedis => db.router().scope_with_key(Some(user), work).await,
        Strategy::Cookie15s | Strategy::Delay2s => {
            let ctx = Context::new();
            if carried_until.is_some_and(|u| u > Instant::now()) {
                ctx.carry_pin("default");
            }
            let out = ctx.clone().scope(work).await;
            if !ctx.newly_pinned().is_empty() {
                *carried_until = strategy.carry().map(|d| Instant::now() + d);
            }
            out
        }
        Strategy::MasterOnly | Strategy::PinRequest => pindb_core::scope(work).await,
    }
}

tokio::task_local! {
    /// Set for `random-replica`: every statement runs in a fresh context.
    static UNPINNED: ();
}

async fn insert(db: &PinDb, user: &str, seq: i32) {
    let q = diesel::insert_into(lt_rows::table)
        .values((lt_rows::author.eq(user), lt_rows::seq.eq(seq)));
    let result = if UNPINNED.try_with(|_| ()).is_ok() {
        pindb_core::scope(async { q.execute(&mut db.get()).await }).await
    } else {
        q.execute(&mut db.get()).await
    };
    result.expect("load-test insert");
}

/// `(max seq seen, served by a replica)`.
async fn list(db: &PinDb, user: &str) -> (i32, bool) {
    let run = async {
        let mut conn = db.get();
        let seen: Option<i32> = lt_rows::table
            .filter(lt_rows::author.eq(user))
            .select(max(lt_rows::seq))
            .first(&mut conn)
            .await
            .expect("load-test list");
        (
            seen.unwrap_or(0),
            conn.held_aliases().iter().any(|a| *a != "default"),
        )
    };
    if UNPINNED.try_with(|_| ()).is_ok() {
        pindb_core::scope(run).await
    } else {
        run.await
    }
}

/// utime + stime of the primary's postmaster and its children, in clock ticks.
fn master_cpu_ticks() -> Option<u64> {
    let dir = std::env::var("PINDB_CLUSTER_DIR").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../target/pindb-cluster").to_owned()
    });
    let pid: u32 = std::fs::read_to_string(format!("{dir}/primary/postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()?;
    let mut total = 0;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the `(comm)`: state ppid ... utime(14th) stime(15th).
        let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let this: u32 = entry.file_name().to_string_lossy().parse().unwrap_or(0);
        let ppid: u32 = fields.get(1).and_then(|p| p.parse().ok()).unwrap_or(0);
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        if this == pid {
            // The postmaster reaps its backends, so their CPU ends up in its cutime/cstime:
            // the total only grows, whatever connections come and go.
            total += ticks(11) + ticks(12) + ticks(13) + ticks(14);
        } else if ppid == pid {
            total += ticks(11) + ticks(12);
        }
    }
    Some(total)
}

fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// The markdown table of a run.
pub fn table(outcomes: &[Outcome]) -> String {
    let mut out = String::from(
        "| strategy | req/s | p50 ms | p95 ms | p99 ms | reads on replicas | stale reads | consistency round trips / 1k reads | master CPU ms |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for o in outcomes {
        out.push_str(&format!(
            "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.1}% | {} | {:.1} | {} |\n",
            o.strategy.name(),
            o.throughput,
            o.p50_ms,
            o.p95_ms,
            o.p99_ms,
            o.replica_share * 100.0,
            o.stale_reads,
            o.round_trips_per_1000_reads,
            o.master_cpu_ms.map_or("n/a".to_owned(), |c| c.to_string()),
        ));
    }
    out
}
