#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
//! Writes in flight, against the real cluster: a keyed context records its position only
//! once its writes have landed. A slow write whose context is dropped (held connection,
//! `master()` guard, refused read rerun on the master, `batch_execute`, a transaction's
//! `COMMIT`, a `RETURNING` write read without pipelined positions) is waited for, so the key
//! never reads a replica that lacks it; one nobody can wait for (its routed connection
//! outlives the context) makes the position unknown, for `ttl_seconds` only; and writes that
//! end normally, of every kind, record real positions.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use diesel_async::{AsyncConnection, RunQueryDsl, SimpleAsyncConnection};
use pindb_core::{Config, Lsn, Router, RouterMode};
use pindb_core::{MemoryStore, Store};
use pindb_diesel::bb8::PinDb;
use pindb_testkit::{monitor_saw_replay, Gate};

mod common;

use common::{notes, NewNote, Note, World};

const SOON: Duration = Duration::from_secs(10);
const TTL: Duration = Duration::from_secs(4);
/// How a store keeps the `default` set's position once it is unknown.
const UNKNOWN: &str = "default unknown until";

/// `gate()` waits for an advisory lock the test holds ([`Gate`]); a deferred constraint
/// trigger that waits for it at `COMMIT` for each row whose body is 'mine-late'; a function
/// that writes 'mine', then waits for it (a "read" replicas refuse); a table whose inserts
/// only flush the master's WAL.
const SLOW: &str = "
CREATE TABLE {schema}.flushes (n int);
CREATE FUNCTION {schema}.gate() RETURNS void LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_advisory_xact_lock(hashtext('{schema}')); END $$;
CREATE FUNCTION {schema}.slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM {schema}.gate(); RETURN NULL; END $$;
CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON {schema}.notes
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.body = 'mine-late')
  EXECUTE FUNCTION {schema}.slow_commit();
CREATE FUNCTION {schema}.write_slowly() RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN INSERT INTO {schema}.notes (author, body) VALUES ('alice', 'mine');
PERFORM {schema}.gate(); RETURN 1; END $$;
";

/// A plain insert of 'mine' that commits once the gate opens.
const SLOW_INSERT: &str = "INSERT INTO notes (author, body) SELECT 'alice', 'mine' FROM gate()";

#[derive(QueryableByName)]
struct Big {
    #[diesel(sql_type = Text)]
    big: String,
}

#[derive(QueryableByName)]
struct N {
    #[diesel(sql_type = BigInt)]
    #[allow(dead_code)] // only loaded
    n: i64,
}

/// Greedy, a fast monitor, and a short position lifetime (with a lag limit it outlives).
fn config(w: &World, replicas: &[usize]) -> Config {
    let mut config = w.config(RouterMode::Greedy, replicas);
    config.monitor.interval_ms = 20;
    config.monitor.check_timeout_ms = 300;
    config.monitor.failures_before_down = 2;
    config.monitor.max_lag_ms = 2_500;
    config.stickiness.ttl_seconds = TTL.as_secs();
    config
}

/// The `notes` world with the slow trigger and function.
async fn world() -> World {
    let w = World::new().await;
    w.on_primary(SLOW).await;
    w.cluster.sync_replicas().await;
    w
}

/// A started `PinDb` (replica 1, `pipeline_positions` as given) keeping positions in a
/// memory store of its own.
async fn started(w: &World, pipeline: bool) -> (PinDb, Arc<MemoryStore>) {
    let mut config = config(w, &[1]);
    config.stickiness.pipeline_positions = pipeline;
    start(config).await
}

/// [`started`], where a context's end waits up to 30 s (3 × `redis_timeout_ms`, which
/// nothing else uses with a memory store) for its writes still in flight: longer than a
/// test holds a dropped write at its gate, so the position recorded is the one after it.
async fn started_waiting(w: &World, pipeline: bool) -> (PinDb, Arc<MemoryStore>) {
    let mut config = config(w, &[1]);
    config.stickiness.pipeline_positions = pipeline;
    config.stickiness.redis_timeout_ms = 10_000;
    start(config).await
}

async fn start(config: Config) -> (PinDb, Arc<MemoryStore>) {
    let store = Arc::new(MemoryStore::new(1000));
    let router = Router::builder(config)
        .store(store.clone())
        .build()
        .unwrap();
    let db = PinDb::from_router(router).unwrap();
    db.router().start_monitor().await.unwrap();
    monitor_saw_replay(db.router(), "default-1", Lsn(1)).await;
    (db, store)
}

