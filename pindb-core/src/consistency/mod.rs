//! Read-your-writes across contexts, and all the I/O it takes: remember the master's WAL
//! position after a context writes, per *stickiness key* (user, session, job), and only read
//! that set from replicas that have replayed it.
//!
//! [`Consistency`] (owned by the [`Router`](crate::Router), reached with
//! [`Router::consistency`](crate::Router::consistency)) holds pindb's own connections for master
//! positions and direct replica checks, the [`Store`], the signing keys and the counters.
//! Files: `keyed.rs` (a keyed context's start and end steps, and recording when it is
//! dropped), `token.rs` ([`ConsistencyToken`]: positions carried in a job payload or header).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use crate::config::{Config, StickinessSettings};
use crate::context::{Context, PinOrigin};
use crate::error::PinDbError;
use crate::lsn::Lsn;
use crate::probe::{Asked, Probe};
use crate::store::{Positions, Store};
use crate::topology::Topology;

mod keyed;
mod token;

use keyed::Pending;
#[cfg(feature = "tower")]
pub(crate) use keyed::RecordOnDrop;
pub use token::ConsistencyToken;

/// Now, in Unix seconds.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Read-your-writes across contexts: the store, pindb's own connections for positions, the
/// signing keys. One per router.
///
/// ```no_run
/// # async fn demo(router: pindb_core::Router) {
/// let consistency = router.consistency();
/// consistency.scope_with_key(Some("user:42"), async {
///     // reads and writes through an adapter
/// }).await;
/// println!("{} consistency round trips so far", consistency.round_trips());
/// # }
/// ```
pub struct Consistency {
    topology: Arc<Topology>,
    settings: StickinessSettings,
    /// Small connections of pindb's own, parallel to `topology.databases()`: master
    /// positions, direct replica checks.
    probes: Vec<tokio::sync::Mutex<Probe>>,
    /// Their check timeout (a runtime replica's probe is made again for each new host).
    probe_timeout: Duration,
    store: Arc<dyn Store>,
    /// When a store failure was last logged (ms since `started`), to log once per interval.
    store_logged_at: AtomicU64,
    /// When a master that could not tell its position was last logged: once per outage,
    /// not once per failed write.
    position_logged_at: AtomicU64,
    /// When a position left out for a write outside the set's GTID domain was last logged.
    outside_logged_at: AtomicU64,
    started: Instant,
    /// Database round trips made for consistency (write positions, direct replica checks).
    round_trips: AtomicU64,
    /// Those of them made to a master (write positions, positions of suspicious tokens).
    master_round_trips: AtomicU64,
    /// Keyed contexts dropped mid-flight whose positions are being recorded: the key's next
    /// context on this instance waits for them (see `RecordOnDrop`).
    pending: Mutex<HashMap<String, Arc<Pending>>>,
    /// Entries in `pending`: a keyed context start skips the lock when it is 0.
    pending_len: AtomicUsize,
    /// Verify pin cookies and consistency tokens; the first signs.
    cookie_keys: Vec<cookie::Key>,
    /// Replicas are their masters (`emulate_replicas`): their position is the master's.
    emulated: bool,
}

