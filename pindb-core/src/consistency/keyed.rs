//! A keyed context's start (load the key's positions, wait for a replica if allowed) and end
//! (record the master's position for every set it wrote), and [`RecordOnDrop`], which records
//! however the context ends.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::Consistency;
use crate::context::{Context, PinOrigin};
use crate::error::PinDbError;
use crate::lsn::Lsn;
use crate::store::Positions;

impl Consistency {
    /// Runs `fut` in a fresh pinning context with read-your-writes for `key`: at the start,
    /// the positions recorded for `key` are loaded (the context's reads of those sets go to
    /// replicas that have replayed them, else to the master); at the end, if the context
    /// pinned a set (it wrote, or called `pin`), the master's current WAL insert position is
    /// recorded for `key`. Store failures never reach the caller.
    ///
    /// ```no_run
    /// # async fn demo(router: pindb_core::Router) {
    /// let user_id = "user:42";
    /// router.consistency().scope_with_key(Some(user_id), async {
    ///     // handle the request: reads and writes through an adapter
    /// }).await;
    /// # }
    /// ```
    pub async fn scope_with_key<F: Future>(
        self: &Arc<Self>,
        key: Option<&str>,
        fut: F,
    ) -> F::Output {
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
            let wait = self.settle_wait();
            // Boxed: rare, and a timer in every keyed context's state is not free.
            if Box::pin(tokio::time::timeout(wait, pending.settled()))
                .await
                .is_err()
            {
                // Still not recorded: fail safe, and say why.
                ctx.lock().store_unavailable = true;
                let store = self.store.name();
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
        let store = &self.store;
        match store.load(key).await {
            Ok(positions) => {
                let ttl = self.ttl();
                if let Some(until) = store
                    .lost_until(key, ttl)
                    .filter(|u| *u > SystemTime::now())
                {
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
                let now = super::unix_now();
                for (set, lsn) in &positions {
                    match set.strip_suffix(UNKNOWN_UNTIL) {
                        // Unknown until then: from the master.
                        Some(set) if lsn.0 > now => ctx.require(set, Lsn(u64::MAX)),
                        Some(_) => {}
                        None => ctx.require(set, *lsn),
                    }
                }
                if self.settings.max_wait_ms > 0 && !positions.is_empty() {
                    // Boxed: its probe futures would make every keyed context's state large.
                    Box::pin(self.wait_for_replicas(ctx)).await;
                }
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
        let store = &self.store;
        let ttl = self.ttl();
        let saved = stored(&positions, ttl);
        if let Err(e) = store.save(key, &saved, ttl).await {
            self.store_failed(store.name(), "save", &e);
        }
        positions
    }

    /// With `max_wait_ms > 0`: for each required set that no replica is known to have
    /// reached, asks the usable replicas directly until one has or the time is up. Never for
    /// a position that is unknown (`Lsn::MAX`: no replica can reach it), nor for a set whose
    /// replicas are switched off.
    async fn wait_for_replicas(&self, ctx: &Context) {
        let wait = Duration::from_millis(self.settings.max_wait_ms);
        let deadline = tokio::time::Instant::now() + wait;
        for (set, lsn) in ctx.required() {
            if lsn == Lsn(u64::MAX) || !self.topology.may_serve_reads(&set) {
                continue;
            }
            while self
                .topology
                .best_replay(&set)
                .is_some_and(|best| best < lsn)
                && tokio::time::Instant::now() < deadline
            {
                // The deadline bounds the probes too: a replica that does not answer must
                // not stretch the wait to its check timeout.
                match tokio::time::timeout_at(deadline, self.check_replicas(&set)).await {
                    Ok(Some(())) => {}
                    Ok(None) | Err(_) => break,
                }
                if self
                    .topology
                    .best_replay(&set)
                    .is_some_and(|best| best >= lsn)
                {
                    break;
                }
                let next = tokio::time::Instant::now() + Duration::from_millis(5);
                tokio::time::sleep_until(next.min(deadline)).await;
            }
        }
    }
}

/// Marks a set's entry that says its position is unknown until the Unix time it holds.
/// Stores keep the higher value per entry and refresh a key's expiry at every save, so an
/// unknown position kept as `Lsn::MAX` would last as long as the key keeps writing; kept
/// apart, it expires `ttl_seconds` after it was recorded while the key's real positions go
/// on. A set name has no whitespace, so no set is named like this.
const UNKNOWN_UNTIL: &str = " unknown until";

/// `positions` as a store keeps them: an unknown one (`Lsn::MAX`) as "unknown until" now
/// plus `ttl`.
fn stored(positions: &Positions, ttl: Duration) -> std::borrow::Cow<'_, Positions> {
    if !positions.iter().any(|(_, lsn)| lsn.0 == u64::MAX) {
        return std::borrow::Cow::Borrowed(positions);
    }
    // By this instance's clock: `ttl_seconds` bounds how long a dropped write is assumed
    // to take anyway, as it bounds how long a replica may lag.
    let until = super::unix_now().saturating_add(ttl.as_secs());
    std::borrow::Cow::Owned(
        positions
            .iter()
            .map(|(set, lsn)| match lsn.0 {
                u64::MAX => (format!("{set}{UNKNOWN_UNTIL}"), Lsn(until)),
                _ => (set.clone(), *lsn),
            })
            .collect(),
    )
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
    consistency: &'a Arc<Consistency>,
    ctx: &'a Context,
    /// `None` once recorded. Borrowed: a keyed context pays no allocation for the guard,
    /// only a dropped one clones what its spawned recording needs.
    key: Option<&'a str>,
}

impl<'a> RecordOnDrop<'a> {
    pub(crate) fn new(consistency: &'a Arc<Consistency>, ctx: &'a Context, key: &'a str) -> Self {
        RecordOnDrop {
            consistency,
            ctx,
            key: Some(key),
        }
    }

    /// Records now. Dropped while recording, `Drop` records again (the store keeps the
    /// higher position, so twice is harmless).
    pub(crate) async fn record(mut self) -> Positions {
        let positions = match self.key {
            Some(key) => self.consistency.record_positions(self.ctx, key).await,
            None => Vec::new(),
        };
        self.key = None;
        positions
    }
}

impl Drop for RecordOnDrop<'_> {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        if !self.ctx.has_pin(|o| o == PinOrigin::New) && !self.ctx.has_unsure_write() {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let consistency = Arc::clone(self.consistency);
                let ctx = self.ctx.clone();
                let key = key.to_owned();
                metrics::counter!("pindb_positions_recorded_on_drop_total").increment(1);
                // Counted until recorded: the key's next context on this instance waits for
                // every recording of the key still in flight. Started under the map's lock,
                // as finishing is: an entry is never removed while a recording it counts is
                // about to start.
                let pending = consistency.start_pending(&key);
                runtime.spawn(async move {
                    consistency.record_positions(&ctx, &key).await;
                    consistency.finish_pending(&key, &pending);
                });
            }
            Err(_) => {
                metrics::counter!("pindb_position_failures_total").increment(1);
                tracing::warn!(target: "pindb", "pindb: a keyed context that wrote ended outside a tokio runtime; its write position was not recorded");
            }
        }
    }
}
