//! What the router knows about statements beyond their text: the configured
//! `write_functions` / `write_relations`, and statements a replica refused (learned once per
//! process, so the next one goes straight to the master). And the shapes of texts it
//! classified, per thread: an ORM that hands pindb SQL text (SeaORM, diesel's `sql_query`)
//! sends the same few texts again and again, and classifying one costs microseconds.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};

use super::{Operation, Shape};
use crate::classify::{mentions, Dialect, Footprint};
use crate::config::Config;

/// At most this many refused statements are remembered: SQL with inlined literals must not
/// grow the set without bound (a forgotten one costs one more refusal, then is learned again).
const MAX_LEARNED: usize = 10_000;

/// Per thread, at most this many shapes, of texts up to `MAX_CACHED_LEN` bytes and
/// `MAX_CACHED_BYTES` in all (so at most about 256 KiB a thread): SQL with inlined literals
/// must not grow the cache without bound (a full cache starts over).
const MAX_CACHED: usize = 256;
const MAX_CACHED_LEN: usize = 4096;
const MAX_CACHED_BYTES: usize = 256 * 1024;

/// A text's shape (its router's configuration and the refusals learned when it was
/// classified), with the router, the text it is of, and the count of learned refusals then:
/// a refusal learned since may make it a write.
struct Cached {
    router: u64,
    sql: Box<str>,
    learned: u64,
    shape: Shape,
}

/// A thread's kept shapes, the hasher of their keys, and the bytes of their texts.
#[derive(Default)]
struct Kept {
    hasher: foldhash::fast::RandomState,
    /// Keyed by the hash above: a fixed fast hash of it is enough.
    shapes: HashMap<u64, Cached, foldhash::fast::FixedState>,
    bytes: usize,
}

thread_local! {
    // Per thread, so the hot path takes no lock; keyed by a hash of router and text with a
    // seed of its own (an entry whose hash collides is replaced, never confused: the text is
    // compared).
    static SHAPES: RefCell<Kept> = RefCell::default();
}

/// The count of learned refusals, on a cache line of its own: read by every statement whose
/// shape is kept (diesel's by type, SeaORM's by text), it must not share one with the refused
/// set's lock, which a statement classified anew takes once any refusal is known.
#[repr(align(64))]
struct Learned(AtomicU64);

pub(super) struct Statements {
    /// The SQL of the router's databases.
    dialect: Dialect,
    /// `write_functions` and `write_relations`, lowercase, without schema.
    names: Box<[Box<str>]>,
    /// Hashes of statements a replica refused.
    refused: RwLock<HashSet<u64>>,
    /// How many statements a replica refused so far (0: the common case skips the hash and
    /// the lock); adapters that cache shapes by type compare it to know theirs still hold.
    learned: Learned,
    hasher: RandomState,
}

impl Statements {
    pub(super) fn new(config: &Config, dialect: Dialect) -> Self {
        let names = config
            .write_functions
            .iter()
            .chain(&config.write_relations)
            .map(|name| {
                // `app.bump_views` matches `bump_views`, schema or not (the safe side).
                let last = name.rsplit('.').next().unwrap_or(name);
                last.trim_matches('"').to_lowercase().into_boxed_str()
            })
            .collect();
        Statements {
            dialect,
            names,
            refused: RwLock::new(HashSet::new()),
            learned: Learned(AtomicU64::new(0)),
            hasher: RandomState::new(),
        }
    }

    /// `router` is the router's instance id; `with_table` (delegates need the main table) and
    /// `with_footprint` (some replica carries only some tables) are fixed per router.
    pub(super) fn shape_of(
        &self,
        router: u64,
        sql: &str,
        with_table: bool,
        with_footprint: bool,
    ) -> Shape {
        let kept = (sql.len() <= MAX_CACHED_LEN)
            .then(|| self.kept(router, sql, with_table, with_footprint))
            .flatten();
        kept.unwrap_or_else(|| self.decided(sql, with_table, with_footprint))
    }

    /// The shape of `sql` under the configuration and the refusals learned so far.
    fn decided(&self, sql: &str, with_table: bool, with_footprint: bool) -> Shape {
        let mut shape = self.configured(sql, with_table, with_footprint);
        if shape.op == Operation::Read && self.refused(sql) {
            shape.op = Operation::Write;
            shape.footprint = None;
        }
        shape
    }

    /// The shape of `sql` from this thread's cache, classified and kept on a miss; `None`
    /// where the cache cannot be used (this thread's locals being destroyed).
    fn kept(
        &self,
        router: u64,
        sql: &str,
        with_table: bool,
        with_footprint: bool,
    ) -> Option<Shape> {
        SHAPES
            .try_with(|cache| {
                // Nothing under the borrow calls back here; a failed borrow classifies anew.
                let mut kept = cache.try_borrow_mut().ok()?;
                let key = kept.hasher.hash_one((router, sql));
                // Read before the shape is decided, so a kept shape is never older than its
                // count: the refused set (a shared lock) is read only when the count moved.
                let learned = self.learned();
                if let Some(hit) = kept.shapes.get(&key) {
                    if hit.router == router && hit.learned == learned && *hit.sql == *sql {
                        return Some(hit.shape.clone());
                    }
                }
                let shape = self.decided(sql, with_table, with_footprint);
                if kept.shapes.len() >= MAX_CACHED || kept.bytes + sql.len() > MAX_CACHED_BYTES {
                    kept.shapes.clear();
                    kept.bytes = 0;
                }
                let cached = Cached {
                    router,
                    sql: sql.into(),
                    learned,
                    shape: shape.clone(),
                };
                if let Some(replaced) = kept.shapes.insert(key, cached) {
                    kept.bytes -= replaced.sql.len();
                }
                kept.bytes += sql.len();
                Some(shape)
            })
            .ok()
            .flatten()
    }

