#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
//! The production paths, through every adapter: both standbys behind one round-robin reader
//! endpoint (the testkit's proxy, as a Kubernetes Service or HAProxy would balance them),
//! declared with `servers`, and every server through the dev cluster's PgBouncer in session
//! mode. A user reads their own writes while replay pauses on one standby then the other, and
//! the replicas keep serving reads. Without `servers` the endpoint is refused at start-up
//! (pindb-diesel's `poolers` test); the routing scenario table runs through both too
//! (`scenarios.rs`).

use pindb_core::{Config, DatabaseSettings};
use pindb_scenarios::{
    Adapter, DieselAsync, DieselAsyncMariaDb, DieselSync, DieselSyncMariaDb, SeaOrm, SeaOrmMariaDb,
};
use pindb_testkit::{address, with_address, Cluster, Fixture, MariaDbCluster, Proxy};

/// How the adapter reaches the servers.
#[derive(Clone, Copy)]
enum Via<'a> {
    Direct,
    /// Both standbys behind this endpoint, declared with `servers`.
    Endpoint(&'a Proxy),
    /// Every server through PgBouncer in session mode.
    PgBouncer,
}

/// One set: the primary and the standbys, reached `via`.
fn config(c: &Cluster, via: Via<'_>) -> Config {
    let mut config = Config::single_set(&c.primary_url, Vec::<String>::new());
    let replicas = match via {
        Via::PgBouncer => {
            config = Config::single_set(c.pooled_url(0, true), Vec::<String>::new());
            vec![
                DatabaseSettings::from_url(c.pooled_url(1, true)),
                DatabaseSettings::from_url(c.pooled_url(2, true)),
            ]
        }
        Via::Endpoint(endpoint) => {
            let (r1, r2) = (address(c.replica_url(1)), address(c.replica_url(2)));
            let url = c
                .replica_url(1)
                .replace(&r1, &format!("127.0.0.1:{}", endpoint.port()));
            vec![DatabaseSettings {
                servers: vec![r1, r2],
                ..DatabaseSettings::from_url(url)
            }]
        }
        Via::Direct => vec![
            DatabaseSettings::from_url(c.replica_url(1)),
            DatabaseSettings::from_url(c.replica_url(2)),
        ],
    };
    config.sets.insert("default".to_owned(), replicas);
    config.monitor.interval_ms = 20;
    config.stickiness.max_wait_ms = 20;
    config
}

/// 300 keyed write-then-read rounds of one user through `A`, replay paused on one standby
/// then the other every 30 rounds (through PgBouncer as [`pindb_testkit::keyed_rounds`] does,
/// both at times; directly and through the endpoint as
/// [`pindb_testkit::keyed_rounds_in_turns`] does, one at a time): asserts none read stale and
/// returns how many reads the standbys served.
async fn rounds<A: Adapter>(w: &mut Fixture, via: Via<'_>) -> usize {
    // A table per run: each starts from round 0.
    let table = match via {
        Via::Direct => format!("{}.direct", w.schema.name),
        _ => format!("{}.through", w.schema.name),
    };
    let mut config = config(&w.cluster, via);
    if !matches!(via, Via::PgBouncer) {
        // Long enough for the standby that replays to catch up with a write on a loaded
        // machine, so the share follows the pause schedule, not the load; in turns one always
        // replays, so it is never spent in full.
        config.stickiness.max_wait_ms = 1_000;
    }
    let db = A::open(config).await;
    pindb_testkit::monitor_started(db.router()).await;
    if let Via::Endpoint(_) = via {
        let aliases: Vec<&str> = db
            .router()
            .topology()
            .databases()
            .iter()
            .map(|d| d.alias.as_str())
            .collect();
        assert_eq!(aliases, ["default", "default-1.1", "default-1.2"]);
    }
    let primary = pindb_scenarios::port_of(&w.cluster.primary().await).await;
    let write = async |body: &str| {
        let n: i32 = body[1..].parse().unwrap();
        let sql = format!(
            "INSERT INTO {table} (n) VALUES ({n}) RETURNING current_setting('port')::int AS port"
        );
        db.port_of_sql(&sql).await.expect("the write");
    };
    // The newest row and the server that read it, packed into the one integer column.
    let read = async || {
        let sql = format!(
            "SELECT (coalesce((SELECT max(n) FROM {table}), -1) * 100000 \
             + current_setting('port')::int)::int AS port"
        );
        let packed = db.port_of_sql(&sql).await.expect("the read");
        (
            format!("w{}", packed.div_euclid(100_000)),
            packed.rem_euclid(100_000) != primary,
        )
    };
    let served = match via {
        Via::PgBouncer => {
            pindb_testkit::keyed_rounds(db.router(), &mut w.control, 300, write, read).await
        }
        _ => {
            pindb_testkit::keyed_rounds_in_turns(db.router(), &mut w.control, 300, write, read)
                .await
        }
    };
    drop(db);
    // The next run starts from the same replay state.
    w.control.resume(1).await;
    w.control.resume(2).await;
    w.cluster.sync_replicas().await;
    served
}

