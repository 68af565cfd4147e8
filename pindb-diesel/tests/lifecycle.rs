#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
//! Routed diesel connections under the things real services do to them: transactions whose
//! future is dropped (a timeout) or whose closure panics, tiny pools shared by concurrent
//! requests that take them in opposite orders, transactions of a second set on another
//! primary, and connection settings made before the first checkout. Against the real dev
//! cluster (`scripts/cluster up`); the second primary is the cluster's "stranger".

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use diesel::connection::{CacheSize, InstrumentationEvent};
use diesel::prelude::*;
use diesel::sql_types::Text;
use diesel_async::{AsyncConnection, RunQueryDsl};
use futures_util::FutureExt;
use pindb_core::{scope, RouterMode};
use pindb_diesel::bb8::{PinDb, PinDbConnection};
use pindb_diesel::{is_unpinned_write, routing_error, Error};

mod common;

use common::{entries, ledger, notes, sized, two_primaries, Count, NewNote, World};

fn insert(body: &str) -> impl diesel_async::methods::ExecuteDsl<PinDbConnection> + '_ {
    diesel::insert_into(notes::table).values(NewNote {
        author: "alice",
        body,
    })
}

/// A transaction that inserts `body`, then hangs until a `timeout_ms` timeout drops it:
/// `Err` (elapsed) when it was cut off.
async fn cut_off_after_insert(
    conn: &mut PinDbConnection,
    body: &str,
    timeout_ms: u64,
) -> Result<QueryResult<()>, tokio::time::error::Elapsed> {
    tokio::time::timeout(
        Duration::from_millis(timeout_ms),
        conn.transaction(async |c| {
            insert(body).execute(c).await?;
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, diesel::result::Error>(())
        }),
    )
    .await
}

async fn bodies(conn: &mut PinDbConnection) -> QueryResult<Vec<String>> {
    notes::table
        .select(notes::body)
        .order(notes::id)
        .load(conn)
        .await
}

/// Whether the connection `db.write()` hands out sees uncommitted rows of `body`: it would if
/// it were still inside an abandoned transaction.
async fn next_master_connection_sees(db: &PinDb, body: &str) -> bool {
    let mut conn = db.write().await.unwrap();
    let row: Count = diesel::sql_query("SELECT count(*) AS n FROM notes WHERE body = $1")
        .bind::<Text, _>(body)
        .get_result(&mut *conn)
        .await
        .unwrap();
    row.n > 0
}

#[tokio::test]
async fn a_transaction_dropped_by_a_timeout_leaves_nothing_behind() {
    let w = World::new().await;
    // One master connection: the one that ran the abandoned transaction is the only one.
    let db = PinDb::new(sized(&w, RouterMode::Greedy, &[1], 1, 3_000)).unwrap();
    scope(async {
        let mut conn = db.get();
        let cancelled = cut_off_after_insert(&mut conn, "lost", 300).await;
        assert!(cancelled.is_err(), "the timeout fired mid-transaction");
        assert!(
            !conn.slots_in_transaction(),
            "the dead transaction is not reported as open"
        );

        // The same routed connection, as a handler that caught the timeout would go on.
        assert_eq!(insert("after").execute(&mut conn).await.unwrap(), 1);
        assert!(!conn.slots_in_transaction(), "routing normally again");
    })
    .await;
    assert_eq!(
        w.primary_bodies().await,
        ["old", "after"],
        "the statement that returned Ok is committed; the abandoned one is not"
    );
    assert!(
        !next_master_connection_sees(&db, "lost").await,
        "the pool never hands out the connection with the abandoned transaction open"
    );
    w.finish().await;
}

trait InTransaction {
    fn slots_in_transaction(&mut self) -> bool;
}

impl InTransaction for PinDbConnection {
    fn slots_in_transaction(&mut self) -> bool {
        AsyncConnection::transaction_state(self)
            .transaction_depth()
            .map(|d| d.is_some())
            .unwrap_or(true)
    }
}

