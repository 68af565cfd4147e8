//! The replication domain a MariaDB set writes in ([`SetDomain`]): learned from its master's
//! first reading and required of every reading after, and the fingerprint of what its master
//! has outside that domain, which a keyed context compares before and after its writes (see
//! `Consistency::master_positions`). A PostgreSQL set has one WAL: its readings carry no
//! domain, and nothing here applies to them.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

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
}

impl Default for SetDomain {
    fn default() -> Self {
        SetDomain {
            domain: AtomicU64::new(UNKNOWN),
            outside_seen: AtomicU64::new(0),
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
                return Err(format!(
                    "its gtid_domain_id is {domain}, and its set's was {set} when pindb first \
                     read it: positions in two domains cannot be compared; restart the service \
                     after changing a set's gtid_domain_id"
                ))
            }
        }
        let print = reading.outside.fingerprint();
        // Stored only when it changes: routers read it at every write decision.
        if self.outside_seen.load(Relaxed) != print {
            self.outside_seen.store(print, Relaxed);
        }
        Ok(())
    }

    /// A reading of one of the set's replicas: its position is in its own domain, which must
    /// be the set's (checked at every reading: a server's `gtid_domain_id` can change while
    /// pindb runs, and its position in another domain says nothing of the set's writes).
    pub(crate) fn replica_read(&self, reading: &Reading) -> Result<(), String> {
        let Some(domain) = reading.domain else {
            return Ok(());
        };
        match self.domain.load(Relaxed) {
            UNKNOWN => Err(
                "the set's GTID domain is not known yet (its master was not read \
                            yet): its position proves nothing"
                    .to_owned(),
            ),
            set if set == u64::from(domain) => Ok(()),
            set => Err(format!(
                "its gtid_domain_id is {domain} and its set's {set}: its position in its own \
                 domain says nothing of the set's writes; give every server of the set the same \
                 gtid_domain_id"
            )),
        }
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

    fn reading(domain: u32, outside: &str) -> Reading {
        Reading {
            position: None,
            outside: GtidPosition::parse(outside).unwrap(),
            domain: Some(domain),
        }
    }

    #[test]
    fn the_masters_first_reading_says_the_domain_and_every_reading_after_must_be_in_it() {
        let set = SetDomain::default();
        assert!(
            set.replica_read(&reading(0, "")).is_err(),
            "before the master"
        );
        set.master_read(&reading(0, "7-1-5")).unwrap();
        assert_ne!(set.outside_seen(), 0);
        set.replica_read(&reading(0, "7-1-4")).unwrap();
        let e = set.replica_read(&reading(1, "0-1-480")).unwrap_err();
        assert!(e.contains("gtid_domain_id is 1 and its set's 0"), "{e}");
        let e = set.master_read(&reading(1, "0-1-500")).unwrap_err();
        assert!(e.contains("restart"), "{e}");
        // PostgreSQL: one WAL.
        let wal = Reading::of_wal(None);
        set.master_read(&wal).unwrap();
        set.replica_read(&wal).unwrap();
    }
}
