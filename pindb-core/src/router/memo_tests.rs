//! The read memo (`Router::read_again`): a replica read that decides as the context's last one
//! did takes no lock, and decides exactly as the full decision would, whatever changed since.
//! Health is set by hand (the monitor's job in production); the hunts on the real cluster are
//! in the `promises` tests of pindb-diesel and pindb-seaorm.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::adapter::ReplicaFailure;
use crate::config::{Config, ReplicaPolicy};
use crate::context::{scope, unpin_all, Context};
use crate::freshness::Proof;
use crate::lsn::Lsn;
use crate::router::{Hint, Reason, Role, Router};

/// Proves `h` at `replay`, `ms` ago (a good check of the monitor's).
fn proved(h: &crate::replica::Health, replay: u64, ms: u64) {
    assert!(h.set_position(Lsn(replay), 0, Proof::ago(ms), false, true, h.suspicions()));
}

fn fresh_replicas(router: &Router) {
    for s in 0..router.inner.topology.sets().len() {
        for h in router.inner.topology.set(s).health.iter() {
            h.limit_lag(1_000);
            proved(h, 100, 0);
        }
    }
}

/// The `default` set with two replicas at `Lsn(100)`, fresh now.
fn router() -> Router {
    let router = Router::new(Config::single_set(
        "postgres://m@127.0.0.1:1/a",
        ["postgres://r@127.0.0.1:2/a", "postgres://r@127.0.0.1:3/a"],
    ))
    .unwrap();
    fresh_replicas(&router);
    router
}

fn read(r: &Router, hint: &Hint<'_>) -> (Role, Reason, String) {
    let route = r.db_for_read(hint).unwrap();
    (route.role, route.reason, route.alias.to_owned())
}

fn locks() -> u64 {
    Context::current().unwrap().locks_taken()
}

/// Reads until the memo is made (the second read of the kept replica), then `n` more: the
/// replica they went to and the locks they took.
fn settled_reads(r: &Router, hint: &Hint<'_>, n: usize) -> (String, u64) {
    let first = read(r, hint);
    assert_eq!((first.0, first.1), (Role::Replica, Reason::Replica));
    assert_eq!(read(r, hint), first);
    let before = locks();
    for _ in 0..n {
        assert_eq!(read(r, hint), first);
    }
    (first.2, locks() - before)
}

#[tokio::test]
async fn a_read_that_changes_nothing_takes_no_lock() {
    let r = router();
    scope(async {
        let (_, taken) = settled_reads(&r, &Hint::default(), 100);
        assert_eq!(taken, 0, "100 reads of the kept replica took {taken} locks");
    })
    .await;
}

/// Every change of the context voids the memo: a pin, a guard, a required position.
#[tokio::test]
async fn a_remembered_read_follows_every_change_of_its_context() {
    let r = router();
    scope(async {
        settled_reads(&r, &Hint::default(), 1);
        r.pin("default").unwrap();
        assert_eq!(read(&r, &Hint::default()).1, Reason::Pinned);
    })
    .await;
    scope(async {
        settled_reads(&r, &Hint::default(), 1);
        let guard = r.master("default").unwrap();
        assert_eq!(read(&r, &Hint::default()).1, Reason::MasterGuard);
        drop(guard);
    })
    .await;
    let ctx = Context::new();
    ctx.clone()
        .scope(async {
            settled_reads(&r, &Hint::default(), 1);
            ctx.require("default", Lsn(120));
            assert_eq!(read(&r, &Hint::default()).0, Role::Master);
        })
        .await;
}

/// The kept replica falls 20 s behind: the context read it, so the master serves the rest
/// (the other replica may be behind what it read: monotonic reads).
#[tokio::test]
async fn a_kept_replica_that_no_longer_fits_sends_the_reads_to_the_master() {
    let r = router();
    scope(async {
        let (kept, _) = settled_reads(&r, &Hint::default(), 1);
        let i = usize::from(kept == "default-2");
        proved(&r.inner.topology.set(0).health[i], 100, 20_000);
        let (role, reason, _) = read(&r, &Hint::default());
        assert_eq!((role, reason), (Role::Master, Reason::ReplicaFailed));
    })
    .await;
}

/// A read the kept replica fails after remembered reads is retried on the master, not on the
/// other replica: the count of reads the rules compare still says "read before".
#[tokio::test]
async fn a_failure_after_remembered_reads_is_retried_on_the_master() {
    let r = router();
    scope(async {
        let (kept, _) = settled_reads(&r, &Hint::default(), 3);
        let index = r.topology().index_of(&kept).unwrap();
        let next = r
            .reroute(index, ReplicaFailure::Unreachable, 0, "SELECT 1", &"test")
            .unwrap()
            .unwrap();
        assert_eq!(
            next.role,
            Role::Master,
            "read {kept} before, retried on {}",
            next.alias
        );
    })
    .await;
}

