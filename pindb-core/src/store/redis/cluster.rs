//! [`Cluster`]: the store's connection to a Redis Cluster, made at the first command and again
//! after a failed attempt; the driver (`redis::cluster_async`) follows slots, redirections and
//! failovers from then on.

use std::time::Duration;

use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{ErrorKind, RedisError, RedisResult};
use tokio::sync::watch;

use crate::error::PinDbError;

/// A Redis Cluster's client and its connection, made in a task of its own.
pub(super) struct Cluster {
    client: ClusterClient,
    /// How long one attempt may take: every seed within the timeout, and the slot map.
    connect_bound: Duration,
    state: watch::Sender<State>,
}

/// Where the connection stands.
#[derive(Clone)]
enum State {
    /// None yet, or the last attempt failed (with why): the next command starts one.
    Idle(Option<String>),
    /// An attempt runs.
    Connecting,
    Ready(ClusterConnection),
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
            connect_bound: timeout.saturating_mul(10),
            state: watch::Sender::new(State::Idle(None)),
        })
    }

    /// The connection for the next command (shared: a clone is cheap). The first command, or
    /// the first after a failed attempt, starts one in a task of its own and waits for it:
    /// the driver connects to every seed before it answers, and a seed that does not answer
    /// takes the whole timeout, so an attempt cut off with each command would never end.
    pub(super) async fn connection(&self) -> RedisResult<ClusterConnection> {
        if let State::Ready(conn) = &*self.state.borrow() {
            return Ok(conn.clone());
        }
        let mut seen = self.state.subscribe();
        let start = self.state.send_if_modified(|state| match state {
            State::Idle(_) => {
                *state = State::Connecting;
                true
            }
            _ => false,
        });
        if start {
            let (client, state, bound) =
                (self.client.clone(), self.state.clone(), self.connect_bound);
            tokio::spawn(async move {
                // A task cut off (its runtime shutting down) leaves the next command a fresh
                // attempt, not a wait for this one.
                let abandoned = Abandoned(state.clone());
                let made = tokio::time::timeout(bound, client.get_async_connection()).await;
                state.send_replace(match made {
                    Ok(Ok(conn)) => State::Ready(conn),
                    Ok(Err(e)) => State::Idle(Some(e.to_string())),
                    Err(_) => State::Idle(Some(format!("connecting took over {bound:?}"))),
                });
                drop(abandoned);
            });
        }
        loop {
            match &*seen.borrow_and_update() {
                State::Ready(conn) => return Ok(conn.clone()),
                // The attempt this command waited for failed (none is idle otherwise).
                State::Idle(why) => {
                    return Err(RedisError::from((
                        ErrorKind::Io,
                        "no connection to the Redis Cluster",
                        why.clone().unwrap_or_default(),
                    )))
                }
                State::Connecting => {}
            }
            if seen.changed().await.is_err() {
                return Err(RedisError::from((
                    ErrorKind::Io,
                    "the Redis Cluster store is gone",
                )));
            }
        }
    }
}

impl Cluster {
    /// A command failed with `e`: when it says the driver's task is gone (its runtime shut
    /// down, a panic), the connection is dropped and the next command makes another.
    pub(super) fn failed(&self, e: &RedisError) {
        // The driver's own words when its channel is closed (redis-rs 1.x).
        let gone = e.to_string().contains("redis_cluster: Unable to");
        if gone {
            self.state.send_if_modified(|state| match state {
                State::Ready(_) => {
                    *state = State::Idle(None);
                    true
                }
                _ => false,
            });
        }
    }
}

/// Puts a connection attempt that never finished back to idle.
struct Abandoned(watch::Sender<State>);

impl Drop for Abandoned {
    fn drop(&mut self) {
        self.0.send_if_modified(|state| match state {
            State::Connecting => {
                *state = State::Idle(Some("the connection attempt was abandoned".to_owned()));
                true
            }
            _ => false,
        });
    }
}
