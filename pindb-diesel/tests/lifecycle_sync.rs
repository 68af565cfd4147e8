#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
//! Sync routed diesel connections (r2d2) under faults: a transaction whose closure panics,
//! tiny pools taken in opposite orders, a second set on another primary, settings made
//! before the first checkout. The async twin is `lifecycle.rs`.
#![cfg(feature = "r2d2")]

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use diesel::connection::CacheSize;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use pindb_core::{scope, Hint, RouterMode};
use pindb_diesel::{is_unpinned_write, routing_error, Error};

mod common;

use common::{entries, ledger, notes, sized, two_primaries, Count, NewNote, World};
use pindb_core::spawn_blocking;
use pindb_diesel::r2d2::{PinDb as SyncPinDb, PinDbConnection as SyncPinDbConnection};

fn insert(conn: &mut SyncPinDbConnection, body: &str) -> QueryResult<usize> {
    diesel::insert_into(notes::table)
        .values(NewNote {
            author: "alice",
            body,
        })
        .execute(conn)
}

fn bodies(conn: &mut SyncPinDbConnection) -> QueryResult<Vec<String>> {
    notes::table.select(notes::body).order(notes::id).load(conn)
}

async fn in_context<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    scope(async { spawn_blocking(f).await.unwrap() }).await
}

#[tokio::test]
async fn a_panic_inside_a_sync_transaction_leaves_nothing_behind() {
    let w = World::new().await;
    let db = SyncPinDb::new(sized(&w, RouterMode::Strict, &[1], 1, 3_000)).unwrap();
    let db2 = db.clone();
    in_context(move || {
        let mut conn = db2.get();
        {
            let _m = db2.router().master("default").unwrap();
            let caught = std::panic::catch_unwind(AssertUnwindSafe(|| {
                conn.transaction(|c| {
                    insert(c, "lost")?;
                    panic!("handler bug");
                    #[allow(unreachable_code)]
                    Ok::<_, diesel::result::Error>(())
                })
            }));
            assert!(caught.is_err());
        }
        let err = insert(&mut conn, "unpinned").unwrap_err();
        assert!(is_unpinned_write(&err), "strict checks apply again: {err}");
        db2.router().pin("default").unwrap();
        assert_eq!(insert(&mut conn, "after").unwrap(), 1);
        drop(conn);
        // One master connection: this is not the one with the abandoned transaction.
        let n: i64 = diesel::select(diesel::dsl::sql::<BigInt>(
            "(SELECT count(*) FROM notes WHERE body = 'lost')",
        ))
        .get_result(
            &mut *db2
                .write_with(&Hint::default())
                .unwrap_or_else(|_| panic!("the master pool's only connection must be free again")),
        )
        .unwrap();
        assert_eq!(n, 0);
    })
    .await;
    assert_eq!(w.primary_bodies().await, ["old", "after"]);
    drop(db);
    w.finish().await;
}

#[tokio::test]
async fn sync_requests_taking_two_tiny_pools_in_opposite_orders_never_deadlock() {
    let w = World::new().await;
    let db = SyncPinDb::new(sized(&w, RouterMode::Greedy, &[1], 1, 4_000)).unwrap();
    let mut tasks = Vec::new();
    for i in 0..12 {
        let db = db.clone();
        tasks.push(tokio::spawn(in_context(move || {
            let mut conn = db.get();
            if i % 2 == 0 {
                bodies(&mut conn)?;
                std::thread::sleep(Duration::from_millis(20));
                insert(&mut conn, "w")?;
            } else {
                {
                    let _m = db.router().master("default").unwrap();
                    bodies(&mut conn)?;
                }
                std::thread::sleep(Duration::from_millis(20));
                bodies(&mut conn)?;
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

#[tokio::test]
async fn a_sync_transaction_runs_on_the_primary_of_its_set() {
    let w = World::new().await;
    let (router, stranger) = two_primaries(&w, RouterMode::Greedy).await;
    let db = SyncPinDb::from_router(router).unwrap();
    in_context(move || {
        let mut conn = db.get();
        let add = |c: &mut SyncPinDbConnection, e: &str| {
            diesel::insert_into(ledger::table)
                .values(ledger::entry.eq(e))
                .execute(c)
        };
        let err = conn.transaction(|c| add(c, "wrong")).unwrap_err();
        assert!(
            matches!(
                routing_error(&err),
                Some(Error::OtherDatabaseInTransaction { .. })
            ),
            "{err}"
        );
        conn.transaction_on("books", |c| add(c, "in-tx")).unwrap();
    })
    .await;
    assert_eq!(entries(&stranger, &w.schema.name).await, ["in-tx"]);
    stranger
        .batch_execute(&format!("DROP SCHEMA {} CASCADE", w.schema.name))
        .await
        .unwrap();
    w.finish().await;
}

#[tokio::test]
async fn a_disabled_statement_cache_applies_to_sync_checkouts_made_later() {
    let w = World::new().await;
    let db = SyncPinDb::new(w.config(RouterMode::Greedy, &[1])).unwrap();
    in_context(move || {
        let mut conn = db.get();
        conn.set_prepared_statement_cache_size(CacheSize::Disabled);
        bodies(&mut conn).unwrap();
        bodies(&mut conn).unwrap();
        let n: i64 = diesel::sql_query(
            "SELECT count(*) AS n FROM pg_prepared_statements WHERE statement LIKE $1",
        )
        .bind::<Text, _>("%\"notes\".\"body\"%")
        .get_result::<Count>(&mut conn)
        .unwrap()
        .n;
        assert_eq!(n, 0);
    })
    .await;
    w.finish().await;
}

#[tokio::test]
async fn sync_instrumentation_set_before_checkout_sees_every_statement_and_its_alias() {
    use diesel::connection::InstrumentationEvent;
    let w = World::new().await;
    let db = SyncPinDb::new(w.config(RouterMode::Greedy, &[1])).unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let log = seen.clone();
    in_context(move || {
        let mut conn = db.get();
        conn.set_instrumentation(move |event: InstrumentationEvent<'_>| {
            if let InstrumentationEvent::StartQuery { query, .. } = event {
                log.lock().unwrap().push(query.to_string());
            }
        });
        bodies(&mut conn).unwrap();
        insert(&mut conn, "x").unwrap();
    })
    .await;
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter()
            .any(|q| q.starts_with("/* pindb: default-1 */ SELECT")),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|q| q.starts_with("/* pindb: default */ INSERT")),
        "{seen:?}"
    );
    w.finish().await;
}
