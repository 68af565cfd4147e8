//! Read-your-writes across contexts: remember the master's WAL position after a context
//! writes, per *stickiness key* (user, session, job), and only read that set from replicas
//! that have replayed it.
//!
//! This module owns the [`Store`] trait and its in-memory implementation (Redis: the
//! `redis` feature, [`RedisStore`]), the [`ConsistencyToken`]
//! that carries positions in a job payload, and the context start/end steps
//! ([`Router::scope_with_key`]). Stores fail safe: when one cannot be read, the context reads
//! every set from its master; when one cannot be written, the write itself is already
//! committed, so nothing is lost but the replica offload of the key's next request. Neither
//! ever reaches the caller as an error.
//!
//! Files: `memory.rs` ([`MemoryStore`]), `redis.rs` ([`RedisStore`], feature `redis`),
//! `token.rs` ([`ConsistencyToken`]); this one holds the [`Store`] trait and the context
//! start and end steps.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use crate::context::{Context, PinOrigin};
use crate::error::PinDbError;
use crate::lsn::Lsn;
use crate::router::Router;

mod memory;
#[cfg(feature = "redis")]
mod redis;
mod token;

pub use memory::MemoryStore;
#[cfg(feature = "redis")]
pub use redis::RedisStore;
pub use token::ConsistencyToken;

/// A boxed, `Send` future, as [`Store`] methods return.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, PinDbError>> + Send + 'a>>;

/// Write positions per set, as stored for a key.
pub type Positions = Vec<(String, Lsn)>;

/// Where positions are kept between contexts.
pub trait Store: Send + Sync + 'static {
    /// The positions recorded for `key` (empty when none or expired).
    fn load<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Positions>;

    /// Records positions for `key` for `ttl`; per set, the higher position wins.
    fn save<'a>(
        &'a self,
        key: &'a str,
        positions: &'a [(String, Lsn)],
        ttl: Duration,
    ) -> StoreFuture<'a, ()>;

    /// A short name for logs and metrics labels.
    fn name(&self) -> &'static str;

    /// Until when this store may be missing positions it was given: after a restart or flush
    /// it cannot see, a save that failed, a live position evicted. Positions expire after
    /// `ttl`, so a loss stops mattering `ttl` after it happened. `None`: nothing lost that
    /// could still matter. While it is in the future, keyed contexts read from the masters.
    /// Asked right after a successful [`Store::load`].
    fn lost_until(&self, ttl: Duration) -> Option<SystemTime> {
        let _ = ttl;
        None
    }
}

/// Longer TTLs are cut to this (about 10 years): `Instant` arithmetic must not overflow.
const MAX_TTL: Duration = Duration::from_secs(315_360_000);

/// Merges `new` into `into`, keeping the higher position per set.
fn merge(into: &mut Positions, new: &[(String, Lsn)]) {
    for (set, lsn) in new {
        match into.iter_mut().find(|(s, _)| s == set) {
            Some((_, old)) => *old = (*old).max(*lsn),
            None => into.push((set.clone(), *lsn)),
        }
    }
}

/// How far beyond the best replica a token position may be before the master is asked
/// whether it has written that far.
const PLAUSIBLE_AHEAD: u64 = 64 * 1024 * 1024;

/// Clock difference between instances tolerated in a token's issue times.
const CLOCK_SKEW_SECS: u64 = 60;

