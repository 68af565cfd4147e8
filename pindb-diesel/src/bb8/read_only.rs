//! The compile-time-checked replica API: queries that are reads by construction.
//!
//! [`ReadOnlyQuery`] is implemented only for select statements without a locking clause, so
//! `.for_update()`, inserts, updates and deletes do not compile on a [`ReplicaConnection`].
//! This module does no routing: [`PinDb::replica`](crate::bb8::PinDb::replica) picks the connection.

use diesel::query_builder::{BoxedSelectStatement, SelectStatement};
use diesel_async::methods::LoadQuery;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::{Driver, Pooled};

/// A query that cannot write: a `SELECT` without `FOR UPDATE`/`FOR SHARE`.
///
/// The locking clause is `SelectStatement`'s ninth type parameter, which defaults to "none";
/// implementing the marker for the eight-parameter form leaves locked selects out.
///
/// ```compile_fail
/// # use diesel::prelude::*;
/// # diesel::table! { jobs (id) { id -> Integer } }
/// fn read_only<Q: pindb_diesel::bb8::ReadOnlyQuery>(_: Q) {}
/// read_only(jobs::table.filter(jobs::id.eq(1)).for_update());
/// ```
///
/// ```compile_fail
/// # use diesel::prelude::*;
/// # diesel::table! { jobs (id) { id -> Integer } }
/// fn read_only<Q: pindb_diesel::bb8::ReadOnlyQuery>(_: Q) {}
/// read_only(diesel::insert_into(jobs::table).values(jobs::id.eq(1)));
/// ```
///
/// ```
/// # use diesel::prelude::*;
/// # diesel::table! { jobs (id) { id -> Integer } }
/// fn read_only<Q: pindb_diesel::bb8::ReadOnlyQuery>(_: Q) {}
/// read_only(jobs::table.filter(jobs::id.eq(1)));
/// read_only(jobs::table.select(jobs::id).into_boxed::<diesel::pg::Pg>());
/// ```
pub trait ReadOnlyQuery {}

impl<F, S, D, W, O, LOf, G, H> ReadOnlyQuery for SelectStatement<F, S, D, W, O, LOf, G, H> {}

impl<ST, QS, DB, GB> ReadOnlyQuery for BoxedSelectStatement<'_, ST, QS, DB, GB> {}

/// A replica (or, when the set is pinned, master) connection that only runs
/// [`ReadOnlyQuery`] queries. From [`PinDb::replica`](crate::bb8::PinDb::replica).
pub struct ReplicaConnection<C: Driver = AsyncPgConnection> {
    conn: Pooled<C>,
}

impl<C: Driver> std::fmt::Debug for ReplicaConnection<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaConnection").finish_non_exhaustive()
    }
}

impl<C: Driver> ReplicaConnection<C> {
    pub(crate) fn new(conn: Pooled<C>) -> Self {
        ReplicaConnection { conn }
    }

    /// `RunQueryDsl::load` for a read-only query. (Not named `load`: `RunQueryDsl` is
    /// implemented for every type and would shadow it.)
    pub async fn load_all<'q, Q, U>(&mut self, query: Q) -> diesel::QueryResult<Vec<U>>
    where
        Q: ReadOnlyQuery + LoadQuery<'q, C, U> + Send + 'q,
        U: Send,
    {
        query.load(&mut *self.conn).await
    }

    /// `RunQueryDsl::get_result` for a read-only query.
    pub async fn get_one<'q, Q, U>(&mut self, query: Q) -> diesel::QueryResult<U>
    where
        Q: ReadOnlyQuery + LoadQuery<'q, C, U> + Send + 'q,
        U: Send,
    {
        query.get_result(&mut *self.conn).await
    }
}
