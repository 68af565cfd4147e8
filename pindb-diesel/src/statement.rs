//! What the routed connection needs to know about a diesel query before it runs: its
//! [`Shape`] (read or write and the main table for delegate hints, from pindb-core, cached per
//! query type), and an owned, `Send` copy of the statement for when a connection must
//! be checked out first.
//!
//! This module makes no routing decision and does no I/O.

use std::any::TypeId;
use std::cell::RefCell;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;

use diesel::pg::{Pg, PgMetadataLookup, PgQueryBuilder, PgTypeMetadata};
use diesel::query_builder::bind_collector::RawBytesBindCollector;
use diesel::query_builder::{AstPass, CollectedQuery, Query, QueryBuilder, QueryFragment, QueryId};
use diesel::result::QueryResult;
use diesel::sql_types::Untyped;
use pindb_core::adapter::Shape;
use pindb_core::Router;

use crate::error::Error;

type Collected = CollectedQuery<RawBytesBindCollector<Pg>>;

/// A statement rendered to SQL text plus bind bytes: `Send + 'static`, so it can wait for a
/// pool checkout, and runnable on any `AsyncPgConnection`.
///
/// It keeps the original query's static `QueryId` (`Id`), so the connection's prepared
/// statement cache files it under the same key as the typed query: the statement is prepared
/// once per connection, whichever path ran it first. Its SQL is shared with every statement of
/// the type when diesel would cache it by type (the SQL is then fixed by the type): rendered
/// once per thread, not per statement.
pub(crate) struct Owned<Id> {
    sql: Arc<str>,
    /// The binds (and whether diesel may cache the statement), with empty SQL.
    binds: Collected,
    _id: PhantomData<fn() -> Id>,
}

impl<Id: 'static> QueryId for Owned<Id> {
    type QueryId = Id;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl<Id> QueryFragment<Pg> for Owned<Id> {
    fn walk_ast<'b>(&'b self, mut pass: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        pass.push_sql(&self.sql);
        self.binds.walk_ast(pass)
    }
}

impl<Id> Query for Owned<Id> {
    type SqlType = Untyped;
}

/// An owned statement: with the query's static id when it has one (cached by type, as diesel
/// caches the typed query), else SQL-keyed (as diesel caches a query without one).
pub(crate) enum OwnedQuery<Id> {
    Static(Owned<Id>),
    Dynamic(Collected),
}

thread_local! {
    // Per thread, so the hot path takes no lock. Bounded by the number of query types.
    static SHAPES: RefCell<HashMap<(TypeId, u64), Shape>> = RefCell::new(HashMap::new());
    // The SQL of each query type diesel caches by type (its SQL is fixed by the type).
    static SQL: RefCell<HashMap<TypeId, Arc<str>>> = RefCell::new(HashMap::new());
}

/// The shape of `query`: cached by its static `QueryId` when it has one (with the table
/// worked out once), else rendered each time (and the table only looked for when asked).
pub(crate) fn shape<T>(query: &T, router: &Router) -> QueryResult<Shape>
where
    T: QueryFragment<Pg> + QueryId,
{
    let Some(id) = T::query_id() else {
        return Ok(router.shape_of(&render(query)?));
    };
    let key = (id, router.instance_id());
    if let Some(shape) = SHAPES.with(|c| c.borrow().get(&key).cloned()) {
        return Ok(shape);
    }
    // Diesel's own rule: only a statement whose SQL is fixed by its type is cached by type.
    // Checked on a miss only, so the hit path stays one lookup.
    if !query.is_safe_to_cache_prepared(&Pg)? {
        return Ok(router.shape_of(&render(query)?));
    }
    let shape = router.shape_of(&render(query)?);
    SHAPES.with(|c| c.borrow_mut().insert(key, shape.clone()));
    Ok(shape)
}

/// A replica refused `query`: forgets its cached shape on this thread (pindb-core remembers
/// the statement, so its next shape is a write) and returns its SQL for pindb-core.
pub(crate) fn refused<T: QueryFragment<Pg> + QueryId>(query: &T, router: &Router) -> String {
    if let Some(id) = T::query_id() {
        SHAPES.with(|c| c.borrow_mut().remove(&(id, router.instance_id())));
    }
    render(query).unwrap_or_default()
}

fn render<T: QueryFragment<Pg>>(query: &T) -> QueryResult<String> {
    let mut qb = PgQueryBuilder::default();
    query.to_sql(&mut qb, &Pg)?;
    Ok(qb.finish())
}

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

/// Renders `query` into an owned statement. `alias` is only for the error message.
pub(crate) fn to_owned<T>(query: &T, alias: &str) -> QueryResult<OwnedQuery<T::QueryId>>
where
    T: QueryFragment<Pg> + QueryId,
{
    let safe_to_cache = query.is_safe_to_cache_prepared(&Pg)?;
    let mut binds = RawBytesBindCollector::<Pg>::new();
    let mut lookup = NoLookup::default();
    query.collect_binds(&mut binds, &mut lookup as &mut dyn PgMetadataLookup, &Pg)?;
    if let Some(type_name) = lookup.missing {
        return Err(Error::CustomTypeBeforeCheckout {
            alias: alias.to_owned(),
            type_name,
        }
        .into());
    }
    Ok(match T::query_id() {
        Some(id) => OwnedQuery::Static(Owned {
            sql: match safe_to_cache {
                true => sql_of_type(id, query)?,
                false => render(query)?.into(),
            },
            binds: CollectedQuery::new(String::new(), safe_to_cache, binds),
            _id: PhantomData,
        }),
        None => OwnedQuery::Dynamic(CollectedQuery::new(render(query)?, safe_to_cache, binds)),
    })
}

/// The SQL of the query type `id`, rendered from `query` the first time on this thread.
fn sql_of_type<T: QueryFragment<Pg>>(id: TypeId, query: &T) -> QueryResult<Arc<str>> {
    if let Some(sql) = SQL.with(|c| c.borrow().get(&id).cloned()) {
        return Ok(sql);
    }
    let sql: Arc<str> = render(query)?.into();
    SQL.with(|c| c.borrow_mut().insert(id, Arc::clone(&sql)));
    Ok(sql)
}

/// Whether `query` binds a value of a custom type (one diesel looks up on the connection).
pub(crate) fn looks_up_types<T: QueryFragment<Pg>>(query: &T) -> bool {
    let mut binds = RawBytesBindCollector::<Pg>::new();
    let mut lookup = NoLookup::default();
    let collected = query.collect_binds(&mut binds, &mut lookup as &mut dyn PgMetadataLookup, &Pg);
    // A query whose binds cannot be collected fails anyway; not pipelined.
    collected.is_err() || lookup.missing.is_some()
}

/// Whether `e` is [`Error::CustomTypeBeforeCheckout`]: the statement needs a connection to
/// look its types up, not a routing change.
pub(crate) fn needs_lookup(e: &diesel::result::Error) -> bool {
    matches!(
        crate::error::routing_error(e),
        Some(Error::CustomTypeBeforeCheckout { .. })
    )
}
