//! A fast reader for the plain subset of YAML that large policies are written in.
//!
//! serde-saphyr (through its parser, granit) reads about 40 MB/s of policy here: a 21 MB
//! policy took four times as long to read as the same policy in JSON, most of it in the
//! parser's own token and event copies. Large policies are machine-written, and they use a
//! small part of YAML: block mappings and sequences by indentation, one-line flow collections
//! (`{ cidrs: [10.0.0.0/8] }`), plain and quoted one-line scalars, comments. This module reads
//! exactly that part, straight into the same [`Node`] tree, at the JSON reader's speed.
//!
//! It never decides anything on its own: whatever it does not recognise with certainty (an
//! anchor, a tag, a multi-line scalar, an escape, a tab, a non-ASCII byte, a scalar that could
//! be a boolean or a float, a duplicate key, a limit reached, and every syntax error) makes
//! it give up, and the document is read again by serde-saphyr, which then decides alone,
//! with its own messages. What it does accept, it reads to the very tree serde-saphyr builds,
//! positions included (tested against it on every test document and on random ones).
use super::tree::{Gather, KeySet, Limits, Node, Pos, Text, Value};

/// The tree of `text`, or `None` when `text` is not entirely within the subset (or holds a
/// mistake): then serde-saphyr must read it.
pub(crate) fn read(text: &str, limits: Limits) -> Option<Node<'_>> {
    let bytes = text.as_bytes();
    // Columns count characters, which are bytes only in ASCII; tabs and CR have rules of
    // their own in YAML.
    if !text.is_ascii() || bytes.contains(&b'\t') || bytes.contains(&b'\r') {
        return None;
    }
    let mut r = Reader {
        text,
        b: bytes,
        i: 0,
        line: 1,
        line_start: 0,
        values: 0,
        limits,
        items: Vec::new(),
        entries: Vec::new(),
    };
    // The document is a block mapping starting in column 1.
    if r.next_content()? != 0 {
        return None;
    }
    let root = r.block_map(0, 0)?;
    match r.next_content() {
        None => Some(root),
        Some(_) => None,
    }
}

/// Where a scalar is: block context ends it at the end of the line, flow context also at
/// `,`, `]` and `}`.
#[derive(Clone, Copy, PartialEq)]
enum Ctx {
    Block,
    Flow,
}

