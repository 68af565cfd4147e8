//! [`Target`]: where the store's commands go: one Redis server, the primary that the Redis
//! Sentinels name for a master name, watched while the store lives, or a Redis Cluster.

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{ErrorKind, RedisError, RedisResult, ServerErrorKind};

use super::cluster::Cluster;
use super::epoch::{Call, Epoch};
use crate::error::PinDbError;

/// How often the Sentinels are asked which server is the primary, besides after a failure: a
/// failover whose old primary stays up (a manual one, a partition) is followed within this.
const WATCH_EVERY: Duration = Duration::from_millis(500);

/// Where commands go.
pub(super) enum Target {
    /// One server, reconnected by the connection manager.
    Server(ConnectionManager),
    /// The primary the Sentinels name.
    Sentinel(Arc<Sentinel>),
    /// A Redis Cluster: the driver follows its slots.
    Cluster(Box<Cluster>),
}

/// The Sentinels of one master name, and the primary they named last.
pub(super) struct Sentinel {
    /// Each Sentinel's URL and a connection to it (kept, reconnected on demand).
    sentinels: Vec<(String, ConnectionManager)>,
    master: String,
    config: ConnectionManagerConfig,
    timeout: Duration,
    now: Mutex<Primary>,
    /// One lookup at a time: commands that find no connection wait for the one under way.
    lookup: tokio::sync::Mutex<()>,
    /// The store's epoch: a loss is marked when commands move to another primary, since what
    /// the old one acknowledged last may not have reached the new one.
    loss: Arc<Epoch>,
}

/// The primary named last, a connection to it (none after a failed command), and the
/// generation of that connection.
#[derive(Default)]
struct Primary {
    address: Option<String>,
    manager: Option<ConnectionManager>,
    generation: u64,
}

/// A connection for the next command, and its generation ([`Target::is_current`]).
struct Connection {
    link: Link,
    generation: u64,
}

/// A connection to one server or to a cluster.
enum Link {
    Server(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Link {
    /// Runs a script: `EVALSHA`, then the script's text where the server lacks it. On a
    /// cluster the text goes with `EVAL` to the key's node alone (the driver's `SCRIPT LOAD`
    /// would need every primary to answer).
    async fn invoke<T: redis::FromRedisValue>(&mut self, call: &Call) -> RedisResult<T> {
        match self {
            Link::Server(manager) => {
                let mut invocation = call.lua.script.prepare_invoke();
                for key in &call.keys {
                    invocation.key(key);
                }
                for arg in &call.args {
                    invocation.arg(arg);
                }
                invocation.invoke_async(manager).await
            }
            Link::Cluster(cluster) => {
                let command = |first: &str, script: &str| {
                    let mut command = redis::cmd(first);
                    command
                        .arg(script)
                        .arg(call.keys.len())
                        .arg(&call.keys)
                        .arg(&call.args);
                    command
                };
                let hash = command("EVALSHA", call.lua.script.get_hash());
                match hash.query_async(cluster).await {
                    Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                        command("EVAL", &call.lua.text).query_async(cluster).await
                    }
                    answered => answered,
                }
            }
        }
    }
}

impl Target {
    pub(super) fn server(url: &str, config: ConnectionManagerConfig) -> Result<Target, PinDbError> {
        let client = redis::Client::open(url).map_err(|e| {
            PinDbError::config(
                "stickiness",
                format!("the Redis URL `{url}` is invalid ({e}); expected redis://host:port/db"),
            )
        })?;
        let manager = ConnectionManager::new_lazy_with_config(client, config).map_err(|e| {
            PinDbError::config("stickiness", format!("cannot set up Redis at `{url}`: {e}"))
        })?;
        Ok(Target::Server(manager))
    }

