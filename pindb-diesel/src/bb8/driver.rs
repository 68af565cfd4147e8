//! [`Driver`]: the diesel-async connection type of each database pindb routes
//! (`AsyncPgConnection`, and `AsyncMysqlConnection` with the feature `mariadb`), and what the
//! routed connection needs from it beyond diesel-async's traits: opening one, rows that
//! outlive their connection, and a write's position learned in its own flight where the
//! driver pipelines.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use diesel::connection::{CacheSize, TransactionManagerStatus};
use diesel::query_builder::{AsQuery, QueryFragment, QueryId};
use diesel::result::QueryResult;
use diesel::ConnectionResult;
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, PoolError, PoolableConnection,
};
use diesel_async::{
    AnsiTransactionManager, AsyncConnection, AsyncConnectionCore, TransactionManager,
};
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt, TryFutureExt, TryStreamExt};
use pindb_core::adapter::{Database, Failed, NewPin, WriteFlight};
use pindb_core::Router;

use super::Pooled;
use crate::backend::RoutedBackend;
use crate::checkouts::{Forward, Held};

/// How long a write dropped in flight is waited for on its own connection.
const LANDING_LIMIT: Duration = Duration::from_secs(60);

/// A write whose position is learned in its own flight: the router to tell, the index of
/// the master it ran on, and the write's pin.
pub(super) type Learn = (Router, usize, NewPin);

/// A diesel-async connection type pindb pools and routes: [`diesel_async::AsyncPgConnection`]
/// (the default of [`PinDb`](super::PinDb)) and, with the feature `mariadb`,
/// `diesel_async::AsyncMysqlConnection`. Sealed: its methods are pindb's own.
pub trait Driver:
    AsyncConnection<Backend: RoutedBackend, TransactionManager = AnsiTransactionManager>
    + PoolableConnection
    + sealed::Sealed
    + 'static
{
    /// A row, owning its data.
    #[doc(hidden)]
    type OwnedRow: for<'a> diesel::row::Row<'a, Self::Backend> + Send + 'static;

    /// The rows of a statement, borrowing the connection for at most `'c`: the driver's own
    /// stream, named here so the routed connection's futures need no more bounds.
    #[doc(hidden)]
    type Rows<'c>: futures_util::Stream<Item = QueryResult<Self::OwnedRow>> + Send + 'c
    where
        Self: 'c;

    /// diesel-async's bb8 manager of this connection type (named here so its bounds come
    /// with the trait).
    #[doc(hidden)]
    type Manager: bb8::ManageConnection<Connection = Self, Error = PoolError>;

    /// The manager of a pool of connections to `url`.
    #[doc(hidden)]
    fn manager(url: String, config: ManagerConfig<Self>) -> Self::Manager;

    /// Whether a statement dropped mid-flight leaves the connection unusable (mysql_async's
    /// does: the next statement reads the rest of the old answer), so the routed connection
    /// discards it when that happens;
    /// tokio-postgres reads the rest of a dropped statement's answer itself.
    #[doc(hidden)]
    const DROP_BREAKS: bool;

    /// Whether a write's position can be learned in the write's own flight
    /// ([`Driver::load_learning`]).
    #[doc(hidden)]
    const LEARNS_IN_FLIGHT: bool;

    /// Whether a statement sent on a connection after one that was dropped in flight is
    /// answered after the dropped one is over (tokio-postgres sends a connection's
    /// statements in order and reads every answer): how a dropped write is known to have
    /// landed ([`Held::land_after`](crate::checkouts::Held::land_after)).
    #[doc(hidden)]
    const ANSWERS_IN_ORDER: bool;

    /// A connection to `url`; for a server behind a reader endpoint, the first one that
    /// reached it.
    #[doc(hidden)]
    fn open(
        url: String,
        server: Option<Arc<Database>>,
        limit: Duration,
    ) -> BoxFuture<'static, ConnectionResult<Self>>;

    /// `rows`, read to the point where a refusal or a hang would show, and freed of the
    /// connection they came from: a read that may move to another server. PostgreSQL's rows
    /// own their channel, so only the first is awaited; MariaDB's borrow the connection, so
    /// all are read (and `reads.timeout_ms` runs to the last).
    #[doc(hidden)]
    fn detach(
        rows: Self::Rows<'_>,
    ) -> impl std::future::Future<
        Output = QueryResult<BoxStream<'static, QueryResult<Self::OwnedRow>>>,
    > + Send
           + '_;

    /// Detached rows, as the driver's stream.
    #[doc(hidden)]
    fn attach<'c>(rows: BoxStream<'static, QueryResult<Self::OwnedRow>>) -> Self::Rows<'c>;

    /// Runs `query`; a write given `learn` reports its position to its router (only given
    /// when [`Driver::LEARNS_IN_FLIGHT`]).
    #[doc(hidden)]
    fn run_load<'c, 'q, T>(
        learn: Option<Learn>,
        conn: &'c mut Self,
        query: T,
    ) -> BoxFuture<'c, QueryResult<Self::Rows<'c>>>
    where
        T: AsQuery + 'q,
        T::Query: QueryFragment<Self::Backend> + QueryId + 'q;

    /// [`Driver::run_load`] for `execute`.
    #[doc(hidden)]
    fn run_execute<'c, 'q, T>(
        learn: Option<Learn>,
        conn: &'c mut Self,
        query: T,
    ) -> BoxFuture<'c, QueryResult<usize>>
    where
        T: QueryFragment<Self::Backend> + QueryId + 'q;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for diesel_async::AsyncPgConnection {}
    #[cfg(feature = "mariadb")]
    impl Sealed for diesel_async::AsyncMysqlConnection {}
}