impl std::fmt::Debug for Consistency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consistency")
            .field("store", &self.store.name())
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Consistency {
    pub(crate) fn new(topology: Arc<Topology>, config: &Config, store: Arc<dyn Store>) -> Self {
        let timeout = Duration::from_millis(config.monitor.check_timeout_ms);
        let web = &config.web;
        Consistency {
            probes: topology
                .databases()
                .iter()
                .map(|db| tokio::sync::Mutex::new(Probe::new(db, timeout)))
                .collect(),
            probe_timeout: timeout,
            topology,
            settings: config.stickiness.clone(),
            store,
            store_logged_at: AtomicU64::new(u64::MAX),
            position_logged_at: AtomicU64::new(u64::MAX),
            outside_logged_at: AtomicU64::new(u64::MAX),
            started: Instant::now(),
            round_trips: AtomicU64::new(0),
            master_round_trips: AtomicU64::new(0),
            pending: Mutex::new(HashMap::new()),
            pending_len: AtomicUsize::new(0),
            emulated: config.emulate_replicas > 0,
            cookie_keys: std::iter::once(match &web.cookie_secret {
                Some(secret) => cookie::Key::derive_from(secret.as_bytes()),
                None => cookie::Key::generate(),
            })
            .chain(
                web.cookie_old_secrets
                    .iter()
                    .map(|s| cookie::Key::derive_from(s.as_bytes())),
            )
            .collect(),
        }
    }

    /// The store positions are kept in (set with
    /// [`RouterBuilder::store`](crate::RouterBuilder::store); in memory by default).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The key that signs pin cookies and consistency tokens (from `web.cookie_secret`).
    pub fn cookie_key(&self) -> &cookie::Key {
        &self.cookie_keys[0]
    }

    /// Every key a pin cookie or token may be signed with: `web.cookie_secret`'s, then
    /// `web.cookie_old_secrets`' (rotation).
    pub fn cookie_keys(&self) -> &[cookie::Key] {
        &self.cookie_keys
    }

    /// Database round trips pindb has made for consistency so far: one per write position
    /// recorded, one per direct replica check (a keyed context waiting up to `max_wait_ms`
    /// for a replica to catch up with its last write). Other reads make none (the monitor's
    /// polling is separate and does not grow with traffic).
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    /// [`Consistency::round_trips`] made to a master: one per write position recorded (and
    /// per check of a token far ahead of every replica). Reads never add one.
    pub fn master_round_trips(&self) -> u64 {
        self.master_round_trips.load(Ordering::Relaxed)
    }

    fn count_round_trip(&self, to_master: bool) {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let to = if to_master {
            self.master_round_trips.fetch_add(1, Ordering::Relaxed);
            "master"
        } else {
            "replica"
        };
        metrics::counter!("pindb_consistency_round_trips_total", "to" => to).increment(1);
    }

    fn ttl(&self) -> Duration {
        Duration::from_secs(self.settings.ttl_seconds)
    }

    /// The master's position after the writes (`pg_current_wal_insert_lsn()`, MariaDB's
    /// `@@gtid_binlog_pos`) of `set`, over pindb's own connection, with the fingerprint of
    /// what it has outside the set's GTID domain (0 for PostgreSQL), which the set's
    /// [`SetDomain`](crate::domain::SetDomain) records too.
    pub(crate) async fn master_position(&self, set: &str) -> Result<(Lsn, u64), String> {
        let s = self
            .topology
            .set_named(set)
            .ok_or_else(|| format!("unknown set `{set}`"))?;
        let master = s
            .master()
            .ok_or_else(|| format!("set `{set}` has no primary right now"))?;
        self.count_round_trip(true);
        let reading = Probe::shared_reading(
            &self.probes[master],
            self.topology.backend(),
            Asked::Written,
            self.probe_timeout,
        )
        .await?;
        s.gtid.master_read(&reading)?;
        let lsn = reading
            .position
            .ok_or_else(|| "the master returned no position".to_owned())?;
        Ok((lsn, reading.outside.fingerprint()))
    }

    /// Asks each usable replica of `set` for its replay position and records it. `None` when
    /// the set has no replica.
    pub(crate) async fn check_replicas(&self, set: &str) -> Option<()> {
        let s = self.topology.set_named(set)?;
        if s.replicas.is_empty() {
            return None;
        }
        for (r, &index) in s.replicas.iter().enumerate() {
            // A logical replica's position is on the master, from the monitor.
            if !s.health[r].status().up || self.topology.databases()[index].is_logical() {
                // A runtime replica that left: no idle connection to its old host.
                if let (Some(slot), Ok(mut probe)) =
                    (self.topology.slot(index), self.probes[index].try_lock())
                {
                    if probe.generation != slot.generation() {
                        probe.disconnect();
                    }
                }
                continue;
            }
            self.count_round_trip(false);
            let asked = match self.emulated {
                true => Asked::Master,
                false => Asked::Applied,
            };
            let (backend, limit) = (self.topology.backend(), self.probe_timeout);
            // A MariaDB replica's position, in its set's domain.
            let applied = || async {
                let reading =
                    Probe::shared_reading(&self.probes[index], backend, asked, limit).await?;
                Ok::<_, String>(s.gtid.replica_read(reading).position)
            };
            let Some(slot) = self.topology.slot(index) else {
                if let Ok(Some(lsn)) = applied().await {
                    s.health[r].raise_replay(lsn);
                }
                continue;
            };
            // A runtime replica: its probe follows the slot's host (never back to an older
            // one), and what it says is recorded only if the slot still has that host
            // (atomically with a change, see `Slot::if_current`).
            let (generation, Some(db)) = slot.now() else {
                continue;
            };
            {
                let mut probe = self.probes[index].lock().await;
                if probe.generation < generation {
                    *probe = Probe::new(&db, self.probe_timeout);
                    probe.generation = generation;
                }
            }
            // Shared with concurrent callers, as for any replica. The probe may have moved on
            // to a newer host meanwhile: `if_current` then drops what it says.
            if let Ok(Some(lsn)) = applied().await {
                slot.if_current(generation, || s.health[r].raise_replay(lsn));
            }
        }
        Some(())
    }

    /// Master positions of the sets `ctx` pinned itself, past its writes, and `Lsn::MAX` for
    /// one whose master could not tell its position (it went away right after the write) or
    /// a write of which may still commit ([`WriteFlight`](crate::adapter::WriteFlight)):
    /// "beyond every replica", so the key reads that set from its master until the position
    /// expires instead of from a replica that may lack the write.
    pub(crate) async fn write_positions_or_unknown(&self, ctx: &Context) -> Positions {
        let (mut positions, _) = self.positions_and_unsure(ctx).await;
        for set in ctx.pinned(|o| o == PinOrigin::New) {
            if !positions.iter().any(|(s, _)| *s == set) {
                positions.push((set, Lsn(u64::MAX)));
            }
        }
        positions
    }

    /// Master positions of the sets `ctx` pinned itself, past its writes (writes still in
    /// flight are waited for, briefly), and the pinned sets left out because a write of
    /// theirs may still commit. A master that cannot be asked is logged and skipped: its
    /// write already committed. The monitor is told to check those sets' replicas again soon
    /// (`monitor.recheck_after_write_ms`).
    async fn positions_and_unsure(&self, ctx: &Context) -> (Positions, Vec<String>) {
        let unsure = match ctx.has_unsure_write() {
            // Rare (a write dropped mid-flight): boxed, so every keyed context's end stays
            // small and allocates nothing for it.
            true => Box::pin(ctx.flights_landed(self.settle_wait())).await,
            false => Vec::new(),
        };
        if !unsure.is_empty() {
            metrics::counter!("pindb_positions_unknown_total").increment(1);
            tracing::info!(target: "pindb", sets = ?unsure, "pindb: a write of this context was dropped in flight and may still commit; its set's position is recorded as unknown (the key reads it from the master for ttl_seconds)");
        }
        let positions = self.master_positions(ctx, &unsure).await;
        for (set, _) in &positions {
            if let Some(entry) = self.topology.set_named(set) {
                entry
                    .written
                    .iter()
                    .for_each(tokio::sync::Notify::notify_one);
            }
        }
        (positions, unsure)
    }

    /// How long a keyed context's end waits for writes still in flight, and its next start
    /// for the recordings of contexts dropped before it: bounded by the store's timeout.
    fn settle_wait(&self) -> Duration {
        Duration::from_millis(self.settings.redis_timeout_ms)
            .saturating_mul(3)
            .max(Duration::from_secs(1))
    }

    /// Learned with the writes where the adapter could (no round trip), else read from each
    /// master now; not for the sets in `unsure`.
    async fn master_positions(&self, ctx: &Context, unsure: &[String]) -> Positions {
        let mut positions = Vec::new();
        for set in ctx.pinned(|o| o == PinOrigin::New) {
            if unsure.contains(&set) {
                continue;
            }
            if let Some(lsn) = ctx.lock().learned_position(&set) {
                positions.push((set, lsn));
                continue;
            }
            match self.master_position(&set).await {
                Ok((lsn, outside)) => {
                    // The same outside the set's GTID domain as before the context's first
                    // write (or nothing there at all, for a set pinned by hand): its writes
                    // are all in the domain, where `lsn` covers them. Otherwise something was
                    // written outside it meanwhile, maybe its own write, which no position in
                    // the domain covers: left out, as unknown.
                    if ctx.lock().outside_before(&set).unwrap_or(0) == outside {
                        positions.push((set, lsn));
                        continue;
                    }
                    metrics::counter!("pindb_positions_unknown_total").increment(1);
                    if self.once_per_10s(&self.outside_logged_at) {
                        tracing::info!(target: "pindb", %set, "pindb: the master has written outside the set's GTID domain since this context's first write (or, for a set pinned by hand, has anything there at all), which its position in the domain does not cover; recorded as unknown (the key reads the set from the master for ttl_seconds)");
                    }
                }
                Err(e) => {
                    metrics::counter!("pindb_position_failures_total").increment(1);
                    if !self.once_per_10s(&self.position_logged_at) {
                        continue;
                    }
                    tracing::warn!(target: "pindb", %set, error = %e, "pindb: could not read the master's WAL position after a write; the key's reads of this set go to the master until the position expires");
                }
            }
        }
        positions
    }

    fn store_failed(&self, store: &'static str, op: &'static str, e: &PinDbError) {
        metrics::counter!("pindb_store_failures_total", "store" => store, "op" => op).increment(1);
        if self.should_log_store_failure() {
            tracing::warn!(target: "pindb", store, op, error = %e, "pindb: stickiness store unavailable; keyed reads go to the master");
        }
    }

    /// True at most once per 10 s: store outages are logged, not once per request.
    fn should_log_store_failure(&self) -> bool {
        self.once_per_10s(&self.store_logged_at)
    }

    /// True at most once per 10 s per `last` (ms since `started`; `MAX`: never).
    fn once_per_10s(&self, last: &AtomicU64) -> bool {
        let now = self.started.elapsed().as_millis() as u64;
        let before = last.load(Ordering::Relaxed);
        (before == u64::MAX || now.saturating_sub(before) >= 10_000)
            && last
                .compare_exchange(before, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    fn pending_records(&self) -> MutexGuard<'_, HashMap<String, Arc<Pending>>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The recordings in flight for `key` (contexts dropped mid-flight), if any. Lock-free
    /// when there are none anywhere, the usual case.
    fn pending_for(&self, key: &str) -> Option<Arc<Pending>> {
        if self.pending_len.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.pending_records().get(key).cloned()
    }

    /// Counts one more recording in flight for `key`.
    fn start_pending(&self, key: &str) -> Arc<Pending> {
        let mut records = self.pending_records();
        let pending = Arc::clone(records.entry(key.to_owned()).or_default());
        pending.start();
        self.pending_len.store(records.len(), Ordering::Release);
        pending
    }

    /// One recording for `key` is done; the entry goes with its last one.
    fn finish_pending(&self, key: &str, pending: &Arc<Pending>) {
        let mut records = self.pending_records();
        if pending.finish() && records.get(key).is_some_and(|p| Arc::ptr_eq(p, pending)) {
            records.remove(key);
        }
        self.pending_len.store(records.len(), Ordering::Release);
    }
}
