use super::StatementKind::{Read, Write};
use super::*;

/// Real statements: what diesel, SeaORM and hand-written code send.
const TABLE: &[(&str, StatementKind)] = &[
    // Plain reads.
    ("SELECT 1", Read),
    ("select 1", Read),
    ("  \n\tSELECT now()", Read),
    (r#"SELECT "users"."id", "users"."name" FROM "users" WHERE "users"."id" = $1"#, Read),
    (r#"SELECT "users"."id" FROM "users" WHERE "users"."name" = $1 LIMIT $2 OFFSET $3"#, Read),
    (r#"SELECT COUNT(*) FROM "posts" WHERE "posts"."user_id" = $1"#, Read),
    (r#"SELECT COUNT(*) AS num_items FROM (SELECT "posts"."id" FROM "posts") AS "sub""#, Read),
    ("SELECT EXISTS (SELECT 1 FROM users WHERE id = $1)", Read),
    ("SELECT * FROM users ORDER BY id DESC", Read),
    ("SELECT a, b FROM t1 JOIN t2 USING (id) WHERE t1.x IN (1, 2, 3)", Read),
    ("SELECT substring('abc' FROM 1 FOR 2)", Read),
    ("SELECT * FROM t WHERE x = 'INSERT INTO t VALUES (1)'", Read),
    ("SELECT 'it''s; DELETE FROM t'", Read),
    (r"SELECT E'\' DELETE FROM t; '", Read),
    ("SELECT $$ DELETE FROM t $$", Read),
    ("SELECT $body$ UPDATE t SET x = 1; $body$ AS code", Read),
    (r#"SELECT "update", "delete" FROM "insert""#, Read),
    ("SELECT 1 -- DELETE FROM t", Read),
    ("SELECT /* UPDATE t */ 1", Read),
    ("SELECT /* outer /* nested UPDATE */ still comment */ 1", Read),
    ("-- leading comment\nSELECT 1", Read),
    ("/* a */ /* b */ SELECT 1", Read),
    ("(SELECT 1) UNION ALL (SELECT 2)", Read),
    ("SELECT 1; SELECT 2;", Read),
    ("SELECT 1;", Read),
    ("VALUES (1, 'a'), (2, 'b')", Read),
    ("TABLE users", Read),
    ("SHOW server_version", Read),
    ("show transaction_isolation", Read),
    ("WITH recent AS (SELECT * FROM posts WHERE created_at > now() - interval '1 day') SELECT * FROM recent", Read),
    ("WITH RECURSIVE r(n) AS (VALUES (1) UNION ALL SELECT n + 1 FROM r WHERE n < 5) SELECT n FROM r", Read),
    ("EXPLAIN SELECT * FROM users", Read),
    ("EXPLAIN DELETE FROM users", Read),
    ("EXPLAIN (FORMAT JSON) UPDATE users SET x = 1", Read),
    ("EXPLAIN VERBOSE SELECT 1", Read),
    ("EXPLAIN ANALYZE SELECT * FROM users", Read),
    ("SELECT pg_last_wal_replay_lsn()", Read),
    ("SELECT U&'d\\0061t\\+000061' AS x", Read),
    ("SELECT x::text FROM t WHERE y @> '{1}'", Read),
    ("SELECT * FROM \"weird\"\"name\" WHERE a = $1", Read),
    // Writes.
    ("INSERT INTO users (name) VALUES ($1)", Write),
    (r#"INSERT INTO "users" ("name") VALUES ($1) RETURNING "users"."id", "users"."name""#, Write),
    ("UPDATE users SET name = $1 WHERE id = $2", Write),
    (r#"UPDATE "posts" SET "title" = $1 WHERE "posts"."id" = $2 RETURNING "id", "title""#, Write),
    ("DELETE FROM users WHERE id = $1", Write),
    ("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET x = s.x", Write),
    ("-- app=web\nINSERT INTO t VALUES (1)", Write),
    ("/* SELECT */ INSERT INTO t VALUES (1)", Write),
    ("/* nested /* SELECT */ */ DELETE FROM t", Write),
    ("SELECT * FROM jobs FOR UPDATE", Write),
    ("SELECT * FROM jobs WHERE id = $1 FOR UPDATE SKIP LOCKED", Write),
    ("SELECT * FROM jobs FOR NO KEY UPDATE", Write),
    ("SELECT * FROM jobs FOR SHARE", Write),
    ("SELECT * FROM jobs FOR KEY SHARE OF jobs NOWAIT", Write),
    ("select * from jobs for update", Write),
    ("WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x", Write),
    ("WITH x AS (INSERT INTO t VALUES (1) RETURNING id) SELECT id FROM x", Write),
    ("WITH x AS (UPDATE t SET a = 1 RETURNING *) SELECT count(*) FROM x", Write),
    ("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", Write),
    ("EXPLAIN ANALYZE DELETE FROM users", Write),
    ("EXPLAIN (ANALYZE, BUFFERS) UPDATE users SET x = 1", Write),
    ("EXPLAIN ANALYZE VERBOSE INSERT INTO t VALUES (1)", Write),
    ("SELECT * INTO new_table FROM users", Write),
    ("SELECT nextval('users_id_seq')", Write),
    ("SELECT setval('users_id_seq', 10)", Write),
    ("SELECT pg_advisory_lock(42)", Write),
    ("SELECT pg_try_advisory_xact_lock(42)", Write),
    ("SELECT pg_notify('ch', 'payload')", Write),
    ("SELECT lo_create(0)", Write),
    ("SELECT pg_current_wal_insert_lsn()", Write),
    ("SELECT 1; DELETE FROM t", Write),
    ("SELECT 'a;b'; UPDATE t SET a = 1", Write),
    ("CREATE TABLE t (id int)", Write),
    ("DROP TABLE t", Write),
    ("ALTER TABLE t ADD COLUMN x int", Write),
    ("TRUNCATE t", Write),
    ("BEGIN", Write),
    ("COMMIT", Write),
    ("SET search_path TO app", Write),
    ("LOCK TABLE t IN ACCESS EXCLUSIVE MODE", Write),
    ("COPY t FROM STDIN", Write),
    ("CALL do_things()", Write),
    ("DO $$ BEGIN PERFORM 1; END $$", Write),
    ("VACUUM t", Write),
    ("REFRESH MATERIALIZED VIEW mv", Write),
    ("", Write),
    ("   ", Write),
    ("-- only a comment", Write),
    (";", Write),
    ("SELECT 'unterminated", Read),
    ("/* unterminated comment SELECT 1", Write),
    ("42", Write),
    ("$1", Write),
    // From review: parenthesised statements after EXPLAIN ANALYZE, quoted function names.
    ("SELECT 1; EXPLAIN ANALYZE (SELECT nextval('s'))", Write),
    ("EXPLAIN (ANALYZE) (SELECT pg_advisory_lock(1)); SELECT 1", Write),
    ("EXPLAIN ANALYZE (WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d); SELECT 1", Write),
    ("EXPLAIN (SELECT 1)", Read),
    (r#"SELECT "nextval"('s')"#, Write),
    (r#"SELECT pg_catalog."setval"('s', 1)"#, Write),
    (r#"SELECT U&"nextval"('s')"#, Write),
    ("SELECT currval('s')", Write),
    ("SELECT pg_logical_emit_message(true, 'p', 'x')", Write),
];

#[test]
fn main_tables() {
    let cases = [
        (
            r#"SELECT "users"."id" FROM "users" WHERE "users"."id" = $1"#,
            Some("users"),
        ),
        (
            r#"INSERT INTO "notes" ("body") VALUES ($1) RETURNING "notes"."id""#,
            Some("notes"),
        ),
        (r#"UPDATE "posts" SET "title" = $1"#, Some("posts")),
        ("DELETE FROM ONLY app.jobs WHERE id = 1", Some("jobs")),
        ("TABLE stats", Some("stats")),
        (
            "WITH x AS (SELECT * FROM inner_t) SELECT * FROM outer_t",
            Some("outer_t"),
        ),
        ("SELECT (SELECT 1 FROM a) FROM b", Some("b")),
        ("SELECT extract(year FROM now())", None),
        (r#"SELECT * FROM "we""ird""#, Some(r#"we""ird"#)),
        ("SELECT * FROM données", Some("données")),
        ("SELECT 1", None),
        ("", None),
        ("INSERT", None),
    ];
    for (sql, want) in cases {
        assert_eq!(main_table(sql), want, "{sql}");
    }
}

#[test]
fn table_of_real_statements() {
    assert!(TABLE.len() >= 60);
    let wrong: Vec<_> = TABLE
        .iter()
        .filter(|(sql, want)| classify(sql) != *want)
        .map(|(sql, want)| format!("{want:?} expected for {sql:?}"))
        .collect();
    assert!(wrong.is_empty(), "misclassified:\n{}", wrong.join("\n"));
}

proptest::proptest! {
    #[test]
    fn never_panics_on_arbitrary_text(s in "\\PC*") {
        let _ = classify(&s);
        let _ = main_table(&s);
    }

    #[test]
    fn never_panics_on_sql_like_fragments(
        parts in proptest::collection::vec(
            proptest::sample::select(vec![
                "SELECT", "INSERT", "EXPLAIN", "ANALYZE", "(", ")", ";", "'", "\"", "$$", "$a$",
                "$1", "--", "\n", "/*", "*/", "E'", "\\", "U&'", "FOR", "UPDATE", " ", "x", "é",
            ]),
            0..40,
        )
    ) {
        let _ = classify(&parts.concat());
        let _ = main_table(&parts.concat());
    }

    #[test]
    fn a_comment_or_string_never_turns_a_write_into_a_read(noise in "[a-zA-Z0-9 ;'$]*") {
        let lit = noise.replace('\'', "''").replace('$', "");
        let sql = format!("/* {} */ INSERT INTO t VALUES ('{lit}')", noise.replace("*/", ""));
        proptest::prop_assert_eq!(classify(&sql), Write);
    }
}

#[test]
fn unicode_escaped_identifiers_are_not_taken_for_reads() {
    assert_eq!(classify(r#"SELECT U&"nextv\0061l"('s')"#), Write);
    assert_eq!(
        classify(r#"SELECT u&"d\0061ta" FROM t"#),
        Write,
        "the safe side"
    );
    assert_eq!(
        classify("SELECT U&'d\\0061ta'"),
        Read,
        "a U& string is a string"
    );
}

#[test]
fn functions_that_act_on_the_wrong_server_are_writes() {
    for sql in [
        "SELECT pg_terminate_backend(123)",
        "SELECT pg_cancel_backend(123)",
        "SELECT pg_reload_conf()",
        "SELECT pg_stat_reset()",
        "SELECT pg_stat_reset_shared('bgwriter')",
        "SELECT pg_rotate_logfile()",
    ] {
        assert_eq!(classify(sql), Write, "{sql}");
    }
}

#[test]
fn builtins_a_standby_refuses_are_writes() {
    for name in STANDBY_REFUSES {
        let sql = format!("SELECT {}('x'::regclass, 0)", name.to_lowercase());
        assert_eq!(classify(&sql), Write, "{sql}");
    }
}

#[test]
fn deep_nesting_cannot_exhaust_the_stack() {
    // A small stack: any recursion per level would overflow it long before the end.
    let input = "EXPLAIN ANALYZE ".repeat(50_000) + "SELECT 1";
    let parens = "(".repeat(200_000) + "SELECT 1";
    let comments = "/* ".repeat(100_000) + &" */".repeat(100_000) + " SELECT 1";
    std::thread::Builder::new()
        .stack_size(64 * 1024)
        .spawn(move || {
            assert_eq!(classify(&input), Read);
            assert_eq!(classify(&parens), Read);
            assert_eq!(classify(&comments), Read);
            assert_eq!(classify(&("EXPLAIN ANALYZE ".repeat(50_000))), Write);
        })
        .unwrap()
        .join()
        .unwrap();
}

proptest::proptest! {
    #[test]
    fn any_nesting_classifies_without_panicking(
        parts in proptest::collection::vec(
            proptest::prop_oneof![
                proptest::strategy::Just("EXPLAIN ANALYZE "),
                proptest::strategy::Just("EXPLAIN "),
                proptest::strategy::Just("("),
                proptest::strategy::Just(")"),
                proptest::strategy::Just("/* "),
                proptest::strategy::Just(" */"),
                proptest::strategy::Just("SELECT 1"),
                proptest::strategy::Just("INSERT INTO t VALUES (1)"),
                proptest::strategy::Just(";"),
                proptest::strategy::Just("U&\"x\""),
            ],
            0..2_000,
        ),
        repeat in 1usize..50,
    ) {
        let sql = parts.concat().repeat(repeat);
        let _ = classify(&sql);
        let _ = main_table(&sql);
    }
}

#[test]
fn a_footprint_lists_every_relation_a_read_names() {
    use super::Footprint;
    let relations = |sql: &str| {
        Footprint::of_sql(sql).map(|f| f.relations().map(str::to_owned).collect::<Vec<_>>())
    };
    let cases: &[(&str, Option<&[&str]>)] = &[
        ("SELECT * FROM notes", Some(&["notes"])),
        ("SELECT * FROM ONLY app.notes n, audit", Some(&["app.notes", "audit"])),
        (
            "SELECT a, b FROM x LEFT JOIN y USING (id) WHERE id IN (SELECT id FROM z) GROUP BY a, b",
            Some(&["x", "y", "z"]),
        ),
        ("SELECT extract(epoch FROM created) FROM notes", Some(&["notes"])),
        ("SELECT substring(body FROM 1 FOR 3) FROM notes", Some(&["notes"])),
        ("SELECT * FROM (SELECT * FROM inner_t) s", Some(&["inner_t"])),
        ("TABLE logical.notes", Some(&["logical.notes"])),
        ("SELECT 1; SELECT * FROM b", Some(&["b"])),
        ("SELECT * FROM \"Odd\"\"Name\"", Some(&["Odd\"Name"])),
        ("SELECT * FROM db.app.notes", Some(&["app.notes"])),
        // A CTE counts as a relation of its name (the safe side: never taken for a table).
        ("WITH t AS (SELECT 1) SELECT * FROM t, u", Some(&["t", "u"])),
        ("WITH audit AS (SELECT * FROM audit) SELECT * FROM audit", Some(&["audit"])),
        // diesel's joins: the whole join in parentheses.
        (
            r#"SELECT "notes"."id" FROM ("logical"."notes" INNER JOIN "logical"."audit" ON ("audit"."id" = "notes"."id"))"#,
            Some(&["logical.notes", "logical.audit"]),
        ),
        ("SELECT * FROM a, (b JOIN (c JOIN d ON true) ON true) x", Some(&["a", "b", "c", "d"])),
        ("SELECT * FROM ONLY (audit)", Some(&["audit"])),
        ("WITH x AS (TABLE logical.audit) SELECT * FROM x", Some(&["logical.audit", "x"])),
        ("SELECT 1 UNION ALL TABLE audit", Some(&["audit"])),
        ("SELECT * FROM t WHERE id IN (TABLE ids)", Some(&["t", "ids"])),
        ("SELECT query_to_xml('select * from audit', true, false, '')", None),
        ("SELECT * FROM ts_stat('SELECT v FROM audit')", None),
        ("SELECT * FROM generate_series(1, 3)", None),
        ("SELECT * FROM a, LATERAL f(a.x)", None),
        ("SELECT * FROM U&\"d\\0061ta\"", None),
        ("SELECT (1", None),
        ("SELECT 1)", None),
        ("INSERT INTO notes VALUES (1)", None),
        ("", None),
    ];
    for (sql, want) in cases {
        let want = want.map(|w| w.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(relations(sql), want, "{sql}");
    }
    let deep = format!("SELECT {}1{}", "(".repeat(100_000), ")".repeat(100_000));
    assert_eq!(relations(&deep), Some(vec![]), "deep nesting, no recursion");
    let calls = Footprint::of_sql(
        "SELECT lower(x), my_fn(y), t.audit_count FROM t WHERE z IN (1) AND EXISTS (SELECT 1)",
    )
    .unwrap();
    assert_eq!(
        calls.functions().collect::<Vec<_>>(),
        ["lower", "my_fn", "audit_count"],
        "`row.fn` may call fn"
    );
    let many = format!(
        "SELECT {} FROM t",
        (0..2000)
            .map(|i| format!("f{i}()"))
            .collect::<Vec<_>>()
            .join(",")
    );
    assert_eq!(relations(&many), None, "too many names to check");
}

/// MariaDB's dialect: what diesel and SeaORM send, and every construct of its syntax that
/// hides or reveals a write.
const MARIADB: &[(&str, StatementKind)] = &[
    (
        "SELECT `users`.`id`, `users`.`name` FROM `users` WHERE `users`.`id` = ?",
        Read,
    ),
    (
        "SELECT `cake`.`id` FROM `cake` WHERE `cake`.`id` = ? LIMIT ?",
        Read,
    ),
    ("SELECT COUNT(*) FROM `posts`", Read),
    ("SELECT `insert`, `delete` FROM `update`", Read),
    ("SELECT 'INSERT INTO t', \"DELETE FROM t\"", Read),
    ("SELECT 1 # DELETE FROM t", Read),
    ("SELECT 1 -- DELETE FROM t", Read),
    ("SELECT 1 --\tDELETE FROM t", Read),
    ("SELECT 1 /* DELETE */", Read),
    ("SELECT 1 /*+ NO_RANGE_OPTIMIZATION(t) */", Read),
    ("SHOW TABLES", Read),
    ("DESCRIBE `users`", Read),
    ("EXPLAIN SELECT * FROM t", Read),
    ("EXPLAIN FORMAT=JSON DELETE FROM t", Read),
    ("SELECT REPLACE(name, 'a', 'b') FROM t", Read),
    ("SELECT @@gtid_slave_pos", Read),
    ("SELECT @@session.sql_mode, @@GLOBAL.read_only", Read),
    ("SELECT 1e5, 1.5e-3, 0x1F, .5", Read),
    ("SELECT 'it''s', 'a\\'b'", Read),
    ("SELECT $x FROM t", Read),
    ("WITH c AS (SELECT 1 AS n) SELECT n FROM c", Read),
    ("SELECT MASTER_GTID_WAIT('0-1-5', 1)", Read),
    // Writes.
    ("INSERT INTO `users` (`name`) VALUES (?)", Write),
    ("REPLACE INTO t VALUES (1)", Write),
    ("UPDATE `users` SET `name` = ? WHERE `id` = ?", Write),
    ("CALL refresh()", Write),
    ("DO RELEASE_LOCK('x')", Write),
    ("HANDLER t OPEN", Write),
    ("SET @x = 1", Write),
    ("LOCK TABLES t READ", Write),
    ("ANALYZE SELECT * FROM t", Write),
    ("EXPLAIN ANALYZE DELETE FROM t", Write),
    ("SELECT * FROM t FOR UPDATE", Write),
    ("SELECT * FROM t LOCK IN SHARE MODE", Write),
    ("SELECT * FROM t INTO OUTFILE '/tmp/x'", Write),
    ("SELECT * FROM t INTO DUMPFILE '/tmp/x'", Write),
    ("SELECT id INTO @v FROM t", Write),
    ("SELECT @v := id FROM t", Write),
    ("SELECT @v:=id FROM t", Write),
    // User variables live in the session that set them (the master's).
    ("SELECT @v", Write),
    ("SELECT * FROM t WHERE id = @`v`", Write),
    // Session-bound system variables and SHOWs.
    ("SELECT @@last_insert_id", Write),
    ("SELECT @@SESSION.identity", Write),
    ("SELECT @@last_gtid", Write),
    ("SELECT @@warning_count", Write),
    ("SHOW WARNINGS", Write),
    ("SHOW COUNT(*) ERRORS", Write),
    ("SHOW PROFILES", Write),
    ("SELECT s.currval", Write),
    // A versioned executable comment a server of another version skips to its first `*/`:
    // read as SQL, a quote or comment inside would end it elsewhere.
    ("SELECT 1 /*!80000 # */, NEXTVAL(s)", Write),
    ("SELECT 1 /*M!999999 ' */, GET_LOCK('x',0) -- '", Write),
    // Versioned: skipped by a server of another version, read by this one: not provably a read.
    ("SELECT 1 /*!80000 , 2 */", Write),
    ("SELECT NEXT /*!50700 x */ VALUE FOR s", Write),
    ("SELECT * FROM t LOCK /*!80000 x */ IN SHARE MODE", Write),
    (
        "EXPLAIN SELECT 1 /*!999999 ' */; DELETE FROM t; -- '",
        Write,
    ),
    ("EXPLAIN /*! SELECT 1 */", Read),
    ("EXPLAIN SELECT 1 /*! /* */", Write),
    ("SELECT @@`last_gtid`", Write),
    ("SELECT @@session . warning_count", Write),
    // A comment inside an executable one: the server's reading is not ours to guess.
    ("SELECT 1 /*! /*! , NEXTVAL(s) */", Write),
    ("SELECT 1 /*! /* x */ , 2 */", Write),
    // `ANSI_QUOTES`: `"` quotes a name without escapes, `'` keeps them.
    ("SELECT '\\'' AS \"\\\" , NEXTVAL(s) #\" '", Write),
    ("SELECT NEXTVAL(s)", Write),
    ("SELECT NEXT VALUE FOR s", Write),
    ("SELECT PREVIOUS VALUE FOR s", Write),
    ("SELECT SETVAL(s, 10)", Write),
    ("SELECT LASTVAL(s)", Write),
    ("SELECT GET_LOCK('job', 0)", Write),
    ("SELECT `GET_LOCK`('job', 0)", Write),
    ("SELECT IS_USED_LOCK('job')", Write),
    ("SELECT LAST_INSERT_ID()", Write),
    ("SELECT FOUND_ROWS()", Write),
    ("SELECT SQL_CALC_FOUND_ROWS * FROM t LIMIT 10", Write),
    ("SELECT ROW_COUNT()", Write),
    // Executable comments run.
    ("SELECT 1 /*! , NEXTVAL(s) */", Write),
    ("SELECT 1 /*!50000 , NEXTVAL(s) */", Write),
    ("SELECT 1 /*M!100500 , NEXTVAL(s) */", Write),
    ("SELECT * FROM t /*! FOR UPDATE */", Write),
    ("/*!INSERT INTO t VALUES (1) */", Write),
    ("SELECT 1 /*! , 2 */ , NEXTVAL(s)", Write),
    // Comments do not nest: the first `*/` ends one.
    ("SELECT 1 /* /* */ , NEXTVAL(s) /* */", Write),
    // `--` without a space after it is two minus signs.
    ("SELECT 1 --1, NEXTVAL(s)", Write),
    // A backslash escapes a quote, or does not (`NO_BACKSLASH_ESCAPES`): both readings count.
    ("SELECT 'a\\', NEXTVAL(s), '\\'", Write),
    ("SELECT 'a\\' , NEXTVAL(s) -- '", Write),
    ("SELECT \"a\\\", NEXTVAL(s), \"\\\"", Write),
    // A number glued to a keyword: the keyword is still seen.
    ("SELECT 1 FROM t WHERE 1INTO @x", Write),
    ("", Write),
    ("/*! */", Write),
];

#[test]
fn mariadb_dialect_of_real_statements() {
    for (sql, expected) in MARIADB {
        assert_eq!(Dialect::MariaDb.classify(sql), *expected, "MariaDB: {sql}");
    }
}

#[test]
fn mariadb_main_tables() {
    for (sql, table) in [
        (
            "SELECT `users`.`id` FROM `users` WHERE `users`.`id` = ?",
            Some("users"),
        ),
        (
            "INSERT INTO `app`.`notes` (`body`) VALUES (?)",
            Some("notes"),
        ),
        ("UPDATE notes SET body = ?", Some("notes")),
        ("DELETE FROM `notes` # gone", Some("notes")),
        ("SELECT 1", None),
    ] {
        assert_eq!(Dialect::MariaDb.main_table(sql), table, "{sql}");
    }
}

#[test]
fn the_postgres_dialect_is_classify() {
    for (sql, _) in TABLE.iter().chain(MARIADB) {
        assert_eq!(Dialect::Postgres.classify(sql), classify(sql), "{sql}");
    }
}

proptest::proptest! {
    #[test]
    fn mariadb_never_panics_on_arbitrary_text(s in "\\PC*") {
        let _ = Dialect::MariaDb.classify(&s);
        let _ = Dialect::MariaDb.main_table(&s);
    }

    /// Every piece of MariaDB's syntax that opens, ends or hides something, in any order:
    /// each classification ends (no piece is read without moving on).
    #[test]
    fn mariadb_ends_on_any_mix_of_its_syntax(
        parts in proptest::collection::vec(
            proptest::sample::select(vec![
                "EXPLAIN ", "SELECT ", "(", ")", "/*", "*/", "/*!", "/*!80000 ", "/*M!", "#",
                "-- ", "\n", "'", "\"", "`", "\\", "@", "@@", "@@session.", ".", ";", "a ",
                "FROM t ", "DELETE ",
            ]),
            0..24,
        ),
    ) {
        let sql = parts.concat();
        let _ = Dialect::MariaDb.classify(&sql);
        let _ = Dialect::MariaDb.main_table(&sql);
    }
}
