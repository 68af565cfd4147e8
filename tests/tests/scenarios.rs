#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
//! One table of routing, strict-mode and guard scenarios, run against every adapter on the dev
//! cluster (`scripts/cluster up`). Each scenario runs in a fresh pinning context; a failure
//! names the scenario, the step and the adapter.

use pindb_core::{scope, RouterMode};
use pindb_scenarios::{Adapter, DieselAsync, DieselSync, Failure, Outcome, SeaOrm, World};

use Expect::{Master, Refused, Replica};
use Mode::{Disabled, Greedy, Strict};
use Step::{DropGuard, MasterGuard, Pin, Read, ReplicaGuard, TxWrite, Write};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Master,
    /// Either replica.
    Replica,
    /// The strict router's `UnpinnedWrite`; a refused write must leave no row.
    Refused,
}

#[derive(Debug, Clone, Copy)]
enum Step {
    Read(Expect),
    Write(Expect),
    TxWrite(Expect),
    Pin,
    /// `router.master("default")`, held until a `DropGuard`.
    MasterGuard,
    /// `router.unpinned_replica("default")`, held until a `DropGuard`.
    ReplicaGuard,
    /// Drops the most recent live guard.
    DropGuard,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Greedy,
    Strict,
    /// `enabled = false` (with the strict router, to show nothing is refused).
    Disabled,
}

struct Scenario {
    name: &'static str,
    mode: Mode,
    steps: &'static [Step],
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "unpinned reads go to a replica",
        mode: Greedy,
        steps: &[Read(Replica), Read(Replica)],
    },
    Scenario {
        name: "greedy: a write goes to the master and pins later reads there",
        mode: Greedy,
        steps: &[
            Read(Replica),
            Write(Master),
            Read(Master),
            Write(Master),
            Read(Master),
        ],
    },
    Scenario {
        name: "strict: an unpinned write is refused and writes nothing",
        mode: Strict,
        steps: &[Write(Refused), TxWrite(Refused), Read(Replica)],
    },
    Scenario {
        name: "strict: after pin, reads and writes go to the master",
        mode: Strict,
        steps: &[
            Read(Replica),
            Pin,
            Read(Master),
            Write(Master),
            TxWrite(Master),
        ],
    },
    Scenario {
        name: "master guard: the master while it lives, and after it (monotonic reads)",
        mode: Strict,
        steps: &[
            Read(Replica),
            MasterGuard,
            Read(Master),
            Write(Master),
            DropGuard,
            Read(Master),
            Write(Refused),
        ],
    },
    Scenario {
        name: "greedy: a write under the master guard pins nothing, reads stay on the master",
        mode: Greedy,
        steps: &[MasterGuard, Write(Master), DropGuard, Read(Master)],
    },
    Scenario {
        name: "strict: unpinned_replica guard after a pin reads a replica, refuses writes",
        mode: Strict,
        steps: &[
            Pin,
            Read(Master),
            ReplicaGuard,
            Read(Replica),
            Write(Refused),
            DropGuard,
            Read(Master),
            Write(Master),
        ],
    },
    Scenario {
        name: "greedy: unpinned_replica guard after a write reads a replica, writes the master",
        mode: Greedy,
        steps: &[
            Write(Master),
            ReplicaGuard,
            Read(Replica),
            Write(Master),
            DropGuard,
            Read(Master),
        ],
    },
    Scenario {
        name: "nested guards: the innermost wins",
        mode: Strict,
        steps: &[
            MasterGuard,
            ReplicaGuard,
            Read(Replica),
            Write(Refused),
            DropGuard,
            Read(Master),
            Write(Master),
            DropGuard,
            Read(Master),
        ],
    },
    Scenario {
        name: "a pin made under the master guard outlives it",
        mode: Strict,
        steps: &[MasterGuard, Pin, DropGuard, Read(Master), Write(Master)],
    },
    Scenario {
        name: "greedy: a transaction runs on the master and pins",
        mode: Greedy,
        steps: &[Read(Replica), TxWrite(Master), Read(Master)],
    },
    Scenario {
        name: "disabled: everything on the master, nothing refused, guards inert",
        mode: Disabled,
        steps: &[
            Read(Master),
            Write(Master),
            TxWrite(Master),
            ReplicaGuard,
            Read(Master),
            DropGuard,
            Pin,
            Read(Master),
        ],
    },
];

