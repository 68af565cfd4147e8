#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
//! diesel-async routing against the real dev cluster (`scripts/cluster up`): a primary and two
//! streaming replicas, with replay paused so that "stale" is provable.

use std::collections::BTreeSet;

use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use pindb_core::{scope, Config, Hint, Operation, Router, RouterMode};
use pindb_diesel::bb8::PinDb;
use pindb_diesel::{is_unpinned_write, routing_error};
use pindb_testkit::{contexts_that_saw_foreign_pins, Cluster};

mod common;

use common::{notes, NewNote, Note, World};

fn db(w: &World, mode: RouterMode, replicas: &[usize]) -> PinDb {
    PinDb::new(w.config(mode, replicas)).unwrap()
}

async fn bodies(conn: &mut pindb_diesel::bb8::PinDbConnection) -> QueryResult<Vec<String>> {
    notes::table
        .select(notes::body)
        .order(notes::id)
        .load(conn)
        .await
}

fn insert(
    body: &str,
) -> impl diesel_async::methods::ExecuteDsl<pindb_diesel::bb8::PinDbConnection> + '_ {
    diesel::insert_into(notes::table).values(NewNote {
        author: "alice",
        body,
    })
}

#[tokio::test]
async fn unpinned_reads_see_the_replica_and_pinned_reads_the_master() {
    let mut w = World::new().await;
    let db = db(&w, RouterMode::Strict, &[1]);
    w.make_stale(1).await;
    scope(async {
        let mut conn = db.get();
        assert_eq!(
            bodies(&mut conn).await.unwrap(),
            ["old"],
            "the paused replica is behind"
        );
        assert_eq!(conn.held_aliases(), ["default-1"]);
        db.router().pin("default").unwrap();
        assert_eq!(
            bodies(&mut conn).await.unwrap(),
            ["old", "new"],
            "pinned: the master"
        );
        assert_eq!(
            conn.held_aliases(),
            ["default"],
            "the replica was given back before the master was checked out"
        );
    })
    .await;
    w.finish().await;
}

#[tokio::test]
async fn strict_refuses_unpinned_writes_before_any_io_and_allows_them_under_master() {
    let w = World::new().await;
    let db = db(&w, RouterMode::Strict, &[1, 2]);
    scope(async {
        let mut conn = db.get();
        let err = insert("x").execute(&mut conn).await.unwrap_err();
        assert!(is_unpinned_write(&err), "{err}");
        let err = diesel::insert_into(notes::table)
            .values(NewNote {
                author: "alice",
                body: "y",
            })
            .returning(Note::as_returning())
            .get_result::<Note>(&mut conn)
            .await
            .unwrap_err();
        assert!(
            is_unpinned_write(&err),
            "INSERT ... RETURNING through load: {err}"
        );
        let err = diesel::sql_query(format!("DELETE FROM {}.notes", w.schema.name))
            .execute(&mut conn)
            .await
            .unwrap_err();
        assert!(is_unpinned_write(&err), "raw SQL is classified too: {err}");
        assert!(
            conn.held_aliases().is_empty(),
            "refused before any checkout"
        );
        assert_eq!(
            w.primary_bodies().await,
            ["old"],
            "nothing reached the database"
        );

        let guard = db.router().master("default").unwrap();
        insert("x").execute(&mut conn).await.unwrap();
        let note: Note = diesel::insert_into(notes::table)
            .values(NewNote {
                author: "alice",
                body: "y",
            })
            .returning(Note::as_returning())
            .get_result(&mut conn)
            .await
            .unwrap();
        assert_eq!(note.body, "y");
        drop(guard);
        assert!(
            pindb_core::get_newly_pinned().is_empty(),
            "master() pins nothing"
        );
        assert!(is_unpinned_write(
            &insert("z").execute(&mut conn).await.unwrap_err()
        ));
    })
    .await;
    assert_eq!(w.primary_bodies().await, ["old", "x", "y"]);
    w.finish().await;
}

