#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
//! Router behaviour: strict and greedy writes, guards in every nesting and drop order,
//! disabled mode, unmanaged aliases, delegates, replica stickiness and spread.

use std::collections::HashSet;

use pindb_core::{
    get_newly_pinned, get_pinned, is_pinned, scope, unpin_all, Config, Context, Hint, Operation,
    PinDbError, Reason, Role, Router, RouterMode,
};

const TOML: &str = r#"
    [masters.default]
    url = "postgres://app@m/app"
    [masters.analytics]
    url = "postgres://app@am/stats"
    [sets]
    default = [{ host = "r1" }, { host = "r2" }]
    analytics = [{ host = "ar1" }]
    [unmanaged.legacy]
    url = "postgres://app@legacy/old"
"#;

fn router(mode: RouterMode) -> Router {
    let mut config = Config::from_toml_str(TOML).unwrap();
    config.router = mode;
    Router::new(config).unwrap()
}

fn any() -> Hint<'static> {
    Hint::default()
}

fn analytics() -> Hint<'static> {
    Hint::alias("analytics")
}

#[tokio::test]
async fn unpinned_reads_go_to_a_replica_and_pinned_reads_to_the_master() {
    let r = router(RouterMode::Strict);
    scope(async {
        let read = r.db_for_read(&any()).unwrap();
        assert_eq!((read.role, read.reason), (Role::Replica, Reason::Replica));
        assert!(read.alias.starts_with("default-"));
        r.pin("default").unwrap();
        let read = r.db_for_read(&any()).unwrap();
        assert_eq!((read.alias, read.reason), ("default", Reason::Pinned));
        // Pinning one set leaves the other alone.
        assert_eq!(r.db_for_read(&analytics()).unwrap().alias, "analytics-1");
    })
    .await;
}

#[tokio::test]
async fn strict_refuses_unpinned_writes_naming_the_set() {
    let r = router(RouterMode::Strict);
    scope(async {
        let err = r.db_for_write(&analytics()).unwrap_err();
        assert_eq!(
            err,
            PinDbError::UnpinnedWrite {
                set: "analytics".into()
            }
        );
        assert!(err.to_string().contains("pin(\"analytics\")"), "{err}");
        assert!(!is_pinned("analytics"), "a refused write pins nothing");
        r.pin("analytics").unwrap();
        let w = r.db_for_write(&analytics()).unwrap();
        assert_eq!((w.alias, w.reason), ("analytics", Reason::Pinned));
    })
    .await;
    // Outside any context nothing can be pinned, so strict refuses.
    assert!(matches!(
        r.db_for_write(&any()),
        Err(PinDbError::UnpinnedWrite { .. })
    ));
}

#[tokio::test]
async fn greedy_first_write_pins_the_set() {
    let r = router(RouterMode::Greedy);
    scope(async {
        assert_eq!(r.db_for_read(&any()).unwrap().role, Role::Replica);
        let w = r.db_for_write(&any()).unwrap();
        assert_eq!(
            (w.alias, w.role, w.reason),
            ("default", Role::Master, Reason::GreedyPin)
        );
        assert!(is_pinned("default"));
        assert_eq!(get_newly_pinned(), ["default"]);
        let read = r.db_for_read(&any()).unwrap();
        assert_eq!((read.alias, read.reason), ("default", Reason::Pinned));
        let w = r.db_for_write(&any()).unwrap();
        assert_eq!(w.reason, Reason::Pinned);
        assert!(!is_pinned("analytics"));
    })
    .await;
    let w = r.db_for_write(&any()).unwrap();
    assert_eq!((w.alias, w.reason), ("default", Reason::NoContextWrite));
}

#[tokio::test]
async fn explain_does_not_pin() {
    let r = router(RouterMode::Greedy);
    scope(async {
        let w = r.explain(Operation::Write, &any()).unwrap();
        assert_eq!(w.reason, Reason::GreedyPin);
        assert!(!is_pinned("default"));
    })
    .await;
}

