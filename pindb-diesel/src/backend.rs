//! The databases pindb-diesel routes, as diesel names them ([`RoutedBackend`]): what the
//! shared statement code needs from each before a connection is checked out, rendering the
//! SQL and collecting the binds.

use diesel::query_builder::bind_collector::RawBytesBindCollector;
use diesel::query_builder::{CollectedQuery, Query, QueryBuilder, QueryFragment, QueryId};
use diesel::result::QueryResult;
use diesel::sql_types::Untyped;

/// A diesel backend pindb routes: PostgreSQL ([`diesel::pg::Pg`]) and, with the feature
/// `mariadb`, MariaDB ([`diesel::mysql::Mysql`]). Sealed: its methods are pindb's own.
pub trait RoutedBackend: diesel::backend::Backend + Default + sealed::Sealed + 'static {
    /// A statement's binds, collected without a connection, runnable on one.
    #[doc(hidden)]
    type Collected: QueryFragment<Self> + QueryId + Query<SqlType = Untyped> + Send + Sync + 'static;

    /// The backend pindb-core names for a set of this database.
    #[doc(hidden)]
    const BACKEND: pindb_core::adapter::Backend;

    /// `query`'s SQL.
    #[doc(hidden)]
    fn render<T: QueryFragment<Self>>(query: &T) -> QueryResult<String>;

    /// `query`'s binds with the SQL `sql` renders (only once the binds are known to need no
    /// connection); `Ok(Err(type))` when a bind's type must be looked up on a connection (a
    /// custom PostgreSQL type).
    #[doc(hidden)]
    fn collect<T: QueryFragment<Self>>(
        query: &T,
        sql: impl FnOnce() -> QueryResult<String>,
        safe_to_cache: bool,
    ) -> QueryResult<Result<Self::Collected, String>>;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for diesel::pg::Pg {}
    #[cfg(feature = "mariadb")]
    impl Sealed for diesel::mysql::Mysql {}
}

mod pg {
    use diesel::pg::{Pg, PgMetadataLookup, PgQueryBuilder, PgTypeMetadata};

    use super::*;

    /// Records custom types instead of looking them up: there is no connection yet.
    #[derive(Default)]
    struct NoLookup {
        missing: Option<String>,
    }

    impl PgMetadataLookup for NoLookup {
        fn lookup_type(&mut self, type_name: &str, schema: Option<&str>) -> PgTypeMetadata {
            self.missing.get_or_insert_with(|| match schema {
                Some(schema) => format!("{schema}.{type_name}"),
                None => type_name.to_owned(),
            });
            PgTypeMetadata::new(0, 0)
        }
    }

    impl RoutedBackend for Pg {
        type Collected = CollectedQuery<RawBytesBindCollector<Pg>>;
        const BACKEND: pindb_core::adapter::Backend = pindb_core::adapter::Backend::Postgres;

        fn render<T: QueryFragment<Pg>>(query: &T) -> QueryResult<String> {
            let mut qb = PgQueryBuilder::default();
            query.to_sql(&mut qb, &Pg)?;
            Ok(qb.finish())
        }

        fn collect<T: QueryFragment<Pg>>(
            query: &T,
            sql: impl FnOnce() -> QueryResult<String>,
            safe_to_cache: bool,
        ) -> QueryResult<Result<Self::Collected, String>> {
            let mut binds = RawBytesBindCollector::<Pg>::new();
            let mut lookup = NoLookup::default();
            query.collect_binds(&mut binds, &mut lookup as &mut dyn PgMetadataLookup, &Pg)?;
            Ok(match lookup.missing {
                Some(type_name) => Err(type_name),
                None => Ok(CollectedQuery::new(sql()?, safe_to_cache, binds)),
            })
        }
    }
}

#[cfg(feature = "mariadb")]
mod mysql {
    use diesel::mysql::{Mysql, MysqlQueryBuilder};

    use super::*;

    impl RoutedBackend for Mysql {
        type Collected = CollectedQuery<RawBytesBindCollector<Mysql>>;
        const BACKEND: pindb_core::adapter::Backend = pindb_core::adapter::Backend::MariaDb;

        fn render<T: QueryFragment<Mysql>>(query: &T) -> QueryResult<String> {
            let mut qb = MysqlQueryBuilder::default();
            query.to_sql(&mut qb, &Mysql)?;
            Ok(qb.finish())
        }

        // MySQL's types are all known to diesel: nothing is looked up.
        fn collect<T: QueryFragment<Mysql>>(
            query: &T,
            sql: impl FnOnce() -> QueryResult<String>,
            safe_to_cache: bool,
        ) -> QueryResult<Result<Self::Collected, String>> {
            let mut binds = RawBytesBindCollector::<Mysql>::new();
            query.collect_binds(&mut binds, &mut (), &Mysql)?;
            Ok(Ok(CollectedQuery::new(sql()?, safe_to_cache, binds)))
        }
    }
}
