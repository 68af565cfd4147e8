#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
//! The pinning context: isolation between concurrent contexts and explicit propagation into
//! spawned tasks, `spawn_blocking` closures and plain threads.

use std::collections::BTreeSet;

use pindb_core::{get_pinned, scope, Config, Context, InContext, Router};
use proptest::prelude::*;

fn router() -> Router {
    let toml: String = (0..8)
        .map(|i| format!("[masters.s{i}]\nurl = 'postgres://m{i}/d'\n"))
        .chain(["[masters.default]\nurl = 'postgres://m/d'\n[sets]\ndefault = []\n".into()])
        .chain((0..8).map(|i| format!("s{i} = [{{ host = 'r{i}' }}]\n")))
        .collect();
    Router::new(Config::from_toml_str(&toml).unwrap()).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// Thousands of contexts on a multi-threaded runtime, each pinning its own sets across
    /// awaits (so tasks migrate between worker threads), never see each other's pins.
    #[test]
    fn concurrent_contexts_never_see_each_others_pins(
        plans in proptest::collection::vec(proptest::collection::btree_set(0usize..8, 0..4), 2000)
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).build().unwrap();
        let router = router();
        let failures = rt.block_on(async {
            let mut tasks = Vec::new();
            for plan in plans {
                let router = router.clone();
                tasks.push(tokio::spawn(scope(async move {
                    let want: BTreeSet<String> = plan.iter().map(|i| format!("s{i}")).collect();
                    for set in &want {
                        router.pin(set).unwrap();
                        tokio::task::yield_now().await;
                    }
                    tokio::task::yield_now().await;
                    let got: BTreeSet<String> = get_pinned().into_iter().collect();
                    let reads_ok = (0..8).all(|i| {
                        let set = format!("s{i}");
                        let master = router.db_for_read(&pindb_core::Hint::alias(&set)).unwrap().alias == set;
                        master == want.contains(&set)
                    });
                    (got == want && reads_ok).then_some(()).ok_or((want, got))
                })));
            }
            let mut failures = Vec::new();
            for t in tasks {
                if let Err(diff) = t.await.unwrap() {
                    failures.push(diff);
                }
            }
            failures
        });
        prop_assert!(failures.is_empty(), "{} contexts saw foreign pins, e.g. {:?}", failures.len(), failures.first());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pin_in_a_propagated_child_task_is_seen_by_the_parent() {
    let r = router();
    scope(async {
        let child_router = r.clone();
        tokio::spawn(async move { child_router.pin("s1").unwrap() }.in_current_scope())
            .await
            .unwrap();
        let child_router = r.clone();
        pindb_core::spawn(async move { child_router.pin("s2").unwrap() })
            .await
            .unwrap();
        let mut pinned = get_pinned();
        pinned.sort();
        assert_eq!(pinned, ["s1", "s2"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_tokio_spawn_is_outside_the_context() {
    let r = router();
    scope(async {
        let child_router = r.clone();
        let result = tokio::spawn(async move { child_router.pin("s1") })
            .await
            .unwrap();
        assert!(matches!(
            result,
            Err(pindb_core::PinDbError::NoContext { .. })
        ));
        assert!(get_pinned().is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pin_in_spawn_blocking_and_in_a_plain_thread_is_seen_by_the_parent() {
    let r = router();
    scope(async {
        let child_router = r.clone();
        pindb_core::spawn_blocking(move || child_router.pin("s3").unwrap())
            .await
            .unwrap();
        // The manual capture/enter pair, for plain threads.
        let ctx = Context::current().unwrap();
        let child_router = r.clone();
        std::thread::spawn(move || ctx.enter(|| child_router.pin("s4").unwrap()))
            .join()
            .unwrap();
        let mut pinned = get_pinned();
        pinned.sort();
        assert_eq!(pinned, ["s3", "s4"]);
    })
    .await;
}

#[tokio::test]
async fn in_current_scope_outside_a_context_stays_outside() {
    let inside = async { Context::current().is_some() }
        .in_current_scope()
        .await;
    assert!(!inside);
}

#[tokio::test]
async fn nested_scope_is_a_fresh_context() {
    let r = router();
    scope(async {
        r.pin("s1").unwrap();
        scope(async { assert!(get_pinned().is_empty()) }).await;
        assert_eq!(get_pinned(), ["s1"]);
    })
    .await;
}
