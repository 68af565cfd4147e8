//! The router behind the free functions ([`pin`], [`db_for_read`], ...), for code that cannot
//! pass a [`Router`] around.

use std::sync::OnceLock;

use super::{Hint, Route, Router};
use crate::error::PinDbError;
use crate::guard::Guard;

static GLOBAL: OnceLock<Router> = OnceLock::new();

impl Router {
    /// Makes this router the one behind the free functions ([`pin`], [`db_for_read`], ...).
    ///
    /// ```
    /// # fn main() -> Result<(), pindb_core::PinDbError> {
    /// let config = pindb_core::Config::single_set("postgres://m/app", ["postgres://r/app"]);
    /// let router = pindb_core::Router::new(config)?.install_global()?;
    /// assert_eq!(router.get_replica("default")?, "default-1");
    /// # Ok(()) }
    /// ```
    pub fn install_global(self) -> Result<&'static Router, PinDbError> {
        GLOBAL
            .set(self)
            .map_err(|_| PinDbError::GlobalRouterAlreadyInstalled)?;
        global()
    }
}

/// The router installed with [`Router::install_global`].
pub fn global() -> Result<&'static Router, PinDbError> {
    GLOBAL.get().ok_or(PinDbError::NoGlobalRouter)
}

/// [`Router::pin`] on the global router.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// // Outside a context, pinning is an error rather than a silent no-op:
/// let err = pindb_core::pin("default").unwrap_err();
/// assert!(err.to_string().contains("scope") || err.to_string().contains("global"));
/// # }
/// ```
pub fn pin(alias: &str) -> Result<(), PinDbError> {
    global()?.pin(alias)
}

/// [`Router::master`] on the global router.
pub fn master(alias: &str) -> Result<Guard, PinDbError> {
    global()?.master(alias)
}

/// [`Router::unpinned_replica`] on the global router.
pub fn unpinned_replica(alias: &str) -> Result<Guard, PinDbError> {
    global()?.unpinned_replica(alias)
}

/// [`Router::get_replica`] on the global router.
pub fn get_replica(alias: &str) -> Result<&'static str, PinDbError> {
    global()?.get_replica(alias)
}

/// [`Router::db_for_read`] on the global router.
pub fn db_for_read(hint: &Hint<'_>) -> Result<Route<'static>, PinDbError> {
    global()?.db_for_read(hint)
}

/// [`Router::db_for_write`] on the global router.
pub fn db_for_write(hint: &Hint<'_>) -> Result<Route<'static>, PinDbError> {
    global()?.db_for_write(hint)
}