/// A connection to `url`; for a server behind a reader endpoint, the first of up to
/// [`SERVER_TRIES`](pindb_core::adapter::SERVER_TRIES) that reached it (asked once, when it
/// is opened: nothing per statement), the others closed.
async fn reaching<C>(
    url: String,
    server: Option<Arc<Database>>,
    limit: Duration,
) -> ConnectionResult<C>
where
    C: AsyncConnection,
    for<'q> diesel::query_builder::SqlQuery:
        diesel_async::methods::LoadQuery<'q, C, crate::server::Reached>,
{
    use diesel_async::RunQueryDsl;
    let Some(db) = server.as_deref() else {
        return C::establish(&url).await;
    };
    // diesel's connection errors are text: a login refused ends the search (the servers
    // share their users), any other failure is a miss, up to `FAILED_TRIES`.
    let attempt = || async {
        let mut conn = C::establish(&url)
            .await
            .map_err(|e| Failed::from_message(e.to_string()))?;
        let reached: crate::server::Reached = crate::server::question(db)
            .get_result(&mut conn)
            .await
            .map_err(|e| Failed::Unreachable(e.to_string()))?;
        Ok((conn, reached.address))
    };
    pindb_core::adapter::ServerSearch::within(db, limit)
        .find(attempt, drop)
        .await
        .map_err(diesel::ConnectionError::BadConnection)
}

mod pg {
    use diesel_async::AsyncPgConnection;
    use futures_util::{FutureExt, StreamExt};

    use super::*;
    use crate::bb8::position;

    impl Driver for AsyncPgConnection {
        type OwnedRow = <AsyncPgConnection as AsyncConnectionCore>::Row<'static, 'static>;
        type Rows<'c> = <AsyncPgConnection as AsyncConnectionCore>::Stream<'c, 'c>;
        type Manager = AsyncDieselConnectionManager<Self>;
        const LEARNS_IN_FLIGHT: bool = true;
        const DROP_BREAKS: bool = false;
        const ANSWERS_IN_ORDER: bool = true;

        fn manager(url: String, config: ManagerConfig<Self>) -> Self::Manager {
            AsyncDieselConnectionManager::new_with_config(url, config)
        }

