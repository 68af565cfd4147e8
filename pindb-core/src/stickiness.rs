//! Read-your-writes across contexts: remember the master's WAL position after a context
//! writes, per *stickiness key* (user, session, job), and only read that set from replicas
//! that have replayed it.
//!
//! This module owns the [`Store`] trait and its in-memory implementation (Redis: the
//! `redis` feature, [`RedisStore`](crate::stickiness::RedisStore)), the [`ConsistencyToken`]
//! that carries positions in a job payload, and the context start/end steps
//! ([`Router::scope_with_key`]). Stores fail safe: when one cannot be read, the context reads
//! every set from its master; when one cannot be written, the write itself is already
//! committed, so nothing is lost but the replica offload of the key's next request. Neither
//! ever reaches the caller as an error.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use crate::context::{Context, PinOrigin};
use crate::error::PinDbError;
use crate::lsn::Lsn;
use crate::router::Router;

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

/// The default store: positions in this process's memory, bounded and expiring. Enough for
/// one application instance; use Redis when several share users.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::time::Duration;
/// use pindb_core::{Lsn, stickiness::{MemoryStore, Store}};
///
/// let store = MemoryStore::new(1000);
/// store.save("user:1", &[("default".into(), Lsn(42))], Duration::from_secs(30)).await.unwrap();
/// assert_eq!(store.load("user:1").await.unwrap(), [("default".to_string(), Lsn(42))]);
/// assert!(store.load("user:2").await.unwrap().is_empty());
/// # }
/// ```
#[derive(Debug)]
pub struct MemoryStore {
    capacity: usize,
    entries: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    by_key: HashMap<String, (Positions, Instant)>,
    /// When the latest live position this store had to evict would have expired.
    evicted_until: Option<Instant>,
}

impl MemoryStore {
    /// A store keeping at most `capacity` keys. When full, expired positions go first; if a
    /// live one must go (the soonest to expire), every keyed context reads from the masters
    /// until it would have expired (the key it belonged to must not read stale), and
    /// `pindb_store_evictions_total` counts it: raise `memory_capacity`.
    pub fn new(capacity: usize) -> MemoryStore {
        MemoryStore {
            capacity: capacity.max(1),
            entries: Mutex::new(Entries::default()),
        }
    }
}

impl Store for MemoryStore {
    fn load<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Positions> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let found = match entries.by_key.get(key) {
            Some((positions, expires)) if *expires > Instant::now() => positions.clone(),
            _ => Vec::new(),
        };
        Box::pin(std::future::ready(Ok(found)))
    }

    fn save<'a>(
        &'a self,
        key: &'a str,
        positions: &'a [(String, Lsn)],
        ttl: Duration,
    ) -> StoreFuture<'a, ()> {
        let now = Instant::now();
        let mut guard = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let Entries {
            by_key: entries,
            evicted_until,
        } = &mut *guard;
        if !entries.contains_key(key) && entries.len() >= self.capacity {
            entries.retain(|_, (_, expires)| *expires > now);
            if entries.len() >= self.capacity {
                if let Some((oldest, expires)) = entries
                    .iter()
                    .min_by_key(|(_, (_, expires))| *expires)
                    .map(|(k, (_, e))| (k.clone(), *e))
                {
                    entries.remove(&oldest);
                    *evicted_until = Some(evicted_until.map_or(expires, |u| u.max(expires)));
                    metrics::counter!("pindb_store_evictions_total", "store" => "memory")
                        .increment(1);
                }
            }
        }
        let entry = entries
            .entry(key.to_owned())
            .or_insert_with(|| (Vec::new(), now));
        if entry.1 <= now {
            entry.0.clear();
        }
        merge(&mut entry.0, positions);
        entry.1 = now + ttl.min(MAX_TTL);
        Box::pin(std::future::ready(Ok(())))
    }

    fn name(&self) -> &'static str {
        "memory"
    }

    fn lost_until(&self, _ttl: Duration) -> Option<SystemTime> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let left = entries
            .evicted_until?
            .checked_duration_since(Instant::now())?;
        SystemTime::now().checked_add(left)
    }
}

