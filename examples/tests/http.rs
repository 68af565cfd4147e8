#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
//! The tower layer over real HTTP: a real axum server on loopback, a real HTTP client, the
//! real cluster.

use std::time::Duration;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Extension, Json};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use pindb_core::RouterMode;
use pindb_core::{PinDbLayer, TOKEN_HEADER};
use pindb_diesel::bb8::PinDb;
use pindb_examples::capture::{self, routes_of};
use pindb_examples::{respond, serve, user_key, AppError, Reply, SCHEMA_SQL};
use pindb_testkit::Fixture;

diesel::table! {
    notes (id) {
        id -> Integer,
        author -> Text,
        body -> Text,
    }
}

async fn read(db: &PinDb) -> Result<Vec<String>, String> {
    notes::table
        .select(notes::body)
        .order(notes::id)
        .load::<String>(&mut db.get())
        .await
        .map_err(|e| e.to_string())
}

async fn write(db: &PinDb) -> Result<Vec<String>, String> {
    diesel::insert_into(notes::table)
        .values((notes::author.eq("t"), notes::body.eq("w")))
        .execute(&mut db.get())
        .await
        .map(|_| Vec::new())
        .map_err(|e| match pindb_diesel::routing_error(&e) {
            Some(r) => format!("pindb refused the statement: {r}"),
            None => e.to_string(),
        })
}

type Answer = Result<Json<Reply>, AppError>;

async fn get_read(State(db): State<PinDb>) -> Answer {
    let (r, routes) = routes_of(read(&db)).await;
    respond(r, routes)
}

async fn post_write(State(db): State<PinDb>) -> Answer {
    let (r, routes) = routes_of(write(&db)).await;
    respond(r, routes)
}

async fn post_write_then_read(State(db): State<PinDb>) -> Answer {
    let (r, routes) = routes_of(async {
        write(&db).await.unwrap();
        read(&db).await
    })
    .await;
    respond(r, routes)
}

/// The write happens in a task spawned with pindb's propagation helper.
async fn post_spawned(State(db): State<PinDb>) -> Answer {
    let child = db.clone();
    let (r, routes) = routes_of(async {
        pindb_core::spawn(async move { write(&child).await })
            .await
            .map_err(|e| e.to_string())??;
        read(&db).await
    })
    .await;
    respond(r, routes)
}

async fn service(f: &Fixture, mode: RouterMode, pinning_seconds: u64) -> (String, PinDb) {
    service_with(f, mode, pinning_seconds, false).await
}

async fn service_with(
    f: &Fixture,
    mode: RouterMode,
    pinning_seconds: u64,
    token: bool,
) -> (String, PinDb) {
    capture::install();
    let mut config = f.config(mode, &[1]);
    config.web.pinning_seconds = pinning_seconds;
    config.web.cookie_secret = Some("a-test-secret-of-more-than-thirty-two-bytes".into());
    let db = PinDb::new(config).unwrap();
    let app = axum::Router::new()
        .route("/read", get(get_read))
        .route("/write", post(post_write))
        .route("/write-then-read", post(post_write_then_read))
        .route("/spawned", post(post_spawned))
        .with_state(db.clone())
        .layer({
            let layer = PinDbLayer::new(db.router().clone())
                .unwrap()
                .with_key(user_key);
            if token {
                layer.with_token()
            } else {
                layer
            }
        });
    (serve(app).await, db)
}

fn read_role(reply: &Reply) -> &str {
    reply
        .routes
        .iter()
        .find(|r| r.op == "read")
        .map(|r| r.role.as_str())
        .unwrap_or("none")
}