fn new(body: &str) -> NewNote<'_> {
    NewNote {
        author: "alice",
        body,
    }
}

async fn read_as(db: &PinDb, key: &str) -> (Vec<String>, Vec<String>) {
    let read = async {
        let mut conn = db.get();
        let rows = notes::table
            .select(notes::body)
            .order(notes::id)
            .load::<String>(&mut conn)
            .await
            .unwrap();
        let held = conn.held_aliases().iter().map(|a| a.to_string()).collect();
        (rows, held)
    };
    db.router()
        .consistency()
        .scope_with_key(Some(key), read)
        .await
}

async fn write_as(db: &PinDb, key: &str, body: &str) {
    let write = async {
        diesel::insert_into(notes::table)
            .values(new(body))
            .execute(&mut db.get())
            .await
            .unwrap();
    };
    db.router()
        .consistency()
        .scope_with_key(Some(key), write)
        .await;
}

/// Runs `work` (a write of `want` that waits for the gate) as alice's keyed context. Once
/// the write waits there, in flight, the context is dropped when `dropped`; then replica 1
/// replays all the master has and stops: it never has the write. Then the gate opens, and
/// once the write has committed, alice must read it, three times. Returns where replica 1
/// stopped and what the store keeps for alice.
async fn slow_write_then_read(
    w: &mut World,
    db: &PinDb,
    store: &MemoryStore,
    dropped: bool,
    want: &str,
    work: impl Future<Output = ()>,
) -> (Lsn, Vec<(String, Lsn)>) {
    let gate = Gate::close(&w.cluster, &w.schema.name).await;
    let mut context = Box::pin(
        db.router()
            .consistency()
            .scope_with_key(Some("alice"), work),
    );
    tokio::select! {
        () = &mut context => panic!("the write finished before the gate opened"),
        () = gate.until_waited_on() => {}
    }
    let stop_replica = async {
        // A commit of the test's own flushes the master's WAL, the waiting write's rows
        // included: replica 1 gets everything but the write's commit (pindb reads
        // `pg_current_wal_insert_lsn()`, which may be ahead of the flush).
        w.on_primary("INSERT INTO {schema}.flushes VALUES (1)")
            .await;
        let at = w.cluster.primary_lsn().await;
        w.cluster.wait_for_replay(1, at).await;
        monitor_saw_replay(db.router(), "default-1", at).await;
        w.control.pause(1).await;
        assert!(
            !w.primary_bodies().await.iter().any(|b| b == want),
            "the write committed before replica 1 stopped"
        );
        gate.open().await;
        at
    };
    let stopped_at = if dropped {
        drop(context);
        stop_replica.await
    } else {
        tokio::join!(context, stop_replica).1
    };
    let deadline = Instant::now() + SOON;
    while !w.primary_bodies().await.iter().any(|b| b == want) {
        assert!(Instant::now() < deadline, "the write never committed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..3 {
        let (rows, held) = read_as(db, "alice").await;
        assert!(
            rows.iter().any(|b| b == want),
            "alice reads {rows:?} from {held:?}, without her write"
        );
    }
    let saved = Store::load(store, "alice").await.unwrap();
    eprintln!("replica 1 stopped at {stopped_at:?}; alice's positions: {saved:?}");
    (stopped_at, saved)
}

/// A real position of `default`, past where replica 1 stopped (so past the write).
fn real_past(saved: &[(String, Lsn)], stopped_at: Lsn) -> bool {
    matches!(saved, [(set, lsn)] if set == "default" && *lsn > stopped_at && lsn.0 < u64::MAX)
}

/// A write on the connection an earlier write of the context already holds, dropped in
/// flight, is waited for: the position recorded is the one after it.
#[tokio::test]
async fn a_write_on_the_held_master_dropped_in_flight_is_waited_for() {
    let mut w = world().await;
    let (db, store) = started_waiting(&w, true).await;
    let (stopped_at, saved) = slow_write_then_read(&mut w, &db, &store, true, "mine", async {
        let mut conn = db.get();
        diesel::insert_into(notes::table)
            .values(new("first"))
            .execute(&mut conn)
            .await
            .unwrap();
        assert_eq!(conn.held_aliases(), ["default"]);
        diesel::sql_query(SLOW_INSERT)
            .execute(&mut conn)
            .await
            .unwrap();
    })
    .await;
    assert!(real_past(&saved, stopped_at), "{saved:?}");
    w.finish().await;
}

/// A write under a `master()` guard, after an earlier write pinned the set, dropped in
/// flight, is waited for.
#[tokio::test]
async fn a_master_guarded_write_dropped_in_flight_is_waited_for() {
    let mut w = world().await;
    let (db, store) = started_waiting(&w, true).await;
    let (stopped_at, saved) = slow_write_then_read(&mut w, &db, &store, true, "mine", async {
        diesel::insert_into(notes::table)
            .values(new("first"))
            .execute(&mut db.get())
            .await
            .unwrap();
        let _guard = db.router().master("default").unwrap();
        diesel::sql_query(SLOW_INSERT)
            .execute(&mut db.get())
            .await
            .unwrap();
    })
    .await;
    assert!(real_past(&saved, stopped_at), "{saved:?}");
    w.finish().await;
}

/// A "read" that writes (an unknown function), refused by the replica and rerun on the
/// master, dropped in flight there, is waited for.
#[tokio::test]
async fn a_refused_read_rerun_on_the_master_and_dropped_in_flight_is_waited_for() {
    let mut w = world().await;
    let (db, store) = started_waiting(&w, true).await;
    let (stopped_at, saved) = slow_write_then_read(&mut w, &db, &store, true, "mine", async {
        let _: Vec<N> = diesel::sql_query("SELECT write_slowly() AS n")
            .load(&mut db.get())
            .await
            .unwrap();
    })
    .await;
    assert!(real_past(&saved, stopped_at), "{saved:?}");
    w.finish().await;
}

/// A `batch_execute` write dropped in flight is waited for.
#[tokio::test]
async fn a_batch_execute_write_dropped_in_flight_is_waited_for() {
    let mut w = world().await;
    let (db, store) = started_waiting(&w, true).await;
    let (stopped_at, saved) = slow_write_then_read(&mut w, &db, &store, true, "mine", async {
        db.get().batch_execute(SLOW_INSERT).await.unwrap();
    })
    .await;
    assert!(real_past(&saved, stopped_at), "{saved:?}");
    w.finish().await;
}

/// A `transaction(..)` dropped during its slow `COMMIT` is waited for.
#[tokio::test]
async fn a_transaction_dropped_during_its_commit_is_waited_for() {
    let mut w = world().await;
    let (db, store) = started_waiting(&w, true).await;
    let (stopped_at, saved) = slow_write_then_read(&mut w, &db, &store, true, "mine-late", async {
        db.get()
            .transaction::<_, diesel::result::Error, _>(async |c| {
                diesel::insert_into(notes::table)
                    .values(new("mine-late"))
                    .execute(c)
                    .await?;
                Ok(())
            })
            .await
            .unwrap();
    })
    .await;
    assert!(real_past(&saved, stopped_at), "{saved:?}");
    w.finish().await;
}

/// A `transaction_on(..)` dropped during its slow `COMMIT`, on a routed connection that
/// outlives the context: nobody can tell when the commit is over, so the position is
/// unknown and alice reads from the master.
#[tokio::test]
async fn a_commit_dropped_on_a_connection_that_outlives_its_context_makes_the_position_unknown() {
    let mut w = world().await;
    let (db, store) = started(&w, true).await;
    let mut conn = db.get();
    let (_, saved) = slow_write_then_read(&mut w, &db, &store, true, "mine-late", async {
        conn.transaction_on("default", async |c| {
            diesel::insert_into(notes::table)
                .values(new("mine-late"))
                .execute(c)
                .await
        })
        .await
        .unwrap();
    })
    .await;
    drop(conn);
    assert!(
        matches!(&saved[..], [(set, _)] if set == UNKNOWN),
        "{saved:?}"
    );
    w.finish().await;
}

/// Without pipelined positions, an `INSERT .. RETURNING` whose row is read before its slow
/// `COMMIT`, dropped in flight, is waited for.
#[tokio::test]
async fn a_returning_write_without_pipelined_positions_dropped_in_flight_is_waited_for() {
    let mut w = world().await;
    let (db, store) = started_waiting(&w, false).await;
    let (stopped_at, saved) = slow_write_then_read(&mut w, &db, &store, true, "mine-late", async {
        // The big value makes the server send the row before it runs the COMMIT.
        let big: Big = diesel::sql_query(
            "INSERT INTO notes (author, body) VALUES ('alice', 'mine-late') \
                 RETURNING repeat('x', 200000) AS big",
        )
        .get_result(&mut db.get())
        .await
        .unwrap();
        assert_eq!(big.big.len(), 200_000);
        std::future::pending::<()>().await;
    })
    .await;
    assert!(real_past(&saved, stopped_at), "{saved:?}");
    w.finish().await;
}

/// Without pipelined positions, an `INSERT .. RETURNING` of two rows, the first read before
/// the slow `COMMIT`: `get_result` returns once the write is over, and the context, ending
/// normally, records the position after it.
#[tokio::test]
async fn a_returning_write_without_pipelined_positions_records_the_position_after_its_commit() {
    let mut w = world().await;
    let (db, store) = started(&w, false).await;
    let (stopped_at, saved) =
        slow_write_then_read(&mut w, &db, &store, false, "mine-late", async {
            let big: Big = diesel::sql_query(
                "INSERT INTO notes (author, body) VALUES ('alice', 'mine-late'), \
                 ('alice', 'mine-late') RETURNING repeat('x', 200000) AS big",
            )
            .get_result(&mut db.get())
            .await
            .unwrap();
            assert_eq!(big.big.len(), 200_000);
        })
        .await;
    assert!(real_past(&saved, stopped_at), "{saved:?}");
    w.finish().await;
}

/// Runs `work` as `key`'s keyed context: the position recorded must be real, and `key` must
/// then read all the master has (replica 1 is stopped).
async fn records_a_real_position(
    w: &World,
    db: &PinDb,
    store: &MemoryStore,
    key: &str,
    work: impl Future<Output = ()>,
) {
    db.router()
        .consistency()
        .scope_with_key(Some(key), work)
        .await;
    let saved = Store::load(store, key).await.unwrap();
    assert!(
        matches!(&saved[..], [(set, lsn)] if set == "default" && lsn.0 < u64::MAX),
        "{key}: {saved:?}"
    );
    let (rows, held) = read_as(db, key).await;
    assert_eq!(rows, w.primary_bodies().await, "{key} read from {held:?}");
}

/// Writes of every kind that end normally (failed ones, rolled back ones, transactions,
/// `batch_execute`, `save_changes`, a write future dropped unpolled), with and without
/// pipelined positions, record real positions: none is taken for one in flight.
#[tokio::test]
async fn writes_that_end_normally_record_real_positions() {
    use diesel::result::Error;
    use diesel_async::TransactionManager;
    use pindb_diesel::bb8::RoutedTransactionManager as Manager;

    let mut w = world().await;
    w.control.pause(1).await;
    for pipeline in [true, false] {
        let (db, store) = started(&w, pipeline).await;
        macro_rules! real {
            ($key:expr, $work:expr) => {
                records_a_real_position(&w, &db, &store, $key, $work).await
            };
        }
        real!("execute", async {
            diesel::insert_into(notes::table)
                .values(new("execute"))
                .execute(&mut db.get())
                .await
                .unwrap();
        });
        real!("two on the held connection", async {
            let mut conn = db.get();
            for body in ["held 1", "held 2"] {
                diesel::insert_into(notes::table)
                    .values(new(body))
                    .execute(&mut conn)
                    .await
                    .unwrap();
            }
            let _: Vec<String> = notes::table
                .select(notes::body)
                .load(&mut conn)
                .await
                .unwrap();
        });
        real!("returning", async {
            let note: Note = diesel::insert_into(notes::table)
                .values(new("returning"))
                .get_result(&mut db.get())
                .await
                .unwrap();
            assert_eq!(note.body, "returning");
        });
        real!("returning on the held connection", async {
            let mut conn = db.get();
            let _: Note = diesel::insert_into(notes::table)
                .values(new("returning 1"))
                .get_result(&mut conn)
                .await
                .unwrap();
            let _: Vec<Note> = diesel::insert_into(notes::table)
                .values(new("returning 2"))
                .get_results(&mut conn)
                .await
                .unwrap();
        });
        let duplicate = "INSERT INTO notes (id, author, body) VALUES (1, 'alice', 'dup')";
        real!("unique violation", async {
            let failed = diesel::sql_query(duplicate).execute(&mut db.get()).await;
            assert!(failed.is_err());
        });
        real!("unique violations on the held connection", async {
            let mut conn = db.get();
            diesel::insert_into(notes::table)
                .values(new("before the violations"))
                .execute(&mut conn)
                .await
                .unwrap();
            assert!(diesel::sql_query(duplicate)
                .execute(&mut conn)
                .await
                .is_err());
            let returning = format!("{duplicate} RETURNING id::bigint AS n");
            let failed: Result<N, _> = diesel::sql_query(returning).get_result(&mut conn).await;
            assert!(failed.is_err());
        });
        real!("transaction", async {
            db.get()
                .transaction::<_, Error, _>(async |c| {
                    diesel::insert_into(notes::table)
                        .values(new("transaction"))
                        .execute(c)
                        .await?;
                    Ok(())
                })
                .await
                .unwrap();
        });
        real!("rolled back", async {
            let rolled_back = db
                .get()
                .transaction::<(), Error, _>(async |c| {
                    diesel::insert_into(notes::table)
                        .values(new("rolled back"))
                        .execute(c)
                        .await?;
                    Err(Error::RollbackTransaction)
                })
                .await;
            assert!(rolled_back.is_err());
        });
        real!("transaction without a write", async {
            db.get()
                .transaction::<(), Error, _>(async |c| {
                    c.batch_execute("SET CONSTRAINTS ALL IMMEDIATE").await
                })
                .await
                .unwrap();
        });
        real!("transaction_on", async {
            db.get()
                .transaction_on("default", async |c| {
                    diesel::insert_into(notes::table)
                        .values(new("transaction_on"))
                        .execute(c)
                        .await
                })
                .await
                .unwrap();
        });
        real!("nested", async {
            db.get()
                .transaction::<_, Error, _>(async |c| {
                    c.transaction::<_, Error, _>(async |c| {
                        diesel::insert_into(notes::table)
                            .values(new("nested"))
                            .execute(c)
                            .await?;
                        Ok(())
                    })
                    .await
                })
                .await
                .unwrap();
        });
        real!("batch_execute", async {
            db.get()
                .batch_execute("INSERT INTO notes (author, body) VALUES ('alice', 'batch')")
                .await
                .unwrap();
        });
        real!("failed batch_execute", async {
            assert!(db.get().batch_execute(duplicate).await.is_err());
        });
        real!("save_changes", async {
            let note = Note {
                id: 1,
                author: "alice".into(),
                body: "saved".into(),
            };
            let _: Note = diesel_async::SaveChangesDsl::save_changes(&note, &mut db.get())
                .await
                .unwrap();
        });
        real!("transaction manager", async {
            let mut conn = db.get();
            Manager::begin_transaction(&mut conn).await.unwrap();
            diesel::insert_into(notes::table)
                .values(new("managed"))
                .execute(&mut conn)
                .await
                .unwrap();
            Manager::commit_transaction(&mut conn).await.unwrap();
        });
        // The routed connection outlives the context.
        let mut conn = db.get();
        real!("write future dropped unpolled", async {
            diesel::insert_into(notes::table)
                .values(new("polled"))
                .execute(&mut conn)
                .await
                .unwrap();
            drop(
                diesel::insert_into(notes::table)
                    .values(new("never"))
                    .execute(&mut conn),
            );
        });
        drop(conn);
    }
    w.finish().await;
}

/// A write dropped inside its context, on a routed connection that outlives the context:
/// nobody can tell when it is over, so alice's position is unknown (she reads the master),
/// for `ttl_seconds` only although she keeps writing.
#[tokio::test]
async fn a_write_lost_on_a_connection_that_outlives_its_context_is_unknown_for_the_ttl_only() {
    let mut w = world().await;
    let (db, store) = started(&w, true).await;
    w.control.pause(1).await;
    let gate = Gate::close(&w.cluster, &w.schema.name).await;
    let mut conn = db.get();
    let lose = async {
        let write = diesel::sql_query(
            "INSERT INTO notes (author, body) SELECT 'alice', 'lost' FROM gate()",
        )
        .execute(&mut conn);
        // Dropped once it waits at the gate: sent, unanswered.
        tokio::select! {
            _ = write => panic!("the write finished before the drop"),
            () = gate.until_waited_on() => {}
        }
    };
    db.router()
        .consistency()
        .scope_with_key(Some("alice"), lose)
        .await;
    let saved = Store::load(&*store, "alice").await.unwrap();
    assert!(
        matches!(&saved[..], [(set, _)] if set == UNKNOWN),
        "{saved:?}"
    );
    gate.open().await;
    let deadline = Instant::now() + SOON;
    while w.primary_bodies().await.len() < 2 {
        assert!(Instant::now() < deadline, "the write never committed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (rows, held) = read_as(&db, "alice").await;
    assert_eq!(rows, ["old", "lost"], "alice reads her write");
    assert_eq!(held, ["default"], "unknown: the master");
    drop(conn);
    w.control.resume(1).await;
    // Alice goes on writing, every 0.5 s, past the unknown position's end.
    let unknown_since = Instant::now();
    while unknown_since.elapsed() < TTL + Duration::from_secs(1) {
        write_as(&db, "alice", "more").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let lsn = w.cluster.primary_lsn().await;
    w.cluster.wait_for_replay(1, lsn).await;
    monitor_saw_replay(db.router(), "default-1", lsn).await;
    let (rows, held) = read_as(&db, "alice").await;
    eprintln!(
        "after the ttl: {:?}, read from {held:?}",
        Store::load(&*store, "alice").await
    );
    assert_eq!(held, ["default-1"], "still unknown after its end");
    assert_eq!(rows.last().map(String::as_str), Some("more"));
    w.finish().await;
}

/// A closed-loop hunt: four users each write (a slow insert, cut by a timeout at a random
/// moment or not), then, once the master shows whatever the write did, read their rows in a
/// new keyed context, while replica 1's replay pauses and resumes at random. No read may
/// miss a row the master had before the read began.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_keyed_read_misses_a_write_cut_in_flight() {
    let mut w = world().await;
    let (db, _) = started(&w, true).await;
    let end = Instant::now() + Duration::from_secs(6);
    let mut users = Vec::new();
    for u in 0..4 {
        let (db, master) = (db.clone(), w.cluster.primary().await);
        let count = format!(
            "SELECT count(*) FROM {}.notes WHERE author = $1",
            w.schema.name
        );
        users.push(tokio::spawn(async move {
            let consistency = db.router().consistency().clone();
            let author = format!("u{u}");
            let (mut reads, mut stale, mut on_replica) = (0u32, 0u32, 0u32);
            while Instant::now() < end {
                let cut = Duration::from_millis(fastrand::u64(0..60));
                let sleep = fastrand::u64(0..50) as f64 / 1000.0;
                let _ = tokio::time::timeout(
                    cut,
                    consistency.scope_with_key(Some(&author), async {
                        diesel::sql_query(
                            "INSERT INTO notes (author, body) SELECT $1, 'w' FROM pg_sleep($2)",
                        )
                        .bind::<Text, _>(&author)
                        .bind::<diesel::sql_types::Double, _>(sleep)
                        .execute(&mut db.get())
                        .await
                    }),
                )
                .await;
                // A cut write may commit meanwhile: what the master has before the read is
                // what the read must see.
                tokio::time::sleep(Duration::from_millis(fastrand::u64(0..80))).await;
                let before: i64 = master.query_one(&count, &[&author]).await.unwrap().get(0);
                let (seen, held) = consistency
                    .scope_with_key(Some(&author), async {
                        let mut conn = db.get();
                        let seen: common::Count =
                            diesel::sql_query("SELECT count(*) AS n FROM notes WHERE author = $1")
                                .bind::<Text, _>(&author)
                                .get_result(&mut conn)
                                .await
                                .unwrap();
                        (seen.n, conn.held_aliases() != ["default"])
                    })
                    .await;
                reads += 1;
                stale += u32::from(seen < before);
                on_replica += u32::from(held);
            }
            (reads, stale, on_replica)
        }));
    }
    while Instant::now() < end {
        w.control.flip(1).await;
        tokio::time::sleep(Duration::from_millis(fastrand::u64(50..300))).await;
    }
    let (mut reads, mut stale, mut on_replica) = (0, 0, 0);
    for user in users {
        let (r, s, o) = user.await.unwrap();
        (reads, stale, on_replica) = (reads + r, stale + s, on_replica + o);
    }
    eprintln!(
        "{reads} keyed reads after a write cut or not, {on_replica} on replica 1, {stale} stale"
    );
    assert!(reads > 100, "too few rounds to mean anything: {reads}");
    assert_eq!(
        stale, 0,
        "{stale} of {reads} keyed reads missed a committed write"
    );
    assert!(
        on_replica * 10 > reads,
        "replica 1 served {on_replica} of {reads}"
    );
    w.finish().await;
}
