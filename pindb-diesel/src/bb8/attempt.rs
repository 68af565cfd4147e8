//! A statement the routed connection may run more than once (on a replica, then where
//! pindb-core's fallback sends it): it owns what it runs.

use diesel::pg::Pg;
use diesel::query_builder::{QueryFragment, QueryId};
use diesel::result::QueryResult;
use diesel_async::{AsyncConnectionCore, AsyncPgConnection, SimpleAsyncConnection};
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use pindb_core::Router;

use super::Pooled;
use crate::statement;

/// A statement that may run more than once (on a replica, then elsewhere): it owns what it
/// runs, and renders its SQL only when pindb-core must remember it.
pub(super) trait Attempt: Send + Sync {
    type Output: Send;
    fn run<'c>(&'c self, conn: &'c mut Pooled) -> BoxFuture<'c, QueryResult<Self::Output>>;
    /// A replica refused it: its SQL, for pindb-core to remember (and its cached shape is
    /// forgotten).
    fn refused(&self, router: &Router) -> String;
}

/// `load`: the first row is awaited here, because a standby refuses a statement (and a
/// hung one hangs) only when it runs, after the query was sent.
pub(super) struct Load<Q>(pub(super) Q);
/// `execute_returning_count`.
pub(super) struct Execute<Q>(pub(super) Q);
/// `batch_execute`.
pub(super) struct Batch(pub(super) String);

pub(super) type Rows = <AsyncPgConnection as AsyncConnectionCore>::Stream<'static, 'static>;

impl<Q> Attempt for Load<Q>
where
    Q: diesel::query_builder::Query + QueryFragment<Pg> + QueryId + Send + Sync,
{
    type Output = Rows;

    fn run<'c>(&'c self, conn: &'c mut Pooled) -> BoxFuture<'c, QueryResult<Rows>> {
        async move {
            let mut rows = AsyncConnectionCore::load(&mut **conn, &self.0).await?;
            Ok(match rows.next().await {
                Some(Err(e)) => return Err(e),
                Some(Ok(first)) => futures_util::stream::once(std::future::ready(Ok(first)))
                    .chain(rows)
                    .boxed(),
                None => futures_util::stream::empty().boxed(),
            })
        }
        .boxed()
    }

    fn refused(&self, router: &Router) -> String {
        statement::refused(&self.0, router)
    }
}

impl<Q> Attempt for Execute<Q>
where
    Q: QueryFragment<Pg> + QueryId + Send + Sync,
{
    type Output = usize;

    fn run<'c>(&'c self, conn: &'c mut Pooled) -> BoxFuture<'c, QueryResult<usize>> {
        AsyncConnectionCore::execute_returning_count(&mut **conn, &self.0)
    }

    fn refused(&self, router: &Router) -> String {
        statement::refused(&self.0, router)
    }
}

impl Attempt for Batch {
    type Output = ();

    fn run<'c>(&'c self, conn: &'c mut Pooled) -> BoxFuture<'c, QueryResult<()>> {
        conn.batch_execute(&self.0).boxed()
    }

    fn refused(&self, _: &Router) -> String {
        self.0.clone()
    }
}
