//! The pindb demo (diesel-async): a small axum notes service on pindb, against a local primary
//! and two streaming replicas, driven over real HTTP by a scripted scenario that shows which
//! database served each statement and why. Run it with `scripts/demo`.
//!
//! Exits non-zero if any expectation of the scenario fails.

use std::process::ExitCode;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Json;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use pindb_core::web::PinDbLayer;
use pindb_core::RouterMode;
use pindb_diesel::PinDb;
use pindb_examples::capture::{self, routes_of, RouteLine};
use pindb_examples::scenario::{self, eventually};
use pindb_examples::{
    demo_config, replicas_reached, serve, user_key, ListQuery, NewNote, Reply, SCHEMA_SQL,
};
use pindb_testkit::Fixture;

diesel::table! {
    notes (id) {
        id -> Integer,
        author -> Text,
        body -> Text,
    }
}

/// The application's error type: every failure becomes a 500 with a JSON body that says what
/// happened (a pindb routing refusal is told apart from a database error).
struct AppError(String, Vec<RouteLine>);

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let reply = Reply {
            notes: Vec::new(),
            routes: self.1,
            error: Some(self.0),
        };
        (StatusCode::INTERNAL_SERVER_ERROR, Json(reply)).into_response()
    }
}

fn reply(
    result: QueryResult<Vec<String>>,
    routes: Vec<RouteLine>,
) -> Result<Json<Reply>, AppError> {
    match result {
        Ok(notes) => Ok(Json(Reply {
            notes,
            routes,
            error: None,
        })),
        Err(e) => Err(AppError(
            match pindb_diesel::routing_error(&e) {
                Some(refusal) => format!("pindb refused the statement: {refusal}"),
                None => format!("database error: {e}"),
            },
            routes,
        )),
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
    reply(rows, routes)
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
    reply(row.map(|b| vec![b]), routes)
}

fn app(db: PinDb) -> axum::Router {
    let layer = PinDbLayer::new(db.router().clone()).with_key(user_key);
    axum::Router::new()
        .route("/notes", get(list).post(add))
        .with_state(db)
        .layer(layer)
}

#[tokio::main]
async fn main() -> ExitCode {
    capture::install();
    let mut fixture = Fixture::new(SCHEMA_SQL).await;
    let greedy = PinDb::new(demo_config(&fixture, RouterMode::Greedy)).expect("valid demo config");
    greedy
        .router()
        .start_monitor()
        .await
        .expect("the dev cluster's topology is right");
    let strict = PinDb::new(demo_config(&fixture, RouterMode::Strict)).expect("valid demo config");
    let (greedy_url, strict_url) = (serve(app(greedy.clone())).await, serve(app(strict)).await);
    println!("pindb demo (diesel-async + axum): greedy service {greedy_url}, strict service {strict_url}\n");

    let router = greedy.router().clone();
    let report =
        scenario::run(
            &greedy_url,
            &strict_url,
            &fixture.cluster,
            &mut fixture.control,
            |lsn| {
                let router = router.clone();
                async move {
                    eventually(Duration::from_secs(10), || replicas_reached(&router, lsn)).await
                }
            },
        )
        .await;
    let ok = report.summary();
    fixture.finish().await;
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
