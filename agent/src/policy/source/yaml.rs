//! YAML -> [`Node`] tree, by serde-saphyr: positions from [`Spanned`], syntax errors and
//! budget breaches as plain sentences at their position.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::budget::BudgetBreach;
use serde_saphyr::granit_parser::ErrorKind;
use serde_saphyr::{ExternalMessageSource, MessageFormatter, Spanned};

use super::diag::{one_line, quote};
use super::tree::{Limits, Node, Pos, SyntaxError, Text, Value, thousands};

/// A node deserialized through `Spanned`, so it knows where it is.
pub(super) struct SpannedNode<'de>(Node<'de>);

impl<'de> Deserialize<'de> for SpannedNode<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Spanned::<PlainValue<'de>>::deserialize(d)?;
        Ok(SpannedNode(Node { pos: Pos::from_location(s.referenced), value: s.value.0 }))
    }
}

/// A [`Value`] whose children are [`SpannedNode`]s.
pub(super) struct PlainValue<'de>(Value<'de>);

impl<'de> Deserialize<'de> for PlainValue<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor(PhantomData)).map(PlainValue)
    }
}

pub(super) struct ValueVisitor<'de>(PhantomData<&'de str>);

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
        Ok(i128::try_from(v).map(|v| Value::Int(v.into())).unwrap_or(Value::Float(v as f64)))
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
pub(super) fn yaml_options(limits: Limits) -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = limits.depth;
    budget.flow_nesting_limit = limits.depth;
    budget.max_nodes = limits.values;
    // Each value is one or two events (start and end of a collection), each alias one: the
    // values run out first.
    budget.max_events = limits.values.saturating_mul(2).saturating_add(budget.max_aliases).saturating_add(1024);
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
pub(super) fn line_at(text: &str, line: u32) -> Option<&str> {
    text.split('\n').nth(usize::try_from(line.checked_sub(1)?).ok()?)
}

/// The character at a 1-based line and column (columns count characters).
pub(super) fn char_at(text: &str, pos: Pos) -> Option<char> {
    line_at(text, pos.line)?.chars().nth(usize::try_from(pos.col.checked_sub(1)?).ok()?)
}

/// The name of the alias at `pos` (`*name`), as written.
pub(super) fn alias_at(text: &str, pos: Pos) -> Option<String> {
    let line = line_at(text, pos.line)?;
    let rest: String = line.chars().skip(usize::try_from(pos.col.checked_sub(1)?).ok()?).collect();
    let name = rest.strip_prefix('*')?;
    let end = name.find(|c: char| c.is_whitespace() || ",[]{}".contains(c)).unwrap_or(name.len());
    (end > 0).then(|| name[..end].to_owned())
}

/// For a tab error reported after the tab, the position of the first tab of that run.
pub(super) fn tab_start(text: &str, pos: Pos) -> Pos {
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
    Pos { line: pos.line, col: col as u32 }
}

pub(super) const ALIASES_EXPAND_TOO_MUCH: &str = "the document is too large: its aliases expand to too many values";