#[tokio::test]
async fn master_guard_routes_to_master_without_pinning_and_restores() {
    let r = router(RouterMode::Strict);
    scope(async {
        {
            let _g = r.master("default").unwrap();
            let read = r.db_for_read(&any()).unwrap();
            assert_eq!((read.alias, read.reason), ("default", Reason::MasterGuard));
            let w = r.db_for_write(&any()).unwrap();
            assert_eq!((w.alias, w.reason), ("default", Reason::MasterGuard));
            assert!(
                get_newly_pinned().is_empty(),
                "master() must not record a new pin"
            );
        }
        // The master showed this context newer data than a replica may have: its later
        // reads of the set stay there (monotonic reads); writes are still refused (no pin).
        let after = r.db_for_read(&any()).unwrap();
        assert_eq!(
            (after.role, after.reason),
            (Role::Master, Reason::Monotonic)
        );
        assert!(r.db_for_write(&any()).is_err());
    })
    .await;
    scope(async {
        assert_eq!(
            r.db_for_read(&any()).unwrap().role,
            Role::Replica,
            "a new context"
        );
    })
    .await;
}

#[tokio::test]
async fn pin_made_inside_master_guard_survives_it() {
    let r = router(RouterMode::Strict);
    scope(async {
        let g = r.master("default").unwrap();
        r.pin("default").unwrap();
        drop(g);
        assert!(is_pinned("default"));
        assert_eq!(r.db_for_read(&any()).unwrap().reason, Reason::Pinned);
        assert_eq!(r.db_for_write(&any()).unwrap().reason, Reason::Pinned);
    })
    .await;
}

#[tokio::test]
async fn unpinned_replica_guard_reads_replica_and_refuses_writes_in_strict() {
    let r = router(RouterMode::Strict);
    scope(async {
        r.pin("default").unwrap();
        {
            let _g = r.unpinned_replica("default").unwrap();
            let read = r.db_for_read(&any()).unwrap();
            assert_eq!(
                (read.role, read.reason),
                (Role::Replica, Reason::ReplicaGuard)
            );
            assert_eq!(
                r.db_for_write(&any()).unwrap_err(),
                PinDbError::UnpinnedWrite {
                    set: "default".into()
                }
            );
        }
        assert_eq!(r.db_for_read(&any()).unwrap().reason, Reason::Pinned);
    })
    .await;
}

#[tokio::test]
async fn unpinned_replica_guard_in_greedy_mode_pins_on_write_but_keeps_reading_replicas() {
    let r = router(RouterMode::Greedy);
    scope(async {
        let g = r.unpinned_replica("default").unwrap();
        assert_eq!(r.db_for_write(&any()).unwrap().reason, Reason::GreedyPin);
        assert_eq!(r.db_for_read(&any()).unwrap().reason, Reason::ReplicaGuard);
        drop(g);
        assert_eq!(r.db_for_read(&any()).unwrap().reason, Reason::Pinned);
    })
    .await;
}

/// Every pair of guards, nested, dropped in both orders: the innermost live guard decides,
/// and when both are gone the set is back to its unguarded state.
#[tokio::test]
async fn guards_nest_and_drop_in_any_order() {
    use pindb_core::GuardKind::{self, Master, UnpinnedReplica};
    let r = router(RouterMode::Strict);
    let expect = |kind: GuardKind| match kind {
        Master => Reason::MasterGuard,
        UnpinnedReplica => Reason::ReplicaGuard,
    };
    let make = |kind: GuardKind| match kind {
        Master => r.master("default").unwrap(),
        UnpinnedReplica => r.unpinned_replica("default").unwrap(),
    };
    for pinned in [false, true] {
        for outer in [Master, UnpinnedReplica] {
            for inner in [Master, UnpinnedReplica] {
                for drop_outer_first in [false, true] {
                    scope(async {
                        if pinned {
                            r.pin("default").unwrap();
                        }
                        let base = r.db_for_read(&any()).unwrap().reason;
                        let o = make(outer);
                        assert_eq!(r.db_for_read(&any()).unwrap().reason, expect(outer));
                        let i = make(inner);
                        assert_eq!(r.db_for_read(&any()).unwrap().reason, expect(inner));
                        if drop_outer_first {
                            drop(o);
                            assert_eq!(r.db_for_read(&any()).unwrap().reason, expect(inner));
                            drop(i);
                        } else {
                            drop(i);
                            assert_eq!(r.db_for_read(&any()).unwrap().reason, expect(outer));
                            drop(o);
                        }
                        // A master guard's reads move the context past every replica.
                        let after = match base {
                            Reason::Replica if outer == Master || inner == Master => {
                                Reason::Monotonic
                            }
                            base => base,
                        };
                        assert_eq!(r.db_for_read(&any()).unwrap().reason, after);
                        assert_eq!(is_pinned("default"), pinned);
                    })
                    .await;
                }
            }
        }
    }
}

