//! What the promise hunts measure with, independently of pindb: a ticker row the primary
//! increments every few milliseconds (reads must never see it go down within a context), and
//! the primary's WAL position sampled every 2 ms (how stale a replica's read really was).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use pindb_core::Lsn;

use crate::cluster::{connect, Cluster};

/// A background task on the primary; stopped when dropped.
#[derive(Debug)]
pub struct Background {
    stop: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Increments `n` of the one-row table `table` (`CREATE TABLE t (n bigint)` with one row) on
/// the primary every `every`, committing each time.
pub async fn ticker(cluster: &Cluster, table: &str, every: Duration) -> Background {
    let client = connect(&cluster.primary_url).await;
    let sql = format!("UPDATE {table} SET n = n + 1");
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = Arc::clone(&stop);
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        while !stopped.load(Ordering::Relaxed) {
            tick.tick().await;
            if let Err(e) = client.batch_execute(&sql).await {
                // Stopping (the runtime may close its connection first) is not a failure.
                assert!(
                    stopped.load(Ordering::Relaxed),
                    "the ticker's update failed: {e:?}"
                );
                return;
            }
        }
    });
    Background {
        stop,
        task: Some(task),
    }
}

/// The primary's WAL position, sampled every 2 ms: `(asked, answered, position)`.
#[derive(Debug, Clone, Default)]
pub struct MasterSamples {
    samples: Arc<Mutex<Vec<(Instant, Instant, Lsn)>>>,
}

