#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
//! SeaORM routing against the real dev cluster (`scripts/cluster up`), with replay paused on a
//! replica so that "stale" is provable.

use futures_util::TryStreamExt;
use pindb_core::{scope, RouterMode};
use pindb_seaorm::{is_unpinned_write, routing_error, PinDb};
use pindb_testkit::{contexts_that_saw_foreign_pins, Fixture};
use sea_orm::entity::prelude::*;
use sea_orm::{
    AccessMode, ActiveValue::Set, ConnectionTrait, DbBackend, PaginatorTrait, QueryOrder,
    Statement, StreamTrait, TransactionTrait,
};

mod user {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "users")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        pub name: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {
        #[sea_orm(has_many = "super::post::Entity")]
        Post,
    }

    impl Related<super::post::Entity> for Entity {
        fn to() -> RelationDef {
            Relation::Post.def()
        }
    }

    impl ActiveModelBehavior for ActiveModel {}
}

mod post {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "posts")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        pub user_id: i32,
        pub title: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {
        #[sea_orm(
            belongs_to = "super::user::Entity",
            from = "Column::UserId",
            to = "super::user::Column::Id"
        )]
        User,
    }

    impl Related<super::user::Entity> for Entity {
        fn to() -> RelationDef {
            Relation::User.def()
        }
    }

    impl ActiveModelBehavior for ActiveModel {}
}

const SETUP: &str = "
    CREATE TABLE {schema}.users (id serial PRIMARY KEY, name text NOT NULL);
    CREATE TABLE {schema}.posts (id serial PRIMARY KEY, user_id int NOT NULL REFERENCES {schema}.users (id), title text NOT NULL);
    INSERT INTO {schema}.users (name) VALUES ('old');
    INSERT INTO {schema}.posts (user_id, title) VALUES (1, 'first');
";

async fn world() -> Fixture {
    Fixture::new(SETUP).await
}

async fn db(f: &Fixture, mode: RouterMode, replicas: &[usize]) -> PinDb {
    PinDb::connect(f.config(mode, replicas)).await.unwrap()
}

/// Replica `n` stops replaying; then a user "new" is added that it has not replayed.
async fn make_stale(f: &mut Fixture, n: usize) {
    f.write_unseen_by(n, "INSERT INTO {schema}.users (name) VALUES ('new')")
        .await;
}

async fn names<C: ConnectionTrait>(db: &C) -> Vec<String> {
    user::Entity::find()
        .order_by_asc(user::Column::Id)
        .all(db)
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.name)
        .collect()
}

async fn primary_names(f: &Fixture) -> Vec<String> {
    f.primary_column("SELECT name FROM {schema}.users ORDER BY id")
        .await
}

fn new_user(name: &str) -> user::ActiveModel {
    user::ActiveModel {
        name: Set(name.to_owned()),
        ..Default::default()
    }
}

async fn in_recovery<C: ConnectionTrait>(db: &C) -> bool {
    db.query_one_raw(Statement::from_string(
        DbBackend::Postgres,
        "SELECT pg_is_in_recovery() AS r",
    ))
    .await
    .unwrap()
    .unwrap()
    .try_get::<bool>("", "r")
    .unwrap()
}

#[tokio::test]
async fn find_all_reads_the_replica_until_pinned() {
    let mut f = world().await;
    let db = db(&f, RouterMode::Strict, &[1]).await;
    make_stale(&mut f, 1).await;
    scope(async {
        assert_eq!(names(&db).await, ["old"], "unpinned: the paused replica");
        db.router().pin("default").unwrap();
        assert_eq!(names(&db).await, ["old", "new"], "pinned: the master");
    })
    .await;
    f.finish().await;
}

/// A statement's future is boxed, so it is moved into its box on every statement: what a
/// rare path awaits (diagnosing a failure, kilobytes) is boxed apart when taken. Held in the
/// future, it made a routed read's 4,600 bytes against plain SeaORM's 3,200.
#[tokio::test]
async fn a_routed_statement_future_is_no_bigger_than_plain_seaorm() {
    let f = world().await;
    let db = db(&f, RouterMode::Greedy, &[1]).await;
    let plain = sea_orm::Database::connect(f.cluster.replica_url(1))
        .await
        .unwrap();
    let stmt = Statement::from_string(DbBackend::Postgres, "SELECT 1");
    let routed = std::mem::size_of_val(&*ConnectionTrait::query_one_raw(&db, stmt.clone()));
    let plain = std::mem::size_of_val(&*plain.query_one_raw(stmt));
    assert!(
        routed <= plain,
        "a routed read's future is {routed} bytes, plain SeaORM's {plain}: a rare path's \
         future is inside it, box it apart"
    );
    f.finish().await;
}

