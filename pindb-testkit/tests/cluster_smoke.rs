#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
//! The harness works: a row written on the primary reaches both replicas; with replay paused
//! on replica 1 it is missing there (although received) but present on replica 2; after
//! resume it arrives.

use pindb_testkit::Cluster;

async fn count(client: &tokio_postgres::Client, table: &str) -> i64 {
    client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn replication_and_replay_pause_are_real() {
    let cluster = Cluster::from_env();
    let mut control = cluster.exclusive().await;
    let schema = cluster.fresh_schema().await;
    let table = format!("{}.smoke", schema.name);

    let primary = cluster.primary().await;
    assert!(!primary
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get::<_, bool>(0));
    primary
        .batch_execute(&format!(
            "CREATE TABLE {table} (id int); INSERT INTO {table} VALUES (1)"
        ))
        .await
        .unwrap();
    let first = cluster.primary_lsn().await;
    for n in [1, 2] {
        cluster.wait_for_replay(n, first).await;
        let replica = cluster.replica(n).await;
        assert!(replica
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .unwrap()
            .get::<_, bool>(0));
        assert_eq!(
            count(&replica, &table).await,
            1,
            "replica {n} has the first row"
        );
    }

    control.pause(1).await;
    primary
        .batch_execute(&format!("INSERT INTO {table} VALUES (2)"))
        .await
        .unwrap();
    let second = cluster.primary_lsn().await;
    assert!(second > first);
    cluster.wait_for_replay(2, second).await;
    cluster.wait_for_receive(1, second).await;
    assert_eq!(
        count(&cluster.replica(2).await, &table).await,
        2,
        "replica 2 keeps replaying"
    );
    assert_eq!(
        count(&cluster.replica(1).await, &table).await,
        1,
        "paused replica 1 is behind"
    );

    control.resume(1).await;
    cluster.wait_for_replay(1, second).await;
    assert_eq!(
        count(&cluster.replica(1).await, &table).await,
        2,
        "replica 1 caught up"
    );

    drop(control);
    schema.drop().await;
}

#[tokio::test]
async fn dropping_control_resumes_paused_replicas() {
    let cluster = Cluster::from_env();
    {
        let mut control = cluster.exclusive().await;
        control.pause(2).await;
    }
    let state: String = cluster
        .replica(2)
        .await
        .query_one("SELECT pg_get_wal_replay_pause_state()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "not paused");
}
