#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
//! The MariaDB set is real: a row written on the primary reaches both replicas; with replica
//! 1's SQL thread stopped a new row is missing there (although received) but present on replica
//! 2, and replica 1's GTID position is behind the primary's; after apply starts again it
//! arrives; the read-only replicas refuse the application user's writes (error 1290), the
//! primary takes them. Each test has its own table.

use pindb_testkit::{gtid_seq, MariaDbCluster};

/// Creates `table` (dropped first: a crashed earlier run may have left it) with the row 1, on
/// the primary as the admin user.
fn fresh_table(db: &MariaDbCluster, table: &str) {
    db.query(
        0,
        &format!(
            "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id INT PRIMARY KEY); \
             INSERT INTO {table} VALUES (1)"
        ),
    )
    .unwrap();
}

fn ids(db: &MariaDbCluster, node: usize, table: &str) -> String {
    db.query(
        node,
        &format!("SELECT GROUP_CONCAT(id ORDER BY id) FROM {table}"),
    )
    .unwrap()
}

#[test]
fn a_row_written_on_the_primary_reaches_both_replicas() {
    let db = MariaDbCluster::from_env();
    let _flowing = db.shared();
    let table = "smoke_flow";
    assert_eq!(db.query(0, "SELECT @@read_only").unwrap(), "0");
    fresh_table(&db, table);
    db.sync_replicas();
    for n in [1, 2] {
        assert_eq!(
            db.query(n, "SELECT @@read_only").unwrap(),
            "1",
            "replica {n}"
        );
        assert_eq!(ids(&db, n, table), "1", "replica {n} has the row");
        // The application user reads there too.
        assert_eq!(
            db.query_as_app(n, &format!("SELECT COUNT(*) FROM {table}"))
                .unwrap(),
            "1"
        );
    }
    db.query(0, &format!("DROP TABLE {table}")).unwrap();
}

#[test]
fn a_stopped_sql_thread_holds_back_one_replica() {
    let db = MariaDbCluster::from_env();
    let mut control = db.exclusive();
    let table = "smoke_apply";
    fresh_table(&db, table);
    db.sync_replicas();

    control.stop_apply(1);
    assert_eq!(db.slave_status(1)["Slave_SQL_Running"], "No");
    assert_eq!(db.slave_status(1)["Slave_IO_Running"], "Yes");
    db.query(0, &format!("INSERT INTO {table} VALUES (2)"))
        .unwrap();
    let primary = db.gtid_binlog_pos();
    db.wait_for_gtid(2, &primary);
    db.wait_for_received(1, &primary);
    assert_eq!(ids(&db, 2, table), "1,2", "replica 2 applies");
    assert_eq!(
        ids(&db, 1, table),
        "1",
        "replica 1 received the row, did not apply it"
    );
    let applied = gtid_seq(&db.gtid_slave_pos(1), 0).expect("replica 1 has a domain-0 GTID");
    let written = gtid_seq(&primary, 0).expect("the primary has a domain-0 GTID");
    assert!(
        applied < written,
        "replica 1 applied up to 0-1-{applied}, the primary wrote 0-1-{written}"
    );

    control.start_apply(1);
    assert_eq!(db.slave_status(1)["Slave_SQL_Running"], "Yes");
    db.wait_for_gtid(1, &primary);
    assert_eq!(
        ids(&db, 1, table),
        "1,2",
        "replica 1 applied the row after start_apply"
    );
    db.query(0, &format!("DROP TABLE {table}")).unwrap();
}

#[test]
fn replicas_refuse_the_application_users_writes() {
    let db = MariaDbCluster::from_env();
    let _flowing = db.shared();
    let table = "smoke_readonly";
    fresh_table(&db, table);
    db.sync_replicas();
    for n in [1, 2] {
        let err = db
            .query_as_app(n, &format!("INSERT INTO {table} VALUES (2)"))
            .expect_err("a read-only replica refuses the application user's write");
        assert!(err.starts_with("ERROR 1290 "), "replica {n}: {err}");
        assert_eq!(ids(&db, n, table), "1", "replica {n} is unchanged");
    }
    db.query_as_app(0, &format!("INSERT INTO {table} VALUES (2)"))
        .expect("the primary takes the application user's write");
    assert_eq!(ids(&db, 0, table), "1,2");
    db.query(0, &format!("DROP TABLE {table}")).unwrap();
}
