//! The search for a connection that reached one server behind a reader endpoint: one
//! attempt at a time for a blocking adapter, overlapping attempts for an async one.

use super::{Failed, FAILED_TRIES, SERVER_TRIES};
use crate::populate::Database;

/// Attempts of one async search unanswered at once ([`ServerSearch::find`]): enough to step
/// past a server that hangs, few enough not to flood the endpoint or its servers.
const ATTEMPTS_IN_FLIGHT: usize = 2;

/// An adapter's search for a connection to a server behind an endpoint: open one with the
/// database's URL, ask it [`Database::server_question`], and give the answer to
/// [`ServerSearch::keep`], one connection at a time (a blocking adapter), or let
/// [`ServerSearch::find`] overlap them (an async one). Its clock is tokio's (the standard
/// clock outside a runtime), as the async search's timeouts are.
///
/// ```
/// # let db = pindb_core::Config::single_set("postgres://app@reader/app", Vec::<String>::new()).databases().unwrap().remove(0);
/// let mut search = pindb_core::adapter::ServerSearch::within(&db, std::time::Duration::from_secs(5));
/// assert_eq!(search.keep("10.0.0.6:5432".into()), Ok(true)); // no `servers`: any will do
/// ```
#[derive(Debug)]
pub struct ServerSearch<'a> {
    db: &'a Database,
    seen: Vec<String>,
    failed: Vec<String>,
    until: tokio::time::Instant,
    attempt: std::time::Duration,
}

impl<'a> ServerSearch<'a> {
    /// A search for `db`'s server under the caller's timeout `limit`: it ends at 80 % of it,
    /// so that what it reached is reported rather than a bare timeout.
    pub fn within(db: &'a Database, limit: std::time::Duration) -> Self {
        ServerSearch {
            db,
            seen: Vec::new(),
            failed: Vec::new(),
            until: tokio::time::Instant::now() + limit.mul_f64(0.8),
            attempt: limit / 4,
        }
    }

    /// How long one attempt (a connection and its question) may take (a quarter of the
    /// limit): an attempt that lands on a server that hangs is given up after this, and
    /// another may land elsewhere ([`ServerSearch::find`] starts one beside it sooner).
    pub fn attempt_limit(&self) -> std::time::Duration {
        let left = self
            .until
            .saturating_duration_since(tokio::time::Instant::now());
        self.attempt
            .min(left)
            .max(std::time::Duration::from_millis(1))
    }

    /// Whether the connection that reached `address` is kept (`Ok(true)`), closed for another
    /// (`Ok(false)`), or the search is over (`Err`: what to report, after [`SERVER_TRIES`]
    /// or at the deadline).
    pub fn keep(&mut self, address: String) -> Result<bool, String> {
        if self.db.reaches(&address) {
            return Ok(true);
        }
        self.seen.push(address);
        self.go_on().map(|()| false)
    }

    /// An attempt that failed: one that did not connect or answer within [`attempt_limit`]
    /// is a miss, not the end (another server behind the endpoint may be down while this one
    /// is up), up to [`FAILED_TRIES`]; a server's refusal ends the search. `Ok` to try again;
    /// `Err` when the search is over (what to report).
    ///
    /// [`attempt_limit`]: ServerSearch::attempt_limit
    pub fn failed(&mut self, failed: Failed) -> Result<(), String> {
        let refused = matches!(failed, Failed::Refused(_));
        self.failed.push(match failed {
            Failed::Unreachable(e) | Failed::Refused(e) => e,
        });
        match refused || self.failed.len() >= FAILED_TRIES {
            true => Err(self.db.server_missed(&self.seen, &self.failed)),
            false => self.go_on(),
        }
    }

