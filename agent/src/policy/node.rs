//! A generic document tree with source positions, read from YAML or JSON.
//!
//! The policy is not deserialized straight into typed structs: serde stops at the first
//! problem, and we want to report every problem with the position of the offending scalar.
//! Instead the text becomes a [`Node`] tree in which every node (map keys included) carries
//! its line and column, and `validate` walks that tree.
//!
//! - YAML is read by serde-saphyr. Positions come from [`serde_saphyr::Spanned`]: when
//!   serde-saphyr deserializes a `Spanned<T>` it captures the location of the next YAML event
//!   (the node's first character, e.g. the opening quote of a quoted scalar or the `[` of a
//!   flow sequence) before deserializing `T`. Wrapping each level of the tree in `Spanned`
//!   therefore gives a position to every node. Syntax errors carry their own location.
//! - JSON is read by the strict reader at the end of this file, which gives every node and
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
use std::marker::PhantomData;
use std::ops::Deref;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::budget::BudgetBreach;
use serde_saphyr::granit_parser::ErrorKind;
use serde_saphyr::{ExternalMessageSource, MessageFormatter, Spanned};

use super::diag::{one_line, quote};

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
    pub const POLICY: Limits = Limits {
        depth: MAX_DEPTH,
        values: MAX_VALUES,
    };

    fn depth_message(self) -> String {
        format!(
            "the document nests deeper than {} levels (the maximum nesting depth)",
            self.depth
        )
    }

    fn values_message(self) -> String {
        format!(
            "the document is too large: it holds more than {} values (the maximum)",
            thousands(self.values)
        )
    }
}

/// `4000000` -> `4,000,000`.
fn thousands(n: usize) -> String {
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

    fn from_location(l: serde_saphyr::Location) -> Pos {
        let conv = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
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
        Int {
            lo: v as u64,
            hi: (v >> 64) as u64,
        }
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

// ---- YAML ----------------------------------------------------------------------------------

/// A node deserialized through `Spanned`, so it knows where it is.
struct SpannedNode<'de>(Node<'de>);

impl<'de> Deserialize<'de> for SpannedNode<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Spanned::<PlainValue<'de>>::deserialize(d)?;
        Ok(SpannedNode(Node {
            pos: Pos::from_location(s.referenced),
            value: s.value.0,
        }))
    }
}

/// A [`Value`] whose children are [`SpannedNode`]s.
struct PlainValue<'de>(Value<'de>);

impl<'de> Deserialize<'de> for PlainValue<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor(PhantomData)).map(PlainValue)
    }
}

struct ValueVisitor<'de>(PhantomData<&'de str>);