/// Now, in Unix seconds.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Router {
    /// Runs `fut` in a fresh pinning context with read-your-writes for `key`: at the start,
    /// the positions recorded for `key` are loaded (the context's reads of those sets go to
    /// replicas that have replayed them, else to the master); at the end, if the context
    /// pinned a set (it wrote, or called `pin`), the master's current WAL insert position is
    /// recorded for `key`. Store failures never reach the caller.
    ///
    /// ```no_run
    /// # async fn demo(router: pindb_core::Router) {
    /// let user_id = "user:42";
    /// router.scope_with_key(Some(user_id), async {
    ///     // handle the request: reads and writes through an adapter
    /// }).await;
    /// # }
    /// ```
    pub async fn scope_with_key<F: Future>(&self, key: Option<&str>, fut: F) -> F::Output {
        let ctx = Context::new();
        if let Some(key) = key {
            self.load_positions(&ctx, key).await;
        }
        // Armed before the work: a write that commits and is then cancelled or panics still
        // leaves its position behind.
        let record = key.map(|key| RecordOnDrop::new(self, &ctx, key));
        let out = ctx.clone().scope(fut).await;
        if let Some(record) = record {
            record.record().await;
        }
        out
    }

    /// The start of a keyed context: loads `key`'s positions into `ctx`, then, when
    /// `max_wait_ms` allows, waits for a replica to reach them. A store failure makes `ctx`
    /// read every set from its master.
    pub async fn load_positions(&self, ctx: &Context, key: &str) {
        // Contexts of this key were dropped and their positions are still being recorded:
        // wait for all of them (bounded), or the key could read without its own write.
        if let Some(pending) = self.pending_for(key) {
            let wait = Duration::from_millis(self.config().stickiness.redis_timeout_ms)
                .saturating_mul(3)
                .max(Duration::from_secs(1));
            if tokio::time::timeout(wait, pending.settled()).await.is_err() {
                // Still not recorded: fail safe, and say why.
                ctx.lock().store_unavailable = true;
                let store = self.store().name();
                let e = PinDbError::StoreUnavailable {
                    store,
                    message: format!(
                        "a dropped context's write position was still being recorded after \
                         {wait:?}; this context reads from the masters"
                    ),
                };
                self.store_failed(store, "pending", &e);
                return;
            }
        }
        let store = self.store();
        match store.load(key).await {
            Ok(positions) => {
                let ttl = Duration::from_secs(self.config().stickiness.ttl_seconds);
                if let Some(until) = store.lost_until(ttl).filter(|u| *u > SystemTime::now()) {
                    // The store may have lost this key's positions: fail safe until they
                    // would have expired.
                    ctx.lock().store_unavailable = true;
                    let left = until.duration_since(SystemTime::now()).unwrap_or_default();
                    let e = PinDbError::StoreUnavailable {
                        store: store.name(),
                        message: format!(
                            "it may have lost positions (restarted, flushed, a failed save or \
                             an eviction); keyed reads go to the masters for {left:.0?} more"
                        ),
                    };
                    self.store_failed(store.name(), "lost", &e);
                    return;
                }
                for (set, lsn) in &positions {
                    ctx.require(set, *lsn);
                }
                self.wait_for_replicas(ctx).await;
            }
            Err(e) => {
                ctx.lock().store_unavailable = true;
                self.store_failed(store.name(), "load", &e);
            }
        }
    }

    /// The end of a keyed context: records the master's position for every set `ctx`
    /// pinned itself. Returns what was recorded.
    pub async fn record_positions(&self, ctx: &Context, key: &str) -> Positions {
        let positions = self.write_positions_or_unknown(ctx).await;
        if positions.is_empty() {
            return positions;
        }
        let store = self.store();
        let ttl = Duration::from_secs(self.config().stickiness.ttl_seconds);
        if let Err(e) = store.save(key, &positions, ttl).await {
            self.store_failed(store.name(), "save", &e);
        }
        positions
    }

    /// A token a client sent back (signed with any of [`Router::cookie_keys`]), with only the
    /// positions that may still matter: of a known set, issued less than `ttl_seconds` ago
    /// (a token echoed forever must not keep its client on the master forever), and not
    /// beyond what the master has written (a restore, another cluster). `None` when the
    /// signature is wrong. A position far ahead of every replica costs one master round trip
    /// to check.
    pub async fn accept_token(&self, signed: &str) -> Option<ConsistencyToken> {
        let mut token = self
            .cookie_keys()
            .iter()
            .find_map(|key| ConsistencyToken::verify(signed, key).ok())?;
        let now = unix_now();
        let ttl = self.config().stickiness.ttl_seconds;
        // A position without an issue time comes from an instance of an earlier pindb (a
        // rolling deploy, a queued job): taken as issued now, so it is re-issued with a time
        // and still expires, instead of being dropped while it may matter.
        token.stamp_unknown(now);
        // Issue times are whole seconds and instances' clocks differ: a position is kept up
        // to the skew allowance past `ttl` (longer is safe, shorter could read stale).
        token.retain(|set, _, issued| {
            self.is_set(set)
                && issued <= now.saturating_add(CLOCK_SKEW_SECS)
                && now.saturating_sub(issued) <= ttl.saturating_add(CLOCK_SKEW_SECS)
        });
        let mut implausible = Vec::new();
        let mut resolved = Vec::new();
        for (set, lsn) in token.positions() {
            let known = self.best_replay(set).unwrap_or(Lsn(0));
            if *lsn == Lsn(u64::MAX) {
                // pindb's own "unknown, beyond every replica" marker (the master could not
                // tell its position when the write's context ended): now that it may answer,
                // its current position covers the write; if not, the marker stays (reads of
                // the set go to the master until it expires).
                if let Ok(master) = self.master_insert_lsn(set).await {
                    resolved.push((set.clone(), master));
                }
            } else if lsn.0 > known.0.saturating_add(PLAUSIBLE_AHEAD) {
                match self.master_insert_lsn(set).await {
                    Ok(master) if *lsn > master => implausible.push(set.clone()),
                    // Cannot check: keep it (at worst, reads of the set go to the master).
                    _ => {}
                }
            }
        }
        for (set, lsn) in resolved {
            token.set_position(&set, lsn);
        }
        if !implausible.is_empty() {
            metrics::counter!("pindb_tokens_rejected_total", "reason" => "beyond-master")
                .increment(1);
            tracing::warn!(target: "pindb", sets = ?implausible, "pindb: a consistency token carried a position beyond the master's; ignored");
            token.retain(|set, _, _| !implausible.iter().any(|s| s == set));
        }
        Some(token)
    }

    /// A token with the current context's write positions (sets it pinned, at the master's
    /// current position, plus positions it was already required to see), for a background
    /// job to import with [`ConsistencyToken::apply_to`].
    pub async fn consistency_token(&self) -> ConsistencyToken {
        match Context::current() {
            Some(ctx) => {
                let mut positions = ctx.required();
                merge(&mut positions, &self.write_positions_or_unknown(&ctx).await);
                ConsistencyToken::new(positions)
            }
            None => ConsistencyToken::default(),
        }
    }

    /// [`Router::write_positions`], plus `Lsn::MAX` for a set whose master could not tell its
    /// position (it went away right after the write): "beyond every replica", so the key
    /// reads that set from its master until the position expires instead of from a replica
    /// that may lack the write.
    pub(crate) async fn write_positions_or_unknown(&self, ctx: &Context) -> Positions {
        let mut positions = self.write_positions(ctx).await;
        for set in ctx.pinned(|o| o == PinOrigin::New) {
            if !positions.iter().any(|(s, _)| *s == set) {
                positions.push((set, Lsn(u64::MAX)));
            }
        }
        positions
    }

    /// Master positions of the sets `ctx` pinned itself. A master that cannot be asked is
    /// logged and skipped: its write already committed.
    pub(crate) async fn write_positions(&self, ctx: &Context) -> Positions {
        let mut positions = Vec::new();
        for set in ctx.pinned(|o| o == PinOrigin::New) {
            match self.master_insert_lsn(&set).await {
                Ok(lsn) => positions.push((set, lsn)),
                Err(e) => {
                    metrics::counter!("pindb_position_failures_total").increment(1);
                    tracing::warn!(target: "pindb", %set, error = %e, "pindb: could not read the master's WAL position after a write; the key's reads of this set go to the master until the position expires");
                }
            }
        }
        positions
    }

    /// With `max_wait_ms > 0`: for each required set that no replica is known to have
    /// reached, asks the replicas directly until one has or the time is up.
    async fn wait_for_replicas(&self, ctx: &Context) {
        let wait = Duration::from_millis(self.config().stickiness.max_wait_ms);
        if wait.is_zero() {
            return;
        }
        let deadline = tokio::time::Instant::now() + wait;
        for (set, lsn) in ctx.required() {
            while self.best_replay(&set).is_some_and(|best| best < lsn) {
                // The deadline bounds the probes too: a replica that does not answer must
                // not stretch the wait to its check timeout.
                match tokio::time::timeout_at(deadline, self.check_replicas(&set)).await {
                    Ok(Some(())) => {}
                    Ok(None) | Err(_) => break,
                }
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
                if self.best_replay(&set).is_some_and(|best| best >= lsn) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }

    fn store_failed(&self, store: &'static str, op: &'static str, e: &PinDbError) {
        metrics::counter!("pindb_store_failures_total", "store" => store, "op" => op).increment(1);
        if self.should_log_store_failure() {
            tracing::warn!(target: "pindb", store, op, error = %e, "pindb: stickiness store unavailable; keyed reads go to the master");
        }
    }
}

/// Recordings of one key's positions in flight (contexts dropped mid-flight).
#[derive(Debug, Default)]
pub(crate) struct Pending {
    count: std::sync::atomic::AtomicUsize,
    settled: tokio::sync::Notify,
}

impl Pending {
    pub(crate) fn start(&self) {
        self.count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// One recording is done; true when it was the last.
    pub(crate) fn finish(&self) -> bool {
        let last = self.count.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1;
        if last {
            self.settled.notify_waiters();
        }
        last
    }

    /// Resolves once no recording is in flight.
    async fn settled(&self) {
        loop {
            let notified = self.settled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count.load(std::sync::atomic::Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Records a keyed context's write positions however the context ends: normally, through
/// [`RecordOnDrop::record`]; dropped (a timeout, a client that went away, `select!`) or
/// unwound by a panic, from `Drop`, which spawns the recording on the current runtime. Drop
/// is the only hook a cancelled future gets, and it cannot wait, hence the spawn: the
/// position lands a moment after the cancellation, not before it.
pub(crate) struct RecordOnDrop<'a> {
    router: &'a Router,
    ctx: &'a Context,
    /// `None` once recorded. Borrowed: a keyed context pays no allocation for the guard,
    /// only a dropped one clones what its spawned recording needs.
    key: Option<&'a str>,
}

impl<'a> RecordOnDrop<'a> {
    pub(crate) fn new(router: &'a Router, ctx: &'a Context, key: &'a str) -> Self {
        RecordOnDrop {
            router,
            ctx,
            key: Some(key),
        }
    }

    /// Records now. Dropped while recording, `Drop` records again (the store keeps the
    /// higher position, so twice is harmless).
    pub(crate) async fn record(mut self) -> Positions {
        let positions = match self.key {
            Some(key) => self.router.record_positions(self.ctx, key).await,
            None => Vec::new(),
        };
        self.key = None;
        positions
    }
}

impl Drop for RecordOnDrop<'_> {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        if self.ctx.pinned(|o| o == PinOrigin::New).is_empty() {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let router = self.router.clone();
                let ctx = self.ctx.clone();
                let key = key.to_owned();
                metrics::counter!("pindb_positions_recorded_on_drop_total").increment(1);
                // Counted until recorded: the key's next context on this instance waits for
                // every recording of the key still in flight. Started under the map's lock,
                // as finishing is: an entry is never removed while a recording it counts is
                // about to start.
                let pending = router.start_pending(&key);
                runtime.spawn(async move {
                    router.record_positions(&ctx, &key).await;
                    router.finish_pending(&key, &pending);
                });
            }
            Err(_) => {
                metrics::counter!("pindb_position_failures_total").increment(1);
                tracing::warn!(target: "pindb", "pindb: a keyed context that wrote ended outside a tokio runtime; its write position was not recorded");
            }
        }
    }
}