/// Write positions carried explicitly from one context to another (a web request to the
/// background job it enqueues, like GitLab's Sidekiq `:sticky` jobs). Compact text form,
/// usable as a cookie or header value: `set@X/Y~T` joined by `|`, where `T` is when the
/// position was issued (Unix seconds). [`ConsistencyToken::sign`] makes it tamper-proof for a
/// trip through a client (stateless stickiness across app instances);
/// [`Router::accept_token`] takes one back, dropping positions older than `ttl_seconds` or
/// beyond anything the master has written.
///
/// ```
/// use pindb_core::{stickiness::ConsistencyToken, Lsn};
///
/// let token: ConsistencyToken = "default@0/16B3748~1700000000|analytics@1/0~1700000001".parse().unwrap();
/// assert_eq!(token.positions()[0], ("default".to_string(), Lsn(0x16B3748)));
/// assert_eq!(token.issued_at("analytics"), Some(1_700_000_001));
/// assert_eq!(token.to_string(), "default@0/16B3748~1700000000|analytics@1/0~1700000001");
/// assert!("default@nope".parse::<ConsistencyToken>().is_err());
///
/// let key = cookie::Key::derive_from(&[7; 32]);
/// let signed = token.sign(&key);
/// assert_eq!(ConsistencyToken::verify(&signed, &key).unwrap(), token);
/// assert!(ConsistencyToken::verify(&signed.replace("0/16B3748", "0/0"), &key).is_err());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsistencyToken {
    positions: Positions,
    /// Parallel to `positions`: when each was issued (Unix seconds; 0: unknown).
    issued: Vec<u64>,
}

/// Now, in Unix seconds.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl ConsistencyToken {
    /// A token from positions, issued now.
    pub fn new(positions: Positions) -> Self {
        let issued = vec![unix_now(); positions.len()];
        ConsistencyToken { positions, issued }
    }

    /// Adds positions issued now; per set, the higher position wins (and, when it is the
    /// new one, its issue time).
    pub fn merge(&mut self, positions: &[(String, Lsn)]) {
        let now = unix_now();
        for (set, lsn) in positions {
            match self.positions.iter().position(|(s, _)| s == set) {
                Some(i) if self.positions[i].1 >= *lsn => {}
                Some(i) => {
                    self.positions[i].1 = *lsn;
                    self.issued[i] = now;
                }
                None => {
                    self.positions.push((set.clone(), *lsn));
                    self.issued.push(now);
                }
            }
        }
    }

    /// The positions, by set.
    pub fn positions(&self) -> &[(String, Lsn)] {
        &self.positions
    }

    /// When the position of `set` was issued (Unix seconds), if the token has one.
    pub fn issued_at(&self, set: &str) -> Option<u64> {
        let i = self.positions.iter().position(|(s, _)| s == set)?;
        Some(self.issued[i])
    }

    /// Keeps the positions `keep(set, position, issued)` accepts.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&str, Lsn, u64) -> bool) {
        let mut i = 0;
        while i < self.positions.len() {
            if keep(&self.positions[i].0, self.positions[i].1, self.issued[i]) {
                i += 1;
            } else {
                self.positions.remove(i);
                self.issued.remove(i);
            }
        }
    }

    /// The token, signed with `key` (HMAC-SHA256, the `cookie` crate's signed jar).
    pub fn sign(&self, key: &cookie::Key) -> String {
        let mut jar = cookie::CookieJar::new();
        jar.signed_mut(key)
            .add(cookie::Cookie::new(TOKEN_COOKIE, self.to_string()));
        jar.get(TOKEN_COOKIE)
            .map(|c| c.value().to_owned())
            .unwrap_or_default()
    }

    /// A token from [`ConsistencyToken::sign`]'s output; a forged or altered one is
    /// [`PinDbError::BadToken`]. Says nothing about its age: see [`Router::accept_token`].
    pub fn verify(signed: &str, key: &cookie::Key) -> Result<ConsistencyToken, PinDbError> {
        let mut jar = cookie::CookieJar::new();
        jar.add_original(cookie::Cookie::new(TOKEN_COOKIE, signed.to_owned()));
        let verified = jar
            .signed(key)
            .get(TOKEN_COOKIE)
            .ok_or(PinDbError::BadToken {
                part: "(signature)".to_owned(),
            })?;
        verified.value().parse()
    }

    /// Makes `ctx` require these positions: its reads of each set go to replicas that have
    /// replayed them, or to the master.
    pub fn apply_to(&self, ctx: &Context) {
        for (set, lsn) in &self.positions {
            ctx.require(set, *lsn);
        }
    }
}

