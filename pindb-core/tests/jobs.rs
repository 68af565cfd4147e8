#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
//! Job helpers: nothing one job pinned reaches the next, even after a panic.

use std::panic::{catch_unwind, AssertUnwindSafe};

use pindb_core::{is_pinned, Config, Context, Router};
use pindb_core::{run_worker, UnpinOnDrop, WorkerReport};
use tokio::sync::mpsc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_jobs_never_see_a_previous_jobs_pins_even_after_a_panic() {
    let router = Router::new(Config::single_set("postgres://m/a", ["postgres://r/a"])).unwrap();
    let (tx, rx) = mpsc::channel(16);
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    for job in [
        "pin-and-panic",
        "check",
        "pin-and-fail",
        "check",
        "pin-ok",
        "check",
    ] {
        tx.send(job).await.unwrap();
    }
    drop(tx);
    let report = run_worker(rx, move |job: &'static str| {
        let router = router.clone();
        let seen = seen_tx.clone();
        async move {
            seen.send(is_pinned("default")).unwrap();
            match job {
                "pin-and-panic" => {
                    router.pin("default").unwrap();
                    panic!("job failed hard");
                }
                "pin-and-fail" => {
                    router.pin("default").unwrap();
                    Err("job failed")
                }
                "pin-ok" => {
                    router.pin("default").unwrap();
                    Ok(())
                }
                _ => Ok(()),
            }
        }
    })
    .await;
    assert_eq!(
        report,
        WorkerReport {
            succeeded: 4,
            failed: 1,
            panicked: 1
        }
    );
    let mut seen = Vec::new();
    while let Ok(pinned) = seen_rx.try_recv() {
        seen.push(pinned);
    }
    assert_eq!(seen, [false; 6], "every job starts unpinned");
}

#[test]
fn unpin_on_drop_clears_a_long_lived_context_when_a_job_panics() {
    let ctx = Context::new();
    ctx.clone().enter(|| {
        let result = catch_unwind(AssertUnwindSafe(|| {
            let _clean = UnpinOnDrop;
            Context::current().unwrap().carry_pin("default");
            assert!(is_pinned("default"));
            panic!("the job blew up");
        }));
        assert!(result.is_err());
        assert!(
            !is_pinned("default"),
            "the panic did not leak the pin into the next job"
        );
    });
}
