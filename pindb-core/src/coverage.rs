//! Which tables a replica carries. A streaming standby carries everything; a logical replica
//! carries what its subscriptions' publications publish, learned from the master by the
//! monitor. Until it is learned, a logical replica carries nothing (no read goes there).

use std::collections::HashSet;
use std::sync::{Arc, PoisonError, RwLock};

use crate::classify::Footprint;

/// What a logical replica was found to carry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Carried {
    /// `schema.table` of each table published whole and synchronized, and its bare name when
    /// the replica's search path resolves the bare name to it.
    pub(crate) relations: HashSet<Box<str>>,
    /// Functions defined outside `pg_catalog` on the replica (lowercase): they may read
    /// tables it does not carry, so a read that calls one needs every table.
    pub(crate) functions: Arc<HashSet<Box<str>>>,
}

impl Carried {
    /// Whether a read with this footprint (`None`: not known) finds all it reads here.
    fn covers(&self, footprint: Option<&Footprint>) -> bool {
        footprint.is_some_and(|f| {
            f.relations().all(|r| self.relations.contains(r))
                && !f.functions().any(|c| self.functions.contains(c))
        })
    }

    /// The published tables, sorted, for `pindb status`.
    pub(crate) fn tables(&self) -> Vec<String> {
        let mut tables: Vec<String> = self
            .relations
            .iter()
            .filter(|r| r.contains('.'))
            .map(|r| r.to_string())
            .collect();
        tables.sort();
        tables
    }
}

/// One replica's coverage.
#[derive(Debug)]
pub(crate) enum Coverage {
    /// A streaming standby: a copy of the whole cluster.
    Everything,
    /// A logical replica: what the monitor last learned (`None`: not yet).
    Learned(RwLock<Option<Arc<Carried>>>),
}

impl Coverage {
    pub(crate) fn learned() -> Coverage {
        Coverage::Learned(RwLock::new(None))
    }

    /// Whether a read with this footprint can run here.
    pub(crate) fn covers(&self, footprint: Option<&Footprint>) -> bool {
        match self {
            Coverage::Everything => true,
            Coverage::Learned(cell) => cell
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
                .is_some_and(|c| c.covers(footprint)),
        }
    }

    /// Records what the monitor learned (`None`: it could not tell; the replica serves no
    /// read until it can).
    pub(crate) fn set(&self, carried: Option<Carried>) {
        if let Coverage::Learned(cell) = self {
            *cell.write().unwrap_or_else(PoisonError::into_inner) = carried.map(Arc::new);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn carried(relations: &[&str], functions: &[&str]) -> Coverage {
        let c = Coverage::learned();
        c.set(Some(Carried {
            relations: relations.iter().map(|r| Box::from(*r)).collect(),
            functions: Arc::new(functions.iter().map(|r| Box::from(*r)).collect()),
        }));
        c
    }

    #[test]
    fn a_logical_replica_serves_only_reads_of_what_it_carries() {
        let c = carried(&["logical.notes", "notes"], &["report_audit"]);
        let f = |sql: &str| Footprint::of_sql(sql);
        assert!(c.covers(f("SELECT * FROM logical.notes WHERE id = $1").as_ref()));
        assert!(c.covers(f("SELECT count(*) FROM notes").as_ref()));
        assert!(!c.covers(f("SELECT * FROM logical.audit").as_ref()));
        assert!(!c.covers(f("SELECT n.* FROM notes n JOIN logical.audit a USING (id)").as_ref()));
        assert!(
            !c.covers(f("SELECT report_audit(id) FROM notes").as_ref()),
            "a function of its own"
        );
        assert!(!c.covers(None), "unknown footprint");
        assert!(
            !Coverage::learned().covers(f("SELECT 1").as_ref()),
            "not learned yet"
        );
        assert!(Coverage::Everything.covers(None));
        c.set(None);
        assert!(!c.covers(f("SELECT * FROM notes").as_ref()), "forgotten");
    }
}
