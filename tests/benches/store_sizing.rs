#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API

//! Sizing the positions store on a Redis Cluster (three primaries with a replica each, of its
//! own, on loopback ports 26740-26745): fills it with 1,000,000 keys through
//! `RedisStore::save` (one set's position each, 64 saves in flight), then loads them back, and
//! prints saves/s, loads/s and the memory each key takes on the primaries (`used_memory`
//! before and after, and `MEMORY USAGE` of one key). `PINDB_SIZING_KEYS` sets another count.
//!
//! `cargo bench -p pindb-scenarios --bench store_sizing` (run by `scripts/bench`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use pindb_core::{Lsn, RedisStore, Store};
use pindb_testkit::RedisCluster;

const IN_FLIGHT: usize = 64;

fn used_memory(redis: &RedisCluster) -> u64 {
    redis
        .primaries()
        .iter()
        .map(|p| {
            let out = std::process::Command::new("redis-cli")
                .args(["-p", &p.to_string(), "INFO", "memory"])
                .output()
                .expect("redis-cli runs");
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .find_map(|l| l.strip_prefix("used_memory:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum()
}

fn main() {
    // `cargo test --benches` runs benches with `--test`-like flags: nothing to do then.
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let keys: usize = std::env::var("PINDB_SIZING_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let redis = RedisCluster::start(26740);
    let store = rt.block_on(async {
        RedisStore::cluster(&redis.seed_urls(), "pindb:lsn:", Duration::from_secs(1)).unwrap()
    });
    let store = Arc::new(store);
    let ttl = Duration::from_secs(3600);
    let before = used_memory(&redis);
    let run = |save: bool| {
        let store = Arc::clone(&store);
        rt.block_on(async move {
            let started = Instant::now();
            let failed = futures_util::stream::iter(0..keys)
                .map(|i| {
                    let store = Arc::clone(&store);
                    async move {
                        let key = format!("user:{i}");
                        if save {
                            let position = [("default".to_owned(), Lsn(0x1_6B37_4D48 + i as u64))];
                            store.save(&key, &position, ttl).await.is_err()
                        } else {
                            store.load(&key).await.map_or(true, |p| p.len() != 1)
                        }
                    }
                })
                .buffer_unordered(IN_FLIGHT)
                .filter(|failed| std::future::ready(*failed))
                .count()
                .await;
            (started.elapsed(), failed)
        })
    };
    let (saved_in, save_failures) = run(true);
    let after = used_memory(&redis);
    let (loaded_in, load_failures) = run(false);
    let sample = redis.primary_with("pindb:lsn:{*}user:1").unwrap_or(0);
    let usage = std::process::Command::new("redis-cli")
        .args([
            "-c",
            "-p",
            &sample.to_string(),
            "--scan",
            "--pattern",
            "pindb:lsn:{*}user:1",
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .ok()
        .and_then(|key| {
            let out = std::process::Command::new("redis-cli")
                .args(["-c", "-p", &sample.to_string(), "MEMORY", "USAGE", &key])
                .output()
                .ok()?;
            Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        })
        .unwrap_or_default();
    let per_second = |d: Duration| keys as f64 / d.as_secs_f64();
    println!(
        "store sizing: {keys} keys on a 3-shard Redis Cluster, {IN_FLIGHT} commands in flight"
    );
    println!(
        "  saves: {:.0}/s ({saved_in:.1?}, {save_failures} failed)",
        per_second(saved_in)
    );
    println!(
        "  loads: {:.0}/s ({loaded_in:.1?}, {load_failures} failed)",
        per_second(loaded_in)
    );
    println!(
        "  memory on the primaries: {:.0} bytes per key (used_memory), MEMORY USAGE of one key: {usage}",
        after.saturating_sub(before) as f64 / keys as f64
    );
}
