//! JSON -> [`Node`] tree: a strict reader that gives every node and every error its position
//! (what YAML would forgive, comments or trailing commas, is an error in JSON).

use std::borrow::Cow;

use super::diag::quote;
use super::tree::{Gather, KeySet, Limits, Node, Pos, SyntaxError, Text, Value};

/// Line and column of byte offsets met in increasing order, in time linear in the text.
pub(super) struct Cursor {
    offset: usize,
    pos: Pos,
}

impl Cursor {
    fn advance(&mut self, bytes: &[u8], to: usize) -> Pos {
        if to < self.offset {
            // Not expected; recount rather than report a wrong position.
            *self = Cursor { offset: 0, pos: Pos::START };
        }
        let (mut line, mut col) = (self.pos.line, self.pos.col);
        for &b in &bytes[self.offset..to] {
            if b == b'\n' {
                line = line.saturating_add(1);
                col = 1;
            } else if b & 0xc0 != 0x80 {
                // Not a UTF-8 continuation byte: one more character.
                col = col.saturating_add(1);
            }
        }
        self.offset = to;
        self.pos = Pos { line, col };
        self.pos
    }
}

/// Where a JSON reader stopped, and why (the whole message).
pub(super) struct JsonError {
    offset: usize,
    message: String,
}

/// A strict JSON reader (RFC 8259) building the tree with positions. Its syntax messages use
/// serde_json's wording; a syntax error is reported at the offending character (or at the
/// end of the text).
pub(super) struct JsonReader<'a> {
    text: &'a str,
    bytes: &'a [u8],
    i: usize,
    cursor: Cursor,
    values: usize,
    limits: Limits,
    /// The items of the lists being read, innermost last: each list is then allocated once,
    /// at its size.
    items: Vec<Node<'a>>,
    /// The same for the entries of mappings.
    entries: Vec<(Node<'a>, Node<'a>)>,
}

pub(super) type JsonResult<T> = Result<T, JsonError>;

impl<'a> JsonReader<'a> {
    pub(super) fn new(text: &'a str, limits: Limits) -> Self {
        JsonReader {
            text,
            bytes: text.as_bytes(),
            i: 0,
            cursor: Cursor { offset: 0, pos: Pos::START },
            values: 0,
            limits,
            items: Vec::new(),
            entries: Vec::new(),
        }
    }