    /// The whole search for an async adapter: `attempt` opens a connection and asks it where
    /// it landed, within [`attempt_limit`]; a connection that reached another server goes to
    /// `close`; the first that reached this one is the answer, else what the search met.
    ///
    /// Attempts overlap, two at most: one unanswered after a quarter to three quarters of its
    /// limit (at random) gets another beside it, and a miss starts the next at once. So a
    /// server that hangs behind the endpoint costs half an attempt limit on average, not a
    /// whole one, and the other clients of a round-robin balancer are much less likely to
    /// keep the search in step with it (its every attempt landing there): its rhythm is
    /// neither the timeouts' nor fixed. An attempt still unanswered when another reaches the
    /// server, or when the search is dropped, is dropped with its connection (on MariaDB an
    /// aborted connect in the server's counters). With overlap, a search may see up to five
    /// failures (four and the one in flight) where a sequential one sees [`FAILED_TRIES`].
    ///
    /// [`attempt_limit`]: ServerSearch::attempt_limit
    pub async fn find<C, A, F>(
        mut self,
        mut attempt: A,
        mut close: impl FnMut(C),
    ) -> Result<C, String>
    where
        A: FnMut() -> F,
        F: std::future::Future<Output = Result<(C, String), Failed>>,
    {
        use futures_util::stream::{FuturesUnordered, StreamExt};
        let mut flying = FuturesUnordered::new();
        let mut hedge = std::pin::pin!(tokio::time::sleep(std::time::Duration::ZERO));
        // Once no attempt may start, none does; those in flight may still reach the server.
        let mut over = false;
        loop {
            // Start one: at first, after a miss, or when the hedge is due.
            if !over && flying.len() < ATTEMPTS_IN_FLIGHT {
                match self.room(flying.len()) {
                    Ok(()) => {
                        let within = self.attempt_limit();
                        let next = tokio::time::timeout(within, attempt());
                        flying.push(async move { (within, next.await) });
                        let hedged = self.attempt.mul_f64(0.25 + fastrand::f64() / 2.0);
                        let due = tokio::time::Instant::now() + hedged;
                        hedge.as_mut().reset(due);
                    }
                    Err(_) => over = true,
                }
            }
            let Some((within, done)) = (tokio::select! {
                done = flying.next(), if !flying.is_empty() => done,
                () = &mut hedge, if !over && flying.len() < ATTEMPTS_IN_FLIGHT => continue,
                // Nothing in flight and nothing may start.
                else => None,
            }) else {
                return Err(self.db.server_missed(&self.seen, &self.failed));
            };
            let went = match done {
                Ok(Ok((conn, reached))) => match self.keep(reached) {
                    Ok(true) => return Ok(conn),
                    went => {
                        close(conn);
                        went.map(drop)
                    }
                },
                Ok(Err(failed)) => {
                    let refused = matches!(failed, Failed::Refused(_));
                    match self.failed(failed) {
                        // The servers behind one endpoint share their users: none will let
                        // it in, so the attempt in flight is not waited for.
                        Err(e) if refused => return Err(e),
                        went => went,
                    }
                }
                Err(_) => {
                    let late = format!("no answer within {within:?}");
                    self.failed(Failed::Unreachable(late))
                }
            };
            over |= went.is_err();
        }
    }

    fn go_on(&self) -> Result<(), String> {
        self.room(0)
    }

