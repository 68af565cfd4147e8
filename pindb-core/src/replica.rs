//! Replica choice: which of a set's replicas a new context reads from.
//!
//! This module owns the per-set policy state (the round-robin counter). It picks an index and
//! nothing else: stickiness within a context is the router's, via the context's state.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::ReplicaPolicy;

/// Per-set choice state.
#[derive(Debug, Default)]
pub(crate) struct Picker {
    next: AtomicUsize,
}

impl Picker {
    /// An index in `0..count`. `count` must be non-zero (the router checks).
    pub(crate) fn pick(&self, policy: ReplicaPolicy, count: usize) -> usize {
        debug_assert!(count > 0);
        match policy {
            ReplicaPolicy::Random => fastrand::usize(..count),
            // LeastLag is refused by config validation until the monitor exists; should a
            // hand-built config reach here, round-robin is the safe stand-in.
            ReplicaPolicy::RoundRobin | ReplicaPolicy::LeastLag => {
                self.next.fetch_add(1, Ordering::Relaxed) % count
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_cycles() {
        let p = Picker::default();
        let picks: Vec<_> = (0..6)
            .map(|_| p.pick(ReplicaPolicy::RoundRobin, 3))
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn random_stays_in_range_and_uses_every_replica() {
        let p = Picker::default();
        let mut seen = [0usize; 3];
        for _ in 0..3000 {
            seen[p.pick(ReplicaPolicy::Random, 3)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 500), "{seen:?}");
    }
}
