#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
//! Interleaved A/B, the tower layer: a trivial handler behind `PinDbLayer` (a pinning context,
//! the pin cookie, a stickiness key) vs. the same handler alone, one request at a time with
//! `oneshot`; then the same around a handler that runs one query (`SELECT 1` on replica 1 of
//! the dev cluster, one shared connection). `cargo bench -p pindb-core --bench ab_tower`.

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};
use pindb_core::{Config, PinDbLayer, Router};
use pindb_testkit::ab::{interleave, report};
use tower::{Layer, Service, ServiceExt};

const BATCH: u32 = 2_000;
/// Requests per round with a query (each is a round trip to PostgreSQL).
const QUERY_BATCH: u32 = 200;

async fn handler(_: Request<()>) -> Result<Response<&'static str>, Infallible> {
    Ok(Response::new("ok"))
}

async fn run<S>(service: &S) -> Duration
where
    S: Service<Request<()>, Response = Response<&'static str>, Error = Infallible> + Clone,
{
    run_n(service, BATCH).await
}

async fn run_n<S>(service: &S, n: u32) -> Duration
where
    S: Service<Request<()>, Response = Response<&'static str>, Error = Infallible> + Clone,
{
    let start = Instant::now();
    for _ in 0..n {
        let request = Request::builder()
            .uri("/notes")
            .header("x-user", "u1")
            .body(())
            .unwrap();
        black_box(service.clone().oneshot(request).await.unwrap());
    }
    start.elapsed()
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut config =
            Config::single_set("postgres://m@127.0.0.1:1/a", ["postgres://r@127.0.0.1:2/a"]);
        config.web.ephemeral_cookie_key = true;
        let router = Router::new(config).unwrap();
        let layer = PinDbLayer::new(router).unwrap().with_key(|parts| {
            parts
                .headers
                .get("x-user")?
                .to_str()
                .ok()
                .map(str::to_owned)
        });
        let plain = tower::service_fn(handler);
        let routed = layer.layer(tower::service_fn(handler));
        {
            let mut svc = routed.clone();
            let req = Request::builder()
                .uri("/notes")
                .header("x-user", "u1")
                .body(())
                .unwrap();
            let fut = svc.call(req);
            eprintln!(
                "routed future state: {} bytes",
                std::mem::size_of_val(&*fut)
            );
        }
        run(&plain).await;
        run(&routed).await;
        let (p, r) = interleave(BATCH, || run(&plain), || run(&routed)).await;
        report("tower layer, trivial handler", &p, &r);

        // What a request usually does: one round trip to a database.
        let client = Arc::new(
            pindb_testkit::connect(&pindb_testkit::Cluster::from_env().replica_urls[0]).await,
        );
        let querying = |client: Arc<tokio_postgres::Client>| {
            tower::service_fn(move |_: Request<()>| {
                let client = Arc::clone(&client);
                async move {
                    black_box(client.query_one("SELECT 1", &[]).await.unwrap());
                    Ok::<_, Infallible>(Response::new("ok"))
                }
            })
        };
        let plain = querying(Arc::clone(&client));
        let routed = layer.layer(querying(Arc::clone(&client)));
        let (p, r) = interleave(
            QUERY_BATCH,
            || run_n(&plain, QUERY_BATCH),
            || run_n(&routed, QUERY_BATCH),
        )
        .await;
        report("tower layer, handler with one query", &p, &r);
    });
}