impl MasterSamples {
    /// Starts sampling the primary.
    pub async fn start(cluster: &Cluster) -> (MasterSamples, Background) {
        let client = connect(&cluster.primary_url).await;
        let me = MasterSamples::default();
        let samples = Arc::clone(&me.samples);
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(2));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stopped.load(Ordering::Relaxed) {
                tick.tick().await;
                let asked = Instant::now();
                let row = match client
                    .query_one("SELECT pg_current_wal_lsn()::text", &[])
                    .await
                {
                    Ok(row) => row,
                    Err(e) => {
                        assert!(
                            stopped.load(Ordering::Relaxed),
                            "sampling the primary failed: {e:?}"
                        );
                        return;
                    }
                };
                let lsn = Lsn::parse(row.get(0)).expect("an LSN");
                samples
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((asked, Instant::now(), lsn));
            }
        });
        let background = Background {
            stop,
            task: Some(task),
        };
        (me, background)
    }

    /// How stale a read that began at `began` and saw a replica at `replay` was, at least:
    /// the master was past `replay` by the time the first sample above it answered. `None`
    /// when no sample proves it behind (caught up, or not sampled yet).
    pub fn staleness_at_least(&self, replay: Lsn, began: Instant) -> Option<Duration> {
        let samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        // Positions only grow: the first sample above `replay`.
        let first = samples.partition_point(|(_, _, lsn)| *lsn <= replay);
        let (_, answered, _) = samples.get(first)?;
        began.checked_duration_since(*answered)
    }

    /// How long, between `from` and `to`, the primary could pass a position that no sample
    /// shows within `late` of it: in each stretch between answers (and from `from` to the
    /// first, from the last to `to`) longer than `late`, all but its last `late`. A read there
    /// is measured as up to that much less stale than it was.
    pub fn time_unsampled(&self, late: Duration, from: Instant, to: Instant) -> Duration {
        let samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        let answers = samples.iter().map(|(_, answered, _)| *answered);
        let within: Vec<Instant> = std::iter::once(from)
            .chain(answers.filter(|at| *at > from && *at < to))
            .chain(std::iter::once(to))
            .collect();
        within
            .windows(2)
            .map(|w| w[1].saturating_duration_since(w[0]).saturating_sub(late))
            .sum()
    }

    /// How far the primary's position moved while sampled, in bytes.
    pub fn advanced(&self) -> u64 {
        let samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        match (samples.first(), samples.last()) {
            (Some(first), Some(last)) => last.2 .0.saturating_sub(first.2 .0),
            _ => 0,
        }
    }

    /// How many samples were taken.
    pub fn len(&self) -> usize {
        self.samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// No sample yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a hunt counted.
#[derive(Debug, Clone, Copy, Default)]
pub struct HuntReport {
    /// Reads (or contexts) that ran.
    pub total: u64,
    /// Reads a replica served.
    pub replica_reads: u64,
    /// Reads (or contexts) that broke the promise.
    pub violations: u64,
}

fn counters() -> [Arc<std::sync::atomic::AtomicU64>; 4] {
    std::array::from_fn(|_| Arc::new(std::sync::atomic::AtomicU64::new(0)))
}

fn report(c: &[Arc<std::sync::atomic::AtomicU64>; 4]) -> HuntReport {
    let get = |i: usize| c[i].load(Ordering::Relaxed);
    HuntReport {
        total: get(0),
        replica_reads: get(1),
        violations: get(2),
    }
}

/// Six closed-loop readers run `read` (one read in a fresh context: whether a standby served
/// it, and its replay position) for `run`, while both standbys' replay pauses 700 ms and
/// resumes 500 ms, over and over; a violation is a standby read staler than `bound`,
/// measured against the primary's position sampled every 2 ms. Needs the replay lock
/// ([`Cluster::exclusive`]) and the ticker running.
pub async fn staleness_hunt<F, Fut>(
    cluster: &Cluster,
    read: F,
    bound: Duration,
    run: Duration,
) -> HuntReport
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = (bool, Option<Lsn>)> + Send,
{
    let (samples, sampling) = MasterSamples::start(cluster).await;
    let lag = cycle_replay(
        cluster,
        &[1, 2],
        Duration::from_millis(700),
        Duration::from_millis(500),
    );
    let c = counters();
    let started = Instant::now();
    let deadline = started + run;
    let readers: Vec<_> = (0..6)
        .map(|_| {
            let (read, samples, c) = (read.clone(), samples.clone(), c.clone());
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let began = Instant::now();
                    let (standby, replay) = pindb_core::scope(read()).await;
                    c[0].fetch_add(1, Ordering::Relaxed);
                    if standby {
                        c[1].fetch_add(1, Ordering::Relaxed);
                        let replay = replay.expect("a standby reports its replay position");
                        if samples
                            .staleness_at_least(replay, began)
                            .is_some_and(|s| s > bound)
                        {
                            c[2].fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
            })
        })
        .collect();
    for r in readers {
        r.await.expect("a reader panicked");
    }
    lag.stop(cluster).await;
    // Sampled densely enough to measure against the bound: a read is measured at most a
    // quarter of the bound less stale than it was, but where a loaded machine held the
    // sampler up, at most a tenth of the run.
    let unsampled = samples.time_unsampled(bound / 4, started, deadline);
    assert!(
        unsampled <= run / 10,
        "the primary was sampled {} times, leaving {unsampled:?} of {run:?} with no sample \
         within {:?}: too sparse to measure {bound:?}",
        samples.len(),
        bound / 4
    );
    // A ticker that died would leave nothing to be stale about.
    assert!(
        samples.advanced() > 50_000,
        "the primary wrote only {} bytes of WAL: is the ticker running?",
        samples.advanced()
    );
    drop(sampling);
    report(&c)
}

/// Six closed-loop readers run `context` (one context that reads the ticker several times:
/// each value and whether a standby served it) for `run`, while replica 1's replay pauses
/// 400 ms and resumes 300 ms, over and over (with a small `max_lag_ms` it leaves and rejoins
/// rotation), the kill switch flips every 170 ms and both replicas are drained and undrained
/// every 230 ms; a violation is a context that saw the ticker go down.
pub async fn monotonic_hunt<F, Fut>(
    cluster: &Cluster,
    router: &pindb_core::Router,
    context: F,
    run: Duration,
) -> HuntReport
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Vec<(i64, bool)>> + Send,
{
    let lag = cycle_replay(
        cluster,
        &[1],
        Duration::from_millis(400),
        Duration::from_millis(300),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let flip = |every: Duration, f: Box<dyn Fn(bool) + Send>| {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut on = false;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(every).await;
                on = !on;
                f(on);
            }
            f(false);
        })
    };
    let r = router.clone();
    let kill = flip(
        Duration::from_millis(170),
        Box::new(move |off| {
            r.topology()
                .set_replicas_enabled(None, !off)
                .expect("the kill switch")
        }),
    );
    let r = router.clone();
    let aliases: Vec<String> = r
        .topology()
        .databases()
        .iter()
        .filter(|db| db.is_replica())
        .map(|db| db.alias.clone())
        .collect();
    let drain = flip(
        Duration::from_millis(230),
        Box::new(move |on| {
            for alias in &aliases {
                r.topology().drain(alias, on).expect("drain");
            }
        }),
    );
    let c = counters();
    let deadline = Instant::now() + run;
    let readers: Vec<_> = (0..6)
        .map(|_| {
            let (context, c) = (context.clone(), c.clone());
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let seen = pindb_core::scope(context()).await;
                    c[0].fetch_add(1, Ordering::Relaxed);
                    let on_replica = seen.iter().filter(|(_, standby)| *standby).count();
                    c[1].fetch_add(on_replica as u64, Ordering::Relaxed);
                    if seen.windows(2).any(|w| w[1].0 < w[0].0) {
                        c[2].fetch_add(1, Ordering::Relaxed);
                    }
                    let high = seen.iter().map(|(n, _)| *n).max().unwrap_or(0);
                    c[3].fetch_max(u64::try_from(high).unwrap_or(0), Ordering::Relaxed);
                }
            })
        })
        .collect();
    for r in readers {
        r.await.expect("a reader panicked");
    }
    stop.store(true, Ordering::Relaxed);
    kill.await.expect("the kill switch flipper");
    drain.await.expect("the drain flipper");
    lag.stop(cluster).await;
    let highest = c[3].load(Ordering::Relaxed);
    // A ticker that died would make every context trivially monotonic.
    assert!(
        highest as f64 > run.as_secs_f64() * 100.0,
        "the ticker reached only {highest}: is it running?"
    );
    report(&c)
}

