//! [`Driver`]: the sync diesel connection type of each database pindb routes (`PgConnection`,
//! and `MysqlConnection` with the feature `r2d2-mariadb`), and what the routed connection needs
//! from it beyond diesel's traits: rows that outlive their connection's borrow, and where a
//! new connection landed.

use diesel::connection::{AnsiTransactionManager, DefaultLoadingMode, LoadConnection};
use diesel::expression::QueryMetadata;
use diesel::query_builder::{Query, QueryFragment, QueryId};
use diesel::r2d2::R2D2Connection;
use diesel::result::QueryResult;

use crate::backend::RoutedBackend;

/// A sync diesel connection type pindb pools and routes: [`diesel::PgConnection`] (the
/// default of [`PinDb`](super::PinDb)) and, with the feature `r2d2-mariadb`,
/// `diesel::MysqlConnection`. Sealed: its methods are pindb's own.
pub trait Driver:
    R2D2Connection<Backend: RoutedBackend, TransactionManager = AnsiTransactionManager>
    + LoadConnection<DefaultLoadingMode>
    + sealed::Sealed
    + Send
    + 'static
{
    /// A row, owning its data.
    #[doc(hidden)]
    type OwnedRow: for<'a> diesel::row::Row<'a, Self::Backend>;

    /// The rows of a statement, free of the connection's borrow.
    #[doc(hidden)]
    type Rows: Iterator<Item = QueryResult<Self::OwnedRow>>;

    /// Runs `query` and returns its rows.
    #[doc(hidden)]
    fn load_rows<T>(conn: &mut Self, query: T) -> QueryResult<Self::Rows>
    where
        T: Query + QueryFragment<Self::Backend> + QueryId,
        Self::Backend: QueryMetadata<T::SqlType>;

    /// The URL of `db`'s pool.
    #[doc(hidden)]
    fn pool_url(db: &pindb_core::adapter::Database) -> String {
        db.pool_url()
    }

    /// Where a new connection landed, as the server names itself (`host:port` on PostgreSQL,
    /// the `server_id` on MariaDB): only asked for a server behind a reader endpoint (`db`).
    #[doc(hidden)]
    fn reached(conn: &mut Self, db: &pindb_core::adapter::Database) -> QueryResult<String>;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for diesel::PgConnection {}
    #[cfg(feature = "r2d2-mariadb")]
    impl Sealed for diesel::MysqlConnection {}
}

mod pg {
    use diesel::pg::PgConnection;
    use diesel::RunQueryDsl;

    use super::*;

    impl Driver for PgConnection {
        type OwnedRow = <PgConnection as LoadConnection<DefaultLoadingMode>>::Row<'static, 'static>;
        // libpq's result is read whole: its cursor borrows nothing.
        type Rows = <PgConnection as LoadConnection<DefaultLoadingMode>>::Cursor<'static, 'static>;

        fn load_rows<T>(conn: &mut Self, query: T) -> QueryResult<Self::Rows>
        where
            T: Query + QueryFragment<Self::Backend> + QueryId,
            Self::Backend: QueryMetadata<T::SqlType>,
        {
            LoadConnection::<DefaultLoadingMode>::load(conn, query)
        }

        fn reached(conn: &mut Self, db: &pindb_core::adapter::Database) -> QueryResult<String> {
            let reached: crate::server::Reached = crate::server::question(db).get_result(conn)?;
            Ok(reached.address)
        }
    }
}

#[cfg(feature = "r2d2-mariadb")]
mod mysql {
    use diesel::mysql::MysqlConnection;

    use super::*;
    use crate::r2d2::mysql_row::OwnedMysqlRow;

    impl Driver for MysqlConnection {
        type OwnedRow = OwnedMysqlRow;
        type Rows = std::vec::IntoIter<QueryResult<OwnedMysqlRow>>;

        // diesel's rows need their statement, which closes with its iterator here: they are
        // copied out (the result is on the client already).
        fn load_rows<T>(conn: &mut Self, query: T) -> QueryResult<Self::Rows>
        where
            T: Query + QueryFragment<Self::Backend> + QueryId,
            Self::Backend: QueryMetadata<T::SqlType>,
        {
            let mut names = None;
            let rows: Vec<_> = LoadConnection::<DefaultLoadingMode>::load(conn, query)?
                .map(|row| {
                    let row = row?;
                    let names = names.get_or_insert_with(|| OwnedMysqlRow::names_of(&row));
                    Ok(OwnedMysqlRow::copy(&row, std::sync::Arc::clone(names)))
                })
                .collect();
            Ok(rows.into_iter())
        }

        // The client library takes `localhost` for its Unix socket and ignores the port: the
        // pool would reach whichever server owns the socket, not the one pindb monitors (its
        // own connections go over TCP). The port says which server is meant.
        fn pool_url(db: &pindb_core::adapter::Database) -> String {
            match db.host.eq_ignore_ascii_case("localhost") {
                true => {
                    let mut tcp = db.clone();
                    tcp.host = "127.0.0.1".to_owned();
                    tcp.pool_url()
                }
                false => db.pool_url(),
            }
        }

        fn reached(conn: &mut Self, db: &pindb_core::adapter::Database) -> QueryResult<String> {
            use diesel::RunQueryDsl;
            let reached: crate::server::Reached = crate::server::question(db).get_result(conn)?;
            Ok(reached.address)
        }
    }
}
