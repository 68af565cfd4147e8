//! A read that a replica failed, outside a transaction: where it runs again. The adapters
//! run statements and see their errors; they ask [`Router::reroute`] what to do, so the three
//! of them retry the same way.
//!
//! - **Refused** (the statement writes: a user function that writes, a view over
//!   `nextval()`...): nothing ran on the standby, so it runs on the set's master under the
//!   write rules (greedy: the set is pinned; strict: `UnpinnedWrite`, never a silent master
//!   write). The statement is remembered, so its next run goes to the master directly.
//! - **Unreachable / Timeout** (no connection, a reset, no answer): the replica is suspected
//!   at once (down until the monitor has seen `successes_before_up` good checks), and the read
//!   moves to another fit replica, at most `reads.retries` times, then to the master.
//! - **Recovery conflict** (the standby cancelled the statement): another replica or the
//!   master; the replica stays up.
//!
//! A context that had already read the set from the failed replica keeps reading it from the
//! master: another replica could be behind what it read (monotonic reads), and only the master
//! is known to be past it without a round trip.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use super::{Hint, Reason, Role, Route, Router};
use crate::context::with_current;
use crate::error::PinDbError;
use crate::topology::Target;

/// How a read failed on a replica, as the adapter saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReplicaFailure {
    /// The standby refused the statement because it writes, locks or needs the primary
    /// (SQLSTATE 25006, "recovery is in progress", "... during recovery"). Nothing ran.
    Refused,
    /// The standby cancelled the statement for a conflict with recovery.
    RecoveryConflict,
    /// No connection: refused, reset, closed, a connection attempt that failed or hung.
    Unreachable,
    /// No answer within `reads.timeout_ms`: a hung server, or just a long query.
    Timeout,
    /// The replica's pool had no free connection in time (every connection busy): the
    /// replica is fine, the read goes elsewhere.
    Busy,
    /// A runtime replica's host was removed or replaced after the read was routed to it
    /// ([`PinDbError::NoHost`]): nothing ran, no server is to blame, the read goes elsewhere.
    Moved,
}

impl ReplicaFailure {
    /// Every kind of failure (the metrics' `reason` labels).
    pub const ALL: [ReplicaFailure; 6] = [
        ReplicaFailure::Refused,
        ReplicaFailure::RecoveryConflict,
        ReplicaFailure::Unreachable,
        ReplicaFailure::Timeout,
        ReplicaFailure::Busy,
        ReplicaFailure::Moved,
    ];

    /// A server error, by SQLSTATE and message: `None` when it is the statement's own fault
    /// (a syntax error, a constraint...), which another server would repeat.
    ///
    /// ```
    /// use pindb_core::adapter::ReplicaFailure;
    ///
    /// let refused = "cannot execute INSERT in a read-only transaction";
    /// assert_eq!(ReplicaFailure::from_server("25006", refused), Some(ReplicaFailure::Refused));
    /// assert_eq!(ReplicaFailure::from_server("55000", "recovery is in progress"), Some(ReplicaFailure::Refused));
    /// let conflict = "canceling statement due to conflict with recovery";
    /// assert_eq!(ReplicaFailure::from_server("40001", conflict), Some(ReplicaFailure::RecoveryConflict));
    /// assert_eq!(ReplicaFailure::from_server("42601", "syntax error at or near \"SELEC\""), None);
    /// ```
    pub fn from_server(sqlstate: &str, message: &str) -> Option<ReplicaFailure> {
        // The message alone never decides: a user's `RAISE` may say anything (it is P0001).
        let recovery =
            message.contains("recovery is in progress") || message.contains("during recovery");
        match sqlstate {
            "40001" | "40P01" | "57P04" if message.contains("conflict with recovery") => {
                Some(ReplicaFailure::RecoveryConflict)
            }
            "25006" => Some(ReplicaFailure::Refused),
            "55000" | "0A000" | "XX000" if recovery => Some(ReplicaFailure::Refused),
            // The server is going away (admin shutdown, crash, cannot connect now).
            "57P01" | "57P02" | "57P03" | "08000" | "08003" | "08006" | "08001" | "08004" => {
                Some(ReplicaFailure::Unreachable)
            }
            _ => None,
        }
    }