async fn fetch(client: &reqwest::Client, url: String) -> Reply {
    let r = client.get(url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test]
async fn the_pin_cookie_round_trips_and_expires() {
    let f = Fixture::new(SCHEMA_SQL).await;
    let (base, _db) = service(&f, RouterMode::Greedy, 2).await;
    let browser = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .unwrap();
    assert_eq!(
        read_role(&fetch(&browser, format!("{base}/read")).await),
        "replica"
    );

    let r = browser.post(format!("{base}/write")).send().await.unwrap();
    let set_cookie = r
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(set_cookie.starts_with("pindb_pinned_set="), "{set_cookie}");
    for attribute in ["HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=2"] {
        assert!(
            set_cookie.contains(attribute),
            "{attribute} missing: {set_cookie}"
        );
    }
    assert!(!set_cookie.contains("Secure"));
    assert!(
        r.headers().get(TOKEN_HEADER).is_none(),
        "no token unless asked for: it would cost a master round trip per write"
    );

    let reply = fetch(&browser, format!("{base}/read")).await;
    assert_eq!(read_role(&reply), "master");
    assert_eq!(reply.routes[0].reason, "pinned");
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_eq!(
        read_role(&fetch(&browser, format!("{base}/read")).await),
        "replica",
        "expired"
    );
    f.finish().await;
}

/// A pin of 8 s, written at 0 s and 4.5 s, read at 9 s: pinned only if the second write
/// restarted it. A pin expires on a whole second, so it lasts more than 7 s: each pause of
/// 4.5 s leaves 2.5 s for the requests around it on a loaded machine, and the read comes after
/// the first pin's end whatever they take.
#[tokio::test]
async fn a_write_under_a_carried_pin_restarts_its_expiry() {
    let f = Fixture::new(SCHEMA_SQL).await;
    let (base, _db) = service(&f, RouterMode::Greedy, 8).await;
    let browser = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .unwrap();
    browser.post(format!("{base}/write")).send().await.unwrap();
    tokio::time::sleep(Duration::from_millis(4500)).await;
    // Still pinned by the cookie; this write must push the pin's expiry 8 s further.
    let r = browser.post(format!("{base}/write")).send().await.unwrap();
    assert!(
        r.headers().get("set-cookie").is_some(),
        "the cookie is refreshed"
    );
    let reply: Reply = r.json().await.unwrap();
    assert_eq!(
        reply.routes[0].reason, "pinned",
        "the second write ran under the carried pin"
    );
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let reply = fetch(&browser, format!("{base}/read")).await;
    assert_eq!(
        read_role(&reply),
        "master",
        "9 s after the first write, 4.5 s after the second"
    );
    f.finish().await;
}

#[tokio::test]
async fn forged_expired_unknown_and_corrupt_cookies_are_ignored() {
    let f = Fixture::new(SCHEMA_SQL).await;
    let (base, db) = service(&f, RouterMode::Greedy, 15).await;
    let plain = reqwest::Client::new();
    let far = 9_999_999_999u64;
    let sign = |value: String| {
        let mut jar = cookie::CookieJar::new();
        jar.signed_mut(db.router().consistency().cookie_key())
            .add(cookie::Cookie::new("pindb_pinned_set", value));
        jar.get("pindb_pinned_set").unwrap().value().to_owned()
    };
    let cases = [
        ("forged (unsigned)", format!("default:{far}")),
        ("corrupt", "%%%;;garbage".to_owned()),
        ("expired", sign("default:1000".into())),
        ("unknown set", sign(format!("nosuchset:{far}"))),
        ("empty", String::new()),
    ];
    for (what, value) in cases {
        let r = plain
            .get(format!("{base}/read"))
            .header("cookie", format!("pindb_pinned_set={value}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{what}");
        let reply: Reply = r.json().await.unwrap();
        assert_eq!(
            read_role(&reply),
            "replica",
            "{what} cookie must be ignored"
        );
    }
    // A genuine one is honoured.
    let r = plain
        .get(format!("{base}/read"))
        .header(
            "cookie",
            format!("pindb_pinned_set={}", sign(format!("default:{far}"))),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(read_role(&r.json::<Reply>().await.unwrap()), "master");
    f.finish().await;
}

#[tokio::test]
async fn strict_refusals_reach_the_apps_error_handler() {
    let f = Fixture::new(SCHEMA_SQL).await;
    let (base, _db) = service(&f, RouterMode::Strict, 15).await;
    let r = reqwest::Client::new()
        .post(format!("{base}/write"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    let reply: Reply = r.json().await.unwrap();
    let error = reply.error.unwrap();
    assert!(
        error.contains("pindb refused") && error.contains("`default`"),
        "{error}"
    );
    assert_eq!(
        f.primary_column("SELECT count(*) FROM {schema}.notes")
            .await,
        ["0"]
    );
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_concurrent_requests_each_have_their_own_context() {
    let mut f = Fixture::new(SCHEMA_SQL).await;
    let (base, _db) = service(&f, RouterMode::Greedy, 15).await;
    f.control.pause(1).await;
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for i in 0..300 {
        let (client, base) = (client.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            let writes = i % 2 == 0;
            let path = if writes { "write-then-read" } else { "read" };
            let req = if writes {
                client.post(format!("{base}/{path}"))
            } else {
                client.get(format!("{base}/{path}"))
            };
            let reply: Reply = req.send().await.unwrap().json().await.unwrap();
            read_role(&reply) == if writes { "master" } else { "replica" }
        }));
    }
    let mut wrong = 0;
    for t in tasks {
        wrong += usize::from(!t.await.unwrap());
    }
    assert_eq!(
        wrong, 0,
        "{wrong} of 300 requests saw another request's pin state"
    );
    f.finish().await;
}

#[tokio::test]
async fn the_context_covers_tasks_spawned_with_the_propagation_helper() {
    let f = Fixture::new(SCHEMA_SQL).await;
    let (base, _db) = service(&f, RouterMode::Greedy, 15).await;
    let r = reqwest::Client::new()
        .post(format!("{base}/spawned"))
        .send()
        .await
        .unwrap();
    let reply: Reply = r.json().await.unwrap();
    assert_eq!(reply.error, None);
    assert_eq!(
        read_role(&reply),
        "master",
        "the child task's write pinned the request: {reply:?}"
    );
    f.finish().await;
}

#[tokio::test]
async fn the_token_header_carries_read_your_writes_to_another_instance() {
    let mut f = Fixture::new(SCHEMA_SQL).await;
    let (writer, _a) = service_with(&f, RouterMode::Greedy, 15, true).await;
    let (reader, _b) = service_with(&f, RouterMode::Greedy, 15, true).await;
    f.control.pause(1).await;
    let client = reqwest::Client::new();
    let r = client.post(format!("{writer}/write")).send().await.unwrap();
    let token = r
        .headers()
        .get(TOKEN_HEADER)
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let with_token: Reply = client
        .get(format!("{reader}/read"))
        .header(TOKEN_HEADER, &token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(read_role(&with_token), "master");
    assert_eq!(with_token.notes, ["w"]);
    let forged: Reply = client
        .get(format!("{reader}/read"))
        .header(TOKEN_HEADER, token.replace('@', "@1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(read_role(&forged), "replica", "an altered token is ignored");
    f.finish().await;
}

/// A writing request that never finishes (its client gives up) or panics after its write;
/// replica 1 paused, positions in a store the test can look into. The `Notify` is signalled
/// when the never-finishing request's write is done.
async fn faulty_service(
    f: &Fixture,
) -> (
    String,
    std::sync::Arc<pindb_core::MemoryStore>,
    std::sync::Arc<tokio::sync::Notify>,
) {
    capture::install();
    let mut config = f.config(RouterMode::Greedy, &[1]);
    config.web.cookie_secret = Some("a-test-secret-of-more-than-thirty-two-bytes".into());
    config.monitor.interval_ms = 20;
    let store = std::sync::Arc::new(pindb_core::MemoryStore::new(100));
    let written = std::sync::Arc::new(tokio::sync::Notify::new());
    let router = pindb_core::Router::builder(config)
        .store(store.clone())
        .build()
        .unwrap();
    let db = PinDb::from_router(router).unwrap();
    db.router().start_monitor().await.unwrap();
    async fn write_then_hang(
        State(db): State<PinDb>,
        Extension(written): Extension<std::sync::Arc<tokio::sync::Notify>>,
    ) -> Answer {
        write(&db).await.unwrap();
        written.notify_one();
        tokio::time::sleep(Duration::from_secs(3600)).await;
        respond(Ok(Vec::new()), Vec::new())
    }
    async fn write_then_panic(State(db): State<PinDb>) -> Answer {
        write(&db).await.unwrap();
        panic!("a handler bug after the commit");
    }
    let app = axum::Router::new()
        .route("/read", get(get_read))
        .route("/write-then-hang", post(write_then_hang))
        .route("/write-then-panic", post(write_then_panic))
        .with_state(db.clone())
        .layer(
            PinDbLayer::new(db.router().clone())
                .unwrap()
                .with_key(user_key),
        )
        .layer(Extension(written.clone()))
        // Outside pindb's layer: the panic unwinds through it.
        .layer(tower_http::catch_panic::CatchPanicLayer::new());
    (serve(app).await, store, written)
}

async fn until_saved(store: &pindb_core::MemoryStore, key: &str) {
    use pindb_core::Store;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while Store::load(store, key).await.unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no write position was recorded for {key}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_client_that_disconnects_after_its_write_still_reads_it_next_time() {
    let mut f = Fixture::new(SCHEMA_SQL).await;
    let (base, store, written) = faulty_service(&f).await;
    f.control.pause(1).await;
    let impatient = reqwest::Client::new();
    let request = impatient
        .post(format!("{base}/write-then-hang"))
        .header("x-user", "alice")
        .send();
    // The client gives up once the write is done (a fixed timeout could cut the write itself
    // on a loaded machine, before anything was pinned): dropping the request disconnects.
    tokio::select! {
        answered = request => panic!("the handler answered: {answered:?}"),
        () = written.notified() => {}
        () = tokio::time::sleep(Duration::from_secs(30)) => panic!("no write within 30 s"),
    }
    drop(impatient);
    until_saved(&store, "user:alice").await;
    let next: Reply = reqwest::Client::new()
        .get(format!("{base}/read"))
        .header("x-user", "alice")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(read_role(&next), "master");
    assert_eq!(next.notes, ["w"], "alice reads her write");
    f.finish().await;
}

#[tokio::test]
async fn a_handler_that_panics_after_its_write_still_leaves_its_position() {
    let mut f = Fixture::new(SCHEMA_SQL).await;
    let (base, store, _) = faulty_service(&f).await;
    f.control.pause(1).await;
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{base}/write-then-panic"))
        .header("x-user", "alice")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500, "the catch-panic layer answered");
    until_saved(&store, "user:alice").await;
    let next: Reply = client
        .get(format!("{base}/read"))
        .header("x-user", "alice")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(read_role(&next), "master");
    assert_eq!(next.notes, ["w"]);
    f.finish().await;
}

#[tokio::test]
async fn a_request_future_dropped_by_a_timeout_still_records_its_position() {
    use tower::ServiceExt;
    let mut f = Fixture::new(SCHEMA_SQL).await;
    let (_, store, _) = faulty_service(&f).await;
    f.control.pause(1).await;
    // The same layer without a server: a timeout drops the service future mid-handler.
    let mut config = f.config(RouterMode::Greedy, &[1]);
    config.web.ephemeral_cookie_key = true;
    let router = pindb_core::Router::builder(config)
        .store(store.clone())
        .build()
        .unwrap();
    let db = PinDb::from_router(router).unwrap();
    let written = std::sync::Arc::new(tokio::sync::Notify::new());
    let signal = written.clone();
    let svc = tower::ServiceBuilder::new()
        .layer(
            PinDbLayer::new(db.router().clone())
                .unwrap()
                .with_key(user_key),
        )
        .service_fn(move |_req: axum::http::Request<()>| {
            let (db, signal) = (db.clone(), signal.clone());
            async move {
                write(&db).await.unwrap();
                signal.notify_one();
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok::<_, std::convert::Infallible>(axum::http::Response::new(()))
            }
        });
    let req = axum::http::Request::builder()
        .header("x-user", "bob")
        .body(())
        .unwrap();
    // Dropped once its write is done, as a timeout drops it then (a fixed one could cut the
    // write itself on a loaded machine, before anything was pinned).
    tokio::select! {
        answered = svc.oneshot(req) => panic!("the service answered: {answered:?}"),
        () = written.notified() => {}
        () = tokio::time::sleep(Duration::from_secs(30)) => panic!("no write within 30 s"),
    }
    until_saved(&store, "user:bob").await;
    f.finish().await;
}
