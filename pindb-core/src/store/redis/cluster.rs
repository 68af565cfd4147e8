//! [`Cluster`]: the store's connection to a Redis Cluster, made at the first command and again
//! after a failed attempt; the driver (`redis::cluster_async`) follows slots, redirections and
//! failovers from then on.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::RedisResult;

use crate::error::PinDbError;

/// A Redis Cluster's client and, once made, its connection.
pub(super) struct Cluster {
    client: ClusterClient,
    connection: Mutex<Option<ClusterConnection>>,
    /// One attempt at a time: commands that find no connection wait for the one under way.
    connecting: tokio::sync::Mutex<()>,
}

impl Cluster {
    /// A cluster reached through any of `seeds` (`redis://host:port`).
    pub(super) fn new(seeds: &[String], timeout: Duration) -> Result<Cluster, PinDbError> {
        if seeds.is_empty() {
            return Err(PinDbError::config(
                "stickiness",
                "a Redis Cluster store needs the address of at least one of its nodes \
                 (redis://host:port)",
            ));
        }
        // Redirections and retries stay within pindb's own timeout around each command: a
        // retry waits 5-50 ms (the driver's default starts at 1.28 s), and the driver's
        // response timeout, longer than pindb's, never decides first.
        let client = ClusterClient::builder(seeds.iter().map(String::as_str))
            .connection_timeout(timeout)
            .response_timeout(timeout.saturating_mul(2))
            .retries(10)
            .min_retry_wait(5)
            .max_retry_wait(50)
            .build()
            .map_err(|e| {
                PinDbError::config(
                    "stickiness",
                    format!(
                        "the Redis Cluster nodes `{}` are invalid ({e}); expected \
                         redis://host:port each",
                        seeds.join(", ")
                    ),
                )
            })?;
        Ok(Cluster {
            client,
            connection: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        })
    }

    /// The connection for the next command (it is shared: a clone is cheap).
    pub(super) async fn connection(&self) -> RedisResult<ClusterConnection> {
        if let Some(conn) = self.made() {
            return Ok(conn);
        }
        let _one = self.connecting.lock().await;
        if let Some(conn) = self.made() {
            return Ok(conn);
        }
        let conn = self.client.get_async_connection().await?;
        *self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(conn.clone());
        Ok(conn)
    }

    fn made(&self) -> Option<ClusterConnection> {
        self.connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}
