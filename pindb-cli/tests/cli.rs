#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
//! `pindb status` and `pindb check` against the dev cluster (`scripts/cluster up`), run as a
//! user runs them: the binary, a config file, stdout and the exit code.

use std::process::Command;

use pindb_testkit::Cluster;

fn config_file(name: &str, master: &str, replicas: &[&str]) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pindb-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let replicas: Vec<String> = replicas
        .iter()
        .map(|r| format!("{{ url = '{r}' }}"))
        .collect();
    let path = dir.join("pindb.toml");
    std::fs::write(
        &path,
        format!(
            "[masters.default]\nurl = '{master}'\n[sets]\ndefault = [{}]\n",
            replicas.join(", ")
        ),
    )
    .unwrap();
    path
}

fn pindb(args: &[&str], config: &std::path::Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pindb"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let code = out.status.code().unwrap_or(-1);
    (code, text + &String::from_utf8_lossy(&out.stderr))
}

#[test]
fn status_prints_every_database_with_its_role_state_and_position() {
    let c = Cluster::from_env();
    let config = config_file(
        "status",
        &c.primary_url,
        &[c.replica_url(1), c.replica_url(2)],
    );
    let (code, table) = pindb(&["status"], &config);
    assert_eq!(code, 0, "{table}");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "a header and three databases:\n{table}");
    assert!(
        lines[0].starts_with("alias") && lines[0].contains("retained WAL"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("default ") && lines[1].contains("master"),
        "{table}"
    );
    for (line, alias) in lines[2..].iter().zip(["default-1", "default-2"]) {
        assert!(line.starts_with(alias), "{table}");
        assert!(
            line.contains("replica") && line.contains("streaming") && line.contains(" up "),
            "{table}"
        );
    }
    let (code, json) = pindb(&["status", "--json"], &config);
    assert_eq!(code, 0, "{json}");
    assert!(
        json.contains("\"alias\": \"default-2\"") && json.contains("\"in_recovery\": true"),
        "{json}"
    );
}

#[test]
fn check_passes_a_right_topology_and_names_what_is_wrong() {
    let c = Cluster::from_env();
    let good = config_file("good", &c.primary_url, &[c.replica_url(1)]);
    let (code, out) = pindb(&["check"], &good);
    assert_eq!((code, out.trim()), (0, "topology ok"));

    // An unrelated primary configured as a replica.
    let bad = config_file("bad", &c.primary_url, &[&c.stranger_url]);
    let (code, out) = pindb(&["check"], &bad);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("default-1") && out.contains("not in recovery"),
        "{out}"
    );

    // ... and `status` says the same of it: not up, a wrong role, exit 1.
    let (code, out) = pindb(&["status"], &bad);
    assert_eq!(code, 1, "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("default-1"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains("wrong role") && line.contains("not in recovery") && !line.contains(" up"),
        "{out}"
    );

    // A server that cannot be reached is reported, and the status exits non-zero.
    let down = config_file(
        "down",
        &c.primary_url,
        &["postgres://pindb@127.0.0.1:1/pindb"],
    );
    let (code, out) = pindb(&["status"], &down);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("down (") && out.to_lowercase().contains("refused"),
        "{out}"
    );
}

