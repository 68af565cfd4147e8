//! MariaDB GTID positions: the text form of `@@gtid_slave_pos`, `@@gtid_binlog_pos`,
//! `@@gtid_current_pos` and `last_gtid` (one `domain-server-seq` per replication domain),
//! and how two of them compare.
//!
//! Owns the type and its text form only; which domain a set writes in, and where positions
//! come from, is the backend's business.

use std::fmt;
use std::str::FromStr;

/// One global transaction id: `domain-server-seq`.
///
/// Within a domain, sequence numbers grow with every transaction whatever server wrote it
/// (a failover continues the domain's sequence), so a server has a write when its position
/// in the write's domain is at least the write's sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Gtid {
    /// The replication domain (`gtid_domain_id` of the server that wrote it).
    pub domain: u32,
    /// The `server_id` of the server that wrote it.
    pub server: u32,
    /// The transaction's sequence number in its domain.
    pub seq: u64,
}

impl Gtid {
    fn parse(text: &str) -> Option<Gtid> {
        let mut parts = text.trim().splitn(3, '-');
        let domain = parts.next()?.parse().ok()?;
        let server = parts.next()?.parse().ok()?;
        let seq = parts.next()?.parse().ok()?;
        Some(Gtid {
            domain,
            server,
            seq,
        })
    }
}

impl fmt::Display for Gtid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.domain, self.server, self.seq)
    }
}

/// A MariaDB GTID position: the last transaction applied in each replication domain, at most
/// one per domain, kept in domain order.
///
/// ```
/// use pindb_core::{Gtid, GtidPosition};
///
/// let replica: GtidPosition = "0-1-100,1-2-7".parse().unwrap();
/// assert_eq!(replica.seq_in(0), Some(100));
/// assert!(replica.has(Gtid { domain: 0, server: 3, seq: 99 }));
/// assert!(!replica.has(Gtid { domain: 0, server: 1, seq: 101 }));
/// assert!(!replica.has(Gtid { domain: 2, server: 1, seq: 1 }));
/// assert_eq!(replica.to_string(), "0-1-100,1-2-7");
/// assert!("0-1".parse::<GtidPosition>().is_err());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct GtidPosition {
    gtids: Vec<Gtid>,
}

impl GtidPosition {
    /// Parses a comma-separated list of `domain-server-seq` (empty text: no transaction
    /// yet). Two entries for one domain are refused: the server never reports that, and
    /// which one counts would be a guess.
    pub fn parse(text: &str) -> Result<GtidPosition, ParseGtidError> {
        let error = || ParseGtidError(text.to_owned());
        let mut gtids = Vec::new();
        for part in text.split(',') {
            if part.trim().is_empty() {
                if text.trim().is_empty() {
                    continue;
                }
                return Err(error());
            }
            gtids.push(Gtid::parse(part).ok_or_else(error)?);
        }
        gtids.sort_unstable_by_key(|g| g.domain);
        if gtids.windows(2).any(|w| w[0].domain == w[1].domain) {
            return Err(error());
        }
        Ok(GtidPosition { gtids })
    }

    /// The sequence number reached in `domain`, if any transaction of it was seen.
    pub fn seq_in(&self, domain: u32) -> Option<u64> {
        self.gtids
            .binary_search_by_key(&domain, |g| g.domain)
            .ok()
            .map(|i| self.gtids[i].seq)
    }

    /// Whether a server at this position has applied `write`: it has reached the write's
    /// sequence number in the write's domain.
    pub fn has(&self, write: Gtid) -> bool {
        self.seq_in(write.domain)
            .is_some_and(|seq| seq >= write.seq)
    }

    /// Whether this position has everything `other` has, in every domain of `other`.
    pub fn includes(&self, other: &GtidPosition) -> bool {
        other.gtids.iter().all(|g| self.has(*g))
    }

    /// The GTIDs, one per domain, in domain order.
    pub fn gtids(&self) -> &[Gtid] {
        &self.gtids
    }

