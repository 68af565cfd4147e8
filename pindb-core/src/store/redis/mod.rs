//! [`RedisStore`]: positions in Redis, shared by every application instance, with an epoch
//! that tells every instance when Redis may have lost some.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use redis::aio::ConnectionManagerConfig;

use super::{Positions, Store, StoreFuture};
use crate::error::PinDbError;
use crate::lsn::Lsn;

mod cluster;
mod epoch;
mod target;

use epoch::{Epoch, BUMP_SCRIPT, LOAD_SCRIPT, SAVE_SCRIPT};
use target::Target;

/// How many buckets of keys a Redis Cluster spreads over its shards, each with an epoch of its
/// own: a shard's failover or restart, or a slot moved, makes only the keys of the buckets it
/// holds forgetful (about 1/shards of them).
const CLUSTER_BUCKETS: usize = 256;

/// Positions in Redis (a hash per key, `set -> X/Y`, with a TTL), shared by every
/// application instance. Commands time out quickly; after a failure loads skip the store
/// (on a cluster, the key's bucket) for a second (keyed reads go to the master), then try
/// again.
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
/// followed without a restart, even one whose old primary stays up. A promoted replica has
/// another `run_id`, and replication is asynchronous: what the old primary acknowledged last
/// may be lost, so the first command on the new primary moves the epoch there, as after a
/// restart (keyed reads go to the masters for `ttl_seconds`); an instance that moves to
/// another primary marks a loss too (covering its own last saves to the old one), and so
/// does a command that succeeded on a primary left behind.
///
/// Or a Redis Cluster ([`RedisStore::cluster`]): keys fall in 256 buckets, each a hash tag
/// (`<prefix>{<bucket>}<key>`) with an epoch of its own (`<prefix>{<bucket>}\0epoch`), so every
/// command stays in one slot and a shard that fails over or restarts, or a slot moved to
/// another shard (its epoch arrives vouched by the other shard), makes only its own buckets'
/// keys go to the masters for `ttl_seconds`. [`RedisStore::new`] on a cluster node fails every
/// command (`MOVED`, `CROSSSLOT`): keyed reads go to the masters.
///
/// The epoch is vouched by the server's `run_id` and its replication id, which every
/// promotion renews: a failback to the old primary is noticed like a failover. Redis also
/// renews it when it creates or frees its replication backlog (a first replica or a
/// `PSYNC`-based backup attaching, `repl-backlog-ttl` passing without replicas): each time,
/// keyed reads go to the masters for `ttl_seconds` (`repl-backlog-ttl 0` avoids the second).
/// Earlier pindb builds vouched by `run_id` alone: while both run (a rolling upgrade), each
/// moves the other's epochs, and keyed reads go to the masters until `ttl_seconds` after the
/// last old instance stops.
///
/// Needs: `maxmemory-policy` `noeviction` (a policy that evicts may drop a cold user's
/// positions and keep the hot epoch; with `noeviction` a full Redis fails saves, which is
/// noticed). With Sentinel: `replica-read-only yes` (the default: a
/// demoted primary then refuses the scripts), no password or TLS on the data nodes (not
/// supported yet), and `min-replicas-to-write 1` with `min-replicas-max-lag` below
/// `down-after-milliseconds` (an old primary cut off from its replica then refuses saves
/// instead of acknowledging what will be lost: without it, a save on an old primary that
/// stays up can be lost unnoticed by other instances until this instance's watch moves, 0.5 s
/// plus one lookup after the Sentinels agree, or never if it cannot reach the Sentinels).
/// Not detected: an instance that cannot reach Redis while the others can (its failed save
/// is told to Redis, and so to them, only when it reaches Redis again); a Redis stalled for
/// longer than two timeouts, whose queued save another instance's load may overtake when it
/// resumes.
pub struct RedisStore {
    target: Arc<Target>,
    prefix: String,
    url: String,
    timeout: Duration,
    /// One bucket on a single Redis (Sentinel included), [`CLUSTER_BUCKETS`] on a cluster.
    buckets: Box<[Arc<Epoch>]>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.url)
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// A key's bucket in the store: its epoch, its epoch key and the key itself in Redis.
struct Bucket<'a> {
    epoch: &'a Arc<Epoch>,
    epoch_key: String,
    key: String,
}

