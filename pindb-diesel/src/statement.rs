//! What the routed connection needs to know about a diesel query before it runs: its
//! [`Shape`] (read or write and the main table for delegate hints, from pindb-core, cached per
//! query type), and an owned, `Send` copy of the statement for when a connection must
//! be checked out first.
//!
//! This module makes no routing decision and does no I/O.

use std::any::TypeId;
use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::Arc;
use std::thread::LocalKey;

use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::result::QueryResult;
use diesel::sql_types::Untyped;
use pindb_core::adapter::Shape;
use pindb_core::Router;

use crate::backend::RoutedBackend;
use crate::error::Error;

/// A statement rendered to SQL text plus bind bytes: `Send + 'static`, so it can wait for a
/// pool checkout, and runnable on any connection of its backend `B`.
///
/// It keeps the original query's static `QueryId` (`Id`), so the connection's prepared
/// statement cache files it under the same key as the typed query: the statement is prepared
/// once per connection, whichever path ran it first. Its SQL is shared with every statement of
/// the type when diesel would cache it by type (the SQL is then fixed by the type): rendered
/// once per thread, not per statement.
pub(crate) struct Owned<Id, B: RoutedBackend> {
    sql: Arc<str>,
    /// The binds (and whether diesel may cache the statement), with empty SQL.
    binds: B::Collected,
    _id: PhantomData<fn() -> Id>,
}

impl<Id: 'static, B: RoutedBackend> QueryId for Owned<Id, B> {
    type QueryId = Id;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl<Id, B: RoutedBackend> QueryFragment<B> for Owned<Id, B> {
    fn walk_ast<'b>(&'b self, mut pass: AstPass<'_, 'b, B>) -> QueryResult<()> {
        pass.push_sql(&self.sql);
        self.binds.walk_ast(pass)
    }
}

impl<Id, B: RoutedBackend> Query for Owned<Id, B> {
    type SqlType = Untyped;
}

/// An owned statement: with the query's static id when it has one (cached by type, as diesel
/// caches the typed query), else SQL-keyed (as diesel caches a query without one).
pub(crate) enum OwnedQuery<Id, B: RoutedBackend> {
    Static(Owned<Id, B>),
    Dynamic(B::Collected),
}

/// Keyed by type ids, which nobody outside the program chooses: a fast fixed hash, not
/// SipHash's (looked up on every statement).
type ByType<K, V> = HashMap<K, V, foldhash::fast::FixedState>;

thread_local! {
    // Per thread, so the hot path takes no lock. Bounded by the number of query types.
    // Each shape with the router's count of learned refusals when it was classified.
    static SHAPES: RefCell<ByType<(TypeId, u64), (u64, Shape)>> = RefCell::default();
    // The SQL of each query type diesel caches by type (its SQL is fixed by the type and
    // the backend).
    static SQL: RefCell<ByType<(TypeId, TypeId), Arc<str>>> = RefCell::default();
}

/// `key`'s value in this thread's `cache`; `None` where the cache cannot be used (this
/// thread's locals being destroyed: a statement run from another local's destructor).
fn cached<K: Hash + Eq, V: Clone>(
    cache: &'static LocalKey<RefCell<ByType<K, V>>>,
    key: &K,
) -> Option<V> {
    cache
        .try_with(|c| c.try_borrow().ok()?.get(key).cloned())
        .ok()
        .flatten()
}

/// Keeps `value` for `key` in this thread's `cache`, where it can be used.
fn keep<K: Hash + Eq, V>(cache: &'static LocalKey<RefCell<ByType<K, V>>>, key: K, value: V) {
    let _ = cache.try_with(|c| c.try_borrow_mut().map(|mut c| c.insert(key, value)));
}

/// The shape of `query`: cached by its static `QueryId` when it has one (with the table
/// worked out once), else rendered each time (and the table only looked for when asked).
/// A router routes one backend, so its instance id keys the backend too.
pub(crate) fn shape<B, T>(query: &T, router: &Router) -> QueryResult<Shape>
where
    B: RoutedBackend,
    T: QueryFragment<B> + QueryId,
{
    let Some(id) = T::query_id() else {
        return Ok(router.shape_of(&B::render(query)?));
    };
    let key = (id, router.instance_id());
    // A replica's refusal learned since (on any thread) may make this type a write. Read
    // before the shape is classified, so a kept shape is never older than its count.
    let learned = router.refusals_learned();
    match cached(&SHAPES, &key) {
        Some((when, shape)) if when == learned => return Ok(shape),
        _ => {}
    }
    // Diesel's own rule: only a statement whose SQL is fixed by its type is cached by type.
    // Checked on a miss only, so the hit path stays one lookup.
    if !query.is_safe_to_cache_prepared(&B::default())? {
        return Ok(router.shape_of(&B::render(query)?));
    }
    let shape = router.shape_of(&B::render(query)?);
    keep(&SHAPES, key, (learned, shape.clone()));
    Ok(shape)
}

