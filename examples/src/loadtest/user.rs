//! One simulated user: its loop of writes and lists, each request under its strategy's rules,
//! the table it writes, and what it records.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use diesel::dsl::max;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use futures_util::FutureExt;
use pindb_core::Context;
use pindb_diesel::bb8::PinDb;

use super::backend::Db;
use super::strategy::{Settings, Strategy};

diesel::table! {
    lt_rows (id) {
        id -> Integer,
        author -> Text,
        seq -> Integer,
    }
}

/// The table the load test writes, in `{schema}` (PostgreSQL; MariaDB's is in `mariadb.rs`).
pub const SCHEMA_SQL: &str =
    "CREATE TABLE {schema}.lt_rows (id serial PRIMARY KEY, author text NOT NULL, seq int NOT NULL);
     CREATE INDEX ON {schema}.lt_rows (author, seq)";

/// What the users of a run recorded.
#[derive(Default)]
pub(super) struct Tally {
    pub(super) latencies_us: Vec<u64>,
    /// The latencies of requests that neither wrote nor came right after the user's write:
    /// what a wait for the replicas at a keyed request's start must not slow down.
    pub(super) quiet_latencies_us: Vec<u64>,
    /// The latencies of the requests that wrote (completed ones: not those cancelled or
    /// panicking in the fault hunt).
    pub(super) writer_latencies_us: Vec<u64>,
    /// Requests that wrote, all of them.
    pub(super) writes: u64,
    pub(super) reads: u64,
    pub(super) replica_reads: u64,
    pub(super) stale: u64,
    pub(super) per_second: Vec<u64>,
    /// For the oracle: each read's start (since the run's start) and the position (WAL, or
    /// GTID sequence number) of the user's last write before it (0: none).
    pub(super) read_marks: Vec<(Duration, u64)>,
    /// Statements run (each one routing decision).
    pub(super) statements: u64,
    /// Per request, the time spent outside the request's own statements: the context,
    /// loading and recording the user's positions (pindb's share of the latency), in µs.
    pub(super) overheads_us: Vec<u64>,
}

/// One request's outcome for [`record`].
struct Done {
    t0: Instant,
    seen: Option<(i32, bool)>,
    wrote: bool,
    /// The user's previous request wrote (and did not list it).
    after_write: bool,
    overhead: Option<Duration>,
}

/// The position (WAL, or GTID sequence number) of a user's last write (set by [`insert`]) and
/// the mark of its last read (set by [`list`]): the oracle's inputs.
#[derive(Default)]
struct Marks {
    last_write: AtomicU64,
    last_read: Mutex<Option<(Instant, u64)>>,
}