    /// A MariaDB server error, by its number (its SQLSTATE is mostly the generic `HY000`):
    /// a `read_only` replica's refusal (1290, 1792), a server going away (1053 shutting down,
    /// 1927 connection killed, and the client's 2006 / 2013: gone, lost). Anything else is
    /// the statement's own fault.
    ///
    /// ```
    /// use pindb_core::adapter::ReplicaFailure;
    ///
    /// assert_eq!(ReplicaFailure::from_mariadb(1290), Some(ReplicaFailure::Refused));
    /// assert_eq!(ReplicaFailure::from_mariadb(1062), None); // a duplicate key
    /// ```
    pub fn from_mariadb(number: u16) -> Option<ReplicaFailure> {
        match number {
            1290 | 1792 => Some(ReplicaFailure::Refused),
            1053 | 1927 | 2006 | 2013 => Some(ReplicaFailure::Unreachable),
            _ => None,
        }
    }

    /// A server error whose SQLSTATE the driver did not keep, by the message PostgreSQL sends
    /// with it. diesel (both backends) reports 57P01, 57P02, 57P03 and the recovery conflicts
    /// other than 40001 as `DatabaseErrorKind::Unknown`, whose information has no code. Only the
    /// messages a server sends when it ends or refuses a session are known; anything else is
    /// `None` (the statement's own fault). They are PostgreSQL's English messages
    /// (`lc_messages` of `C` or `en_*`, the default): a server that translates them makes
    /// these failures the statement's own for diesel, as before.
    ///
    /// ```
    /// use pindb_core::adapter::ReplicaFailure;
    ///
    /// let stopped = "terminating connection due to administrator command";
    /// assert_eq!(ReplicaFailure::from_server_message(stopped), Some(ReplicaFailure::Unreachable));
    /// let conflict = "canceling statement due to conflict with recovery";
    /// assert_eq!(ReplicaFailure::from_server_message(conflict), Some(ReplicaFailure::RecoveryConflict));
    /// assert_eq!(ReplicaFailure::from_server_message("division by zero"), None);
    /// ```
    pub fn from_server_message(message: &str) -> Option<ReplicaFailure> {
        // (message, SQLSTATE): postgres.c (ProcessInterrupts, quickdie) and postmaster.c.
        const ENDED: [(&str, &str); 10] = [
            (
                "terminating connection due to administrator command",
                "57P01",
            ),
            (
                "terminating connection due to immediate shutdown command",
                "57P01",
            ),
            (
                "terminating connection because of crash of another server process",
                "57P02",
            ),
            ("the database system is shutting down", "57P03"),
            ("the database system is starting up", "57P03"),
            ("the database system is in recovery mode", "57P03"),
            (
                "the database system is not yet accepting connections",
                "57P03",
            ),
            ("the database system is not accepting connections", "57P03"),
            // 40P01 (a buffer-pin deadlock) or 57P04 (its database dropped).
            ("canceling statement due to conflict with recovery", "40P01"),
            (
                "terminating connection due to conflict with recovery",
                "40P01",
            ),
        ];
        let (_, code) = ENDED.iter().find(|(m, _)| message.starts_with(m))?;
        ReplicaFailure::from_server(code, message)
    }

