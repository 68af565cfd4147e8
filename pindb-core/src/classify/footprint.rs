//! A read's footprint: the relations it names and the functions it calls. It decides whether
//! a replica that carries only some tables (a logical replica) can run the read.
//!
//! Like the classifier, it errs on the safe side: a name it cannot place (a CTE,
//! `EXTRACT(.. FROM col)` in an unusual spelling) counts as one more relation, which a
//! partial replica does not carry, so the read goes where every table is. Byte by byte, no
//! recursion; parenthesis depth lives in a `Vec` bounded by the input.

use super::is;
use super::lexer::{Lexer, Token};

/// The relations a read names and the functions it calls, by pindb's classifier.
///
/// Names are as PostgreSQL resolves them: unquoted ones lowercased, quoted ones as written,
/// `schema.table` when the SQL qualifies them. A relation is anything after `FROM`, `JOIN`,
/// a comma of a `FROM` list or `TABLE`, also inside parentheses: tables, views and CTE names
/// alike (a CTE is not told apart from a table of that name, so a read through one runs only
/// where every table is). Functions include the last part of every `a.b` outside `FROM`
/// (`row.fn` calls `fn`).
///
/// ```
/// use pindb_core::adapter::Footprint;
///
/// let f = Footprint::of_sql(
///     "SELECT count(*) FROM (logical.notes n INNER JOIN \"Audit\" a ON a.id = n.id), extra",
/// )
/// .unwrap();
/// assert_eq!(f.relations().collect::<Vec<_>>(), ["logical.notes", "Audit", "extra"]);
/// assert_eq!(f.functions().collect::<Vec<_>>(), ["count", "id"]);
/// assert!(Footprint::of_sql("SELECT * FROM generate_series(1, 3)").is_none(), "a function in FROM");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Footprint {
    relations: Vec<Box<str>>,
    functions: Vec<Box<str>>,
}

impl Footprint {
    /// The footprint of a read, or `None` when it cannot be told: a set-returning function in
    /// `FROM` (it may read anything), a built-in that runs SQL text (`query_to_xml`,
    /// `ts_stat`...), a `U&"..."` identifier, unbalanced parentheses, more than 1024 names, a
    /// statement that does not start like a read.
    pub fn of_sql(sql: &str) -> Option<Footprint> {
        footprint(sql)
    }

    /// The relations it names, in order of first appearance.
    pub fn relations(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.relations.iter().map(|r| &**r)
    }

    /// The functions it calls (lowercase, without schema), in order of first appearance.
    pub fn functions(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.functions.iter().map(|f| &**f)
    }
}

/// Words after which a `(` is syntax, not a function call.
const NOT_CALLS: &[&str] = &[
    "AS",
    "IN",
    "EXISTS",
    "ANY",
    "ALL",
    "SOME",
    "VALUES",
    "OVER",
    "FILTER",
    "USING",
    "ON",
    "AND",
    "OR",
    "NOT",
    "WHERE",
    "SELECT",
    "FROM",
    "JOIN",
    "LATERAL",
    "BY",
    "WITHIN",
    "ARRAY",
    "ROW",
    "MATERIALIZED",
    "THEN",
    "ELSE",
    "WHEN",
    "CASE",
    "HAVING",
    "IS",
    "LIKE",
    "BETWEEN",
    "CAST",
];

/// Functions whose `FROM` is part of their own syntax, not a table list.
const FROM_IN_SYNTAX: &[&str] = &["EXTRACT", "SUBSTRING", "TRIM", "OVERLAY", "POSITION"];

/// Words that end a `FROM` list at their depth.
const ENDS_FROM: &[&str] = &[
    "WHERE",
    "GROUP",
    "HAVING",
    "WINDOW",
    "ORDER",
    "LIMIT",
    "OFFSET",
    "FETCH",
    "FOR",
    "UNION",
    "INTERSECT",
    "EXCEPT",
    "RETURNING",
    "SELECT",
];

/// One level of parentheses: whether a `FROM` list is open at it, and whether `FROM` is a
/// function's own syntax there (`EXTRACT(epoch FROM t)`).
#[derive(Clone, Copy, Default)]
struct Level {
    in_from: bool,
    from_is_syntax: bool,
}

/// More names than this and the footprint is not worked out (`None`): the lists are
/// searched linearly, and such statements are rare.
const MAX_NAMES: usize = 1024;

/// Built-in functions that run SQL text, or read elsewhere: what they read cannot be seen.
fn reads_unseen(call: &str) -> bool {
    [
        "query_to_xml",
        "table_to_xml",
        "schema_to_xml",
        "database_to_xml",
        "cursor_to_xml",
    ]
    .iter()
    .any(|p| call.starts_with(p))
        || ["ts_stat", "ts_rewrite", "dblink"].contains(&call)
}

