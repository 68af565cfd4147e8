#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
//! pindb's classifier measured against PostgreSQL itself: every volatile built-in function of
//! `pg_catalog` is called on a standby of the dev cluster (`scripts/cluster up`), and each one
//! the standby refuses must be a write for `classify`. This is how the classifier's table of
//! standby refusals (`STANDBY_REFUSES` in pindb-core's `classify`) was derived, and what keeps
//! it complete on the server version the tests run against.

use pindb_core::adapter::{classify, StatementKind};
use pindb_testkit::{connect, Cluster};

/// Functions never called here: they would change the test cluster itself (promote the
/// standby, pause its replay, end or disturb other sessions), sleep, or touch files.
const NEVER_CALLED: &[&str] = &[
    "pg_promote",
    "pg_wal_replay_pause",
    "pg_wal_replay_resume",
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_log_backend_memory_contexts",
    "pg_sleep",
    "pg_sleep_for",
    "pg_sleep_until",
    "pg_backup_start",
    "pg_backup_stop",
    "pg_start_backup",
    "pg_stop_backup",
    "lo_import",
    "lo_export",
    "pg_file_write",
];

/// A literal of `ty` that a function can run with; `None` for types without a harmless one.
fn literal(ty: &str) -> Option<String> {
    Some(match ty {
        "smallint" | "integer" | "bigint" | "oid" | "real" | "double precision" | "numeric"
        | "xid" | "xid8" => format!("'0'::{ty}"),
        "boolean" => "false".to_owned(),
        "text" | "name" | "character varying" | "cstring" | "\"char\"" => {
            format!("'pindb_probe'::{ty}")
        }
        "regclass" => "'pg_class'::regclass".to_owned(),
        "regnamespace" => "'pg_catalog'::regnamespace".to_owned(),
        "regtype" => "'int4'::regtype".to_owned(),
        "regproc" | "regprocedure" => "'now()'::regprocedure".to_owned(),
        "pg_lsn" => "'0/0'::pg_lsn".to_owned(),
        "bytea" => "'\\x'::bytea".to_owned(),
        "timestamp with time zone" => "now()".to_owned(),
        "interval" => "'0'::interval".to_owned(),
        "jsonb" => "'{}'::jsonb".to_owned(),
        t if t.starts_with("any") || t == "internal" || t == "record" || t.ends_with("[]") => {
            return None
        }
        t => format!("NULL::{t}"),
    })
}

#[tokio::test]
async fn every_builtin_a_standby_refuses_is_a_write() {
    let cluster = Cluster::from_env();
    let _replay = cluster.shared().await;
    // Functions that check their argument before recovery: a GIN index for the GIN ones.
    let schema = cluster.fresh_schema().await;
    let primary = cluster.primary().await;
    primary
        .batch_execute(&format!(
            "CREATE TABLE {s}.docs (words tsvector);
             CREATE INDEX docs_gin ON {s}.docs USING gin (words)",
            s = schema.name
        ))
        .await
        .unwrap();
    cluster.sync_replicas().await;
    let gin_index = format!("'{}.docs_gin'::regclass", schema.name);
    // As the superuser: privilege checks must not hide a refusal (initdb's trust auth).
    let url = cluster.replica_url(1).replacen("pindb@", "postgres@", 1);
    let standby = connect(&url).await;
    standby
        .batch_execute("SET statement_timeout = '2s'; SET client_min_messages = error")
        .await
        .unwrap();
    let version: String = standby
        .query_one("SHOW server_version_num", &[])
        .await
        .unwrap()
        .get(0);
    let candidates = standby
        .query(
            "SELECT p.proname::text,
                    array(SELECT format_type(t, NULL) FROM unnest(p.proargtypes) t)
               FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
              WHERE n.nspname = 'pg_catalog' AND p.prokind = 'f' AND p.provolatile = 'v'
              ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let (mut called, mut refused, mut missed) = (0, Vec::new(), Vec::new());
    for row in &candidates {
        let (name, types): (String, Vec<String>) = (row.get(0), row.get(1));
        if NEVER_CALLED.contains(&name.as_str()) {
            continue;
        }
        let Some(mut args) = types.iter().map(|t| literal(t)).collect::<Option<Vec<_>>>() else {
            continue;
        };
        if name.starts_with("gin_") && types.first().is_some_and(|t| t == "regclass") {
            args[0] = gin_index.clone();
        }
        let sql = format!("SELECT pg_catalog.{name}({})", args.join(", "));
        called += 1;
        let Err(e) = standby.batch_execute(&sql).await else {
            continue;
        };
        let Some(db) = e.as_db_error() else { continue };
        let standby_refused = db.code().code() == "25006"
            || db.message().contains("recovery is in progress")
            || db.message().contains("during recovery");
        if standby_refused {
            refused.push(name.clone());
            if classify(&sql) != StatementKind::Write {
                missed.push(format!("{name}: {}", db.message()));
            }
        }
    }
    refused.dedup();
    eprintln!(
        "PostgreSQL {version}: {} volatile built-ins, {called} called on the standby, {} refused: {}",
        candidates.len(),
        refused.len(),
        refused.join(", ")
    );
    assert!(
        called > 100,
        "only {called} functions could be called: the probe is broken"
    );
    drop(primary);
    schema.drop().await;
    assert!(
        missed.is_empty(),
        "the standby refuses these, but pindb's classifier calls them reads; add them to \
         STANDBY_REFUSES in pindb-core/src/classify/mod.rs:\n  {}",
        missed.join("\n  ")
    );
}
