//! [`Proxy`]: a TCP proxy of a test's own in front of a database, to make network faults
//! real: a server that freezes mid-query, connections cut under a checkout, an endpoint that
//! accepts and never answers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// `host:port` of a URL (`scheme://user:password@host:port/database?options`).
pub fn address(url: &str) -> String {
    let tail = url.rsplit('@').next().unwrap_or_default();
    tail.split('/').next().unwrap_or_default().to_owned()
}

/// `url` with its `host:port` replaced by `address` (`127.0.0.1:port` of a proxy...), the
/// user, password, database and options kept: the way to put a server of either database
/// behind something else.
pub fn with_address(url: &str, address: &str) -> String {
    let (head, tail) = url
        .rsplit_once('@')
        .unwrap_or_else(|| panic!("`{url}` names no user"));
    let rest = tail.find('/').map_or("", |at| &tail[at..]);
    format!("{head}@{address}{rest}")
}

/// A loopback TCP proxy to `target`. Dropping it closes the listener and every connection.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    frozen: Arc<AtomicBool>,
    /// The accept loop, then one task per forwarded direction.
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
    /// Connections accepted so far.
    accepted: Arc<std::sync::atomic::AtomicUsize>,
}

impl Proxy {
    /// Forwards to `target` (`host:port`).
    pub async fn start(target: &str) -> Proxy {
        Proxy::listen(vec![target.to_owned()]).await
    }

    /// Forwards each new connection to the next of `targets` in turn: a load-balanced
    /// reader endpoint (a Kubernetes Service, HAProxy, a cloud reader endpoint).
    pub async fn round_robin(targets: &[&str]) -> Proxy {
        Proxy::listen(targets.iter().map(|t| (*t).to_owned()).collect()).await
    }

    /// Accepts connections and never answers: a host whose server hangs, or whose packets
    /// vanish after the TCP handshake.
    pub async fn black_hole() -> Proxy {
        Proxy::listen(Vec::new()).await
    }

    /// A black hole in front of `target` until [`Proxy::thaw`]: connections accepted while it
    /// is frozen are never answered, later ones are forwarded (a server that hung, then came
    /// back).
    pub async fn black_hole_until_thawed(target: &str) -> Proxy {
        let proxy = Proxy::listen(vec![target.to_owned()]).await;
        proxy.freeze();
        proxy
    }

    async fn listen(targets: Vec<String>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a proxy");
        let addr = listener.local_addr().expect("proxy address");
        let frozen = Arc::new(AtomicBool::new(false));
        let tasks = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (f, t, a) = (
            Arc::clone(&frozen),
            Arc::clone(&tasks),
            Arc::clone(&accepted),
        );
        let accept = tokio::spawn(async move {
            let mut held = Vec::new();
            let mut next = 0usize;
            while let Ok((client, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                next = next.wrapping_add(1);
                let target = (!targets.is_empty()).then(|| &targets[next % targets.len()]);
                let Some(target) = target.filter(|_| !f.load(Ordering::SeqCst)) else {
                    held.push(client); // never read, never answered, even after a thaw
                    continue;
                };
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let mut tasks = t.lock().unwrap();
                tasks.push(tokio::spawn(pipe(cr, sw, Arc::clone(&f))).abort_handle());
                tasks.push(tokio::spawn(pipe(sr, cw, Arc::clone(&f))).abort_handle());
            }
        });
        tasks.lock().unwrap().push(accept.abort_handle());
        Proxy {
            addr,
            frozen,
            tasks,
            accepted,
        }
    }

    /// How many connections it has accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// The port to point a database URL at.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Stops forwarding bytes in both directions; connections stay open (a server or network
    /// that hangs mid-query).
    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }

    /// Forwards again.
    pub fn thaw(&self) {
        self.frozen.store(false, Ordering::SeqCst);
    }

    /// Closes every connection and the listener: the server is gone (connections reset, new
    /// ones refused).
    pub fn stop(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    /// Closes the listener and keeps every forwarded connection: new connections are refused
    /// while the statements under way go on (a server that stops listening, its sessions
    /// still running).
    pub fn stop_listening(&self) {
        // The first task is the accept loop, which owns the listener.
        if let Some(accept) = self.tasks.lock().unwrap().first() {
            accept.abort();
        }
    }

    /// Closes every forwarded connection (a server that went away under its clients); new
    /// connections are still accepted.
    pub fn sever(&self) {
        let mut tasks = self.tasks.lock().unwrap();
        // The first task is the accept loop: it keeps running.
        for task in tasks.drain(1..) {
            task.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
