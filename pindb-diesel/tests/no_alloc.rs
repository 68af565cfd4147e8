#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
#![allow(unsafe_code)] // a counting global allocator is unsafe by nature
//! What a routed read on a held connection allocates, against the same statement on a
//! plain diesel-async connection of the same pool: nothing more, on the master (a pinned
//! context) and on a replica (where it keeps a copy to run the read again elsewhere if the
//! replica fails). Counted per thread on a one-thread runtime, so the connections' own tasks
//! count the same on both sides. What a routed statement's future weighs: it is boxed
//! (moved into its box) on every statement. And the context's lock: a read on a held
//! connection that decides as the last one did takes none.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncConnectionCore, RunQueryDsl};
use pindb_core::RouterMode;
use pindb_diesel::bb8::PinDb;

mod common;

use common::{notes, World};

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

const N: usize = 200;

/// Allocations per statement of `N` runs of the primary-key read on `conn`, after a warm-up.
async fn per_statement<C>(conn: &mut C) -> f64
where
    C: AsyncConnection<Backend = diesel::pg::Pg>,
{
    let read = |id: i32| notes::table.find(id).select(notes::body);
    for _ in 0..20 {
        read(1).first::<String>(conn).await.unwrap();
    }
    let before = ALLOCATIONS.with(Cell::get);
    for _ in 0..N {
        read(1).first::<String>(conn).await.unwrap();
    }
    (ALLOCATIONS.with(Cell::get) - before) as f64 / N as f64
}

#[test]
fn a_held_read_allocates_no_more_than_plain_diesel_async() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let w = World::new().await;
        let db = PinDb::new(w.config(RouterMode::Greedy, &[1])).unwrap();
        let (plain_master, routed_master, plain_replica, routed_replica) =
            pindb_core::scope(async {
                let plain_replica = per_statement(&mut *db.read().await.unwrap()).await;
                let mut routed = db.get();
                routed.checkout_for_read().await.unwrap();
                let routed_replica = per_statement(&mut routed).await;
                assert_eq!(routed.held_aliases(), ["default-1"]);
                drop(routed);
                db.router().pin("default").unwrap();
                let plain_master = per_statement(&mut *db.write().await.unwrap()).await;
                let mut routed = db.get();
                let routed_master = per_statement(&mut routed).await;
                assert_eq!(routed.held_aliases(), ["default"]);
                (plain_master, routed_master, plain_replica, routed_replica)
            })
            .await;
        eprintln!(
            "allocations per statement: master {plain_master} plain, {routed_master} routed; \
             replica {plain_replica} plain, {routed_replica} routed"
        );
        assert!(
            routed_master <= plain_master,
            "a routed read on a held master connection allocated {routed_master} times per \
             statement, plain diesel-async {plain_master}"
        );
        // The read's copy (SQL shared per type, its binds) is what diesel-async then runs
        // instead of collecting the binds itself: no more than plain either.
        assert!(
            routed_replica <= plain_replica,
            "a routed read on a held replica connection allocated {routed_replica} times per \
             statement, plain diesel-async {plain_replica}"
        );
        w.finish().await;
    });
}

/// Locks taken on the context by `N` routed reads on a held replica connection, after the
/// two that settle the context's replica: none (the decision is remembered, see pindb-core's
/// `ReadMemo`), where each used to take the context's lock.
#[tokio::test]
async fn a_held_read_that_changes_nothing_takes_no_lock() {
    let w = World::new().await;
    let db = PinDb::new(w.config(RouterMode::Greedy, &[1])).unwrap();
    let taken = pindb_core::scope(async {
        let ctx = pindb_core::Context::current().unwrap();
        let mut routed = db.get();
        let read = |id: i32| notes::table.find(id).select(notes::body);
        for _ in 0..2 {
            read(1).first::<String>(&mut routed).await.unwrap();
        }
        let before = ctx.locks_taken();
        assert!(before > 0, "the reads were decided outside the context");
        for _ in 0..N {
            read(1).first::<String>(&mut routed).await.unwrap();
        }
        assert_eq!(routed.held_aliases(), ["default-1"]);
        ctx.locks_taken() - before
    })
    .await;
    assert_eq!(
        taken, 0,
        "{N} routed reads on a held replica connection took the context's lock {taken} times"
    );
    w.finish().await;
}

/// Bytes of the future a statement on `conn` returns (before it is polled): diesel-async
/// boxes it, for plain connections and routed ones alike. `read` or `write` (an insert).
macro_rules! future_bytes {
    (read $conn:expr) => {{
        let future = AsyncConnectionCore::load($conn, notes::table.find(1).select(notes::body));
        std::mem::size_of_val(&*future)
    }};
    (write $conn:expr) => {{
        let insert = diesel::insert_into(notes::table).values(notes::body.eq("x"));
        let future = AsyncConnectionCore::execute_returning_count($conn, insert);
        std::mem::size_of_val(&*future)
    }};
}

/// A routed statement's future holds its attempt, the replica's watch and diesel-async's own
/// future; the rare paths (a checkout, diagnosing a failed one) are boxed apart when taken.
/// Held in one future, they made a read's 11,560 bytes and a write's 5,720, copied into its
/// box on every statement: the largest part of what a routed read on a held connection cost
/// over plain.
#[tokio::test]
async fn a_routed_statement_future_stays_small() {
    let w = World::new().await;
    let db = PinDb::new(w.config(RouterMode::Greedy, &[1])).unwrap();
    let (plain, routed) = pindb_core::scope(async {
        let mut plain = db.read().await.unwrap();
        let plain = future_bytes!(read &mut *plain);
        let mut held = db.get();
        held.checkout_for_read().await.unwrap();
        let mut fresh = db.get();
        let routed = [
            ("a read, held", future_bytes!(read &mut held)),
            ("a read, checked out", future_bytes!(read &mut fresh)),
            ("a write, checked out", future_bytes!(write &mut fresh)),
        ];
        (plain, routed)
    })
    .await;
    eprintln!("statement future: plain diesel-async {plain} bytes, routed {routed:?}");
    for (what, bytes) in routed {
        assert!(
            bytes <= 1200,
            "the future of {what} is {bytes} bytes (plain diesel-async: {plain}): a rare \
             path's future is inside it, box it apart"
        );
    }
    w.finish().await;
}
