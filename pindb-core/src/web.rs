//! The tower layer (feature `tower`): one pinning context per request, for axum, tonic or any
//! tower stack.
//!
//! This module owns the HTTP side of consistency: the signed pin cookie (django-pindb's
//! `pindb_pinned_set`, signed), the consistency-token header, and the stickiness key taken
//! from the request by a closure of the application's. It decides nothing about routes.
//!
//! Per request: pins carried in the cookie (valid signature, known set, not expired) are
//! applied; a token in the `x-pindb-token` header is applied; the key's recorded positions are
//! loaded. The handler and the response future run in the context. When the response is ready:
//! sets pinned in this request are added to the cookie with expiry `pinning_seconds` (carried
//! pins keep their original expiry), the key's write positions are recorded, and a fresh
//! signed token is sent back in `x-pindb-token` when the request wrote (opt-in:
//! [`PinDbLayer::with_token`]). Forged, expired, unknown or corrupt cookies and tokens are
//! ignored: never a 4xx/5xx. Disabled mode sets no cookie. A streaming body is polled after the response future ends, outside the context:
//! statements run while streaming are not covered.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskCx, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use cookie::{Cookie, CookieJar, SameSite};
use http::header::{HeaderValue, COOKIE, SET_COOKIE};
use http::{Request, Response};

use crate::consistency::{ConsistencyToken, RecordOnDrop};
use crate::context::{Context, PinOrigin};
use crate::router::Router;

/// The header that carries a signed [`ConsistencyToken`] both ways.
pub const TOKEN_HEADER: &str = "x-pindb-token";

type KeyFn = dyn Fn(&http::request::Parts) -> Option<String> + Send + Sync;

/// The layer. Add it to an axum `Router` with `.layer(PinDbLayer::new(router))`.
///
/// ```
/// use pindb_core::{PinDbLayer, Config, Router};
///
/// let mut config = Config::single_set("postgres://m/app", ["postgres://r/app"]);
/// config.web.cookie_secret = Some("the same 32+ byte secret on every instance".into());
/// let layer = PinDbLayer::new(Router::new(config)?)?
///     // The stickiness key: e.g. a user id your auth middleware put in the extensions.
///     .with_key(|parts| parts.headers.get("x-user-id")?.to_str().ok().map(str::to_owned));
/// # let _ = layer;
/// # Ok::<(), pindb_core::PinDbError>(())
/// ```
#[derive(Clone)]
pub struct PinDbLayer {
    router: Router,
    key: Option<Arc<KeyFn>>,
    /// Send a signed token back from writing requests (costs a master round trip).
    token: bool,
}

impl std::fmt::Debug for PinDbLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinDbLayer")
            .field("keyed", &self.key.is_some())
            .field("token", &self.token)
            .finish()
    }
}

impl PinDbLayer {
    /// A layer that pins per request and carries pins in the signed cookie.
    ///
    /// Without `cookie_secret` this is a config error (unless `ephemeral_cookie_key` says a
    /// per-process key is wanted): cookies and tokens signed with a key that dies with the
    /// process are ignored after every restart and by every other instance, and a user who
    /// just wrote would read stale.
    ///
    /// ```
    /// use pindb_core::{PinDbLayer, Config, Router};
    ///
    /// let config = Config::single_set("postgres://m/app", ["postgres://r/app"]);
    /// let err = PinDbLayer::new(Router::new(config)?).unwrap_err();
    /// assert!(err.to_string().contains("PINDB_COOKIE_SECRET"));
    /// # Ok::<(), pindb_core::PinDbError>(())
    /// ```
    pub fn new(router: Router) -> Result<Self, crate::error::PinDbError> {
        let config = router.config();
        if config.enabled && config.web.cookie_secret.is_none() && !config.web.ephemeral_cookie_key
        {
            return Err(crate::error::PinDbError::config(
                "web.cookie_secret",
                "the pin cookie and consistency tokens need a secret shared by every instance: \
                 set cookie_secret (PINDB_COOKIE_SECRET, at least 32 bytes; generate one with \
                 `openssl rand -base64 48`). For a single-process demo or test, set \
                 ephemeral_cookie_key = true instead: with a per-process key every restart and \
                 every other instance ignores the pins users carry",
            ));
        }
        if config.web.cookie_secret.is_none() {
            tracing::warn!(target: "pindb", "ephemeral_cookie_key: pin cookies and tokens are signed with a per-process key and will not survive a restart or reach another instance");
        }
        Ok(PinDbLayer {
            router,
            key: None,
            token: false,
        })
    }

    /// Sends a signed [`ConsistencyToken`] back in `x-pindb-token` from every request that
    /// wrote, for clients that carry it to other instances (stateless stickiness). Off by
    /// default: it costs one master round trip per writing request without a key.
    pub fn with_token(mut self) -> Self {
        self.token = true;
        self
    }

    /// Adds LSN stickiness: `key` returns the request's stickiness key (user or session id),
    /// or `None` for anonymous requests.
    pub fn with_key(
        mut self,
        key: impl Fn(&http::request::Parts) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.key = Some(Arc::new(key));
        self
    }
}

impl<S> tower_layer::Layer<S> for PinDbLayer {
    type Service = PinDbService<S>;

