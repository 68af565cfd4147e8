//! The pinning context: the unit of work (a request, a job, a CLI run) and its pinned sets.
//!
//! This module owns the task-local that carries the context, its shared state, and the
//! explicit propagation helpers (`in_current_scope`, [`spawn`], [`spawn_blocking`],
//! [`Context::enter`]). Like tokio's `task_local!`, a context is never inherited implicitly
//! (`tokio::spawn` starts outside it): propagation is always written down.
//! It does not decide routes (the router does) and does not validate aliases.
//!
//! Outside any context: [`is_pinned`] is `false`, [`get_pinned`] and [`get_newly_pinned`] are
//! empty, [`unpin_all`] has nothing to clear, and `pin`/guards return
//! [`PinDbError::NoContext`](crate::PinDbError::NoContext) (pinning would otherwise be lost
//! silently).

use std::future::Future;
use std::pin::Pin as StdPin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context as TaskCx, Poll};

use tokio::task::futures::TaskLocalFuture;
use tokio::task::JoinHandle;

use crate::lsn::Lsn;

mod memo;
mod set;
pub(crate) use memo::Remembered;
pub(crate) use set::{SetState, Sticky};

/// What a guard does to its set while it lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardKind {
    /// Reads and writes go to the master; nothing new is pinned.
    Master,
    /// Reads go to a replica even if the set is pinned; writes are refused by the strict router.
    UnpinnedReplica,
}

tokio::task_local! {
    static CURRENT: Context;
}

/// A pinning context. Cheap to clone: clones share one state, so a pin made through any
/// clone (for example in a spawned child task) is seen by all.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use pindb_core::Context;
///
/// let ctx = Context::new();
/// ctx.carry_pin("default"); // e.g. read from a cookie by the middleware
/// ctx.scope(async {
///     assert!(pindb_core::is_pinned("default"));
///     assert!(pindb_core::get_newly_pinned().is_empty());
/// }).await;
/// # }
/// ```
#[derive(Clone, Default)]
pub struct Context {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Woken whenever a write in flight lands ([`WriteFlight`](crate::adapter::WriteFlight)).
    landed: tokio::sync::Notify,
    /// The kept replica of the last settled read: the next read of its set takes no lock.
    memo: memo::ReadMemo,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("pinned", &self.pinned(|_| true))
            .finish()
    }
}

/// How a set came to be pinned in a context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PinOrigin {
    /// Pinned in this context (explicitly or by a greedy write).
    New,
    /// Carried in from an earlier request (cookie, token).
    Carried,
}

#[derive(Default)]
pub(crate) struct State {
    sets: Vec<SetState>,
    guards: Vec<Frame>,
    next_guard_id: u64,
    /// The stickiness store could not be read for this context's key: positions are unknown,
    /// so every set is read from its master.
    pub(crate) store_unavailable: bool,
    /// Changes of any pin of this context (pinned, carried, unpinned): a write that never
    /// reached its server gives its pin back only if nothing changed a pin since.
    pub(crate) pin_changes: u64,
    /// `pin_changes` when [`unpin_all`] last cleared the sets: a write decided before it
    /// reports to [`State::unlearned_cleared`], not to its set's new entry.
    cleared_at: u64,
    /// Writes whose position was not learned when [`unpin_all`] cleared their sets: one may
    /// still be in flight and be acknowledged, so while any is left no set's learned position
    /// is used (the context's end asks the master, past them all).
    unlearned_cleared: u32,
    /// MariaDB: the `outside_before` of the sets [`unpin_all`] cleared (the first per set):
    /// a later position of the set must cover their writes too.
    outside_cleared: Vec<(Arc<str>, u64)>,
}

struct Frame {
    id: u64,
    set: Arc<str>,
    kind: GuardKind,
}

impl State {
    /// The entry for `set`, created on first use (the only allocation of a context's life,
    /// once per set).
    pub(crate) fn set_mut(&mut self, set: &Arc<str>) -> &mut SetState {
        let i = match self.sets.iter().position(|s| *s.name == **set) {
            Some(i) => i,
            None => {
                // Most contexts use one set: room for exactly one at first.
                if self.sets.capacity() == 0 {
                    self.sets.reserve_exact(1);
                }
                self.sets.push(SetState::new(Arc::clone(set)));
                self.sets.len() - 1
            }
        };
        &mut self.sets[i]
    }