    /// The primary the Sentinels at `sentinels` name `master`; watched every 0.5 s by a task
    /// that ends with the store.
    pub(super) fn sentinel(
        sentinels: &[String],
        master: &str,
        config: ConnectionManagerConfig,
        timeout: Duration,
        loss: Arc<Epoch>,
    ) -> Result<Target, PinDbError> {
        if sentinels.is_empty() || master.is_empty() {
            return Err(PinDbError::config(
                "stickiness",
                "Redis Sentinel needs the Sentinels' addresses (redis://host:26379) and the \
                 master name they monitor (`sentinel monitor <name> ...`)",
            ));
        }
        let clients = sentinels
            .iter()
            .map(|url| {
                let invalid = |e: RedisError| {
                    PinDbError::config(
                        "stickiness",
                        format!(
                            "the Sentinel URL `{url}` is invalid ({e}); expected redis://host:port"
                        ),
                    )
                };
                let client = redis::Client::open(url.as_str()).map_err(invalid)?;
                let conn = ConnectionManager::new_lazy_with_config(client, config.clone())
                    .map_err(invalid)?;
                Ok((url.clone(), conn))
            })
            .collect::<Result<Vec<_>, PinDbError>>()?;
        let sentinel = Arc::new(Sentinel {
            sentinels: clients,
            master: master.to_owned(),
            config,
            timeout,
            now: Mutex::new(Primary::default()),
            lookup: tokio::sync::Mutex::new(()),
            loss,
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(watch(Arc::downgrade(&sentinel)));
        }
        Ok(Target::Sentinel(sentinel))
    }

    /// The Redis Cluster the nodes at `seeds` belong to.
    pub(super) fn cluster(seeds: &[String], timeout: Duration) -> Result<Target, PinDbError> {
        Cluster::new(seeds, timeout).map(|c| Target::Cluster(Box::new(c)))
    }

    /// A connection for the next command. With Sentinel, the primary is asked for when no
    /// command has gone to it since the last failure (one lookup at a time).
    async fn connection(&self) -> RedisResult<Connection> {
        let sentinel = match self {
            Target::Server(manager) => {
                return Ok(Connection {
                    link: Link::Server(manager.clone()),
                    generation: 0,
                })
            }
            Target::Cluster(cluster) => {
                return Ok(Connection {
                    link: Link::Cluster(cluster.connection().await?),
                    generation: 0,
                })
            }
            Target::Sentinel(sentinel) => sentinel,
        };
        if let Some(conn) = sentinel.connection() {
            return Ok(conn);
        }
        let _one = sentinel.lookup.lock().await;
        // Found by the lookup this one waited for.
        if let Some(conn) = sentinel.connection() {
            return Ok(conn);
        }
        let address = sentinel.find_primary().await?;
        sentinel.install(&address)
    }

    /// Runs `call` within `timeout`: its answer, and whether it came through a connection
    /// the store has left since (a primary left behind); else what happened. A failed
    /// command makes the next one find the target again. A timeout keeps the connection, so
    /// what follows on it is ordered after what is still queued there (the Sentinel watch
    /// still follows a failover whose old primary hangs).
    pub(super) async fn command<T: redis::FromRedisValue>(
        &self,
        call: &Call,
        timeout: Duration,
    ) -> Result<(T, bool), String> {
        let mut generation = None;
        let command = async {
            let mut conn = self.connection().await?;
            generation = Some(conn.generation);
            conn.link.invoke(call).await
        };
        match tokio::time::timeout(timeout, command).await {
            Ok(Ok(answer)) => Ok((answer, generation.is_some_and(|g| !self.is_current(g)))),
            Ok(Err(e)) => {
                if let Some(generation) = generation.filter(|_| !e.is_timeout()) {
                    self.failed(generation, &e);
                }
                Err(e.to_string())
            }
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    }

    /// A command on the connection of `generation` failed with `e`: with Sentinel, the next
    /// one asks which server is the primary (a failover, or a primary turned replica that
    /// refuses writes), unless a newer connection is already in place; on a cluster whose
    /// driver is gone, the next one connects again.
    fn failed(&self, generation: u64, e: &RedisError) {
        match self {
            Target::Sentinel(sentinel) => {
                let mut now = lock(&sentinel.now);
                if now.generation == generation {
                    now.manager = None;
                }
            }
            Target::Cluster(cluster) => cluster.failed(e),
            Target::Server(_) => {}
        }
    }

    /// Whether commands still go where the connection of `generation` goes: a command that
    /// succeeded on an older one may have landed on a primary left behind, after its loss
    /// was marked.
    fn is_current(&self, generation: u64) -> bool {
        match self {
            Target::Server(_) | Target::Cluster(_) => true,
            Target::Sentinel(sentinel) => lock(&sentinel.now).generation == generation,
        }
    }
}

impl Sentinel {
    fn connection(&self) -> Option<Connection> {
        let now = lock(&self.now);
        now.manager.clone().map(|manager| Connection {
            link: Link::Server(manager),
            generation: now.generation,
        })
    }

    /// Sends commands to `address` from now on; a move from another primary marks a loss.
    fn install(&self, address: &str) -> RedisResult<Connection> {
        let host = match address.rsplit_once(':') {
            Some((host, port)) if host.contains(':') => format!("[{host}]:{port}"),
            _ => address.to_owned(),
        };
        let client = redis::Client::open(format!("redis://{host}/"))?;
        let manager = ConnectionManager::new_lazy_with_config(client, self.config.clone())?;
        let mut now = lock(&self.now);
        if now.address.as_deref().is_some_and(|a| a != address) {
            self.loss.mark_loss();
            tracing::warn!(target: "pindb", master = %self.master, from = now.address.as_deref().unwrap_or("-"), to = %address, "pindb: the Redis primary changed (a Sentinel failover); what the old one acknowledged last may be lost, so keyed reads go to the masters for ttl_seconds");
        }
        now.address = Some(address.to_owned());
        now.manager = Some(manager.clone());
        now.generation += 1;
        Ok(Connection {
            link: Link::Server(manager),
            generation: now.generation,
        })
    }

    /// The primary the Sentinels name, asking them all at once, each within the timeout: as
    /// soon as more than half of them agree, so one that hangs or is down delays nothing. A
    /// move away from the primary commands go to now needs that majority; without a
    /// primary yet, the most named one will do.
    async fn find_primary(&self) -> RedisResult<String> {
        use futures_util::StreamExt;
        let majority = self.sentinels.len() / 2 + 1;
        let current = lock(&self.now).address.clone();
        let mut asks: futures_util::stream::FuturesUnordered<_> = self
            .sentinels
            .iter()
            .map(|(_, conn)| async move {
                let mut conn = conn.clone();
                // The name it gives is resolved within the same bound.
                let ask = async {
                    let named = redis::cmd("SENTINEL")
                        .arg("get-master-addr-by-name")
                        .arg(&self.master)
                        .query_async::<Option<(String, u16)>>(&mut conn)
                        .await;
                    match named {
                        Ok(Some((host, port))) => Some(address(&host, port).await),
                        _ => None,
                    }
                };
                tokio::time::timeout(self.timeout, ask).await.ok().flatten()
            })
            .collect();
        let mut answers: Vec<String> = Vec::new();
        while let Some(answer) = asks.next().await {
            if let Some(answer) = answer {
                answers.push(answer);
                let last = &answers[answers.len() - 1];
                if answers.iter().filter(|a| *a == last).count() >= majority {
                    return Ok(last.clone());
                }
            }
        }
        let votes = |a: &String| answers.iter().filter(|b| *b == a).count();
        let most = answers.iter().max_by_key(|a| votes(a)).cloned();
        match (current, most) {
            // No majority to move: stay.
            (Some(current), Some(_)) => Ok(current),
            (None, Some(most)) => Ok(most),
            (_, None) => {
                let asked: Vec<&str> = self.sentinels.iter().map(|(u, _)| u.as_str()).collect();
                Err(RedisError::from((
                    ErrorKind::Io,
                    "no Sentinel named a primary",
                    format!("master name `{}`, asked {}", self.master, asked.join(", ")),
                )))
            }
        }
    }
}

/// `host:port` as an address (a name resolved), so that Sentinels that announce a name and
/// ones that announce its address agree.
async fn address(host: &str, port: u16) -> String {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return std::net::SocketAddr::new(ip, port).to_string();
    }
    match tokio::net::lookup_host((host, port)).await {
        Ok(mut found) => found
            .next()
            .map_or_else(|| format!("{host}:{port}"), |a| a.to_string()),
        Err(_) => format!("{host}:{port}"),
    }
}

/// Asks the Sentinels every [`WATCH_EVERY`] while the store lives: moves commands to the
/// primary they name when it changed, and finds one when commands have none (at the start,
/// after a failure, when no command could finish a lookup of its own within its timeout).
async fn watch(sentinel: Weak<Sentinel>) {
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        let Some(sentinel) = sentinel.upgrade() else {
            return;
        };
        let _one = sentinel.lookup.lock().await;
        let (known, connected) = {
            let now = lock(&sentinel.now);
            (now.address.clone(), now.manager.is_some())
        };
        if let Ok(named) = sentinel.find_primary().await {
            if Some(&named) != known.as_ref() || !connected {
                let _ = sentinel.install(&named);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