const TOKEN_COOKIE: &str = "pindb_token";

/// How far beyond the best replica a token position may be before the master is asked
/// whether it has written that far.
const PLAUSIBLE_AHEAD: u64 = 64 * 1024 * 1024;

/// Clock difference between instances tolerated in a token's issue times.
const CLOCK_SKEW_SECS: u64 = 60;

impl fmt::Display for ConsistencyToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, ((set, lsn), issued)) in self.positions.iter().zip(&self.issued).enumerate() {
            if i > 0 {
                f.write_str("|")?;
            }
            write!(f, "{set}@{lsn}~{issued}")?;
        }
        Ok(())
    }
}

impl FromStr for ConsistencyToken {
    type Err = PinDbError;

    fn from_str(s: &str) -> Result<Self, PinDbError> {
        let bad = |part: &str| PinDbError::BadToken {
            part: part.to_owned(),
        };
        let mut token = ConsistencyToken::default();
        for part in s.split('|').filter(|p| !p.is_empty()) {
            let (set, rest) = part.rsplit_once('@').ok_or_else(|| bad(part))?;
            if set.is_empty() {
                return Err(bad(part));
            }
            // A position without an issue time is unknown-aged: `accept_token` drops it.
            let (lsn, issued) = match rest.split_once('~') {
                Some((lsn, t)) => (lsn, t.parse().map_err(|_| bad(part))?),
                None => (rest, 0),
            };
            token
                .positions
                .push((set.to_owned(), lsn.parse().map_err(|_| bad(part))?));
            token.issued.push(issued);
        }
        Ok(token)
    }
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
        // A context of this key was dropped and its position is still being recorded: wait
        // for it (bounded), or the key could read without its own write.
        let pending = self.pending_records().get(key).cloned();
        if let Some(pending) = pending {
            let wait = Duration::from_millis(self.config().stickiness.redis_timeout_ms)
                .saturating_mul(3)
                .max(Duration::from_secs(1));
            if tokio::time::timeout(wait, pending.lock()).await.is_err() {
                // Still not recorded: fail safe.
                ctx.lock().store_unavailable = true;
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
        let mut positions = self.write_positions(ctx).await;
        // A set whose master could not tell its position (it went away right after the
        // write): record "beyond every replica", so the key reads that set from its master
        // until the position expires instead of from a replica that may lack the write.
        for set in ctx.pinned(|o| o == PinOrigin::New) {
            if !positions.iter().any(|(s, _)| *s == set) {
                positions.push((set, Lsn(u64::MAX)));
            }
        }
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
        token.retain(|set, _, issued| {
            self.is_set(set)
                && issued != 0
                && issued <= now.saturating_add(CLOCK_SKEW_SECS)
                && now.saturating_sub(issued) < ttl
        });
        let mut implausible = Vec::new();
        for (set, lsn) in token.positions() {
            let known = self.best_replay(set).unwrap_or(Lsn(0));
            if lsn.0 > known.0.saturating_add(PLAUSIBLE_AHEAD) {
                match self.master_insert_lsn(set).await {
                    Ok(master) if *lsn > master => implausible.push(set.clone()),
                    // Cannot check: keep it (at worst, reads of the set go to the master).
                    _ => {}
                }
            }
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
                merge(&mut positions, &self.write_positions(&ctx).await);
                ConsistencyToken::new(positions)
            }
            None => ConsistencyToken::default(),
        }
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
                    tracing::warn!(target: "pindb", %set, error = %e, "pindb: could not read the master's WAL position; the next read of this key may go to the master only if the store still holds an older position");
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

/// Records a keyed context's write positions however the context ends: normally, through
/// [`RecordOnDrop::record`]; dropped (a timeout, a client that went away, `select!`) or
/// unwound by a panic, from `Drop`, which spawns the recording on the current runtime. Drop
/// is the only hook a cancelled future gets, and it cannot wait, hence the spawn: the
/// position lands a moment after the cancellation, not before it.
pub(crate) struct RecordOnDrop {
    router: Router,
    ctx: Context,
    /// `None` once recorded.
    key: Option<String>,
}

impl RecordOnDrop {
    pub(crate) fn new(router: &Router, ctx: &Context, key: &str) -> Self {
        RecordOnDrop {
            router: router.clone(),
            ctx: ctx.clone(),
            key: Some(key.to_owned()),
        }
    }

    /// Records now. Dropped while recording, `Drop` records again (the store keeps the
    /// higher position, so twice is harmless).
    pub(crate) async fn record(mut self) -> Positions {
        let positions = match &self.key {
            Some(key) => self.router.record_positions(&self.ctx, key).await,
            None => Vec::new(),
        };
        self.key = None;
        positions
    }
}

impl Drop for RecordOnDrop {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        if self.ctx.pinned(|o| o == PinOrigin::New).is_empty() {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let router = self.router.clone();
                let ctx = self.ctx.clone();
                metrics::counter!("pindb_positions_recorded_on_drop_total").increment(1);
                // Held until recorded: the key's next context on this instance waits for it.
                let lock = Arc::new(tokio::sync::Mutex::new(()));
                let Ok(held) = Arc::clone(&lock).try_lock_owned() else {
                    return;
                };
                router
                    .pending_records()
                    .insert(key.clone(), Arc::clone(&lock));
                runtime.spawn(async move {
                    router.record_positions(&ctx, &key).await;
                    drop(held);
                    let mut pending = router.pending_records();
                    if pending.get(&key).is_some_and(|l| Arc::ptr_eq(l, &lock)) {
                        pending.remove(&key);
                    }
                });
            }
            Err(_) => {
                metrics::counter!("pindb_position_failures_total").increment(1);
                tracing::warn!(target: "pindb", "pindb: a keyed context that wrote ended outside a tokio runtime; its write position was not recorded");
            }
        }
    }
}