    /// The entry for `set`, if this context has one.
    pub(crate) fn entry_mut(&mut self, set: &str) -> Option<&mut SetState> {
        self.sets.iter_mut().find(|s| &*s.name == set)
    }

    /// Every set this context has an entry for.
    pub(crate) fn sets(&self) -> impl Iterator<Item = &SetState> {
        self.sets.iter()
    }

    /// The entry for `set`, if this context has one.
    pub(crate) fn entry(&self, set: &str) -> Option<&SetState> {
        self.sets.iter().find(|s| &*s.name == set)
    }

    /// The innermost live guard for `set`, if any.
    pub(crate) fn guard(&self, set: &str) -> Option<GuardKind> {
        self.guards
            .iter()
            .rev()
            .find(|f| &*f.set == set)
            .map(|f| f.kind)
    }

    pub(crate) fn is_pinned(&self, set: &str) -> bool {
        self.entry(set).is_some_and(|s| s.pin.is_some())
    }

    /// Pins `set`. Pinning in this context (a write, or `pin`) makes even a carried pin new,
    /// so its cookie expiry and write position are refreshed; carrying never downgrades.
    pub(crate) fn pin(&mut self, set: &Arc<str>, origin: PinOrigin) {
        self.pin_changes = self.pin_changes.wrapping_add(1);
        let entry = self.set_mut(set);
        if origin == PinOrigin::New {
            entry.unlearned = entry.unlearned.saturating_add(1);
            // By hand: it may stand for writes made before it, outside the set's GTID domain
            // too, which no earlier reading can rule out.
            entry.outside_before = Some(0);
        }
        entry.pin = Some(match (entry.pin, origin) {
            (_, PinOrigin::New) => PinOrigin::New,
            (Some(existing), PinOrigin::Carried) => existing,
            (None, PinOrigin::Carried) => PinOrigin::Carried,
        });
    }

    /// Pins `set` for a write about to be sent, and says how to take the pin back if the write
    /// never reaches its server ([`State::unpin_unsent`]). `outside_seen`: what the set's
    /// master had outside its GTID domain, as last read (`SetDomain::outside_seen`), kept
    /// from the context's first write.
    pub(crate) fn pin_for_write(&mut self, set: &Arc<str>, outside_seen: u64) -> NewPin {
        self.pin_changes = self.pin_changes.wrapping_add(1);
        let generation = self.pin_changes;
        let entry = self.set_mut(set);
        entry.outside_before.get_or_insert(outside_seen);
        let before = entry.pin.replace(PinOrigin::New);
        entry.unlearned = entry.unlearned.saturating_add(1);
        NewPin { before, generation }
    }

    /// The write that made `pin` is behind the master position `lsn` (learned on its own
    /// connection, after it): it needs no position read at the context's end.
    pub(crate) fn learned(&mut self, set: &str, pin: NewPin, lsn: Lsn) {
        // A higher position covers more: harmless for a write from before a clear.
        if let Some(entry) = self.settle_write(set, pin) {
            entry.learned = Some(entry.learned.map_or(lsn, |l| l.max(lsn)));
        }
    }

    /// The write that made `pin` needs no position read at the context's end (it learned
    /// its own, or was never sent): it is no longer counted as unlearned, where it was
    /// counted (its set's entry, or the writes an [`unpin_all`] cleared). Its set's entry.
    fn settle_write(&mut self, set: &str, pin: NewPin) -> Option<&mut SetState> {
        let cleared = pin.generation <= self.cleared_at;
        if cleared {
            self.unlearned_cleared = self.unlearned_cleared.saturating_sub(1);
        }
        let entry = self.sets.iter_mut().find(|s| &*s.name == set)?;
        if !cleared {
            entry.unlearned = entry.unlearned.saturating_sub(1);
        }
        Some(entry)
    }

    /// A write of `set` that reports no position of its own (one under a `master()` guard):
    /// the context's end asks the master. `outside_seen` as for [`State::pin_for_write`].
    pub(crate) fn write_unlearned(&mut self, set: &Arc<str>, outside_seen: u64) {
        let entry = self.set_mut(set);
        entry.outside_before.get_or_insert(outside_seen);
        entry.unlearned = entry.unlearned.saturating_add(1);
    }

