//! The classifier's lexer: SQL text to tokens (words, quoted identifiers, punctuation), with
//! literals, dollar quotes and nested comments skipped. Byte by byte, no allocation, no
//! recursion.

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

#[derive(Clone)]
pub(super) struct Lexer<'a> {
    src: &'a [u8],
    pub(super) pos: usize,
}

impl<'a> Lexer<'a> {
    pub(super) fn new(src: &'a [u8]) -> Self {
        Lexer { src, pos: 0 }
    }

    fn peek(&self, offset: usize) -> Option<u8> {
        self.src.get(self.pos + offset).copied()
    }

    pub(super) fn next_token(&mut self) -> Token<'a> {
        self.skip_trivia();
        let Some(c) = self.peek(0) else {
            return Token::End;
        };
        match c {
            b'\'' => {
                self.pos += 1;
                self.skip_quoted(b'\'', false);
                Token::Other
            }
            b'"' => {
                let start = self.pos + 1;
                self.pos = start;
                self.skip_quoted(b'"', false);
                let end = self.pos.saturating_sub(1).max(start);
                Token::Quoted(&self.src[start..end])
            }
            b'$' => {
                self.dollar();
                Token::Other
            }
            c if is_ident_start(c) => {
                let start = self.pos;
                while self.peek(0).is_some_and(is_ident_continue) {
                    self.pos += 1;
                }
                let word = &self.src[start..self.pos];
                // E'..' (backslash escapes), and B'', X'', U&'', N'' literals.
                if self.peek(0) == Some(b'\'') && word.len() == 1 {
                    self.pos += 1;
                    self.skip_quoted(b'\'', word.eq_ignore_ascii_case(b"e"));
                    return Token::Other;
                }
                if word.eq_ignore_ascii_case(b"u") && self.peek(0) == Some(b'&') {
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

    fn skip_trivia(&mut self) {
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
                            (None, _) => return,
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
                _ => return,
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