/// A staleness hint tighter than the replica's proof takes the full decision.
#[tokio::test]
async fn a_tight_staleness_hint_after_the_memo_reads_the_master() {
    let r = router();
    scope(async {
        settled_reads(&r, &Hint::default(), 1);
        for h in r.inner.topology.set(0).health.iter() {
            proved(h, 100, 150);
        }
        let hint = Hint::default().with_max_staleness(Duration::from_millis(100));
        assert_eq!(read(&r, &hint).0, Role::Master, "150 ms stale, hint 100 ms");
    })
    .await;
}

/// A runtime replica whose host changes after the memo: the new host may be behind.
#[tokio::test]
async fn a_host_change_after_the_memo_reads_the_master() {
    let config = Config::from_toml_str(
        r#"
        [masters.default]
        url = "postgres://app@127.0.0.1:1/app"
        discovery = { max_replicas = 1 }
        [sets]
        default = []
        "#,
    )
    .unwrap();
    let r = Router::new(config).unwrap();
    r.set_replicas("default", ["127.0.0.1:2"]).unwrap();
    scope(async {
        settled_reads(&r, &Hint::default(), 1);
        r.set_replicas("default", ["127.0.0.1:7"]).unwrap();
        assert_eq!(read(&r, &Hint::default()).0, Role::Master);
    })
    .await;
}

/// A logical replica that carries `notes`: after reads of `notes`, a read of `audit` is not
/// sent to it.
#[tokio::test]
async fn a_table_the_kept_replica_does_not_carry_reads_the_master() {
    let config = Config::from_toml_str(
        r#"
        [masters.default]
        url = "postgres://app@127.0.0.1:1/app"
        [sets]
        default = [{ port = 2, kind = "logical" }]
        "#,
    )
    .unwrap();
    let r = Router::new(config).unwrap();
    r.inner.topology.set(0).coverage[0].set(Some(crate::coverage::Carried {
        relations: ["notes".into()].into_iter().collect(),
        functions: Arc::default(),
    }));
    let notes = crate::classify::Footprint::of_sql("SELECT * FROM notes");
    let audit = crate::classify::Footprint::of_sql("SELECT * FROM audit");
    scope(async {
        settled_reads(&r, &Hint::default().with_footprint(notes.as_ref()), 1);
        let hint = Hint::default().with_footprint(audit.as_ref());
        assert_eq!(read(&r, &hint).0, Role::Master, "audit is not carried");
    })
    .await;
}

const TWO_SETS: &str = r#"
    [masters.default]
    url = "postgres://m@127.0.0.1:1/a"
    [masters.other]
    url = "postgres://m@127.0.0.1:4/a"
    [sets]
    default = [{ url = "postgres://r@127.0.0.1:2/a" }, { url = "postgres://r@127.0.0.1:3/a" }]
    other = [{ url = "postgres://r@127.0.0.1:5/a" }, { url = "postgres://r@127.0.0.1:6/a" }]
"#;

/// The memo is of one set: a read of another set, which requires a position its replicas do
/// not have, is not decided by it.
#[tokio::test]
async fn a_memo_of_one_set_does_not_decide_another() {
    let r = Router::new(Config::from_toml_str(TWO_SETS).unwrap()).unwrap();
    fresh_replicas(&r);
    let ctx = Context::new();
    ctx.require("other", Lsn(150));
    ctx.scope(async {
        settled_reads(&r, &Hint::alias("default"), 1);
        assert_eq!(read(&r, &Hint::alias("other")).0, Role::Master);
    })
    .await;
}

/// Two routers in one context: one's memo never decides for the other.
#[tokio::test]
async fn a_memo_of_one_router_does_not_decide_for_another() {
    let (a, b) = (router(), router());
    scope(async {
        settled_reads(&a, &Hint::default(), 1);
        let before = locks();
        read(&b, &Hint::default());
        assert_eq!(
            locks() - before,
            1,
            "the other router's read took the full decision"
        );
    })
    .await;
}

/// Step by step, two contexts see the same changes of the topology and of themselves; before
/// each read of one, its memo is voided (a lock that changes nothing), so it always takes
/// the full decision. The other's reads, remembered or not, must route exactly as its do.
#[test]
fn a_remembered_read_decides_as_the_full_decision_whatever_happens() {
    let mut remembered = 0;
    for seed in 0..200 {
        remembered += differential(seed, 300);
    }
    assert!(
        remembered > 1_000,
        "only {remembered} reads were remembered"
    );
}

