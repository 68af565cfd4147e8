//! The stale-read hunt over a shared positions store: two application instances on one store,
//! users who write a numbered row on one instance and read their newest on the other, in
//! closed loops, counted per phase while a test breaks the store.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use pindb_core::{
    Config, DatabaseSettings, Lsn, Positions, Router, RouterMode, Store, StoreFuture,
};
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

/// Failed store commands (loads and saves), counted over every store [`StoreFailures::wrap`]
/// wrapped. A failed command makes the store (on a Redis Cluster, the key's bucket) untrusted
/// for `ttl`, keyed reads going to the master meanwhile: a phase whose replica share is low
/// with a failure within `ttl` before or during it says nothing about the routing.
#[derive(Debug, Clone, Default)]
pub struct StoreFailures(Arc<AtomicUsize>);

impl StoreFailures {
    /// `store`, its failed commands counted here.
    pub fn wrap(&self, store: impl Store) -> Arc<dyn Store> {
        Arc::new(Counted {
            store,
            failures: self.clone(),
        })
    }

    /// How many commands failed so far.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    fn add<T, E>(&self, result: &Result<T, E>) {
        self.0
            .fetch_add(usize::from(result.is_err()), Ordering::Relaxed);
    }
}

/// A store whose failed commands [`StoreFailures`] counts; otherwise the store itself.
struct Counted<S> {
    store: S,
    failures: StoreFailures,
}

impl<S: Store> Store for Counted<S> {
    fn load<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Positions> {
        Box::pin(async move {
            let loaded = self.store.load(key).await;
            self.failures.add(&loaded);
            loaded
        })
    }

    fn save<'a>(
        &'a self,
        key: &'a str,
        positions: &'a [(String, Lsn)],
        ttl: Duration,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let saved = self.store.save(key, positions, ttl).await;
            self.failures.add(&saved);
            saved
        })
    }

    fn name(&self) -> &'static str {
        self.store.name()
    }

    fn lost_until(&self, key: &str, ttl: Duration) -> Option<SystemTime> {
        self.store.lost_until(key, ttl)
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
    // The hunts pause replay, never a standby's host: a check that times out is a loaded
    // machine, whose standby must stay in rotation. As long as `ttl` (6 s) allows: it must
    // outlive max_lag_ms plus two intervals, a check timeout and a second.
    config.monitor.check_timeout_ms = 900;
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