/// One user's loop: write-then-list (same request or the next one) or list only.
pub(super) async fn simulate_user(
    db: &Db,
    strategy: Strategy,
    s: &Settings,
    user: &str,
    start: Instant,
    tally: &Mutex<Tally>,
) {
    let mut rng = fastrand::Rng::new();
    let marks = Marks::default();
    let marks = &marks;
    let mut acked = 0i32;
    let mut carried_until: Option<Instant> = None;
    let mut after_write = false;
    while start.elapsed() < s.duration {
        let think = match s.think_max > s.think {
            true => rng.u64(s.think.as_micros() as u64..=s.think_max.as_micros() as u64),
            false => s.think.as_micros() as u64,
        };
        if think > 0 {
            tokio::time::sleep(Duration::from_micros(think)).await;
        }
        let writes = rng.f64() < s.write_ratio;
        let same = writes && rng.f64() < s.same_request_ratio;
        if writes {
            let seq = acked + 1;
            let t0 = Instant::now();
            let fault = s.faults && strategy.keyed();
            let roll = rng.f64();
            if fault && roll < 0.15 {
                // The client goes away (or a timeout fires) right after the commit, or the
                // handler panics there: the write is the user's all the same.
                let cancel = roll < 0.1;
                let (committed, done) = tokio::sync::oneshot::channel::<()>();
                let work = request(db, strategy, user, &mut carried_until, async {
                    insert(db, user, seq, marks).await;
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
                let done = Done {
                    t0,
                    seen: None,
                    wrote: true,
                    after_write,
                    overhead: None,
                };
                record(tally, start, done, acked, marks);
                // The next request comes after the think time, as after a write listed in
                // its own request.
                after_write = false;
                continue;
            }
            let (seen, overhead) = request(db, strategy, user, &mut carried_until, async {
                insert(db, user, seq, marks).await;
                if same {
                    Some(list(db, user, marks).await)
                } else {
                    None
                }
            })
            .await;
            acked = seq;
            let done = Done {
                t0,
                seen,
                wrote: true,
                after_write,
                overhead: Some(overhead),
            };
            record(tally, start, done, acked, marks);
            after_write = !same;
            if same {
                continue;
            }
        }
        let t0 = Instant::now();
        let (seen, overhead) = request(db, strategy, user, &mut carried_until, async {
            Some(list(db, user, marks).await)
        })
        .await;
        let done = Done {
            t0,
            seen,
            wrote: false,
            after_write,
            overhead: Some(overhead),
        };
        record(tally, start, done, acked, marks);
        after_write = false;
    }
}

fn record(tally: &Mutex<Tally>, start: Instant, done: Done, acked: i32, marks: &Marks) {
    let Done {
        t0,
        seen,
        wrote,
        after_write,
        overhead,
    } = done;
    let read = marks
        .last_read
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
    if let (Some(_), Some((at, lsn))) = (seen, read) {
        t.read_marks
            .push((at.saturating_duration_since(start), lsn));
    }
    let latency = t0.elapsed().as_micros() as u64;
    t.latencies_us.push(latency);
    if !wrote && !after_write {
        t.quiet_latencies_us.push(latency);
    }
    if wrote && overhead.is_some() {
        t.writer_latencies_us.push(latency);
    }
    t.statements += u64::from(wrote) + u64::from(seen.is_some());
    t.writes += u64::from(wrote);
    if let Some(overhead) = overhead {
        t.overheads_us.push(overhead.as_micros() as u64);
    }
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

/// One request under `strategy`'s rules; also the time it spent outside `work` (the context,
/// the positions).
async fn request<F: std::future::Future>(
    db: &Db,
    strategy: Strategy,
    user: &str,
    carried_until: &mut Option<Instant>,
    work: F,
) -> (F::Output, Duration) {
    let started = Instant::now();
    let work = async {
        let t = Instant::now();
        let out = work.await;
        (out, t.elapsed())
    };
    let (out, busy) = match strategy {
        // Each statement in a context of its own: nothing is ever pinned.
        Strategy::RandomReplica => {
            pindb_core::scope(async { UNPINNED.scope((), work).await }).await
        }
        Strategy::Lsn
        | Strategy::LsnNoRecheck
        | Strategy::LsnRedis
        | Strategy::LsnNoWait
        | Strategy::LsnRoundTrip => {
            db.router()
                .consistency()
                .scope_with_key(Some(user), work)
                .await
        }
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
    };
    (out, started.elapsed().saturating_sub(busy))
}

tokio::task_local! {
    /// Set for `random-replica`: every statement runs in a fresh context.
    static UNPINNED: ();
}

/// Whether this statement runs in a context of its own (`random-replica`).
fn unpinned() -> bool {
    UNPINNED.try_with(|_| ()).is_ok()
}

/// Inserts the user's row; notes its position for the oracle.
async fn insert(db: &Db, user: &str, seq: i32, marks: &Marks) {
    let write = async {
        match db {
            Db::Postgres(db) => insert_pg(db, user, seq).await,
            Db::MariaDb(db) => db.insert(user, seq).await,
        }
    };
    let position = match unpinned() {
        true => pindb_core::scope(write).await,
        false => write.await,
    };
    marks.last_write.store(position, Ordering::Relaxed);
}

/// PostgreSQL's insert: returns the WAL insert position the statement saw, a lower bound of
/// its commit's (so the oracle, which needs a replica past it, is never too strict).
async fn insert_pg(db: &PinDb, user: &str, seq: i32) -> u64 {
    let lsn: String = diesel::insert_into(lt_rows::table)
        .values((lt_rows::author.eq(user), lt_rows::seq.eq(seq)))
        .returning(diesel::dsl::sql::<diesel::sql_types::Text>(
            "pg_current_wal_insert_lsn()::text",
        ))
        .get_result(&mut db.get())
        .await
        .expect("load-test insert");
    pindb_core::Lsn::parse(&lsn).map_or(0, |l| l.0)
}

/// `(max seq seen, served by a replica)`.
async fn list(db: &Db, user: &str, marks: &Marks) -> (i32, bool) {
    *marks.last_read.lock().unwrap_or_else(|p| p.into_inner()) = Some((
        Instant::now(),
        AtomicU64::load(&marks.last_write, Ordering::Relaxed),
    ));
    let run = async {
        match db {
            Db::Postgres(db) => list_pg(db, user).await,
            Db::MariaDb(db) => db.list(user).await,
        }
    };
    match unpinned() {
        true => pindb_core::scope(run).await,
        false => run.await,
    }
}

async fn list_pg(db: &PinDb, user: &str) -> (i32, bool) {
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
}
