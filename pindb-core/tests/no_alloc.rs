#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
#![allow(unsafe_code)] // a counting global allocator is unsafe by nature
//! A routing decision does not allocate (after the first decision for a set in a context).
//! Counted with a global allocator that counts per thread, so other tests cannot interfere.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use pindb_core::adapter::classify;
use pindb_core::{scope, Config, Hint, Router, RouterMode};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
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
