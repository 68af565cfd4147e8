//! Against the dev cluster (`scripts/cluster up`).

use super::*;

/// A probe of the server at `url`, reached through a proxy that counts connections.
async fn proxied(url: &str) -> (pindb_testkit::Proxy, tokio::sync::Mutex<Probe>) {
    let (head, rest) = url.rsplit_once('@').unwrap_or_default();
    let (target, path) = rest.split_once('/').unwrap_or_default();
    let proxy = pindb_testkit::Proxy::start(target).await;
    let url = format!("{head}@127.0.0.1:{}/{path}", proxy.port());
    let config = crate::Config::single_set(url.as_str(), Vec::<String>::new());
    let topology = crate::topology::Topology::new(&config).unwrap();
    let probe = Probe::new(&topology.databases()[0], Duration::from_secs(5));
    (proxy, tokio::sync::Mutex::new(probe))
}

/// A caller that gives up while the connection is being set up leaves the attempt
/// running: the next caller gets that connection, none is opened twice.
#[tokio::test]
async fn a_connection_attempt_outlives_a_caller_that_gives_up() {
    let cluster = pindb_testkit::Cluster::from_env();
    let (proxy, probe) = proxied(cluster.replica_url(1)).await;
    let cut = tokio::time::timeout(Duration::from_micros(1), async {
        probe.lock().await.row("SELECT 1").await
    })
    .await;
    assert!(cut.is_err(), "given up before it could connect");
    tokio::time::sleep(Duration::from_millis(300)).await;
    probe.lock().await.row("SELECT 1").await.expect("connected");
    assert_eq!(
        proxy.accepted(),
        1,
        "one connection, set up for the first caller"
    );
}

/// A check that got no answer (the server hangs mid-query) drops its connection, and
/// the connection's task ends within the probe's timeout: tokio-postgres alone would
/// wait for the answer for good, one task and socket per hang.
#[tokio::test(flavor = "current_thread")]
async fn a_connection_dropped_while_its_question_hangs_ends() {
    let cluster = pindb_testkit::Cluster::from_env();
    let (proxy, probe) = proxied(cluster.replica_url(1)).await;
    probe.lock().await.timeout = Duration::from_millis(300);
    probe.lock().await.row("SELECT 1").await.expect("connected");
    let alive = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let before = alive();
    proxy.freeze();
    let hung = probe.lock().await.row("SELECT 1").await;
    assert!(hung.is_err_and(|e| e.contains("no answer")));
    // The proxy's tasks stay (frozen); the connection's task goes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while alive() >= before && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(alive(), before - 1, "the connection's task ended");
}

/// A MariaDB statement whose caller gives up (a 5 ms `max_wait_ms`) finishes on its
/// own: the next caller takes its connection back, none is opened twice.
#[cfg(feature = "mariadb")]
#[tokio::test]
async fn a_mariadb_statement_outlives_callers_that_give_up() {
    let cluster = pindb_testkit::MariaDbCluster::from_env();
    let (proxy, probe) = proxied(cluster.replica_url(1)).await;
    let ask = || {
        Probe::shared_reading(
            &probe,
            Backend::MariaDb,
            Asked::Applied,
            Duration::from_secs(5),
        )
    };
    let mut cut = 0;
    for _ in 0..20 {
        cut += usize::from(
            tokio::time::timeout(Duration::from_micros(200), ask())
                .await
                .is_err(),
        );
    }
    assert!(cut > 0, "no caller gave up: the test shows nothing");
    tokio::time::sleep(Duration::from_millis(300)).await;
    ask().await.expect("answered");
    assert_eq!(proxy.accepted(), 1, "one connection for every caller");
}