impl RedisStore {
    /// A store on the Redis at `url`. Connects lazily: Redis being down at start-up
    /// does not stop the application. Must be called inside a tokio runtime.
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<RedisStore, PinDbError> {
        let target = Target::server(url, manager_config(timeout))?;
        let buckets = [Arc::default()].into();
        Ok(RedisStore::on(
            target,
            buckets,
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
        let store_epoch = Arc::new(Epoch::default());
        let config = manager_config(timeout);
        let target = Target::sentinel(&sentinels, master, config, timeout, store_epoch.clone())?;
        let described = format!("Redis Sentinel `{master}` ({})", sentinels.join(", "));
        Ok(RedisStore::on(
            target,
            [store_epoch].into(),
            described,
            prefix,
            timeout,
        ))
    }

    /// A store on the Redis Cluster that the nodes at `seeds` (`redis://host:port` each, any
    /// of its nodes) belong to. Keys spread over its shards in 256 buckets; the cluster's
    /// failovers, restarts and slot moves are followed without a restart, and make only the
    /// buckets they touch forgetful. Connects lazily, as [`RedisStore::new`]; each command is
    /// bounded by `timeout`, redirections and retries included. The prefix must not hold `{`
    /// or `}` (the hash tag is pindb's).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), pindb_core::PinDbError> {
    /// let seeds = ["redis://10.0.0.7:6379", "redis://10.0.0.8:6379", "redis://10.0.0.9:6379"];
    /// let store = pindb_core::RedisStore::cluster(&seeds, "pindb:lsn:", std::time::Duration::from_millis(100))?;
    /// # Ok(()) }
    /// ```
    pub fn cluster(
        seeds: &[impl AsRef<str>],
        prefix: &str,
        timeout: Duration,
    ) -> Result<RedisStore, PinDbError> {
        if prefix.contains(['{', '}']) {
            return Err(PinDbError::config(
                "stickiness",
                format!(
                    "the Redis prefix `{prefix}` holds `{{` or `}}`: on a Redis Cluster pindb \
                     puts its own hash tag after the prefix; remove them from `redis_prefix`"
                ),
            ));
        }
        let seeds: Vec<String> = seeds.iter().map(|s| s.as_ref().to_owned()).collect();
        let target = Target::cluster(&seeds, timeout)?;
        let described = format!("Redis Cluster ({})", seeds.join(", "));
        let buckets = (0..CLUSTER_BUCKETS).map(|_| Arc::default()).collect();
        Ok(RedisStore::on(target, buckets, described, prefix, timeout))
    }

    fn on(
        target: Target,
        buckets: Box<[Arc<Epoch>]>,
        url: String,
        prefix: &str,
        timeout: Duration,
    ) -> RedisStore {
        RedisStore {
            target: Arc::new(target),
            prefix: prefix.to_owned(),
            url,
            timeout,
            buckets,
        }
    }

    /// `key`'s bucket. On a cluster, the bucket is a hash of the key that every instance
    /// computes alike (FNV-1a), and names the hash tag of both Redis keys.
    fn bucket(&self, key: &str) -> Bucket<'_> {
        if self.buckets.len() == 1 {
            return Bucket {
                epoch: &self.buckets[0],
                epoch_key: format!("{}\0epoch", self.prefix),
                key: format!("{}{key}", self.prefix),
            };
        }
        let n = self.index(key);
        let tag = format!("{}{{{n}}}", self.prefix);
        Bucket {
            epoch: &self.buckets[n],
            epoch_key: format!("{tag}\0epoch"),
            key: format!("{tag}{key}"),
        }
    }

    /// The number of `key`'s bucket.
    fn index(&self, key: &str) -> usize {
        let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        usize::try_from(hash % self.buckets.len() as u64).unwrap_or(0)
    }

    fn unavailable(&self, epoch: &Epoch, e: impl std::fmt::Display) -> PinDbError {
        epoch.skip();
        PinDbError::StoreUnavailable {
            store: "redis",
            message: format!("{} ({e})", self.url),
        }
    }

    /// Runs `call` on the target, bounded by the timeout; a failure skips the bucket's loads
    /// for a second.
    async fn run<T: redis::FromRedisValue>(
        &self,
        epoch: &Epoch,
        call: epoch::Call,
    ) -> Result<T, PinDbError> {
        match self.target.command(&call, self.timeout).await {
            Ok((answer, left_behind)) => {
                // It may have landed on a primary the store has left since (Sentinel): after
                // the loss that move marked.
                if left_behind {
                    epoch.mark_loss();
                }
                Ok(answer)
            }
            Err(e) => Err(self.unavailable(epoch, e)),
        }
    }

    /// A save failed: marks the loss, and tells Redis as soon as it answers again (tried
    /// after 100 ms, then less often up to every second, for at most `ttl`, while the store
    /// lives), so every instance learns of it even if this one gets no more traffic.
    fn save_failed(&self, bucket: &Bucket<'_>, ttl: Duration) {
        let epoch = Arc::clone(bucket.epoch);
        epoch.mark_loss();
        if epoch.bumping.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            epoch.bumping.store(false, Ordering::Release);
            return;
        };
        // Weak: a store dropped meanwhile (its Sentinel watch with it) is not kept alive.
        let target = Arc::downgrade(&self.target);
        let epoch_key = bucket.epoch_key.clone();
        let timeout = self.timeout;
        runtime.spawn(async move {
            // Cleared however the task ends (its runtime may shut down first).
            let _bumping = Bumping(Arc::clone(&epoch));
            let give_up = Instant::now() + ttl;
            // 100 ms, doubling to 1 s: up to 256 buckets may be waiting through one outage.
            let mut pause = Duration::from_millis(100);
            while Instant::now() < give_up {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
                let Some(target) = target.upgrade() else {
                    break;
                };
                if !epoch.loss_marked() {
                    break;
                }
                let (call, failed) = epoch.invocation(&BUMP_SCRIPT, &epoch_key, None);
                if let Ok((answer, _)) = target.command::<Vec<String>>(&call, timeout).await {
                    // Every instance sees it now.
                    epoch.answered(&answer, failed);
                    break;
                }
            }
        });
    }
}