    /// A MariaDB server error whose number the driver did not keep (diesel-async's MySQL
    /// driver keeps only the message), by the message the server sends with it, or a lost
    /// connection by the client's own words (mysql_async's, libmariadb's). Matched at the
    /// message's start: a statement's own error may quote SQL or data anywhere after it.
    /// English messages (`lc_messages` of `en_US`, the default); anything else is `None`
    /// (the statement's own fault).
    ///
    /// ```
    /// use pindb_core::adapter::ReplicaFailure;
    ///
    /// let refused = "The MariaDB server is running with the --read-only option so it cannot execute this statement";
    /// assert_eq!(ReplicaFailure::from_mariadb_message(refused), Some(ReplicaFailure::Refused));
    /// let lost = "Input/output error: Connection reset by peer (os error 104)";
    /// assert_eq!(ReplicaFailure::from_mariadb_message(lost), Some(ReplicaFailure::Unreachable));
    /// // Only quoted: the statement's own error.
    /// let syntax = "You have an error in your SQL syntax; check the manual near 'Server has gone away'";
    /// assert_eq!(ReplicaFailure::from_mariadb_message(syntax), None);
    /// assert_eq!(ReplicaFailure::from_mariadb_message("Division by 0"), None);
    /// ```
    pub fn from_mariadb_message(message: &str) -> Option<ReplicaFailure> {
        // (message start, number): MariaDB's and MySQL's errmsg-utf8.txt, libmariadb's and
        // libmysqlclient's client errors, mysql_async's error's Display.
        const KNOWN: [(&str, u16); 11] = [
            (
                "The MariaDB server is running with the --read-only option",
                1290,
            ),
            (
                "The MySQL server is running with the --read-only option",
                1290,
            ),
            ("Server shutdown in progress", 1053),
            ("Connection was killed", 1927),
            ("Server has gone away", 2006),
            ("MySQL server has gone away", 2006),
            ("Lost connection to server", 2013),
            ("Lost connection to MySQL server", 2013),
            ("Can't connect to server", 2013),
            ("Input/output error: ", 2013),
            ("Driver error: `Connection to the server is closed.", 2013),
        ];
        let (_, number) = KNOWN.iter().find(|(m, _)| message.starts_with(m))?;
        ReplicaFailure::from_mariadb(*number)
    }

    /// A short name for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaFailure::Refused => "refused",
            ReplicaFailure::RecoveryConflict => "recovery-conflict",
            ReplicaFailure::Unreachable => "unreachable",
            ReplicaFailure::Timeout => "timeout",
            ReplicaFailure::Busy => "busy",
            ReplicaFailure::Moved => "moved",
        }
    }
}

