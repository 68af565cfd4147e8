#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
//! SeaORM transactions on a routed connection under faults: a transaction whose future is
//! dropped (a timeout), whose closure panics, or that is begun and dropped; and a transaction
//! of a second set on another primary (the dev cluster's "stranger"). Against the real dev
//! cluster (`scripts/cluster up`).

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::FutureExt;
use pindb_core::{scope, Config, Hint, Operation, Router, RouterMode};
use pindb_seaorm::{is_unpinned_write, PinDb};
use pindb_testkit::Fixture;
use sea_orm::{ConnectionTrait, DbErr, TransactionError, TransactionTrait};

const SETUP: &str = "CREATE TABLE {schema}.users (id serial PRIMARY KEY, name text NOT NULL);
                     INSERT INTO {schema}.users (name) VALUES ('old');";

/// A routed connection whose master pool holds one connection: after a fault, the next
/// statement gets the very connection the fault left behind.
async fn one_master_connection(f: &Fixture, mode: RouterMode) -> PinDb {
    let mut config = f.config(mode, &[1]);
    let master = config.masters.get_mut("default").unwrap();
    master.max_size = Some(1);
    master.connect_timeout_ms = Some(3_000);
    PinDb::connect(config).await.unwrap()
}

async fn primary_names(f: &Fixture) -> Vec<String> {
    f.primary_column("SELECT name FROM {schema}.users ORDER BY id")
        .await
}

#[tokio::test]
async fn a_transaction_dropped_by_a_timeout_leaves_nothing_behind() {
    let f = Fixture::new(SETUP).await;
    let db = one_master_connection(&f, RouterMode::Greedy).await;
    scope(async {
        let cancelled = tokio::time::timeout(
            Duration::from_millis(300),
            db.transaction::<_, (), DbErr>(|txn| {
                Box::pin(async move {
                    txn.execute_unprepared("INSERT INTO users (name) VALUES ('lost')")
                        .await?;
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Ok(())
                })
            }),
        )
        .await;
        assert!(cancelled.is_err(), "the timeout fired mid-transaction");
        db.execute_unprepared("INSERT INTO users (name) VALUES ('after')")
            .await
            .unwrap();
    })
    .await;
    assert_eq!(primary_names(&f).await, ["old", "after"]);
    f.finish().await;
}

#[tokio::test]
async fn a_panic_inside_a_transaction_leaves_nothing_behind() {
    let f = Fixture::new(SETUP).await;
    let db = one_master_connection(&f, RouterMode::Greedy).await;
    scope(async {
        let caught = AssertUnwindSafe(db.transaction::<_, (), DbErr>(|txn| {
            Box::pin(async move {
                txn.execute_unprepared("INSERT INTO users (name) VALUES ('lost')")
                    .await?;
                panic!("handler bug");
            })
        }))
        .catch_unwind()
        .await;
        assert!(caught.is_err());
        db.execute_unprepared("INSERT INTO users (name) VALUES ('after')")
            .await
            .unwrap();
    })
    .await;
    assert_eq!(primary_names(&f).await, ["old", "after"]);
    f.finish().await;
}

#[tokio::test]
async fn a_begun_transaction_dropped_without_commit_is_rolled_back() {
    let f = Fixture::new(SETUP).await;
    let db = one_master_connection(&f, RouterMode::Strict).await;
    scope(async {
        {
            let _master = db.router().master("default").unwrap();
            let txn = db.begin().await.unwrap();
            txn.execute_unprepared("INSERT INTO users (name) VALUES ('lost')")
                .await
                .unwrap();
            drop(txn);
        }
        // Strict checks apply: the routed connection keeps no transaction state.
        let err = db
            .execute_unprepared("INSERT INTO users (name) VALUES ('unpinned')")
            .await
            .unwrap_err();
        assert!(is_unpinned_write(&err), "{err}");
        db.router().pin("default").unwrap();
        db.execute_unprepared("INSERT INTO users (name) VALUES ('after')")
            .await
            .unwrap();
    })
    .await;
    assert_eq!(primary_names(&f).await, ["old", "after"]);
    f.finish().await;
}

#[tokio::test]
async fn transaction_on_runs_on_the_primary_of_the_named_set() {
    let f = Fixture::new(SETUP).await;
    let stranger = pindb_testkit::connect(&f.cluster.stranger_url).await;
    stranger
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {s}; \
             CREATE TABLE {s}.users (id serial PRIMARY KEY, name text NOT NULL)",
            s = f.schema.name
        ))
        .await
        .unwrap();
    let toml = format!(
        r#"
        router = "strict"
        [masters.default]
        url = "{p}"
        [masters.books]
        url = "{b}"
        [sets]
        default = [{{ url = "{r1}" }}]
        books = []
        "#,
        p = f.schema.url(&f.cluster.primary_url),
        b = f.schema.url(&f.cluster.stranger_url),
        r1 = f.schema.url(f.cluster.replica_url(1)),
    );
    let delegate = |hint: &Hint, _: Operation| hint.tables.contains(&"ledger").then_some("books");
    let router = Router::builder(Config::from_toml_str(&toml).unwrap())
        .delegate(delegate)
        .build()
        .unwrap();
    let db = PinDb::from_router(router).await.unwrap();
    scope(async {
        // Strict: the named set must be pinned.
        let err = db
            .transaction_on::<_, (), DbErr>("books", |_| Box::pin(async { Ok(()) }))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, TransactionError::Connection(e) if is_unpinned_write(e)),
            "{err}"
        );
        db.router().pin("books").unwrap();
        db.transaction_on::<_, (), DbErr>("books", |txn| {
            Box::pin(async move {
                txn.execute_unprepared("INSERT INTO users (name) VALUES ('booked')")
                    .await?;
                Ok(())
            })
        })
        .await
        .unwrap();
        let txn = db.begin_on("books").await.unwrap();
        txn.execute_unprepared("INSERT INTO users (name) VALUES ('begun')")
            .await
            .unwrap();
        txn.commit().await.unwrap();
    })
    .await;
    let on_books: Vec<String> = stranger
        .query(
            &format!("SELECT name FROM {}.users ORDER BY id", f.schema.name),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(on_books, ["booked", "begun"]);
    assert_eq!(
        primary_names(&f).await,
        ["old"],
        "nothing on the default primary"
    );
    stranger
        .batch_execute(&format!("DROP SCHEMA {} CASCADE", f.schema.name))
        .await
        .unwrap();
    f.finish().await;
}