    /// `SetDomain::outside_seen` before this context's first write of `set`, if taken.
    pub(crate) fn outside_before(&self, set: &str) -> Option<u64> {
        let cleared = self.outside_cleared.iter().find(|(s, _)| &**s == set);
        let entry = self.entry(set).and_then(|e| e.outside_before);
        // The earliest, the cleared one; but 0 (pinned by hand) wins over any.
        match (cleared.map(|(_, seen)| *seen), entry) {
            (Some(0), _) | (_, Some(0)) => Some(0),
            (Some(seen), _) => Some(seen),
            (None, entry) => entry,
        }
    }

    /// The master position of `set` learned with this context's writes, when it covers all
    /// of them (none unlearned).
    pub(crate) fn learned_position(&self, set: &str) -> Option<Lsn> {
        let entry = self.entry(set)?;
        match (entry.unlearned, self.unlearned_cleared) {
            (0, 0) => entry.learned,
            _ => None,
        }
    }

    /// Takes back the pin of a write that never reached its server, unless a pin of this
    /// context changed since (another write, which may have been sent; `pin`; `unpin_all`).
    pub(crate) fn unpin_unsent(&mut self, set: &str, pin: NewPin) {
        let current = self.pin_changes == pin.generation;
        // Nothing was written: no position to learn for it.
        if let Some(entry) = self.settle_write(set, pin) {
            if current {
                entry.pin = pin.before;
            }
        }
    }
}

/// The pin a write decision made in its context ([`Route::pin`](crate::Route::pin)): given back
/// with [`Router::write_not_sent`](crate::Router::write_not_sent) when the write never reached
/// its server, so that it pins nothing and records no position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewPin {
    before: Option<PinOrigin>,
    generation: u64,
}

impl Context {
    /// A fresh context with nothing pinned.
    pub fn new() -> Self {
        Self::default()
    }

    /// The context the current task runs in, if any.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// assert!(pindb_core::Context::current().is_none());
    /// pindb_core::scope(async { assert!(pindb_core::Context::current().is_some()) }).await;
    /// # }
    /// ```
    pub fn current() -> Option<Context> {
        CURRENT.try_with(Context::clone).ok()
    }

    /// Runs `fut` inside this context.
    pub fn scope<F: Future>(self, fut: F) -> TaskLocalFuture<Context, F> {
        CURRENT.scope(self, fut)
    }

    /// Runs a synchronous closure inside this context: the way back in for `spawn_blocking`
    /// closures and plain threads.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let ctx = pindb_core::Context::new();
    /// let child = ctx.clone();
    /// std::thread::spawn(move || child.enter(|| pindb_core::Context::current().is_some()))
    ///     .join()
    ///     .map(|inside| assert!(inside))
    ///     .unwrap();
    /// # }
    /// ```
    pub fn enter<R>(self, f: impl FnOnce() -> R) -> R {
        CURRENT.sync_scope(self, f)
    }

    /// Marks `set` as pinned by an earlier request (cookie, consistency token): reads go to
    /// its master, but it is not reported by [`get_newly_pinned`]. The name is not validated
    /// here; the middleware checks it against the router first.
    pub fn carry_pin(&self, set: &str) {
        self.lock().pin(&Arc::from(set), PinOrigin::Carried);
    }

    /// Requires replicas of `set` to have replayed `lsn` before they serve this context (from a
    /// stickiness store or a [`ConsistencyToken`](crate::ConsistencyToken)); a later, higher
    /// position wins. Until a replica has, the set is read from its master.
    pub fn require(&self, set: &str, lsn: Lsn) {
        let mut state = self.lock();
        let entry = state.set_mut(&Arc::from(set));
        entry.required = Some(entry.required.map_or(lsn, |r| r.max(lsn)));
        // Required before any read (a keyed context's start): choose afresh. After reads, a
        // new replica must also not go back in time, so reads stay on the master.
        if entry.replica_reads > 0 {
            entry.failed_over = true;
        }
        entry.replica = None;
    }

