//! The stale-read hunt over a shared positions store: two application instances on one store,
//! users who write a numbered row on one instance and read their newest on the other, in
//! closed loops, counted per phase while a test breaks the store.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pindb_core::{Config, DatabaseSettings, Router, RouterMode, Store};
use pindb_testkit::Fixture;

use crate::{Adapter, Outcome};

/// What the users saw in one phase.
#[derive(Debug, Default)]
pub struct Counts {
    /// Reads served.
    pub reads: AtomicUsize,
    /// Reads that missed the user's own newest row.
    pub stale: AtomicUsize,
    /// Writes or reads that failed.
    pub failed: AtomicUsize,
    /// Reads a replica served.
    pub from_replica: AtomicUsize,
}

impl Counts {
    /// The share of reads the replicas served.
    pub fn share(&self) -> f64 {
        self.from_replica.load(Ordering::Relaxed) as f64
            / self.reads.load(Ordering::Relaxed).max(1) as f64
    }

    /// One line for the test's summary.
    pub fn report(&self, name: &str) -> String {
        format!(
            "{name}: {} reads, {} stale, {} failed, replica share {:.2}",
            self.reads.load(Ordering::Relaxed),
            self.stale.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.share()
        )
    }
}

/// The phase the users count into now.
#[derive(Debug, Default)]
pub struct Phases(Mutex<Arc<Counts>>);

impl Phases {
    /// Starts a phase: the users count into it from now on.
    pub fn next(&self) -> Arc<Counts> {
        let counts = Arc::new(Counts::default());
        *self.0.lock().unwrap() = Arc::clone(&counts);
        counts
    }

    fn now(&self) -> Arc<Counts> {
        Arc::clone(&self.0.lock().unwrap())
    }
}

/// An application instance on the fixture's primary and both standbys, greedy, sharing
/// `store`. A standby paused less than 4 s stays in rotation: only the positions keep keyed
/// reads off it (`ttl` must outlive that lag).
pub async fn instance<A: Adapter>(w: &Fixture, store: Arc<dyn Store>, ttl: Duration) -> A {
    let c = &w.cluster;
    let mut config = Config::single_set(&c.primary_url, Vec::<String>::new());
    config.sets.insert(
        "default".to_owned(),
        vec![
            DatabaseSettings::from_url(c.replica_url(1)),
            DatabaseSettings::from_url(c.replica_url(2)),
        ],
    );
    config.router = RouterMode::Greedy;
    config.monitor.interval_ms = 20;
    config.monitor.check_timeout_ms = 300;
    config.monitor.max_lag_ms = 4_000;
    config.monitor.max_lag_bytes = u64::MAX;
    config.stickiness.ttl_seconds = ttl.as_secs();
    let router = Router::builder(config)
        .store(store)
        .build()
        .expect("a router");
    let db = A::from_router(router).await;
    pindb_testkit::monitor_started(db.router()).await;
    db
}

/// User `id` writes row `n` into `table` (`author`, `n`) on `db`, under its key.
pub async fn write_row<A: Adapter>(db: &A, table: &str, id: i32, n: i32) -> Outcome {
    let sql = format!(
        "INSERT INTO {table} (author, n) VALUES ({id}, {n}) \
         RETURNING current_setting('port')::int AS port"
    );
    let consistency = db.router().consistency();
    let key = format!("user{id}");
    consistency
        .scope_with_key(Some(&key), db.port_of_sql(&sql))
        .await
}

/// User `id` reads, under its key, its newest row's `n` and the port of the server that read
/// it, packed as `n * 100_000 + port`.
pub async fn read_newest<A: Adapter>(db: &A, table: &str, id: i32) -> Outcome {
    let sql = format!(
        "SELECT (coalesce((SELECT max(n) FROM {table} WHERE author = {id}), 0) * 100000 \
         + current_setting('port')::int)::int AS port"
    );
    let consistency = db.router().consistency();
    let key = format!("user{id}");
    consistency
        .scope_with_key(Some(&key), db.port_of_sql(&sql))
        .await
}

/// User `id` in a closed loop until `stop`: writes its next row on one instance, reads its
/// newest on the other (they swap every round), and counts into the phase of the moment;
/// `primary` is the master's port.
pub async fn keyed_user<A: Adapter>(
    id: i32,
    instances: &[A; 2],
    table: &str,
    primary: i32,
    phases: &Phases,
    stop: &AtomicBool,
) {
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let counts = phases.now();
        let (writer, reader) = (&instances[n as usize % 2], &instances[(n as usize + 1) % 2]);
        if write_row(writer, table, id, n).await.is_err() {
            counts.failed.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        match read_newest(reader, table, id).await {
            Ok(packed) => {
                counts.reads.fetch_add(1, Ordering::Relaxed);
                let stale = packed / 100_000 != n;
                counts
                    .stale
                    .fetch_add(usize::from(stale), Ordering::Relaxed);
                let replica = packed % 100_000 != primary;
                counts
                    .from_replica
                    .fetch_add(usize::from(replica), Ordering::Relaxed);
            }
            Err(_) => {
                counts.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
