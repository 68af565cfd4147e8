//! [`RouterBuilder`]: a router from a config plus what code, not config, supplies (delegate
//! routers, the stickiness store).

use std::sync::Arc;

use super::{Delegate, Router};
use crate::config::Config;
use crate::error::PinDbError;
use crate::store::Store;

/// Builds a [`Router`]: `Router::builder(config).delegate(..).store(..).build()?`.
///
/// ```no_run
/// # fn demo() -> Result<(), pindb_core::PinDbError> {
/// use std::{sync::Arc, time::Duration};
/// use pindb_core::{Config, Hint, Operation, RedisStore, Router};
///
/// let config = Config::load("pindb.toml")?;
/// let redis = RedisStore::new("redis://127.0.0.1/", "pindb:lsn:", Duration::from_millis(100))?;
/// let router = Router::builder(config)
///     .delegate(|hint: &Hint, _: Operation| {
///         hint.tables.iter().any(|t| t.starts_with("stats_")).then_some("analytics")
///     })
///     .store(Arc::new(redis))
///     .build()?;
/// # Ok(()) }
/// ```
#[must_use = "a builder does nothing until `build` is called"]
pub struct RouterBuilder {
    config: Config,
    delegates: Vec<Box<dyn Delegate>>,
    store: Option<Arc<dyn Store>>,
}

impl std::fmt::Debug for RouterBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterBuilder")
            .field("config", &self.config)
            .field("delegates", &self.delegates.len())
            .field("store", &self.store.as_ref().map(|s| s.name()))
            .finish()
    }
}

impl RouterBuilder {
    pub(super) fn new(config: Config) -> Self {
        RouterBuilder {
            config,
            delegates: Vec::new(),
            store: None,
        }
    }

    /// Adds a delegate router, asked after the ones added before it.
    pub fn delegate(mut self, delegate: impl Delegate) -> Self {
        self.delegates.push(Box::new(delegate));
        self
    }

    /// Adds delegate routers, in order.
    pub fn delegates(mut self, delegates: impl IntoIterator<Item = Box<dyn Delegate>>) -> Self {
        self.delegates.extend(delegates);
        self
    }

    /// Where write positions are kept between contexts (default: a
    /// [`MemoryStore`](crate::MemoryStore) of `stickiness.memory_capacity` keys).
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Validates the config and builds the alias table.
    pub fn build(self) -> Result<Router, PinDbError> {
        Router::from_parts(self.config, self.delegates, self.store)
    }
}