    /// The sets pinned in this context itself (not carried in): what a cookie would carry on.
    pub fn newly_pinned(&self) -> Vec<String> {
        self.pinned(|o| o == PinOrigin::New)
    }

    /// The positions this context requires, by set.
    pub fn required(&self) -> Vec<(String, Lsn)> {
        self.lock()
            .sets
            .iter()
            .filter_map(|s| s.required.map(|lsn| (s.name.to_string(), lsn)))
            .collect()
    }

    /// Sets pinned in this context matching `filter`, in the order they were first used.
    pub(crate) fn pinned(&self, filter: impl Fn(PinOrigin) -> bool) -> Vec<String> {
        self.lock()
            .sets
            .iter()
            .filter(|s| s.pin.is_some_and(&filter))
            .map(|s| s.name.to_string())
            .collect()
    }

    /// Whether some set is pinned with an origin `filter` accepts (no names copied).
    pub(crate) fn has_pin(&self, filter: impl Fn(PinOrigin) -> bool) -> bool {
        self.lock().sets.iter().any(|s| s.pin.is_some_and(&filter))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-updated in a harmful way
        // (each update is a single assignment), so a poisoned lock is still usable.
        let state = self
            .shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Whatever this lock changes voids the read memo.
        self.shared.memo.count_lock();
        state
    }

    /// Under `_state`, this context's lock (the last change made under it): a replica read
    /// the next read of its set may decide as, without the lock ([`Context::recall_read`]).
    pub(crate) fn remember_read(&self, _state: &MutexGuard<'_, State>, read: Remembered) {
        self.shared.memo.remember(read);
    }

    /// The last replica read remembered, if this context's lock was not taken since. Takes
    /// no lock.
    pub(crate) fn recall_read(&self) -> Option<Remembered> {
        self.shared.memo.recall()
    }

    /// How many times this context's state was locked (read or changed) so far: what shows
    /// that a routed read on a held connection that changed nothing took no lock. For tests
    /// (feature `test-hooks`).
    #[cfg(any(test, feature = "test-hooks"))]
    #[doc(hidden)]
    pub fn locks_taken(&self) -> u64 {
        self.shared.memo.locks()
    }

    /// Woken whenever a write in flight lands.
    pub(crate) fn landings(&self) -> &tokio::sync::Notify {
        &self.shared.landed
    }

    pub(crate) fn push_guard(&self, set: Arc<str>, kind: GuardKind) -> u64 {
        let mut state = self.lock();
        state.next_guard_id += 1;
        let id = state.next_guard_id;
        state.guards.push(Frame { id, set, kind });
        id
    }

    /// Removes exactly the frame `id`, wherever it sits, so guards may drop in any order.
    pub(crate) fn remove_guard(&self, id: u64) {
        let mut state = self.lock();
        if let Some(i) = state.guards.iter().position(|f| f.id == id) {
            state.guards.remove(i);
        }
    }
}

/// Runs `f` with the current context, without cloning it. `None` outside any context.
pub(crate) fn with_current<R>(f: impl FnOnce(&Context) -> R) -> Option<R> {
    CURRENT.try_with(f).ok()
}

/// Runs `fut` in a fresh pinning context: one per request, job or CLI run.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let pinned = pindb_core::scope(async { pindb_core::get_pinned() }).await;
/// assert!(pinned.is_empty());
/// # }
/// ```
pub fn scope<F: Future>(fut: F) -> TaskLocalFuture<Context, F> {
    Context::new().scope(fut)
}

/// Whether `set` is pinned in the current context (`false` outside any context).
pub fn is_pinned(set: &str) -> bool {
    with_current(|ctx| ctx.lock().is_pinned(set)).unwrap_or(false)
}

/// Every set pinned in the current context, new or carried in (empty outside any context).
pub fn get_pinned() -> Vec<String> {
    with_current(|ctx| ctx.pinned(|_| true)).unwrap_or_default()
}

/// Sets pinned in this context, not carried in from a cookie or token: the ones the
/// middleware writes to the cookie (empty outside any context).
pub fn get_newly_pinned() -> Vec<String> {
    with_current(|ctx| ctx.pinned(|o| o == PinOrigin::New)).unwrap_or_default()
}