/// A read that decides as the last one did takes no lock on the context (pindb-core
/// remembers the decision while nothing changes); each used to take it.
#[tokio::test]
async fn a_read_that_changes_nothing_takes_no_lock() {
    let f = world().await;
    let db = db(&f, RouterMode::Greedy, &[1]).await;
    let taken = scope(async {
        let ctx = pindb_core::Context::current().unwrap();
        for _ in 0..2 {
            assert!(in_recovery(&db).await, "read on the replica");
        }
        let before = ctx.locks_taken();
        assert!(before > 0, "the reads were decided outside the context");
        for _ in 0..50 {
            assert!(in_recovery(&db).await, "read on the replica");
        }
        ctx.locks_taken() - before
    })
    .await;
    assert_eq!(
        taken, 0,
        "50 routed reads took the context's lock {taken} times"
    );
    f.finish().await;
}

#[tokio::test]
async fn strict_refuses_every_unpinned_write_and_nothing_changes() {
    let f = world().await;
    let db = db(&f, RouterMode::Strict, &[1, 2]).await;
    scope(async {
        let e = new_user("a").insert(&db).await.unwrap_err();
        assert!(
            is_unpinned_write(&e),
            "ActiveModel::insert (INSERT ... RETURNING via query_one): {e}"
        );
        let e = user::Entity::insert_many([new_user("b"), new_user("c")])
            .exec(&db)
            .await
            .unwrap_err();
        assert!(is_unpinned_write(&e), "insert_many: {e}");
        let e = user::Entity::update_many()
            .col_expr(user::Column::Name, Expr::value("x"))
            .exec(&db)
            .await
            .unwrap_err();
        assert!(is_unpinned_write(&e), "update_many: {e}");
        let e = post::Entity::delete_by_id(1).exec(&db).await.unwrap_err();
        assert!(is_unpinned_write(&e), "delete_by_id: {e}");
        let e = db.execute_unprepared("SELECT 1").await.unwrap_err();
        assert!(is_unpinned_write(&e), "execute_unprepared is a write: {e}");
        assert!(e.to_string().contains("`default`"), "names the set: {e}");
    })
    .await;
    assert_eq!(primary_names(&f).await, ["old"]);
    assert_eq!(
        f.primary_column("SELECT count(*) FROM {schema}.posts")
            .await,
        ["1"]
    );

    scope(async {
        let _guard = db.router().master("default").unwrap();
        let a = new_user("a").insert(&db).await.unwrap();
        assert_eq!(a.name, "a");
        user::Entity::insert_many([new_user("b"), new_user("c")])
            .exec(&db)
            .await
            .unwrap();
        user::Entity::update_many()
            .col_expr(user::Column::Name, Expr::value("x"))
            .filter(user::Column::Name.eq("c"))
            .exec(&db)
            .await
            .unwrap();
        post::Entity::delete_by_id(1).exec(&db).await.unwrap();
        assert!(pindb_core::get_newly_pinned().is_empty());
    })
    .await;
    assert_eq!(primary_names(&f).await, ["old", "a", "b", "x"]);
    assert_eq!(
        f.primary_column("SELECT count(*) FROM {schema}.posts")
            .await,
        ["0"]
    );
    f.finish().await;
}

#[tokio::test]
async fn greedy_first_insert_pins_and_later_reads_see_it() {
    let mut f = world().await;
    f.control.pause(1).await;
    let db = db(&f, RouterMode::Greedy, &[1]).await;
    scope(async {
        assert_eq!(names(&db).await, ["old"]);
        let mine = new_user("mine").insert(&db).await.unwrap();
        assert!(pindb_core::is_pinned("default"));
        assert_eq!(names(&db).await, ["old", "mine"]);
        let found = user::Entity::find_by_id(mine.id).one(&db).await.unwrap();
        assert_eq!(found.map(|u| u.name).as_deref(), Some("mine"));
    })
    .await;
    scope(async { assert_eq!(names(&db).await, ["old"], "another context: the replica") }).await;
    f.finish().await;
}

#[tokio::test]
async fn transactions_commit_on_the_master_and_read_only_ones_run_on_a_replica() {
    let mut f = world().await;
    let db = db(&f, RouterMode::Greedy, &[1]).await;
    make_stale(&mut f, 1).await;
    scope(async {
        let seen = db
            .transaction::<_, _, DbErr>(|txn| {
                Box::pin(async move {
                    new_user("in-tx").insert(txn).await?;
                    assert!(!in_recovery(txn).await);
                    Ok(names(txn).await)
                })
            })
            .await
            .unwrap();
        assert_eq!(seen, ["old", "new", "in-tx"]);
    })
    .await;
    assert_eq!(primary_names(&f).await, ["old", "new", "in-tx"]);

    scope(async {
        let txn = db
            .begin_with_config(None, Some(AccessMode::ReadOnly))
            .await
            .unwrap();
        assert!(
            in_recovery(&txn).await,
            "read-only transaction on a replica"
        );
        assert_eq!(names(&txn).await, ["old"]);
        txn.commit().await.unwrap();
        assert!(!pindb_core::is_pinned("default"));
    })
    .await;
    f.finish().await;
}

