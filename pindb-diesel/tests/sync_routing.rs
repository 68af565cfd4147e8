#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
//! Sync diesel (r2d2) routing against the real dev cluster, called the way actix-style code
//! does: from `spawn_blocking` with the request's pinning context re-entered.
#![cfg(feature = "r2d2")]

use diesel::prelude::*;
use pindb_core::{scope, spawn_blocking, RouterMode};
use pindb_diesel::is_unpinned_write;
use pindb_diesel::r2d2::{PinDb as SyncPinDb, PinDbConnection as SyncPinDbConnection};
use pindb_testkit::contexts_that_saw_foreign_pins;

mod common;

use common::{notes, NewNote, Note, World};

fn db(w: &World, mode: RouterMode, replicas: &[usize]) -> SyncPinDb {
    SyncPinDb::new(w.config(mode, replicas)).unwrap()
}

fn bodies(conn: &mut SyncPinDbConnection) -> QueryResult<Vec<String>> {
    notes::table.select(notes::body).order(notes::id).load(conn)
}

fn insert(conn: &mut SyncPinDbConnection, body: &str) -> QueryResult<usize> {
    diesel::insert_into(notes::table)
        .values(NewNote {
            author: "alice",
            body,
        })
        .execute(conn)
}

/// Runs `f` in a fresh pinning context, on a blocking thread that re-entered it.
async fn in_context<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    scope(async { spawn_blocking(f).await.unwrap() }).await
}

#[tokio::test]
async fn unpinned_reads_see_the_replica_and_pinned_reads_the_master() {
    let mut w = World::new().await;
    let db = db(&w, RouterMode::Strict, &[1]);
    w.make_stale(1).await;
    in_context(move || {
        let mut conn = db.get();
        assert_eq!(bodies(&mut conn).unwrap(), ["old"]);
        db.router().pin("default").unwrap();
        assert_eq!(bodies(&mut conn).unwrap(), ["old", "new"]);
        assert_eq!(conn.held_aliases(), ["default"]);
    })
    .await;
    w.finish().await;
}

#[tokio::test]
async fn strict_refuses_unpinned_writes_before_any_io_and_allows_them_under_master() {
    let w = World::new().await;
    let db = db(&w, RouterMode::Strict, &[1, 2]);
    in_context(move || {
        let mut conn = db.get();
        assert!(is_unpinned_write(&insert(&mut conn, "x").unwrap_err()));
        let err = diesel::insert_into(notes::table)
            .values(NewNote {
                author: "alice",
                body: "y",
            })
            .returning(Note::as_returning())
            .get_result::<Note>(&mut conn)
            .unwrap_err();
        assert!(is_unpinned_write(&err), "{err}");
        assert!(conn.held_aliases().is_empty());
        let _guard = db.router().master("default").unwrap();
        insert(&mut conn, "x").unwrap();
        diesel::insert_into(notes::table)
            .values(NewNote {
                author: "alice",
                body: "y",
            })
            .returning(Note::as_returning())
            .get_result::<Note>(&mut conn)
            .unwrap();
    })
    .await;
    assert_eq!(w.primary_bodies().await, ["old", "x", "y"]);
    w.finish().await;
}

#[tokio::test]
async fn greedy_first_write_goes_to_the_master_and_later_reads_see_it() {
    let mut w = World::new().await;
    w.control.pause(1).await;
    let db = db(&w, RouterMode::Greedy, &[1]);
    in_context(move || {
        let mut conn = db.get();
        insert(&mut conn, "mine").unwrap();
        assert_eq!(conn.held_aliases(), ["default"]);
        assert_eq!(bodies(&mut conn).unwrap(), ["old", "mine"]);
        assert_eq!(bodies(&mut db.get()).unwrap(), ["old", "mine"]);
    })
    .await;
    w.finish().await;
}

#[tokio::test]
async fn a_pin_made_in_the_blocking_closure_is_seen_by_the_async_parent() {
    let w = World::new().await;
    let db = db(&w, RouterMode::Greedy, &[1]);
    scope(async move {
        let child = db.clone();
        spawn_blocking(move || insert(&mut child.get(), "w").unwrap())
            .await
            .unwrap();
        assert!(pindb_core::is_pinned("default"));
        assert_eq!(pindb_core::get_newly_pinned(), ["default"]);
    })
    .await;
    w.finish().await;
}