/// Clears every pin, replica choice and required position of the current context; live
/// guards stay in force
/// until dropped. Background workers call it between jobs. Outside any context there is
/// nothing to clear.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// pindb_core::scope(async {
///     pindb_core::Context::current().unwrap().carry_pin("default");
///     pindb_core::unpin_all();
///     assert!(!pindb_core::is_pinned("default"));
/// }).await;
/// # }
/// ```
pub fn unpin_all() {
    with_current(|ctx| ctx.lock().clear_pins());
}

impl State {
    /// [`unpin_all`] on this state.
    fn clear_pins(&mut self) {
        let unlearned: u32 = self.sets.iter().map(|s| s.unlearned).sum();
        self.unlearned_cleared = self.unlearned_cleared.saturating_add(unlearned);
        for entry in &self.sets {
            let (name, seen) = (&entry.name, entry.outside_before);
            if let Some(seen) =
                seen.filter(|_| !self.outside_cleared.iter().any(|(s, _)| s == name))
            {
                self.outside_cleared.push((Arc::clone(name), seen));
            }
        }
        // A write still in flight may commit after the clear: its set keeps counting it, and
        // nothing else. One lost in flight is forgotten with the pins (a worker clearing
        // between jobs in one long context would otherwise record every later position of
        // the set as unknown).
        self.sets.retain(|s| s.in_flight > 0);
        for entry in &mut self.sets {
            *entry = SetState {
                in_flight: entry.in_flight,
                ..SetState::new(Arc::clone(&entry.name))
            };
        }
        self.pin_changes = self.pin_changes.wrapping_add(1);
        self.cleared_at = self.pin_changes;
        self.store_unavailable = false;
    }
}

pin_project_lite::pin_project! {
    /// A future that runs in the context that was current when it was created.
    /// Made by [`InContext::in_current_scope`].
    #[project = ScopedProj]
    #[allow(missing_docs)] // pin-project-lite cannot carry docs on variant fields
    pub enum Scoped<F: Future> {
        /// Created inside a context.
        Inside {
            #[pin]
            fut: TaskLocalFuture<Context, F>,
        },
        /// Created outside any context: runs outside one too.
        Outside {
            #[pin]
            fut: F,
        },
    }
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(self: StdPin<&mut Self>, cx: &mut TaskCx<'_>) -> Poll<F::Output> {
        match self.project() {
            ScopedProj::Inside { fut } => fut.poll(cx),
            ScopedProj::Outside { fut } => fut.poll(cx),
        }
    }
}

/// Explicit propagation of the pinning context into futures, like tracing's
/// `in_current_span`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use pindb_core::InContext;
///
/// pindb_core::scope(async {
///     let child = tokio::spawn(async { pindb_core::Context::current().is_some() }.in_current_scope());
///     assert!(child.await.unwrap());
/// }).await;
/// # }
/// ```
pub trait InContext: Future + Sized {
    /// Binds the future to the current context (if any), so it can be given to
    /// `tokio::spawn` and still see and make the same pins.
    fn in_current_scope(self) -> Scoped<Self> {
        match Context::current() {
            Some(ctx) => Scoped::Inside {
                fut: ctx.scope(self),
            },
            None => Scoped::Outside { fut: self },
        }
    }
}

impl<F: Future> InContext for F {}

/// `tokio::spawn` that carries the current pinning context into the new task.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let seen = pindb_core::scope(async {
///     pindb_core::spawn(async { pindb_core::Context::current().is_some() }).await.unwrap()
/// }).await;
/// assert!(seen);
/// # }
/// ```
pub fn spawn<F>(fut: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(fut.in_current_scope())
}

/// `tokio::task::spawn_blocking` that re-enters the current pinning context inside the
/// closure (for sync diesel, `web::block`-style code).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let seen = pindb_core::scope(async {
///     pindb_core::spawn_blocking(|| pindb_core::Context::current().is_some()).await.unwrap()
/// }).await;
/// assert!(seen);
/// # }
/// ```
pub fn spawn_blocking<F, R>(f: F) -> JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let ctx = Context::current();
    tokio::task::spawn_blocking(move || match ctx {
        Some(ctx) => ctx.enter(f),
        None => f(),
    })
}

#[cfg(test)]
mod tests;
