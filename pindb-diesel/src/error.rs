//! The one error type of pindb-diesel, and how it travels through diesel's `Error`.
//!
//! Diesel's error enum has no variant for a third party, so routing and pool errors ride in
//! `diesel::result::Error::QueryBuilderError` and are recognised with [`routing_error`] /
//! [`is_unpinned_write`]. This module does not decide anything: it only describes failures.

use std::time::Duration;

use pindb_core::adapter::ReplicaFailure;
use pindb_core::PinDbError;

/// Everything pindb-diesel adds to diesel's own failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The router refused or could not resolve the statement (unpinned write, unknown alias...).
    #[error(transparent)]
    Routing(#[from] PinDbError),

    /// No connection could be checked out of an alias's pool in time.
    #[error(
        "timed out after {timeout:?} waiting for a connection to `{alias}`; the pool is \
         exhausted or the server does not answer: raise `max_size` / `connect_timeout_ms` for \
         `{alias}` or check the server"
    )]
    PoolTimeout {
        /// The alias whose pool timed out.
        alias: String,
        /// The configured checkout timeout.
        timeout: Duration,
    },

    /// A new connection to an alias could not be made.
    #[error("could not connect to `{alias}` ({url}): {message}")]
    Connect {
        /// The alias.
        alias: String,
        /// Its URL, password hidden.
        url: String,
        /// What the driver said.
        message: String,
    },

    /// The first statement on a not-yet-checked-out connection binds a custom PostgreSQL type
    /// whose OID must be looked up, which needs a connection.
    #[error(
        "the first statement of this connection on `{alias}` binds the custom type `{type_name}`, \
         whose OID needs a database lookup before a connection is checked out; call \
         `conn.checkout_for_read().await` / `conn.checkout_for_write().await` first, or run the \
         statement in a transaction"
    )]
    CustomTypeBeforeCheckout {
        /// The alias the statement was routed to.
        alias: String,
        /// The type (as diesel names it).
        type_name: String,
    },

    /// A `transaction(..)` nested in the running one was abandoned (its future was dropped or
    /// its closure panicked), or, on MariaDB, one of its statements (or its `BEGIN`,
    /// `COMMIT`, `ROLLBACK`) was dropped mid-flight. pindb discarded the transaction's
    /// database connection, so the whole transaction was rolled back; it cannot go on.
    #[error(
        "this transaction was rolled back: a transaction inside it was abandoned (its future \
         was dropped or its closure panicked), or one of its statements was dropped before \
         its answer came (a timeout, on MariaDB), and pindb discarded the connection rather \
         than reuse it in an unknown state; return this error so the transaction ends, then \
         retry the whole unit of work"
    )]
    TransactionAbandoned,

    /// Inside a transaction, a statement (or a nested `transaction_on`) belongs to another
    /// database than the one the transaction runs on.
    #[error(
        "this statement belongs to `{statement}`{}, but the open transaction runs on \
         `{transaction}`: a transaction runs on one database, so the statement was refused \
         instead of running on the wrong one; open the transaction with \
         `conn.transaction_on(\"{statement}\", ..)`, or run the statement outside it",
        if table.is_empty() { String::new() } else { format!(" (table `{table}`)") }
    )]
    OtherDatabaseInTransaction {
        /// The database (master or unmanaged alias) the statement belongs to.
        statement: String,
        /// The statement's main table, as the delegates saw it (empty for `transaction_on`).
        table: String,
        /// The database the transaction runs on.
        transaction: String,
    },

    /// Async pools were built outside a tokio runtime.
    #[error(
        "PinDb::new was called outside a tokio runtime; bb8 pools start a background task, so \
         build the PinDb inside `#[tokio::main]` or `runtime.block_on(..)`"
    )]
    NoRuntime,

    /// A read on a replica outside a transaction had not started answering after
    /// `reads.timeout_ms`, and nowhere else could run it.
    #[error(
        "no answer from `{alias}` within {timeout:?} (reads.timeout_ms); its connection was \
         discarded. Raise `reads.timeout_ms` for long reads, or check the server"
    )]
    ReadTimeout {
        /// The alias that did not answer.
        alias: String,
        /// The configured read timeout.
        timeout: Duration,
    },

    /// A set runs on another database than the pools' connection type.
    #[error(
        "`{alias}` is a {} database, but this PinDb's pools are of {} connections: a PinDb \
         routes one database, so give it a config (or router) of that database's sets only, \
         built with its connection type: `PinDb::new` / `from_router` for PostgreSQL; for \
         MariaDB `PinDb::<AsyncMysqlConnection>::from_config` / `with_router` (bb8, feature \
         `mariadb`) or `PinDb::<MysqlConnection>::from_config` / `with_router` (r2d2, feature \
         `r2d2-mariadb`)",
        set.name(),
        pool.name()
    )]
    OtherDatabase {
        /// The alias of the first database of the other kind.
        alias: String,
        /// Its database.
        set: pindb_core::adapter::Backend,
        /// The database of the pools' connection type.
        pool: pindb_core::adapter::Backend,
    },

    /// The call cannot work on a routed connection.
    #[error("{0}")]
    Unsupported(&'static str),
}

