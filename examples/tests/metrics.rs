#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
//! Replication you can watch: the demo's `/metrics`, scraped over HTTP while replica 1's
//! replay is paused on the dev cluster (`scripts/cluster up`), shows its lag growing and the
//! replica stalled, and counts routing decisions.

use std::time::Duration;

use pindb_core::RouterMode;
use pindb_diesel::bb8::PinDb;
use pindb_examples::{metrics_routes, serve, SCHEMA_SQL};
use pindb_testkit::Fixture;

/// The value of the sample `name{...alias="<alias>"...}` in Prometheus text.
fn sample(text: &str, name: &str, alias: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| l.contains(&format!("alias=\"{alias}\"")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

async fn scrape(url: &str) -> String {
    reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_lag_of_a_paused_replica_grows_on_the_metrics_endpoint() {
    let mut f = Fixture::new(SCHEMA_SQL).await;
    let url = serve(axum::Router::new().merge(metrics_routes())).await;
    let mut config = f.config(RouterMode::Greedy, &[1, 2]);
    config.monitor.interval_ms = 50;
    config.monitor.stalled_after_ms = 300;
    let db = PinDb::new(config).unwrap();
    db.router().start_monitor().await.unwrap();
    pindb_core::scope(async {
        db.router()
            .db_for_read(&pindb_core::Hint::default())
            .unwrap();
    })
    .await;

    f.control.pause(1).await;
    let primary = f.cluster.primary().await;
    let write = format!(
        "INSERT INTO {}.notes (author, body) VALUES ('m', 'x')",
        f.schema.name
    );
    let mut lags = Vec::new();
    for _ in 0..3 {
        primary.batch_execute(&write).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let text = scrape(&url).await;
        lags.push(sample(&text, "pindb_replica_lag_seconds", "default-1").unwrap_or(0.0));
    }
    let text = scrape(&url).await;
    f.control.resume(1).await;

    assert!(
        lags[0] > 0.0 && lags[2] > lags[0],
        "lag of default-1 over time: {lags:?}"
    );
    assert_eq!(
        sample(&text, "pindb_replica_stalled", "default-1"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "pindb_replica_stalled", "default-2"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "pindb_replica_up", "default-1"),
        Some(1.0),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with("pindb_routes_total{")
            && l.contains("op=\"read\"")
            && l.contains("reason=\"replica\"")),
        "{text}"
    );
    assert!(
        text.contains("pindb_master_wal_position_bytes{set=\"default\"}"),
        "{text}"
    );
    f.finish().await;
}

/// A logical replica whose subscription is disabled (`ALTER SUBSCRIPTION .. DISABLE`, the
/// easily forgotten pause): its lag grows on `/metrics`, it is reported stalled, and its slot
/// on the primary inactive while the primary keeps WAL for it.
#[tokio::test(flavor = "multi_thread")]
async fn the_lag_of_a_disabled_subscription_grows_on_the_metrics_endpoint() {
    // The replay lock too: the other test of this file pauses replica 1, whose gauges share
    // these labels.
    let f = Fixture::new(SCHEMA_SQL).await;
    let mut control = f.cluster.subscription_exclusive().await;
    let url = serve(axum::Router::new().merge(metrics_routes())).await;
    let mut config = f.config(RouterMode::Greedy, &[1, 2]);
    config
        .sets
        .get_mut("default")
        .unwrap()
        .push(pindb_core::DatabaseSettings {
            kind: Some(pindb_core::ReplicaKind::Logical),
            ..pindb_core::DatabaseSettings::from_url(&f.cluster.logical_url)
        });
    config.monitor.interval_ms = 50;
    config.monitor.stalled_after_ms = 300;
    let db = PinDb::new(config).unwrap();
    db.router().start_monitor().await.unwrap();

    control.disable().await;
    let primary = f.cluster.primary().await;
    let mut lags = Vec::new();
    for _ in 0..3 {
        primary
            .batch_execute("INSERT INTO logical.notes (author, body) VALUES ('metrics', 'x')")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let text = scrape(&url).await;
        lags.push(sample(&text, "pindb_replica_lag_seconds", "default-3").unwrap_or(0.0));
    }
    let slot = |text: &str, name: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{name}{{")) && l.contains("slot=\"pindb_sub\""))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    // Slots are reported every 20 monitor rounds: on a loaded machine that can be late, so
    // the slot's state is awaited (bounded), not read once.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let text = loop {
        let text = scrape(&url).await;
        let settled = sample(&text, "pindb_replica_stalled", "default-3") == Some(1.0)
            && slot(&text, "pindb_replication_slot_active") == Some(0.0);
        if settled || std::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    control.enable().await;

    assert!(
        lags[0] > 0.0 && lags[2] > lags[0],
        "lag of the logical replica default-3 over time: {lags:?}"
    );
    assert_eq!(
        sample(&text, "pindb_replica_stalled", "default-3"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        slot(&text, "pindb_replication_slot_active"),
        Some(0.0),
        "{text}"
    );
    assert!(
        slot(&text, "pindb_replication_slot_retained_bytes").is_some_and(|b| b > 0.0),
        "{text}"
    );
    f.finish().await;
}

/// Every metric the Grafana dashboard queries is one pindb-core records (a renamed metric
/// would leave an empty panel).
#[test]
fn the_dashboard_only_queries_metrics_pindb_records() {
    fn sources(dir: &std::path::Path, out: &mut String) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut code = String::new();
    sources(&root.join("../pindb-core/src"), &mut code);
    let queried = dashboard_metrics();
    assert!(queried.len() >= 8, "{queried:?}");
    for name in queried {
        assert!(
            code.contains(&format!("\"{name}\"")),
            "{name} is not recorded by pindb-core"
        );
    }
}

/// The metrics the Grafana dashboard queries.
fn dashboard_metrics() -> Vec<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dashboard = std::fs::read_to_string(root.join("grafana/pindb.json")).unwrap();
    let mut queried: Vec<String> = dashboard
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("pindb_"))
        .map(str::to_owned)
        .collect();
    queried.sort();
    queried.dedup();
    queried
}

/// On a healthy system, every panel has data from the start: once the monitor has run, every
/// metric the dashboard queries is on `/metrics` (counters at 0), except the routing
/// decisions, which appear with the first one.
#[tokio::test(flavor = "multi_thread")]
async fn every_dashboard_metric_is_on_the_metrics_endpoint_from_start_up() {
    let f = Fixture::new(SCHEMA_SQL).await;
    let url = serve(axum::Router::new().merge(metrics_routes())).await;
    let mut config = f.config(RouterMode::Greedy, &[1, 2]);
    config.monitor.interval_ms = 50;
    let db = PinDb::new(config).unwrap();
    db.router().start_monitor().await.unwrap();
    let mut text = String::new();
    for _ in 0..100 {
        text = scrape(&url).await;
        if text.contains("pindb_replication_slot_active{") && text.contains("pindb_replica_up{") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let missing: Vec<String> = dashboard_metrics()
        .into_iter()
        .filter(|name| name != "pindb_routes_total")
        .filter(|name| {
            !text
                .lines()
                .any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "no data for {missing:?} on a healthy system:\n{text}"
    );
    f.finish().await;
}