impl Router {
    /// A read that ran on the replica at `failed` (an index into
    /// [`Topology::databases`](crate::adapter::Topology::databases)) outside a transaction
    /// failed with `failure`: where to run it now. `attempt` counts the retries of this
    /// statement so far (0 for the first). `sql` is the statement, remembered when refused.
    /// `cause`: what really happened (the error), for the log when the replica is taken out.
    /// `Ok(None)`: do not retry (`failed` is not a replica). Strict mode: a refused
    /// statement on an unpinned set is [`PinDbError::UnpinnedWrite`].
    pub fn reroute(
        &self,
        failed: usize,
        failure: ReplicaFailure,
        attempt: u32,
        sql: &str,
        cause: &dyn std::fmt::Display,
    ) -> Result<Option<Route<'_>>, PinDbError> {
        let topology = &self.inner.topology;
        // Before any replica's health is read (see `Route::epoch`).
        let epoch = topology.epoch(failed);
        let alias = &topology.databases()[failed].alias;
        let Ok(Target::Replica { set: s, replica: r }) = topology.target(alias) else {
            return Ok(None);
        };
        let set = topology.set(s);
        metrics::counter!("pindb_replica_failures_total", "alias" => alias.clone(), "reason" => failure.as_str())
            .increment(1);
        match failure {
            ReplicaFailure::Refused => {
                if self.inner.statements.learn_refused(sql) {
                    tracing::warn!(target: "pindb", %alias, statement = %sql, "pindb: a replica refused this statement because it writes; it ran on the master and will from now on. Add the function (or view) it calls to `write_functions` (or `write_relations`), or pin the set");
                }
                let route = self.db_for_write(&Hint::alias(&set.name))?;
                return Ok(Some(Route {
                    reason: Reason::ReplicaRefused,
                    ..route
                }));
            }
            ReplicaFailure::Unreachable => {
                set.health[r].suspect();
                tracing::warn!(target: "pindb", %alias, error = %cause, "pindb: a read could not reach a replica; it is out of rotation until the monitor sees it healthy");
            }
            // Not the replica's fault, or not provably (a long query): it stays in rotation;
            // the monitor takes out a replica that really hangs.
            ReplicaFailure::Timeout
            | ReplicaFailure::RecoveryConflict
            | ReplicaFailure::Busy
            | ReplicaFailure::Moved => {}
        }
        // A statement that ran out of time goes to the master, not to another replica: a
        // long query must not run on every replica in turn.
        if !set.replicas_enabled() {
            // The kill switch is on: nowhere but the master.
            self.read_from_master(s);
            return self.master_route(s, Reason::ReplicasDisabled).map(Some);
        }
        let retries = match failure {
            ReplicaFailure::Timeout => 0,
            _ => self.inner.config.reads.retries,
        };
        let policy = self.inner.config.replica_policy;
        let name = Arc::clone(&set.name);
        // Another replica must carry what the statement reads (logical replicas).
        let footprint = set
            .partial
            .then(|| crate::classify::Footprint::of_sql(sql))
            .flatten();
        let covers = |i: usize| set.covers(i, footprint.as_ref());
        let other = with_current(|ctx| {
            let mut state = ctx.lock();
            let entry = state.set_mut(&name);
            let mine = entry
                .replica
                .is_some_and(|k| k.router == self.inner.id && k.replica == r);
            let other = match entry.replica {
                _ if entry.failed_over || entry.read_master => None,
                // The context reads from another replica: it stays there (monotonic), if it
                // still has the host the context read from.
                Some(k) if !mine && k.router == self.inner.id => {
                    let c = k.replica;
                    let same_host = k == self.sticky(set, c);
                    (same_host && set.health[c].fit(entry.required) && covers(c)).then_some(c)
                }
                // The failed read counted one; more means the context read from it before,
                // and another replica may be behind what it read: the master. (`settled`:
                // reads remembered by the context's read memo are not counted past it.)
                _ if mine && entry.settled() || attempt >= retries => {
                    entry.failed_over = mine || entry.replica_reads > 0;
                    None
                }
                _ => {
                    let required = entry.required;
                    let i = set
                        .picker
                        .choose(policy, &set.health, required, None, Some(r), &covers)
                        .ok();
                    if let Some(i) = i {
                        entry.replica = Some(self.sticky(set, i));
                        entry.replica_reads = 1;
                    }
                    i
                }
            };
            // The master serves it: the context is past every replica now (monotonic reads).
            entry.read_master |= other.is_none();
            other
        })
        .unwrap_or_else(|| {
            (attempt < retries)
                .then(|| {
                    set.picker
                        .choose(policy, &set.health, None, None, Some(r), &covers)
                        .ok()
                })
                .flatten()
        });
        match other {
            Some(i) => Ok(Some(Route {
                epoch,
                ..self.route(set.replicas[i], Role::Replica, Reason::ReplicaFailed)
            })),
            None => self.master_route(s, Reason::ReplicaFailed).map(Some),
        }
    }
}

/// Why a read in flight on a replica was given up ([`Router::watch_replica_read`]): its
/// connection may be stuck mid-statement, so the adapter discards it and asks
/// [`Router::reroute`] with [`Abandoned::failure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Abandoned {
    /// No answer within `reads.timeout_ms`: a hung server, or just a long query.
    TimedOut,
    /// The monitor declared the replica down while the read ran (a frozen server or
    /// network): waiting out `reads.timeout_ms` would only delay the answer.
    ReplicaDown,
}