#[tokio::test]
async fn strict_unpinned_begin_is_refused_unless_read_only() {
    let f = world().await;
    let db = db(&f, RouterMode::Strict, &[1]).await;
    scope(async {
        let e = db.begin().await.unwrap_err();
        assert!(is_unpinned_write(&e), "{e}");
        let txn = db
            .begin_with_config(None, Some(AccessMode::ReadOnly))
            .await
            .unwrap();
        assert!(in_recovery(&txn).await);
        txn.rollback().await.unwrap();
        let e = db
            .transaction::<_, (), DbErr>(|_| Box::pin(async { Ok(()) }))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, sea_orm::TransactionError::Connection(e) if is_unpinned_write(e)),
            "{e}"
        );
    })
    .await;
    f.finish().await;
}

#[tokio::test]
async fn unpinned_replica_guard_reads_stale_data_even_when_pinned() {
    let mut f = world().await;
    let db = db(&f, RouterMode::Strict, &[1]).await;
    make_stale(&mut f, 1).await;
    scope(async {
        db.router().pin("default").unwrap();
        let guard = db.router().unpinned_replica("default").unwrap();
        assert_eq!(names(&db).await, ["old"]);
        assert!(is_unpinned_write(
            &new_user("no").insert(&db).await.unwrap_err()
        ));
        drop(guard);
        assert_eq!(names(&db).await, ["old", "new"]);
    })
    .await;
    f.finish().await;
}

#[tokio::test]
async fn disabled_mode_sends_everything_to_the_master() {
    let mut f = world().await;
    let mut config = f.config(RouterMode::Strict, &[1]);
    config.enabled = false;
    let db = PinDb::connect(config).await.unwrap();
    make_stale(&mut f, 1).await;
    scope(async {
        assert_eq!(names(&db).await, ["old", "new"]);
        new_user("ok").insert(&db).await.unwrap();
    })
    .await;
    f.finish().await;
}

#[tokio::test]
async fn streams_count_and_paginate_are_routed_like_reads() {
    let mut f = world().await;
    let db = db(&f, RouterMode::Strict, &[1]).await;
    make_stale(&mut f, 1).await;
    scope(async {
        let streamed: Vec<String> = user::Entity::find()
            .order_by_asc(user::Column::Id)
            .stream(&db)
            .await
            .unwrap()
            .map_ok(|u| u.name)
            .try_collect()
            .await
            .unwrap();
        assert_eq!(streamed, ["old"]);
        assert_eq!(user::Entity::find().count(&db).await.unwrap(), 1);
        let pages = user::Entity::find()
            .order_by_asc(user::Column::Id)
            .paginate(&db, 10);
        assert_eq!(pages.num_items().await.unwrap(), 1);
        assert_eq!(pages.fetch_page(0).await.unwrap().len(), 1);
        let with_posts = user::Entity::find()
            .find_with_related(post::Entity)
            .all(&db)
            .await
            .unwrap();
        assert_eq!(with_posts.len(), 1);
        // A locking read is a write: refused unpinned.
        let raw = Statement::from_string(DbBackend::Postgres, "SELECT * FROM users FOR UPDATE");
        assert!(is_unpinned_write(&db.stream_raw(raw).await.err().unwrap()));
        db.router().pin("default").unwrap();
        assert_eq!(user::Entity::find().count(&db).await.unwrap(), 2);
    })
    .await;
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_contexts_are_isolated() {
    let mut f = world().await;
    let db = db(&f, RouterMode::Strict, &[1]).await;
    make_stale(&mut f, 1).await;
    let failed = contexts_that_saw_foreign_pins(db.router(), 200, |_, pinned| {
        let db = db.clone();
        async move {
            let want: &[&str] = if pinned { &["old", "new"] } else { &["old"] };
            names(&db).await == want
        }
    })
    .await;
    assert_eq!(
        failed, 0,
        "{failed} of 200 contexts saw another context's pin state"
    );
    f.finish().await;
}

#[tokio::test]
async fn replica_pools_refuse_writes_and_accessors_reach_each_alias() {
    let f = world().await;
    let db = db(&f, RouterMode::Strict, &[1]).await;
    let replica = db.connection("default-1").unwrap();
    assert!(in_recovery(replica).await);
    let e = replica
        .execute_unprepared("CREATE TEMP TABLE t (x int)")
        .await
        .unwrap_err();
    assert!(
        routing_error(&e).is_none(),
        "a database error, not a routing one"
    );
    assert!(e.to_string().contains("read-only"), "{e}");
    db.master().ping().await.unwrap();
    assert!(!in_recovery(db.master()).await);
    let e = db.connection("nope").unwrap_err();
    assert!(
        e.to_string().contains("unknown database alias `nope`"),
        "{e}"
    );
    f.finish().await;
}
