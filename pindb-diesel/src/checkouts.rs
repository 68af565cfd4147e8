//! The connections one routed connection has checked out, and where its next statement runs.
//!
//! Shared by the async and the sync routed connections: at most one checkout per alias, made
//! on first use; while a transaction is open every statement goes to its connection;
//! otherwise the router decides. No I/O here: the caller checks out when told to.

use diesel::result::QueryResult;
use pindb_core::{Hint, Router, StatementKind};

use crate::error::Error;
use crate::statement::Shape;

/// Where a statement runs.
pub(crate) enum Slot {
    /// On the held connection at this position.
    Held(usize),
    /// On a connection of the database at this index, to check out first.
    Checkout(usize),
}

pub(crate) struct Checkouts<C> {
    /// `(database index, connection)`, at most one per database.
    held: Vec<(usize, C)>,
    /// Position in `held` of the connection running the open transaction.
    tx: Option<usize>,
}

impl<C> Checkouts<C> {
    pub(crate) fn new() -> Self {
        Checkouts {
            held: Vec::new(),
            tx: None,
        }
    }

    /// Decides where a statement of this shape runs. Synchronous: a strict refusal or an
    /// unknown alias is reported before any I/O.
    pub(crate) fn decide(&self, router: &Router, shape: &Shape) -> QueryResult<Slot> {
        if let Some(h) = self.tx {
            return Ok(Slot::Held(h));
        }
        let tables;
        let hint = match &shape.table {
            Some(table) if router.has_delegates() => {
                tables = [&**table];
                Hint::tables(&tables)
            }
            _ => Hint::default(),
        };
        let route = match shape.kind {
            StatementKind::Read => router.db_for_read(&hint),
            StatementKind::Write => router.db_for_write(&hint),
        }
        .map_err(Error::from)?;
        Ok(
            match self.held.iter().position(|(i, _)| *i == route.index) {
                Some(h) => Slot::Held(h),
                None => Slot::Checkout(route.index),
            },
        )
    }

    /// Keeps a new checkout; returns its position.
    pub(crate) fn push(&mut self, index: usize, conn: C) -> usize {
        self.held.push((index, conn));
        self.held.len() - 1
    }

    pub(crate) fn get(&mut self, h: usize) -> &mut C {
        &mut self.held[h].1
    }

    /// The held connection running the open transaction, if any.
    pub(crate) fn tx(&self) -> Option<usize> {
        self.tx
    }

    pub(crate) fn set_tx(&mut self, tx: Option<usize>) {
        self.tx = tx;
    }

    /// After a commit or rollback, given the transaction depth the connection now reports:
    /// still open keeps the transaction mode; closed leaves it; a broken transaction manager
    /// also gives the connection back (the pool discards it), so the next statement is routed
    /// afresh instead of sticking to a dead connection.
    pub(crate) fn settle<D>(&mut self, depth: QueryResult<Option<D>>) {
        let Some(h) = self.tx else { return };
        match depth {
            Ok(Some(_)) => {}
            Ok(None) => self.tx = None,
            Err(_) => {
                self.tx = None;
                self.held.remove(h);
            }
        }
    }

    pub(crate) fn aliases<'r>(&self, router: &'r Router) -> Vec<&'r str> {
        let dbs = router.databases();
        self.held
            .iter()
            .map(|(i, _)| dbs[*i].alias.as_str())
            .collect()
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut C> {
        self.held.iter_mut().map(|(_, c)| c)
    }
}