    /// The shape of `sql` under the configuration: pindb's classifier, then the configured
    /// `write_functions` / `write_relations`.
    fn configured(&self, sql: &str, with_table: bool, with_footprint: bool) -> Shape {
        let mut shape = Shape::of_sql_in(self.dialect, sql, with_table);
        if shape.op == Operation::Read && mentions(self.dialect, sql, &self.names) {
            shape.op = Operation::Write;
        }
        if with_footprint && shape.op == Operation::Read {
            shape.footprint = Footprint::of_sql(sql).map(std::sync::Arc::new);
        }
        shape
    }

    /// Whether a replica refused `sql` before.
    pub(super) fn refused(&self, sql: &str) -> bool {
        self.learned() != 0
            && self
                .refused
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(&self.hasher.hash_one(sql))
    }

    /// Remembers that a replica refused `sql`; true the first time.
    pub(super) fn learn_refused(&self, sql: &str) -> bool {
        let mut refused = self.refused.write().unwrap_or_else(PoisonError::into_inner);
        if refused.len() >= MAX_LEARNED {
            refused.clear();
        }
        let new = refused.insert(self.hasher.hash_one(sql));
        // Under the lock, after the insert: whoever sees the new count sees the statement.
        // Only a new one: each move makes every thread's typed shapes be asked for again.
        if new {
            self.learned.0.fetch_add(1, Ordering::Release);
        }
        new
    }

    /// How many refusals were learned: a shape classified before the count moved may be a
    /// read that is a write now.
    pub(super) fn learned(&self) -> u64 {
        self.learned.0.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use crate::adapter::ReplicaFailure;
    use crate::config::Config;
    use crate::router::{Operation, Router};

    fn router(write_functions: &[&str]) -> Router {
        let mut config =
            Config::single_set("postgres://m@127.0.0.1:1/a", ["postgres://r@127.0.0.1:2/a"]);
        config.write_functions = write_functions.iter().map(|f| f.to_string()).collect();
        Router::new(config).unwrap()
    }

    /// A text's shape is kept per router: two routers that see the same text differently
    /// each keep their own, and a statement a replica refuses is a write from then on,
    /// however often its text was seen before.
    #[test]
    fn a_kept_shape_is_its_routers_and_yields_to_a_refusal() {
        let sql = "SELECT bump_views($1)";
        let (plain, configured) = (router(&[]), router(&["bump_views"]));
        for _ in 0..3 {
            assert_eq!(plain.shape_of(sql).op, Operation::Read);
            assert_eq!(configured.shape_of(sql).op, Operation::Write);
        }
        let replica = plain.topology().index_of("default-1").unwrap();
        let refused = ReplicaFailure::Refused;
        plain.reroute(replica, refused, 0, sql, &"test").unwrap();
        assert_eq!(plain.shape_of(sql).op, Operation::Write);
        let other = "SELECT id FROM notes";
        assert_eq!(plain.shape_of(other).op, Operation::Read, "only that text");
    }

    /// Texts past the cache's bound, or longer than it keeps, are classified all the same.
    #[test]
    fn a_full_cache_starts_over() {
        let r = router(&[]);
        for i in 0..2 * super::MAX_CACHED {
            let sql = format!("SELECT {i} FROM notes");
            assert_eq!(r.shape_of(&sql).op, Operation::Read);
            assert_eq!(
                r.shape_of(&format!("DELETE FROM notes WHERE id = {i}")).op,
                Operation::Write
            );
        }
        let kept = || super::SHAPES.with(|c| c.borrow().shapes.len());
        let before = kept();
        let long = format!(
            "UPDATE notes SET body = '{}'",
            "x".repeat(super::MAX_CACHED_LEN)
        );
        assert_eq!(r.shape_of(&long).op, Operation::Write);
        assert_eq!(
            kept(),
            before,
            "a text longer than the cache keeps is not kept"
        );
        assert!(before <= super::MAX_CACHED);
        super::SHAPES.with(|c| assert!(c.borrow().bytes <= super::MAX_CACHED_BYTES));
    }

    /// Where this thread's cache cannot be used (taken, or its locals being destroyed), the
    /// text is classified all the same, no panic.
    #[test]
    fn without_the_cache_a_text_is_classified_anew() {
        let r = router(&["bump_views"]);
        super::SHAPES.with(|c| {
            let _taken = c.borrow_mut();
            assert_eq!(r.shape_of("SELECT bump_views($1)").op, Operation::Write);
            assert_eq!(r.shape_of("SELECT 1").op, Operation::Read);
        });
    }
}