#[cfg(feature = "redis")]
mod redis_store {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    use redis::aio::{ConnectionManager, ConnectionManagerConfig};

    use super::{Positions, Store, StoreFuture};
    use crate::error::PinDbError;
    use crate::lsn::Lsn;

    /// Loads a key's positions and the store's *epoch*: the time (Unix ms) since which this
    /// Redis is known to hold every position saved to it. A missing epoch means Redis lost
    /// its data (restart without persistence, flush) or is new: the epoch becomes now. An
    /// instance whose save failed passes that time in ARGV[2] to move the epoch forward, so
    /// every instance learns of the loss.
    /// KEYS: epoch, key. ARGV: now, failed-save time (0: none).
    const LOAD: &str = r"
        local epoch = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
        local bump = tonumber(ARGV[2])
        if epoch == 0 then epoch = tonumber(ARGV[1]) end
        if bump > epoch then epoch = bump end
        redis.call('SET', KEYS[1], string.format('%d', epoch))
        return {string.format('%d', epoch), redis.call('HGETALL', KEYS[2])}
    ";

    /// Saves positions keeping, per set, the higher one (two requests of one user on two
    /// instances may finish in any order), and keeps the epoch as `LOAD` does.
    /// KEYS: epoch, key. ARGV: now, failed-save time, ttl ms, then set/position pairs.
    const SAVE: &str = r"
        local function parse(v)
            local hi, lo = string.match(v or '', '^(%x+)/(%x+)$')
            if not hi then return nil end
            return tonumber(hi, 16), tonumber(lo, 16)
        end
        local epoch = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
        local bump = tonumber(ARGV[2])
        if epoch == 0 then epoch = tonumber(ARGV[1]) end
        if bump > epoch then epoch = bump end
        redis.call('SET', KEYS[1], string.format('%d', epoch))
        for i = 4, #ARGV, 2 do
            local nh, nl = parse(ARGV[i + 1])
            local oh, ol = parse(redis.call('HGET', KEYS[2], ARGV[i]))
            if nh and not (oh and (oh > nh or (oh == nh and ol >= nl))) then
                redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
            end
        end
        redis.call('PEXPIRE', KEYS[2], ARGV[3])
        return 1
    ";

