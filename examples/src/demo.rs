//! The demo's set-up and run: its pindb config, waiting for replicas, and serving both
//! services while the scenario drives them.

use std::time::Duration;

use crate::scenario;
use crate::service::serve;

/// A pindb config over the dev cluster in `fixture`'s schema, with a fast monitor, a fixed
/// cookie secret shared by the demo's service instances, and the given router mode.
pub fn demo_config(
    fixture: &pindb_testkit::Fixture,
    mode: pindb_core::RouterMode,
) -> pindb_core::Config {
    let mut config = fixture.config(mode, &[1, 2]);
    config.monitor.interval_ms = 50;
    config.web.cookie_secret = Some("pindb-demo-secret-that-is-long-enough-for-hmac".to_owned());
    config
}

/// Whether every replica of `router` has replayed `lsn`, as its monitor last saw.
pub fn replicas_reached(router: &pindb_core::Router, lsn: pindb_core::Lsn) -> bool {
    router
        .topology()
        .databases()
        .iter()
        .filter(|d| {
            matches!(
                d.membership,
                pindb_core::adapter::Membership::Replica { .. }
            )
        })
        .all(|d| {
            router
                .topology()
                .replica_status(&d.alias)
                .ok()
                .flatten()
                .is_some_and(|s| s.replay_lsn >= lsn)
        })
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