impl Error {
    /// An unreachable database named by the role it had when the statement was routed
    /// ([`PinDbError::routed_as`]).
    pub(crate) fn routed_as(self, role: pindb_core::Role) -> Error {
        match self {
            Error::Routing(e) => Error::Routing(e.routed_as(role.as_str())),
            other => other,
        }
    }

    pub(crate) fn connect(db: &pindb_core::adapter::Database, message: String) -> Error {
        Error::Connect {
            alias: db.alias.clone(),
            url: db.redacted_url(),
            message,
        }
    }
}

/// How a replica failed a read, from diesel's error: `None` when the statement itself is at
/// fault (another server would fail it the same way). pindb-core decides what follows.
/// `backend`: the database that answered (its drivers' messages are matched when diesel kept
/// no code).
pub(crate) fn replica_failure(
    e: &diesel::result::Error,
    backend: pindb_core::adapter::Backend,
) -> Option<ReplicaFailure> {
    use diesel::result::DatabaseErrorKind as Kind;
    match e {
        diesel::result::Error::DatabaseError(kind, info) => {
            let code = match kind {
                Kind::ReadOnlyTransaction => "25006",
                Kind::SerializationFailure => "40001",
                Kind::ClosedConnection => return Some(ReplicaFailure::Unreachable),
                // Also a statement's own client-side fault (a bad parameter): only the
                // connection's failures count.
                Kind::UnableToSendCommand => {
                    let message = info.message();
                    let lost = ["connection", "communicating with the server", "broken pipe"]
                        .iter()
                        .any(|m| message.contains(m));
                    return lost.then_some(ReplicaFailure::Unreachable);
                }
                // diesel keeps no SQLSTATE for the rest (57P01, 57P03...), nor MySQL's error
                // number: the message says.
                Kind::Unknown => {
                    return match backend {
                        pindb_core::adapter::Backend::MariaDb => {
                            ReplicaFailure::from_mariadb_message(info.message())
                        }
                        _ => ReplicaFailure::from_server_message(info.message()),
                    };
                }
                _ => "",
            };
            ReplicaFailure::from_server(code, info.message())
        }
        diesel::result::Error::BrokenTransactionManager => Some(ReplicaFailure::Unreachable),
        _ => None,
    }
}

impl From<Error> for diesel::result::Error {
    fn from(e: Error) -> Self {
        diesel::result::Error::QueryBuilderError(Box::new(e))
    }
}

/// The pindb error inside a diesel error, if it is one.
///
/// ```
/// use pindb_diesel::{routing_error, Error};
/// use pindb_core::PinDbError;
///
/// let e: diesel::result::Error = Error::Routing(PinDbError::UnpinnedWrite { set: "default".into() }).into();
/// assert!(matches!(routing_error(&e), Some(Error::Routing(PinDbError::UnpinnedWrite { .. }))));
/// assert!(routing_error(&diesel::result::Error::NotFound).is_none());
/// ```
pub fn routing_error(e: &diesel::result::Error) -> Option<&Error> {
    match e {
        diesel::result::Error::QueryBuilderError(inner) => inner.downcast_ref::<Error>(),
        _ => None,
    }
}

/// Whether a diesel error is the strict router's refusal of an unpinned write.
pub fn is_unpinned_write(e: &diesel::result::Error) -> bool {
    matches!(
        routing_error(e),
        Some(Error::Routing(PinDbError::UnpinnedWrite { .. }))
    )
}
