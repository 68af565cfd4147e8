#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
//! The pindb demo, SeaORM variant: the same notes service and scenario as `demo`, with the
//! handlers written against SeaORM and a `pindb_seaorm::PinDb`.

use std::process::ExitCode;

use axum::extract::{Query, State};
use axum::routing::get;
use axum::Json;
use pindb_core::PinDbLayer;
use pindb_core::RouterMode;
use pindb_examples::capture::{self, routes_of};
use pindb_examples::{
    demo_config, respond, run_demo, user_key, AppError, ListQuery, NewNote, Reply, SCHEMA_SQL,
};
use pindb_seaorm::PinDb;
use pindb_testkit::Fixture;
use sea_orm::entity::prelude::*;
use sea_orm::{ActiveValue::Set, DbErr, QueryOrder};

mod note {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "notes")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        pub author: String,
        pub body: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

fn message(e: &DbErr) -> String {
    match pindb_seaorm::routing_error(e) {
        Some(refusal) => format!("pindb refused the statement: {refusal}"),
        None => format!("database error: {e}"),
    }
}

async fn list(
    State(db): State<PinDb>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Reply>, AppError> {
    let (rows, routes) = routes_of(
        note::Entity::find()
            .filter(note::Column::Author.eq(q.user))
            .order_by_asc(note::Column::Id)
            .all(&db),
    )
    .await;
    respond(
        rows.map(|r| r.into_iter().map(|n| n.body).collect())
            .map_err(|e| message(&e)),
        routes,
    )
}

async fn add(State(db): State<PinDb>, Json(new): Json<NewNote>) -> Result<Json<Reply>, AppError> {
    let model = note::ActiveModel {
        author: Set(new.user),
        body: Set(new.body),
        ..Default::default()
    };
    let (row, routes) = routes_of(model.insert(&db)).await;
    respond(row.map(|n| vec![n.body]).map_err(|e| message(&e)), routes)
}

fn app(db: PinDb) -> axum::Router {
    let layer = PinDbLayer::new(db.router().clone())
        .expect("the demo config has a cookie secret")
        .with_key(user_key);
    axum::Router::new()
        .route("/notes", get(list).post(add))
        .with_state(db)
        .merge(pindb_examples::metrics_routes())
        .layer(layer)
}

#[tokio::main]
async fn main() -> ExitCode {
    capture::install();
    let fixture = Fixture::new(SCHEMA_SQL).await;
    let greedy = PinDb::connect(demo_config(&fixture, RouterMode::Greedy))
        .await
        .expect("valid demo config");
    greedy
        .router()
        .start_monitor()
        .await
        .expect("the dev cluster's topology is right");
    let strict = PinDb::connect(demo_config(&fixture, RouterMode::Strict))
        .await
        .expect("valid demo config");
    let router = greedy.router().clone();
    run_demo(
        "pindb demo (SeaORM + axum)",
        fixture,
        router,
        app(greedy),
        app(strict),
    )
    .await
}
