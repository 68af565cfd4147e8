//! [`Epoch`]: since when one bucket of keys is known to be complete in Redis, and the scripts
//! that keep it beside every command.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Keeps the bucket's *epoch*: the time (Redis's clock, Unix ms) since which this Redis is
/// known to hold every position saved to it, with what vouches for it: the server process's
/// `run_id` and its replication id (`master_replid`, new at every promotion). A missing
/// epoch (restart without persistence, flush) or another voucher (a restart that restored
/// older data from disk, a failover to a replica, a failback to the old primary, a cluster
/// slot moved to another shard) means positions may be lost: the epoch becomes now.
/// An instance that saw a loss passes how long ago (ARGV[1], ms; -1: none) to move the epoch
/// there, so every instance learns of it. Leaves `epoch` and `now` set. KEYS[1]: the epoch
/// key.
const EPOCH: &str = r"
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    local run = (string.match(redis.call('INFO', 'server'), 'run_id:(%x+)') or '')
        .. (string.match(redis.call('INFO', 'replication'), 'master_replid:(%x+)') or '')
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

/// The scripts, with the `EPOCH` prelude.
pub(super) static LOAD_SCRIPT: LazyLock<Lua> = LazyLock::new(|| with_epoch(LOAD));
pub(super) static SAVE_SCRIPT: LazyLock<Lua> = LazyLock::new(|| with_epoch(SAVE));
pub(super) static BUMP_SCRIPT: LazyLock<Lua> = LazyLock::new(|| with_epoch(BUMP));

/// A script's text and its hash: commands send `EVALSHA` (no script text per command), and the
/// text once per server that lacks it.
pub(super) struct Lua {
    pub(super) text: String,
    pub(super) script: redis::Script,
}

fn with_epoch(body: &str) -> Lua {
    let text = format!("{EPOCH}\n{body}");
    Lua {
        script: redis::Script::new(&text),
        text,
    }
}

/// One call of a script: its keys and arguments.
pub(super) struct Call {
    pub(super) lua: &'static Lua,
    pub(super) keys: Vec<String>,
    pub(super) args: Vec<String>,
}

impl Call {
    /// Adds an argument.
    pub(super) fn arg(&mut self, arg: impl ToString) -> &mut Call {
        self.args.push(arg.to_string());
        self
    }
}

/// What this instance knows of one bucket's epoch.
#[derive(Debug, Default)]
pub(super) struct Epoch {
    /// The latest epoch an answer carried, in this instance's clock (Unix ms: the answer's
    /// epoch shifted by the difference between Redis's clock and ours); 0 before the
    /// first. Only ever moves forward.
    since_ms: AtomicU64,
    /// When something was last possibly lost (Unix ms): a failed save, an outage seen by a
    /// load, a move to another Sentinel primary, until an answer carried it into the epoch.
    loss_ms: AtomicU64,
    /// Whether a task is telling Redis of a loss.
    pub(super) bumping: AtomicBool,
    /// Until when loads skip Redis after a failure (Unix ms; 0: not skipping).
    pub(super) skip_until_ms: AtomicU64,
}

impl Epoch {
    /// Something may have been lost now: the next command moves the epoch here.
    pub(super) fn mark_loss(&self) {
        self.loss_ms
            .fetch_max(unix_ms(SystemTime::now()), Ordering::AcqRel);
    }

    /// Whether a loss is marked and not yet told to Redis.
    pub(super) fn loss_marked(&self) -> bool {
        self.loss_ms.load(Ordering::Acquire) != 0
    }

    /// An invocation of `script` with the epoch key, `key` (when given), and how long ago this
    /// instance marked a possible loss (-1: none). Returns the mark it carries.
    pub(super) fn invocation(
        &self,
        lua: &'static Lua,
        epoch_key: &str,
        key: Option<String>,
    ) -> (Call, u64) {
        let failed = self.loss_ms.load(Ordering::Acquire);
        let age = match failed {
            0 => -1,
            at => i64::try_from(unix_ms(SystemTime::now()).saturating_sub(at)).unwrap_or(i64::MAX),
        };
        let mut call = Call {
            lua,
            keys: [Some(epoch_key.to_owned()), key]
                .into_iter()
                .flatten()
                .collect(),
            args: Vec::new(),
        };
        call.arg(age);
        (call, failed)
    }

    /// Takes `[epoch, now]` (Redis's clock) from an answer: the epoch moves to this
    /// instance's clock (so clocks that differ between instances and Redis do not matter)
    /// and only forward; the loss mark the command carried (`failed`) is cleared.
    pub(super) fn answered(&self, answer: &[String], failed: u64) {
        let parse = |i: usize| answer.get(i).and_then(|v| v.parse::<u64>().ok());
        if let (Some(epoch), Some(now)) = (parse(0), parse(1)) {
            let ago = now.saturating_sub(epoch);
            self.since_ms.fetch_max(
                unix_ms(SystemTime::now()).saturating_sub(ago),
                Ordering::AcqRel,
            );
            if failed != 0 {
                let _ =
                    self.loss_ms
                        .compare_exchange(failed, 0, Ordering::AcqRel, Ordering::Relaxed);
            }
        }
    }

    /// Until when this bucket's positions may be missing: `ttl` after its epoch or a loss
    /// marked since.
    pub(super) fn lost_until(&self, ttl: Duration) -> Option<SystemTime> {
        let since = self
            .since_ms
            .load(Ordering::Acquire)
            .max(self.loss_ms.load(Ordering::Acquire));
        if since == 0 {
            return None;
        }
        UNIX_EPOCH
            .checked_add(Duration::from_millis(since))?
            .checked_add(ttl)
    }

    /// Loads skip Redis for a second.
    pub(super) fn skip(&self) {
        let until = unix_ms(SystemTime::now()).saturating_add(1_000);
        self.skip_until_ms.store(until, Ordering::Release);
    }

    /// Whether loads skip Redis now.
    pub(super) fn skipping(&self) -> bool {
        self.skip_until_ms.load(Ordering::Acquire) > unix_ms(SystemTime::now())
    }
}

pub(super) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