impl Abandoned {
    /// The failure to reroute with: [`ReplicaFailure::Timeout`] either way, so the read goes
    /// to the master, not to another replica (a replica the monitor took out because its
    /// checks time out under load must not push its long reads onto the next one), and the
    /// monitor's verdict stands (no suspicion of a read's own, which would lapse).
    pub fn failure(self) -> ReplicaFailure {
        ReplicaFailure::Timeout
    }
}

impl std::fmt::Display for Abandoned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Abandoned::TimedOut => "no answer within reads.timeout_ms",
            Abandoned::ReplicaDown => {
                "the monitor declared the replica down while the read was waiting for it"
            }
        })
    }
}

impl Router {
    /// Runs `read`, a read outside a transaction on the database at `index`, for at most
    /// `reads.timeout_ms`, and gives it up as soon as the monitor has declared that replica
    /// down (looked at every `monitor.interval_ms` while the read waits): a read in flight on
    /// a replica that froze costs one monitor verdict, not the whole timeout. A read that
    /// ends before the first look costs one timer, as a plain timeout would; nothing is
    /// allocated.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), pindb_core::PinDbError> {
    /// let config = pindb_core::Config::single_set("postgres://app@db0/app", ["postgres://app@db1/app"]);
    /// let router = pindb_core::Router::new(config)?;
    /// let replica = router.topology().index_of("default-1")?;
    /// assert_eq!(router.watch_replica_read(replica, async { 42 }).await, Ok(42));
    /// # Ok(()) }
    /// ```
    pub async fn watch_replica_read<F: std::future::Future>(
        &self,
        index: usize,
        read: F,
    ) -> Result<F::Output, Abandoned> {
        let start = tokio::time::Instant::now();
        let deadline = start + self.inner.config.reads.timeout();
        let every = Duration::from_millis(self.inner.config.monitor.interval_ms.max(1));
        let sleep = tokio::time::sleep_until(deadline.min(start + every));
        tokio::pin!(read, sleep);
        loop {
            tokio::select! {
                biased;
                done = &mut read => return Ok(done),
                () = &mut sleep => {
                    let now = tokio::time::Instant::now();
                    if now >= deadline {
                        return Err(Abandoned::TimedOut);
                    }
                    if self.inner.topology.declared_down(index) {
                        return Err(Abandoned::ReplicaDown);
                    }
                    sleep.as_mut().reset(deadline.min(now + every));
                }
            }
        }
    }
}

/// How long a checkout waits for its pool before asking [`Router::refused`]: most checkouts
/// are served well within it, so pindb's own attempt is made only for the ones that wait.
pub const REFUSED_GRACE: Duration = Duration::from_millis(50);

impl Router {
    /// Why the database at `index` could not be used (a checkout that failed or timed out),
    /// from a fresh connection attempt of pindb's own bounded by `monitor.check_timeout_ms`:
    /// [`PinDbError::Unreachable`] with what really happened (connection refused, no answer,
    /// a name that does not resolve), or `None` when that attempt connects (the trouble is
    /// the pool: busy, or its connections hang). Logged once per 10 s per database, counted
    /// in `pindb_unreachable_total`.
    pub async fn diagnose(&self, index: usize) -> Option<PinDbError> {
        // Boxed: a failure's path, kept out of the futures of the statements that may take it.
        Box::pin(self.diagnosis(index, false)).await
    }

    /// [`Router::diagnose`], but only a refusal counts (nothing listens at the address: the
    /// server is stopped, definitively and at once): what a checkout still waiting for its
    /// pool asks, so that a write to a stopped master fails at once, while a server that is
    /// slow, full ("too many clients") or hanging leaves the pool its own timeout.
    pub async fn refused(&self, index: usize) -> Option<PinDbError> {
        Box::pin(self.diagnosis(index, true)).await
    }