    fn layer(&self, inner: S) -> PinDbService<S> {
        PinDbService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`PinDbLayer`].
#[derive(Clone, Debug)]
pub struct PinDbService<S> {
    inner: S,
    layer: PinDbLayer,
}

impl<S, ReqB, ResB> tower_service::Service<Request<ReqB>> for PinDbService<S>
where
    S: tower_service::Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    ReqB: Send + 'static,
    ResB: Send + 'static,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ResB>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskCx<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        // The clone that was polled ready handles this request (tower's usual dance).
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let layer = self.layer.clone();
        Box::pin(async move {
            let router = &layer.router;
            let (parts, body) = req.into_parts();
            let ctx = Context::new();
            let carried = read_pin_cookie(router, &parts.headers);
            for (set, _) in &carried {
                ctx.carry_pin(set);
            }
            // Futures with probe I/O inside (tokens, recording positions) are large and taken
            // only by some requests: boxed there, they keep this future's state small (it is
            // allocated and initialized per request: 4 KiB before, most of the layer's cost).
            let incoming = match parts.headers.get(TOKEN_HEADER).map(|v| v.to_str()) {
                Some(Ok(text)) => Box::pin(router.consistency().accept_token(text)).await,
                _ => None,
            };
            if let Some(token) = &incoming {
                token.apply_to(&ctx);
            }
            let key = layer.key.as_ref().and_then(|f| f(&parts));
            if let Some(key) = &key {
                router.consistency().load_positions(&ctx, key).await;
            }
            // Armed before the handler runs: a write that commits and is then cut off (the
            // client went away, a timeout layer, a panic) still records its position.
            let record = key
                .as_deref()
                .map(|key| RecordOnDrop::new(router.consistency(), &ctx, key));
            let request = Request::from_parts(parts, body);
            // `call` itself runs in the context too: a service may do work before its future.
            let result = ctx
                .clone()
                .scope(async move { inner.call(request).await })
                .await;
            match result {
                // Nothing pinned: no cookie, no position, no token to add.
                Ok(response) if !ctx.has_pin(|o| o == PinOrigin::New) => Ok(response),
                Ok(response) => {
                    Ok(Box::pin(finish(&layer, &ctx, record, carried, incoming, response)).await)
                }
                Err(e) => {
                    // Writes may have committed before the failure: the key must still see them.
                    if let Some(record) = record {
                        Box::pin(record.record()).await;
                    }
                    Err(e)
                }
            }
        })
    }
}

async fn finish<B>(
    layer: &PinDbLayer,
    ctx: &Context,
    record: Option<RecordOnDrop<'_>>,
    carried: Vec<(String, u64)>,
    incoming: Option<ConsistencyToken>,
    mut response: Response<B>,
) -> Response<B> {
    let router = &layer.router;
    if !router.config().enabled {
        return response;
    }
    let newly = ctx.pinned(|o| o == PinOrigin::New);
    if !newly.is_empty() {
        let until = now_secs().saturating_add(router.config().web.pinning_seconds);
        let mut entries = carried;
        for set in newly {
            entries.retain(|(s, _)| *s != set);
            entries.push((set, until));
        }
        if let Some(cookie) = pin_cookie(router, &entries) {
            response.headers_mut().append(SET_COOKIE, cookie);
        }
        let positions = match record {
            Some(record) => record.record().await,
            None if layer.token => router.consistency().write_positions_or_unknown(ctx).await,
            None => return response,
        };
        if !layer.token {
            return response;
        }
        // Carried positions keep their issue time: echoing a token never extends it.
        let mut token = incoming.unwrap_or_default();
        token.merge(&positions);
        if !token.positions().is_empty() {
            if let Ok(value) = HeaderValue::from_str(&token.sign(router.consistency().cookie_key()))
            {
                response.headers_mut().insert(TOKEN_HEADER, value);
            }
        }
    }
    response
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Valid, unexpired entries `(set, until_epoch_secs)` of the signed pin cookie; anything
/// else is ignored.
fn read_pin_cookie(router: &Router, headers: &http::HeaderMap) -> Vec<(String, u64)> {
    let name = &router.config().web.cookie_name;
    let mut jar = CookieJar::new();
    for header in headers.get_all(COOKIE) {
        let Ok(text) = header.to_str() else { continue };
        for cookie in Cookie::split_parse(text.to_owned()).flatten() {
            if cookie.name() == name {
                jar.add_original(cookie);
            }
        }
    }
    let Some(verified) = router
        .consistency()
        .cookie_keys()
        .iter()
        .find_map(|key| jar.signed(key).get(name))
    else {
        return Vec::new();
    };
    let now = now_secs();
    // A cookie we signed never pins longer than `pinning_seconds`; a longer one (a changed
    // setting, a leaked key) is cut back rather than trusted for years.
    let longest = now.saturating_add(router.config().web.pinning_seconds);
    verified
        .value()
        .split('|')
        .filter_map(|entry| {
            let (set, until) = entry.rsplit_once(':')?;
            let until: u64 = until.parse().ok()?;
            (until > now && router.topology().is_set(set))
                .then(|| (set.to_owned(), until.min(longest)))
        })
        .collect()
}

fn pin_cookie(router: &Router, entries: &[(String, u64)]) -> Option<HeaderValue> {
    let value: Vec<String> = entries.iter().map(|(s, u)| format!("{s}:{u}")).collect();
    let max_age = entries
        .iter()
        .map(|(_, u)| *u)
        .max()?
        .saturating_sub(now_secs());
    let config = router.config();
    let cookie = Cookie::build((config.web.cookie_name.clone(), value.join("|")))
        .http_only(true)
        .same_site(SameSite::Lax)
        .path("/")
        .secure(config.web.cookie_secure)
        .max_age(cookie::time::Duration::seconds(
            i64::try_from(max_age).unwrap_or(i64::MAX),
        ))
        .build();
    let mut jar = CookieJar::new();
    jar.signed_mut(router.consistency().cookie_key())
        .add(cookie);
    let signed = jar.delta().next()?.to_string();
    HeaderValue::from_str(&signed).ok()
}
