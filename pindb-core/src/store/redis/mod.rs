//! [`RedisStore`]: positions in Redis, shared by every application instance, with an epoch
//! that tells every instance when Redis may have lost some.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::aio::ConnectionManagerConfig;

use super::{Positions, Store, StoreFuture};
use crate::error::PinDbError;
use crate::lsn::Lsn;

mod target;

use target::Target;

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
/// One Redis server ([`RedisStore::new`]) or the primary the Redis Sentinels name
/// ([`RedisStore::sentinel`]): asked again after a failed command and every 0.5 s (all
/// Sentinels at once; a move needs more than half of them to agree), so a failover is
/// followed without a restart, even one whose old primary stays up. A promoted replica has another `run_id`, and
/// replication is asynchronous: what the old primary acknowledged last may be lost, so the
/// first command on the new primary moves the epoch there, as after a restart (keyed reads
/// go to the masters for `ttl_seconds`); an instance that moves to another primary marks a
/// loss too (covering its own last saves to the old one), and so does a command that
/// succeeded on a primary left behind.
///
/// Needs: `maxmemory-policy` `noeviction` or `allkeys-*` (a `volatile-*` policy can evict
/// positions and keep the epoch), and a non-cluster Redis (the epoch and a user's key are
/// used in one script: a Redis Cluster refuses it, and every keyed read goes to the
/// master). With Sentinel: `replica-read-only yes` (the default: a demoted primary then
/// refuses the scripts), no password or TLS on the data nodes (not supported yet), and
/// `min-replicas-to-write 1` with `min-replicas-max-lag` below `down-after-milliseconds`
/// (an old primary cut off from its replica then refuses saves instead of acknowledging
/// what will be lost: without it, a save on an old primary that stays up can be lost
/// unnoticed by other instances until this instance's watch moves, 0.5 s plus one lookup
/// after the Sentinels agree, or never if it cannot reach the Sentinels). Not detected: an
/// instance that cannot reach Redis while the others can (its failed save is told to Redis,
/// and so to them, only when it reaches Redis again); a Redis stalled for longer than two
/// timeouts, whose queued save another instance's load may overtake when it resumes; a
/// failback to the old primary within `ttl_seconds` with no command on the interim one.
pub struct RedisStore {
    target: std::sync::Arc<Target>,
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
        let target = Target::server(url, manager_config(timeout))?;
        let loss = std::sync::Arc::new(AtomicU64::new(0));
        Ok(RedisStore::on(
            target,
            loss,
            url.to_owned(),
            prefix,
            timeout,
        ))
    }

    /// A store on the primary that the Redis Sentinels at `sentinels` (`redis://host:26379`
    /// each) name `master`: asked at the first command, after any failed one and every
    /// 0.5 s, all at once, each within `timeout`. A failover is followed without a restart.
    /// Connects lazily, as [`RedisStore::new`]; each command, with the Sentinels' answer when
    /// one is needed, is bounded by `timeout`. Must be called inside the tokio runtime that
    /// will use it (its watch runs there).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), pindb_core::PinDbError> {
    /// let sentinels = ["redis://10.0.0.7:26379", "redis://10.0.0.8:26379", "redis://10.0.0.9:26379"];
    /// let store = pindb_core::RedisStore::sentinel(&sentinels, "positions", "pindb:lsn:", std::time::Duration::from_millis(100))?;
    /// # Ok(()) }
    /// ```
    pub fn sentinel(
        sentinels: &[impl AsRef<str>],
        master: &str,
        prefix: &str,
        timeout: Duration,
    ) -> Result<RedisStore, PinDbError> {
        let sentinels: Vec<String> = sentinels.iter().map(|s| s.as_ref().to_owned()).collect();
        let loss = std::sync::Arc::new(AtomicU64::new(0));
        let config = manager_config(timeout);
        let target = Target::sentinel(&sentinels, master, config, timeout, loss.clone())?;
        let described = format!("Redis Sentinel `{master}` ({})", sentinels.join(", "));
        Ok(RedisStore::on(target, loss, described, prefix, timeout))
    }

    fn on(
        target: Target,
        failed_save_ms: std::sync::Arc<AtomicU64>,
        url: String,
        prefix: &str,
        timeout: Duration,
    ) -> RedisStore {
        RedisStore {
            target: std::sync::Arc::new(target),
            prefix: prefix.to_owned(),
            url,
            timeout,
            skip_until: std::sync::Mutex::new(None),
            epoch_ms: std::sync::Arc::new(AtomicU64::new(0)),
            failed_save_ms,
            bumping: Default::default(),
        }
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

    /// Runs `call` on the target, bounded by the timeout; a failure makes the next command
    /// find the target again (Sentinel) and skips the store for a second.
    async fn run<T: redis::FromRedisValue>(
        &self,
        call: redis::ScriptInvocation<'static>,
    ) -> Result<T, PinDbError> {
        let mut generation = None;
        let command = async {
            let mut conn = self.target.connection().await?;
            generation = Some(conn.generation);
            call.invoke_async(&mut conn.manager).await
        };
        let result = tokio::time::timeout(self.timeout, command).await;
        if let Some(generation) = generation {
            match &result {
                // It may have landed on a primary the store has left since (Sentinel): after
                // the loss that move marked.
                Ok(Ok(_)) if !self.target.is_current(generation) => self.mark_loss(),
                Ok(Ok(_)) => {}
                // An error (refused, reset, a primary turned replica): the Sentinels are
                // asked again. A timeout keeps the connection, so what follows on it is
                // ordered after what is still queued there (the watch still follows a
                // failover whose old primary hangs).
                Ok(Err(e)) if !e.is_timeout() => self.target.failed(generation),
                _ => {}
            }
        }
        match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.unavailable(e)),
            Err(_) => Err(self.unavailable(format!("no answer within {:?}", self.timeout))),
        }
    }

    fn epoch_key(&self) -> String {
        format!("{}\0epoch", self.prefix)
    }

    /// A script call with the epoch key, `key` (when given) and the loss age first.
    fn script(
        &self,
        script: &'static redis::Script,
        key: Option<&str>,
    ) -> (redis::ScriptInvocation<'static>, u64) {
        invocation(
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
        let target = std::sync::Arc::clone(&self.target);
        let epoch_key = self.epoch_key();
        let failed_mark = std::sync::Arc::clone(&self.failed_save_ms);
        let epoch_ms = std::sync::Arc::clone(&self.epoch_ms);
        let timeout = self.timeout;
        let bumping = std::sync::Arc::clone(&self.bumping);
        runtime.spawn(async move {
            let give_up = Instant::now() + ttl;
            while Instant::now() < give_up {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let (call, failed) = invocation(&BUMP_SCRIPT, &epoch_key, None, &failed_mark);
                if failed == 0 {
                    break;
                }
                let mut generation = None;
                let command = async {
                    let mut conn = target.connection().await?;
                    generation = Some(conn.generation);
                    call.invoke_async::<Vec<String>>(&mut conn.manager).await
                };
                match tokio::time::timeout(timeout, command).await {
                    Ok(Ok(answer)) => {
                        // Every instance sees it now.
                        answered(&epoch_ms, &failed_mark, &answer, failed);
                        break;
                    }
                    Ok(Err(e)) if !e.is_timeout() => {
                        if let Some(generation) = generation {
                            target.failed(generation);
                        }
                    }
                    _ => {}
                }
            }
            bumping.store(false, Ordering::Release);
        });
    }
}

