//! The primary's CPU time, read from `/proc`.

use super::backend::Backend;

/// The primary's CPU time so far, in clock ticks: PostgreSQL's postmaster and its children
/// (utime + stime), or MariaDB's `mariadbd` (one process: its threads' time included).
pub(super) fn master_cpu_ticks(backend: Backend) -> Option<u64> {
    let dir = std::env::var("PINDB_CLUSTER_DIR").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../target/pindb-cluster").to_owned()
    });
    if backend == Backend::Mariadb {
        return mariadbd_ticks(&dir);
    }
    let pid: u32 = std::fs::read_to_string(format!("{dir}/primary/postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()?;
    let mut total = 0;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the `(comm)`: state ppid ... utime(14th) stime(15th).
        let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let this: u32 = entry.file_name().to_string_lossy().parse().unwrap_or(0);
        let ppid: u32 = fields.get(1).and_then(|p| p.parse().ok()).unwrap_or(0);
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        if this == pid {
            // The postmaster reaps its backends, so their CPU ends up in its cutime/cstime:
            // the total only grows, whatever connections come and go.
            total += ticks(11) + ticks(12) + ticks(13) + ticks(14);
        } else if ppid == pid {
            total += ticks(11) + ticks(12);
        }
    }
    Some(total)
}

/// utime + stime of the MariaDB primary (`scripts/mariadb`'s pid file), with those of the
/// children it reaped.
fn mariadbd_ticks(dir: &str) -> Option<u64> {
    let pid = std::fs::read_to_string(format!("{dir}/mariadb/primary/mariadbd.pid")).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).ok()?;
    let rest = stat.rsplit_once(") ")?.1;
    let fields: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    Some(fields.iter().sum())
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 when unknown).
pub(super) fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}
