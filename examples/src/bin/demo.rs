#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
//! The pindb demo (diesel-async): a small axum notes service on pindb, against a local primary
//! and two streaming replicas, driven over real HTTP by a scripted scenario that shows which
//! database served each statement and why. Run it with `scripts/demo`.
//!
//! Exits non-zero if any expectation of the scenario fails.

use std::process::ExitCode;

use axum::extract::{Query, State};
use axum::routing::get;
use axum::Json;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use pindb_core::PinDbLayer;
use pindb_core::RouterMode;
use pindb_diesel::bb8::PinDb;
use pindb_examples::capture::{self, routes_of};
use pindb_examples::{
    demo_config, respond, run_demo, user_key, AppError, ListQuery, NewNote, Reply, SCHEMA_SQL,
};
use pindb_testkit::Fixture;

diesel::table! {
    notes (id) {
        id -> Integer,
        author -> Text,
        body -> Text,
    }
}

fn message(e: &diesel::result::Error) -> String {
    match pindb_diesel::routing_error(e) {
        Some(refusal) => format!("pindb refused the statement: {refusal}"),
        None => format!("database error: {e}"),
    }
}

async fn list(
    State(db): State<PinDb>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Reply>, AppError> {
    let (rows, routes) = routes_of(async {
        notes::table
            .filter(notes::author.eq(&q.user))
            .select(notes::body)
            .order(notes::id)
            .load::<String>(&mut db.get())
            .await
    })
    .await;
    respond(rows.map_err(|e| message(&e)), routes)
}

async fn add(State(db): State<PinDb>, Json(new): Json<NewNote>) -> Result<Json<Reply>, AppError> {
    let (row, routes) = routes_of(async {
        diesel::insert_into(notes::table)
            .values((notes::author.eq(&new.user), notes::body.eq(&new.body)))
            .returning(notes::body)
            .get_result::<String>(&mut db.get())
            .await
    })
    .await;
    respond(row.map(|b| vec![b]).map_err(|e| message(&e)), routes)
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
    let greedy = PinDb::new(demo_config(&fixture, RouterMode::Greedy)).expect("valid demo config");
    greedy
        .router()
        .start_monitor()
        .await
        .expect("the dev cluster's topology is right");
    let strict = PinDb::new(demo_config(&fixture, RouterMode::Strict)).expect("valid demo config");
    let router = greedy.router().clone();
    run_demo(
        "pindb demo (diesel-async + axum)",
        fixture,
        router,
        app(greedy),
        app(strict),
    )
    .await
}
