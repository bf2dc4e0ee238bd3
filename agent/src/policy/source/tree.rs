//! A generic document tree with source positions, read from YAML or JSON.
//!
//! The policy is not deserialized straight into typed structs: serde stops at the first
//! problem, and we want to report every problem with the position of the offending scalar.
//! Instead the text becomes a [`Node`] tree in which every node (map keys included) carries
//! its line and column, and `validate` walks that tree.
//!
//! - YAML is read by serde-saphyr ([`super::yaml`]; the common block subset by `fastyaml`). Positions come from [`serde_saphyr::Spanned`]: when
//!   serde-saphyr deserializes a `Spanned<T>` it captures the location of the next YAML event
//!   (the node's first character, e.g. the opening quote of a quoted scalar or the `[` of a
//!   flow sequence) before deserializing `T`. Wrapping each level of the tree in `Spanned`
//!   therefore gives a position to every node. Syntax errors carry their own location.
//! - JSON is read by the strict reader of [`super::json`], which gives every node and
//!   every error its position (what YAML would forgive, comments or trailing commas, is an
//!   error in JSON).
//!
//! Both readers enforce the same [`Limits`]: at most [`MAX_DEPTH`] levels of nesting and
//! [`MAX_VALUES`] values (keys included), reported where they are crossed. The tree is kept
//! lean (a node is 32 bytes; strings are borrowed from the text unless they had to be
//! unescaped) so that the largest policy the limits allow fits in a few hundred megabytes.

use std::borrow::Cow;
use std::collections::HashSet;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::ops::Deref;

use super::json::JsonReader;
use super::yaml::parse_yaml;

/// The deepest nesting of lists and mappings a policy may use (a policy needs about 6).
pub(crate) const MAX_DEPTH: usize = 64;
/// The most values (scalars, lists and mappings, keys included) a policy may hold. A policy of
/// 100,000 rules over 100,000 CIDRs holds about 1.6 million; 20 MB of JSON segments, one CIDR
/// each, about 2.7 million. At about 32 bytes a value in the tree, plus what validation keeps,
/// this bounds the memory a document can cost whatever its size (a few hundred MB at most).
pub(crate) const MAX_VALUES: usize = 4_000_000;

/// How much a document may hold (see [`MAX_DEPTH`], [`MAX_VALUES`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Containers nested in one another, the outermost one counting as 1.
    pub depth: usize,
    /// Scalars, lists and mappings, keys included.
    pub values: usize,
}

impl Limits {
    pub const POLICY: Limits = Limits { depth: MAX_DEPTH, values: MAX_VALUES };

    pub(super) fn depth_message(self) -> String {
        format!("the document nests deeper than {} levels (the maximum nesting depth)", self.depth)
    }

    pub(super) fn values_message(self) -> String {
        format!("the document is too large: it holds more than {} values (the maximum)", thousands(self.values))
    }
}

/// `4000000` -> `4,000,000`.
pub(super) fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// 1-based line and column (characters). `0` means unknown (see [`Pos::or`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Pos {
    pub line: u32,
    pub col: u32,
}

impl Pos {
    pub const START: Pos = Pos { line: 1, col: 1 };

    pub(super) fn from_location(l: serde_saphyr::Location) -> Pos {
        let conv = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        Pos { line: conv(l.line()), col: conv(l.column()) }
    }

    pub fn is_known(self) -> bool {
        self.line > 0 && self.col > 0
    }

    /// This position if known, else `fallback`.
    pub fn or(self, fallback: Pos) -> Pos {
        if self.is_known() { self } else { fallback }
    }
}

/// An integer as written (up to 128 bits), kept as two halves: an `i128` would align every
/// [`Value`], and so every [`Node`], to 16 bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Int {
    lo: u64,
    hi: u64,
}

impl Int {
    pub fn get(self) -> i128 {
        ((u128::from(self.hi) << 64) | u128::from(self.lo)) as i128
    }
}

impl From<i128> for Int {
    fn from(v: i128) -> Int {
        let v = v as u128;
        Int { lo: v as u64, hi: (v >> 64) as u64 }
    }
}

impl fmt::Debug for Int {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.get(), f)
    }
}

impl fmt::Display for Int {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.get(), f)
    }
}

/// The text of a string: borrowed from the document unless it had to be unescaped.
#[derive(Clone)]
pub(crate) enum Text<'a> {
    Borrowed(&'a str),
    Owned(Box<str>),
}

impl Deref for Text<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        match self {
            Text::Borrowed(s) => s,
            Text::Owned(s) => s,
        }
    }
}

impl PartialEq for Text<'_> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Text<'_> {}

impl fmt::Debug for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl fmt::Display for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self)
    }
}