    /// This position outside `domain`: the other domains' GTIDs.
    pub(crate) fn outside(&self, domain: u32) -> GtidPosition {
        GtidPosition {
            gtids: self
                .gtids
                .iter()
                .filter(|g| g.domain != domain)
                .copied()
                .collect(),
        }
    }

    /// 0 for an empty position, else a hash of its GTIDs, which changes with every
    /// transaction written in one of its domains (with `gtid_strict_mode`, a domain's
    /// sequence numbers only grow). Two readings of a master whose positions outside the
    /// set's domain have the same fingerprint prove nothing was written outside it between
    /// them.
    pub(crate) fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        if self.gtids.is_empty() {
            return 0;
        }
        // Fixed keys: a fingerprint one probe read is compared with another's.
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.gtids.hash(&mut hasher);
        hasher.finish().max(1)
    }
}

impl fmt::Display for GtidPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, gtid) in self.gtids.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{gtid}")?;
        }
        Ok(())
    }
}

impl FromStr for GtidPosition {
    type Err = ParseGtidError;

    fn from_str(s: &str) -> Result<GtidPosition, ParseGtidError> {
        GtidPosition::parse(s)
    }
}

/// The text is not a MariaDB GTID position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not a MariaDB GTID position (expected comma-separated `domain-server-seq`, at \
     most one per domain, e.g. `0-1-100,1-2-7`)"
)]
pub struct ParseGtidError(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_text_is_no_transaction_yet() {
        let none = GtidPosition::parse("").unwrap();
        assert_eq!(none.seq_in(0), None);
        assert_eq!(none.fingerprint(), 0);
        assert!(!none.has(Gtid {
            domain: 0,
            server: 1,
            seq: 1
        }));
        assert!(none.includes(&none));
    }

    #[test]
    fn the_fingerprint_outside_a_domain_moves_with_every_write_there_only() {
        let print = |text: &str| GtidPosition::parse(text).unwrap().outside(0).fingerprint();
        assert_eq!(print("0-1-100"), 0, "nothing outside domain 0");
        assert_eq!(
            print("0-1-100,1-2-7"),
            print("0-1-200,1-2-7"),
            "writes in domain 0"
        );
        assert_ne!(
            print("0-1-100,1-2-7"),
            print("0-1-100,1-2-8"),
            "a write in domain 1"
        );
        assert_ne!(
            print("0-1-100,1-2-7"),
            print("0-1-100,1-2-7,2-3-1"),
            "a new domain"
        );
        assert_ne!(print("0-1-100,1-2-7"), 0);
    }

    #[test]
    fn refuses_what_the_server_never_reports() {
        for bad in [
            "0-1",
            "0-1-x",
            "a-1-2",
            "0-1-2,",
            ",0-1-2",
            "0-1-2,0-2-3",
            "0-1-2-3",
            "-1-1-1",
        ] {
            assert!(GtidPosition::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn compares_domain_by_domain() {
        let replica = GtidPosition::parse("1-2-7, 0-1-100").unwrap();
        assert_eq!(replica.to_string(), "0-1-100,1-2-7");
        // Another server of the domain wrote it: only the sequence number counts.
        assert!(replica.has(Gtid {
            domain: 1,
            server: 9,
            seq: 7
        }));
        assert!(!replica.has(Gtid {
            domain: 1,
            server: 2,
            seq: 8
        }));
        assert!(replica.includes(&GtidPosition::parse("0-3-50").unwrap()));
        assert!(!replica.includes(&GtidPosition::parse("0-3-50,2-1-1").unwrap()));
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics_and_round_trips(text in "[0-9,\\- ]{0,40}") {
            if let Ok(position) = GtidPosition::parse(&text) {
                proptest::prop_assert_eq!(GtidPosition::parse(&position.to_string()).unwrap(), position);
            }
        }
    }
}
