//! The SQL classifier: is a statement safe to run on a replica?
//!
//! It owns one decision, [`classify`], shared by every adapter. It reads the statement text
//! byte by byte with no allocation and never panics. It does not parse SQL fully: when in
//! doubt, the answer is [`StatementKind::Write`], which is always safe (the master can run
//! anything).

mod footprint;
mod lexer;
mod mariadb;

pub use footprint::Footprint;

use lexer::{Lexer, Syntax, Token};

/// The SQL a database speaks, as far as the classifier must know: quoting, comments, and
/// which functions and clauses write, lock or depend on the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Dialect {
    /// PostgreSQL ([`classify`]).
    #[default]
    Postgres,
    /// MariaDB: backticks, `#` and `-- ` comments, executable comments (`/*! .. */`,
    /// `/*M! .. */`, whose content runs), strings with or without backslash escapes.
    MariaDb,
}

impl Dialect {
    /// Classifies SQL text in this dialect: [`classify`] for PostgreSQL.
    ///
    /// For MariaDB, besides what [`classify`] says: the content of an executable comment is
    /// read as SQL (and a versioned one that another server would skip, whose content could
    /// end elsewhere, or a comment inside one, is not provably a read); `LOCK IN SHARE MODE`,
    /// `NEXT VALUE FOR` / `PREVIOUS VALUE FOR` a sequence, user variables (`@v`: they live in
    /// the session that set them), `SQL_CALC_FOUND_ROWS`, `SHOW WARNINGS`, and the functions
    /// and variables that lock (`GET_LOCK` ...) or read the session's last statement
    /// (`LAST_INSERT_ID`, `FOUND_ROWS`, `ROW_COUNT`, `LASTVAL`, `@@last_insert_id`,
    /// `@@last_gtid` ...) are writes: they must meet the master's session. A statement is
    /// read every way the server's `sql_mode` may read it (backslash escapes on or off,
    /// `ANSI_QUOTES`), and is a read only if every reading is.
    ///
    /// ```
    /// use pindb_core::adapter::{Dialect, StatementKind::*};
    ///
    /// let mariadb = Dialect::MariaDb;
    /// assert_eq!(mariadb.classify("SELECT `id` FROM `users` WHERE `id` = ?"), Read);
    /// assert_eq!(mariadb.classify("SELECT 1 /*! , NEXTVAL(s) */"), Write);
    /// assert_eq!(mariadb.classify("SELECT * FROM t LOCK IN SHARE MODE"), Write);
    /// assert_eq!(mariadb.classify("SELECT 1 # DELETE FROM t"), Read);
    /// assert_eq!(mariadb.classify(r"SELECT 'a\', NEXTVAL(s), '\'"), Write);
    /// ```
    pub fn classify(self, sql: &str) -> StatementKind {
        match self {
            Dialect::Postgres => classify(sql),
            Dialect::MariaDb => {
                let write = mariadb_readings(sql).any(|syntax| {
                    classify_with(Lexer::with(sql.as_bytes(), syntax)) == StatementKind::Write
                });
                match write {
                    true => StatementKind::Write,
                    false => StatementKind::Read,
                }
            }
        }
    }

    /// [`main_table`] in this dialect (MariaDB quotes names with backticks).
    ///
    /// ```
    /// use pindb_core::adapter::Dialect;
    ///
    /// assert_eq!(Dialect::MariaDb.main_table("SELECT `users`.`id` FROM `app`.`users`"), Some("users"));
    /// ```
    pub fn main_table(self, sql: &str) -> Option<&str> {
        main_table_with(Lexer::with(sql.as_bytes(), self.syntax()), sql)
    }

    fn syntax(self) -> Syntax {
        match self {
            Dialect::Postgres => Syntax::Postgres,
            // Which escapes the server uses does not move a table name.
            Dialect::MariaDb => MARIADB_DEFAULT,
        }
    }
}

/// MariaDB's default `sql_mode`: backslashes escape in both kinds of string.
const MARIADB_DEFAULT: Syntax = Syntax::MariaDb {
    single_escapes: true,
    double_escapes: true,
};