#[tokio::test]
async fn strict_mode_refuses_again_after_a_cancelled_transaction() {
    let w = World::new().await;
    let db = PinDb::new(w.config(RouterMode::Strict, &[1])).unwrap();
    scope(async {
        let mut conn = db.get();
        {
            let _master = db.router().master("default").unwrap();
            let cancelled = cut_off_after_insert(&mut conn, "lost", 300).await;
            assert!(cancelled.is_err());
        }
        let err = insert("unpinned").execute(&mut conn).await.unwrap_err();
        assert!(is_unpinned_write(&err), "strict checks apply again: {err}");
        // The master served this context under the guard: it stays there (monotonic reads).
        assert_eq!(bodies(&mut conn).await.unwrap(), ["old"]);
        assert_eq!(conn.held_aliases(), ["default"]);
    })
    .await;
    assert_eq!(w.primary_bodies().await, ["old"]);
    w.finish().await;
}

#[tokio::test]
async fn a_panic_inside_a_transaction_leaves_nothing_behind() {
    let w = World::new().await;
    let db = PinDb::new(sized(&w, RouterMode::Greedy, &[1], 1, 3_000)).unwrap();
    scope(async {
        let mut conn = db.get();
        // What a catch_unwind layer (tower-http's CatchPanic) does around a handler.
        let caught = AssertUnwindSafe(conn.transaction(async |c| {
            insert("lost").execute(c).await?;
            if c.held_aliases() == ["default"] {
                panic!("handler bug");
            }
            Ok::<_, diesel::result::Error>(())
        }))
        .catch_unwind()
        .await;
        assert!(caught.is_err(), "the closure panicked");
        assert_eq!(insert("after").execute(&mut conn).await.unwrap(), 1);
    })
    .await;
    assert_eq!(w.primary_bodies().await, ["old", "after"]);
    assert!(!next_master_connection_sees(&db, "lost").await);
    w.finish().await;
}

#[tokio::test]
async fn an_abandoned_inner_transaction_fails_the_outer_one_and_commits_nothing() {
    let w = World::new().await;
    let db = PinDb::new(w.config(RouterMode::Greedy, &[1])).unwrap();
    let outcome = scope(async {
        let mut conn = db.get();
        let outcome = conn
            .transaction(async |c| {
                insert("outer-1").execute(c).await?;
                let inner = cut_off_after_insert(c, "inner", 200).await;
                assert!(inner.is_err());
                // Carrying on would run outside any transaction: refused instead.
                insert("outer-2").execute(c).await?;
                Ok::<_, diesel::result::Error>(())
            })
            .await;
        // Afterwards the routed connection works normally.
        insert("later").execute(&mut conn).await.unwrap();
        outcome
    })
    .await;
    let err = outcome.unwrap_err();
    assert!(
        matches!(routing_error(&err), Some(Error::TransactionAbandoned)),
        "{err}"
    );
    assert!(err.to_string().contains("rolled back"), "{err}");
    assert_eq!(w.primary_bodies().await, ["old", "later"]);
    w.finish().await;
}

#[tokio::test]
async fn a_test_transaction_around_an_abandoned_one_lets_nothing_through_afterwards() {
    let w = World::new().await;
    let db = PinDb::new(w.config(RouterMode::Greedy, &[1])).unwrap();
    scope(async {
        let mut conn = db.get();
        conn.begin_test_transaction().await.unwrap();
        insert("in-test").execute(&mut conn).await.unwrap();
        let inner = cut_off_after_insert(&mut conn, "inner", 200).await;
        assert!(inner.is_err());
        // The hand-begun transaction went with the abandoned one: going on would commit
        // statements one by one.
        let err = insert("after").execute(&mut conn).await.unwrap_err();
        assert!(
            matches!(routing_error(&err), Some(Error::TransactionAbandoned)),
            "{err}"
        );
    })
    .await;
    assert_eq!(w.primary_bodies().await, ["old"], "nothing committed");
    w.finish().await;
}