fn manager_config(timeout: Duration) -> ConnectionManagerConfig {
    // The response timeout is pindb's own (`run`), around the whole command: the driver's,
    // longer, never decides first that a slow answer is a broken connection.
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout.saturating_mul(2)))
        .set_number_of_retries(0)
}

/// The scripts, with the `EPOCH` prelude. `redis::Script` sends `EVALSHA` (loading the
/// script once per server on `NOSCRIPT`): no script text per command.
static LOAD_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| with_epoch(LOAD));
static SAVE_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| with_epoch(SAVE));
static BUMP_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| with_epoch(BUMP));

fn with_epoch(body: &str) -> redis::Script {
    redis::Script::new(&format!("{EPOCH}\n{body}"))
}

/// An invocation of `script` with the epoch key, `key` (when given), and how long ago this
/// instance marked a possible loss (-1: none). Returns the mark it carries.
fn invocation(
    script: &'static redis::Script,
    epoch_key: &str,
    key: Option<String>,
    failed_mark: &AtomicU64,
) -> (redis::ScriptInvocation<'static>, u64) {
    let failed = failed_mark.load(Ordering::Acquire);
    let age = match failed {
        0 => -1,
        at => i64::try_from(unix_ms(SystemTime::now()).saturating_sub(at)).unwrap_or(i64::MAX),
    };
    let mut call = script.prepare_invoke();
    call.key(epoch_key);
    if let Some(key) = key {
        call.key(key);
    }
    call.arg(age);
    (call, failed)
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
            let _ = failed_mark.compare_exchange(failed, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
    }
}

impl Store for RedisStore {
    fn load<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Positions> {
        Box::pin(async move {
            if let Some(e) = self.skipping() {
                return Err(e);
            }
            let (call, failed) = self.script(&LOAD_SCRIPT, Some(key));
            let (epoch, now, raw): (String, String, Vec<(String, String)>) =
                match self.run(call).await {
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
            // Never skipped, even within a second of a failure: a save skipped while Redis
            // answers again would leave a position other instances trust, unknown to them
            // until the loss is told (a writing request pays the attempt while Redis fails).
            let (mut call, failed) = self.script(&SAVE_SCRIPT, Some(key));
            call.arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1));
            for (set, lsn) in positions {
                call.arg(set).arg(lsn.to_string());
            }
            match self.run::<Vec<String>>(call).await {
                Ok(answer) => {
                    self.answered(&answer, failed);
                    Ok(())
                }
                Err(e) => {
                    // Lost, or maybe applied later (a command that timed out is still queued
                    // at a stalled Redis, where another instance's load may overtake it):
                    // either way, the next reads must not trust the store until this
                    // position would have expired. Told to Redis at once, on the same
                    // connection (after the save, if it is queued), before the request ends,
                    // so that the user's next request sees it wherever it lands; if Redis
                    // does not answer now, in the background.
                    self.save_failed(ttl);
                    let (bump, failed) = self.script(&BUMP_SCRIPT, None);
                    if let Ok(answer) = self.run::<Vec<String>>(bump).await {
                        self.answered(&answer, failed);
                    }
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