        fn open(
            url: String,
            server: Option<Arc<Database>>,
            limit: Duration,
        ) -> BoxFuture<'static, ConnectionResult<Self>> {
            reaching(url, server, limit).boxed()
        }

        async fn detach(
            mut rows: Self::Rows<'_>,
        ) -> QueryResult<BoxStream<'static, QueryResult<Self::OwnedRow>>> {
            Ok(match rows.next().await {
                Some(Err(e)) => return Err(e),
                Some(Ok(first)) => futures_util::stream::once(std::future::ready(Ok(first)))
                    .chain(rows)
                    .boxed(),
                None => futures_util::stream::empty().boxed(),
            })
        }

        fn attach<'c>(rows: BoxStream<'static, QueryResult<Self::OwnedRow>>) -> Self::Rows<'c> {
            rows
        }

        fn run_load<'c, 'q, T>(
            learn: Option<Learn>,
            conn: &'c mut Self,
            query: T,
        ) -> BoxFuture<'c, QueryResult<Self::Rows<'c>>>
        where
            T: AsQuery + 'q,
            T::Query: QueryFragment<Self::Backend> + QueryId + 'q,
        {
            match learn {
                Some((router, index, pin)) => position::behind(router, index, pin, conn, |c| {
                    super::drained::<AsyncPgConnection>(AsyncConnectionCore::load(c, query))
                }),
                None => AsyncConnectionCore::load(conn, query),
            }
        }

        fn run_execute<'c, 'q, T>(
            learn: Option<Learn>,
            conn: &'c mut Self,
            query: T,
        ) -> BoxFuture<'c, QueryResult<usize>>
        where
            T: QueryFragment<Self::Backend> + QueryId + 'q,
        {
            match learn {
                Some((router, index, pin)) => position::behind(router, index, pin, conn, |c| {
                    AsyncConnectionCore::execute_returning_count(c, query)
                }),
                None => AsyncConnectionCore::execute_returning_count(conn, query),
            }
        }
    }
}

#[cfg(feature = "mariadb")]
mod mysql {
    use diesel_async::AsyncMysqlConnection;
    use futures_util::{FutureExt, StreamExt, TryStreamExt};

    use super::*;

    /// diesel-async's MySQL row.
    type MysqlRow = <AsyncMysqlConnection as AsyncConnectionCore>::Row<'static, 'static>;

    impl Driver for AsyncMysqlConnection {
        type OwnedRow = MysqlRow;
        type Rows<'c> = <AsyncMysqlConnection as AsyncConnectionCore>::Stream<'c, 'c>;
        type Manager = AsyncDieselConnectionManager<Self>;
        // mysql_async runs one statement at a time: the master is asked at the context's
        // end, as for SeaORM.
        const LEARNS_IN_FLIGHT: bool = false;
        const DROP_BREAKS: bool = true;
        // mysql_async leaves a dropped statement's answer unread: the connection is closed,
        // and a write dropped in flight has an unknown position.
        const ANSWERS_IN_ORDER: bool = false;

        fn manager(url: String, config: ManagerConfig<Self>) -> Self::Manager {
            AsyncDieselConnectionManager::new_with_config(url, config)
        }

        fn open(
            url: String,
            server: Option<Arc<Database>>,
            limit: Duration,
        ) -> BoxFuture<'static, ConnectionResult<Self>> {
            // mysql_async would move a loopback connection to the server's Unix socket: the
            // connection goes where the URL says (a proxy there is not bypassed), as pindb's
            // own do.
            let sep = if url.contains('?') { '&' } else { '?' };
            let url = match url.contains("prefer_socket=") {
                true => url,
                false => format!("{url}{sep}prefer_socket=false"),
            };
            reaching(url, server, limit).boxed()
        }

