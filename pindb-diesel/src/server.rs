//! A server behind a reader endpoint ([`Database::server`](pindb_core::adapter::Database::server)):
//! the question both pools ask a new connection, where it landed.

use diesel::query_builder::SqlQuery;
use diesel::sql_types::Text;

/// Where a connection landed, as the server names itself (PostgreSQL: `host:port`; MariaDB:
/// its `server_id`).
#[derive(diesel::QueryableByName)]
pub(crate) struct Reached {
    #[diesel(sql_type = Text)]
    pub(crate) address: String,
}

/// [`Database::server_question`](pindb_core::adapter::Database::server_question) of `db`, as
/// diesel runs it.
pub(crate) fn question(db: &pindb_core::adapter::Database) -> SqlQuery {
    diesel::sql_query(db.server_question())
}