    /// Moves the epoch forward to ARGV[1] (a loss seen by an instance), never back; a
    /// missing epoch becomes now (ARGV[2]), as in `LOAD`. KEYS: epoch.
    const BUMP: &str = r"
        local epoch = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
        local bump = tonumber(ARGV[1])
        if epoch == 0 then epoch = tonumber(ARGV[2]) end
        if bump > epoch then epoch = bump end
        redis.call('SET', KEYS[1], string.format('%d', epoch))
        return string.format('%d', epoch)
    ";

    /// Positions in Redis (a hash per key, `set -> X/Y`, with a TTL), shared by every
    /// application instance. Commands time out quickly; after a failure the store is skipped
    /// for a second (keyed reads go to the master), then tried again.
    ///
    /// A Redis that may have lost positions is noticed, on every instance: an *epoch* key
    /// (`<prefix>` + `\0epoch`) holds the time since which Redis is known to hold every
    /// position. A restart without persistence or a flush removes it (the next command sets
    /// it to now); a save that failed moves it forward once Redis answers again. Keyed
    /// contexts read from the masters until `ttl_seconds` after the epoch. A Redis that is new
    /// looks the same as one that lost its data, so the first `ttl_seconds` after pindb first
    /// uses it send keyed reads to the masters too. Not detected: a failover to a Redis
    /// replica that had not received the latest saves (its epoch key came along).
    pub struct RedisStore {
        manager: ConnectionManager,
        prefix: String,
        url: String,
        timeout: Duration,
        skip_until: std::sync::Mutex<Option<Instant>>,
        /// The epoch (Unix ms) the last command returned; 0 before the first.
        epoch_ms: AtomicU64,
        /// When something was last possibly lost (Unix ms): a failed save or an outage seen
        /// by a load, until an answer carried it into the epoch. Shared with the task that
        /// tells Redis.
        failed_save_ms: std::sync::Arc<AtomicU64>,
        /// Whether that task runs.
        bumping: std::sync::Arc<std::sync::atomic::AtomicBool>,
    }