/// Every way the server may read `sql`, by its `sql_mode`: backslash escapes on (the
/// default), off (`NO_BACKSLASH_ESCAPES`), or on in `'..'` only (`ANSI_QUOTES` makes `".."`
/// a name). Only text with a backslash reads differently.
fn mariadb_readings(sql: &str) -> impl Iterator<Item = Syntax> {
    let backslash = sql.contains('\\');
    let double = backslash && sql.contains('"');
    [
        Some(MARIADB_DEFAULT),
        backslash.then_some(Syntax::MariaDb {
            single_escapes: false,
            double_escapes: false,
        }),
        double.then_some(Syntax::MariaDb {
            single_escapes: true,
            double_escapes: false,
        }),
    ]
    .into_iter()
    .flatten()
}

/// What a statement may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatementKind {
    /// Only reads: a replica may run it.
    Read,
    /// Writes, locks, has side effects, or could not be classified: the master must run it.
    Write,
}

/// Classifies SQL text (one statement or several separated by `;`).
///
/// Read only if every statement starts (after comments, whitespace and opening parentheses)
/// with `SELECT`, `VALUES`, `TABLE`, `SHOW`, `WITH` or `EXPLAIN` and none contains a
/// data-modifying keyword (`INSERT`/`UPDATE`/`DELETE`/`MERGE`, so data-modifying CTEs are
/// writes), `INTO` (`SELECT ... INTO` creates a table), a locking clause (`FOR UPDATE`,
/// `FOR NO KEY UPDATE`, `FOR SHARE`, `FOR KEY SHARE`) or a call to a function that writes
/// or that a standby refuses (`nextval`, `setval`, `pg_advisory_*lock*`, `pg_notify`,
/// `lo_*`...). `EXPLAIN` without `ANALYZE` only plans, so it is a read whatever it explains;
/// `EXPLAIN ANALYZE` runs the statement and is classified as that statement. Keywords inside
/// string literals (including `E'..'` and dollar-quoted ones), quoted identifiers and comments
/// (`--` and nested `/* */`) are ignored. Anything else, and empty input, is a write.
///
/// ```
/// use pindb_core::adapter::{classify, StatementKind::*};
///
/// assert_eq!(classify("SELECT * FROM users WHERE id = $1"), Read);
/// assert_eq!(classify("/* app */ INSERT INTO users (name) VALUES ($1) RETURNING id"), Write);
/// assert_eq!(classify("SELECT * FROM jobs FOR UPDATE SKIP LOCKED"), Write);
/// assert_eq!(classify("WITH gone AS (DELETE FROM t RETURNING *) SELECT count(*) FROM gone"), Write);
/// assert_eq!(classify("SELECT $$ INSERT $$"), Read);
/// ```
pub fn classify(sql: &str) -> StatementKind {
    classify_with(Lexer::new(sql.as_bytes()))
}

fn classify_with(mut lexer: Lexer<'_>) -> StatementKind {
    let mut statements = 0usize;
    loop {
        match classify_statement(&mut lexer) {
            Outcome::Empty { end_of_input: true } => break,
            Outcome::Empty {
                end_of_input: false,
            } => continue,
            Outcome::Read { end_of_input } => {
                statements += 1;
                if end_of_input {
                    break;
                }
            }
            Outcome::Write => return StatementKind::Write,
        }
    }
    if statements == 0 {
        StatementKind::Write
    } else {
        StatementKind::Read
    }
}

/// The main table of a statement, for delegate-router hints: the target of `INSERT INTO`,
/// `UPDATE`, `DELETE FROM` or `TABLE`, else the first table after a top-level `FROM`
/// (so a CTE's inner tables are skipped). A schema-qualified name yields the table part;
/// quotes are removed. `None` when there is no such table. Never allocates.
///
/// ```
/// use pindb_core::adapter::main_table;
///
/// assert_eq!(main_table(r#"SELECT "users"."id" FROM "users" WHERE "users"."id" = $1"#), Some("users"));
/// assert_eq!(main_table("insert into app.notes (body) values ($1)"), Some("notes"));
/// assert_eq!(main_table("SELECT 1"), None);
/// ```
pub fn main_table(sql: &str) -> Option<&str> {
    main_table_with(Lexer::new(sql.as_bytes()), sql)
}

