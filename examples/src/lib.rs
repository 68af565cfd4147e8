//! What the demo's two services (diesel-async and SeaORM) share: the HTTP surface, the
//! capture of routing decisions, the dev-cluster set-up, and the scripted scenario that drives
//! a running service over real HTTP and checks what it sees.

use std::cell::RefCell;
use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod loadtest;

pub mod capture {
    //! Records pindb's routing events (`tracing`, target `pindb`) for the current request, so
    //! the service can show which database served each statement and why.

    use super::*;
    use tracing::field::{Field, Visit};
    use tracing_subscriber::layer::{Context as LayerCx, Layer};
    use tracing_subscriber::prelude::*;

    tokio::task_local! {
        static ROUTES: RefCell<Vec<RouteLine>>;
    }

    /// One routing decision.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct RouteLine {
        /// `read` or `write`.
        pub op: String,
        /// The alias that served it (empty when refused).
        pub alias: String,
        /// `master`, `replica`, or `refused`.
        pub role: String,
        /// The router's reason.
        pub reason: String,
    }

    #[derive(Default)]
    struct Fields(RouteLine);

    impl Visit for Fields {
        fn record_str(&mut self, field: &Field, value: &str) {
            let slot = match field.name() {
                "op" => &mut self.0.op,
                "alias" => &mut self.0.alias,
                "role" => &mut self.0.role,
                "reason" => &mut self.0.reason,
                _ => return,
            };
            *slot = value.to_owned();
        }

        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.record_str(field, &format!("{value:?}"));
        }
    }

    struct Capture;

    impl<S: tracing::Subscriber> Layer<S> for Capture {
        fn on_event(&self, event: &tracing::Event<'_>, _: LayerCx<'_, S>) {
            if event.metadata().target() != "pindb" {
                return;
            }
            let mut fields = Fields::default();
            event.record(&mut fields);
            if fields.0.reason.is_empty() {
                return;
            }
            if fields.0.role.is_empty() {
                fields.0.role = "refused".into();
            }
            let _ = ROUTES.try_with(|r| r.borrow_mut().push(fields.0));
        }
    }

    /// Installs the capturing subscriber (once per process).
    pub fn install() {
        let _ = tracing_subscriber::registry().with(Capture).try_init();
    }

    /// Runs `fut` and returns what it returned with the routing decisions it caused.
    pub async fn routes_of<F: Future>(fut: F) -> (F::Output, Vec<RouteLine>) {
        ROUTES
            .scope(RefCell::new(Vec::new()), async {
                let out = fut.await;
                (out, ROUTES.with(|r| r.take()))
            })
            .await
    }
}

use capture::RouteLine;

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

pub mod scenario {
    //! The scripted scenario: real HTTP against a running service, replicas paused and resumed
    //! for real, every expectation checked, a one-screen summary.

    use super::*;
    use pindb_testkit::{Cluster, ReplayControl};

    /// A browser (keeps cookies) or an API client (no cookies), as a given user.
    pub struct Client {
        http: reqwest::Client,
        base: String,
        user: String,
        label: &'static str,
    }

    impl Client {
        /// A client of `base` acting as `user`.
        pub fn new(base: &str, user: &str, cookies: bool, label: &'static str) -> Client {
            Client {
                http: reqwest::Client::builder()
                    .cookie_store(cookies)
                    .build()
                    .expect("a plain HTTP client builds"),
                base: base.to_owned(),
                user: user.to_owned(),
                label,
            }
        }

        async fn list(&self, whose: &str) -> (u16, Reply) {
            let r = self
                .http
                .get(format!("{}/notes", self.base))
                .query(&[("user", whose)])
                .header("x-user", &self.user)
                .send()
                .await
                .expect("the demo service answers");
            (r.status().as_u16(), r.json().await.unwrap_or_default())
        }

        async fn add(&self, body: &str) -> (u16, Reply) {
            let r = self
                .http
                .post(format!("{}/notes", self.base))
                .header("x-user", &self.user)
                .json(&NewNote {
                    user: self.user.clone(),
                    body: body.to_owned(),
                })
                .send()
                .await
                .expect("the demo service answers");
            (r.status().as_u16(), r.json().await.unwrap_or_default())
        }
    }