    impl std::fmt::Debug for RedisStore {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("RedisStore")
                .field("url", &self.url)
                .field("prefix", &self.prefix)
                .finish()
        }
    }

    fn unix_ms(t: SystemTime) -> u64 {
        t.duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }

    impl RedisStore {
        /// A store on the Redis at `url`. Connects lazily: Redis being down at start-up
        /// does not stop the application. Must be called inside a tokio runtime.
        pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<RedisStore, PinDbError> {
            let client = redis::Client::open(url).map_err(|e| {
                PinDbError::config(
                    "stickiness",
                    format!(
                        "the Redis URL `{url}` is invalid ({e}); expected redis://host:port/db"
                    ),
                )
            })?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(0);
            let manager = ConnectionManager::new_lazy_with_config(client, config).map_err(|e| {
                PinDbError::config("stickiness", format!("cannot set up Redis at `{url}`: {e}"))
            })?;
            Ok(RedisStore {
                manager,
                prefix: prefix.to_owned(),
                url: url.to_owned(),
                timeout,
                skip_until: std::sync::Mutex::new(None),
                epoch_ms: AtomicU64::new(0),
                failed_save_ms: std::sync::Arc::new(AtomicU64::new(0)),
                bumping: Default::default(),
            })
        }

        fn unavailable(&self, e: impl std::fmt::Display) -> PinDbError {
            *self
                .skip_until
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some(Instant::now() + Duration::from_secs(1));
            PinDbError::StoreUnavailable {
                store: "redis",
                message: format!("{} ({e})", self.url),
            }
        }

        fn skipping(&self) -> Option<PinDbError> {
            let until = *self
                .skip_until
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            until
                .filter(|u| *u > Instant::now())
                .map(|_| PinDbError::StoreUnavailable {
                    store: "redis",
                    message: format!("{} failed less than a second ago", self.url),
                })
        }

        async fn with_timeout<T>(
            &self,
            f: impl std::future::Future<Output = redis::RedisResult<T>>,
        ) -> Result<T, PinDbError> {
            match tokio::time::timeout(self.timeout, f).await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(self.unavailable(e)),
                Err(_) => Err(self.unavailable(format!("no answer within {:?}", self.timeout))),
            }
        }

        fn epoch_key(&self) -> String {
            format!("{}\0epoch", self.prefix)
        }

        /// A script call with the epoch key, `key`, now and the failed-save time first.
        fn script(&self, script: &str, key: &str) -> (redis::Cmd, u64) {
            let failed = self.failed_save_ms.load(Ordering::Acquire);
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(script)
                .arg(2)
                .arg(self.epoch_key())
                .arg(format!("{}{key}", self.prefix))
                .arg(unix_ms(SystemTime::now()))
                .arg(failed);
            (cmd, failed)
        }

        /// Records the epoch an answer carried; the failed save it included is now known
        /// to every instance.
        fn answered(&self, epoch: &str, failed: u64) {
            if let Ok(epoch) = epoch.parse::<u64>() {
                self.epoch_ms.store(epoch, Ordering::Release);
            }
            if failed != 0 {
                let _ = self.failed_save_ms.compare_exchange(
                    failed,
                    0,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                );
            }
        }

        /// Something may have been lost now: the next command moves the epoch here.
        fn mark_loss(&self) {
            self.failed_save_ms
                .fetch_max(unix_ms(SystemTime::now()), Ordering::AcqRel);
        }

        /// A save failed: marks the loss, and tells Redis as soon as it answers again (every
        /// 100 ms, for at most `ttl`), so every instance learns of it even if this one gets
        /// no more traffic.
        fn save_failed(&self, ttl: Duration) {
            self.mark_loss();
            if self.bumping.swap(true, Ordering::AcqRel) {
                return;
            }
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                self.bumping.store(false, Ordering::Release);
                return;
            };
            let manager = self.manager.clone();
            let epoch_key = self.epoch_key();
            let shared = std::sync::Arc::clone(&self.failed_save_ms);
            let timeout = self.timeout;
            let bumping = std::sync::Arc::clone(&self.bumping);
            runtime.spawn(async move {
                let give_up = Instant::now() + ttl;
                while Instant::now() < give_up {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let failed = shared.load(Ordering::Acquire);
                    if failed == 0 {
                        break;
                    }
                    let mut conn = manager.clone();
                    let mut cmd = redis::cmd("EVAL");
                    cmd.arg(BUMP)
                        .arg(1)
                        .arg(&epoch_key)
                        .arg(failed)
                        .arg(unix_ms(SystemTime::now()));
                    if let Ok(Ok(_)) =
                        tokio::time::timeout(timeout, cmd.query_async::<String>(&mut conn)).await
                    {
                        // Every instance sees it now. This one keeps its mark until its next
                        // answer also brings the new epoch (`answered`).
                        break;
                    }
                }
                bumping.store(false, Ordering::Release);
            });
        }
    }

    impl Store for RedisStore {
        fn load<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Positions> {
            Box::pin(async move {
                if let Some(e) = self.skipping() {
                    return Err(e);
                }
                let mut conn = self.manager.clone();
                let (cmd, failed) = self.script(LOAD, key);
                let (epoch, raw): (String, Vec<(String, String)>) =
                    match self.with_timeout(cmd.query_async(&mut conn)).await {
                        Ok(answer) => answer,
                        Err(e) => {
                            // An outage: other instances' saves may be failing now too. The
                            // next answer moves the epoch, so nobody trusts what Redis lacks.
                            self.mark_loss();
                            return Err(e);
                        }
                    };
                self.answered(&epoch, failed);
                // A value that does not parse is ignored: the master still holds the truth.
                Ok(raw
                    .into_iter()
                    .filter_map(|(set, lsn)| Some((set, lsn.parse::<Lsn>().ok()?)))
                    .collect())
            })
        }

        fn save<'a>(
            &'a self,
            key: &'a str,
            positions: &'a [(String, Lsn)],
            ttl: Duration,
        ) -> StoreFuture<'a, ()> {
            Box::pin(async move {
                if let Some(e) = self.skipping() {
                    self.save_failed(ttl);
                    return Err(e);
                }
                let (mut cmd, failed) = self.script(SAVE, key);
                cmd.arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1));
                for (set, lsn) in positions {
                    cmd.arg(set).arg(lsn.to_string());
                }
                let mut conn = self.manager.clone();
                match self.with_timeout(cmd.query_async::<i64>(&mut conn)).await {
                    Ok(_) => {
                        // The script moved the epoch to the failed save (at least).
                        if failed != 0 {
                            self.epoch_ms.fetch_max(failed, Ordering::AcqRel);
                            self.answered("", failed);
                        }
                        Ok(())
                    }
                    Err(e) => {
                        // Lost, or maybe applied: either way, the next reads must not trust
                        // the store until this position would have expired.
                        self.save_failed(ttl);
                        Err(e)
                    }
                }
            })
        }

        fn name(&self) -> &'static str {
            "redis"
        }

        fn lost_until(&self, ttl: Duration) -> Option<SystemTime> {
            let since = self
                .epoch_ms
                .load(Ordering::Acquire)
                .max(self.failed_save_ms.load(Ordering::Acquire));
            if since == 0 {
                return None;
            }
            UNIX_EPOCH
                .checked_add(Duration::from_millis(since))?
                .checked_add(ttl)
        }
    }
}