#[tokio::test]
async fn greedy_first_write_goes_to_the_master_and_later_reads_see_it() {
    let mut w = World::new().await;
    w.control.pause(1).await;
    w.control.pause(2).await;
    let db = db(&w, RouterMode::Greedy, &[1, 2]);
    scope(async {
        let mut conn = db.get();
        // The very first statement of the connection is a write: nothing is checked out yet.
        let n = insert("mine").execute(&mut conn).await.unwrap();
        assert_eq!(n, 1);
        assert_eq!(
            conn.held_aliases(),
            ["default"],
            "the write never touched a replica"
        );
        assert!(pindb_core::is_pinned("default"));
        assert_eq!(bodies(&mut conn).await.unwrap(), ["old", "mine"]);
        // A fresh connection in the same context reads the master too.
        assert_eq!(bodies(&mut db.get()).await.unwrap(), ["old", "mine"]);
    })
    .await;
    // Another context is not pinned: the paused replicas have not replayed the write.
    scope(async { assert_eq!(bodies(&mut db.get()).await.unwrap(), ["old"]) }).await;
    w.finish().await;
}

#[tokio::test]
async fn unpinned_replica_guard_reads_stale_data_even_when_pinned() {
    let mut w = World::new().await;
    let db = db(&w, RouterMode::Strict, &[1]);
    w.make_stale(1).await;
    scope(async {
        let mut conn = db.get();
        db.router().pin("default").unwrap();
        assert_eq!(bodies(&mut conn).await.unwrap(), ["old", "new"]);
        let guard = db.router().unpinned_replica("default").unwrap();
        assert_eq!(bodies(&mut conn).await.unwrap(), ["old"]);
        assert!(is_unpinned_write(
            &insert("no").execute(&mut conn).await.unwrap_err()
        ));
        drop(guard);
        assert_eq!(bodies(&mut conn).await.unwrap(), ["old", "new"]);
    })
    .await;
    w.finish().await;
}

#[tokio::test]
async fn transactions_run_on_the_master_and_see_their_own_writes() {
    let mut w = World::new().await;
    w.control.pause(1).await;
    let db = db(&w, RouterMode::Greedy, &[1]);
    scope(async {
        let mut conn = db.get();
        let seen = conn
            .transaction(async |conn| {
                insert("in-tx").execute(conn).await?;
                bodies(conn).await
            })
            .await
            .unwrap();
        assert_eq!(seen, ["old", "in-tx"]);
        assert_eq!(conn.held_aliases(), ["default"]);
        // Rolled back: nothing stays.
        let err = conn
            .transaction::<(), _, _>(async |conn| {
                insert("rolled-back").execute(conn).await?;
                Err(diesel::result::Error::RollbackTransaction)
            })
            .await
            .unwrap_err();
        assert_eq!(err, diesel::result::Error::RollbackTransaction);
        // Nested transactions use savepoints on the same connection.
        conn.transaction(async |conn| {
            insert("outer").execute(conn).await?;
            let _ = conn
                .transaction::<(), _, _>(async |conn| {
                    insert("inner").execute(conn).await?;
                    Err(diesel::result::Error::RollbackTransaction)
                })
                .await;
            Ok::<_, diesel::result::Error>(())
        })
        .await
        .unwrap();
    })
    .await;
    assert_eq!(w.primary_bodies().await, ["old", "in-tx", "outer"]);
    w.finish().await;
}

#[tokio::test]
async fn strict_unpinned_transaction_is_refused() {
    let w = World::new().await;
    let db = db(&w, RouterMode::Strict, &[1]);
    scope(async {
        let mut conn = db.get();
        let err = conn
            .transaction(async |conn| insert("no").execute(conn).await)
            .await
            .unwrap_err();
        assert!(is_unpinned_write(&err), "{err}");
        assert!(conn.held_aliases().is_empty());
    })
    .await;
    w.finish().await;
}

#[tokio::test]
async fn save_changes_routes_to_the_master() {
    let mut w = World::new().await;
    w.control.pause(1).await;
    let db = db(&w, RouterMode::Greedy, &[1]);
    scope(async {
        let mut conn = db.get();
        let mut note: Note = notes::table.first(&mut conn).await.unwrap();
        assert_eq!(conn.held_aliases(), ["default-1"]);
        note.body = "edited".into();
        let saved: Note = diesel_async::SaveChangesDsl::save_changes(&note, &mut conn)
            .await
            .unwrap();
        assert_eq!(saved.body, "edited");
        assert_eq!(conn.held_aliases(), ["default"]);
    })
    .await;
    assert_eq!(w.primary_bodies().await, ["edited"]);
    w.finish().await;
}

