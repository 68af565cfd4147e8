//! The load test on the dev cluster's MariaDB set: its table, its statements (the write's GTID
//! read back on the write's own connection), the replicas' applied positions for the oracle,
//! and lag made by stopping and starting the replicas' SQL threads.
//!
//! Positions are the sequence numbers of the set's replication domain, as pindb's own: a
//! write's is the sequence number of `@@last_gtid` read right after it on the same
//! connection (exact, where PostgreSQL's is the insert position the statement saw), a
//! replica's that of `@@gtid_slave_pos`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use diesel::sql_types::{BigInt, Integer, Text};
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncMysqlConnection, RunQueryDsl};
use pindb_diesel::bb8::PinDb;
use pindb_testkit::{gtid_seq, MariaDbApplyControl, MariaDbCluster};

use super::strategy::Settings;

/// The MariaDB set of a load test: a fresh table, the domain, and exclusive control of the
/// replicas' SQL threads (held while it lives: no other test stops or needs them meanwhile).
#[derive(Debug)]
pub struct MariaDbSet {
    pub(super) cluster: MariaDbCluster,
    control: Arc<Mutex<MariaDbApplyControl>>,
    table: String,
    domain: u32,
}

/// pindb over the set, with the statements of the set's table.
#[derive(Clone)]
pub(super) struct Routed {
    pub(super) db: PinDb<AsyncMysqlConnection>,
    insert: Arc<str>,
    list: Arc<str>,
    domain: u32,
}

#[derive(QueryableByName)]
struct Position {
    #[diesel(sql_type = Text)]
    pos: String,
}

#[derive(QueryableByName)]
struct MaxSeq {
    #[diesel(sql_type = BigInt)]
    seq: i64,
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("a MariaDB helper panicked")
}

impl MariaDbSet {
    /// Takes the apply lock, creates the table `lt_rows_<random>` and waits for both replicas.
    pub(super) async fn new() -> MariaDbSet {
        let cluster = MariaDbCluster::from_env();
        let c = cluster.clone();
        let control = blocking(move || c.exclusive()).await;
        let table = format!("lt_rows_{}", fastrand::u32(..));
        let (c, t) = (cluster.clone(), table.clone());
        let domain = blocking(move || {
            c.query_as_app(
                0,
                &format!(
                    "CREATE TABLE `{t}` (id INT AUTO_INCREMENT PRIMARY KEY, \
                     author VARCHAR(64) NOT NULL, seq INT NOT NULL, KEY (author, seq))"
                ),
            )
            .unwrap_or_else(|e| panic!("creating the load test's table failed: {e}"));
            c.sync_replicas();
            let domain = c
                .query(0, "SELECT @@gtid_domain_id")
                .unwrap_or_else(|e| panic!("reading the master's GTID domain failed: {e}"));
            domain
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("`{domain}` is not a GTID domain"))
        })
        .await;
        MariaDbSet {
            cluster,
            control: Arc::new(Mutex::new(control)),
            table,
            domain,
        }
    }

    pub(super) fn routed(&self, db: PinDb<AsyncMysqlConnection>) -> Routed {
        let t = &self.table;
        Routed {
            db,
            insert: format!("INSERT INTO `{t}` (`author`, `seq`) VALUES (?, ?)").into(),
            list: format!(
                "SELECT CAST(COALESCE(MAX(`seq`), 0) AS SIGNED) AS seq FROM `{t}` WHERE `author` = ?"
            )
            .into(),
            domain: self.domain,
        }
    }

    /// Drops the table and the apply control (which starts any SQL thread still stopped).
    pub(super) async fn finish(self) {
        let MariaDbSet {
            cluster,
            control,
            table,
            ..
        } = self;
        blocking(move || {
            drop(control);
            if let Err(e) = cluster.query_as_app(0, &format!("DROP TABLE IF EXISTS `{table}`")) {
                eprintln!("dropping the load test's table {table} failed: {e}");
            }
        })
        .await;
    }

    /// Stops and starts the lagging replicas' SQL threads (their IO threads keep receiving)
    /// until told to stop, then starts them; on a blocking thread (the apply control runs the
    /// `mariadb` client). Stopping or starting one waits until `SHOW SLAVE STATUS` says so:
    /// two client calls or more, about 10 ms each here, so a replica stays stopped some 20 ms
    /// longer than `lag_pause`.
    pub(super) fn lag(&self, s: Settings, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
        let control = Arc::clone(&self.control);
        tokio::task::spawn_blocking(move || {
            let mut control = control.lock().unwrap_or_else(|p| p.into_inner());
            let whole_run = s.lag_pause >= s.lag_period;
            let running = Duration::from_millis(1).max(s.lag_period.saturating_sub(s.lag_pause));
            let mut first = true;
            while !AtomicBool::load(&stop, Ordering::Relaxed) {
                if first || !whole_run {
                    for n in &s.lagging_replicas {
                        control.stop_apply(*n);
                    }
                }
                first = false;
                nap(&stop, s.lag_pause);
                if whole_run {
                    continue;
                }
                for n in &s.lagging_replicas {
                    control.start_apply(*n);
                }
                nap(&stop, running);
            }
            for n in &s.lagging_replicas {
                control.start_apply(*n);
            }
        })
    }

    /// The replicas' best applied position, sampled every 2 ms until told to stop: `(when
    /// the query was sent, since `start`; the higher sequence number of the two
    /// `@@gtid_slave_pos`)`. Spawn it.
    pub(super) fn sample_applied(
        &self,
        start: Instant,
        stop: Arc<AtomicBool>,
    ) -> impl std::future::Future<Output = Vec<(Duration, u64)>> + Send + 'static {
        let urls = [1, 2].map(|n| direct(self.cluster.replica_url(n)));
        let domain = self.domain;
        async move {
            let connect = |n: usize| {
                let url = urls[n - 1].clone();
                async move {
                    AsyncMysqlConnection::establish(&url)
                        .await
                        .unwrap_or_else(|e| panic!("the oracle's connection to replica {n}: {e}"))
                }
            };
            let (mut a, mut b) = (connect(1).await, connect(2).await);
            let mut samples = Vec::new();
            let mut every = tokio::time::interval(Duration::from_millis(2));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !AtomicBool::load(&stop, Ordering::Relaxed) {
                every.tick().await;
                let sent = start.elapsed();
                let (a, b) = tokio::join!(applied(&mut a, domain), applied(&mut b, domain));
                samples.push((sent, a.max(b).unwrap_or(0)));
            }
            samples
        }
    }
}

