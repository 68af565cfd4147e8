//! The pindb demo: routing decisions against the real dev cluster (a primary and two streaming
//! replicas), statement by statement, with the reason for each.
//!
//! Run with `scripts/demo` (it starts the cluster). The scenario checks its own expectations
//! and exits non-zero if any fails.
//!
//! Statements run through `tokio-postgres` here: the ORM adapters (diesel, SeaORM) make the
//! same decisions inside the ORM's connection traits.

use std::collections::HashMap;
use std::process::ExitCode;

use pindb_core::{classify, Config, Hint, Router, RouterMode, StatementKind};
use pindb_testkit::Cluster;
use tokio_postgres::Client;

/// One pool-less "database handle": a client per alias, and the router.
struct Db {
    router: Router,
    clients: HashMap<String, Client>,
    log: Vec<Line>,
}

struct Line {
    step: &'static str,
    served_by: String,
    why: String,
    outcome: String,
    ok: bool,
}

impl Db {
    async fn connect(router: Router) -> Db {
        let mut clients = HashMap::new();
        for db in router.databases() {
            clients.insert(db.alias.clone(), pindb_testkit::connect(&db.url()).await);
        }
        Db {
            router,
            clients,
            log: Vec::new(),
        }
    }

    /// Routes one statement as an adapter would: classify, ask the router, run it there.
    async fn run(&mut self, step: &'static str, sql: &str) -> Result<Vec<String>, String> {
        let decision = match classify(sql) {
            StatementKind::Read => self.router.db_for_read(&Hint::default()),
            StatementKind::Write => self.router.db_for_write(&Hint::default()),
        };
        let route = match decision {
            Ok(route) => route,
            Err(e) => {
                self.record(step, sql, "-", "refused before any I/O", &e.to_string());
                return Err(e.to_string());
            }
        };
        let client = &self.clients[route.alias];
        let served_by: String = client
            .query_one(
                "SELECT inet_server_port()::text || CASE WHEN pg_is_in_recovery() THEN ' replica' ELSE ' primary' END",
                &[],
            )
            .await
            .map(|r| r.get(0))
            .unwrap_or_else(|e| format!("? ({e})"));
        let rows = client
            .simple_query(sql)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let values: Vec<String> = rows
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
            .collect();
        let (alias, reason) = (route.alias.to_owned(), route.reason.as_str());
        self.record(
            step,
            sql,
            &format!("{alias} (:{served_by})"),
            reason,
            &format!("{values:?}"),
        );
        Ok(values)
    }

    fn record(&mut self, step: &'static str, sql: &str, served_by: &str, why: &str, outcome: &str) {
        println!("  {step:<28} {sql}\n      -> {served_by}  [{why}]  {outcome}");
        self.log.push(Line {
            step,
            served_by: served_by.to_owned(),
            why: why.to_owned(),
            outcome: outcome.to_owned(),
            ok: true,
        });
    }

    fn expect(&mut self, ok: bool, what: &str) {
        println!("      {} {what}", if ok { "ok:" } else { "FAILED:" });
        if let Some(last) = self.log.last_mut() {
            last.ok &= ok;
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cluster = Cluster::from_env();
    let mut config = Config::single_set(
        cluster.primary_url.clone(),
        cluster.replica_urls.iter().cloned(),
    );
    config.router = RouterMode::Greedy;
    let greedy = Router::new(config.clone()).expect("the demo config is valid");
    config.router = RouterMode::Strict;
    let strict = Router::new(config).expect("the demo config is valid");

    let mut control = cluster.exclusive().await;
    let schema = cluster.fresh_schema().await;
    let table = format!("{}.notes", schema.name);
    cluster
        .primary()
        .await
        .batch_execute(&format!(
            "CREATE TABLE {table} (id serial PRIMARY KEY, author text NOT NULL, body text NOT NULL)"
        ))
        .await
        .expect("create the demo table");
    cluster.sync_replicas().await;

    let mut db = Db::connect(greedy).await;
    let list = format!("SELECT body FROM {table} WHERE author = 'alice' ORDER BY id");
    let insert =
        format!("INSERT INTO {table} (author, body) VALUES ('alice', 'hello') RETURNING id");

    println!("\n== request 1 (greedy router): alice lists her notes");
    pindb_core::scope(async {
        let rows = db.run("read, nothing pinned", &list).await;
        let on_replica = db
            .log
            .last()
            .is_some_and(|l| l.served_by.contains("replica"));
        db.expect(
            on_replica && rows == Ok(vec![]),
            "served by a replica, empty",
        );
    })
    .await;

    println!("\n== replay paused on both replicas: they are now provably behind");
    control.pause(1).await;
    control.pause(2).await;

    println!("\n== request 2: alice writes a note, then lists");
    pindb_core::scope(async {
        db.run("write (greedy pins)", &insert).await.ok();
        let pinned = db.log.last().is_some_and(|l| l.why == "greedy-pin");
        db.expect(pinned, "the write went to the primary and pinned the set");
        let rows = db.run("read after write", &list).await;
        db.expect(
            rows == Ok(vec!["hello".into()]),
            "alice reads her own write (primary)",
        );
    })
    .await;

    println!("\n== request 3: a new request with no carried pin reads a lagging replica");
    pindb_core::scope(async {
        let rows = db.run("read, nothing pinned", &list).await;
        db.expect(
            rows == Ok(vec![]),
            "stale: the replica has not replayed the note",
        );
    })
    .await;

    println!(
        "\n== request 4: the pin carried in (what the cookie/LSN layer does) keeps alice safe"
    );
    let ctx = pindb_core::Context::new();
    ctx.carry_pin("default");
    ctx.scope(async {
        let rows = db.run("read, pin carried in", &list).await;
        db.expect(
            rows == Ok(vec!["hello".into()]),
            "alice still sees her note",
        );
    })
    .await;

    control.resume(1).await;
    control.resume(2).await;
    cluster.sync_replicas().await;
    println!("\n== request 5: replicas caught up; an unpinned read sees the note on a replica");
    pindb_core::scope(async {
        let rows = db.run("read, nothing pinned", &list).await;
        db.expect(rows == Ok(vec!["hello".into()]), "replica caught up");
    })
    .await;

    println!("\n== request 6 (strict router): a write without pin() is refused before any I/O");
    db.router = strict.clone();
    pindb_core::scope(async {
        let refused = db.run("unpinned write", &insert).await;
        db.expect(
            refused.as_ref().is_err_and(|e| e.contains("not pinned")),
            "UnpinnedWrite error",
        );
        strict.pin("default").expect("inside a context");
        let ok = db.run("write after pin(\"default\")", &insert).await;
        db.expect(ok.is_ok(), "pinned write runs on the primary");
    })
    .await;

    drop(control);
    schema.drop().await;

    println!("\n== summary");
    println!(
        "{:<3} {:<28} {:<27} {:<16} result",
        "ok", "step", "served by", "reason"
    );
    for l in &db.log {
        println!(
            "{:<3} {:<28} {:<27} {:<16} {}",
            if l.ok { "✓" } else { "✗" },
            l.step,
            l.served_by,
            l.why,
            l.outcome.chars().take(60).collect::<String>(),
        );
    }
    let failed = db.log.iter().filter(|l| !l.ok).count();
    if failed == 0 {
        println!("\nall expectations met");
        ExitCode::SUCCESS
    } else {
        println!("\n{failed} expectation(s) failed");
        ExitCode::FAILURE
    }
}
