//! How pindb's routing errors travel through SeaORM's `DbErr`.
//!
//! `DbErr` has no variant for a third party's typed error except `TryIntoErr`, whose `source`
//! is an `Arc<dyn Error>`; pindb puts its [`PinDbError`] there (with `from = "pindb"`), so it
//! can be recognised by [`routing_error`] and its message says which set and why.

use std::sync::Arc;

use pindb_core::PinDbError;
use sea_orm::DbErr;

const FROM: &str = "pindb";
const INTO: &str = "a routed database connection";

/// Wraps a pindb error in a `DbErr`.
///
/// ```
/// use pindb_core::PinDbError;
///
/// let e = pindb_seaorm::to_db_err(PinDbError::UnpinnedWrite { set: "default".into() });
/// assert!(pindb_seaorm::is_unpinned_write(&e));
/// assert!(e.to_string().contains("`default`"));
/// ```
pub fn to_db_err(e: PinDbError) -> DbErr {
    DbErr::TryIntoErr {
        from: FROM,
        into: INTO,
        source: Arc::new(e),
    }
}

/// The pindb error inside a `DbErr`, if it is one.
pub fn routing_error(e: &DbErr) -> Option<&PinDbError> {
    match e {
        DbErr::TryIntoErr { from, source, .. } if *from == FROM => source.downcast_ref(),
        _ => None,
    }
}

/// Whether a `DbErr` is the strict router's refusal of an unpinned write.
pub fn is_unpinned_write(e: &DbErr) -> bool {
    routing_error(e).is_some_and(PinDbError::is_unpinned_write)
}
