#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
#![allow(unsafe_code)] // a counting global allocator is unsafe by nature
//! A routing decision does not allocate (after the first decision for a set in a context).
//! Counted with a global allocator that counts per thread, so other tests cannot interfere.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use pindb_core::adapter::classify;
use pindb_core::{scope, Config, Context, Hint, Lsn, Router, RouterMode};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
    /// Bytes allocated minus bytes freed on this thread.
    static LIVE_BYTES: Cell<isize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        LIVE_BYTES.with(|n| n.set(n.get() + layout.size() as isize));
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.with(|n| n.set(n.get() - layout.size() as isize));
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn allocations_during(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

#[test]
fn decisions_and_classification_do_not_allocate() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for mode in [RouterMode::Strict, RouterMode::Greedy] {
        let mut config =
            Config::single_set("postgres://m/a", ["postgres://r1/a", "postgres://r2/a"]);
        config.router = mode;
        let router = Router::new(config).unwrap();
        rt.block_on(scope(async {
            let hint = Hint::default();
            router.db_for_read(&hint).unwrap(); // first use of the set in this context
            let n = allocations_during(|| {
                for _ in 0..100 {
                    router.db_for_read(&hint).unwrap();
                }
            });
            assert_eq!(n, 0, "{mode:?}: unpinned reads allocated {n} times");
            router.pin("default").unwrap();
            let n = allocations_during(|| {
                for _ in 0..100 {
                    router.db_for_read(&hint).unwrap();
                    router.db_for_write(&hint).unwrap();
                }
            });
            assert_eq!(n, 0, "{mode:?}: pinned decisions allocated {n} times");
        }));
    }
    let sql =
        r#"SELECT "users"."id", "users"."name" FROM "users" WHERE "users"."id" = $1 LIMIT $2"#;
    assert_eq!(
        allocations_during(|| {
            classify(sql);
        }),
        0
    );
}

/// The memory a live request context holds with one set used (a read decision, a pin and a
/// required position), measured over 10,000 contexts: what concurrent requests cost. Printed
/// for the README; bounded so a regression shows.
#[test]
fn a_live_context_holds_a_few_hundred_bytes() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let router = Router::new(Config::single_set(
        "postgres://m/a",
        ["postgres://r1/a", "postgres://r2/a"],
    ))
    .unwrap();
    const N: usize = 10_000;
    let mut contexts = Vec::with_capacity(N);
    let before = LIVE_BYTES.with(Cell::get);
    for _ in 0..N {
        let ctx = Context::new();
        ctx.require("default", Lsn(42));
        rt.block_on(ctx.clone().scope(async {
            router.db_for_read(&Hint::default()).unwrap();
            router.pin("default").unwrap();
        }));
        contexts.push(ctx);
    }
    let per_context = (LIVE_BYTES.with(Cell::get) - before) as usize / N;
    eprintln!("a live context with one set used holds {per_context} bytes");
    assert!(per_context < 1024, "{per_context} bytes per context");
    drop(contexts);
}
