//! The scripted scenario: real HTTP against a running service, replicas paused and resumed
//! for real, every expectation checked, a one-screen summary.

use std::future::Future;
use std::time::Duration;

use pindb_testkit::{Cluster, ReplayControl};

use crate::capture::RouteLine;
use crate::service::{NewNote, Reply};

/// A browser (keeps cookies) or an API client (no cookies), as a given user.
#[derive(Debug)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    user: String,
    label: &'static str,
}

impl Client {
    /// A client of `base` acting as `user`.
    pub fn new(base: &str, user: &str, cookies: bool, label: &'static str) -> Client {
        Client {
            http: reqwest::Client::builder()
                .cookie_store(cookies)
                .build()
                .expect("a plain HTTP client builds"),
            base: base.to_owned(),
            user: user.to_owned(),
            label,
        }
    }

    async fn list(&self, whose: &str) -> (u16, Reply) {
        let r = self
            .http
            .get(format!("{}/notes", self.base))
            .query(&[("user", whose)])
            .header("x-user", &self.user)
            .send()
            .await
            .expect("the demo service answers");
        (r.status().as_u16(), r.json().await.unwrap_or_default())
    }

    async fn add(&self, body: &str) -> (u16, Reply) {
        let r = self
            .http
            .post(format!("{}/notes", self.base))
            .header("x-user", &self.user)
            .json(&NewNote {
                user: self.user.clone(),
                body: body.to_owned(),
            })
            .send()
            .await
            .expect("the demo service answers");
        (r.status().as_u16(), r.json().await.unwrap_or_default())
    }
}

#[derive(Debug)]
struct Row {
    step: String,
    served: String,
    ok: bool,
    expectation: &'static str,
}

/// The scenario's record.
#[derive(Debug, Default)]
pub struct Report {
    rows: Vec<Row>,
}

impl Report {
    fn check(
        &mut self,
        step: String,
        status: u16,
        reply: &Reply,
        ok: bool,
        expectation: &'static str,
    ) {
        let served = reply
            .routes
            .iter()
            .map(|r| {
                format!(
                    "{} {} ({})",
                    r.op,
                    if r.alias.is_empty() { "-" } else { &r.alias },
                    r.reason
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        println!(
            "{} {step}\n    HTTP {status}, routes: {served}",
            if ok { "✓" } else { "✗" }
        );
        if !reply.notes.is_empty() {
            println!("    notes: {:?}", reply.notes);
        }
        if let Some(e) = &reply.error {
            println!("    error body: {e}");
        }
        println!("    expected: {expectation}");
        self.rows.push(Row {
            step,
            served,
            ok,
            expectation,
        });
    }

    /// Prints the summary table; true when every expectation held.
    pub fn summary(&self) -> bool {
        println!(
            "\n{:<2} {:<44} {:<36} expectation",
            "", "request", "served by (reason)"
        );
        for r in &self.rows {
            let served: String = r.served.chars().take(36).collect();
            println!(
                "{:<2} {:<44} {:<36} {}",
                if r.ok { "✓" } else { "✗" },
                r.step,
                served,
                r.expectation
            );
        }
        let failed = self.rows.iter().filter(|r| !r.ok).count();
        println!(
            "\n{} of {} expectations met",
            self.rows.len() - failed,
            self.rows.len()
        );
        failed == 0
    }
}

fn first(reply: &Reply, op: &str) -> Option<RouteLine> {
    reply.routes.iter().find(|r| r.op == op).cloned()
}

fn on_replica(reply: &Reply) -> bool {
    first(reply, "read").is_some_and(|r| r.role == "replica")
}

fn on_master(reply: &Reply) -> bool {
    first(reply, "read").is_some_and(|r| r.role == "master")
}

/// Drives the service at `greedy` (greedy router) and `strict` (strict router), pausing
/// replay on both replicas through `control`. `caught_up` waits until the service's
/// monitor has seen the replicas replay the primary's current position.
pub async fn run<W, WF>(
    greedy: &str,
    strict: &str,
    cluster: &Cluster,
    control: &mut ReplayControl,
    caught_up: W,
) -> Report
where
    W: Fn(pindb_core::Lsn) -> WF,
    WF: Future<Output = ()>,
{
    let mut report = Report::default();
    let alice = Client::new(greedy, "alice", true, "alice's browser");
    let alice_phone = Client::new(greedy, "alice", false, "alice's phone (no cookie)");
    let bob = Client::new(greedy, "bob", true, "bob's browser");

    println!("== 1. reads go to a replica");
    let (s, r) = alice.list("alice").await;
    report.check(
        format!("GET  {} lists", alice.label),
        s,
        &r,
        s == 200 && on_replica(&r),
        "a replica serves the read",
    );

    println!("\n== 2. replay paused on both replicas: they are provably behind from now on");
    control.pause(1).await;
    control.pause(2).await;

    println!("\n== 3. a write pins the master");
    let (s, r) = alice.add("hello from alice").await;
    let pinned = first(&r, "write").is_some_and(|w| w.role == "master" && w.reason == "greedy-pin");
    report.check(
        format!("POST {} writes", alice.label),
        s,
        &r,
        s == 200 && pinned,
        "the master, and the set is pinned",
    );

    println!("\n== 4. the next request carries the pin cookie (15 s): the master again");
    let (s, r) = alice.list("alice").await;
    let ok = on_master(&r) && r.notes.contains(&"hello from alice".to_string());
    report.check(
        format!("GET  {} lists", alice.label),
        s,
        &r,
        s == 200 && ok,
        "the master (pinned by cookie), sees her note",
    );

    println!("\n== 5. another user is still served by the (stale) replica");
    let (s, r) = bob.list("alice").await;
    let ok = on_replica(&r) && r.notes.is_empty();
    report.check(
        format!("GET  {} lists alice's", bob.label),
        s,
        &r,
        s == 200 && ok,
        "a replica (stale for alice's note: fine for bob)",
    );

    println!("\n== 6. alice on a device without the cookie: her LSN keeps her off stale replicas");
    let (s, r) = alice_phone.list("alice").await;
    let ok = first(&r, "read").is_some_and(|x| x.role == "master" && x.reason == "not-caught-up")
        && r.notes.contains(&"hello from alice".to_string());
    report.check(
        format!("GET  {} lists", alice_phone.label),
        s,
        &r,
        s == 200 && ok,
        "the master (not-caught-up), sees her note",
    );

    println!("\n== 7. replay resumed; once a replica caught up it serves alice again");
    control.resume(1).await;
    control.resume(2).await;
    caught_up(cluster.primary_lsn().await).await;
    let (s, r) = alice_phone.list("alice").await;
    let ok = on_replica(&r) && r.notes.contains(&"hello from alice".to_string());
    report.check(
        format!("GET  {} lists", alice_phone.label),
        s,
        &r,
        s == 200 && ok,
        "a caught-up replica, sees her note",
    );

    println!("\n== 8. strict mode: an unpinned write is refused before any I/O");
    let strict_client = Client::new(strict, "carol", true, "carol on the strict service");
    let (s, r) = strict_client.add("should not be written").await;
    let ok = s == 500 && r.error.as_deref().is_some_and(|e| e.contains("not pinned"));
    report.check(
        format!("POST {}", strict_client.label),
        s,
        &r,
        ok,
        "HTTP 500 from the app's error handler, nothing written",
    );
    report
}

/// Waits `up_to` for `cond`.
pub async fn eventually(up_to: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + up_to;
    while !cond() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
