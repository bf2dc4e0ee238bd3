//! A generic document tree with source positions, read from YAML (or JSON) by serde-saphyr.
//!
//! The policy is not deserialized straight into typed structs: serde stops at the first
//! problem, and we want to report every problem with the position of the offending scalar.
//! Instead the text becomes a [`Node`] tree in which every node (map keys included) carries
//! its line and column, and `validate` walks that tree.
//!
//! Positions come from [`serde_saphyr::Spanned`]: when serde-saphyr deserializes a
//! `Spanned<T>` it captures the location of the next YAML event (the node's first character,
//! e.g. the opening quote of a quoted scalar or the `[` of a flow sequence) before
//! deserializing `T`. Wrapping each level of the tree in `Spanned` therefore gives a
//! position to every node. Syntax errors carry their own location (`Error::location`).

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{MessageFormatter, Spanned};

use super::diag::one_line;

/// 1-based line and column (characters). `0` means unknown (see [`Pos::or`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Pos {
    pub line: usize,
    pub col: usize,
}

impl Pos {
    pub const START: Pos = Pos { line: 1, col: 1 };

    fn from_location(l: serde_saphyr::Location) -> Pos {
        let conv = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        Pos {
            line: conv(l.line()),
            col: conv(l.column()),
        }
    }

    pub fn is_known(self) -> bool {
        self.line > 0 && self.col > 0
    }

    /// This position if known, else `fallback`.
    pub fn or(self, fallback: Pos) -> Pos {
        if self.is_known() { self } else { fallback }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Node {
    pub pos: Pos,
    pub value: Value,
}

impl Value {
    /// What kind of value this is, for "expected X, found Y" messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "nothing",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "a number",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

/// How a tree node is deserialized: with positions (serde-saphyr) or without (serde_json).
trait TreeNode: for<'de> Deserialize<'de> {
    fn into_node(self) -> Node;
}

/// A node deserialized through `Spanned`, so it knows where it is.
struct SpannedNode(Node);

impl<'de> Deserialize<'de> for SpannedNode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Spanned::<ValueOf<SpannedNode>>::deserialize(d)?;
        Ok(SpannedNode(Node {
            pos: Pos::from_location(s.referenced),
            value: s.value.0,
        }))
    }
}

impl TreeNode for SpannedNode {
    fn into_node(self) -> Node {
        self.0
    }
}

/// A node without position, for the serde_json fallback.
struct PlainNode(Node);

impl<'de> Deserialize<'de> for PlainNode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = ValueOf::<PlainNode>::deserialize(d)?;
        Ok(PlainNode(Node {
            pos: Pos::default(),
            value: v.0,
        }))
    }
}

impl TreeNode for PlainNode {
    fn into_node(self) -> Node {
        self.0
    }
}

/// A [`Value`] whose children are deserialized as `N`.
struct ValueOf<N>(Value, PhantomData<N>);

impl<'de, N: TreeNode> Deserialize<'de> for ValueOf<N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor::<N>(PhantomData))
            .map(|v| ValueOf(v, PhantomData))
    }
}

struct ValueVisitor<N>(PhantomData<N>);