impl<'de> Visitor<'de> for ValueVisitor<'de> {
    type Value = Value<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a YAML value")
    }
    fn visit_unit<E>(self) -> Result<Value<'de>, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value<'de>, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value<'de>, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value<'de>, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value<'de>, E> {
        Ok(Value::Int(i128::from(v).into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value<'de>, E> {
        Ok(Value::Int(i128::from(v).into()))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Value<'de>, E> {
        Ok(Value::Int(v.into()))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value<'de>, E> {
        Ok(i128::try_from(v)
            .map(|v| Value::Int(v.into()))
            .unwrap_or(Value::Float(v as f64)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value<'de>, E> {
        Ok(Value::Float(v))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Value<'de>, E> {
        Ok(Value::Str(Text::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value<'de>, E> {
        Ok(Value::Str(Text::Owned(v.into())))
    }
    fn visit_string<E>(self, v: String) -> Result<Value<'de>, E> {
        Ok(Value::Str(Text::Owned(v.into_boxed_str())))
    }
    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Value<'de>, E> {
        Err(E::custom("binary values are not supported in a policy"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Value<'de>, A::Error> {
        let mut items = Vec::new();
        while let Some(n) = a.next_element::<SpannedNode>()? {
            items.push(n.0);
        }
        Ok(Value::Seq(items.into_boxed_slice()))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Value<'de>, A::Error> {
        let mut entries = Vec::new();
        while let Some(k) = a.next_key::<SpannedNode>()? {
            let v = a.next_value::<SpannedNode>()?;
            entries.push((k.0, v.0));
        }
        Ok(Value::Map(entries.into_boxed_slice()))
    }
}

/// serde-saphyr's options: its budget enforces our [`Limits`] (nesting in flow collections
/// `[`, `{` and in block collections alike, and values); its other defaults (aliases, scalar
/// bytes) stand.
fn yaml_options(limits: Limits) -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = limits.depth;
    budget.flow_nesting_limit = limits.depth;
    budget.max_nodes = limits.values;
    // Each value is one or two events (start and end of a collection), each alias one: the
    // values run out first.
    budget.max_events = limits
        .values
        .saturating_mul(2)
        .saturating_add(budget.max_aliases)
        .saturating_add(1024);
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options.with_snippet = false;
    options
}

pub(crate) fn parse_yaml(text: &str, limits: Limits) -> Result<Node<'_>, SyntaxError> {
    serde_saphyr::from_str_with_options::<SpannedNode>(text, yaml_options(limits))
        .map(|n| n.0)
        .map_err(|e| yaml_error(&e, text, limits))
}

/// The characters of the line at a 1-based position (`None` past the end).
fn line_at(text: &str, line: u32) -> Option<&str> {
    text.split('\n')
        .nth(usize::try_from(line.checked_sub(1)?).ok()?)
}

/// The character at a 1-based line and column (columns count characters).
fn char_at(text: &str, pos: Pos) -> Option<char> {
    line_at(text, pos.line)?
        .chars()
        .nth(usize::try_from(pos.col.checked_sub(1)?).ok()?)
}

/// The name of the alias at `pos` (`*name`), as written.
fn alias_at(text: &str, pos: Pos) -> Option<String> {
    let line = line_at(text, pos.line)?;
    let rest: String = line
        .chars()
        .skip(usize::try_from(pos.col.checked_sub(1)?).ok()?)
        .collect();
    let name = rest.strip_prefix('*')?;
    let end = name
        .find(|c: char| c.is_whitespace() || ",[]{}".contains(c))
        .unwrap_or(name.len());
    (end > 0).then(|| name[..end].to_owned())
}

/// For a tab error reported after the tab, the position of the first tab of that run.
fn tab_start(text: &str, pos: Pos) -> Pos {
    let Some(line) = line_at(text, pos.line) else {
        return pos;
    };
    let chars: Vec<char> = line.chars().collect();
    let mut col = pos.col as usize;
    if chars.get(col.wrapping_sub(1)) == Some(&'\t') {
        return pos;
    }
    while col > 1 && chars.get(col - 2) == Some(&'\t') {
        col -= 1;
    }
    Pos {
        line: pos.line,
        col: col as u32,
    }
}

const ALIASES_EXPAND_TOO_MUCH: &str =
    "the document is too large: its aliases expand to too many values";

/// The message for a budget breach: one sentence, no internals.
fn budget_message(breach: &BudgetBreach, limits: Limits) -> String {
    let defaults = serde_saphyr::Budget::default();
    match breach {
        BudgetBreach::Depth { .. } => limits.depth_message(),
        BudgetBreach::Nodes { .. } | BudgetBreach::Events { .. } => limits.values_message(),
        BudgetBreach::ScalarBytes { .. } => format!(
            "the document is too large: its values hold more than {} MiB of text",
            defaults.max_total_scalar_bytes >> 20
        ),
        BudgetBreach::Aliases { .. } => format!(
            "the document is too large: it uses more than {} aliases",
            thousands(defaults.max_aliases)
        ),
        BudgetBreach::Anchors { .. } => format!(
            "the document is too large: it defines more than {} anchors",
            thousands(defaults.max_anchors)
        ),
        BudgetBreach::RecordedAnchorEvents { .. } | BudgetBreach::RecordedAnchorBytes { .. } => {
            ALIASES_EXPAND_TOO_MUCH.to_owned()
        }
        BudgetBreach::AliasAnchorRatio { .. } => {
            "the document is too complex: it uses too many aliases for its anchors".to_owned()
        }
        BudgetBreach::Documents { .. } => {
            "the file holds several YAML documents; a policy is a single document".to_owned()
        }
        _ => "the document is too large or too complex".to_owned(),
    }
}

/// Turns a serde-saphyr error into a one-line message and its position.
fn yaml_error(e: &serde_saphyr::Error, text: &str, limits: Limits) -> SyntaxError {
    use serde_saphyr::Error as E;
    let mut pos = e
        .location()
        .map(Pos::from_location)
        .unwrap_or_default()
        .or(Pos::START);
    // Unwrap the snippet and alias wrappers: we print our own position.
    let mut inner = e.without_snippet();
    while let E::AliasError { error, .. } = inner {
        inner = error.without_snippet();
    }
    let mut message = match inner {
        E::DuplicateMappingKey { key: Some(k), .. } => format!("duplicate key {}", quote(k)),
        E::DuplicateMappingKey { key: None, .. } => "duplicate key".to_owned(),
        E::MultipleDocuments { .. } => {
            "the file holds several YAML documents; a policy is a single document".to_owned()
        }
        E::Eof { .. } => "unexpected end of file".to_owned(),
        E::InvalidUtf8Input => "the file is not valid UTF-8".to_owned(),
        E::UnknownAnchor { .. } => match alias_at(text, pos) {
            Some(name) => format!(
                "unknown alias {}: no anchor {} is defined before it",
                quote(&format!("*{name}")),
                quote(&format!("&{name}"))
            ),
            None => "unknown alias: no such anchor is defined before it".to_owned(),
        },
        E::Budget { breach, .. } => budget_message(breach, limits),
        E::AliasReplayCounterOverflow { .. }
        | E::AliasReplayLimitExceeded { .. }
        | E::AliasExpansionLimitExceeded { .. }
        | E::AliasReplayStackDepthExceeded { .. } => ALIASES_EXPAND_TOO_MUCH.to_owned(),
        E::ExternalMessage { source, .. }
            if let ExternalMessageSource::Parser(scan) = &**source =>
        {
            match scan.kind() {
                ErrorKind::RecursionLimitExceeded => limits.depth_message(),
                ErrorKind::UnexpectedCharacter { character } => {
                    format!("unexpected character {}", quote(&character.to_string()))
                }
                ErrorKind::TabInBlockIndentation
                | ErrorKind::TabNotAllowed
                | ErrorKind::TabInIndentation => {
                    pos = tab_start(text, pos);
                    lower_first(&one_line(&scan.kind().to_string()))
                }
                _ => default_message(inner),
            }
        }
        other => default_message(other),
    };
    // `from: [*]` is the most likely YAML mistake in a policy: `*` starts an alias.
    if message.contains("alias") && char_at(text, pos) == Some('*') && alias_at(text, pos).is_none()
    {
        message.push_str("; to mean any address, write \"*\" in quotes");
    }
    SyntaxError { pos, message }
}

fn default_message(e: &serde_saphyr::Error) -> String {
    let m = serde_saphyr::UserMessageFormatter.format_message(e);
    lower_first(&one_line(&m))
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

// ---- JSON ----------------------------------------------------------------------------------

/// Line and column of byte offsets met in increasing order, in time linear in the text.
struct Cursor {
    offset: usize,
    pos: Pos,
}

impl Cursor {
    fn advance(&mut self, bytes: &[u8], to: usize) -> Pos {
        if to < self.offset {
            // Not expected; recount rather than report a wrong position.
            *self = Cursor {
                offset: 0,
                pos: Pos::START,
            };
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
        Gather {
            base: stack.len(),
            own: None,
        }
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
        KeySet {
            hashes: None,
            hasher: RandomState::new(),
        }
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

/// Where a JSON reader stopped, and why (the whole message).
struct JsonError {
    offset: usize,
    message: String,
}

/// A strict JSON reader (RFC 8259) building the tree with positions. Its syntax messages use
/// serde_json's wording; a syntax error is reported at the offending character (or at the
/// end of the text).
struct JsonReader<'a> {
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

type JsonResult<T> = Result<T, JsonError>;

impl<'a> JsonReader<'a> {
    fn new(text: &'a str, limits: Limits) -> Self {
        JsonReader {
            text,
            bytes: text.as_bytes(),
            i: 0,
            cursor: Cursor {
                offset: 0,
                pos: Pos::START,
            },
            values: 0,
            limits,
            items: Vec::new(),
            entries: Vec::new(),
        }
    }

    fn read(mut self) -> Result<Node<'a>, SyntaxError> {
        let result = self.value(0).and_then(|root| {
            self.ws();
            if self.i < self.bytes.len() {
                Err(self.syntax(self.i, "trailing characters"))
            } else {
                Ok(root)
            }
        });
        result.map_err(|e| SyntaxError {
            pos: self.cursor.advance(self.bytes, e.offset),
            message: e.message,
        })
    }

    fn syntax(&self, offset: usize, what: &str) -> JsonError {
        JsonError {
            offset,
            message: format!("invalid JSON: {what}"),
        }
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
            return Err(JsonError {
                offset,
                message: self.limits.values_message(),
            });
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
            return Err(JsonError {
                offset: start,
                message: self.limits.depth_message(),
            });
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
                return Err(JsonError {
                    offset: start,
                    message: format!("duplicate key {}", quote(&key)),
                });
            }
            let key_node = Node {
                pos,
                value: Value::Str(key),
            };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar<'a>(n: &Node<'a>) -> (u32, u32, Value<'a>) {
        (n.pos.line, n.pos.col, n.value.clone())
    }

    fn str_value(s: &str) -> Value<'_> {
        Value::Str(s.into())
    }

    fn at(e: &SyntaxError) -> (u32, u32) {
        (e.pos.line, e.pos.col)
    }

    #[test]
    fn positions_of_keys_and_values() {
        let t = parse_tree("a: 1\nb:\n  - x\n  - \"y\"\n").unwrap();
        let Value::Map(m) = &t.value else {
            panic!("not a map")
        };
        assert_eq!(scalar(&m[0].0), (1, 1, str_value("a")));
        assert_eq!(scalar(&m[0].1), (1, 4, Value::Int(1.into())));
        let Value::Seq(s) = &m[1].1.value else {
            panic!("not a seq")
        };
        assert_eq!(scalar(&s[0]), (3, 5, str_value("x")));
        assert_eq!(scalar(&s[1]), (4, 5, str_value("y")));
    }

    #[test]
    fn json_positions_and_errors() {
        let t = parse_tree(" {\"a\": [1, \"x\"]}").unwrap();
        let Value::Map(m) = &t.value else {
            panic!("not a map")
        };
        assert_eq!((t.pos.line, t.pos.col), (1, 2));
        assert_eq!((m[0].0.pos.line, m[0].0.pos.col), (1, 3));
        let Value::Seq(s) = &m[0].1.value else {
            panic!("not a seq")
        };
        assert_eq!((m[0].1.pos.line, m[0].1.pos.col), (1, 8));
        assert_eq!(scalar(&s[1]), (1, 12, str_value("x")));
        let e = parse_tree("{\"a\": [1, ]}").unwrap_err();
        assert_eq!(
            (at(&e), e.message.as_str()),
            ((1, 11), "invalid JSON: trailing comma")
        );
    }

    #[test]
    fn json_tree_keeps_order_and_types() {
        let t = parse_tree(r#"{"z": 1, "a": [true, null, 1.5, -7, "\u00e9\n"]}"#).unwrap();
        let Value::Map(m) = &t.value else {
            panic!("not a map")
        };
        assert_eq!(m[0].0.value, str_value("z"));
        assert_eq!(m[1].0.value, str_value("a"));
        let Value::Seq(s) = &m[1].1.value else {
            panic!("not a seq")
        };
        assert_eq!(
            s.iter().map(|n| n.value.clone()).collect::<Vec<_>>(),
            [
                Value::Bool(true),
                Value::Null,
                Value::Float(1.5),
                Value::Int((-7).into()),
                str_value("é\n")
            ]
        );
    }

    #[test]
    fn json_columns_count_characters() {
        // `é` is two bytes, one character; a surrogate pair is one character.
        let t =
            parse_tree("{\"é\": \"\\ud83d\\ude00\", \"b\":\n  [ 18446744073709551616 ]}").unwrap();
        let Value::Map(m) = &t.value else {
            panic!("not a map")
        };
        assert_eq!(scalar(&m[0].1), (1, 7, str_value("😀")));
        assert_eq!((m[1].0.pos.line, m[1].0.pos.col), (1, 23));
        let Value::Seq(s) = &m[1].1.value else {
            panic!("not a seq")
        };
        assert_eq!(scalar(&s[0]), (2, 5, Value::Int((1i128 << 64).into())));
    }

    #[test]
    fn json_syntax_errors_have_positions() {
        let cases: &[(&str, (u32, u32), &str)] = &[
            // Ends at the start of a line: that line, column 1 (not "column 0").
            ("{\n  \"rules\": [\n", (3, 1), "EOF while parsing a list"),
            ("{\"a\": 1", (1, 8), "EOF while parsing an object"),
            ("{\"a\": \"x", (1, 9), "EOF while parsing a string"),
            ("{\"a\": 1\n \"b\": 2}", (2, 2), "expected `,` or `}`"),
            ("{\"a\": [1 2]}", (1, 10), "expected `,` or `]`"),
            ("{\n  // c\n}", (2, 3), "key must be a string"),
            ("{'a': 1}", (1, 2), "key must be a string"),
            ("{\"a\" 1}", (1, 6), "expected `:`"),
            ("{\"a\": tru}", (1, 10), "expected ident"),
            ("{\"a\": +1}", (1, 7), "expected value"),
            ("{\"a\": 1.}", (1, 9), "invalid number"),
            ("{\"a\": 1e999}", (1, 7), "number out of range"),
            ("{\"a\": \"\\x\"}", (1, 9), "invalid escape"),
            ("{\"a\": \"\\ud800\"}", (1, 10), "lone leading surrogate"),
            ("{\"a\": \"x\u{1}\"}", (1, 9), "control character"),
            ("{}\n}", (2, 1), "trailing characters"),
        ];
        for (text, pos, msg) in cases {
            let e = parse_tree(text).unwrap_err();
            assert_eq!(at(&e), *pos, "{text:?}: {}", e.message);
            assert!(
                e.message.starts_with("invalid JSON: "),
                "{text:?}: {}",
                e.message
            );
            assert!(e.message.contains(msg), "{text:?}: {}", e.message);
        }
    }

    #[test]
    fn json_duplicate_keys() {
        let e = parse_tree("{\"a\": 1,\n \"b\": {\"x\": 1, \"\\u0078\": 2}}").unwrap_err();
        assert_eq!((at(&e), e.message.as_str()), ((2, 16), "duplicate key `x`"));
        // The same key in different mappings is fine.
        parse_tree("{\"a\": {\"x\": 1}, \"b\": {\"x\": 1}}").unwrap();
    }

    /// Runs `f` with a large stack: unoptimized, 64 levels of serde-saphyr take more than
    /// the 2 MiB of a test thread.
    fn big_stack(f: impl FnOnce() + Send + 'static) {
        std::thread::Builder::new()
            .stack_size(64 << 20)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn nesting_limit_is_the_same_everywhere() {
        big_stack(nesting_limits);
    }

    fn nesting_limits() {
        let limit = Limits::POLICY.depth;
        let ok =
            |open: &str, close: &str, n: usize| format!("{}1{}", open.repeat(n), close.repeat(n));
        // Flow sequences and mappings, block mappings, JSON: the limit, then one more.
        let block = |n: usize| {
            let mut s = String::new();
            for i in 0..n {
                s.push_str(&" ".repeat(i));
                s.push_str("a:\n");
            }
            s
        };
        let json = |n: usize| format!("{}1{}", "{\"a\": ".repeat(n), "}".repeat(n));
        // A flow mapping at the top would be read as JSON: this one is in a block mapping,
        // which counts as the first level.
        let flow_map = |n: usize| format!("x: {}", ok("{a: ", "}", n - 1));
        for (what, good, bad) in [
            (
                "flow sequences",
                ok("[", "]", limit),
                ok("[", "]", limit + 1),
            ),
            ("flow mappings", flow_map(limit), flow_map(limit + 1)),
            ("block mappings", block(limit), block(limit + 1)),
            ("JSON", json(limit), json(limit + 1)),
        ] {
            assert!(
                parse_tree(&good).is_ok(),
                "{what}: {:?}",
                parse_tree(&good).err()
            );
            let e = parse_tree(&bad).unwrap_err();
            assert_eq!(
                e.message, "the document nests deeper than 64 levels (the maximum nesting depth)",
                "{what}"
            );
        }
        // Reported at the first container beyond the limit (in YAML, the flow collections
        // are counted by the scanner, which may stop a few brackets further on).
        let e = parse_tree(&"[".repeat(1000)).unwrap_err();
        assert_eq!(at(&e), (1, 65), "{}", e.message);
        let e = parse_tree(&format!("a:\n {}", "[".repeat(1000))).unwrap_err();
        assert!(e.pos.line == 2 && (65..=66).contains(&e.pos.col), "{e:?}");
        let e = parse_tree(&format!("{{\"a\":\n {}", "[".repeat(1000))).unwrap_err();
        assert_eq!(at(&e), (2, 2 + 63), "{}", e.message);
    }

    #[test]
    fn value_limit_is_the_same_in_yaml_and_json() {
        let limits = Limits {
            depth: MAX_DEPTH,
            values: 100,
        };
        // A mapping, its key and a list of 97 values: 100 values.
        let yaml = |n: usize| format!("a: [{}]\n", vec!["1"; n].join(", "));
        let json = |n: usize| format!("{{\"a\": [{}]}}", vec!["1"; n].join(", "));
        assert!(parse_tree_with(&yaml(97), limits).is_ok());
        assert!(parse_tree_with(&json(97), limits).is_ok());
        for text in [yaml(98), json(98)] {
            let e = parse_tree_with(&text, limits).unwrap_err();
            assert_eq!(
                e.message,
                "the document is too large: it holds more than 100 values (the maximum)"
            );
            assert_eq!(e.pos.line, 1);
        }
        assert_eq!(thousands(4_000_000), "4,000,000");
        assert_eq!(thousands(100), "100");
    }

    #[test]
    fn syntax_errors() {
        let e = parse_tree("a: [1, 2\n").unwrap_err();
        assert_eq!(at(&e), (1, 4));
        let e = parse_tree("a: 1\na: 2\n").unwrap_err();
        assert_eq!(
            (e.pos.line, e.pos.col, e.message.as_str()),
            (2, 1, "duplicate key `a`")
        );
        let e = parse_tree("a: 1\n---\nb: 2\n").unwrap_err();
        assert!(e.message.contains("several YAML documents"));
    }

    #[test]
    fn yaml_messages_are_plain_sentences() {
        // A tab is reported where it is.
        let e = parse_tree("a:\n\tb: 1\n").unwrap_err();
        assert_eq!(at(&e), (2, 1), "{}", e.message);
        assert!(e.message.contains("tab"), "{}", e.message);
        // A NUL byte, quoted like any user text.
        let e = parse_tree("a: 1\nb\0c: 2\n").unwrap_err();
        assert_eq!(e.message, "unexpected character `\\u{0}`");
        // An unknown alias is named.
        let e = parse_tree("a: 1\nb: *nowhere\n").unwrap_err();
        assert_eq!(at(&e), (2, 4));
        assert_eq!(
            e.message,
            "unknown alias `*nowhere`: no anchor `&nowhere` is defined before it"
        );
        // A lone `*` is the usual mistake for "any address".
        let e = parse_tree("from: [*]\n").unwrap_err();
        assert!(
            e.message.ends_with("write \"*\" in quotes"),
            "{}",
            e.message
        );
    }

    #[test]
    fn alias_bombs_are_too_large() {
        // 10^9 strings if expanded: refused in a sentence, inside the bomb.
        let mut bomb = format!("a0: &a0 [{}]\n", ["\"lol\""; 10].join(", "));
        for i in 1..10 {
            let refs = vec![format!("*a{}", i - 1); 10].join(", ");
            bomb.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        let e = parse_tree(&bomb).unwrap_err();
        assert!((2..=10).contains(&e.pos.line), "{e:?}");
        assert!(e.message.starts_with("the document is too large"), "{e:?}");
        assert!(!e.message.contains('{'), "{e:?}");
    }

    #[test]
    fn many_values_are_fine() {
        // Beyond serde-saphyr's default budget of 250,000 values.
        let mut s = String::from("rules:\n");
        for i in 0..50_000 {
            s.push_str(&format!("  - {{ name: r{i}, from: [a], to: [b] }}\n"));
        }
        let t = parse_tree(&s).unwrap();
        let Value::Map(m) = &t.value else {
            panic!("not a map")
        };
        let Value::Seq(rules) = &m[0].1.value else {
            panic!("not a seq")
        };
        assert_eq!(rules.len(), 50_000);
        assert_eq!((rules[49_999].pos.line, rules[49_999].pos.col), (50_001, 5));
    }
}