#[tokio::test]
async fn a_guard_on_one_set_leaves_others_alone() {
    let r = router(RouterMode::Strict);
    scope(async {
        let _g = r.master("analytics").unwrap();
        assert_eq!(r.db_for_read(&any()).unwrap().role, Role::Replica);
        assert_eq!(
            r.db_for_read(&analytics()).unwrap().reason,
            Reason::MasterGuard
        );
    })
    .await;
}

#[tokio::test]
async fn guards_can_be_held_across_await_in_spawned_tasks() {
    let r = router(RouterMode::Strict);
    scope(async {
        let g = r.master("default").unwrap();
        let r2 = r.clone();
        let seen = pindb_core::spawn(async move {
            tokio::task::yield_now().await;
            let reason = r2.db_for_read(&Hint::default()).unwrap().reason;
            drop(g); // dropped on another task
            reason
        })
        .await
        .unwrap();
        assert_eq!(seen, Reason::MasterGuard);
        assert_eq!(r.db_for_read(&any()).unwrap().reason, Reason::Monotonic);
    })
    .await;
}

#[tokio::test]
async fn calls_outside_a_context() {
    let r = router(RouterMode::Greedy);
    assert!(matches!(
        r.pin("default"),
        Err(PinDbError::NoContext { operation: "pin" })
    ));
    assert!(matches!(
        r.master("default"),
        Err(PinDbError::NoContext {
            operation: "master"
        })
    ));
    assert!(matches!(
        r.unpinned_replica("default"),
        Err(PinDbError::NoContext { .. })
    ));
    assert!(!is_pinned("default"));
    assert!(get_pinned().is_empty());
    assert!(get_newly_pinned().is_empty());
    unpin_all();
    assert_eq!(r.db_for_read(&any()).unwrap().role, Role::Replica);
}

#[tokio::test]
async fn unknown_and_unmanaged_aliases() {
    let r = router(RouterMode::Strict);
    scope(async {
        let err = r.pin("nope").unwrap_err();
        assert!(matches!(&err, PinDbError::UnknownAlias { alias, .. } if alias == "nope"));
        assert!(
            err.to_string().contains("default-1"),
            "lists the known aliases: {err}"
        );
        assert!(r.db_for_read(&Hint::alias("nope")).is_err());
        assert!(matches!(
            r.pin("legacy"),
            Err(PinDbError::NotManaged { .. })
        ));
        assert!(matches!(
            r.master("legacy"),
            Err(PinDbError::NotManaged { .. })
        ));
        // Unmanaged aliases pass through, and strict mode lets writes to them through.
        let read = r.db_for_read(&Hint::alias("legacy")).unwrap();
        let write = r.db_for_write(&Hint::alias("legacy")).unwrap();
        for route in [read, write] {
            assert_eq!(
                (route.alias, route.role, route.set),
                ("legacy", Role::Unmanaged, None)
            );
        }
        assert!(get_pinned().is_empty());
        // A replica alias pins its set.
        r.pin("default-2").unwrap();
        assert!(is_pinned("default"));
    })
    .await;
}

#[tokio::test]
async fn explicit_replica_alias_reads_that_replica() {
    let r = router(RouterMode::Strict);
    scope(async {
        let read = r.db_for_read(&Hint::alias("default-2")).unwrap();
        assert_eq!(
            (read.alias, read.reason),
            ("default-2", Reason::ExplicitReplica)
        );
        // Writes through a replica alias go to its set's master under the set's rules.
        assert!(r.db_for_write(&Hint::alias("default-2")).is_err());
        r.pin("default").unwrap();
        assert_eq!(
            r.db_for_write(&Hint::alias("default-2")).unwrap().alias,
            "default"
        );
    })
    .await;
}

#[tokio::test]
async fn disabled_mode_sends_everything_to_masters_without_errors_or_pins() {
    let mut config = Config::from_toml_str(TOML).unwrap();
    config.enabled = false;
    config.router = RouterMode::Strict;
    let r = Router::new(config).unwrap();
    scope(async {
        let read = r.db_for_read(&any()).unwrap();
        assert_eq!((read.alias, read.reason), ("default", Reason::Disabled));
        let w = r.db_for_write(&any()).unwrap();
        assert_eq!((w.alias, w.reason), ("default", Reason::Disabled));
        let read = r.db_for_read(&Hint::alias("default-1")).unwrap();
        assert_eq!(
            read.alias, "default",
            "replicas behave as mirrors of the master"
        );
        assert_eq!(r.db_for_read(&analytics()).unwrap().alias, "analytics");
        assert_eq!(
            r.db_for_read(&Hint::alias("legacy")).unwrap().alias,
            "legacy"
        );
        r.pin("default").unwrap();
        assert!(!is_pinned("default"), "disabled mode pins nothing");
        let _g = r.unpinned_replica("default").unwrap();
        assert_eq!(r.db_for_read(&any()).unwrap().alias, "default");
        assert_eq!(r.get_replica("default").unwrap(), "default");
    })
    .await;
    // No errors outside a context either.
    assert_eq!(r.db_for_write(&any()).unwrap().alias, "default");
    assert!(r.pin("default").is_ok());
}