fn main_table_with<'a>(mut lexer: Lexer<'a>, sql: &'a str) -> Option<&'a str> {
    let first = loop {
        match lexer.next_token() {
            Token::Punct(b'(') => continue,
            Token::Word(w) => break w,
            _ => return None,
        }
    };
    if is(first, "INSERT") || is(first, "DELETE") {
        match lexer.next_token() {
            Token::Word(w) if is(w, "INTO") || is(w, "FROM") => {}
            _ => return None,
        }
        return qualified_name(&mut lexer, sql);
    }
    if is(first, "UPDATE") || is(first, "TABLE") {
        return qualified_name(&mut lexer, sql);
    }
    let mut depth = 0usize;
    loop {
        match lexer.next_token() {
            Token::End | Token::Punct(b';') | Token::Opaque => return None,
            Token::Punct(b'(') => depth += 1,
            Token::Punct(b')') => depth = depth.saturating_sub(1),
            Token::Word(w) if depth == 0 && is(w, "FROM") => {
                return qualified_name(&mut lexer, sql)
            }
            _ => {}
        }
    }
}

/// `[ONLY] name[.name...]`: the last part, as a slice of `sql`.
fn qualified_name<'a>(lexer: &mut Lexer<'a>, sql: &'a str) -> Option<&'a str> {
    let mut token = lexer.next_token();
    if matches!(token, Token::Word(w) if is(w, "ONLY")) {
        token = lexer.next_token();
    }
    let mut name = match token {
        Token::Word(w) | Token::Quoted(w) => w,
        _ => return None,
    };
    loop {
        let checkpoint = lexer.clone();
        if lexer.next_token() != Token::Punct(b'.') {
            *lexer = checkpoint;
            break;
        }
        match lexer.next_token() {
            Token::Word(w) | Token::Quoted(w) => name = w,
            _ => return None,
        }
    }
    // `name` is a sub-slice of `sql`'s bytes that starts and ends at ASCII boundaries
    // (quotes, punctuation or whitespace), so it is valid UTF-8.
    let start = name.as_ptr() as usize - sql.as_ptr() as usize;
    sql.get(start..start + name.len())
}

enum Outcome {
    Empty { end_of_input: bool },
    Read { end_of_input: bool },
    Write,
}

/// Classifies one statement and leaves the lexer after its `;` (or at the end).
///
/// A loop, not recursion: each `EXPLAIN ANALYZE` prefix is peeled off in turn, so no input,
/// however deeply it nests them, can exhaust the stack.
fn classify_statement(lexer: &mut Lexer<'_>) -> Outcome {
    let mut explained = false;
    loop {
        let first = loop {
            match lexer.next_token() {
                Token::Punct(b'(') => continue,
                // `EXPLAIN ANALYZE` of nothing we can see: not provably a read.
                Token::End if explained => return Outcome::Write,
                Token::Punct(b';') if explained => return Outcome::Write,
                Token::End => return Outcome::Empty { end_of_input: true },
                Token::Punct(b';') => {
                    return Outcome::Empty {
                        end_of_input: false,
                    }
                }
                other => break other,
            }
        };
        let Token::Word(word) = first else {
            return Outcome::Write;
        };
        if is(word, "EXPLAIN") {
            match explain_prefix(lexer) {
                Explain::Runs => {
                    explained = true;
                    continue;
                }
                Explain::PlansOnly(outcome) => return outcome,
            }
        }
        if is(word, "SELECT")
            || is(word, "VALUES")
            || is(word, "TABLE")
            || is(word, "WITH")
            || is(word, "SHOW")
            || (lexer.mariadb() && (is(word, "DESCRIBE") || is(word, "DESC")))
        {
            return scan_read_body(lexer, is(word, "SHOW"));
        }
        return Outcome::Write;
    }
}

/// What an `EXPLAIN` does with the statement after it.
enum Explain {
    /// `ANALYZE`: runs it, so it is classified as that statement.
    Runs,
    /// Plans only: nothing runs; the lexer is past the statement.
    PlansOnly(Outcome),
}