#[tokio::test]
async fn a_request_dropped_inside_a_transaction_returns_no_open_transaction_to_the_pool() {
    let w = World::new().await;
    let db = PinDb::new(sized(&w, RouterMode::Greedy, &[1], 1, 3_000)).unwrap();
    let request = scope(async {
        let mut conn = db.get();
        conn.transaction(async |c| {
            insert("lost").execute(c).await?;
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, diesel::result::Error>(())
        })
        .await
    });
    // A client that disconnects: the whole handler future, routed connection included, is
    // dropped.
    assert!(tokio::time::timeout(Duration::from_millis(300), request)
        .await
        .is_err());
    assert!(!next_master_connection_sees(&db, "lost").await);
    assert_eq!(w.primary_bodies().await, ["old"]);
    w.finish().await;
}

/// Half the requests read then write (replica, then master), half read under `master()` then
/// read plainly (master, then replica), on pools of one connection each.
#[tokio::test]
async fn requests_taking_two_tiny_pools_in_opposite_orders_never_deadlock() {
    let w = World::new().await;
    let db = PinDb::new(sized(&w, RouterMode::Greedy, &[1], 1, 4_000)).unwrap();
    let mut tasks = Vec::new();
    for i in 0..24 {
        let db = db.clone();
        tasks.push(tokio::spawn(scope(async move {
            let mut conn = db.get();
            if i % 2 == 0 {
                bodies(&mut conn).await?;
                tokio::time::sleep(Duration::from_millis(20)).await;
                insert("w").execute(&mut conn).await?;
            } else {
                {
                    let _m = db.router().master("default").unwrap();
                    bodies(&mut conn).await?;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                bodies(&mut conn).await?;
            }
            Ok::<_, diesel::result::Error>(())
        })));
    }
    let mut failures = Vec::new();
    for task in tasks {
        if let Err(e) = task.await.unwrap() {
            failures.push(e.to_string());
        }
    }
    assert!(
        failures.is_empty(),
        "{} failed: {failures:?}",
        failures.len()
    );
    w.finish().await;
}

fn add_entry(entry: &str) -> impl diesel_async::methods::ExecuteDsl<PinDbConnection> + '_ {
    diesel::insert_into(ledger::table).values(ledger::entry.eq(entry))
}

#[tokio::test]
async fn a_transaction_runs_on_the_primary_of_its_set_and_refuses_other_sets() {
    let w = World::new().await;
    let (router, stranger) = two_primaries(&w, RouterMode::Greedy).await;
    let db = PinDb::from_router(router).unwrap();
    let primary = w.cluster.primary().await;
    scope(async {
        let mut conn = db.get();
        // Outside a transaction the delegate decides: the stranger.
        add_entry("plain").execute(&mut conn).await.unwrap();

        // A transaction opened on `default` whose statement belongs to `books`: refused,
        // nothing lands on the wrong primary.
        let err = conn
            .transaction(async |c| add_entry("wrong").execute(c).await)
            .await
            .unwrap_err();
        assert!(
            matches!(
                routing_error(&err),
                Some(Error::OtherDatabaseInTransaction { statement, transaction, .. })
                    if statement == "books" && transaction == "default"
            ),
            "{err}"
        );
        assert!(
            err.to_string().contains("transaction_on(\"books\""),
            "{err}"
        );

        // On its own set's primary.
        conn.transaction_on("books", async |c| {
            add_entry("in-tx").execute(c).await?;
            // A `default` statement inside a `books` transaction is refused too.
            let err = insert("x").execute(c).await.unwrap_err();
            assert!(
                matches!(
                    routing_error(&err),
                    Some(Error::OtherDatabaseInTransaction { .. })
                ),
                "{err}"
            );
            Ok::<_, diesel::result::Error>(())
        })
        .await
        .unwrap();
    })
    .await;
    assert_eq!(entries(&stranger, &w.schema.name).await, ["plain", "in-tx"]);
    assert!(entries(&primary, &w.schema.name).await.is_empty());
    stranger
        .batch_execute(&format!("DROP SCHEMA {} CASCADE", w.schema.name))
        .await
        .unwrap();
    w.finish().await;
}

