#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
//! The tower layer without a database: requests sent straight into the service (axum's
//! `oneshot` style), a handler that reports what its pinning context holds. Secrets, key
//! rotation, token ages, cookie expiry caps.
#![cfg(feature = "tower")]

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{Context as TaskCx, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{COOKIE, SET_COOKIE};
use http::{Request, Response};
use pindb_core::ConsistencyToken;
use pindb_core::{Config, Context, Lsn, Router};
use pindb_core::{PinDbLayer, TOKEN_HEADER};
use tower_layer::Layer;
use tower_service::Service;

const SECRET: &str = "the current secret, 32 bytes or more";
const OLD_SECRET: &str = "the previous secret, 32 bytes or more";

/// Two sets on unreachable addresses: nothing here connects (a refused connection at worst).
fn config(secret: Option<&str>) -> Config {
    let mut config = Config::from_toml_str(
        r#"
        [web]
        pinning_seconds = 15
        [masters.default]
        url = "postgres://app@127.0.0.1:1/app"
        [masters.other]
        url = "postgres://app@127.0.0.1:1/other"
        [sets]
        default = [{ port = 2 }]
        other = [{ port = 2 }]
        "#,
    )
    .unwrap();
    config.web.cookie_secret = secret.map(str::to_owned);
    config
}

/// Pins the sets named in `x-pin`, answers with what its context requires and has pinned.
#[derive(Clone)]
struct Report(Router);

impl Service<Request<()>> for Report {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<String>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut TaskCx<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<()>) -> Self::Future {
        let router = self.0.clone();
        Box::pin(async move {
            if let Some(sets) = req.headers().get("x-pin") {
                for set in sets.to_str().unwrap().split(',') {
                    router.pin(set).unwrap();
                }
            }
            let ctx = Context::current().unwrap();
            let body = format!(
                "required={:?} pinned={:?}",
                ctx.required(),
                pindb_core::get_pinned()
            );
            Ok(Response::new(body))
        })
    }
}