/// A replica refused `query`: its SQL, for pindb-core to learn (which moves
/// [`Router::refusals_learned`], so every thread's cached shape of it is asked for again and
/// is a write).
pub(crate) fn refused<B, T>(query: &T) -> String
where
    B: RoutedBackend,
    T: QueryFragment<B>,
{
    B::render(query).unwrap_or_default()
}

/// Renders `query` into an owned statement. `alias` is only for the error message.
pub(crate) fn to_owned<B, T>(query: &T, alias: &str) -> QueryResult<OwnedQuery<T::QueryId, B>>
where
    B: RoutedBackend,
    T: QueryFragment<B> + QueryId,
{
    let safe_to_cache = query.is_safe_to_cache_prepared(&B::default())?;
    // The binds first: a statement that needs a connection to look its types up is not
    // rendered at all.
    let dynamic = T::query_id().is_none();
    let binds = B::collect(
        query,
        || match dynamic {
            true => B::render(query),
            false => Ok(String::new()),
        },
        safe_to_cache,
    )?
    .map_err(|type_name| Error::CustomTypeBeforeCheckout {
        alias: alias.to_owned(),
        type_name,
    })?;
    Ok(match T::query_id() {
        Some(id) => OwnedQuery::Static(Owned {
            sql: match safe_to_cache {
                true => sql_of_type::<B, T>(id, query)?,
                false => B::render(query)?.into(),
            },
            binds,
            _id: PhantomData,
        }),
        None => OwnedQuery::Dynamic(binds),
    })
}

/// The SQL of the query type `id`, rendered from `query` the first time on this thread.
fn sql_of_type<B, T>(id: TypeId, query: &T) -> QueryResult<Arc<str>>
where
    B: RoutedBackend,
    T: QueryFragment<B>,
{
    let key = (TypeId::of::<B>(), id);
    if let Some(sql) = cached(&SQL, &key) {
        return Ok(sql);
    }
    let sql: Arc<str> = B::render(query)?.into();
    keep(&SQL, key, Arc::clone(&sql));
    Ok(sql)
}

/// Whether `query` binds a value of a custom type (one diesel looks up on the connection).
pub(crate) fn looks_up_types<B, T>(query: &T) -> bool
where
    B: RoutedBackend,
    T: QueryFragment<B>,
{
    // A query whose binds cannot be collected fails anyway: counted as looking up.
    !matches!(B::collect(query, || Ok(String::new()), false), Ok(Ok(_)))
}

/// Whether `e` is [`Error::CustomTypeBeforeCheckout`]: the statement needs a connection to
/// look its types up, not a routing change.
pub(crate) fn needs_lookup(e: &diesel::result::Error) -> bool {
    matches!(
        crate::error::routing_error(e),
        Some(Error::CustomTypeBeforeCheckout { .. })
    )
}

#[cfg(test)]
mod tests {
    use diesel::pg::Pg;
    use pindb_core::adapter::ReplicaFailure;
    use pindb_core::{Config, Operation, Router};

    use super::{refused, shape};

    diesel::define_sql_function! {
        /// A function that writes, unknown to pindb: a read until a replica refuses it.
        fn bump_views() -> diesel::sql_types::Integer;
    }

    /// A shape cached by type on one thread yields to a refusal learned on another: the
    /// statement runs on the master from then on, everywhere, rather than be refused once
    /// more by a replica on each thread.
    #[test]
    fn a_refusal_learned_on_one_thread_reaches_shapes_cached_on_another() {
        let config =
            Config::single_set("postgres://m@127.0.0.1:1/a", ["postgres://r@127.0.0.1:2/a"]);
        let router = Router::new(config).unwrap();
        let query = diesel::select(bump_views());
        assert_eq!(shape::<Pg, _>(&query, &router).unwrap().op, Operation::Read);
        fn id_of<T: diesel::query_builder::QueryId>(_: &T) -> Option<std::any::TypeId> {
            T::query_id()
        }
        let key = (id_of(&query).unwrap(), router.instance_id());
        let kept = |key| super::cached(&super::SHAPES, &key).map(|(_, s)| s.op);
        assert_eq!(
            kept(key),
            Some(Operation::Read),
            "kept by type on this thread"
        );
        let replica = router.topology().index_of("default-1").unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                let sql = refused::<Pg, _>(&query);
                let refused = "cannot execute UPDATE in a read-only transaction";
                (router.reroute(replica, ReplicaFailure::Refused, 0, &sql, &refused)).unwrap();
            });
        });
        assert_eq!(
            shape::<Pg, _>(&query, &router).unwrap().op,
            Operation::Write
        );
    }
}
