//! [`Error`], pindb-seaorm's error, and how it travels through SeaORM's `DbErr`.
//!
//! `DbErr` has no variant for a third party's typed error except `TryIntoErr`, whose `source`
//! is an `Arc<dyn Error>`; pindb puts its [`Error`] there (with `from = "pindb"`), so it can be
//! recognised by [`routing_error`] and its message says which set and why. `?` converts an
//! [`Error`] into a `DbErr`.

use std::sync::Arc;

use pindb_core::adapter::ReplicaFailure;
use pindb_core::PinDbError;
use sea_orm::{ConnAcquireErr, DbErr, RuntimeErr};

const FROM: &str = "pindb";
const INTO: &str = "a routed database connection";

/// What pindb-seaorm reports: a routing refusal, or a pool that could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The router refused or could not route (strict mode's unpinned write, an unknown alias,
    /// a bad config...).
    #[error(transparent)]
    Routing(#[from] PinDbError),
    /// SeaORM could not set up the pool of `alias`.
    #[error("cannot set up the pool of `{alias}` ({url}): {source}")]
    Pool {
        /// The alias whose pool failed.
        alias: String,
        /// Its URL, password redacted.
        url: String,
        /// SeaORM's error.
        source: DbErr,
    },
}

impl From<Error> for DbErr {
    fn from(e: Error) -> DbErr {
        DbErr::TryIntoErr {
            from: FROM,
            into: INTO,
            source: Arc::new(e),
        }
    }
}

/// A routing error as a `DbErr`, for the `ConnectionTrait` methods.
pub(crate) fn to_db_err(e: PinDbError) -> DbErr {
    Error::Routing(e).into()
}

/// The pindb error inside a `DbErr`, if it is one.
///
/// ```
/// use pindb_core::PinDbError;
/// use pindb_seaorm::{routing_error, Error};
///
/// let e = sea_orm::DbErr::from(Error::from(PinDbError::UnpinnedWrite { set: "default".into() }));
/// assert!(matches!(routing_error(&e), Some(Error::Routing(PinDbError::UnpinnedWrite { .. }))));
/// assert!(e.to_string().contains("`default`"));
/// assert!(routing_error(&sea_orm::DbErr::RecordNotFound("x".into())).is_none());
/// ```
pub fn routing_error(e: &DbErr) -> Option<&Error> {
    match e {
        DbErr::TryIntoErr { from, source, .. } if *from == FROM => source.downcast_ref(),
        _ => None,
    }
}

/// Whether a `DbErr` is the strict router's refusal of an unpinned write.
pub fn is_unpinned_write(e: &DbErr) -> bool {
    matches!(routing_error(e), Some(Error::Routing(e)) if e.is_unpinned_write())
}

/// How a replica failed a statement, from SeaORM's error: `None` when the statement itself is
/// at fault (another server would fail it the same way). pindb-core decides what follows.
pub(crate) fn replica_failure(e: &DbErr) -> Option<ReplicaFailure> {
    match e {
        DbErr::ConnectionAcquire(ConnAcquireErr::Timeout | ConnAcquireErr::ConnectionClosed) => {
            Some(ReplicaFailure::Unreachable)
        }
        DbErr::Conn(_) => Some(ReplicaFailure::Unreachable),
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => {
            match &**e {
                #[cfg(feature = "mariadb")]
                sea_orm::sqlx::Error::Database(db)
                    if db
                        .try_downcast_ref::<sea_orm::sqlx::mysql::MySqlDatabaseError>()
                        .is_some() =>
                {
                    db.try_downcast_ref::<sea_orm::sqlx::mysql::MySqlDatabaseError>()
                        .and_then(|e| ReplicaFailure::from_mariadb(e.number()))
                }
                sea_orm::sqlx::Error::Database(db) => {
                    ReplicaFailure::from_server(db.code().as_deref().unwrap_or(""), db.message())
                }
                sea_orm::sqlx::Error::Io(_)
                | sea_orm::sqlx::Error::PoolTimedOut
                | sea_orm::sqlx::Error::PoolClosed
                | sea_orm::sqlx::Error::Tls(_) => Some(ReplicaFailure::Unreachable),
                _ => None,
            }
        }
        _ => None,
    }
}
