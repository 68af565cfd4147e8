#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
//! The mode for users' own test suites, which have one PostgreSQL: `emulate_replicas = 1`
//! makes each set's replica its master opened read-only, so reads take the replica path and a
//! statement that writes where production would send it to a replica fails the same way.
//! Run here against the dev cluster's primary alone, through every adapter.

use pindb_core::{scope, Config, Role, RouterMode};
use pindb_scenarios::{Adapter, DieselAsync, DieselSync, Failure, SeaOrm, World};

/// 1 when the session that runs it is read-only: the replica path.
const READ_ONLY: &str = "SELECT (current_setting('transaction_read_only') = 'on')::int AS port";

fn emulated(w: &World, mode: RouterMode) -> Config {
    let mut config = Config::single_set(w.schema.url(&w.cluster.primary_url), Vec::<String>::new());
    config.router = mode;
    config.emulate_replicas = 1;
    config
}

async fn one_postgres_behaves_like_a_primary_with_a_replica<A: Adapter>() {
    let w = World::new().await;
    let setup = format!(
        "CREATE FUNCTION {s}.bump() RETURNS int LANGUAGE plpgsql AS $$
             BEGIN INSERT INTO {s}.items DEFAULT VALUES; RETURN 1; END $$",
        s = w.schema.name
    );
    w.primary.batch_execute(&setup).await.unwrap();

    let strict = A::open(emulated(&w, RouterMode::Strict)).await;
    let route = strict.router().explain_sql("SELECT 1").unwrap();
    assert_eq!(
        (route.role, route.alias),
        (Role::Replica, "default-1"),
        "{}",
        A::NAME
    );
    scope(async {
        assert_eq!(
            strict.port_of_sql(READ_ONLY).await,
            Ok(1),
            "{}: a read-only session",
            A::NAME
        );
        // A function that writes, called as a read: refused as in production.
        let call = format!("SELECT {}.bump() AS port", w.schema.name);
        assert_eq!(
            strict.port_of_sql(&call).await,
            Err(Failure::UnpinnedWrite),
            "{}",
            A::NAME
        );
        strict.router().pin("default").unwrap();
        assert_eq!(
            strict.port_of_sql(READ_ONLY).await,
            Ok(0),
            "{}: pinned: the master",
            A::NAME
        );
        assert_eq!(strict.port_of_sql(&call).await, Ok(1), "{}", A::NAME);
    })
    .await;
    assert_eq!(w.rows().await, 1, "{}: only the pinned call wrote", A::NAME);

    // Read-your-writes with no monitor running: the emulated replica is known to have the
    // key's write (it is the master), so the key's next read takes the replica path.
    let mut config = emulated(&w, RouterMode::Greedy);
    config.stickiness.max_wait_ms = 1_000;
    let keyed = A::open(config).await;
    let consistency = keyed.router().consistency().clone();
    consistency
        .scope_with_key(Some("u1"), async { keyed.write().await.unwrap() })
        .await;
    let after = consistency
        .scope_with_key(Some("u1"), async { keyed.port_of_sql(READ_ONLY).await })
        .await;
    assert_eq!(
        after,
        Ok(1),
        "{}: the replica path, not the master",
        A::NAME
    );

    // The monitor accepts the emulated replica (not in recovery) and keeps it in rotation.
    strict.router().start_monitor().await.unwrap();
    pindb_testkit::wait_until(
        "the monitor has seen default-1",
        std::time::Duration::from_secs(10),
        || {
            let status = strict
                .router()
                .topology()
                .replica_status("default-1")
                .unwrap()
                .unwrap();
            status.up && status.replay_lsn.0 > 0
        },
    )
    .await;
    w.finish().await;
}

#[tokio::test]
async fn diesel_async_bb8() {
    one_postgres_behaves_like_a_primary_with_a_replica::<DieselAsync>().await
}

#[tokio::test]
async fn sync_diesel_r2d2() {
    one_postgres_behaves_like_a_primary_with_a_replica::<DieselSync>().await
}

#[tokio::test]
async fn seaorm() {
    one_postgres_behaves_like_a_primary_with_a_replica::<SeaOrm>().await
}