/// `EXPLAIN [ANALYZE] [VERBOSE] ...` or `EXPLAIN ( option [, ...] ) ...`, after `EXPLAIN`.
fn explain_prefix(lexer: &mut Lexer<'_>) -> Explain {
    let mut analyze = false;
    let mut first = true;
    loop {
        let checkpoint = lexer.clone();
        let token = lexer.next_token();
        // Only `EXPLAIN (` opens an option list, and only if it does not start a statement:
        // `EXPLAIN ANALYZE (SELECT nextval('s'))` explains a parenthesised query.
        let options = first
            && token == Token::Punct(b'(')
            && !matches!(lexer.clone().next_token(), Token::Word(w) if starts_statement(w));
        first = false;
        match token {
            Token::Word(w) if is(w, "ANALYZE") || is(w, "ANALYSE") => analyze = true,
            Token::Word(w) if is(w, "VERBOSE") => {}
            Token::Punct(b'(') if options => {
                // Option list: `ANALYZE` anywhere in it counts, even `ANALYZE false` (safe side).
                let mut depth = 1usize;
                while depth > 0 {
                    match lexer.next_token() {
                        Token::Punct(b'(') => depth += 1,
                        Token::Punct(b')') => depth -= 1,
                        Token::Word(w) if is(w, "ANALYZE") || is(w, "ANALYSE") => analyze = true,
                        Token::End | Token::Opaque => return Explain::PlansOnly(Outcome::Write),
                        _ => {}
                    }
                }
            }
            _ => {
                *lexer = checkpoint;
                break;
            }
        }
    }
    if analyze {
        return Explain::Runs;
    }
    // Planning only: nothing runs. Skip to the end of the statement, unless something in it
    // may end it elsewhere.
    loop {
        match lexer.next_token() {
            Token::Opaque => return Explain::PlansOnly(Outcome::Write),
            Token::End => return Explain::PlansOnly(Outcome::Read { end_of_input: true }),
            Token::Punct(b';') => {
                return Explain::PlansOnly(Outcome::Read {
                    end_of_input: false,
                })
            }
            _ => {}
        }
    }
}

/// Scans the rest of a statement that started like a read, looking for anything that writes.
/// `show`: a `SHOW` statement (MariaDB's `SHOW WARNINGS` and the like are the session's).
fn scan_read_body(lexer: &mut Lexer<'_>, show: bool) -> Outcome {
    let mariadb = lexer.mariadb();
    let mut prev = Token::End;
    loop {
        let token = lexer.next_token();
        match token {
            Token::End => return Outcome::Read { end_of_input: true },
            Token::Punct(b';') => {
                return Outcome::Read {
                    end_of_input: false,
                }
            }
            // A quoted function name is still a call: `"nextval"('s')`.
            Token::Quoted(w) if writes_when_called(w, mariadb) => return Outcome::Write,
            Token::Opaque => return Outcome::Write,
            Token::Word(w) => {
                if matches!(prev, Token::Word(p) if is(p, "FOR"))
                    && (is(w, "UPDATE") || is(w, "SHARE") || is(w, "NO") || is(w, "KEY"))
                {
                    return Outcome::Write;
                }
                if is(w, "INSERT")
                    || is(w, "UPDATE")
                    || is(w, "DELETE")
                    || is(w, "MERGE")
                    || is(w, "INTO")
                    || writes_when_called(w, mariadb)
                    || (mariadb && mariadb::writes_after(prev, w))
                    || (mariadb && show && mariadb::session_show(w))
                {
                    return Outcome::Write;
                }
            }
            // `@v := 1` assigns a user variable: the session's state, the master's.
            Token::Punct(b'=') if mariadb && prev == Token::Punct(b':') => return Outcome::Write,
            _ => {}
        }
        prev = token;
    }
}

fn starts_statement(w: &[u8]) -> bool {
    [
        "SELECT", "WITH", "VALUES", "TABLE", "INSERT", "UPDATE", "DELETE", "MERGE",
    ]
    .iter()
    .any(|k| is(w, k))
}