/// Where `outcome` came from, compared with `expected`.
fn check(w: &World, expected: Expect, outcome: Outcome) -> Result<(), String> {
    let (got, what) = match outcome {
        Ok(p) if p == w.master => (Master, format!("the master (port {p})")),
        Ok(p) => match w.replicas.iter().position(|&r| r == p) {
            Some(i) => (Replica, format!("replica {} (port {p})", i + 1)),
            None => return Err(format!("expected {expected:?}, got unknown port {p}")),
        },
        Err(Failure::UnpinnedWrite) => (Refused, "an UnpinnedWrite refusal".to_owned()),
        Err(Failure::Other(e) | Failure::Unreachable(e) | Failure::NoPrimary(e)) => {
            return Err(format!("expected {expected:?}, got error: {e}"))
        }
    };
    if got == expected {
        Ok(())
    } else {
        Err(format!("expected {expected:?}, got {what}"))
    }
}

/// Runs the steps of `scenario` in the current context; the error names the failing step.
async fn run<A: Adapter>(w: &World, db: &A, scenario: &Scenario) -> Result<(), String> {
    let router = db.router();
    let mut guards = Vec::new();
    for (i, &step) in scenario.steps.iter().enumerate() {
        let at = |msg: String| format!("step {} `{step:?}`: {msg}", i + 1);
        match step {
            Pin => router.pin("default").map_err(|e| at(e.to_string()))?,
            MasterGuard => guards.push(router.master("default").map_err(|e| at(e.to_string()))?),
            ReplicaGuard => guards.push(
                router
                    .unpinned_replica("default")
                    .map_err(|e| at(e.to_string()))?,
            ),
            DropGuard => drop(guards.pop().ok_or_else(|| at("no live guard".into()))?),
            Read(expected) => check(w, expected, db.read().await).map_err(at)?,
            Write(expected) | TxWrite(expected) => {
                let before = w.rows().await;
                let outcome = match step {
                    Write(_) => db.write().await,
                    _ => db.transaction_write().await,
                };
                let written = w.rows().await - before;
                check(w, expected, outcome).map_err(at)?;
                let want = i64::from(expected != Refused);
                if written != want {
                    return Err(at(format!(
                        "{written} rows on the primary, expected {want}"
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Every scenario against adapter `A`, each with its own pools and context; reports every
/// failing scenario, not only the first.
async fn run_all<A: Adapter>(w: World) {
    let mut failures = Vec::new();
    for scenario in SCENARIOS {
        let router = match scenario.mode {
            Greedy => Some(RouterMode::Greedy),
            Strict => Some(RouterMode::Strict),
            Disabled => None,
        };
        let db = A::open(w.config(router)).await;
        match scope(run(&w, &db, scenario)).await {
            Ok(()) => println!("ok: {} / {}", A::NAME, scenario.name),
            Err(e) => failures.push(format!(
                "adapter {}, scenario `{}`, {e}",
                A::NAME,
                scenario.name
            )),
        }
    }
    w.finish().await;
    assert!(
        failures.is_empty(),
        "{} of {} scenarios failed on {}:\n{}",
        failures.len(),
        SCENARIOS.len(),
        A::NAME,
        failures.join("\n")
    );
}

#[tokio::test]
async fn diesel_async_bb8() {
    run_all::<DieselAsync>(World::new().await).await;
}

#[tokio::test]
async fn sync_diesel_r2d2() {
    run_all::<DieselSync>(World::new().await).await;
}

#[tokio::test]
async fn seaorm() {
    run_all::<SeaOrm>(World::new().await).await;
}

#[tokio::test]
async fn diesel_async_bb8_through_pgbouncer() {
    run_all::<DieselAsync>(World::through_pgbouncer().await).await;
}

#[tokio::test]
async fn sync_diesel_r2d2_through_pgbouncer() {
    run_all::<DieselSync>(World::through_pgbouncer().await).await;
}

#[tokio::test]
async fn seaorm_through_pgbouncer() {
    run_all::<SeaOrm>(World::through_pgbouncer().await).await;
}

#[tokio::test]
async fn diesel_async_bb8_through_a_reader_endpoint() {
    run_all::<DieselAsync>(World::through_endpoint().await).await;
}

#[tokio::test]
async fn sync_diesel_r2d2_through_a_reader_endpoint() {
    run_all::<DieselSync>(World::through_endpoint().await).await;
}

#[tokio::test]
async fn seaorm_through_a_reader_endpoint() {
    run_all::<SeaOrm>(World::through_endpoint().await).await;
}
