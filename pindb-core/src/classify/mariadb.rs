//! What writes in MariaDB's SQL beyond what PostgreSQL's does: its sequences, locks and
//! session-bound functions, and the clauses `LOCK IN SHARE MODE`, `NEXT VALUE FOR`,
//! `SQL_CALC_FOUND_ROWS`.

use super::is;
use super::lexer::Token;

/// Functions a replica must not run for the application: they write (sequences), take
/// locks only the master's session should hold, or read the state of the session's last
/// statement, which ran on the master. Matching the name alone errs on the safe side.
pub(super) fn writes_when_called(w: &[u8]) -> bool {
    const EXACT: [&str; 13] = [
        "NEXTVAL",
        "SETVAL",
        "LASTVAL",
        // `s.currval` (Oracle mode): the session's last value, like `LASTVAL`.
        "CURRVAL",
        "GET_LOCK",
        "RELEASE_LOCK",
        "RELEASE_ALL_LOCKS",
        "IS_FREE_LOCK",
        "IS_USED_LOCK",
        "LAST_INSERT_ID",
        "ROW_COUNT",
        "FOUND_ROWS",
        // Asks for the count a following `FOUND_ROWS()` reads on the same session.
        "SQL_CALC_FOUND_ROWS",
    ];
    EXACT.iter().any(|name| is(w, name)) || REPLICA_REFUSES.iter().any(|name| is(w, name))
}

/// Two-word forms: `NEXT VALUE FOR s`, `PREVIOUS VALUE FOR s` (a sequence's next value, the
/// session's last one) and `LOCK IN SHARE MODE` (a locking read).
pub(super) fn writes_after(prev: Token<'_>, w: &[u8]) -> bool {
    let Token::Word(prev) = prev else {
        return false;
    };
    (is(w, "VALUE") && (is(prev, "NEXT") || is(prev, "PREVIOUS")))
        || (is(w, "IN") && is(prev, "LOCK"))
}

/// What a `SHOW` statement shows of the session's own last statements (`SHOW WARNINGS`,
/// `SHOW ERRORS`, `SHOW COUNT(*) WARNINGS`, `SHOW PROFILE(S)`): they ran on the master.
pub(super) fn session_show(w: &[u8]) -> bool {
    ["WARNINGS", "ERRORS", "PROFILE", "PROFILES"]
        .iter()
        .any(|k| is(w, k))
}

/// Built-in functions of MariaDB 10.11 that a `read_only` replica refuses to a user without
/// `READ ONLY ADMIN`, besides those matched above. Derived, not remembered:
/// `pindb-testkit/tests/mariadb_refusals.rs` calls every built-in function on a replica of
/// the dev cluster and fails when one it refuses is not a write here.
pub(crate) const REPLICA_REFUSES: &[&str] = &[];
