//! Interleaved A/B measurement for the benches: each round runs both sides in random order for
//! a batch of operations; the result is the ratio of the medians of the per-operation times,
//! with its spread over blocks of rounds, so machine noise between the sides cancels instead
//! of landing on one of them.

use std::future::Future;
use std::time::Duration;

/// Rounds per comparison.
pub const ROUNDS: usize = 60;
/// Rounds per block, for the spread.
pub const BLOCK: usize = 10;

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Per-operation times (ns) of `plain` and `routed`, run `ROUNDS` times in random order; each
/// call runs `batch` operations and returns how long they took.
pub async fn interleave<A, B, FA, FB>(
    batch: u32,
    mut plain: A,
    mut routed: B,
) -> (Vec<f64>, Vec<f64>)
where
    A: FnMut() -> FA,
    B: FnMut() -> FB,
    FA: Future<Output = Duration>,
    FB: Future<Output = Duration>,
{
    let mut rng = fastrand::Rng::with_seed(7);
    let (mut p, mut r) = (Vec::new(), Vec::new());
    let per = |d: Duration| d.as_nanos() as f64 / f64::from(batch);
    for _ in 0..ROUNDS {
        if rng.bool() {
            p.push(per(plain().await));
            r.push(per(routed().await));
        } else {
            r.push(per(routed().await));
            p.push(per(plain().await));
        }
    }
    (p, r)
}

/// [`interleave`] for synchronous sides.
pub fn interleave_sync(
    batch: u32,
    mut plain: impl FnMut() -> Duration,
    mut routed: impl FnMut() -> Duration,
) -> (Vec<f64>, Vec<f64>) {
    let mut rng = fastrand::Rng::with_seed(7);
    let (mut p, mut r) = (Vec::new(), Vec::new());
    let per = |d: Duration| d.as_nanos() as f64 / f64::from(batch);
    for _ in 0..ROUNDS {
        if rng.bool() {
            p.push(per(plain()));
            r.push(per(routed()));
        } else {
            r.push(per(routed()));
            p.push(per(plain()));
        }
    }
    (p, r)
}

/// Prints `name: plain X µs, routed Y µs, routed/plain R (blocks of 10 rounds: lo..hi)` and
/// returns the ratio.
pub fn report(name: &str, plain: &[f64], routed: &[f64]) -> f64 {
    let ratio = median(routed) / median(plain);
    let blocks: Vec<f64> = plain
        .chunks(BLOCK)
        .zip(routed.chunks(BLOCK))
        .map(|(p, r)| median(r) / median(p))
        .collect();
    let lo = blocks.iter().copied().fold(f64::MAX, f64::min);
    let hi = blocks.iter().copied().fold(f64::MIN, f64::max);
    println!(
        "{name}: plain {:.2} µs, routed {:.2} µs, routed/plain {ratio:.3} (blocks of {BLOCK} rounds: {lo:.3}..{hi:.3})",
        median(plain) / 1000.0,
        median(routed) / 1000.0,
    );
    ratio
}