    /// Resolves once [`Router::refused`] says the database at `index` refuses connections:
    /// asked after [`REFUSED_GRACE`], then every 100 ms (pindb's own attempts are made at
    /// most once a second). What a checkout still waiting for its pool races against: a
    /// server that stops listening while it waits fails it too. Never resolves while the
    /// server answers, however slowly.
    pub async fn refused_while_waiting(&self, index: usize) -> PinDbError {
        tokio::time::sleep(REFUSED_GRACE).await;
        loop {
            if let Some(refused) = self.refused(index).await {
                return refused;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// [`Router::refused`] for a sync adapter, from a thread that may block (`spawn_blocking`,
    /// a thread of its own): the attempt runs on the tokio runtime this thread belongs to and
    /// is waited for at most `monitor.check_timeout_ms` + 100 ms. `None` without a runtime to
    /// run it on: the caller's pool keeps its own timeout. Called on one of the runtime's own
    /// worker threads (sync diesel inside an async task, which blocks that worker anyway), the
    /// attempt may not get to run: `None` after that wait.
    pub fn refused_blocking(&self, index: usize) -> Option<PinDbError> {
        self.diagnosis_blocking(index, true)
    }

    /// [`Router::diagnose`] for a sync adapter, under the rules of [`Router::refused_blocking`]:
    /// what a sync checkout that timed out without a cause of its own says.
    pub fn diagnose_blocking(&self, index: usize) -> Option<PinDbError> {
        self.diagnosis_blocking(index, false)
    }

    fn diagnosis_blocking(&self, index: usize, only_refused: bool) -> Option<PinDbError> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let router = self.clone();
        runtime.spawn(async move {
            let _ = tx.send(router.diagnosis(index, only_refused).await);
        });
        // A little more than the attempt's own bound: it always answers first.
        let bound =
            Duration::from_millis((self.inner.config.monitor.check_timeout_ms).saturating_add(100));
        rx.recv_timeout(bound).ok().flatten()
    }

    async fn diagnosis(&self, index: usize, only_refused: bool) -> Option<PinDbError> {
        let (generation, db) = match self.inner.topology.database_now(index) {
            Ok(now) => now,
            Err(no_host) => return Some(no_host),
        };
        let recent = |entry: &Option<super::Diagnosis>| {
            entry
                .as_ref()
                .filter(|(at, of, _, _)| *of == generation && at.elapsed() < Duration::from_secs(1))
                .filter(|(_, _, searched, cause)| {
                    // A refusal check does not look for an endpoint's server: its "reachable"
                    // does not answer a full diagnosis of one.
                    *searched || only_refused || db.server.is_none() || cause.is_some()
                })
                .map(|(_, _, _, cause)| cause.clone())
        };
        let cached = recent(
            &self.inner.diagnosed[index]
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let found = match cached {
            Some(found) => found,
            None => {
                let timeout = Duration::from_millis(self.inner.config.monitor.check_timeout_ms);
                // Which server an endpoint reaches is no refusal: not looked for then.
                let found = crate::probe::diagnose(&db, timeout, !only_refused).await;
                *self.inner.diagnosed[index]
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some((
                    std::time::Instant::now(),
                    generation,
                    !only_refused,
                    found.clone(),
                ));
                found
            }
        };
        let cause = match found? {
            (_, false) if only_refused => return None,
            (cause, _) => cause,
        };
        metrics::counter!("pindb_unreachable_total", "alias" => db.alias.clone()).increment(1);
        let now = self.inner.started.elapsed().as_millis() as u64;
        let last = &self.inner.unreachable_logged[index];
        let before = last.load(Ordering::Relaxed);
        if (before == u64::MAX || now.saturating_sub(before) >= 10_000)
            && last
                .compare_exchange(before, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(target: "pindb", alias = %db.alias, %cause, "pindb: database unreachable");
        }
        Some(PinDbError::Unreachable {
            alias: db.alias.clone(),
            role: self.inner.topology.role_of(index),
            url: db.redacted_url(),
            cause,
        })
    }
}