#[test]
fn a_logical_replica_shows_its_kind_and_published_tables_and_is_checked() {
    let c = Cluster::from_env();
    let dir = std::env::temp_dir().join(format!("pindb-cli-{}-logical", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, master: &str| {
        let path = dir.join(name);
        std::fs::write(
            &path,
            format!(
                "[masters.default]\nurl = '{master}'\n[sets]\ndefault = [\
                 {{ url = '{}' }}, {{ url = '{}', kind = 'logical' }}]\n",
                c.replica_url(1),
                c.logical_url
            ),
        )
        .unwrap();
        path
    };
    let good = write("good.toml", &c.primary_url);
    let (code, table) = pindb(&["status"], &good);
    assert_eq!(code, 0, "{table}");
    assert!(
        table.lines().next().unwrap().ends_with("published"),
        "{table}"
    );
    let logical = table
        .lines()
        .find(|l| l.starts_with("default-2"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        logical.contains("replica")
            && logical.contains("logical")
            && logical.contains(" up ")
            && logical.ends_with("logical.notes"),
        "{table}"
    );
    let (code, json) = pindb(&["status", "--json"], &good);
    assert_eq!(code, 0, "{json}");
    assert!(
        json.contains("\"kind\": \"logical\"") && json.contains("\"logical.notes\""),
        "{json}"
    );
    let (code, out) = pindb(&["check"], &good);
    assert_eq!((code, out.trim()), (0, "topology ok"));

    // Under another master its subscription's slot is not there: named, with the fix.
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            "[masters.default]\nurl = '{}'\n[sets]\ndefault = [{{ url = '{}', kind = 'logical' }}]\n",
            c.stranger_url, c.logical_url
        ),
    )
    .unwrap();
    let (code, out) = pindb(&["check"], &bad);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("`default-1`")
            && out.contains("does not subscribe")
            && out.contains("CREATE SUBSCRIPTION"),
        "{out}"
    );
}

/// `scripts/cluster up` writes the dev cluster's config and `scripts/cluster env` exports it as
/// PINDB_CONFIG: the CLI reads it with no `--config`, from any directory.
#[test]
fn the_dev_cluster_config_is_read_from_pindb_config_without_a_flag() {
    let path = std::env::var_os("PINDB_CONFIG").map_or_else(
        || {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/pindb-cluster/pindb.toml")
        },
        std::path::PathBuf::from,
    );
    assert!(
        path.exists(),
        "{} is missing: `scripts/cluster up` writes it",
        path.display()
    );
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_pindb"))
            .args(args)
            .env("PINDB_CONFIG", &path)
            .current_dir(std::env::temp_dir())
            .output()
            .unwrap();
        let code = out.status.code().unwrap_or(-1);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (code, text + &String::from_utf8_lossy(&out.stderr))
    };
    let (code, out) = run(&["check"]);
    assert_eq!((code, out.trim()), (0, "topology ok"));
    let (code, table) = run(&["status"]);
    assert_eq!(code, 0, "{table}");
    let aliases: Vec<&str> = table
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        aliases,
        ["default", "default-1", "default-2", "default-3"],
        "the primary, both standbys and the logical subscriber:\n{table}"
    );
    assert!(
        table.lines().nth(4).is_some_and(|l| l.contains("logical")),
        "{table}"
    );
}

#[test]
fn status_and_check_run_again_and_again_through_transaction_pooling() {
    // pindb's own connections use only the unnamed statement and set nothing on their
    // session: PgBouncer in transaction mode may hand their server connection to anyone.
    let c = Cluster::from_env();
    let config = config_file(
        "pooled",
        &c.pooled_url(0, false),
        &[&c.pooled_url(1, false), &c.pooled_url(2, false)],
    );
    for round in 0..3 {
        for command in ["status", "check"] {
            let (code, out) = pindb(&[command], &config);
            assert_eq!(
                code, 0,
                "round {round}, `pindb {command}` through PgBouncer (transaction mode):\n{out}"
            );
            assert!(!out.contains("prepared statement"), "{out}");
        }
    }
}

/// The `lag ms` cell of `alias`'s line: the token under the header's `lag ms`.
fn lag_ms_cell(table: &str, alias: &str) -> String {
    let column = table
        .lines()
        .next()
        .and_then(|header| header.find("lag ms"))
        .unwrap_or_else(|| panic!("no `lag ms` column:\n{table}"));
    let line = table
        .lines()
        .find(|l| l.starts_with(&format!("{alias} ")))
        .unwrap_or_else(|| panic!("no `{alias}` line:\n{table}"));
    line.get(column..)
        .and_then(|cell| cell.split_whitespace().next())
        .unwrap_or_else(|| panic!("no `lag ms` cell for `{alias}`:\n{table}"))
        .to_owned()
}

