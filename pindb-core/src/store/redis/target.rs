//! [`Target`]: where the store's commands go: one Redis server, or the primary that Redis
//! Sentinel names for a master name, found again after a failure (a failover).

use std::sync::{Mutex, PoisonError};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelServerType};
use redis::RedisResult;

use crate::error::PinDbError;

/// Where commands go.
pub(super) enum Target {
    /// One server, reconnected by the connection manager.
    Server(ConnectionManager),
    /// The primary Sentinel names now.
    Sentinel(Box<Sentinel>),
}

/// The Sentinels of one master name, and the primary they named last.
pub(super) struct Sentinel {
    client: tokio::sync::Mutex<SentinelClient>,
    config: ConnectionManagerConfig,
    /// The primary's address and a connection to it, until a command fails.
    current: Mutex<Option<(String, ConnectionManager)>>,
    /// The address of the primary commands went to last (kept across failures).
    last: Mutex<Option<String>>,
}

/// A connection for the next command, and whether it goes to another primary than the
/// commands before it (what that one acknowledged may be lost).
pub(super) struct Connection {
    pub(super) manager: ConnectionManager,
    pub(super) moved: bool,
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

    pub(super) fn sentinel(
        sentinels: &[String],
        master: &str,
        config: ConnectionManagerConfig,
    ) -> Result<Target, PinDbError> {
        if sentinels.is_empty() || master.is_empty() {
            return Err(PinDbError::config(
                "stickiness",
                "Redis Sentinel needs the Sentinels' addresses (redis://host:26379) and the \
                 master name they monitor (`sentinel monitor <name> ...`)",
            ));
        }
        let client = SentinelClient::build(
            sentinels.to_vec(),
            master.to_owned(),
            None,
            SentinelServerType::Master,
        )
        .map_err(|e| {
            PinDbError::config(
                "stickiness",
                format!(
                    "the Sentinel addresses {sentinels:?} are invalid ({e}); expected \
                     redis://host:port for each"
                ),
            )
        })?;
        Ok(Target::Sentinel(Box::new(Sentinel {
            client: tokio::sync::Mutex::new(client),
            config,
            current: Mutex::new(None),
            last: Mutex::new(None),
        })))
    }

    /// A connection for the next command. With Sentinel, the primary is asked for when no
    /// command has gone to it since the last failure.
    pub(super) async fn connection(&self) -> RedisResult<Connection> {
        let sentinel = match self {
            Target::Server(manager) => {
                return Ok(Connection {
                    manager: manager.clone(),
                    moved: false,
                })
            }
            Target::Sentinel(sentinel) => sentinel,
        };
        if let Some((_, manager)) = lock(&sentinel.current).clone() {
            return Ok(Connection {
                manager,
                moved: false,
            });
        }
        // Sentinel checks that the server it names says it is a primary.
        let client = sentinel.client.lock().await.async_get_client().await?;
        let address = client.get_connection_info().addr().to_string();
        let manager = ConnectionManager::new_lazy_with_config(client, sentinel.config.clone())?;
        let before = lock(&sentinel.last).replace(address.clone());
        let moved = before.is_some_and(|b| b != address);
        if moved {
            tracing::warn!(target: "pindb", to = %address, "pindb: the Redis primary changed (a Sentinel failover); positions the old one acknowledged may be lost, so keyed reads go to the masters for ttl_seconds");
        }
        *lock(&sentinel.current) = Some((address, manager.clone()));
        Ok(Connection { manager, moved })
    }

    /// A command failed: with Sentinel, the next one asks which server is the primary (a
    /// failover, or a primary turned replica that refuses writes).
    pub(super) fn failed(&self) {
        if let Target::Sentinel(sentinel) = self {
            *lock(&sentinel.current) = None;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