        async fn detach(
            rows: Self::Rows<'_>,
        ) -> QueryResult<BoxStream<'static, QueryResult<MysqlRow>>> {
            let rows = rows.try_collect::<Vec<_>>().await?;
            Ok(futures_util::stream::iter(rows.into_iter().map(Ok)).boxed())
        }

        fn attach<'c>(rows: BoxStream<'static, QueryResult<MysqlRow>>) -> Self::Rows<'c> {
            rows
        }

        fn run_load<'c, 'q, T>(
            _: Option<Learn>,
            conn: &'c mut Self,
            query: T,
        ) -> BoxFuture<'c, QueryResult<Self::Rows<'c>>>
        where
            T: AsQuery + 'q,
            T::Query: QueryFragment<Self::Backend> + QueryId + 'q,
        {
            AsyncConnectionCore::load(conn, query)
        }

        fn run_execute<'c, 'q, T>(
            _: Option<Learn>,
            conn: &'c mut Self,
            query: T,
        ) -> BoxFuture<'c, QueryResult<usize>>
        where
            T: QueryFragment<Self::Backend> + QueryId + 'q,
        {
            AsyncConnectionCore::execute_returning_count(conn, query)
        }
    }
}

/// A write's rows, read to their end: tokio-postgres hands the stream back before the
/// statement has run (its flight must not land before), and stops reading the socket while a
/// statement's rows wait unread (a position query pipelined behind it would wait forever,
/// and the write, uncommitted, hold its locks).
pub(super) fn drained<'a, C: Driver>(
    run: BoxFuture<'a, QueryResult<C::Rows<'a>>>,
) -> BoxFuture<'a, QueryResult<C::Rows<'a>>> {
    run.and_then(|rows| rows.try_collect::<Vec<_>>())
        .map_ok(|rows| C::attach(futures_util::stream::iter(rows.into_iter().map(Ok)).boxed()))
        .boxed()
}

/// diesel-async's transaction state of a connection.
fn status<C: Driver>(conn: &mut C) -> &mut TransactionManagerStatus {
    <AnsiTransactionManager as TransactionManager<C>>::transaction_manager_status_mut(conn)
}

/// What the routed connection needs from a pooled connection of any driver.
impl<C: Driver> Held for Pooled<C> {
    fn poison(&mut self) {
        status::<C>(self).set_in_error();
    }

    fn land_after(mut self, write: WriteFlight, broken: bool) {
        let runtime = match tokio::runtime::Handle::try_current() {
            Ok(runtime) if C::ANSWERS_IN_ORDER => runtime,
            // Nobody can tell when the write is over: `write` goes unlanded.
            _ => return self.poison(),
        };
        runtime.spawn(async move {
            // Answered once the dropped write is over. Bounded so that a hung server does not
            // keep the connection forever: by then the context's end has stopped waiting and
            // recorded the set's position as unknown.
            let probe = (*self).batch_execute("SELECT 1");
            match tokio::time::timeout(LANDING_LIMIT, probe).await {
                Ok(Ok(())) => write.landed(),
                // Said, not hidden: the write's outcome stays unknown (its set's position too).
                Ok(Err(e)) => {
                    tracing::info!(target: "pindb", error = %e, "pindb: the connection of a write dropped in flight failed before it could tell the write was over");
                    self.poison();
                }
                Err(_) => {
                    tracing::info!(target: "pindb", limit = ?LANDING_LIMIT, "pindb: a write dropped in flight was still running on its connection at the limit");
                    self.poison();
                }
            }
            if broken {
                self.poison();
            }
        });
    }

    fn depth(&mut self) -> QueryResult<Option<NonZeroU32>> {
        status::<C>(self).transaction_depth()
    }

    fn set_cache(&mut self, size: CacheSize) {
        AsyncConnection::set_prepared_statement_cache_size(&mut **self, size);
    }

    fn set_events(&mut self, events: Option<Forward>) {
        match events {
            Some(events) => AsyncConnection::set_instrumentation(&mut **self, events),
            None => AsyncConnection::set_instrumentation(
                &mut **self,
                diesel::connection::get_default_instrumentation(),
            ),
        }
    }
}