/// Functions that write, take locks a standby cannot grant, or that a standby refuses.
/// Matching the name alone (not only calls) errs on the safe side.
fn writes_when_called(w: &[u8], mariadb: bool) -> bool {
    if mariadb {
        return mariadb::writes_when_called(w);
    }
    const EXACT: [&str; 15] = [
        "NEXTVAL",
        "SETVAL",
        // Depend on this session's `nextval`, which ran on the master.
        "CURRVAL",
        "LASTVAL",
        "PG_NOTIFY",
        "TXID_CURRENT",
        "PG_CURRENT_XACT_ID",
        "PG_SWITCH_WAL",
        "PG_CREATE_RESTORE_POINT",
        "SET_CONFIG",
        "PG_LOGICAL_EMIT_MESSAGE",
        "PG_PROMOTE",
        "PG_WAL_REPLAY_PAUSE",
        "PG_WAL_REPLAY_RESUME",
        "DBLINK_EXEC",
    ];
    if EXACT.iter().any(|name| is(w, name))
        || STANDBY_REFUSES.iter().any(|name| is(w, name))
        || WRONG_SERVER.iter().any(|name| is(w, name))
    {
        return true;
    }
    starts_with_ci(w, b"PG_ADVISORY_")
        || starts_with_ci(w, b"PG_TRY_ADVISORY_")
        || starts_with_ci(w, b"LO_")
        || starts_with_ci(w, b"PG_CURRENT_WAL_")
        || starts_with_ci(w, b"PG_STAT_RESET")
        || starts_with_ci(w, b"PG_REPLICATION_ORIGIN_")
        || starts_with_ci(w, b"PG_CREATE_")
        || starts_with_ci(w, b"PG_DROP_REPLICATION_SLOT")
}

/// Built-in functions of PostgreSQL 15 that a hot standby refuses ("recovery is in
/// progress", "cannot execute ... during recovery", a read-only transaction), besides those
/// matched above. Derived, not remembered: `pindb-testkit/tests/standby_refusals.rs` calls
/// every volatile function of `pg_catalog` on a standby of the dev cluster and fails when
/// one it refuses is not a write here; this table is what that test found.
pub(crate) const STANDBY_REFUSES: &[&str] = &[
    "BRIN_DESUMMARIZE_RANGE",
    "BRIN_SUMMARIZE_NEW_VALUES",
    "BRIN_SUMMARIZE_RANGE",
    "GIN_CLEAN_PENDING_LIST",
    "PG_IMPORT_SYSTEM_COLLATIONS",
];

/// Functions a standby runs, but on the wrong server: they act on the standby's sessions,
/// configuration or statistics, not the primary's.
const WRONG_SERVER: &[&str] = &[
    "PG_TERMINATE_BACKEND",
    "PG_CANCEL_BACKEND",
    "PG_RELOAD_CONF",
    "PG_ROTATE_LOGFILE",
    "PG_LOG_BACKEND_MEMORY_CONTEXTS",
];

/// Whether `sql` names any of `names` (lowercase, no schema) as an identifier, outside
/// literals and comments; a `U&"..."` identifier may spell any of them, so it counts too.
/// For the configured `write_functions` / `write_relations`.
pub(crate) fn mentions(dialect: Dialect, sql: &str, names: &[Box<str>]) -> bool {
    if names.is_empty() {
        return false;
    }
    match dialect {
        Dialect::Postgres => mentions_with(Lexer::new(sql.as_bytes()), names),
        Dialect::MariaDb => mariadb_readings(sql)
            .any(|syntax| mentions_with(Lexer::with(sql.as_bytes(), syntax), names)),
    }
}

fn mentions_with(mut lexer: Lexer<'_>, names: &[Box<str>]) -> bool {
    loop {
        match lexer.next_token() {
            Token::End => return false,
            Token::Word(w) | Token::Quoted(w)
                if names.iter().any(|n| w.eq_ignore_ascii_case(n.as_bytes())) =>
            {
                return true
            }
            Token::Opaque => return true,
            _ => {}
        }
    }
}

fn is(word: &[u8], keyword: &str) -> bool {
    word.eq_ignore_ascii_case(keyword.as_bytes())
}

fn starts_with_ci(word: &[u8], prefix: &[u8]) -> bool {
    word.len() >= prefix.len() && word[..prefix.len()].eq_ignore_ascii_case(prefix)
}

#[cfg(test)]
mod tests;