#[tokio::test]
async fn read_only_contexts_never_check_out_the_master_and_write_only_never_a_replica() {
    let w = World::new().await;
    let db = db(&w, RouterMode::Greedy, &[1, 2]);
    for _ in 0..5 {
        scope(async {
            let mut conn = db.get();
            for _ in 0..3 {
                bodies(&mut conn).await.unwrap();
            }
        })
        .await;
    }
    assert_eq!(db.checkouts("default").unwrap(), 0);
    assert_eq!(
        db.checkouts("default-1").unwrap() + db.checkouts("default-2").unwrap(),
        5
    );
    for _ in 0..3 {
        scope(async {
            let mut conn = db.get();
            insert("w").execute(&mut conn).await.unwrap();
            insert("w").execute(&mut conn).await.unwrap();
        })
        .await;
    }
    assert_eq!(db.checkouts("default").unwrap(), 3);
    assert_eq!(
        db.checkouts("default-1").unwrap() + db.checkouts("default-2").unwrap(),
        5
    );
    w.finish().await;
}

#[tokio::test]
async fn disabled_mode_sends_everything_to_the_master() {
    let mut w = World::new().await;
    let mut config = w.config(RouterMode::Strict, &[1, 2]);
    config.enabled = false;
    let db = PinDb::new(config).unwrap();
    w.make_stale(1).await;
    scope(async {
        let mut conn = db.get();
        assert_eq!(bodies(&mut conn).await.unwrap(), ["old", "new"]);
        insert("ok").execute(&mut conn).await.unwrap();
        assert_eq!(conn.held_aliases(), ["default"]);
    })
    .await;
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_contexts_see_only_their_own_pins() {
    let mut w = World::new().await;
    let db = db(&w, RouterMode::Strict, &[1]);
    w.make_stale(1).await;
    let failed = contexts_that_saw_foreign_pins(db.router(), 200, |_, pinned| {
        let db = db.clone();
        async move {
            let want: &[&str] = if pinned { &["old", "new"] } else { &["old"] };
            bodies(&mut db.get()).await.unwrap() == want
        }
    })
    .await;
    assert_eq!(
        failed, 0,
        "{failed} of 200 contexts saw another context's pin state"
    );
    w.finish().await;
}

#[tokio::test]
async fn replica_pools_are_read_only_and_routing_errors_differ_from_database_errors() {
    let w = World::new().await;
    let db = db(&w, RouterMode::Strict, &[1]);
    let mut replica = db.read().await.unwrap();
    let recovery: bool = diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(
        "pg_is_in_recovery()",
    ))
    .get_result(&mut replica)
    .await
    .unwrap();
    assert!(recovery, "db.read() is a replica");
    // Even a statement that slipped past routing cannot write there.
    let err = diesel::sql_query("CREATE TEMP TABLE t (x int)")
        .execute(&mut replica)
        .await
        .unwrap_err();
    assert!(
        routing_error(&err).is_none(),
        "a database error, not a routing one"
    );
    assert!(
        matches!(
            err,
            diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::ReadOnlyTransaction,
                _
            )
        ),
        "{err:?}"
    );
    // Explicit write handle: the strict router still applies.
    let err = scope(async { db.write().await.map(drop) })
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        pindb_diesel::Error::Routing(pindb_core::PinDbError::UnpinnedWrite { .. })
    ));
    scope(async {
        db.router().pin("default").unwrap();
        let mut master = db.write().await.unwrap();
        diesel::insert_into(notes::table)
            .values(NewNote {
                author: "alice",
                body: "explicit",
            })
            .execute(&mut *master)
            .await
            .unwrap();
    })
    .await;
    w.finish().await;
}

#[tokio::test]
async fn compile_time_replica_api_loads_from_the_replica() {
    let mut w = World::new().await;
    let db = db(&w, RouterMode::Strict, &[1]);
    w.make_stale(1).await;
    let rows: Vec<Note> = scope(async {
        let mut replica = db.replica().await.unwrap();
        replica
            .load_all(notes::table.select(Note::as_select()).order(notes::id))
            .await
            .unwrap()
    })
    .await;
    assert_eq!(rows.len(), 1, "stale replica: {rows:?}");
    let boxed: Vec<String> = scope(async {
        let mut replica = db.replica().await.unwrap();
        replica
            .load_all(notes::table.select(notes::body).into_boxed())
            .await
            .unwrap()
    })
    .await;
    assert_eq!(boxed, ["old"]);
    w.finish().await;
}

