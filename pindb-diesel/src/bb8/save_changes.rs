//! `save_changes` on the routed connection: an `UPDATE ... RETURNING`, routed as a write.

use diesel::query_builder::{AsChangeset, IntoUpdateTarget};
use diesel_async::methods::LoadQuery;
use diesel_async::{RunQueryDsl, UpdateAndFetchResults};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use super::PinDbConnection;

/// `save_changes` on the routed connection: an `UPDATE ... RETURNING`, routed as a write.
impl<'b, C, Changes, Output, Tab, V> UpdateAndFetchResults<Changes, Output> for PinDbConnection<C>
where
    C: super::Driver,
    Output: Send + 'static,
    Changes:
        Copy + AsChangeset<Target = Tab> + Send + diesel::associations::Identifiable<Table = Tab>,
    Tab: diesel::Table + diesel::query_dsl::methods::FindDsl<Changes::Id> + 'b,
    diesel::dsl::Find<Tab, Changes::Id>: IntoUpdateTarget<Table = Tab, WhereClause = V>,
    diesel::query_builder::UpdateStatement<Tab, V, Changes::Changeset>:
        diesel::query_builder::AsQuery,
    diesel::dsl::Update<Changes, Changes>: LoadQuery<'b, Self, Output>,
    V: Send + 'b,
    Changes::Changeset: Send + 'b,
    Tab::FromClause: Send,
{
    fn update_and_fetch<'conn, 'changes>(
        &'conn mut self,
        changeset: Changes,
    ) -> BoxFuture<'changes, diesel::QueryResult<Output>>
    where
        Changes: 'changes,
        Changes::Changeset: 'changes,
        'conn: 'changes,
        Self: 'changes,
    {
        async move {
            diesel::update(changeset)
                .set(changeset)
                .get_result(self)
                .await
        }
        .boxed()
    }
}