#[tokio::test]
async fn unpinned_replica_guard_reads_stale_data_even_when_pinned() {
    let mut w = World::new().await;
    let db = db(&w, RouterMode::Strict, &[1]);
    w.make_stale(1).await;
    in_context(move || {
        let mut conn = db.get();
        db.router().pin("default").unwrap();
        let guard = db.router().unpinned_replica("default").unwrap();
        assert_eq!(bodies(&mut conn).unwrap(), ["old"]);
        assert!(is_unpinned_write(&insert(&mut conn, "no").unwrap_err()));
        drop(guard);
        assert_eq!(bodies(&mut conn).unwrap(), ["old", "new"]);
    })
    .await;
    w.finish().await;
}

#[tokio::test]
async fn transactions_run_on_the_master_and_see_their_own_writes() {
    let mut w = World::new().await;
    w.control.pause(1).await;
    let db = db(&w, RouterMode::Greedy, &[1]);
    in_context(move || {
        let mut conn = db.get();
        let seen = conn
            .transaction(|conn| {
                insert(conn, "in-tx")?;
                bodies(conn)
            })
            .unwrap();
        assert_eq!(seen, ["old", "in-tx"]);
        let _ = conn.transaction::<(), _, _>(|conn| {
            insert(conn, "rolled-back")?;
            Err(diesel::result::Error::RollbackTransaction)
        });
        assert_eq!(conn.held_aliases(), ["default"]);
    })
    .await;
    assert_eq!(w.primary_bodies().await, ["old", "in-tx"]);
    w.finish().await;
}

#[tokio::test]
async fn strict_unpinned_transaction_is_refused() {
    let w = World::new().await;
    let db = db(&w, RouterMode::Strict, &[1]);
    in_context(move || {
        let err = db.get().transaction(|conn| insert(conn, "no")).unwrap_err();
        assert!(is_unpinned_write(&err), "{err}");
    })
    .await;
    w.finish().await;
}

#[tokio::test]
async fn save_changes_routes_to_the_master() {
    let mut w = World::new().await;
    w.control.pause(1).await;
    let db = db(&w, RouterMode::Greedy, &[1]);
    in_context(move || {
        let mut conn = db.get();
        let mut note: Note = notes::table.first(&mut conn).unwrap();
        note.body = "edited".into();
        let saved: Note = note.save_changes(&mut conn).unwrap();
        assert_eq!(saved.body, "edited");
        assert_eq!(conn.held_aliases(), ["default"]);
    })
    .await;
    assert_eq!(w.primary_bodies().await, ["edited"]);
    w.finish().await;
}

#[tokio::test]
async fn read_only_contexts_never_check_out_the_master() {
    let w = World::new().await;
    let db = db(&w, RouterMode::Greedy, &[1, 2]);
    for _ in 0..4 {
        let db = db.clone();
        in_context(move || {
            let mut conn = db.get();
            bodies(&mut conn).unwrap();
            bodies(&mut conn).unwrap();
        })
        .await;
    }
    assert_eq!(db.checkouts("default").unwrap(), 0);
    assert_eq!(
        db.checkouts("default-1").unwrap() + db.checkouts("default-2").unwrap(),
        4
    );
    let writer = db.clone();
    in_context(move || insert(&mut writer.get(), "w").unwrap()).await;
    assert_eq!(db.checkouts("default").unwrap(), 1);
    assert_eq!(
        db.checkouts("default-1").unwrap() + db.checkouts("default-2").unwrap(),
        4
    );
    w.finish().await;
}

#[tokio::test]
async fn disabled_mode_sends_everything_to_the_master() {
    let mut w = World::new().await;
    let mut config = w.config(RouterMode::Strict, &[1]);
    config.enabled = false;
    let db = SyncPinDb::new(config).unwrap();
    w.make_stale(1).await;
    in_context(move || {
        let mut conn = db.get();
        assert_eq!(bodies(&mut conn).unwrap(), ["old", "new"]);
        insert(&mut conn, "ok").unwrap();
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
            spawn_blocking(move || bodies(&mut db.get()).unwrap() == want)
                .await
                .unwrap()
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
async fn replica_pools_refuse_writes_server_side() {
    let w = World::new().await;
    let db = db(&w, RouterMode::Strict, &[1]);
    in_context(move || {
        let mut replica = db.read_with(&Default::default()).unwrap();
        let err = diesel::sql_query("CREATE TEMP TABLE t (x int)")
            .execute(&mut replica)
            .unwrap_err();
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
    })
    .await;
    w.finish().await;
}