async fn no_stale_read_through_an_endpoint<A: Adapter>() {
    let mut w = Fixture::new(
        "CREATE TABLE {schema}.through (n int NOT NULL); \
         CREATE TABLE {schema}.direct (n int NOT NULL);",
    )
    .await;
    let (r1, r2) = (
        address(w.cluster.replica_url(1)),
        address(w.cluster.replica_url(2)),
    );
    let endpoint = Proxy::round_robin(&[&r1, &r2]).await;
    let direct = rounds::<A>(&mut w, Via::Direct).await;
    let through = rounds::<A>(&mut w, Via::Endpoint(&endpoint)).await;
    // The target: at least 80 % of the share the standbys get configured directly,
    // which in turns is every read (measured: 299 or 300 each). A floor, not a ratio of two
    // runs that each depend on the load. A server behind the endpoint that never served would
    // cost half (measured: 142).
    assert!(
        through * 10 >= 300 * 8,
        "{}: the standbys served {through} of 300 reads through the endpoint, {direct} \
         configured directly",
        A::NAME
    );
    eprintln!(
        "{}: the standbys served {through} of 300 reads through the endpoint, {direct} of 300 \
         configured directly ({:.2})",
        A::NAME,
        through as f64 / direct.max(1) as f64
    );
    w.finish().await;
}

#[tokio::test]
async fn no_stale_read_through_an_endpoint_diesel_async() {
    no_stale_read_through_an_endpoint::<DieselAsync>().await;
}

#[tokio::test]
async fn no_stale_read_through_an_endpoint_sync_diesel() {
    no_stale_read_through_an_endpoint::<DieselSync>().await;
}

#[tokio::test]
async fn no_stale_read_through_an_endpoint_seaorm() {
    no_stale_read_through_an_endpoint::<SeaOrm>().await;
}

/// Keyed rounds through PgBouncer in session mode (tables named with their schema: PgBouncer
/// refuses the `search_path` startup option).
async fn no_stale_read_through_pgbouncer<A: Adapter>() {
    let mut w = Fixture::new("CREATE TABLE {schema}.through (n int NOT NULL);").await;
    let served = rounds::<A>(&mut w, Via::PgBouncer).await;
    eprintln!(
        "{}: the standbys served {served} of 300 reads through PgBouncer",
        A::NAME
    );
    w.finish().await;
}

#[tokio::test]
async fn no_stale_read_through_pgbouncer_diesel_async() {
    no_stale_read_through_pgbouncer::<DieselAsync>().await;
}

#[tokio::test]
async fn no_stale_read_through_pgbouncer_sync_diesel() {
    no_stale_read_through_pgbouncer::<DieselSync>().await;
}

#[tokio::test]
async fn no_stale_read_through_pgbouncer_seaorm() {
    no_stale_read_through_pgbouncer::<SeaOrm>().await;
}

/// A declared server the endpoint never reaches (gone from behind it, or mistyped): that
/// replica is down and says why, the other serves.
async fn a_server_missing_from_behind_the_endpoint_is_named<A: Adapter>() {
    let c = Cluster::from_env();
    let r1 = address(c.replica_url(1));
    let endpoint = Proxy::round_robin(&[&r1]).await;
    let mut config = config(&c, Via::Endpoint(&endpoint));
    config.sets.get_mut("default").unwrap()[0].servers[1] = "127.0.0.1:1".to_owned();
    config.sets.get_mut("default").unwrap()[0].connect_timeout_ms = Some(1_000);
    // Room for a few tries on a loaded machine: the message names what they reached.
    config.monitor.check_timeout_ms = 2_000;
    let port: i32 = r1.rsplit(':').next().unwrap().parse().unwrap();
    let sql = "SELECT current_setting('port')::int AS port";
    let db = A::open(config).await;
    is_named(&db, sql, port, &r1, "127.0.0.1:1").await;
}