impl<'de, N: TreeNode> Visitor<'de> for ValueVisitor<N> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a YAML value")
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Int(v.into()))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        Ok(i128::try_from(v)
            .map(Value::Int)
            .unwrap_or(Value::Float(v as f64)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Value, E> {
        Err(E::custom("binary values are not supported in a policy"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(n) = a.next_element::<N>()? {
            items.push(n.into_node());
        }
        Ok(Value::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(k) = a.next_key::<N>()? {
            let v = a.next_value::<N>()?;
            entries.push((k.into_node(), v.into_node()));
        }
        Ok(Value::Map(entries))
    }
}

/// A syntax problem: where and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// Parses YAML, or JSON when the first non-blank character is `{`.
pub(crate) fn parse_tree(text: &str) -> Result<Node, SyntaxError> {
    let body = text.strip_prefix('\u{feff}').unwrap_or(text);
    if body.trim_start().starts_with('{') {
        parse_json(body)
    } else {
        parse_yaml(body)
    }
}

fn parse_yaml(text: &str) -> Result<Node, SyntaxError> {
    read_yaml(text).map_err(|e| yaml_error(&e, text))
}

fn read_yaml(text: &str) -> Result<Node, serde_saphyr::Error> {
    serde_saphyr::from_str::<SpannedNode>(text).map(|n| n.0)
}

/// The character at a 1-based line and column (columns count characters).
fn char_at(text: &str, pos: Pos) -> Option<char> {
    let line = text.split('\n').nth(pos.line.checked_sub(1)?)?;
    line.chars().nth(pos.col.checked_sub(1)?)
}

/// JSON is checked strictly with serde_json first (so comments or trailing commas, which YAML
/// would accept, are errors with JSON positions), then read with serde-saphyr for positions:
/// JSON is YAML flow syntax. Should serde-saphyr ever reject valid JSON, the serde_json tree
/// (without positions) is used so that the file still loads.
fn parse_json(text: &str) -> Result<Node, SyntaxError> {
    let plain = match serde_json::from_str::<PlainNode>(text) {
        Ok(n) => n.0,
        Err(e) => {
            let pos = Pos {
                line: e.line(),
                col: e.column(),
            }
            .or(Pos::START);
            let mut msg = e.to_string();
            // serde_json appends " at line L column C"; the diagnostic prints the position.
            let suffix = format!(" at line {} column {}", e.line(), e.column());
            if let Some(stripped) = msg.strip_suffix(&suffix) {
                msg = stripped.to_owned();
            }
            return Err(SyntaxError {
                pos,
                message: format!("invalid JSON: {}", one_line(&msg)),
            });
        }
    };
    match read_yaml(text) {
        Ok(tree) => Ok(tree),
        // serde_json keeps the last of duplicate keys; they are an error in a policy.
        Err(e) if is_duplicate_key(&e) => Err(yaml_error(&e, text)),
        Err(_) => Ok(plain),
    }
}

fn is_duplicate_key(e: &serde_saphyr::Error) -> bool {
    let mut inner = e.without_snippet();
    while let serde_saphyr::Error::AliasError { error, .. } = inner {
        inner = error.without_snippet();
    }
    matches!(inner, serde_saphyr::Error::DuplicateMappingKey { .. })
}

/// Turns a serde-saphyr error into a one-line message and its position.
fn yaml_error(e: &serde_saphyr::Error, text: &str) -> SyntaxError {
    use serde_saphyr::Error as E;
    let pos = e
        .location()
        .map(Pos::from_location)
        .unwrap_or_default()
        .or(Pos::START);
    // Unwrap the snippet and alias wrappers: we print our own position.
    let mut inner = e.without_snippet();
    while let E::AliasError { error, .. } = inner {
        inner = error.without_snippet();
    }
    let message = match inner {
        E::DuplicateMappingKey { key: Some(k), .. } => {
            format!("duplicate key {}", super::diag::quote(k))
        }
        E::DuplicateMappingKey { key: None, .. } => "duplicate key".to_owned(),
        E::MultipleDocuments { .. } => {
            "the file holds several YAML documents; a policy is a single document".to_owned()
        }
        E::Eof { .. } => "unexpected end of file".to_owned(),
        E::InvalidUtf8Input => "the file is not valid UTF-8".to_owned(),
        other => {
            let m = serde_saphyr::UserMessageFormatter.format_message(other);
            lower_first(&one_line(&m))
        }
    };
    let mut message = message;
    // `from: [*]` is the most likely YAML mistake in a policy: `*` starts an alias.
    if message.contains("alias") && char_at(text, pos) == Some('*') {
        message.push_str("; to mean any address, write \"*\" in quotes");
    }
    SyntaxError { pos, message }
}

/// Lower-cases the first letter unless the first word is an acronym (`YAML ...`).
fn lower_first(s: &str) -> String {
    let mut chars = s.chars();
    match (chars.next(), chars.next()) {
        (Some(a), Some(b)) if a.is_uppercase() && !b.is_uppercase() => {
            a.to_lowercase().chain(s.chars().skip(1)).collect()
        }
        _ => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(n: &Node) -> (usize, usize, Value) {
        (n.pos.line, n.pos.col, n.value.clone())
    }

    #[test]
    fn positions_of_keys_and_values() {
        let t = parse_tree("a: 1\nb:\n  - x\n  - \"y\"\n").unwrap();
        let Value::Map(m) = &t.value else {
            panic!("not a map")
        };
        assert_eq!(scalar(&m[0].0), (1, 1, Value::Str("a".into())));
        assert_eq!(scalar(&m[0].1), (1, 4, Value::Int(1)));
        let Value::Seq(s) = &m[1].1.value else {
            panic!("not a seq")
        };
        assert_eq!(scalar(&s[0]), (3, 5, Value::Str("x".into())));
        assert_eq!(scalar(&s[1]), (4, 5, Value::Str("y".into())));
    }

    #[test]
    fn json_positions_and_errors() {
        let t = parse_tree(" {\"a\": [1, \"x\"]}").unwrap();
        let Value::Map(m) = &t.value else {
            panic!("not a map")
        };
        assert_eq!((m[0].0.pos.line, m[0].0.pos.col), (1, 3));
        let e = parse_tree("{\"a\": [1, ]}").unwrap_err();
        assert_eq!(e.pos.line, 1);
        assert!(e.message.starts_with("invalid JSON"), "{}", e.message);
    }

    #[test]
    fn plain_json_tree_keeps_order() {
        // The fallback tree (serde_json, no positions) keeps mapping order.
        let t = serde_json::from_str::<PlainNode>(r#"{"z": 1, "a": [true, null, 1.5]}"#).unwrap();
        let Value::Map(m) = &t.0.value else {
            panic!("not a map")
        };
        assert_eq!(m[0].0.value, Value::Str("z".into()));
        assert_eq!(m[1].0.value, Value::Str("a".into()));
        assert!(!m[0].0.pos.is_known());
        let Value::Seq(s) = &m[1].1.value else {
            panic!("not a seq")
        };
        assert_eq!(
            s.iter().map(|n| n.value.clone()).collect::<Vec<_>>(),
            [Value::Bool(true), Value::Null, Value::Float(1.5)]
        );
    }

    #[test]
    fn syntax_errors() {
        let e = parse_tree("a: [1, 2\n").unwrap_err();
        assert_eq!((e.pos.line, e.pos.col), (1, 4));
        let e = parse_tree("a: 1\na: 2\n").unwrap_err();
        assert_eq!(
            (e.pos.line, e.pos.col, e.message.as_str()),
            (2, 1, "duplicate key `a`")
        );
        let e = parse_tree("a: 1\n---\nb: 2\n").unwrap_err();
        assert!(e.message.contains("several YAML documents"));
    }
}