/// Lets another task tell Redis of a loss once this one ends.
struct Bumping(Arc<Epoch>);

impl Drop for Bumping {
    fn drop(&mut self) {
        self.0.bumping.store(false, Ordering::Release);
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

impl Store for RedisStore {
    fn load<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Positions> {
        Box::pin(async move {
            let bucket = self.bucket(key);
            let epoch = bucket.epoch;
            if epoch.skipping() {
                return Err(PinDbError::StoreUnavailable {
                    store: "redis",
                    message: format!("{} failed less than a second ago", self.url),
                });
            }
            let (call, failed) =
                epoch.invocation(&LOAD_SCRIPT, &bucket.epoch_key, Some(bucket.key));
            let (at, now, raw): (String, String, Vec<(String, String)>) =
                match self.run(epoch, call).await {
                    Ok(answer) => answer,
                    Err(e) => {
                        // An outage: other instances' saves may be failing now too. The
                        // next answer moves the epoch, so nobody trusts what Redis lacks.
                        epoch.mark_loss();
                        return Err(e);
                    }
                };
            epoch.answered(&[at, now], failed);
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
            let bucket = self.bucket(key);
            let epoch = bucket.epoch;
            let (mut call, failed) =
                epoch.invocation(&SAVE_SCRIPT, &bucket.epoch_key, Some(bucket.key.clone()));
            call.arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1));
            for (set, lsn) in positions {
                call.arg(set).arg(lsn.to_string());
            }
            match self.run::<Vec<String>>(epoch, call).await {
                Ok(answer) => {
                    epoch.answered(&answer, failed);
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
                    self.save_failed(&bucket, ttl);
                    let (bump, failed) = epoch.invocation(&BUMP_SCRIPT, &bucket.epoch_key, None);
                    if let Ok(answer) = self.run::<Vec<String>>(epoch, bump).await {
                        epoch.answered(&answer, failed);
                    }
                    Err(e)
                }
            }
        })
    }

    fn name(&self) -> &'static str {
        "redis"
    }

    fn lost_until(&self, key: &str, ttl: Duration) -> Option<SystemTime> {
        self.buckets[self.index(key)].lost_until(ttl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every instance, of every version, must file a key under the same bucket and names: a
    /// rolling deploy that moved them would load one user's positions from where another
    /// version never saved them, in a bucket it trusts.
    #[tokio::test]
    async fn the_key_layout_is_fixed() {
        let timeout = Duration::from_millis(100);
        let cluster = RedisStore::cluster(&["redis://127.0.0.1:1/"], "p:", timeout).unwrap();
        let bucket = cluster.bucket("user1");
        assert_eq!(cluster.index("user1"), 89);
        assert_eq!(bucket.key, "p:{89}user1");
        assert_eq!(bucket.epoch_key, "p:{89}\0epoch");
        assert_eq!(cluster.index(""), 37);
        let server = RedisStore::new("redis://127.0.0.1:1/", "p:", timeout).unwrap();
        let bucket = server.bucket("user1");
        assert_eq!(
            (bucket.key.as_str(), bucket.epoch_key.as_str()),
            ("p:user1", "p:\0epoch")
        );
    }
}