/// On `db`, whose `default-1.2` is declared behind the endpoint but never reached: the monitor
/// finds it down and `default-1.1` up, routed reads never fail, an explicit checkout of it
/// fails saying why (diesel; SeaORM's plain pool only that it timed out), and its status names
/// what was `reached` instead of the `missing` server. `sql` reads the number of the server
/// that answers, `id` default-1.1's.
async fn is_named<A: Adapter>(db: &A, sql: &str, id: i32, reached: &str, missing: &str) {
    let _ = db.router().start_monitor().await;
    pindb_testkit::wait_until(
        "the monitor finds default-1.1 up and default-1.2 down",
        std::time::Duration::from_secs(10),
        || {
            let status = |alias| {
                db.router()
                    .topology()
                    .replica_status(alias)
                    .unwrap()
                    .unwrap()
            };
            status("default-1.1").up && !status("default-1.2").up
        },
    )
    .await;
    assert_eq!(db.port_of_sql_on("default-1.1", sql).await, Ok(id));
    // Routed reads never fail: default-1.1 or the master serves them.
    for _ in 0..20 {
        let served = pindb_core::scope(db.read()).await;
        assert!(served.is_ok(), "{}: {served:?}", A::NAME);
    }
    let explicit = format!(
        "{:?}",
        db.port_of_sql_on("default-1.2", sql).await.unwrap_err()
    );
    assert!(
        A::NAME == "SeaORM" || explicit.contains(&format!("never {missing}")),
        "{}: {explicit}",
        A::NAME
    );
    let status = db.router().status().await;
    let down = status.iter().find(|s| s.alias == "default-1.2").unwrap();
    let e = down.error.clone().unwrap_or_default();
    assert!(
        !down.up
            && e.contains(&format!("reached {reached}"))
            && e.contains(&format!("never {missing}")),
        "{}: {down:?}",
        A::NAME
    );
}

#[tokio::test]
async fn a_server_missing_from_behind_the_endpoint_is_named_diesel_async() {
    a_server_missing_from_behind_the_endpoint_is_named::<DieselAsync>().await;
}

#[tokio::test]
async fn a_server_missing_from_behind_the_endpoint_is_named_sync_diesel() {
    a_server_missing_from_behind_the_endpoint_is_named::<DieselSync>().await;
}

#[tokio::test]
async fn a_server_missing_from_behind_the_endpoint_is_named_seaorm() {
    a_server_missing_from_behind_the_endpoint_is_named::<SeaOrm>().await;
}

/// The same on MariaDB, whose servers behind an endpoint are named by `server_id`: one
/// declared that the endpoint never reaches (`99`) is down and says what was reached instead.
async fn a_mariadb_server_missing_from_behind_the_endpoint_is_named<A: Adapter>() {
    let c = MariaDbCluster::from_env();
    let apply = c.clone();
    let _apply = tokio::task::spawn_blocking(move || apply.shared())
        .await
        .unwrap();
    let (_two, mut replica) = c.reader_endpoint().await;
    let id: i32 = replica.servers[0].parse().unwrap();
    // Only replica 1 behind this endpoint.
    let r1 = address(c.replica_url(1));
    let endpoint = Proxy::round_robin(&[&r1]).await;
    let through = format!("127.0.0.1:{}", endpoint.port());
    replica.url = Some(with_address(c.replica_url(1), &through));
    replica.servers[1] = "99".to_owned();
    replica.connect_timeout_ms = Some(1_000);
    let mut config = Config::single_set(c.master_url(), Vec::<String>::new());
    config.sets.insert("default".to_owned(), vec![replica]);
    config.monitor.interval_ms = 20;
    config.monitor.check_timeout_ms = 2_000;
    let db = A::open(config).await;
    let sql = "SELECT CAST(@@server_id AS SIGNED) AS port";
    is_named(&db, sql, id, &format!("server_id {id}"), "server_id 99").await;
}

#[tokio::test]
async fn a_mariadb_server_missing_from_behind_the_endpoint_is_named_diesel_async() {
    a_mariadb_server_missing_from_behind_the_endpoint_is_named::<DieselAsyncMariaDb>().await;
}

#[tokio::test]
async fn a_mariadb_server_missing_from_behind_the_endpoint_is_named_sync_diesel() {
    a_mariadb_server_missing_from_behind_the_endpoint_is_named::<DieselSyncMariaDb>().await;
}

#[tokio::test]
async fn a_mariadb_server_missing_from_behind_the_endpoint_is_named_seaorm() {
    a_mariadb_server_missing_from_behind_the_endpoint_is_named::<SeaOrmMariaDb>().await;
}

/// pindb's diagnosis of a healthy server behind an endpoint (what a failed checkout asks) is
/// kept for a second like any other: asked again at once, it does not search the endpoint
/// again (up to 64 connections each time).
#[tokio::test]
async fn a_healthy_servers_diagnosis_is_reused_for_a_second() {
    let c = Cluster::from_env();
    let r1 = address(c.replica_url(1));
    let r2 = address(c.replica_url(2));
    let endpoint = Proxy::round_robin(&[&r1, &r2]).await;
    let config = config(&c, Via::Endpoint(&endpoint));
    let router = pindb_core::Router::new(config).expect("a router");
    let index = router
        .topology()
        .databases()
        .iter()
        .position(|d| d.alias == "default-1.1")
        .expect("the first server's replica");
    assert!(
        router.diagnose(index).await.is_none(),
        "the server is healthy"
    );
    let searched = endpoint.accepted();
    assert!(router.diagnose(index).await.is_none());
    assert_eq!(
        endpoint.accepted(),
        searched,
        "no new search within the second"
    );
}