struct Reader<'a> {
    text: &'a str,
    b: &'a [u8],
    i: usize,
    /// The line `i` is on (1-based) and where that line starts.
    line: u32,
    line_start: usize,
    values: usize,
    limits: Limits,
    /// The children of the collections being read (see [`Gather`]).
    items: Vec<Node<'a>>,
    entries: Vec<(Node<'a>, Node<'a>)>,
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn at(&self, k: usize) -> Option<u8> {
        self.b.get(self.i + k).copied()
    }

    fn pos(&self) -> Pos {
        Pos { line: self.line, col: u32::try_from(self.i - self.line_start + 1).unwrap_or(u32::MAX) }
    }

    /// Counts one more value; `None` beyond the limit (serde-saphyr then says so).
    fn count(&mut self) -> Option<()> {
        self.values += 1;
        (self.values <= self.limits.values).then_some(())
    }

    /// A collection inside `depth` others may start (one level to spare: the exact limit is
    /// serde-saphyr's to report).
    fn may_nest(&self, depth: usize) -> Option<()> {
        (depth + 1 < self.limits.depth).then_some(())
    }

    fn skip_spaces(&mut self) -> usize {
        let from = self.i;
        while self.peek() == Some(b' ') {
            self.i += 1;
        }
        self.i - from
    }

    fn newline(&mut self) {
        self.i += 1;
        self.line += 1;
        self.line_start = self.i;
    }

    /// Moves to the first character of the next line with content (past blank lines and
    /// comment lines) and returns its indentation; `None` at the end of the text. Called on
    /// that character already, it stays there.
    fn next_content(&mut self) -> Option<usize> {
        loop {
            self.skip_spaces();
            match self.peek() {
                None => return None,
                Some(b'\n') => self.newline(),
                Some(b'#') => {
                    self.skip_comment();
                    if self.peek().is_some() {
                        self.newline();
                    }
                }
                Some(_) => return Some(self.i - self.line_start),
            }
        }
    }

    fn skip_comment(&mut self) {
        while let Some(b) = self.peek()
            && b != b'\n'
        {
            self.i += 1;
        }
    }

    /// The rest of a line after its value: spaces, a comment after a space, the line break.
    fn end_line(&mut self) -> Option<()> {
        let spaces = self.skip_spaces();
        match self.peek() {
            None => return Some(()),
            Some(b'\n') => {}
            Some(b'#') if spaces > 0 => self.skip_comment(),
            Some(_) => return None,
        }
        if self.peek() == Some(b'\n') {
            self.newline();
        }
        Some(())
    }

    /// At a `:` that ends an implicit key.
    fn at_colon(&self) -> bool {
        self.peek() == Some(b':') && matches!(self.at(1), None | Some(b' ' | b'\n'))
    }

    /// After a scalar: moves to the `:` that makes it a key, if one follows (after spaces).
    fn key_colon(&mut self) -> bool {
        let scalar_end = self.i;
        self.skip_spaces();
        if !self.at_colon() {
            self.i = scalar_end;
        }
        self.at_colon()
    }

    /// A block mapping whose keys are in column `indent + 1`, at its first key.
    fn block_map(&mut self, indent: usize, depth: usize) -> Option<Node<'a>> {
        self.may_nest(depth)?;
        let pos = self.pos();
        self.count()?;
        let mut entries = Gather::new(&self.entries);
        let mut keys = KeySet::new();
        loop {
            let key = self.scalar(Ctx::Block)?;
            let Value::Str(name) = &key.value else {
                return None;
            };
            if !self.key_colon() || keys.seen(name, entries.items(&self.entries)) {
                return None;
            }
            self.i += 1;
            let value = self.map_value(indent, depth + 1)?;
            entries.push(&mut self.entries, (key, value));
            match self.next_content() {
                None => break,
                Some(n) if n == indent => {}
                Some(n) if n < indent => break,
                Some(_) => return None,
            }
        }
        Some(Node { pos, value: Value::Map(entries.finish(&mut self.entries)) })
    }

    /// After the `:` of a key of a mapping in column `indent + 1`.
    fn map_value(&mut self, indent: usize, depth: usize) -> Option<Node<'a>> {
        let spaces = self.skip_spaces();
        match self.peek() {
            None | Some(b'\n') => {}
            Some(b'#') if spaces > 0 => {}
            Some(_) => {
                let v = self.inline(depth)?;
                self.end_line()?;
                return Some(v);
            }
        }
        // The value is on the lines below (an empty one, null, is left to serde-saphyr).
        self.end_line()?;
        let n = self.next_content()?;
        let dash = self.peek() == Some(b'-') && self.at(1) == Some(b' ');
        match (n.cmp(&indent), dash) {
            (std::cmp::Ordering::Greater, true) => self.block_seq(n, depth, false),
            (std::cmp::Ordering::Greater, false) => self.block_map(n, depth),
            // A sequence may stand in the column of its mapping's keys.
            (std::cmp::Ordering::Equal, true) => self.block_seq(n, depth, true),
            _ => None,
        }
    }

    /// A block sequence whose `-` are in column `indent + 1`, at its first `-`. `compact`: it
    /// is the value of a key in the same column, so a line there without `-` ends it.
    fn block_seq(&mut self, indent: usize, depth: usize, compact: bool) -> Option<Node<'a>> {
        self.may_nest(depth)?;
        self.count()?;
        // serde-saphyr places a block sequence at its first `-`, or at its first item when
        // the sequence stands in its key's column.
        let (dash, mut pos) = (self.pos(), None);
        let mut items = Gather::new(&self.items);
        loop {
            if self.at(1) != Some(b' ') {
                return None;
            }
            self.i += 2;
            self.skip_spaces();
            let here = self.pos();
            let item = match self.peek() {
                Some(b'[' | b'{') => {
                    let v = self.inline(depth + 1)?;
                    self.end_line()?;
                    v
                }
                None | Some(b'\n' | b'#') => return None,
                Some(b'-') if matches!(self.at(1), None | Some(b' ' | b'\n')) => return None,
                Some(_) => {
                    // `- key: value` starts a mapping in this column.
                    let (start, values) = (self.i, self.values);
                    let v = self.scalar(Ctx::Block)?;
                    if self.key_colon() {
                        (self.i, self.values) = (start, values);
                        let column = self.i - self.line_start;
                        self.block_map(column, depth + 1)?
                    } else {
                        self.end_line()?;
                        v
                    }
                }
            };
            pos.get_or_insert(if compact { here } else { dash });
            items.push(&mut self.items, item);
            match self.next_content() {
                None => break,
                Some(n) if n == indent && self.peek() == Some(b'-') => {}
                Some(n) if n < indent || (n == indent && compact) => break,
                Some(_) => return None,
            }
        }
        Some(Node { pos: pos?, value: Value::Seq(items.finish(&mut self.items)) })
    }

    /// A value written on the line it starts on: a flow collection or a scalar.
    fn inline(&mut self, depth: usize) -> Option<Node<'a>> {
        match self.peek()? {
            b'[' => self.flow_seq(depth),
            b'{' => self.flow_map(depth),
            _ => self.scalar(Ctx::Block),
        }
    }

    /// `[a, b]`, on one line.
    fn flow_seq(&mut self, depth: usize) -> Option<Node<'a>> {
        self.may_nest(depth)?;
        let pos = self.pos();
        self.count()?;
        self.i += 1;
        let mut items = Gather::new(&self.items);
        self.skip_spaces();
        if self.peek() == Some(b']') {
            self.i += 1;
        } else {
            loop {
                let item = self.flow_node(depth + 1)?;
                items.push(&mut self.items, item);
                self.skip_spaces();
                match self.peek()? {
                    b',' => {
                        self.i += 1;
                        self.skip_spaces();
                    }
                    b']' => {
                        self.i += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        Some(Node { pos, value: Value::Seq(items.finish(&mut self.items)) })
    }

    /// `{ a: 1, b: [x] }`, on one line.
    fn flow_map(&mut self, depth: usize) -> Option<Node<'a>> {
        self.may_nest(depth)?;
        let pos = self.pos();
        self.count()?;
        self.i += 1;
        let mut entries = Gather::new(&self.entries);
        let mut keys = KeySet::new();
        self.skip_spaces();
        if self.peek() == Some(b'}') {
            self.i += 1;
        } else {
            loop {
                let key = self.scalar(Ctx::Flow)?;
                let Value::Str(name) = &key.value else {
                    return None;
                };
                self.skip_spaces();
                if self.peek() != Some(b':')
                    || self.at(1) != Some(b' ')
                    || keys.seen(name, entries.items(&self.entries))
                {
                    return None;
                }
                self.i += 1;
                self.skip_spaces();
                let value = self.flow_node(depth + 1)?;
                entries.push(&mut self.entries, (key, value));
                self.skip_spaces();
                match self.peek()? {
                    b',' => {
                        self.i += 1;
                        self.skip_spaces();
                    }
                    b'}' => {
                        self.i += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        Some(Node { pos, value: Value::Map(entries.finish(&mut self.entries)) })
    }

    fn flow_node(&mut self, depth: usize) -> Option<Node<'a>> {
        match self.peek()? {
            b'[' => self.flow_seq(depth),
            b'{' => self.flow_map(depth),
            _ => self.scalar(Ctx::Flow),
        }
    }

    /// A one-line scalar: quoted without escapes, or plain.
    fn scalar(&mut self, ctx: Ctx) -> Option<Node<'a>> {
        let pos = self.pos();
        self.count()?;
        let value = match self.peek()? {
            q @ (b'"' | b'\'') => {
                let start = self.i + 1;
                let len = self.b[start..].iter().position(|&c| c == q || c == b'\n' || c == b'\\')?;
                let end = start + len;
                // Escapes (a backslash in double quotes, `''` in single ones) are left to
                // serde-saphyr, and so is a backslash in single quotes, where it is text.
                if self.b[end] != q || (q == b'\'' && self.b.get(end + 1) == Some(&b'\'')) {
                    return None;
                }
                self.i = end + 1;
                Value::Str(Text::Borrowed(&self.text[start..end]))
            }
            _ => {
                let start = self.i;
                let end = self.plain_end(ctx)?;
                self.i = end;
                let mut trimmed = end;
                while trimmed > start && self.b[trimmed - 1] == b' ' {
                    trimmed -= 1;
                }
                plain_value(&self.text[start..trimmed])?
            }
        };
        Some(Node { pos, value })
    }

    /// Where the plain scalar at `i` ends (its trailing spaces included), or `None` for a
    /// character outside the subset.
    fn plain_end(&self, ctx: Ctx) -> Option<usize> {
        let b = self.b;
        let mut j = self.i;
        match b.get(j)? {
            c if c.is_ascii_alphanumeric() || *c == b'_' => {}
            b'-' if b.get(j + 1).is_some_and(u8::is_ascii_digit) => {}
            _ => return None,
        }
        while let Some(&c) = b.get(j) {
            match c {
                c if c.is_ascii_alphanumeric() => {}
                b'.' | b'_' | b'/' | b'+' | b'-' => {}
                b' ' if b.get(j + 1) == Some(&b'#') => break,
                b' ' => {}
                b':' => match b.get(j + 1) {
                    None | Some(b' ' | b'\n') => break,
                    Some(b',' | b'[' | b']' | b'{' | b'}') => return None,
                    Some(_) => {}
                },
                b'\n' => break,
                b',' | b']' | b'}' if ctx == Ctx::Flow => break,
                _ => return None,
            }
            j += 1;
        }
        Some(j)
    }
}

/// What a plain scalar means, when that is certain: a decimal integer, or a string that no
/// YAML resolution could take for anything else; `None` otherwise.
fn plain_value(s: &str) -> Option<Value<'_>> {
    let b = s.as_bytes();
    let digits = b.strip_prefix(b"-").unwrap_or(b);
    if !digits.is_empty() && digits.iter().all(u8::is_ascii_digit) {
        // Leading zeros (octal in YAML 1.1, a string to some), -0 and what does not fit in
        // 64 bits have rules of their own.
        if digits.len() > 18 || (digits[0] == b'0' && (digits.len() > 1 || digits.len() < b.len())) {
            return None;
        }
        return s.parse::<i128>().ok().map(|v| Value::Int(v.into()));
    }
    match b.first()? {
        // A number never holds a `/`: 10.0.0.0/8, 443/tcp, 8000-8099/tcp.
        c if c.is_ascii_digit() && b.contains(&b'/') => {}
        c if c.is_ascii_alphabetic() || *c == b'_' => {
            // Booleans (YAML 1.1 and 1.2), null, and the float words Rust would parse.
            const WORDS: [&str; 12] =
                ["y", "n", "yes", "no", "true", "false", "on", "off", "null", "nan", "inf", "infinity"];
            if WORDS.iter().any(|w| s.eq_ignore_ascii_case(w)) {
                return None;
            }
        }
        _ => return None,
    }
    Some(Value::Str(Text::Borrowed(s)))
}

#[cfg(test)]
mod tests;
