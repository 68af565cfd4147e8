//! A write waiting for a connection to its set's primary when the monitor finds another one
//! (a set given as hosts, `[masters.<set>] url` with several hosts): nothing was sent yet,
//! so the write may go to the new primary instead of waiting out a host that hangs.

use std::time::Duration;

use super::Router;
use crate::populate::Membership;
use crate::topology::SetEntry;

/// A checkout of a set's primary, watched for a promotion elsewhere
/// ([`Router::watch_promotion`]).
pub struct Promotion<'r> {
    router: &'r Router,
    index: usize,
    /// The primary's set, when the database is the primary of a set given as hosts now;
    /// `None`: nothing to watch (a configured master does not move, a replica is no write's
    /// target).
    set: Option<&'r SetEntry>,
}

impl std::fmt::Debug for Promotion<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Promotion")
            .field("index", &self.index)
            .field("set", &self.set.map(|set| &set.name))
            .finish()
    }
}

impl Router {
    /// Watches a checkout of the database at `index`, begun now, for a promotion: if it is
    /// the primary of a set given as hosts, [`Promotion::moved`] says which host is the
    /// primary once the monitor has found another one. An adapter asks it only while the
    /// checkout is *pending*, never once a statement was sent: only a write that never
    /// reached the old primary may move.
    pub fn watch_promotion(&self, index: usize) -> Promotion<'_> {
        let topology = &self.inner.topology;
        let host = matches!(
            topology.databases().get(index).map(|db| &db.membership),
            Some(Membership::Host { .. })
        );
        let set = topology
            .set_entry_of(index)
            .filter(|set| host && set.master() == Some(index));
        Promotion {
            router: self,
            index,
            set,
        }
    }
}

impl Promotion<'_> {
    /// Whether there is anything to watch: the database is the primary of a set given as
    /// hosts now. An adapter that must keep a copy of a statement to send it elsewhere keeps
    /// one only then.
    pub fn armed(&self) -> bool {
        self.set.is_some()
    }

    /// Another host is the set's primary now: its index. `None` while the database is still
    /// the primary, or while the set has none (a failover under way).
    pub fn moved(&self) -> Option<usize> {
        self.set?.master().filter(|&now| now != self.index)
    }

    /// Resolves with [`Promotion::moved`] once it is `Some`, looked at every
    /// `monitor.interval_ms`; never, when there is nothing to watch.
    pub async fn wait(&self) -> usize {
        if self.set.is_none() {
            return std::future::pending().await;
        }
        let every = Duration::from_millis(self.router.inner.config.monitor.interval_ms.max(1));
        loop {
            tokio::time::sleep(every).await;
            if let Some(now) = self.moved() {
                return now;
            }
        }
    }
}