#[tokio::test]
async fn delegates_chain_first_answer_wins_none_means_default() {
    let config = Config::from_toml_str(TOML).unwrap();
    let stats = |h: &Hint, _: Operation| h.tables.contains(&"stats").then_some("analytics");
    let old = |h: &Hint, _: Operation| (h.model == Some("OldThing")).then_some("legacy");
    let catch_stats_too = |h: &Hint, _: Operation| h.tables.contains(&"stats").then_some("legacy");
    let writes_elsewhere = |h: &Hint, op: Operation| {
        (op == Operation::Write && h.tables.contains(&"audit")).then_some("legacy")
    };
    let r = Router::builder(config)
        .delegate(stats)
        .delegate(old)
        .delegate(catch_stats_too)
        .delegate(writes_elsewhere)
        .build()
        .unwrap();
    scope(async {
        assert_eq!(
            r.db_for_read(&Hint::tables(&["stats"])).unwrap().alias,
            "analytics-1"
        );
        assert_eq!(
            r.db_for_read(&Hint::tables(&["x"]).with_model("OldThing"))
                .unwrap()
                .alias,
            "legacy"
        );
        assert_eq!(
            r.db_for_read(&Hint::tables(&["users"])).unwrap().set,
            Some("default")
        );
        assert_eq!(
            r.db_for_read(&Hint::tables(&["audit"])).unwrap().set,
            Some("default")
        );
        assert_eq!(
            r.db_for_write(&Hint::tables(&["audit"])).unwrap().alias,
            "legacy"
        );
        // An explicit alias skips delegates.
        assert_eq!(
            r.db_for_read(&Hint {
                alias: Some("default"),
                tables: &["stats"],
                ..Hint::default()
            })
            .unwrap()
            .set,
            Some("default")
        );
    })
    .await;
}

#[tokio::test]
async fn delegate_answering_an_unknown_alias_is_an_error() {
    let config = Config::from_toml_str(TOML).unwrap();
    let bad = |_: &Hint, _: Operation| Some("analytic");
    let r = Router::builder(config).delegate(bad).build().unwrap();
    let err = r.db_for_read(&any()).unwrap_err();
    assert!(matches!(err, PinDbError::UnknownAlias { ref alias, .. } if alias == "analytic"));
}

#[tokio::test]
async fn replica_choice_is_kept_for_the_whole_context() {
    let r = router(RouterMode::Greedy);
    for _ in 0..20 {
        scope(async {
            let first = r.db_for_read(&any()).unwrap().alias;
            assert_eq!(r.get_replica("default").unwrap(), first);
            for _ in 0..10 {
                assert_eq!(r.db_for_read(&any()).unwrap().alias, first);
            }
            // Still the same replica after a guard comes and goes.
            drop(r.master("default").unwrap());
            assert_eq!(r.db_for_read(&any()).unwrap().alias, first);
        })
        .await;
    }
}

#[tokio::test]
async fn round_robin_spreads_contexts_over_replicas() {
    let r = router(RouterMode::Greedy);
    let mut counts = std::collections::HashMap::new();
    for _ in 0..100 {
        let alias = scope(async { r.db_for_read(&any()).unwrap().alias }).await;
        *counts.entry(alias).or_insert(0) += 1;
    }
    assert_eq!(counts.len(), 2, "{counts:?}");
    assert_eq!(counts["default-1"], 50);
    assert_eq!(counts["default-2"], 50);
}

