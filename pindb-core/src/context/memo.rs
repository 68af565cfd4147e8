//! The context's last replica read, kept so that the next read that would decide the same
//! takes no lock ([`ReadMemo`]).
//!
//! A read decision takes the context's lock: guards, pins, the required position and the
//! kept replica live there. Once a context has read a set from the replica it keeps, past the
//! reads whose count the rules tell apart ([`SetState::settled`](super::SetState::settled)),
//! the next read of the set decides the same as long as the context is unchanged and that
//! replica still fits. Every change of a context takes its lock, and every lock counts
//! (`Context::lock`): a memo is valid only at the count it was made at. The replica's own
//! state (health, lag, host) is read again each time, lock-free, as the full decision would.

use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};

use super::Sticky;
use crate::lsn::Lsn;

/// The kept replica of a settled read, as of lock count `valid_at` (0: none, since counts
/// start at 1 when the first lock is taken). A seqlock: written under the context's lock,
/// read without it.
#[derive(Default)]
pub(super) struct ReadMemo {
    /// How many times the context's lock was taken: bumped under the lock, before anything
    /// it guards changes.
    locks: AtomicU64,
    valid_at: AtomicU64,
    router: AtomicU64,
    set: AtomicUsize,
    replica: AtomicUsize,
    generation: AtomicU64,
    /// The position required of the replica (when `required_some`).
    required: AtomicU64,
    required_some: AtomicBool,
}

/// What a memo says: the set, its kept replica, and the position that replica must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Remembered {
    pub(crate) set: usize,
    pub(crate) replica: Sticky,
    pub(crate) required: Option<Lsn>,
}

impl ReadMemo {
    /// Under the context's lock, before anything changes: every memo made before is void.
    pub(super) fn count_lock(&self) {
        // One writer at a time (the lock is held): no read-modify-write needed.
        let count = self.locks.load(Ordering::Relaxed).wrapping_add(1);
        self.locks.store(count, Ordering::Relaxed);
        // The count is seen before anything this lock changes (seqlock writer).
        fence(Ordering::Release);
    }

    /// Under the context's lock, its last change: the next read of the set decides as `memo`
    /// says while nothing changes.
    pub(super) fn remember(&self, memo: Remembered) {
        self.router.store(memo.replica.router, Ordering::Relaxed);
        self.set.store(memo.set, Ordering::Relaxed);
        self.replica.store(memo.replica.replica, Ordering::Relaxed);
        self.generation
            .store(memo.replica.generation, Ordering::Relaxed);
        self.required
            .store(memo.required.map_or(0, |l| l.0), Ordering::Relaxed);
        self.required_some
            .store(memo.required.is_some(), Ordering::Relaxed);
        self.valid_at
            .store(self.locks.load(Ordering::Relaxed), Ordering::Release);
    }

    /// The memo, if no lock was taken since it was made. Takes no lock.
    pub(super) fn recall(&self) -> Option<Remembered> {
        let count = self.locks.load(Ordering::Acquire);
        if count == 0 || self.valid_at.load(Ordering::Acquire) != count {
            return None;
        }
        let memo = Remembered {
            set: self.set.load(Ordering::Relaxed),
            replica: Sticky {
                router: self.router.load(Ordering::Relaxed),
                replica: self.replica.load(Ordering::Relaxed),
                generation: self.generation.load(Ordering::Relaxed),
            },
            required: self
                .required_some
                .load(Ordering::Relaxed)
                .then(|| Lsn(self.required.load(Ordering::Relaxed))),
        };
        // A lock taken while the fields were read shows here (seqlock reader).
        fence(Ordering::Acquire);
        (self.locks.load(Ordering::Relaxed) == count).then_some(memo)
    }

    /// How many times the context's lock was taken.
    #[cfg(any(test, feature = "test-hooks"))]
    pub(super) fn locks(&self) -> u64 {
        self.locks.load(Ordering::Relaxed)
    }
}