/// Replay of some standbys paused and resumed in a loop, until [`Cycle::stop`].
struct Cycle {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
    replicas: Vec<usize>,
}

fn cycle_replay(
    cluster: &Cluster,
    replicas: &[usize],
    paused: Duration,
    flowing: Duration,
) -> Cycle {
    let urls: Vec<String> = replicas
        .iter()
        .map(|&n| cluster.replica_url(n).to_owned())
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = Arc::clone(&stop);
    let task = tokio::spawn(async move {
        while !stopped.load(Ordering::Relaxed) {
            for url in &urls {
                crate::replay::pause_replay(url).await;
            }
            tokio::time::sleep(paused).await;
            for url in &urls {
                crate::replay::resume_replay(url).await;
            }
            tokio::time::sleep(flowing).await;
        }
    });
    Cycle {
        stop,
        task,
        replicas: replicas.to_vec(),
    }
}

impl Cycle {
    async fn stop(self, cluster: &Cluster) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the replay cycle");
        for n in self.replicas {
            crate::replay::resume_replay(cluster.replica_url(n)).await;
        }
    }
}

/// A fresh schema whose one-row `ticker` table (`n bigint`, 0) the hunts read, replicas
/// caught up, and the ticker running on the primary every `every`.
pub async fn ticker_world(every: Duration) -> (crate::Fixture, Background) {
    let w = crate::Fixture::new(
        "CREATE TABLE {schema}.ticker (n bigint NOT NULL); INSERT INTO {schema}.ticker VALUES (0);",
    )
    .await;
    let ticker = ticker(&w.cluster, &format!("{}.ticker", w.schema.name), every).await;
    (w, ticker)
}