#[tokio::test]
async fn batch_execute_is_routed_by_its_text() {
    let w = World::new().await;
    let db = db(&w, RouterMode::Strict, &[1]);
    scope(async {
        let mut conn = db.get();
        diesel_async::SimpleAsyncConnection::batch_execute(&mut conn, "SELECT 1")
            .await
            .unwrap();
        assert_eq!(conn.held_aliases(), ["default-1"]);
        let err = diesel_async::SimpleAsyncConnection::batch_execute(
            &mut conn,
            "INSERT INTO notes (author, body) VALUES ('a', 'b')",
        )
        .await
        .unwrap_err();
        assert!(is_unpinned_write(&err));
    })
    .await;
    w.finish().await;
}

#[tokio::test]
async fn delegate_hints_carry_the_table_name() {
    let w = World::new().await;
    // Two sets on the same cluster: `default` and `archive`; a delegate sends `notes` to archive.
    let toml = format!(
        r#"
        router = "greedy"
        [masters.default]
        url = "{p}"
        [masters.archive]
        url = "{p}"
        [sets]
        default = [{{ url = "{r1}" }}]
        archive = [{{ url = "{r2}" }}]
        "#,
        p = w.schema.url(&w.cluster.primary_url),
        r1 = w.schema.url(w.cluster.replica_url(1)),
        r2 = w.schema.url(w.cluster.replica_url(2)),
    );
    let seen = std::sync::Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let log = seen.clone();
    let delegate = move |hint: &Hint, _: Operation| {
        log.lock()
            .unwrap()
            .extend(hint.tables.iter().map(|t| t.to_string()));
        hint.tables.contains(&"notes").then_some("archive")
    };
    let router = Router::builder(Config::from_toml_str(&toml).unwrap())
        .delegate(delegate)
        .build()
        .unwrap();
    let db = PinDb::from_router(router).unwrap();
    scope(async {
        let mut conn = db.get();
        bodies(&mut conn).await.unwrap();
        assert_eq!(conn.held_aliases(), ["archive-1"]);
        insert("a").execute(&mut conn).await.unwrap();
        assert_eq!(conn.held_aliases(), ["archive"]);
        assert!(pindb_core::is_pinned("archive") && !pindb_core::is_pinned("default"));
        diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>("1"))
            .get_result::<i32>(&mut conn)
            .await
            .unwrap();
        assert_eq!(conn.held_aliases(), ["default-1"], "no table: default");
    })
    .await;
    assert!(seen.lock().unwrap().contains("notes"));
    w.finish().await;
}

#[test]
fn building_pools_outside_a_runtime_is_a_clear_error() {
    let config = Config::single_set("postgres://pindb@127.0.0.1:1/x", Vec::<String>::new());
    let err = PinDb::new(config).unwrap_err();
    assert!(matches!(err, pindb_diesel::Error::NoRuntime));
    assert!(err.to_string().contains("tokio runtime"), "{err}");
}

#[tokio::test]
async fn an_unreachable_replica_falls_back_to_the_master_and_is_suspected() {
    let cluster = Cluster::from_env();
    let mut config = Config::from_toml_str(&format!(
        "[masters.default]\nurl = '{}'\n[sets]\ndefault = [{{ url = 'postgres://pindb@127.0.0.1:1/pindb', connect_timeout_ms = 500 }}]",
        cluster.primary_url
    ))
    .unwrap();
    config.router = RouterMode::Strict;
    let db = PinDb::new(config).unwrap();
    let served = scope(async {
        use diesel_async::RunQueryDsl;
        let port = diesel::dsl::sql::<diesel::sql_types::Integer>("current_setting('port')::int");
        diesel::select(port).get_result::<i32>(&mut db.get()).await
    })
    .await;
    let primary_port: i32 = cluster
        .primary_url
        .rsplit(':')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(served.unwrap(), primary_port, "served by the master");
    let status = db
        .router()
        .topology()
        .replica_status("default-1")
        .unwrap()
        .unwrap();
    assert!(!status.up, "suspected at once");
}