/// One seed of the differential run; returns the reads the memo decided.
fn differential(seed: u64, steps: usize) -> u64 {
    let mut config = Config::from_toml_str(TWO_SETS).unwrap();
    // Deterministic choices, so that the two contexts may be compared.
    config.replica_policy = ReplicaPolicy::LeastLag;
    let r = Router::new(config).unwrap();
    for s in 0..2 {
        for (i, h) in r.inner.topology.set(s).health.iter().enumerate() {
            h.limit_lag(1_000);
            proved(h, 100, 5 + 10 * i as u64);
        }
    }
    let mut rng = fastrand::Rng::with_seed(seed);
    let (memo, full) = (Context::new(), Context::new());
    let mut guards = [Vec::new(), Vec::new()];
    let mut remembered = 0;
    let sets = ["default", "other"];
    let replicas = ["default-1", "default-2", "other-1", "other-2"];
    for step in 0..steps {
        let s = rng.usize(..2);
        let i = rng.usize(..2);
        let h = &r.inner.topology.set(s).health[i];
        match rng.usize(..10) {
            // The topology, seen by both.
            0 => match rng.usize(..5) {
                0 => proved(h, [50, 100, 150][rng.usize(..3)], 5 + 10 * i as u64),
                1 => proved(h, h.replay_lsn().0, 5_000),
                2 => h.set_down(),
                3 => h.suspect(),
                _ => h.revoke(),
            },
            1 => {
                let drained = rng.bool();
                r.topology().drain(replicas[2 * s + i], drained).unwrap();
            }
            2 => {
                let enabled = rng.usize(..3) != 0;
                r.topology()
                    .set_replicas_enabled(Some(sets[s]), enabled)
                    .unwrap();
            }
            // The same change of each context.
            3 | 4 => {
                let change = rng.usize(..7);
                let lsn = Lsn([50, 100, 150][rng.usize(..3)]);
                let replica = r.topology().index_of(replicas[rng.usize(..4)]).unwrap();
                let outcomes: Vec<String> = [&memo, &full]
                    .into_iter()
                    .zip(&mut guards)
                    .map(|(ctx, guards)| {
                        ctx.clone().enter(|| match change {
                            0 => format!("{:?}", r.pin(sets[s])),
                            1 => format!("{:?}", r.master(sets[s]).map(|g| guards.push(g))),
                            2 => format!("{:?}", guards.pop().is_some()),
                            3 => format!("{:?}", ctx.require(sets[s], lsn)),
                            4 => format!("{:?}", unpin_all()),
                            5 => format!(
                                "{:?}",
                                r.db_for_write(&Hint::alias(sets[s])).map(|w| w.index)
                            ),
                            _ => format!(
                                "{:?}",
                                r.reroute(
                                    replica,
                                    ReplicaFailure::Unreachable,
                                    0,
                                    "SELECT 1",
                                    &"test"
                                )
                                .map(|to| to.map(|to| to.index))
                            ),
                        })
                    })
                    .collect();
                assert_eq!(
                    outcomes[0], outcomes[1],
                    "seed {seed}, step {step}: change {change}"
                );
            }
            // Reads, several in a row.
            _ => {
                let hint = match rng.usize(..4) {
                    0 => Hint::default(),
                    1 => Hint::alias(sets[s]),
                    2 => Hint::default().with_max_staleness(Duration::from_millis(500)),
                    _ => Hint::alias(replicas[rng.usize(..4)]),
                };
                for _ in 0..1 + rng.usize(..3) {
                    let before = memo.locks_taken();
                    let fast = memo.clone().enter(|| r.db_for_read(&hint).map(|r| r.index));
                    remembered += u64::from(memo.locks_taken() == before);
                    full.required();
                    let slow = full.clone().enter(|| r.db_for_read(&hint).map(|r| r.index));
                    assert_eq!(
                        format!("{fast:?}"),
                        format!("{slow:?}"),
                        "seed {seed}, step {step}: {hint:?}"
                    );
                }
            }
        }
    }
    remembered
}

/// One thread changes the context (a guard, a pin, a required position) and says so;
/// threads reading in the same context, remembered reads included, read the master from the
/// moment they know of the change.
#[test]
fn a_change_made_on_another_thread_is_seen_by_remembered_reads() {
    let r = router();
    let ctx = Context::new();
    // Odd: a change is in force; u64::MAX: stop.
    let phase = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (r, ctx, phase) = (r.clone(), ctx.clone(), Arc::clone(&phase));
            std::thread::spawn(move || {
                let mut stale = 0;
                ctx.enter(|| loop {
                    let p = phase.load(Ordering::Acquire);
                    if p == u64::MAX {
                        return stale;
                    }
                    let role = r.db_for_read(&Hint::default()).unwrap().role;
                    let still = phase.load(Ordering::Acquire) == p;
                    stale += u32::from(p % 2 == 1 && role != Role::Master && still);
                })
            })
        })
        .collect();
    for round in 0..300 {
        ctx.clone().enter(unpin_all);
        let settle = std::time::Instant::now() + Duration::from_millis(2);
        while std::time::Instant::now() < settle {
            std::thread::yield_now();
        }
        let guard = ctx.clone().enter(|| match round % 3 {
            0 => Some(r.master("default").unwrap()),
            1 => r.pin("default").map(|()| None).unwrap(),
            _ => {
                ctx.require("default", Lsn(1_000));
                None
            }
        });
        phase.fetch_add(1, Ordering::Release);
        std::thread::yield_now();
        phase.fetch_add(1, Ordering::Release);
        drop(guard);
    }
    phase.store(u64::MAX, Ordering::Release);
    let stale: u32 = readers.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(
        stale, 0,
        "reads went to a replica after the change was known"
    );
}