impl<'a> From<&'a str> for Text<'a> {
    fn from(s: &'a str) -> Self {
        Text::Borrowed(s)
    }
}

impl<'a> From<Cow<'a, str>> for Text<'a> {
    fn from(s: Cow<'a, str>) -> Self {
        match s {
            Cow::Borrowed(s) => Text::Borrowed(s),
            Cow::Owned(s) => Text::Owned(s.into_boxed_str()),
        }
    }
}

/// A value of the document (`'a`: the text it was read from). Three words: boxed slices, not
/// vectors (no spare capacity); strings borrowed from the text when possible.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value<'a> {
    Null,
    Bool(bool),
    Int(Int),
    Float(f64),
    Str(Text<'a>),
    Seq(Box<[Node<'a>]>),
    Map(Box<[(Node<'a>, Node<'a>)]>),
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Node<'a> {
    pub pos: Pos,
    pub value: Value<'a>,
}

// The memory bound of MAX_VALUES counts on these sizes.
const _: () = assert!(std::mem::size_of::<Value>() == 24);
const _: () = assert!(std::mem::size_of::<Node>() == 32);

impl Value<'_> {
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

/// A syntax problem (or a limit crossed): where and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// Parses YAML, or JSON when the first non-blank character is `{`.
pub(crate) fn parse_tree(text: &str) -> Result<Node<'_>, SyntaxError> {
    parse_tree_with(text, Limits::POLICY)
}

pub(crate) fn parse_tree_with(text: &str, limits: Limits) -> Result<Node<'_>, SyntaxError> {
    let body = text.strip_prefix('\u{feff}').unwrap_or(text);
    if body.trim_start().starts_with('{') {
        JsonReader::new(body, limits).read()
    } else if let Some(tree) = super::fastyaml::read(body, limits) {
        // The plain subset large policies are written in, read fast; everything else (and
        // every mistake) by serde-saphyr.
        Ok(tree)
    } else {
        parse_yaml(body, limits)
    }
}

/// The children of one container being read. While few, they sit on a stack shared by all the
/// containers being read (innermost last), so that a small container is allocated once, at its
/// size; beyond, in a vector of their own, so that a huge one is not copied when complete.
pub(crate) struct Gather<T> {
    base: usize,
    own: Option<Vec<T>>,
}

impl<T> Gather<T> {
    const FEW: usize = 16;

    pub(crate) fn new(stack: &[T]) -> Self {
        Gather { base: stack.len(), own: None }
    }

    pub(crate) fn push(&mut self, stack: &mut Vec<T>, item: T) {
        match &mut self.own {
            Some(own) => own.push(item),
            None => {
                stack.push(item);
                if stack.len() - self.base > Self::FEW {
                    self.own = Some(stack.drain(self.base..).collect());
                }
            }
        }
    }

    pub(crate) fn items<'s>(&'s self, stack: &'s [T]) -> &'s [T] {
        match &self.own {
            Some(own) => own,
            None => &stack[self.base..],
        }
    }

    pub(crate) fn finish(self, stack: &mut Vec<T>) -> Box<[T]> {
        match self.own {
            Some(own) => own.into_boxed_slice(),
            None => stack.drain(self.base..).collect(),
        }
    }
}

/// A hasher for values that are already hashes.
#[derive(Default)]
struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// The string keys of a mapping being read, to find duplicates: small mappings are searched;
/// larger ones keep the hashes of their keys (8 bytes a key), confirmed by a search.
pub(crate) struct KeySet {
    hashes: Option<HashSet<u64, BuildHasherDefault<PreHashed>>>,
    hasher: RandomState,
}

impl KeySet {
    pub(crate) fn new() -> Self {
        KeySet { hashes: None, hasher: RandomState::new() }
    }

    /// Whether `key` is a key of `entries` (the mapping's entries so far) already. Each key
    /// is asked about once, before its entry is added.
    pub(crate) fn seen(&mut self, key: &str, entries: &[(Node<'_>, Node<'_>)]) -> bool {
        let is_key = |(k, _): &(Node<'_>, Node<'_>)| matches!(&k.value, Value::Str(t) if **t == *key);
        match &mut self.hashes {
            Some(set) => !set.insert(self.hasher.hash_one(key)) && entries.iter().any(is_key),
            None if entries.iter().any(is_key) => true,
            None => {
                if entries.len() >= Gather::<()>::FEW {
                    let hasher = &self.hasher;
                    let known = entries.iter().filter_map(|(k, _)| match &k.value {
                        Value::Str(t) => Some(hasher.hash_one(&**t)),
                        _ => None,
                    });
                    self.hashes = Some(known.chain([hasher.hash_one(key)]).collect());
                }
                false
            }
        }
    }
}