/// The message for a budget breach: one sentence, no internals.
pub(super) fn budget_message(breach: &BudgetBreach, limits: Limits) -> String {
    let defaults = serde_saphyr::Budget::default();
    match breach {
        BudgetBreach::Depth { .. } => limits.depth_message(),
        BudgetBreach::Nodes { .. } | BudgetBreach::Events { .. } => limits.values_message(),
        BudgetBreach::ScalarBytes { .. } => format!(
            "the document is too large: its values hold more than {} MiB of text",
            defaults.max_total_scalar_bytes >> 20
        ),
        BudgetBreach::Aliases { .. } => {
            format!("the document is too large: it uses more than {} aliases", thousands(defaults.max_aliases))
        }
        BudgetBreach::Anchors { .. } => {
            format!("the document is too large: it defines more than {} anchors", thousands(defaults.max_anchors))
        }
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
pub(super) fn yaml_error(e: &serde_saphyr::Error, text: &str, limits: Limits) -> SyntaxError {
    use serde_saphyr::Error as E;
    let mut pos = e.location().map(Pos::from_location).unwrap_or_default().or(Pos::START);
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
        E::ExternalMessage { source, .. } if let ExternalMessageSource::Parser(scan) = &**source => match scan.kind() {
            ErrorKind::RecursionLimitExceeded => limits.depth_message(),
            ErrorKind::UnexpectedCharacter { character } => {
                format!("unexpected character {}", quote(&character.to_string()))
            }
            ErrorKind::TabInBlockIndentation | ErrorKind::TabNotAllowed | ErrorKind::TabInIndentation => {
                pos = tab_start(text, pos);
                lower_first(&one_line(&scan.kind().to_string()))
            }
            _ => with_indent_hint(default_message(inner), text, pos),
        },
        other => with_indent_hint(default_message(other), text, pos),
    };
    // `from: [*]` is the most likely YAML mistake in a policy: `*` starts an alias.
    if message.contains("alias") && char_at(text, pos) == Some('*') && alias_at(text, pos).is_none() {
        message.push_str("; to mean any address, write \"*\" in quotes");
    }
    SyntaxError { pos, message }
}

pub(super) fn default_message(e: &serde_saphyr::Error) -> String {
    let m = serde_saphyr::UserMessageFormatter.format_message(e);
    lower_first(&one_line(&m))
}

/// Lower-cases the first letter unless the first word is an acronym (`YAML ...`).
pub(super) fn lower_first(s: &str) -> String {
    let mut chars = s.chars();
    match (chars.next(), chars.next()) {
        (Some(a), Some(b)) if a.is_uppercase() && !b.is_uppercase() => {
            a.to_lowercase().chain(s.chars().skip(1)).collect()
        }
        _ => s.to_owned(),
    }
}

/// The parser's sentence, and the project's hint when the line at `pos` is a key indented
/// like no block open above it: "; indent `to:` like `from:` on line 11".
fn with_indent_hint(mut message: String, text: &str, pos: Pos) -> String {
    if let Some(hint) = indent_hint(text, pos.line) {
        message.push_str("; ");
        message.push_str(&hint);
    }
    message
}

/// A line of block YAML as the indentation hint sees it: its indentation (spaces), whether it
/// is a sequence item (`- `), and the plain key it starts (`name:`) with the key's column.
struct BlockLine<'a> {
    indent: usize,
    item: bool,
    key: Option<(usize, &'a str)>,
}

/// The key a line (or a sequence item's content) starts with, if it is a plain `key:`.
fn plain_key(rest: &str) -> Option<&str> {
    let end = rest.find(':')?;
    let (key, after) = (&rest[..end], &rest[end + 1..]);
    let plain = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    (plain && (after.is_empty() || after.starts_with([' ', '\t', '\r']))).then_some(key)
}

fn block_line(line: &str) -> Option<BlockLine<'_>> {
    let indent = line.len() - line.trim_start_matches(' ').len();
    let rest = line[indent..].trim_end_matches('\r');
    if rest.is_empty() || rest.starts_with('#') {
        return None;
    }
    match rest.strip_prefix("- ") {
        Some(item) => {
            let at = indent + 2 + (item.len() - item.trim_start_matches(' ').len());
            Some(BlockLine { indent, item: true, key: plain_key(item.trim_start_matches(' ')).map(|k| (at, k)) })
        }
        None => Some(BlockLine { indent, item: false, key: plain_key(rest).map(|k| (indent, k)) }),
    }
}

/// "indent `payments:` like `frontend:` on line 3": for a key on line `line` (1-based) indented
/// like none of the mappings open above it (or like a sequence's `-`), the key it most likely
/// belongs beside. None when its indentation fits (the error is something else).
pub(super) fn indent_hint(text: &str, line: u32) -> Option<String> {
    /// An open block: its column, the line (0-based) and key of its last entry, or a sequence.
    struct Open<'a> {
        col: usize,
        line: usize,
        key: Option<&'a str>,
    }
    let lines: Vec<&str> = text.split('\n').collect();
    let at = usize::try_from(line.checked_sub(1)?).ok()?;
    let bad = block_line(lines.get(at)?)?;
    let (col, key) = bad.key.filter(|_| !bad.item)?;
    let mut open: Vec<Open> = Vec::new();
    for (n, l) in lines.iter().enumerate().take(at) {
        let Some(b) = block_line(l) else { continue };
        if b.key.is_none() && !b.item {
            continue; // a continuation or flow text: not a block entry
        }
        while open.last().is_some_and(|o| o.col > b.indent) {
            open.pop();
        }
        if b.item {
            if !open.last().is_some_and(|o| o.col == b.indent && o.key.is_none()) {
                open.push(Open { col: b.indent, line: n, key: None });
            }
            if let Some((c, k)) = b.key {
                open.push(Open { col: c, line: n, key: Some(k) });
            }
        } else if let Some((c, k)) = b.key {
            if open.last().is_some_and(|o| o.col == c) {
                open.pop();
            }
            open.push(Open { col: c, line: n, key: Some(k) });
        }
    }
    let like = match open.iter().position(|o| o.col == col) {
        // Indented like a sequence's `-`: the item's keys are where it belongs.
        Some(i) if open[i].key.is_none() => open.get(i + 1).filter(|o| o.key.is_some())?,
        Some(_) => return None,
        None => open
            .iter()
            .filter(|o| o.key.is_some() && o.col < col)
            .max_by_key(|o| o.col)
            .or_else(|| open.iter().filter(|o| o.key.is_some() && o.col > col).min_by_key(|o| o.col))?,
    };
    Some(format!("indent `{key}:` like `{}:` on line {}", like.key?, like.line + 1))
}
