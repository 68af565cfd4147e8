//! The context-isolation check every adapter runs: no task sees another task's pins.

/// Runs `count` tasks concurrently, each in its own pinning context (`pindb_core::scope`),
/// where task `i` pins the `default` set when `i` is even and then runs `check(i, pinned)`;
/// returns how many checks failed. The isolation test every adapter runs.
pub async fn contexts_that_saw_foreign_pins<F, Fut>(
    router: &pindb_core::Router,
    count: usize,
    check: F,
) -> usize
where
    F: Fn(usize, bool) -> Fut,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        let pinned = i % 2 == 0;
        let router = router.clone();
        let checked = check(i, pinned);
        tasks.push(tokio::spawn(pindb_core::scope(async move {
            if pinned {
                router
                    .pin("default")
                    .expect("inside a scope, `default` exists");
            }
            tokio::task::yield_now().await;
            checked.await
        })));
    }
    let mut failed = 0;
    for task in tasks {
        if !task.await.expect("an isolation task panicked") {
            failed += 1;
        }
    }
    failed
}
