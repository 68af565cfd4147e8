#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
//! One table of routing, strict-mode and guard scenarios, run against every adapter on the dev
//! cluster (`scripts/cluster up`): its PostgreSQL set, and its MariaDB set for the adapters
//! that have a MariaDB driver. Each scenario runs in a fresh pinning context; a failure names
//! the scenario, the step, the adapter and the database.

use pindb_core::{scope, RouterMode};
use pindb_scenarios::{
    Adapter, Backend, DieselAsync, DieselAsyncMariaDb, DieselSync, DieselSyncMariaDb, Failure,
    MariaDbWorld, Outcome, SeaOrm, SeaOrmMariaDb, Servers, World, WorldOf,
};

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
fn check<A: Adapter>(w: &WorldOf<A>, expected: Expect, outcome: Outcome) -> Result<(), String> {
    let number = <A::Backend as Backend>::NUMBER;
    let (got, what) = match outcome {
        Ok(n) if n == w.master() => (Master, format!("the master ({number} {n})")),
        Ok(n) => match w.replicas().iter().position(|&r| r == n) {
            Some(i) => (Replica, format!("replica {} ({number} {n})", i + 1)),
            None => return Err(format!("expected {expected:?}, got unknown {number} {n}")),
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
async fn run<A: Adapter>(w: &WorldOf<A>, db: &A, scenario: &Scenario) -> Result<(), String> {
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
            Read(expected) => check::<A>(w, expected, db.read().await).map_err(at)?,
            Write(expected) | TxWrite(expected) => {
                let before = w.rows().await;
                let outcome = match step {
                    Write(_) => db.write().await,
                    _ => db.transaction_write().await,
                };
                let written = w.rows().await - before;
                check::<A>(w, expected, outcome).map_err(at)?;
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
async fn run_all<A: Adapter>(w: WorldOf<A>) {
    let adapter = format!("{} on {}", A::NAME, <A::Backend as Backend>::NAME);
    let mut failures = Vec::new();
    for scenario in SCENARIOS {
        let router = match scenario.mode {
            Greedy => Some(RouterMode::Greedy),
            Strict => Some(RouterMode::Strict),
            Disabled => None,
        };
        let db = A::open(w.config(router)).await;
        match scope(run(&w, &db, scenario)).await {
            Ok(()) => println!("ok: {adapter} / {}", scenario.name),
            Err(e) => failures.push(format!("{adapter}, scenario `{}`, {e}", scenario.name)),
        }
    }
    w.finish().await;
    assert!(
        failures.is_empty(),
        "{} of {} scenarios failed on {adapter}:\n{}",
        failures.len(),
        SCENARIOS.len(),
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

#[tokio::test]
async fn diesel_async_bb8_on_mariadb() {
    run_all::<DieselAsyncMariaDb>(MariaDbWorld::new().await).await;
}

#[tokio::test]
async fn diesel_sync_r2d2_on_mariadb() {
    run_all::<DieselSyncMariaDb>(MariaDbWorld::new().await).await;
}

#[tokio::test]
async fn seaorm_on_mariadb() {
    run_all::<SeaOrmMariaDb>(MariaDbWorld::new().await).await;
}

#[tokio::test]
async fn diesel_async_bb8_on_mariadb_through_a_reader_endpoint() {
    run_all::<DieselAsyncMariaDb>(MariaDbWorld::through_endpoint().await).await;
}

#[tokio::test]
async fn diesel_sync_r2d2_on_mariadb_through_a_reader_endpoint() {
    run_all::<DieselSyncMariaDb>(MariaDbWorld::through_endpoint().await).await;
}

#[tokio::test]
async fn seaorm_on_mariadb_through_a_reader_endpoint() {
    run_all::<SeaOrmMariaDb>(MariaDbWorld::through_endpoint().await).await;
}
