//! Background jobs: each job in a pinning context of its own, so nothing one job pinned or
//! wrote leaks into the next (Laravel's sticky connections leaked across queue jobs).
//!
//! This module owns the job-side helpers only: [`run_job`] for one job, [`run_worker`] for a
//! loop over a channel, [`import_token`] for the positions a web request put in the payload,
//! and [`UnpinOnDrop`] for workers that keep one long-lived context.

use std::fmt::Display;
use std::future::Future;

use crate::consistency::ConsistencyToken;
use crate::context::{unpin_all, Context};

/// Runs one job in a fresh context, requiring the positions of `token` (from the payload).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let token: pindb_core::ConsistencyToken = "default@0/16B3748".parse().unwrap();
/// let required = pindb_core::run_job(Some(&token), async {
///     pindb_core::Context::current().unwrap().required()
/// }).await;
/// assert_eq!(required[0].0, "default");
/// # }
/// ```
pub async fn run_job<F: Future>(token: Option<&ConsistencyToken>, job: F) -> F::Output {
    let ctx = Context::new();
    if let Some(token) = token {
        token.apply_to(&ctx);
    }
    ctx.scope(job).await
}

/// Applies `token` to the current context (inside a job run by [`run_worker`]). Returns
/// whether there was a context.
pub fn import_token(token: &ConsistencyToken) -> bool {
    Context::current().map(|ctx| token.apply_to(&ctx)).is_some()
}

/// What a worker run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerReport {
    /// Jobs that returned `Ok`.
    pub succeeded: usize,
    /// Jobs that returned `Err` (logged).
    pub failed: usize,
    /// Jobs that panicked (contained, logged).
    pub panicked: usize,
}

/// Runs the jobs received on `rx` one after another until the channel closes, each on a task
/// of its own in a fresh context: a job's pins, guards and positions never reach the next
/// one, and a panic is contained and counted.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let (tx, rx) = tokio::sync::mpsc::channel(8);
/// tx.send(1).await.unwrap();
/// drop(tx);
/// let report = pindb_core::run_worker(rx, |n: i32| async move {
///     if n > 0 { Ok(()) } else { Err("negative") }
/// }).await;
/// assert_eq!(report.succeeded, 1);
/// # }
/// ```
pub async fn run_worker<J, F, Fut, E>(
    mut rx: tokio::sync::mpsc::Receiver<J>,
    mut handle: F,
) -> WorkerReport
where
    F: FnMut(J) -> Fut,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Display + Send + 'static,
{
    let mut report = WorkerReport::default();
    while let Some(job) = rx.recv().await {
        match tokio::spawn(Context::new().scope(handle(job))).await {
            Ok(Ok(())) => report.succeeded += 1,
            Ok(Err(e)) => {
                report.failed += 1;
                tracing::warn!(target: "pindb", error = %e, "pindb worker: job failed");
            }
            Err(e) => {
                report.panicked += 1;
                tracing::error!(target: "pindb", error = %e, "pindb worker: job panicked");
            }
        }
    }
    report
}

/// Calls [`unpin_all`] when dropped, including while unwinding from a panic: for workers that
/// run every job in one long-lived context (django-pindb's style).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// pindb_core::scope(async {
///     let ctx = pindb_core::Context::current().unwrap();
///     {
///         let _clean = pindb_core::UnpinOnDrop;
///         ctx.carry_pin("default");
///     }
///     assert!(!pindb_core::is_pinned("default"));
/// }).await;
/// # }
/// ```
#[derive(Debug)]
pub struct UnpinOnDrop;

impl Drop for UnpinOnDrop {
    fn drop(&mut self) {
        unpin_all();
    }
}