#[tokio::test]
async fn random_policy_uses_every_replica() {
    let mut config = Config::from_toml_str(TOML).unwrap();
    config.replica_policy = pindb_core::ReplicaPolicy::Random;
    let r = Router::new(config).unwrap();
    let mut seen = HashSet::new();
    for _ in 0..200 {
        seen.insert(scope(async { r.db_for_read(&any()).unwrap().alias }).await);
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
}

#[tokio::test]
async fn a_set_without_replicas_reads_from_its_master() {
    let r = Router::new(
        Config::from_toml_str("[masters.default]\nurl = 'postgres://m/app'\n[sets]\ndefault = []")
            .unwrap(),
    )
    .unwrap();
    scope(async {
        let read = r.db_for_read(&any()).unwrap();
        assert_eq!((read.alias, read.reason), ("default", Reason::NoReplica));
        assert_eq!(r.get_replica("default").unwrap(), "default");
    })
    .await;
}

#[tokio::test]
async fn unpin_all_clears_pins_and_replica_choice_but_not_live_guards() {
    let r = router(RouterMode::Strict);
    scope(async {
        r.pin("default").unwrap();
        r.pin("analytics").unwrap();
        let _g = r.master("analytics").unwrap();
        unpin_all();
        assert!(get_pinned().is_empty());
        assert_eq!(r.db_for_read(&any()).unwrap().reason, Reason::Replica);
        assert_eq!(
            r.db_for_read(&analytics()).unwrap().reason,
            Reason::MasterGuard
        );
    })
    .await;
}

#[tokio::test]
async fn carried_pins_route_to_master_but_are_not_newly_pinned() {
    let r = router(RouterMode::Strict);
    let ctx = Context::new();
    ctx.carry_pin("default");
    ctx.scope(async {
        assert_eq!(r.db_for_read(&any()).unwrap().reason, Reason::Pinned);
        assert_eq!(get_pinned(), ["default"]);
        assert!(get_newly_pinned().is_empty());
        r.pin("analytics").unwrap();
        assert_eq!(get_newly_pinned(), ["analytics"]);
        let mut all = get_pinned();
        all.sort();
        assert_eq!(all, ["analytics", "default"]);
        // A write to the carried set pins it anew (its cookie expiry must restart).
        assert_eq!(r.db_for_write(&any()).unwrap().reason, Reason::Pinned);
        let mut newly = get_newly_pinned();
        newly.sort();
        assert_eq!(newly, ["analytics", "default"]);
    })
    .await;
}

#[tokio::test]
async fn two_routers_in_one_context_keep_their_own_replica_choice() {
    let a = router(RouterMode::Greedy);
    let one_replica =
        Router::new(Config::single_set("postgres://m/x", ["postgres://r/x"])).unwrap();
    scope(async {
        for _ in 0..3 {
            assert!(a.db_for_read(&any()).unwrap().alias.starts_with("default-"));
            assert_eq!(one_replica.db_for_read(&any()).unwrap().alias, "default-1");
        }
    })
    .await;
}

/// A write whose checkout failed gives its pin back (`Router::write_not_sent`): what the
/// context had before comes back (nothing, or a carried pin), and nothing is given back once
/// a pin of the context changed since (a later write may have been sent).
#[tokio::test]
async fn a_write_that_was_not_sent_gives_its_pin_back_and_only_its_own() {
    let r = router(RouterMode::Greedy);
    scope(async {
        let write = r.db_for_write(&any()).unwrap();
        assert!(is_pinned("default"));
        r.write_not_sent(write.index, write.pin.unwrap());
        assert!(!is_pinned("default"), "nothing was pinned before");
        assert_eq!(r.db_for_read(&any()).unwrap().role, Role::Replica);
    })
    .await;
    scope(async {
        Context::current().unwrap().carry_pin("default");
        let write = r.db_for_write(&any()).unwrap();
        assert_eq!(get_newly_pinned(), ["default"]);
        r.write_not_sent(write.index, write.pin.unwrap());
        assert!(is_pinned("default"), "the carried pin stays");
        assert!(get_newly_pinned().is_empty(), "as carried, not new");
    })
    .await;
    scope(async {
        let first = r.db_for_write(&any()).unwrap();
        unpin_all();
        let second = r.db_for_write(&any()).unwrap();
        r.write_not_sent(first.index, first.pin.unwrap());
        assert!(
            is_pinned("default"),
            "the second write's pin is not the first's to take"
        );
        r.write_not_sent(second.index, second.pin.unwrap());
        assert!(!is_pinned("default"));
    })
    .await;
    // Strict mode and reads carry no pin.
    let strict = router(RouterMode::Strict);
    scope(async {
        assert_eq!(strict.db_for_read(&any()).unwrap().pin, None);
        let _guard = strict.master("default").unwrap();
        assert_eq!(strict.db_for_write(&any()).unwrap().pin, None);
    })
    .await;
}
