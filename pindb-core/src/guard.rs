//! RAII guards that override routing for one set while they live.
//!
//! This module owns the guard objects and their drop behaviour. Each guard is a frame in its
//! context; the innermost live frame for a set wins, and dropping removes exactly its own
//! frame, so guards nest correctly and may be dropped in any order. Guards never touch pins:
//! a `pin()` made inside `master()` outlives the guard. Guards are made by the router
//! ([`Router::master`](crate::Router::master), [`Router::unpinned_replica`](crate::Router::unpinned_replica)
//! or the free functions), which validates the alias.

use std::sync::Arc;

// The context keeps guard frames, so the kind is its vocabulary; re-exported here where
// users look for it.

use crate::context::{Context, GuardKind};

/// A live routing override; dropping it ends the override. Reads are monotonic, though: once
/// the master has served the context a read of the set (under a `master` guard too), its
/// later reads of that set stay on the master.
///
/// `Send`, so it may be held across `.await`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), pindb_core::PinDbError> {
/// use pindb_core::{Config, Reason, Router, Role};
///
/// let router = Router::new(Config::single_set("postgres://m/app", ["postgres://r/app"]))?;
/// pindb_core::scope(async {
///     let guard = router.unpinned_replica("default")?;
///     assert_eq!(router.db_for_read(&Default::default())?.role, Role::Replica);
///     drop(guard);
///     let guard = router.master("default")?;
///     assert_eq!(router.db_for_read(&Default::default())?.role, Role::Master);
///     drop(guard);
///     // The master showed newer data than the replica may have.
///     assert_eq!(router.db_for_read(&Default::default())?.reason, Reason::Monotonic);
///     Ok(())
/// }).await
/// # }
/// ```
#[must_use = "a guard only has effect while it is alive; bind it with `let _guard = ...`"]
#[derive(Debug)]
pub struct Guard {
    /// `None` for guards made in disabled mode: they change nothing.
    frame: Option<(Context, u64)>,
    kind: GuardKind,
}

impl Guard {
    pub(crate) fn push(ctx: &Context, set: Arc<str>, kind: GuardKind) -> Guard {
        let id = ctx.push_guard(set, kind);
        Guard {
            frame: Some((ctx.clone(), id)),
            kind,
        }
    }

    pub(crate) fn inert(kind: GuardKind) -> Guard {
        Guard { frame: None, kind }
    }

    /// What this guard does.
    pub fn kind(&self) -> GuardKind {
        self.kind
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some((ctx, id)) = self.frame.take() {
            ctx.remove_guard(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send + Sync>() {}

    #[test]
    fn guards_are_send_and_sync() {
        assert_send::<Guard>();
    }
}
