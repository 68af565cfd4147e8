//! The replication domain a MariaDB set writes in ([`SetDomain`]): learned from its master's
//! first reading and required of every reading after, and the fingerprint of what its master
//! has outside that domain, which a keyed context compares before and after its writes (see
//! `Consistency::master_positions`). A PostgreSQL set has one WAL: its readings carry no
//! domain, and nothing here applies to them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use crate::probe::Reading;

const UNKNOWN: u64 = u64::MAX;

/// One per set, shared by the monitor, the consistency checks and the router.
#[derive(Debug)]
pub(crate) struct SetDomain {
    /// The set's `gtid_domain_id`, or [`UNKNOWN`] before its master's first reading.
    domain: AtomicU64,
    /// `GtidPosition::fingerprint` of the master's position outside the domain, as last
    /// read (0 before, and always on PostgreSQL).
    outside_seen: AtomicU64,
    /// A master reading was refused for a domain change.
    changed: AtomicBool,
}

impl Default for SetDomain {
    fn default() -> Self {
        SetDomain {
            domain: AtomicU64::new(UNKNOWN),
            outside_seen: AtomicU64::new(0),
            changed: AtomicBool::new(false),
        }
    }
}

impl SetDomain {
    /// A reading of the set's master. The first says the set's domain; one in another domain
    /// after (its `gtid_domain_id` changed while pindb runs) is refused, as a position of two
    /// domains proves nothing. Records the fingerprint of what it has outside the domain.
    pub(crate) fn master_read(&self, reading: &Reading) -> Result<(), String> {
        let Some(domain) = reading.domain else {
            return Ok(());
        };
        let domain = u64::from(domain);
        match self
            .domain
            .compare_exchange(UNKNOWN, domain, Relaxed, Relaxed)
        {
            Ok(_) => {}
            Err(set) if set == domain => {}
            Err(set) => {
                self.changed.store(true, Relaxed);
                return Err(format!(
                    "its gtid_domain_id is {domain}, and its set's was {set} when pindb first \
                     read it: positions in two domains cannot be compared; restart the service \
                     after changing a set's gtid_domain_id"
                ));
            }
        }
        let print = reading.outside.fingerprint();
        // Stored only when it changes: routers read it at every write decision.
        if self.outside_seen.load(Relaxed) != print {
            self.outside_seen.store(print, Relaxed);
        }
        Ok(())
    }

    /// A reading of one of the set's replicas, in the set's domain: a replica's own
    /// `gtid_domain_id` does not matter (it writes nothing; a replica of several masters has
    /// one of its own), what it applied in the set's domain does. Before the master's first
    /// reading, as the replica read it (the start-up check found its domain the master's).
    pub(crate) fn replica_read(&self, reading: Reading) -> Reading {
        match self.domain.load(Relaxed) {
            UNKNOWN => reading,
            set => reading.in_domain(set as u32),
        }
    }

    /// Whether a reading of the master was refused for a domain change: its samples since
    /// prove no replica fresh.
    pub(crate) fn changed(&self) -> bool {
        self.changed.load(Relaxed)
    }

    /// The fingerprint of the master's position outside the domain, as last read: a keyed
    /// context takes it before its first write of the set.
    pub(crate) fn outside_seen(&self) -> u64 {
        self.outside_seen.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gtid::GtidPosition;

    fn reading(domain: u32, whole: &str) -> Reading {
        Reading::of_gtids(GtidPosition::parse(whole).unwrap(), domain)
    }

    #[test]
    fn the_masters_first_reading_says_the_domain_and_replicas_are_read_in_it() {
        let set = SetDomain::default();
        let before = set.replica_read(reading(1, "0-1-480,1-3-90000"));
        assert_eq!(
            before.position,
            Some(crate::lsn::Lsn(90_000)),
            "as read, before"
        );
        set.master_read(&reading(0, "0-1-500,7-1-5")).unwrap();
        assert_ne!(set.outside_seen(), 0);
        // A replica of several masters: its own domain 1, far ahead, is not the set's.
        let replica = set.replica_read(reading(1, "0-1-480,1-3-90000"));
        assert_eq!(replica.position, Some(crate::lsn::Lsn(480)));
        assert_eq!(replica.outside.to_string(), "1-3-90000");
        assert!(!set.changed());
        let e = set.master_read(&reading(1, "0-1-500,1-1-1")).unwrap_err();
        assert!(e.contains("restart"), "{e}");
        assert!(set.changed());
        // PostgreSQL: one WAL.
        let wal = Reading::of_wal(None);
        set.master_read(&wal).unwrap();
        assert_eq!(set.replica_read(wal).domain, None);
    }
}
