//! A server behind a reader endpoint ([`Database::server`](pindb_core::adapter::Database::server)):
//! the question both pools ask a new connection, where it landed.

use diesel::query_builder::SqlQuery;
use diesel::sql_types::Text;

/// The address a connection reached, `host:port` as the server sees itself.
#[derive(diesel::QueryableByName)]
pub(crate) struct Reached {
    #[diesel(sql_type = Text)]
    pub(crate) address: String,
}

/// [`SERVER_ADDRESS_SQL`](pindb_core::adapter::SERVER_ADDRESS_SQL), as diesel runs it.
pub(crate) fn question() -> SqlQuery {
    diesel::sql_query(pindb_core::adapter::SERVER_ADDRESS_SQL)
}
