//! Starting and asking the Redis servers of a test: `redis-cli`, signals, ports.

use std::process::Command;
use std::time::{Duration, Instant};

/// Sends `signal` (`-STOP`, `-CONT`...) to the process `pid`.
pub(crate) fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill {signal} {pid} failed");
}

/// Panics if something already listens on `port` (a server a killed test left behind would
/// otherwise be used silently).
pub(crate) fn port_free(port: u16) {
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "port {port} is taken (a Redis left by an earlier run? `pkill -f 'redis-server.*{port}'`)"
    );
}

pub(crate) fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing answers on port {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `redis-cli -p port args...`, its output (empty when it fails).
pub(crate) fn cli(port: u16, args: &[&str]) -> String {
    // A frozen server accepts and never answers: bounded.
    Command::new("timeout")
        .args(["5", "redis-cli", "-p", &port.to_string()])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// [`cli`] for an answer a test relies on: panics, naming what happened, when `redis-cli`
/// fails, times out or the server answers an error (an empty answer must not read as "no").
pub(crate) fn cli_checked(port: u16, args: &[&str]) -> String {
    let out = Command::new("timeout")
        .args(["5", "redis-cli", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && !stdout.starts_with("ERR") && !stdout.starts_with("(error)"),
        "redis-cli -p {port} {args:?} failed ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
