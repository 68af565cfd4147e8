//! A statement the routed connection may run more than once (on a replica, then where
//! pindb-core's fallback sends it): it owns what it runs.

use diesel::query_builder::{QueryFragment, QueryId};
use diesel::result::QueryResult;
use diesel_async::SimpleAsyncConnection;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt, TryStreamExt};

use super::{Driver, Pooled};
use crate::statement;

/// A statement that may run more than once (on a replica, then elsewhere): it owns what it
/// runs, and renders its SQL only when pindb-core must remember it.
pub(super) trait Attempt<C: Driver>: Send + Sync {
    type Output: Send;
    /// Runs it on `conn`; a load's rows are all read first when `whole` (a write's: it is
    /// not over before).
    fn run<'c>(
        &'c self,
        conn: &'c mut Pooled<C>,
        whole: bool,
    ) -> BoxFuture<'c, QueryResult<Self::Output>>;
    /// A replica refused it: its SQL, for pindb-core to remember.
    fn refused(&self) -> String;
}

/// `load`: the first row is awaited here, because a standby refuses a statement (and a
/// hung one hangs) only when it runs, after the query was sent.
pub(super) struct Load<Q>(pub(super) Q);
/// `execute_returning_count`.
pub(super) struct Execute<Q>(pub(super) Q);
/// `batch_execute`.
pub(super) struct Batch(pub(super) String);

/// Rows freed of their connection ([`Driver::detach`]).
pub(super) type Rows<C> = BoxStream<'static, QueryResult<<C as Driver>::OwnedRow>>;

impl<C, Q> Attempt<C> for Load<Q>
where
    C: Driver,
    Q: diesel::query_builder::Query + QueryFragment<C::Backend> + QueryId + Send + Sync,
{
    type Output = Rows<C>;

    fn run<'c>(
        &'c self,
        conn: &'c mut Pooled<C>,
        whole: bool,
    ) -> BoxFuture<'c, QueryResult<Rows<C>>> {
        async move {
            let rows = C::run_load(None, &mut **conn, &self.0).await?;
            if whole {
                let rows: Vec<_> = rows.try_collect().await?;
                return Ok(futures_util::stream::iter(rows.into_iter().map(Ok)).boxed());
            }
            C::detach(rows).await
        }
        .boxed()
    }

    fn refused(&self) -> String {
        statement::refused::<C::Backend, _>(&self.0)
    }
}

impl<C, Q> Attempt<C> for Execute<Q>
where
    C: Driver,
    Q: QueryFragment<C::Backend> + QueryId + Send + Sync,
{
    type Output = usize;

    fn run<'c>(&'c self, conn: &'c mut Pooled<C>, _: bool) -> BoxFuture<'c, QueryResult<usize>> {
        C::run_execute(None, &mut **conn, &self.0)
    }

    fn refused(&self) -> String {
        statement::refused::<C::Backend, _>(&self.0)
    }
}

impl<C: Driver> Attempt<C> for Batch {
    type Output = ();

    fn run<'c>(&'c self, conn: &'c mut Pooled<C>, _: bool) -> BoxFuture<'c, QueryResult<()>> {
        conn.batch_execute(&self.0).boxed()
    }

    fn refused(&self) -> String {
        self.0.clone()
    }
}