#[tokio::test]
async fn strict_mode_checks_the_set_a_transaction_really_runs_on() {
    let w = World::new().await;
    let (router, stranger) = two_primaries(&w, RouterMode::Strict).await;
    let db = PinDb::from_router(router).unwrap();
    scope(async {
        let mut conn = db.get();
        db.router().pin("default").unwrap();
        let err = conn
            .transaction_on("books", async |c| add_entry("x").execute(c).await)
            .await
            .unwrap_err();
        assert!(
            matches!(routing_error(&err), Some(Error::Routing(pindb_core::PinDbError::UnpinnedWrite { set })) if set == "books"),
            "{err}"
        );
        db.router().pin("books").unwrap();
        conn.transaction_on("books", async |c| add_entry("y").execute(c).await)
            .await
            .unwrap();
    })
    .await;
    assert_eq!(entries(&stranger, &w.schema.name).await, ["y"]);
    stranger
        .batch_execute(&format!("DROP SCHEMA {} CASCADE", w.schema.name))
        .await
        .unwrap();
    w.finish().await;
}

async fn prepared_like(conn: &mut PinDbConnection, pattern: &str) -> i64 {
    // The pattern is a bind, so this statement's own text never matches it.
    diesel::sql_query("SELECT count(*) AS n FROM pg_prepared_statements WHERE statement LIKE $1")
        .bind::<Text, _>(pattern)
        .get_result::<Count>(conn)
        .await
        .unwrap()
        .n
}

#[tokio::test]
async fn a_disabled_statement_cache_applies_to_connections_checked_out_later() {
    let w = World::new().await;
    let db = PinDb::new(w.config(RouterMode::Greedy, &[1])).unwrap();
    scope(async {
        let mut conn = db.get();
        conn.set_prepared_statement_cache_size(CacheSize::Disabled);
        bodies(&mut conn).await.unwrap();
        bodies(&mut conn).await.unwrap();
        assert_eq!(conn.held_aliases(), ["default-1"]);
        assert_eq!(
            prepared_like(&mut conn, "%\"notes\".\"body\"%").await,
            0,
            "nothing prepared on the replica connection"
        );
        insert("x").execute(&mut conn).await.unwrap();
        bodies(&mut conn).await.unwrap();
        assert_eq!(conn.held_aliases(), ["default"]);
        assert_eq!(
            prepared_like(&mut conn, "%notes%").await,
            0,
            "nor on the master"
        );
    })
    .await;
    w.finish().await;
}

#[tokio::test]
async fn the_first_statement_of_a_checkout_is_prepared_once() {
    let w = World::new().await;
    let db = PinDb::new(w.config(RouterMode::Greedy, &[1])).unwrap();
    scope(async {
        let mut conn = db.get();
        // The first run goes through the owned (pre-checkout) path, the second straight to
        // the held connection: one prepared statement for both.
        bodies(&mut conn).await.unwrap();
        bodies(&mut conn).await.unwrap();
        assert_eq!(prepared_like(&mut conn, "%\"notes\".\"body\"%").await, 1);
    })
    .await;
    w.finish().await;
}

#[tokio::test]
async fn instrumentation_set_before_checkout_sees_every_statement_and_its_alias() {
    let w = World::new().await;
    let db = PinDb::new(w.config(RouterMode::Greedy, &[1])).unwrap();
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let log = seen.clone();
    scope(async {
        let mut conn = db.get();
        conn.set_instrumentation(move |event: InstrumentationEvent<'_>| {
            if let InstrumentationEvent::StartQuery { query, .. } = event {
                log.lock().unwrap().push(query.to_string());
            }
        });
        bodies(&mut conn).await.unwrap();
        insert("x").execute(&mut conn).await.unwrap();
    })
    .await;
    // The explicit handles get connections without the routed connection's instrumentation.
    let mut plain = db.write().await.unwrap();
    diesel::sql_query("SELECT 1")
        .execute(&mut *plain)
        .await
        .unwrap();
    drop(plain);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(
        seen[0].starts_with("/* pindb: default-1 */ SELECT"),
        "{seen:?}"
    );
    assert!(
        seen[1].starts_with("/* pindb: default */ INSERT"),
        "{seen:?}"
    );
    // pindb's own statement, pipelined behind the write on its connection: the master's
    // position after it.
    assert!(
        seen[2].starts_with("/* pindb: default */ SELECT pg_current_wal_insert_lsn()"),
        "{seen:?}"
    );
    w.finish().await;
}
