//! What a context keeps per replica set: its pin, the replica it reads from, the position a
//! replica must have, and its writes' positions ([`SetState`]).

use std::sync::Arc;

use super::PinOrigin;
use crate::lsn::Lsn;

/// The replica a context reads a set from: which router chose it, its index among the set's
/// replicas, and the host generation it had then (a runtime replica's host can change, and
/// what the context read came from the host it had).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sticky {
    pub(crate) router: u64,
    pub(crate) replica: usize,
    pub(crate) generation: u64,
}

pub(crate) struct SetState {
    pub(super) name: Arc<str>,
    pub(crate) pin: Option<PinOrigin>,
    /// The replica chosen for this set, kept for the rest of the context.
    pub(crate) replica: Option<Sticky>,
    /// The WAL position a replica must have replayed to serve this context (read-your-writes).
    pub(crate) required: Option<Lsn>,
    /// Reads of this set routed to `replica` so far, counted until [`SetState::settled`]: the
    /// rules tell none, one and more apart, nothing else.
    pub(crate) replica_reads: u32,
    /// A replica this context had read from failed: the rest of its reads of the set go to
    /// the master, the one server known to be past whatever it read (monotonic reads).
    pub(crate) failed_over: bool,
    /// The master served a read of this set in this context: no replica is known to be past
    /// what it saw (that would take the master's position after the read, a round trip), so
    /// the rest of its reads of the set go to the master too (monotonic reads).
    pub(crate) read_master: bool,
    /// Writes of this set in this context whose master position is not known: every write
    /// decision, a write under a `master()` guard and an explicit `pin` (it may stand for
    /// writes pindb does not see) add one; a write whose adapter learned the position in its
    /// own flight ([`Router::write_position`](crate::Router::write_position)) or that was
    /// never sent takes its own off.
    pub(super) unlearned: u32,
    /// The highest master position learned with this context's writes.
    pub(super) learned: Option<Lsn>,
    /// Writes of this set sent to its master whose outcome is not known yet
    /// ([`WriteFlight`](crate::adapter::WriteFlight)): a position read now could be before them.
    pub(crate) in_flight: u32,
    /// A write of this set was dropped in flight where nobody can tell when it lands: it
    /// may still commit, at a position nobody will know.
    pub(crate) lost_flight: bool,
    /// MariaDB: `SetDomain::outside_seen` before this context's first write of the set
    /// (`None`: none yet; `Some(0)` once pinned by hand, for writes made before the pin: its
    /// master must have nothing outside the domain at all).
    pub(super) outside_before: Option<u64>,
}

impl SetState {
    pub(super) fn new(name: Arc<str>) -> Self {
        SetState {
            name,
            pin: None,
            replica: None,
            required: None,
            replica_reads: 0,
            failed_over: false,
            read_master: false,
            unlearned: 0,
            learned: None,
            in_flight: 0,
            lost_flight: false,
            outside_before: None,
        }
    }

    pub(crate) fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// More reads of `replica` change nothing any rule tells apart: the rules compare
    /// `replica_reads` with 0 (read before: monotonic reads) and 1 (`Router::reroute`: a
    /// replica that failed the context's first read may be swapped for another). A settled
    /// read may be remembered, uncounted (the context's read memo).
    pub(crate) fn settled(&self) -> bool {
        self.replica_reads > 1
    }

    /// A write of this set may still commit after now, at a position not known now.
    pub(crate) fn unsure(&self) -> bool {
        self.in_flight > 0 || self.lost_flight
    }
}