async fn send(layer: &PinDbLayer, router: &Router, req: Request<()>) -> Response<String> {
    let mut svc = layer.layer(Report(router.clone()));
    poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
    svc.call(req).await.unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn a_layer_without_a_secret_is_an_error_unless_a_per_process_key_is_asked_for() {
    let router = Router::new(config(None)).unwrap();
    let err = PinDbLayer::new(router).unwrap_err().to_string();
    assert!(
        err.contains("cookie_secret") && err.contains("ephemeral_cookie_key"),
        "{err}"
    );
    let mut explicit = config(None);
    explicit.web.ephemeral_cookie_key = true;
    assert!(PinDbLayer::new(Router::new(explicit).unwrap()).is_ok());
    let mut disabled = config(None);
    disabled.enabled = false;
    assert!(
        PinDbLayer::new(Router::new(disabled).unwrap()).is_ok(),
        "disabled mode signs nothing"
    );
}

#[tokio::test]
async fn pins_and_tokens_signed_with_a_rotated_secret_are_still_accepted() {
    // Yesterday's instance signed with the old secret.
    let old_router = Router::new(config(Some(OLD_SECRET))).unwrap();
    let old_layer = PinDbLayer::new(old_router.clone()).unwrap();
    let pinned = send(
        &old_layer,
        &old_router,
        Request::builder()
            .header("x-pin", "default")
            .body(())
            .unwrap(),
    )
    .await;
    let cookie = pinned.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let token = ConsistencyToken::new(vec![("default".into(), Lsn(0x1000))])
        .sign(old_router.consistency().cookie_key());

    // Today's instance signs with a new secret and still accepts the old one.
    let mut rotated = config(Some(SECRET));
    rotated.web.cookie_old_secrets = vec![OLD_SECRET.to_owned()];
    let router = Router::new(rotated).unwrap();
    let layer = PinDbLayer::new(router.clone()).unwrap();
    let body = send(
        &layer,
        &router,
        Request::builder()
            .header(COOKIE, &cookie)
            .header(TOKEN_HEADER, &token)
            .body(())
            .unwrap(),
    )
    .await
    .into_body();
    assert!(body.contains("pinned=[\"default\"]"), "{body}");
    assert!(body.contains("Lsn(4096)"), "{body}");

    // Without the old secret both are ignored (never an error).
    let forgetful = Router::new(config(Some(SECRET))).unwrap();
    let layer = PinDbLayer::new(forgetful.clone()).unwrap();
    let body = send(
        &layer,
        &forgetful,
        Request::builder()
            .header(COOKIE, &cookie)
            .header(TOKEN_HEADER, &token)
            .body(())
            .unwrap(),
    )
    .await
    .into_body();
    assert_eq!(body, "required=[] pinned=[]");
}

#[tokio::test]
async fn a_token_older_than_the_position_lifetime_is_ignored_and_echoing_never_renews_it() {
    let router = Router::new(config(Some(SECRET))).unwrap();
    let ttl = router.config().stickiness.ttl_seconds;
    let layer = PinDbLayer::new(router.clone()).unwrap().with_token();
    let aged = |age: u64| {
        let text = format!("default@0/1000~{}", now() - age);
        text.parse::<ConsistencyToken>()
            .unwrap()
            .sign(router.consistency().cookie_key())
    };

    // Past `ttl_seconds` and the clock-skew allowance (60 s): ignored.
    let stale = send(
        &layer,
        &router,
        Request::builder()
            .header(TOKEN_HEADER, aged(ttl + 62))
            .body(())
            .unwrap(),
    )
    .await
    .into_body();
    assert_eq!(
        stale, "required=[] pinned=[]",
        "an expired token is ignored"
    );
    // A token of an earlier pindb has no issue time: dated on arrival, so it expires too.
    let unaged = "default@0/1000"
        .parse::<ConsistencyToken>()
        .unwrap()
        .sign(router.consistency().cookie_key());
    let before = now();
    let dated = send(
        &layer,
        &router,
        Request::builder()
            .header(TOKEN_HEADER, unaged)
            .header("x-pin", "other")
            .body(())
            .unwrap(),
    )
    .await;
    assert!(dated.body().contains("Lsn(4096)"), "{}", dated.body());
    let back = dated.headers()[TOKEN_HEADER].to_str().unwrap();
    let back = ConsistencyToken::verify(back, router.consistency().cookie_key()).unwrap();
    assert!(back.issued_at("default").unwrap() >= before);

    // A writing request echoes the token back: the carried position keeps its issue time.
    let issued = now() - 10;
    let fresh = format!("default@0/1000~{issued}")
        .parse::<ConsistencyToken>()
        .unwrap()
        .sign(router.consistency().cookie_key());
    let echoed = send(
        &layer,
        &router,
        Request::builder()
            .header(TOKEN_HEADER, fresh)
            .header("x-pin", "other")
            .body(())
            .unwrap(),
    )
    .await;
    assert!(echoed.body().contains("Lsn(4096)"), "{}", echoed.body());
    let back = echoed.headers()[TOKEN_HEADER].to_str().unwrap();
    let back = ConsistencyToken::verify(back, router.consistency().cookie_key()).unwrap();
    assert_eq!(back.issued_at("default"), Some(issued));
}

#[tokio::test]
async fn a_signed_cookie_with_an_absurd_expiry_is_cut_back_to_pinning_seconds() {
    let router = Router::new(config(Some(SECRET))).unwrap();
    let layer = PinDbLayer::new(router.clone()).unwrap();
    // A cookie we would have signed, but pinning for ten years.
    let mut jar = cookie::CookieJar::new();
    jar.signed_mut(router.consistency().cookie_key())
        .add(cookie::Cookie::new(
            router.config().web.cookie_name.clone(),
            format!("default:{}", now() + 315_360_000),
        ));
    let value = jar
        .get(&router.config().web.cookie_name)
        .unwrap()
        .to_string();
    let response = send(
        &layer,
        &router,
        Request::builder()
            .header(COOKIE, value)
            .header("x-pin", "other")
            .body(())
            .unwrap(),
    )
    .await;
    assert!(response.body().contains("\"default\""), "still pinned now");
    let set_cookie = response.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    let mut jar = cookie::CookieJar::new();
    jar.add_original(cookie::Cookie::parse(set_cookie).unwrap().into_owned());
    let verified = jar
        .signed(router.consistency().cookie_key())
        .get(&router.config().web.cookie_name)
        .unwrap();
    let until: u64 = verified
        .value()
        .split('|')
        .find_map(|e| e.strip_prefix("default:"))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        until <= now() + router.config().web.pinning_seconds,
        "the carried pin was cut back: {until} vs now {}",
        now()
    );
}
