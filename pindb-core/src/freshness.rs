//! How fresh a replica is: the proof the monitor finds for its replayed position
//! ([`Proof`]), and the monotonic clock proofs and reads are compared on (microseconds; the
//! wall clock can jump back).

use std::sync::OnceLock;
use std::time::Instant;

/// The first use: instants before it encode as negative numbers.
fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// `at` in microseconds since [`base`] (negative before it), clamped clear of the
/// sentinels.
pub(crate) fn micros(at: Instant) -> i64 {
    let base = base();
    let us = |d: std::time::Duration| i64::try_from(d.as_micros()).unwrap_or(i64::MAX - 1);
    match at.checked_duration_since(base) {
        Some(after) => us(after).min(i64::MAX - 1),
        None => (-us(base.duration_since(at))).max(i64::MIN + 1),
    }
}

/// Now, in microseconds.
pub(crate) fn now() -> i64 {
    micros(Instant::now())
}

/// What proves how fresh a replica's replayed position is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Proof {
    /// It is the master itself, opened read-only (`emulate_replicas`).
    Always,
    /// Every transaction the master committed before this instant has been replayed: the
    /// time a master sample at or below the position was asked for.
    At(std::time::Instant),
    /// Nothing: no master sample at or below its position, or no position at all.
    None,
}

#[cfg(test)]
impl Proof {
    /// Fresh as of `ms` ago: `ms` of lag now, growing from there.
    pub(crate) fn ago(ms: u64) -> Proof {
        let now = std::time::Instant::now();
        Proof::At(
            now.checked_sub(std::time::Duration::from_millis(ms))
                .unwrap_or(now),
        )
    }
}