/// Issue #25: `status` printed `now() - pg_last_xact_replay_timestamp()` as lag, the age of the
/// last transaction the replica replayed (a write 1 s old after an idle period showed 9 s). Its
/// lag is the README's: how long the master has had WAL the replica has not replayed.
#[test]
fn status_lag_is_how_long_the_master_has_had_wal_the_replica_has_not_replayed() {
    let c = Cluster::from_env();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("pindb-cli-{}-lag", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The check timeout is status's deadline for a replica to catch up.
    let config_with = |name: &str, check_timeout_ms: u64| {
        let path = dir.join(name);
        std::fs::write(
            &path,
            format!(
                "[masters.default]\nurl = '{}'\n[sets]\ndefault = [{{ url = '{}' }}]\n\
                 [monitor]\ncheck_timeout_ms = {check_timeout_ms}\n",
                c.primary_url,
                c.replica_url(1)
            ),
        )
        .unwrap();
        path
    };
    let config = config_with("pindb.toml", 2000);
    // A transaction that commits: a WAL-logged one (a transactional message, which the logical
    // subscriber is not sent), so its commit is flushed before it returns (a bare
    // `txid_current()` commits asynchronously).
    let write = || async {
        c.primary()
            .await
            .execute(
                "SELECT pg_logical_emit_message(true, 'pindb-cli', 'lag')::text",
                &[],
            )
            .await
            .unwrap();
        c.primary_lsn().await
    };

    // Dropped, it resumes replica 1 (whatever fails below).
    let mut control = rt.block_on(async {
        let control = c.exclusive().await;
        // A write the replica replays, then an idle master: its last replayed transaction is
        // 3 s old, yet it is not 3 s behind.
        let lsn = write().await;
        c.wait_for_replay(1, lsn).await;
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        control
    });
    let (code, table) = pindb(&["status"], &config);
    assert_eq!(code, 0, "{table}");
    // 0, or the round trip of a replay it waited for (WAL another test or the server itself
    // wrote meanwhile): not the 3 s age of its last transaction.
    let lag: u64 = lag_ms_cell(&table, "default-1")
        .parse()
        .unwrap_or_else(|_| panic!("caught up:\n{table}"));
    assert!(lag < 1000, "caught up, lag {lag} ms:\n{table}");

    // Behind (a write it received but cannot replay): at least the 2 s status waited for it.
    rt.block_on(async {
        control.pause(1).await;
        let lsn = write().await;
        c.wait_for_receive(1, lsn).await;
    });
    let (code, table) = pindb(&["status"], &config);
    assert_eq!(code, 0, "{table}");
    let cell = lag_ms_cell(&table, "default-1");
    let at_least: u64 = cell
        .strip_prefix(">=")
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("a paused replica's lag is a lower bound:\n{table}"));
    assert!(at_least >= 2000, "{table}");
    let (code, json) = pindb(&["status", "--json"], &config);
    assert_eq!(code, 0, "{json}");
    assert!(json.contains("\"lag_ms_at_least\": true"), "{json}");

    // Behind when status asks, replaying 300 ms later: its lag is how long it took, not the
    // age of the transaction it replayed last (the write above, 4 s old and more after the two
    // runs of status that waited 2 s for it: the old figure). A loaded machine may resume
    // late: status waits up to 5 s for the replay here, and the lag may be up to 2.5 s.
    let patient = config_with("patient.toml", 5000);
    let status = Command::new(env!("CARGO_BIN_EXE_pindb"))
        .args(["status", "--config"])
        .arg(&patient)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    rt.block_on(async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        control.resume(1).await;
    });
    let out = status.wait_with_output().unwrap();
    let table =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{table}");
    let lag: u64 = lag_ms_cell(&table, "default-1")
        .parse()
        .unwrap_or_else(|_| panic!("caught up within the check timeout:\n{table}"));
    assert!(
        lag < 2500,
        "lag {lag} ms, not the last replay's age:\n{table}"
    );
    drop(control);
}
