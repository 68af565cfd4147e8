//! [`Gate`]: an advisory lock a test holds on the primary, so a write waits at a point the
//! test chooses, surely in flight (sent, unanswered, uncommitted), for as long as the test
//! needs, instead of a server sleep raced against a timer.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::Cluster;

/// An advisory lock held on a session of the test's own: a write that takes it
/// ([`Gate::lock`]) stays in flight until [`Gate::open`] (or the gate is dropped, which
/// closes its session).
#[derive(Debug)]
pub struct Gate {
    client: Client,
    pid: i32,
    key: String,
}

impl Gate {
    /// Takes the lock named `key` (a test's schema name keeps concurrent tests apart).
    pub async fn close(cluster: &Cluster, key: &str) -> Gate {
        let client = cluster.primary().await;
        client
            .execute("SELECT pg_advisory_lock(hashtext($1))", &[&key])
            .await
            .expect("the gate's lock");
        let pid = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .expect("the gate's session")
            .get(0);
        Gate {
            client,
            pid,
            key: key.to_owned(),
        }
    }

    /// What a statement calls to wait for the gate (inside its transaction).
    pub fn lock(&self) -> String {
        format!("pg_advisory_xact_lock(hashtext('{}'))", self.key)
    }

    /// Waits (up to 10 s, then panics) until a write waits for the gate: it is on the
    /// primary, in flight.
    pub async fn until_waited_on(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let waiting: i64 = self
                .client
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
                    &[&self.pid],
                )
                .await
                .expect("who waits for the gate")
                .get(0);
            if waiting > 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no write ever waited for the gate"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Lets the writes waiting for the gate go on.
    pub async fn open(self) {
        let opened: bool = self
            .client
            .query_one("SELECT pg_advisory_unlock(hashtext($1))", &[&self.key])
            .await
            .expect("the gate's unlock")
            .get(0);
        assert!(opened, "the gate was not closed");
    }
}
