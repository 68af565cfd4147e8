//! The notes service's HTTP surface, shared by both variants: requests and replies, the
//! stickiness key, error answers, and serving on a loopback port.

use serde::{Deserialize, Serialize};

use crate::capture::RouteLine;

/// What every endpoint answers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Reply {
    /// The user's notes (bodies), for reads; the new note, for writes.
    pub notes: Vec<String>,
    /// How each statement was routed.
    pub routes: Vec<RouteLine>,
    /// Set when the request failed: the application's error message.
    pub error: Option<String>,
}

/// `GET /notes?user=..`.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    /// Whose notes.
    pub user: String,
}

/// `POST /notes`.
#[derive(Debug, Serialize, Deserialize)]
pub struct NewNote {
    /// The author.
    pub user: String,
    /// The text.
    pub body: String,
}

/// The table both services use, in `{schema}`.
pub const SCHEMA_SQL: &str =
    "CREATE TABLE {schema}.notes (id serial PRIMARY KEY, author text NOT NULL, body text NOT NULL)";

/// The stickiness key of a request: the `x-user` header (a stand-in for a session or JWT).
pub fn user_key(parts: &axum::http::request::Parts) -> Option<String> {
    let user = parts.headers.get("x-user")?.to_str().ok()?;
    Some(format!("user:{user}"))
}

/// Serves `app` on an ephemeral loopback port; returns its base URL.
pub async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port is free");
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

/// The application's error type: every failure becomes a 500 with a JSON body that says what
/// happened. The message is made by the service (a pindb refusal is told apart from a
/// database error there, with its adapter's `routing_error`).
#[derive(Debug)]
pub struct AppError(pub String, pub Vec<RouteLine>);

impl axum::response::IntoResponse for AppError {
    fn into_response(self) -> axum::response::Response {
        let reply = Reply {
            notes: Vec::new(),
            routes: self.1,
            error: Some(self.0),
        };
        (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(reply),
        )
            .into_response()
    }
}

/// A handler's answer: the notes and routes, or the error.
pub fn respond(
    result: Result<Vec<String>, String>,
    routes: Vec<RouteLine>,
) -> Result<axum::Json<Reply>, AppError> {
    match result {
        Ok(notes) => Ok(axum::Json(Reply {
            notes,
            routes,
            error: None,
        })),
        Err(message) => Err(AppError(message, routes)),
    }
}

/// `GET /metrics`: pindb's metrics (and any others the process records) in Prometheus's
/// text format. Installs the Prometheus recorder the first time (`metrics` has one global
/// recorder per process).
pub fn metrics_routes() -> axum::Router {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    let handle = HANDLE
        .get_or_init(|| {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .expect("no other metrics recorder is installed in this process")
        })
        .clone();
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || std::future::ready(handle.render())),
    )
}