fn footprint(sql: &str) -> Option<Footprint> {
    let mut lexer = Lexer::new(sql.as_bytes());
    let mut out = Footprint::default();
    let mut levels = vec![Level::default()];
    let mut expect_relation = false;
    // The last token: `word (` is a call, `. word` may be one (`row.fn` notation).
    let mut prev = Token::End;
    let mut statement_start = true;
    loop {
        if out.relations.len() + out.functions.len() > MAX_NAMES {
            return None;
        }
        let token = lexer.next_token();
        if statement_start {
            match token {
                Token::Punct(b'(') => {}
                Token::Word(w)
                    if ["SELECT", "WITH", "VALUES", "TABLE"]
                        .iter()
                        .any(|k| is(w, k)) =>
                {
                    statement_start = false;
                    expect_relation = is(w, "TABLE");
                    prev = token;
                    continue;
                }
                Token::End if !out.relations.is_empty() || !out.functions.is_empty() => break,
                _ => return None,
            }
        }
        match token {
            Token::End => break,
            Token::Opaque => return None,
            Token::Punct(b';') => {
                if levels.len() != 1 {
                    return None;
                }
                levels[0] = Level::default();
                expect_relation = false;
                statement_start = true;
            }
            Token::Punct(b'(') if expect_relation => {
                // After FROM, JOIN, ONLY or a comma: a subquery, or a parenthesized join
                // (diesel writes `FROM (a INNER JOIN b ON ..)`) whose tables count.
                let mut peek = lexer.clone();
                let subquery = matches!(peek.next_token(), Token::Word(w)
                    if ["SELECT", "WITH", "VALUES", "TABLE"].iter().any(|k| is(w, k)));
                levels.push(Level {
                    in_from: !subquery,
                    from_is_syntax: false,
                });
                expect_relation = !subquery;
            }
            Token::Punct(b'(') => {
                let syntax =
                    matches!(prev, Token::Word(w) if FROM_IN_SYNTAX.iter().any(|k| is(w, k)));
                if let Token::Word(w) | Token::Quoted(w) = prev {
                    let keyword =
                        matches!(prev, Token::Word(_)) && NOT_CALLS.iter().any(|k| is(w, k));
                    if !keyword {
                        let call = lower(w);
                        if reads_unseen(&call) {
                            return None;
                        }
                        push(&mut out.functions, call);
                    }
                }
                levels.push(Level {
                    in_from: false,
                    from_is_syntax: syntax,
                });
            }
            Token::Punct(b')') => {
                levels.pop();
                if levels.is_empty() {
                    return None;
                }
                expect_relation = false;
            }
            Token::Punct(b',') => expect_relation = levels.last().is_some_and(|l| l.in_from),
            Token::Word(w) | Token::Quoted(w) if expect_relation => {
                if matches!(token, Token::Word(_)) && (is(w, "ONLY") || is(w, "LATERAL")) {
                    prev = token;
                    continue;
                }
                let mut name = normal(token, w);
                // `schema.table` (or `db.schema.table`: the last two parts).
                let mut checkpoint = lexer.pos;
                let mut parts = 1;
                while lexer.next_token() == Token::Punct(b'.') {
                    match lexer.next_token() {
                        t @ (Token::Word(p) | Token::Quoted(p)) => {
                            let part = normal(t, p);
                            name = match parts {
                                1 => format!("{name}.{part}").into(),
                                _ => format!("{}.{part}", name.rsplit('.').next().unwrap_or(""))
                                    .into(),
                            };
                            parts += 1;
                        }
                        _ => return None,
                    }
                    checkpoint = lexer.pos;
                }
                lexer.pos = checkpoint;
                let mut peek = lexer.clone();
                if peek.next_token() == Token::Punct(b'(') {
                    // A function in FROM: it may read any table.
                    return None;
                }
                push(&mut out.relations, name);
                expect_relation = false;
                prev = Token::Other;
                continue;
            }
            Token::Word(w) | Token::Quoted(w) if prev == Token::Punct(b'.') => {
                // `row.fn`: a function called with attribute notation, or a column.
                push(&mut out.functions, lower(w));
            }
            Token::Word(w) => {
                let level = levels.last_mut()?;
                if (is(w, "FROM") && !level.from_is_syntax) || is(w, "JOIN") || is(w, "TABLE") {
                    level.in_from |= !is(w, "TABLE");
                    expect_relation = true;
                } else if ENDS_FROM.iter().any(|k| is(w, k)) {
                    level.in_from = false;
                }
            }
            _ => expect_relation = false,
        }
        prev = token;
    }
    if levels.len() != 1 {
        return None;
    }
    Some(out)
}

fn push(list: &mut Vec<Box<str>>, name: Box<str>) {
    if !list.contains(&name) {
        list.push(name);
    }
}

fn lower(w: &[u8]) -> Box<str> {
    String::from_utf8_lossy(w).to_ascii_lowercase().into()
}

/// How PostgreSQL sees an identifier: unquoted folded to lowercase, quoted as written.
fn normal(token: Token<'_>, w: &[u8]) -> Box<str> {
    match token {
        Token::Quoted(_) => String::from_utf8_lossy(w).replace("\"\"", "\"").into(),
        _ => lower(w),
    }
}
