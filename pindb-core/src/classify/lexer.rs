//! The classifier's lexer: SQL text to tokens (words, quoted identifiers, punctuation), with
//! literals and comments skipped, in PostgreSQL's or MariaDB's syntax. Byte by byte, no
//! allocation, no recursion.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Token<'a> {
    /// An unquoted identifier or keyword.
    Word(&'a [u8]),
    /// A single punctuation byte: `(`, `)`, `;`, `,` ...
    Punct(u8),
    /// A quoted identifier's text, without the quotes: never a keyword.
    Quoted(&'a [u8]),
    /// A literal, quoted identifier, number, parameter or operator: never a keyword.
    Other,
    /// A `U&"..."` identifier: it could name anything, so a read that contains one is not
    /// provably a read.
    Opaque,
    End,
}

/// Where the two syntaxes differ for the lexer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Syntax {
    /// Dollar quotes, `E'..'`, `U&".."`, nested comments, `--` always a comment.
    Postgres,
    /// Backticks, `#` comments, `-- ` only before a space, flat comments whose `/*! .. */` and
    /// `/*M! .. */` forms run, `@` variables. Whether `\` escapes in `'..'` and `".."` depends
    /// on the server's `sql_mode` (`NO_BACKSLASH_ESCAPES`; `ANSI_QUOTES` makes `".."` a name,
    /// where it never does), so the classifier reads a statement every way it can be meant.
    MariaDb {
        single_escapes: bool,
        double_escapes: bool,
    },
}

/// Session variables whose value belongs to the session's last statements (which ran on the
/// master): reading one on a replica reads another session's.
const SESSION_BOUND: [&str; 7] = [
    "LAST_INSERT_ID",
    "IDENTITY",
    "INSERT_ID",
    "LAST_GTID",
    "WARNING_COUNT",
    "ERROR_COUNT",
    "IN_TRANSACTION",
];

#[derive(Clone)]
pub(super) struct Lexer<'a> {
    src: &'a [u8],
    pub(super) pos: usize,
    syntax: Syntax,
    /// Inside `/*! .. */`: its `*/` ends it, its content is SQL.
    executable_comment: bool,
}

impl<'a> Lexer<'a> {
    pub(super) fn new(src: &'a [u8]) -> Self {
        Self::with(src, Syntax::Postgres)
    }

    pub(super) fn with(src: &'a [u8], syntax: Syntax) -> Self {
        Lexer {
            src,
            pos: 0,
            syntax,
            executable_comment: false,
        }
    }

    pub(super) fn mariadb(&self) -> bool {
        self.syntax != Syntax::Postgres
    }

    fn peek(&self, offset: usize) -> Option<u8> {
        self.src.get(self.pos + offset).copied()
    }