#[cfg(feature = "redis")]
pub use redis_store::RedisStore;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_store_merges_expires_and_stays_bounded() {
        let store = MemoryStore::new(2);
        let ttl = Duration::from_secs(60);
        store.save("a", &[("s".into(), Lsn(5))], ttl).await.unwrap();
        store
            .save("a", &[("s".into(), Lsn(3)), ("t".into(), Lsn(1))], ttl)
            .await
            .unwrap();
        let mut got = store.load("a").await.unwrap();
        got.sort();
        assert_eq!(got, [("s".to_string(), Lsn(5)), ("t".to_string(), Lsn(1))]);
        store.save("b", &[("s".into(), Lsn(1))], ttl).await.unwrap();
        store.save("c", &[("s".into(), Lsn(1))], ttl).await.unwrap();
        let mut kept = 0;
        for key in ["a", "b", "c"] {
            kept += usize::from(!store.load(key).await.unwrap().is_empty());
        }
        assert_eq!(kept, 2, "capacity 2");
        store
            .save("gone", &[("s".into(), Lsn(1))], Duration::ZERO)
            .await
            .unwrap();
        assert!(store.load("gone").await.unwrap().is_empty(), "expired");
    }

    #[test]
    fn token_text_round_trips_and_rejects_garbage() {
        let t = ConsistencyToken::new(vec![("default".into(), Lsn(1)), ("x".into(), Lsn(1 << 32))]);
        assert_eq!(t.to_string().parse::<ConsistencyToken>().unwrap(), t);
        assert_eq!(
            "".parse::<ConsistencyToken>().unwrap(),
            ConsistencyToken::default()
        );
        for bad in ["default", "@0/1", "default@0/1|x", "d@1/2/3"] {
            assert!(bad.parse::<ConsistencyToken>().is_err(), "{bad}");
        }
    }
}