/// Starts `router`'s monitor and waits until it has seen every replica of its topology (the
/// dev cluster's two: `default-1`, `default-2`, or one per server behind an endpoint).
pub async fn monitor_started(router: &pindb_core::Router) {
    router.start_monitor().await.expect("the monitor starts");
    let replicas: Vec<String> = router
        .topology()
        .databases()
        .iter()
        .filter(|d| d.is_replica() && !d.runtime)
        .map(|d| d.alias.clone())
        .collect();
    for alias in &replicas {
        // Any position at all: the monitor has measured it.
        monitor_saw_replay(router, alias, pindb_core::Lsn(1)).await;
    }
}

/// Waits (up to 10 s) until `router`'s monitor finds replica `alias` up and within its lag
/// limits: it serves reads (a test that reads right after start-up, on a loaded machine).
pub async fn monitor_finds_fit(router: &pindb_core::Router, alias: &str) {
    crate::wait_until(
        &format!("the monitor finds {alias} up and fresh"),
        Duration::from_secs(10),
        || {
            router
                .topology()
                .replica_status(alias)
                .ok()
                .flatten()
                .is_some_and(|s| s.up && !s.over_lag)
        },
    )
    .await;
}

/// Waits (up to 10 s) until `router`'s monitor has seen replica `alias` replay `lsn`.
pub async fn monitor_saw_replay(router: &pindb_core::Router, alias: &str, lsn: pindb_core::Lsn) {
    crate::wait_until(
        &format!("the monitor has seen {alias} replay {lsn:?}"),
        Duration::from_secs(10),
        || {
            router
                .topology()
                .replica_status(alias)
                .ok()
                .flatten()
                .is_some_and(|s| s.replay_lsn >= lsn)
        },
    )
    .await;
}

/// `rounds` keyed write-then-read rounds of one user (`alice`), each in its own context of
/// `router`'s consistency: `write(body)` writes a row, `read()` returns the newest row's body
/// and whether a standby served it; every 30 rounds one replica's replay is paused or resumed
/// in turn. Asserts no read missed its write and the replicas served some of them; returns
/// how many they served.
pub async fn keyed_rounds(
    router: &pindb_core::Router,
    control: &mut crate::ReplayControl,
    rounds: usize,
    write: impl AsyncFnMut(&str),
    read: impl AsyncFnMut() -> (String, bool),
) -> usize {
    rounds_paused(router, control, rounds, false, write, read).await
}

/// [`keyed_rounds`] with replay paused on one replica, then on the other instead, in turns of
/// 30 rounds: one always replays, so no read needs the master, and the share the replicas
/// serve follows the schedule, not the machine's speed.
pub async fn keyed_rounds_in_turns(
    router: &pindb_core::Router,
    control: &mut crate::ReplayControl,
    rounds: usize,
    write: impl AsyncFnMut(&str),
    read: impl AsyncFnMut() -> (String, bool),
) -> usize {
    rounds_paused(router, control, rounds, true, write, read).await
}

/// The rounds of [`keyed_rounds`]; `in_turns`: one replica paused at a time.
async fn rounds_paused(
    router: &pindb_core::Router,
    control: &mut crate::ReplayControl,
    rounds: usize,
    in_turns: bool,
    mut write: impl AsyncFnMut(&str),
    mut read: impl AsyncFnMut() -> (String, bool),
) -> usize {
    let consistency = router.consistency().clone();
    let (mut stale, mut from_replica) = (0, 0);
    for i in 0..rounds {
        if i % 30 == 0 && in_turns {
            let (paused, replaying) = if i / 30 % 2 == 0 { (1, 2) } else { (2, 1) };
            control.resume(replaying).await;
            control.pause(paused).await;
        } else if i % 30 == 0 {
            control.flip((i / 30) % 2 + 1).await;
        }
        let body = format!("w{i}");
        consistency
            .scope_with_key(Some("alice"), write(&body))
            .await;
        let (last, standby) = consistency.scope_with_key(Some("alice"), read()).await;
        stale += usize::from(last != body);
        from_replica += usize::from(standby);
    }
    assert_eq!(
        stale, 0,
        "alice read her own write stale {stale} times of {rounds}"
    );
    assert!(
        from_replica > rounds / 10,
        "the replicas served alice too: {from_replica} of {rounds}"
    );
    from_replica
}
