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
use std::sync::{Mutex, PoisonError};
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

    /// Replaces the position of `set`, keeping its issue time.
    pub(crate) fn set_position(&mut self, set: &str, lsn: Lsn) {
        if let Some((_, old)) = self.positions.iter_mut().find(|(s, _)| s == set) {
            *old = lsn;
        }
    }

    /// Gives positions without an issue time the time `now`.
    pub(crate) fn stamp_unknown(&mut self, now: u64) {
        for issued in &mut self.issued {
            if *issued == 0 {
                *issued = now;
            }
        }
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
            // A position without an issue time (an earlier pindb): `accept_token` dates it.
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
        // Contexts of this key were dropped and their positions are still being recorded:
        // wait for all of them (bounded), or the key could read without its own write.
        if let Some(pending) = self.pending_for(key) {
            let wait = Duration::from_millis(self.config().stickiness.redis_timeout_ms)
                .saturating_mul(3)
                .max(Duration::from_secs(1));
            if tokio::time::timeout(wait, pending.settled()).await.is_err() {
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

#[cfg(feature = "redis")]
mod redis_store {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    use redis::aio::{ConnectionManager, ConnectionManagerConfig};

    use super::{Positions, Store, StoreFuture};
    use crate::error::PinDbError;
    use crate::lsn::Lsn;

    /// Keeps the store's *epoch*: the time (Redis's clock, Unix ms) since which this Redis is
    /// known to hold every position saved to it, with the `run_id` of the server process that
    /// vouches for it. A missing epoch (restart without persistence, flush) or another
    /// `run_id` (a restart that restored older data from disk, a failover to a replica)
    /// means positions may be lost: the epoch becomes now. An instance that saw a loss passes
    /// how long ago (ARGV[1], ms; -1: none) to move the epoch there, so every instance learns
    /// of it. Leaves `epoch` and `now` set. KEYS[1]: the epoch key.
    const EPOCH: &str = r"
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        local run = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)') or ''
        local stored = redis.call('GET', KEYS[1])
        local epoch, vouched = 0, ''
        if stored then
            local e, r = string.match(stored, '^(%d+):(%x*)$')
            epoch, vouched = tonumber(e or '0') or 0, r or ''
        end
        if epoch == 0 or vouched ~= run then epoch = now end
        local age = tonumber(ARGV[1])
        if age >= 0 and now - age > epoch then epoch = now - age end
        redis.call('SET', KEYS[1], string.format('%d:%s', epoch, run))
    ";

    /// The epoch, then a key's positions. KEYS: epoch, key. ARGV: loss age.
    const LOAD: &str = r"
        return {string.format('%d', epoch), string.format('%d', now),
                redis.call('HGETALL', KEYS[2])}
    ";

    /// The epoch, then saves positions keeping, per set, the higher one (two requests of one
    /// user on two instances may finish in any order).
    /// KEYS: epoch, key. ARGV: loss age, ttl ms, then set/position pairs.
    const SAVE: &str = r"
        local function parse(v)
            local hi, lo = string.match(v or '', '^(%x+)/(%x+)$')
            if not hi then return nil end
            return tonumber(hi, 16), tonumber(lo, 16)
        end
        for i = 3, #ARGV, 2 do
            local nh, nl = parse(ARGV[i + 1])
            local oh, ol = parse(redis.call('HGET', KEYS[2], ARGV[i]))
            if nh and not (oh and (oh > nh or (oh == nh and ol >= nl))) then
                redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
            end
        end
        redis.call('PEXPIRE', KEYS[2], ARGV[2])
        return {string.format('%d', epoch), string.format('%d', now)}
    ";

    /// The epoch alone. KEYS: epoch. ARGV: loss age.
    const BUMP: &str = r"
        return {string.format('%d', epoch), string.format('%d', now)}
    ";

    /// Positions in Redis (a hash per key, `set -> X/Y`, with a TTL), shared by every
    /// application instance. Commands time out quickly; after a failure the store is skipped
    /// for a second (keyed reads go to the master), then tried again.
    ///
    /// A Redis that may have lost positions is noticed, on every instance: an *epoch* key
    /// (`<prefix>` + `\0epoch`) holds the time (Redis's clock) since which Redis is known to
    /// hold every position, and the `run_id` of the server process that vouches for it. A
    /// restart or flush removes it, a restart that restored older data from disk or a
    /// failover to a replica changes the `run_id`: the next command moves the epoch to now. A
    /// save that failed, or a command that timed out, moves it to that moment once Redis
    /// answers again. Keyed contexts read from the masters until `ttl_seconds` after the
    /// epoch. A Redis that is new looks the same as one that lost its data, so the first
    /// `ttl_seconds` after pindb first uses it send keyed reads to the masters too.
    ///
    /// Needs: `maxmemory-policy` `noeviction` or `allkeys-*` (a `volatile-*` policy can evict
    /// positions and keep the epoch), and a non-cluster Redis (the epoch and a user's key are
    /// used in one script: a Redis Cluster refuses it, and every keyed read goes to the
    /// master). Not detected: an instance that cannot reach Redis while the others can (its
    /// failed save is told to Redis, and so to them, only when it reaches Redis again).
    pub struct RedisStore {
        manager: ConnectionManager,
        prefix: String,
        url: String,
        timeout: Duration,
        skip_until: std::sync::Mutex<Option<Instant>>,
        /// The latest epoch an answer carried, in this instance's clock (Unix ms: the answer's
        /// epoch shifted by the difference between Redis's clock and ours); 0 before the
        /// first. Only ever moves forward.
        epoch_ms: std::sync::Arc<AtomicU64>,
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
                epoch_ms: std::sync::Arc::new(AtomicU64::new(0)),
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

        /// A script call with the epoch key, `key` (when given) and the loss age first.
        fn script(&self, script: &str, key: Option<&str>) -> (redis::Cmd, u64) {
            script_cmd(
                script,
                &self.epoch_key(),
                key.map(|k| format!("{}{k}", self.prefix)),
                &self.failed_save_ms,
            )
        }

        /// Records the epoch an answer carried; the loss mark it included is now known to
        /// every instance.
        fn answered(&self, answer: &[String], failed: u64) {
            answered(&self.epoch_ms, &self.failed_save_ms, answer, failed);
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
            let failed_mark = std::sync::Arc::clone(&self.failed_save_ms);
            let epoch_ms = std::sync::Arc::clone(&self.epoch_ms);
            let timeout = self.timeout;
            let bumping = std::sync::Arc::clone(&self.bumping);
            runtime.spawn(async move {
                let give_up = Instant::now() + ttl;
                while Instant::now() < give_up {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let (cmd, failed) = script_cmd(BUMP, &epoch_key, None, &failed_mark);
                    if failed == 0 {
                        break;
                    }
                    let mut conn = manager.clone();
                    if let Ok(Ok(answer)) =
                        tokio::time::timeout(timeout, cmd.query_async::<Vec<String>>(&mut conn))
                            .await
                    {
                        // Every instance sees it now.
                        answered(&epoch_ms, &failed_mark, &answer, failed);
                        break;
                    }
                }
                bumping.store(false, Ordering::Release);
            });
        }
    }

    /// `EVAL` of `EPOCH` + `body` with the epoch key, `key` (when given), and how long ago
    /// this instance marked a possible loss (-1: none). Returns the mark it carries.
    fn script_cmd(
        body: &str,
        epoch_key: &str,
        key: Option<String>,
        failed_mark: &AtomicU64,
    ) -> (redis::Cmd, u64) {
        let failed = failed_mark.load(Ordering::Acquire);
        let age = match failed {
            0 => -1,
            at => i64::try_from(unix_ms(SystemTime::now()).saturating_sub(at)).unwrap_or(i64::MAX),
        };
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(format!("{EPOCH}\n{body}"));
        match key {
            Some(key) => cmd.arg(2).arg(epoch_key).arg(key),
            None => cmd.arg(1).arg(epoch_key),
        };
        cmd.arg(age);
        (cmd, failed)
    }

    /// Takes `[epoch, now]` (Redis's clock) from an answer: the epoch moves to this
    /// instance's clock (so clocks that differ between instances and Redis do not matter)
    /// and only forward; the loss mark the command carried is cleared.
    fn answered(epoch_ms: &AtomicU64, failed_mark: &AtomicU64, answer: &[String], failed: u64) {
        let parse = |i: usize| answer.get(i).and_then(|v| v.parse::<u64>().ok());
        if let (Some(epoch), Some(now)) = (parse(0), parse(1)) {
            let ago = now.saturating_sub(epoch);
            epoch_ms.fetch_max(
                unix_ms(SystemTime::now()).saturating_sub(ago),
                Ordering::AcqRel,
            );
            if failed != 0 {
                let _ =
                    failed_mark.compare_exchange(failed, 0, Ordering::AcqRel, Ordering::Relaxed);
            }
        }
    }

    impl Store for RedisStore {
        fn load<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Positions> {
            Box::pin(async move {
                if let Some(e) = self.skipping() {
                    return Err(e);
                }
                let mut conn = self.manager.clone();
                let (cmd, failed) = self.script(LOAD, Some(key));
                let (epoch, now, raw): (String, String, Vec<(String, String)>) =
                    match self.with_timeout(cmd.query_async(&mut conn)).await {
                        Ok(answer) => answer,
                        Err(e) => {
                            // An outage: other instances' saves may be failing now too. The
                            // next answer moves the epoch, so nobody trusts what Redis lacks.
                            self.mark_loss();
                            return Err(e);
                        }
                    };
                self.answered(&[epoch, now], failed);
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
                let (mut cmd, failed) = self.script(SAVE, Some(key));
                cmd.arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1));
                for (set, lsn) in positions {
                    cmd.arg(set).arg(lsn.to_string());
                }
                let mut conn = self.manager.clone();
                match self
                    .with_timeout(cmd.query_async::<Vec<String>>(&mut conn))
                    .await
                {
                    Ok(answer) => {
                        self.answered(&answer, failed);
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