    /// Whether another attempt may start beside `in_flight` unanswered ones.
    fn room(&self, in_flight: usize) -> Result<(), String> {
        let tries = self.seen.len() + self.failed.len() + in_flight;
        let late = tokio::time::Instant::now() >= self.until;
        match tries < SERVER_TRIES && !late {
            true => Ok(()),
            false => Err(self.db.server_missed(&self.seen, &self.failed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::populate::normal_address;

    #[test]
    fn a_refusal_ends_a_search_and_failures_are_few() {
        let mut db = crate::Config::single_set("postgres://app@reader/app", Vec::<String>::new())
            .databases()
            .unwrap()
            .remove(0);
        db.server = normal_address("10.0.0.5:5432");
        let limit = std::time::Duration::from_secs(60);
        let mut search = ServerSearch::within(&db, limit);
        assert_eq!(search.keep("10.0.0.6:5432".into()), Ok(false));
        let refused = search.failed(Failed::Refused("password authentication failed".into()));
        let refused = refused.expect_err("a refusal ends it");
        assert!(
            refused.contains("the last: password authentication failed"),
            "{refused}"
        );
        let mut search = ServerSearch::within(&db, limit);
        for _ in 1..FAILED_TRIES {
            assert_eq!(search.failed(Failed::Unreachable("closed".into())), Ok(()));
        }
        let over = search
            .failed(Failed::Unreachable("closed".into()))
            .unwrap_err();
        assert!(
            over.contains("4 connections") && over.contains("failed"),
            "{over}"
        );
    }

    /// A balancer for [`ServerSearch::find`]: the `n`th attempt lands where `lands(n)` says
    /// ("hang": a server that accepts and never answers; "late": another server, answering
    /// after 400 ms). Counts the connections alive.
    struct Balancer {
        started: std::sync::atomic::AtomicUsize,
        alive: std::sync::Arc<()>,
    }

    /// A connection the balancer handed out, alive until dropped.
    struct Conn(#[allow(dead_code)] std::sync::Arc<()>);

    impl Balancer {
        fn new() -> Self {
            Balancer {
                started: Default::default(),
                alive: std::sync::Arc::new(()),
            }
        }

        fn attempt(
            &self,
            lands: impl Fn(usize) -> &'static str,
        ) -> impl std::future::Future<Output = Result<(Conn, String), Failed>> + '_ {
            use std::sync::atomic::Ordering;
            let n = self.started.fetch_add(1, Ordering::SeqCst) + 1;
            let conn = Conn(std::sync::Arc::clone(&self.alive));
            let server = lands(n);
            async move {
                match server {
                    "hang" => std::future::pending().await,
                    "late" => {
                        let late = std::time::Duration::from_millis(400);
                        tokio::time::sleep(late).await;
                        Ok((conn, "10.0.0.6:5432".to_owned()))
                    }
                    "refuse" => Err(Failed::Refused("password authentication failed".into())),
                    other => Ok((conn, other.to_owned())),
                }
            }
        }

        fn alive(&self) -> usize {
            std::sync::Arc::strong_count(&self.alive) - 1
        }
    }

    fn behind_endpoint(server: &str) -> Database {
        let mut db = crate::Config::single_set("postgres://app@reader/app", Vec::<String>::new())
            .databases()
            .unwrap()
            .remove(0);
        db.server = normal_address(server);
        db
    }

    /// Whether an attempt got another beside it after `elapsed`: after a quarter to three
    /// quarters of its limit (the tests run on tokio's paused clock: elapsed times are exact).
    fn hedged(db: &Database, limit: std::time::Duration, elapsed: std::time::Duration) -> bool {
        let attempt = ServerSearch::within(db, limit).attempt_limit();
        (attempt / 4..=attempt * 3 / 4).contains(&elapsed)
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_that_hangs_behind_the_endpoint_costs_half_an_attempt() {
        let db = behind_endpoint("10.0.0.5:5432");
        let limit = std::time::Duration::from_secs(2);
        let balancer = Balancer::new();
        // Round robin over a server that hangs and this one.
        let lands = |n: usize| if n % 2 == 1 { "hang" } else { "10.0.0.5:5432" };
        let start = tokio::time::Instant::now();
        let found = ServerSearch::within(&db, limit)
            .find(|| balancer.attempt(lands), drop)
            .await;
        assert!(found.is_ok(), "{:?}", found.err());
        // The second attempt started beside the hung one, not after it.
        assert!(hedged(&db, limit, start.elapsed()), "{:?}", start.elapsed());
        drop(found);
        assert_eq!(balancer.alive(), 0, "the hung attempt was dropped");
    }

    /// Four attempts in a row landing on a hung server (1 in 16 with two servers behind a
    /// random balancer, every time for a search kept in step with a round robin by other
    /// clients) used to end the search: four failures, the deadline.
    #[tokio::test(start_paused = true)]
    async fn four_attempts_on_a_hung_server_do_not_end_the_search() {
        let db = behind_endpoint("10.0.0.5:5432");
        let limit = std::time::Duration::from_secs(2);
        let balancer = Balancer::new();
        let lands = |n: usize| if n <= 4 { "hang" } else { "10.0.0.5:5432" };
        let found = ServerSearch::within(&db, limit)
            .find(|| balancer.attempt(lands), drop)
            .await;
        assert!(found.is_ok(), "{:?}", found.err());
        drop(found);
        assert_eq!(balancer.alive(), 0);
        // Never more than ATTEMPTS_IN_FLIGHT at once; every server hanging, the search ends
        // after its fourth failure and the one in flight, within the deadline.
        let balancer = Balancer::new();
        let most = std::sync::atomic::AtomicUsize::new(0);
        let found = ServerSearch::within(&db, limit)
            .find(
                || {
                    let alive = balancer.alive() + 1;
                    most.fetch_max(alive, std::sync::atomic::Ordering::SeqCst);
                    balancer.attempt(|_| "hang")
                },
                drop,
            )
            .await;
        let missed = found.err().expect("every attempt hangs");
        assert!(
            missed.contains("5 connections") && missed.contains("no answer within"),
            "{missed}"
        );
        assert_eq!(most.into_inner(), ATTEMPTS_IN_FLIGHT);
        assert_eq!(balancer.alive(), 0);
    }

    /// After its fourth failure a search starts nothing more, even when an attempt still in
    /// flight then lands on another server (a miss that is not a failure).
    #[tokio::test(start_paused = true)]
    async fn four_failures_end_a_search_for_good() {
        let db = behind_endpoint("10.0.0.5:5432");
        let limit = std::time::Duration::from_secs(2);
        let balancer = Balancer::new();
        // Four hang (the fourth fails by 1.375 s: it starts by 0.875 s), the fifth (started
        // at 1 s, when the third fails) answers late (1.4 s) from another server; a sixth
        // would reach this one.
        let lands = |n: usize| match n {
            1..=4 => "hang",
            5 => "late",
            _ => "10.0.0.5:5432",
        };
        let found = ServerSearch::within(&db, limit)
            .find(|| balancer.attempt(lands), drop)
            .await;
        let missed = found.err().expect("over after four failures");
        assert!(missed.contains("4 failed"), "{missed}");
        assert_eq!(balancer.started.into_inner(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_ends_a_search_with_attempts_in_flight() {
        let db = behind_endpoint("10.0.0.5:5432");
        let limit = std::time::Duration::from_secs(2);
        let balancer = Balancer::new();
        let lands = |n: usize| if n == 1 { "hang" } else { "refuse" };
        let start = tokio::time::Instant::now();
        let found = ServerSearch::within(&db, limit)
            .find(|| balancer.attempt(lands), drop)
            .await;
        let refused = found.err().expect("refused");
        assert!(
            refused.contains("password authentication failed"),
            "{refused}"
        );
        // Refused beside the hung attempt, which was not waited for.
        assert!(hedged(&db, limit, start.elapsed()), "{:?}", start.elapsed());
        assert_eq!(balancer.alive(), 0, "the hung attempt was dropped");
        assert_eq!(balancer.started.into_inner(), 2);
    }

    /// A connection that reached another server is given to `close`, and the search goes on.
    #[tokio::test(start_paused = true)]
    async fn another_servers_connection_is_closed_and_the_search_goes_on() {
        let db = behind_endpoint("10.0.0.5:5432");
        let limit = std::time::Duration::from_secs(2);
        let closed = std::cell::Cell::new(0);
        let balancer = Balancer::new();
        let lands = |n: usize| match n {
            1 => "10.0.0.6:5432",
            _ => "10.0.0.5:5432",
        };
        let found = ServerSearch::within(&db, limit)
            .find(|| balancer.attempt(lands), |_| closed.set(closed.get() + 1))
            .await;
        assert!(found.is_ok(), "{:?}", found.err());
        assert_eq!(closed.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_search_dropped_midway_drops_every_attempt() {
        let db = behind_endpoint("10.0.0.5:5432");
        let balancer = Balancer::new();
        let search = ServerSearch::within(&db, std::time::Duration::from_secs(2))
            .find(|| balancer.attempt(|_| "hang"), drop);
        // Dropped with two attempts in flight (the second starts by 375 ms, the first ends at
        // 500 ms).
        let gave_up = tokio::time::timeout(std::time::Duration::from_millis(450), search).await;
        assert!(gave_up.is_err());
        assert_eq!(
            balancer.started.load(std::sync::atomic::Ordering::SeqCst),
            2
        );
        assert_eq!(balancer.alive(), 0);
    }
}