    struct Row {
        step: String,
        served: String,
        ok: bool,
        expectation: &'static str,
    }

    /// The scenario's record.
    #[derive(Default)]
    pub struct Report {
        rows: Vec<Row>,
    }

    impl Report {
        fn check(
            &mut self,
            step: String,
            status: u16,
            reply: &Reply,
            ok: bool,
            expectation: &'static str,
        ) {
            let served = reply
                .routes
                .iter()
                .map(|r| {
                    format!(
                        "{} {} ({})",
                        r.op,
                        if r.alias.is_empty() { "-" } else { &r.alias },
                        r.reason
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            println!(
                "{} {step}\n    HTTP {status}, routes: {served}",
                if ok { "✓" } else { "✗" }
            );
            if !reply.notes.is_empty() {
                println!("    notes: {:?}", reply.notes);
            }
            if let Some(e) = &reply.error {
                println!("    error body: {e}");
            }
            println!("    expected: {expectation}");
            self.rows.push(Row {
                step,
                served,
                ok,
                expectation,
            });
        }

        /// Prints the summary table; true when every expectation held.
        pub fn summary(&self) -> bool {
            println!(
                "\n{:<2} {:<44} {:<36} expectation",
                "", "request", "served by (reason)"
            );
            for r in &self.rows {
                let served: String = r.served.chars().take(36).collect();
                println!(
                    "{:<2} {:<44} {:<36} {}",
                    if r.ok { "✓" } else { "✗" },
                    r.step,
                    served,
                    r.expectation
                );
            }
            let failed = self.rows.iter().filter(|r| !r.ok).count();
            println!(
                "\n{} of {} expectations met",
                self.rows.len() - failed,
                self.rows.len()
            );
            failed == 0
        }
    }

    fn first(reply: &Reply, op: &str) -> Option<RouteLine> {
        reply.routes.iter().find(|r| r.op == op).cloned()
    }

    fn on_replica(reply: &Reply) -> bool {
        first(reply, "read").is_some_and(|r| r.role == "replica")
    }

    fn on_master(reply: &Reply) -> bool {
        first(reply, "read").is_some_and(|r| r.role == "master")
    }

    /// Drives the service at `greedy` (greedy router) and `strict` (strict router), pausing
    /// replay on both replicas through `control`. `caught_up` waits until the service's
    /// monitor has seen the replicas replay the primary's current position.
    pub async fn run<W, WF>(
        greedy: &str,
        strict: &str,
        cluster: &Cluster,
        control: &mut ReplayControl,
        caught_up: W,
    ) -> Report
    where
        W: Fn(pindb_core::Lsn) -> WF,
        WF: Future<Output = ()>,
    {
        let mut report = Report::default();
        let alice = Client::new(greedy, "alice", true, "alice's browser");
        let alice_phone = Client::new(greedy, "alice", false, "alice's phone (no cookie)");
        let bob = Client::new(greedy, "bob", true, "bob's browser");

        println!("== 1. reads go to a replica");
        let (s, r) = alice.list("alice").await;
        report.check(
            format!("GET  {} lists", alice.label),
            s,
            &r,
            s == 200 && on_replica(&r),
            "a replica serves the read",
        );

        println!("\n== 2. replay paused on both replicas: they are provably behind from now on");
        control.pause(1).await;
        control.pause(2).await;

        println!("\n== 3. a write pins the master");
        let (s, r) = alice.add("hello from alice").await;
        let pinned =
            first(&r, "write").is_some_and(|w| w.role == "master" && w.reason == "greedy-pin");
        report.check(
            format!("POST {} writes", alice.label),
            s,
            &r,
            s == 200 && pinned,
            "the master, and the set is pinned",
        );

        println!("\n== 4. the next request carries the pin cookie (15 s): the master again");
        let (s, r) = alice.list("alice").await;
        let ok = on_master(&r) && r.notes.contains(&"hello from alice".to_string());
        report.check(
            format!("GET  {} lists", alice.label),
            s,
            &r,
            s == 200 && ok,
            "the master (pinned by cookie), sees her note",
        );

        println!("\n== 5. another user is still served by the (stale) replica");
        let (s, r) = bob.list("alice").await;
        let ok = on_replica(&r) && r.notes.is_empty();
        report.check(
            format!("GET  {} lists alice's", bob.label),
            s,
            &r,
            s == 200 && ok,
            "a replica (stale for alice's note: fine for bob)",
        );

        println!(
            "\n== 6. alice on a device without the cookie: her LSN keeps her off stale replicas"
        );
        let (s, r) = alice_phone.list("alice").await;
        let ok = first(&r, "read")
            .is_some_and(|x| x.role == "master" && x.reason == "not-caught-up")
            && r.notes.contains(&"hello from alice".to_string());
        report.check(
            format!("GET  {} lists", alice_phone.label),
            s,
            &r,
            s == 200 && ok,
            "the master (not-caught-up), sees her note",
        );

        println!("\n== 7. replay resumed; once a replica caught up it serves alice again");
        control.resume(1).await;
        control.resume(2).await;
        caught_up(cluster.primary_lsn().await).await;
        let (s, r) = alice_phone.list("alice").await;
        let ok = on_replica(&r) && r.notes.contains(&"hello from alice".to_string());
        report.check(
            format!("GET  {} lists", alice_phone.label),
            s,
            &r,
            s == 200 && ok,
            "a caught-up replica, sees her note",
        );

        println!("\n== 8. strict mode: an unpinned write is refused before any I/O");
        let strict_client = Client::new(strict, "carol", true, "carol on the strict service");
        let (s, r) = strict_client.add("should not be written").await;
        let ok = s == 500 && r.error.as_deref().is_some_and(|e| e.contains("not pinned"));
        report.check(
            format!("POST {}", strict_client.label),
            s,
            &r,
            ok,
            "HTTP 500 from the app's error handler, nothing written",
        );
        report
    }

    /// Waits `up_to` for `cond`.
    pub async fn eventually(up_to: Duration, mut cond: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + up_to;
        while !cond() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A pindb config over the dev cluster in `fixture`'s schema, with a fast monitor, a fixed
/// cookie secret shared by the demo's service instances, and the given router mode.
pub fn demo_config(
    fixture: &pindb_testkit::Fixture,
    mode: pindb_core::RouterMode,
) -> pindb_core::Config {
    let mut config = fixture.config(mode, &[1, 2]);
    config.monitor.interval_ms = 50;
    config.cookie_secret = Some("pindb-demo-secret-that-is-long-enough-for-hmac".to_owned());
    config
}

/// Whether every replica of `router` has replayed `lsn`, as its monitor last saw.
pub fn replicas_reached(router: &pindb_core::Router, lsn: pindb_core::Lsn) -> bool {
    router
        .databases()
        .iter()
        .filter(|d| matches!(d.membership, pindb_core::Membership::Replica { .. }))
        .all(|d| {
            router
                .replica_status(&d.alias)
                .ok()
                .flatten()
                .is_some_and(|s| s.replay_lsn >= lsn)
        })
}

/// The application's error type: every failure becomes a 500 with a JSON body that says what
/// happened. The message is made by the service (a pindb refusal is told apart from a
/// database error there, with its adapter's `routing_error`).
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

/// Serves the two services, runs the scenario, prints the summary, cleans up.
pub async fn run_demo(
    title: &str,
    fixture: pindb_testkit::Fixture,
    greedy_router: pindb_core::Router,
    greedy_app: axum::Router,
    strict_app: axum::Router,
) -> std::process::ExitCode {
    let mut fixture = fixture;
    let (greedy_url, strict_url) = (serve(greedy_app).await, serve(strict_app).await);
    println!("{title}: greedy service {greedy_url}, strict service {strict_url}\n");
    let report = scenario::run(
        &greedy_url,
        &strict_url,
        &fixture.cluster,
        &mut fixture.control,
        |lsn| {
            let router = greedy_router.clone();
            async move {
                scenario::eventually(Duration::from_secs(10), || replicas_reached(&router, lsn))
                    .await
            }
        },
    )
    .await;
    let ok = report.summary();
    fixture.finish().await;
    if ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
