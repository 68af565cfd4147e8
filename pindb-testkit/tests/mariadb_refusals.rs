#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
//! pindb's MariaDB dialect measured against MariaDB itself: every built-in function the server
//! lists is called, with a few argument shapes, on a `read_only` replica of the dev cluster
//! (`scripts/cluster up`) as the application user (no `READ ONLY ADMIN`), and each call the
//! replica refuses must be a write for `Dialect::MariaDb`. This is how the dialect's table of
//! replica refusals (`REPLICA_REFUSES` in pindb-core's `classify/mariadb.rs`) is kept
//! complete on the server version the tests run against.

use std::io::Write;
use std::process::{Command, Stdio};

use pindb_core::adapter::{Dialect, StatementKind};
use pindb_testkit::MariaDbCluster;

/// Never called: they wait (a lock, a position, a timer) or burn CPU.
const NEVER_CALLED: &[&str] = &[
    "SLEEP",
    "BENCHMARK",
    "MASTER_GTID_WAIT",
    "MASTER_POS_WAIT",
    "WSREP_SYNC_WAIT_UPTO_GTID",
];

/// Built-ins the server lists nowhere (`SQL_FUNCTIONS` leaves out the sequence functions).
const UNLISTED: &[&str] = &["NEXTVAL", "SETVAL", "LASTVAL"];

/// A sequence on the master, replicated: what the sequence functions take.
const SEQUENCE: &str = "pindb_refusals_seq";

/// Every call of `name` with 0 to 3 arguments drawn from a sequence name, a number, a string.
fn calls(name: &str) -> Vec<String> {
    let values = [SEQUENCE, "1", "'a'"];
    let mut lists = vec![Vec::<&str>::new()];
    let mut out = vec![format!("SELECT {name}()")];
    for _ in 0..3 {
        lists = lists
            .iter()
            .flat_map(|list| {
                values.iter().map(move |v| {
                    let mut next = list.clone();
                    next.push(v);
                    next
                })
            })
            .collect();
        out.extend(
            lists
                .iter()
                .map(|l| format!("SELECT {name}({})", l.join(", "))),
        );
    }
    out
}

#[test]
fn every_builtin_a_replica_refuses_is_a_write() {
    let cluster = MariaDbCluster::from_env();
    let _apply = cluster.shared();
    cluster
        .query_as_app(0, &format!("CREATE SEQUENCE IF NOT EXISTS {SEQUENCE}"))
        .expect("create the sequence on the master");
    cluster.sync_replicas();
    // Names from the server: its function list, and its help's function topics.
    let listed = cluster
        .query(1, "SELECT FUNCTION FROM information_schema.SQL_FUNCTIONS")
        .expect("the function list");
    let help = cluster
        .query(
            1,
            "SELECT replace(t.name, '\\\\_', '_') FROM mysql.help_topic t \
             JOIN mysql.help_category c USING (help_category_id) WHERE c.name LIKE '%unction%'",
        )
        .expect("the help topics");
    let mut names: Vec<String> = listed
        .lines()
        .chain(help.lines())
        .map(|n| n.trim().trim_end_matches(" Function").to_owned())
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .chain(UNLISTED.iter().map(|n| (*n).to_owned()))
        .filter(|n| !NEVER_CALLED.contains(&n.as_str()))
        .collect();
    names.sort();
    names.dedup();
    let statements: Vec<String> = names.iter().flat_map(|n| calls(n)).collect();
    // One client, one statement per line, `--force` past errors: each refusal names its line.
    let url = cluster.replica_url(1);
    let rest = url.trim_start_matches("mysql://");
    let (auth, at) = rest.split_once('@').expect("user@host");
    let (user, password) = auth.split_once(':').expect("user:password");
    let (host_port, db) = at.split_once('/').expect("host:port/db");
    let (host, port) = host_port.split_once(':').expect("host:port");
    let mut client = Command::new("mariadb")
        .args([
            "--no-defaults",
            "--batch",
            "--force",
            "--skip-column-names",
            "--protocol=TCP",
            "--connect-timeout=5",
            &format!("--host={host}"),
            &format!("--port={port}"),
            &format!("--user={user}"),
            &format!("--password={password}"),
            db,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the mariadb client");
    // Bounded: nothing here may wait for long.
    let mut script = String::from("SET SESSION max_statement_time = 1;\n");
    for sql in &statements {
        script.push_str(sql);
        script.push_str(";\n");
    }
    // Written from a thread of its own: the client's errors fill its stderr meanwhile.
    let mut stdin = client.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || stdin.write_all(script.as_bytes()));
    let output = client.wait_with_output().expect("the client ran");
    writer
        .join()
        .expect("the writer")
        .expect("the script was written");
    let errors = String::from_utf8_lossy(&output.stderr);
    let (mut refused, mut missed, mut failed) = (Vec::new(), Vec::new(), 0usize);
    for line in errors.lines().filter(|l| l.starts_with("ERROR ")) {
        failed += 1;
        // `ERROR 1290 (HY000) at line 42: The MariaDB server is running with the --read-only ...`
        let read_only = line.starts_with("ERROR 1290 ") || line.starts_with("ERROR 1792 ");
        if !read_only {
            continue;
        }
        let number: usize = line
            .split(" at line ")
            .nth(1)
            .and_then(|rest| rest.split(':').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no line number in `{line}`"));
        // Line 1 is the `SET`.
        let sql = &statements[number - 2];
        refused.push(sql.clone());
        if Dialect::MariaDb.classify(sql) != StatementKind::Write {
            missed.push(format!("{sql}: {line}"));
        }
    }
    eprintln!(
        "{} built-ins, {} calls on the read_only replica, {failed} failed, {} refused as \
         read-only: {}",
        names.len(),
        statements.len(),
        refused.len(),
        refused.join(", ")
    );
    assert!(
        names.len() > 200 && failed < statements.len(),
        "the probe is broken: {} names, {failed} of {} calls failed",
        names.len(),
        statements.len()
    );
    assert!(
        refused.iter().any(|sql| sql.starts_with("SELECT NEXTVAL(")),
        "the replica did not refuse NEXTVAL: is it read_only, and the user without READ ONLY \
         ADMIN? (the probe would find nothing)"
    );
    assert!(
        missed.is_empty(),
        "a read_only replica refuses these, and Dialect::MariaDb calls them reads: add them to \
         REPLICA_REFUSES in pindb-core/src/classify/mariadb.rs\n{}",
        missed.join("\n")
    );
}