    pub(super) fn next_token(&mut self) -> Token<'a> {
        if self.skip_trivia() {
            return Token::Opaque;
        }
        let Some(c) = self.peek(0) else {
            return Token::End;
        };
        let (backslash, double_backslash) = match self.syntax {
            Syntax::MariaDb {
                single_escapes,
                double_escapes,
            } => (single_escapes, double_escapes),
            Syntax::Postgres => (false, false),
        };
        let mariadb = self.syntax != Syntax::Postgres;
        match c {
            b'\'' => {
                self.pos += 1;
                self.skip_quoted(b'\'', backslash);
                Token::Other
            }
            // MariaDB: `"` quotes a string, or an identifier under `ANSI_QUOTES`; as a quoted
            // name it is only ever matched against function names, which is safe either way
            // (how its escapes are read is a reading of its own, see `Syntax`).
            b'"' | b'`' if c == b'"' || mariadb => {
                let start = self.pos + 1;
                self.pos = start;
                self.skip_quoted(c, double_backslash && c == b'"');
                let end = self.pos.saturating_sub(1).max(start);
                Token::Quoted(&self.src[start..end])
            }
            b'$' if !mariadb => {
                self.dollar();
                Token::Other
            }
            b'@' if mariadb => self.variable(),
            c if is_ident_start(c) || (mariadb && c == b'$') => {
                let start = self.pos;
                while self.peek(0).is_some_and(is_ident_continue) {
                    self.pos += 1;
                }
                let word = &self.src[start..self.pos];
                // E'..' (backslash escapes), and B'', X'', U&'', N'' literals.
                if self.peek(0) == Some(b'\'') && word.len() == 1 {
                    self.pos += 1;
                    self.skip_quoted(
                        b'\'',
                        backslash || (!mariadb && word.eq_ignore_ascii_case(b"e")),
                    );
                    return Token::Other;
                }
                if !mariadb && word.eq_ignore_ascii_case(b"u") && self.peek(0) == Some(b'&') {
                    if let Some(q @ (b'\'' | b'"')) = self.peek(1) {
                        let start = self.pos + 2;
                        self.pos = start;
                        self.skip_quoted(q, false);
                        if q == b'\'' {
                            return Token::Other;
                        }
                        // `U&"nextv\0061l"`: escapes (and `UESCAPE`) can spell any name;
                        // not decoded, so never taken for a harmless one.
                        return Token::Opaque;
                    }
                }
                Token::Word(word)
            }
            // MariaDB: a name may start with a digit (`1st`), so a number ends where its digits,
            // fraction and exponent do, and what follows is read as a word of its own: a
            // keyword glued to a number is still seen.
            c if c.is_ascii_digit() && mariadb => {
                self.number();
                Token::Other
            }
            c if c.is_ascii_digit() => {
                while self
                    .peek(0)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'_')
                {
                    self.pos += 1;
                }
                Token::Other
            }
            c => {
                self.pos += 1;
                Token::Punct(c)
            }
        }
    }

    /// Skips whitespace and comments; `true` when what comes cannot be read for sure (see
    /// [`Lexer::skip_mariadb_trivia`]).
    fn skip_trivia(&mut self) -> bool {
        if self.syntax != Syntax::Postgres {
            return self.skip_mariadb_trivia();
        }
        loop {
            match (self.peek(0), self.peek(1)) {
                (Some(c), _) if c.is_ascii_whitespace() => self.pos += 1,
                (Some(b'-'), Some(b'-')) => {
                    while self.peek(0).is_some_and(|c| c != b'\n') {
                        self.pos += 1;
                    }
                }
                (Some(b'/'), Some(b'*')) => {
                    self.pos += 2;
                    let mut depth = 1usize;
                    while depth > 0 {
                        match (self.peek(0), self.peek(1)) {
                            (None, _) => return false,
                            (Some(b'/'), Some(b'*')) => {
                                depth += 1;
                                self.pos += 2;
                            }
                            (Some(b'*'), Some(b'/')) => {
                                depth -= 1;
                                self.pos += 2;
                            }
                            _ => self.pos += 1,
                        }
                    }
                }
                _ => return false,
            }
        }
    }

    /// MariaDB's comments: `#` and `-- ` (a space or control byte after the dashes: `1--1` is
    /// arithmetic) to the end of the line, and `/* .. */` to the first `*/` (they do not nest).
    /// `/*!` and `/*M!` open an executable comment: its content is read as SQL, since the
    /// server runs it. `true` (opaque, and past it) when the server may read it otherwise: a
    /// versioned one (`/*!80000`, which a server of another version skips), a comment opened
    /// inside an executable one.
    fn skip_mariadb_trivia(&mut self) -> bool {
        loop {
            match (self.peek(0), self.peek(1), self.peek(2)) {
                (Some(c), _, _) if c.is_ascii_whitespace() => self.pos += 1,
                (Some(b'#'), _, _) => self.skip_line(),
                (Some(b'-'), Some(b'-'), c) if c.is_none_or(|c| c <= b' ') => self.skip_line(),
                (Some(b'*'), Some(b'/'), _) if self.executable_comment => {
                    self.executable_comment = false;
                    self.pos += 2;
                }
                (Some(b'/'), Some(b'*'), _) if self.executable_comment => {
                    self.pos += 2;
                    return true;
                }
                (Some(b'/'), Some(b'*'), c) => {
                    let marker = match (c, self.peek(3)) {
                        (Some(b'!'), _) => Some(3),
                        (Some(b'M' | b'm'), Some(b'!')) => Some(4),
                        _ => None,
                    };
                    self.pos += marker.unwrap_or(2);
                    if marker.is_none() {
                        match self.src[self.pos..].windows(2).position(|w| w == b"*/") {
                            Some(i) => self.pos += i + 2,
                            None => self.pos = self.src.len(),
                        }
                        continue;
                    }
                    self.executable_comment = true;
                    // Versioned: whether it runs depends on the server's version (and 50700
                    // to 99999 never do), and a skipped one is a plain comment to its first
                    // `*/`: no single reading is sure.
                    if self.peek(0).is_some_and(|c| c.is_ascii_digit()) {
                        return true;
                    }
                }
                _ => return false,
            }
        }
    }

    /// MariaDB, at `@`: a user variable (`@v`, `@'v'`), which lives in a session (set on the
    /// master, it is not on a replica): opaque; or a system variable (`@@v`,
    /// `@@session.v`), harmless unless it belongs to the session's last statements.
    fn variable(&mut self) -> Token<'a> {
        self.pos += 1;
        if self.peek(0) != Some(b'@') {
            return Token::Opaque;
        }
        self.pos += 1;
        let mut name = self.word();
        for scope in ["SESSION", "GLOBAL", "LOCAL"] {
            if name.eq_ignore_ascii_case(scope.as_bytes()) && self.peek(0) == Some(b'.') {
                self.pos += 1;
                name = self.word();
            }
        }
        // A name quoted, spaced or missing (`@@`last_gtid``, `@@session . x`): not read.
        let plain = !name.is_empty()
            && !matches!(self.peek(0), Some(b'`' | b'.'))
            && !["SESSION", "GLOBAL", "LOCAL"]
                .iter()
                .any(|scope| name.eq_ignore_ascii_case(scope.as_bytes()));
        if !plain {
            return Token::Opaque;
        }
        match SESSION_BOUND
            .iter()
            .any(|v| name.eq_ignore_ascii_case(v.as_bytes()))
        {
            true => Token::Opaque,
            false => Token::Other,
        }
    }

    fn word(&mut self) -> &'a [u8] {
        let start = self.pos;
        while self.peek(0).is_some_and(is_ident_continue) {
            self.pos += 1;
        }
        &self.src[start..self.pos]
    }

    fn skip_line(&mut self) {
        while self.peek(0).is_some_and(|c| c != b'\n') {
            self.pos += 1;
        }
    }

    /// MariaDB: digits, an optional fraction and an optional exponent; hex (`0x1F`) and binary
    /// (`0b1`) literals end after their `0`, their rest read as a harmless word.
    fn number(&mut self) {
        let digits = |lexer: &mut Self| {
            while lexer.peek(0).is_some_and(|c| c.is_ascii_digit()) {
                lexer.pos += 1;
            }
        };
        digits(self);
        if self.peek(0) == Some(b'.') {
            self.pos += 1;
            digits(self);
        }
        if matches!(self.peek(0), Some(b'e' | b'E')) {
            let sign = usize::from(matches!(self.peek(1), Some(b'+' | b'-')));
            if self.peek(1 + sign).is_some_and(|c| c.is_ascii_digit()) {
                self.pos += 1 + sign;
                digits(self);
            }
        }
    }

    /// After the opening quote: skips to just past the closing one. A doubled quote is an
    /// escaped quote; with `backslash`, `\x` escapes any byte.
    fn skip_quoted(&mut self, quote: u8, backslash: bool) {
        while let Some(c) = self.peek(0) {
            self.pos += 1;
            if backslash && c == b'\\' {
                self.pos = (self.pos + 1).min(self.src.len());
            } else if c == quote {
                if self.peek(0) == Some(quote) {
                    self.pos += 1;
                } else {
                    return;
                }
            }
        }
    }

    /// At a `$`: a positional parameter (`$1`), or a dollar-quoted string (`$$..$$`, `$tag$..$tag$`).
    fn dollar(&mut self) {
        let start = self.pos;
        self.pos += 1;
        if self.peek(0).is_some_and(|c| c.is_ascii_digit()) {
            while self.peek(0).is_some_and(|c| c.is_ascii_digit()) {
                self.pos += 1;
            }
            return;
        }
        while self
            .peek(0)
            .is_some_and(|c| is_ident_continue(c) && c != b'$')
        {
            self.pos += 1;
        }
        if self.peek(0) != Some(b'$') {
            return; // a lone `$`: not valid SQL; treat as an operator byte.
        }
        self.pos += 1;
        let tag = &self.src[start..self.pos];
        let body = &self.src[self.pos..];
        match body.windows(tag.len()).position(|w| w == tag) {
            Some(i) => self.pos += i + tag.len(),
            None => self.pos = self.src.len(),
        }
    }
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_ident_continue(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}