    pub(super) fn read(mut self) -> Result<Node<'a>, SyntaxError> {
        let result = self.value(0).and_then(|root| {
            self.ws();
            if self.i < self.bytes.len() { Err(self.syntax(self.i, "trailing characters")) } else { Ok(root) }
        });
        result.map_err(|e| SyntaxError { pos: self.cursor.advance(self.bytes, e.offset), message: e.message })
    }

    fn syntax(&self, offset: usize, what: &str) -> JsonError {
        JsonError { offset, message: format!("invalid JSON: {what}") }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.i).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    /// Counts one more value starting at `offset`; returns its position.
    fn start_value(&mut self, offset: usize) -> JsonResult<Pos> {
        self.values += 1;
        if self.values > self.limits.values {
            return Err(JsonError { offset, message: self.limits.values_message() });
        }
        Ok(self.cursor.advance(self.bytes, offset))
    }

    /// A value, inside `depth` containers.
    fn value(&mut self, depth: usize) -> JsonResult<Node<'a>> {
        self.ws();
        let start = self.i;
        let Some(c) = self.peek() else {
            return Err(self.syntax(start, "EOF while parsing a value"));
        };
        if matches!(c, b'{' | b'[') && depth >= self.limits.depth {
            return Err(JsonError { offset: start, message: self.limits.depth_message() });
        }
        let pos = self.start_value(start)?;
        let value = match c {
            b'{' => self.object(depth + 1)?,
            b'[' => self.array(depth + 1)?,
            b'"' => Value::Str(self.string()?.into()),
            b'-' | b'0'..=b'9' => self.number()?,
            b't' => self.word("true", Value::Bool(true))?,
            b'f' => self.word("false", Value::Bool(false))?,
            b'n' => self.word("null", Value::Null)?,
            _ => return Err(self.syntax(start, "expected value")),
        };
        Ok(Node { pos, value })
    }

    fn word(&mut self, word: &str, value: Value<'a>) -> JsonResult<Value<'a>> {
        for &w in word.as_bytes() {
            match self.peek() {
                Some(b) if b == w => self.i += 1,
                Some(_) => return Err(self.syntax(self.i, "expected ident")),
                None => return Err(self.syntax(self.i, "EOF while parsing a value")),
            }
        }
        Ok(value)
    }

    /// At `{`.
    fn object(&mut self, depth: usize) -> JsonResult<Value<'a>> {
        const EOF: &str = "EOF while parsing an object";
        self.i += 1;
        let mut entries = Gather::new(&self.entries);
        // Duplicate keys are an error in a policy, as in YAML.
        let mut keys = KeySet::new();
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(Value::Map(Box::default()));
        }
        loop {
            self.ws();
            let start = self.i;
            match self.peek() {
                Some(b'"') => {}
                Some(_) => return Err(self.syntax(start, "key must be a string")),
                None => return Err(self.syntax(start, EOF)),
            }
            let pos = self.start_value(start)?;
            let key = Text::from(self.string()?);
            if keys.seen(&key, entries.items(&self.entries)) {
                return Err(JsonError { offset: start, message: format!("duplicate key {}", quote(&key)) });
            }
            let key_node = Node { pos, value: Value::Str(key) };
            self.ws();
            match self.peek() {
                Some(b':') => self.i += 1,
                Some(_) => return Err(self.syntax(self.i, "expected `:`")),
                None => return Err(self.syntax(self.i, EOF)),
            }
            let value = self.value(depth)?;
            entries.push(&mut self.entries, (key_node, value));
            self.ws();
            match self.peek() {
                Some(b',') => {
                    self.i += 1;
                    self.ws();
                    if self.peek() == Some(b'}') {
                        return Err(self.syntax(self.i, "trailing comma"));
                    }
                }
                Some(b'}') => {
                    self.i += 1;
                    return Ok(Value::Map(entries.finish(&mut self.entries)));
                }
                Some(_) => return Err(self.syntax(self.i, "expected `,` or `}`")),
                None => return Err(self.syntax(self.i, EOF)),
            }
        }
    }

    /// At `[`.
    fn array(&mut self, depth: usize) -> JsonResult<Value<'a>> {
        const EOF: &str = "EOF while parsing a list";
        self.i += 1;
        let mut items = Gather::new(&self.items);
        self.ws();
        match self.peek() {
            Some(b']') => {
                self.i += 1;
                return Ok(Value::Seq(Box::default()));
            }
            None => return Err(self.syntax(self.i, EOF)),
            Some(_) => {}
        }
        loop {
            let item = self.value(depth)?;
            items.push(&mut self.items, item);
            self.ws();
            match self.peek() {
                Some(b',') => {
                    self.i += 1;
                    self.ws();
                    if self.peek() == Some(b']') {
                        return Err(self.syntax(self.i, "trailing comma"));
                    }
                }
                Some(b']') => {
                    self.i += 1;
                    return Ok(Value::Seq(items.finish(&mut self.items)));
                }
                Some(_) => return Err(self.syntax(self.i, "expected `,` or `]`")),
                None => return Err(self.syntax(self.i, EOF)),
            }
        }
    }

    /// At `"`. Borrowed from the text unless it has escapes.
    fn string(&mut self) -> JsonResult<Cow<'a, str>> {
        const EOF: &str = "EOF while parsing a string";
        const CONTROL: &str = "control character (\\u0000-\\u001F) found while parsing a string";
        self.i += 1;
        let start = self.i;
        // Every byte that stops the scan is ASCII, so the slices fall on character boundaries.
        let plain_run = |bytes: &[u8], mut i: usize| {
            while let Some(&b) = bytes.get(i) {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                i += 1;
            }
            i
        };
        self.i = plain_run(self.bytes, self.i);
        let mut out = match self.peek() {
            Some(b'"') => {
                self.i += 1;
                return Ok(Cow::Borrowed(&self.text[start..self.i - 1]));
            }
            Some(b'\\') => String::from(&self.text[start..self.i]),
            Some(_) => return Err(self.syntax(self.i, CONTROL)),
            None => return Err(self.syntax(self.i, EOF)),
        };
        loop {
            match self.peek() {
                Some(b'"') => {
                    self.i += 1;
                    return Ok(Cow::Owned(out));
                }
                Some(b'\\') => {
                    self.i += 1;
                    let Some(e) = self.peek() else {
                        return Err(self.syntax(self.i, EOF));
                    };
                    self.i += 1;
                    match e {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => out.push(self.unicode_escape()?),
                        _ => return Err(self.syntax(self.i - 1, "invalid escape")),
                    }
                }
                Some(b) if b < 0x20 => return Err(self.syntax(self.i, CONTROL)),
                Some(_) => {
                    let run = self.i;
                    self.i = plain_run(self.bytes, self.i);
                    out.push_str(&self.text[run..self.i]);
                }
                None => return Err(self.syntax(self.i, EOF)),
            }
        }
    }

    /// Four hex digits (after `\u`).
    fn hex4(&mut self) -> JsonResult<u16> {
        let mut v = 0u16;
        for _ in 0..4 {
            let Some(b) = self.peek() else {
                return Err(self.syntax(self.i, "EOF while parsing a string"));
            };
            let Some(d) = char::from(b).to_digit(16) else {
                return Err(self.syntax(self.i, "invalid escape"));
            };
            v = (v << 4) | d as u16;
            self.i += 1;
        }
        Ok(v)
    }

    /// After `\u`: one character, from a surrogate pair if need be.
    fn unicode_escape(&mut self) -> JsonResult<char> {
        let start = self.i;
        let hi = self.hex4()?;
        let code = match hi {
            0xd800..=0xdbff => {
                if self.bytes.get(self.i..self.i + 2) != Some(b"\\u") {
                    return Err(self.syntax(start, "lone leading surrogate in hex escape"));
                }
                self.i += 2;
                let lo = self.hex4()?;
                if !(0xdc00..=0xdfff).contains(&lo) {
                    return Err(self.syntax(start, "lone leading surrogate in hex escape"));
                }
                0x10000 + ((u32::from(hi) - 0xd800) << 10) + (u32::from(lo) - 0xdc00)
            }
            0xdc00..=0xdfff => {
                return Err(self.syntax(start, "unexpected end of hex escape"));
            }
            _ => u32::from(hi),
        };
        char::from_u32(code).ok_or_else(|| self.syntax(start, "invalid unicode code point"))
    }

    /// At `-` or a digit.
    fn number(&mut self) -> JsonResult<Value<'a>> {
        let start = self.i;
        let digits = |r: &mut Self| {
            let from = r.i;
            while let Some(b'0'..=b'9') = r.peek() {
                r.i += 1;
            }
            r.i > from
        };
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                digits(self);
            }
            Some(_) => return Err(self.syntax(self.i, "invalid number")),
            None => return Err(self.syntax(self.i, "EOF while parsing a value")),
        }
        let mut integer = true;
        if self.peek() == Some(b'.') {
            integer = false;
            self.i += 1;
            if !digits(self) {
                return Err(self.syntax(self.i, "invalid number"));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            integer = false;
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if !digits(self) {
                return Err(self.syntax(self.i, "invalid number"));
            }
        }
        let s = &self.text[start..self.i];
        if integer && let Ok(v) = s.parse::<i128>() {
            return Ok(Value::Int(v.into()));
        }
        match s.parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(Value::Float(f)),
            _ => Err(self.syntax(start, "number out of range")),
        }
    }
}
