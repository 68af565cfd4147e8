//! Writes in flight: a write sent to its master whose outcome is not known yet.
//!
//! A keyed context records the master's position at its end. That position covers the
//! context's writes only if they are over: a write whose future was dropped (a timeout layer,
//! a client gone, `select!`) may still be running on the master and commit later, past any
//! position read at the drop. An adapter marks each write it sends with a [`WriteFlight`]
//! (from [`Router::write_flight`](crate::Router::write_flight)) and lands it when the
//! outcome is known. The context's end waits, briefly, for the flights still out, then reads
//! the position; a flight dropped unlanded, or still out after the wait, makes its set's
//! position unknown (`Lsn::MAX`: the key reads that set from its master until the position
//! expires). An adapter that can tell when a dropped write is over (on PostgreSQL, a query
//! sent after it on its own connection answers after it) keeps the flight and lands it then.

use std::sync::Arc;
use std::time::Duration;

use crate::context::Context;

/// One write sent to its master, whose outcome is not known yet. Land it with
/// [`WriteFlight::landed`] once the write has committed, failed or is known never to have
/// run; dropped unlanded, its set's position becomes unknown for the context's key.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let router = pindb_core::Router::new(pindb_core::Config::single_set(
///     "postgres://app@127.0.0.1/app",
///     ["postgres://app@127.0.0.1:5433/app"],
/// )).unwrap();
/// pindb_core::scope(async {
///     let flight = router.write_flight(0).expect("inside a context");
///     // ... send the write, await its answer ...
///     flight.landed();
/// }).await;
/// # }
/// ```
#[must_use = "a flight dropped unlanded makes its set's position unknown"]
pub struct WriteFlight {
    ctx: Context,
    set: Arc<str>,
    landed: bool,
}

impl std::fmt::Debug for WriteFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteFlight")
            .field("set", &self.set)
            .finish_non_exhaustive()
    }
}

impl WriteFlight {
    /// Counts a write of `set` in flight in `ctx`.
    pub(crate) fn start(ctx: &Context, set: &str) -> WriteFlight {
        let mut state = ctx.lock();
        // Known in this context already (the write pinned it): no allocation.
        let set = match state.entry_mut(set) {
            Some(entry) => Arc::clone(entry.name()),
            None => Arc::from(set),
        };
        let entry = state.set_mut(&set);
        entry.in_flight = entry.in_flight.saturating_add(1);
        drop(state);
        WriteFlight {
            ctx: ctx.clone(),
            set,
            landed: false,
        }
    }

    /// The write's outcome is known: it committed, failed, or never ran. The context's end
    /// may read the master's position past it.
    pub fn landed(mut self) {
        self.landed = true;
        self.end(false);
    }

    fn end(&self, lost: bool) {
        {
            let mut state = self.ctx.lock();
            if let Some(entry) = state.entry_mut(&self.set) {
                entry.in_flight = entry.in_flight.saturating_sub(1);
                entry.lost_flight |= lost;
            }
        }
        self.ctx.landings().notify_waiters();
    }
}

impl Drop for WriteFlight {
    fn drop(&mut self) {
        if !self.landed {
            self.end(true);
        }
    }
}

impl Context {
    /// Whether a write of this context may still commit at a position not known now.
    pub(crate) fn has_unsure_write(&self) -> bool {
        self.lock().sets().any(|s| s.unsure())
    }

    /// Waits up to `wait` for this context's writes in flight to land. Returns the sets a
    /// write of which may still commit at a position not known now (one still in flight, or
    /// lost in flight).
    pub(crate) async fn flights_landed(&self, wait: Duration) -> Vec<String> {
        if !self.has_unsure_write() {
            return Vec::new();
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.landings().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.lock().sets().any(|s| s.in_flight > 0) {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break;
            }
        }
        self.lock()
            .sets()
            .filter(|s| s.unsure())
            .map(|s| s.name().to_string())
            .collect()
    }
}