/// `url` with the connection going where it says (mysql_async would otherwise move a loopback
/// connection to the server's Unix socket).
fn direct(url: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}prefer_socket=false")
}

/// A replica's applied sequence number in `domain`, if it answered.
async fn applied(conn: &mut AsyncMysqlConnection, domain: u32) -> Option<u64> {
    let row: Position = diesel::sql_query("SELECT @@gtid_slave_pos AS pos")
        .get_result(conn)
        .await
        .ok()?;
    gtid_seq(&row.pos, domain)
}

/// Sleeps `d`, or less if told to stop: `run.rs`'s `nap` for a blocking thread.
fn nap(stop: &AtomicBool, d: Duration) {
    let until = Instant::now() + d;
    while Instant::now() < until && !AtomicBool::load(stop, Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20).min(until - Instant::now()));
    }
}

impl Routed {
    /// Inserts the user's row and returns its GTID's sequence number: `@@last_gtid`, read on
    /// the same (master) connection right after the autocommitted insert. pindb classifies
    /// `@@last_gtid` as a write (it belongs to the session), so it goes where the insert went.
    /// Costs the writing request one more master round trip, under every strategy alike.
    pub(super) async fn insert(&self, user: &str, seq: i32) -> u64 {
        let mut conn = self.db.get();
        diesel::sql_query(&*self.insert)
            .bind::<Text, _>(user)
            .bind::<Integer, _>(seq)
            .execute(&mut conn)
            .await
            .expect("load-test insert");
        let gtid: Position = diesel::sql_query("SELECT @@last_gtid AS pos")
            .get_result(&mut conn)
            .await
            .expect("load-test insert's GTID");
        gtid_seq(&gtid.pos, self.domain).unwrap_or_else(|| {
            panic!(
                "@@last_gtid `{}` after the insert has no GTID in domain {}",
                gtid.pos, self.domain
            )
        })
    }

    /// `(max seq seen, served by a replica)`.
    pub(super) async fn list(&self, user: &str) -> (i32, bool) {
        let mut conn = self.db.get();
        let seen: MaxSeq = diesel::sql_query(&*self.list)
            .bind::<Text, _>(user)
            .get_result(&mut conn)
            .await
            .expect("load-test list");
        (
            i32::try_from(seen.seq).expect("a seq is an INT"),
            conn.held_aliases().iter().any(|a| *a != "default"),
        )
    }
}
