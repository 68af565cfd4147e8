//! What the router knows about statements beyond their text: the configured
//! `write_functions` / `write_relations`, and statements a replica refused (learned once per
//! process, so the next one goes straight to the master).

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{PoisonError, RwLock};

use super::{Operation, Shape};
use crate::classify::{mentions, Dialect, Footprint};
use crate::config::Config;

/// At most this many refused statements are remembered: SQL with inlined literals must not
/// grow the set without bound (a forgotten one costs one more refusal, then is learned again).
const MAX_LEARNED: usize = 10_000;

pub(super) struct Statements {
    /// The SQL of the router's databases.
    dialect: Dialect,
    /// `write_functions` and `write_relations`, lowercase, without schema.
    names: Box<[Box<str>]>,
    /// Hashes of statements a replica refused.
    refused: RwLock<HashSet<u64>>,
    /// Whether `refused` has any: the common case skips the hash and the lock.
    any_refused: AtomicBool,
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
            any_refused: AtomicBool::new(false),
            hasher: RandomState::new(),
        }
    }

    /// `with_footprint`: some replica carries only some tables.
    pub(super) fn shape_of(&self, sql: &str, with_table: bool, with_footprint: bool) -> Shape {
        let mut shape = Shape::of_sql_in(self.dialect, sql, with_table);
        if shape.op == Operation::Read
            && (mentions(self.dialect, sql, &self.names) || self.refused(sql))
        {
            shape.op = Operation::Write;
        }
        if with_footprint && shape.op == Operation::Read {
            shape.footprint = Footprint::of_sql(sql).map(std::sync::Arc::new);
        }
        shape
    }

    /// Whether a replica refused `sql` before.
    pub(super) fn refused(&self, sql: &str) -> bool {
        self.any_refused.load(Ordering::Acquire)
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
        self.any_refused.store(true, Ordering::Release);
        new
    }
}
