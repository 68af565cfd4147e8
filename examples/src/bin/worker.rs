#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
//! Background jobs with pindb: a request writes and enqueues a job carrying its consistency
//! token; a worker loop over a tokio channel runs each job in a fresh context that imports the
//! token, so the job reads the request's write even while the replica lags, and nothing one
//! job pinned reaches the next. Run with `scripts/cluster up && cargo run -p pindb-examples --bin worker`.

use std::process::ExitCode;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use pindb_core::{import_token, run_worker};
use pindb_core::{ConsistencyToken, RouterMode};
use pindb_diesel::bb8::PinDb;
use pindb_examples::SCHEMA_SQL;
use pindb_testkit::Fixture;

diesel::table! {
    notes (id) {
        id -> Integer,
        author -> Text,
        body -> Text,
    }
}

/// What the queue carries.
struct Job {
    note: String,
    /// `ConsistencyToken` text: the request's write positions.
    token: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut fixture = Fixture::new(SCHEMA_SQL).await;
    let db = PinDb::new(fixture.config(RouterMode::Greedy, &[1])).expect("valid config");
    db.router()
        .start_monitor()
        .await
        .expect("the dev cluster's topology is right");
    fixture.control.pause(1).await; // the replica lags from now on

    let (queue, jobs) = tokio::sync::mpsc::channel::<Job>(16);
    // The "web request": writes, then enqueues a job with its token.
    for note in ["welcome email for alice", "welcome email for bob"] {
        let token = pindb_core::scope(async {
            diesel::insert_into(notes::table)
                .values((notes::author.eq("web"), notes::body.eq(note)))
                .execute(&mut db.get())
                .await
                .expect("the insert runs on the master");
            db.router().consistency().token().await
        })
        .await;
        let job = Job {
            note: note.to_owned(),
            token: token.to_string(),
        };
        queue.send(job).await.expect("the worker is listening");
    }
    drop(queue);

    let worker_db = db.clone();
    let report = run_worker(jobs, move |job: Job| {
        let db = worker_db.clone();
        async move {
            let token: ConsistencyToken = job.token.parse().map_err(|e| format!("{e}"))?;
            import_token(&token);
            let seen: Vec<String> = notes::table
                .select(notes::body)
                .load(&mut db.get())
                .await
                .map_err(|e| e.to_string())?;
            println!(
                "job `{}` sees {} note(s), its own included: {}",
                job.note,
                seen.len(),
                seen.contains(&job.note)
            );
            if seen.contains(&job.note) {
                Ok(())
            } else {
                Err(format!("job `{}` read stale data", job.note))
            }
        }
    })
    .await;
    println!("worker: {report:?}");
    fixture.finish().await;
    if report.succeeded == 2 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
