//! Kubernetes label selectors: `matchLabels` and `matchExpressions` (`In`, `NotIn`, `Exists`,
//! `DoesNotExist`), with upstream meaning. An empty selector (`{}`) selects everything; all
//! requirements are ANDed. Read from the position-carrying document tree, so every problem is
//! reported where it is.

use std::collections::BTreeMap;
use std::fmt;

use crate::policy::source::diag::{quote, suggest};
use crate::policy::source::tree::{Node, Pos, Value};

/// Labels of an object: key -> value.
pub type Labels = BTreeMap<String, String>;

/// A `matchExpressions` operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operator {
    /// The label is present and its value one of `values`.
    In,
    /// The label is absent, or its value none of `values`.
    NotIn,
    /// The label is present (any value).
    Exists,
    /// The label is absent.
    DoesNotExist,
}

impl Operator {
    pub fn as_str(self) -> &'static str {
        match self {
            Operator::In => "In",
            Operator::NotIn => "NotIn",
            Operator::Exists => "Exists",
            Operator::DoesNotExist => "DoesNotExist",
        }
    }

    const NAMES: [&'static str; 4] = ["In", "NotIn", "Exists", "DoesNotExist"];

    fn from_name(s: &str) -> Option<Operator> {
        match s {
            "In" => Some(Operator::In),
            "NotIn" => Some(Operator::NotIn),
            "Exists" => Some(Operator::Exists),
            "DoesNotExist" => Some(Operator::DoesNotExist),
            _ => None,
        }
    }
}

impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `matchExpressions` entry. Validated: `In`/`NotIn` have at least one value,
/// `Exists`/`DoesNotExist` none.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    /// Sorted, without duplicates.
    pub values: Vec<String>,
}

impl Requirement {
    pub fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.binary_search(v).is_ok()),
            Operator::NotIn => value.is_none_or(|v| self.values.binary_search(v).is_err()),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

/// A label selector: every `match_labels` entry and every expression must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LabelSelector {
    pub match_labels: Labels,
    pub expressions: Vec<Requirement>,
}

impl LabelSelector {
    /// `{}`: selects every object.
    pub fn everything() -> LabelSelector {
        LabelSelector::default()
    }

    /// Selects exactly the objects with these labels (and maybe others).
    pub fn labels<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> LabelSelector {
        LabelSelector {
            match_labels: pairs.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect(),
            expressions: Vec::new(),
        }
    }

    pub fn is_everything(&self) -> bool {
        self.match_labels.is_empty() && self.expressions.is_empty()
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.expressions.iter().all(|r| r.matches(labels))
    }
}

impl fmt::Display for LabelSelector {
    /// `app=web,tier in (api,db),!legacy` (kubectl's notation); `{}` for everything.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_everything() {
            return f.write_str("{}");
        }
        let mut parts: Vec<String> = self.match_labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for r in &self.expressions {
            parts.push(match r.operator {
                Operator::In => format!("{} in ({})", r.key, r.values.join(",")),
                Operator::NotIn => format!("{} notin ({})", r.key, r.values.join(",")),
                Operator::Exists => r.key.clone(),
                Operator::DoesNotExist => format!("!{}", r.key),
            });
        }
        f.write_str(&parts.join(","))
    }
}

/// What a value that should have been a string is, for messages: YAML reads unquoted `y`,
/// `no`, `on`, `true`, ... as booleans and digits as numbers, which Kubernetes refuses too.
pub(crate) fn not_a_string(v: &Value) -> String {
    match v {
        Value::Bool(_) => {
            "a boolean (quote it: YAML reads y, n, yes, no, on, off, true and false as booleans)".to_owned()
        }
        Value::Int(_) | Value::Float(_) => "a number (quote it)".to_owned(),
        other => other.kind().to_owned(),
    }
}

/// Where problems go: (position, one-sentence message).
pub(crate) type Report<'r> = &'r mut dyn FnMut(Pos, String);

/// The entries of mapping `n` whose keys are among `allowed`; other keys are reported (with a
/// suggestion) as unknown fields of `what`. `None` (nothing reported) if `n` is no mapping.
pub(crate) fn known_fields<'n, 't>(
    n: &'n Node<'t>,
    what: &str,
    allowed: &[&'static str],
    report: Report<'_>,
) -> Option<Vec<(&'static str, &'n Node<'t>)>> {
    let Value::Map(entries) = &n.value else { return None };
    let mut out: Vec<(&'static str, &'n Node<'t>)> = Vec::new();
    for (k, v) in entries.iter() {
        let Value::Str(key) = &k.value else {
            report(k.pos, format!("keys of {what} must be strings, not {}", k.value.kind()));
            continue;
        };
        match allowed.iter().find(|a| **a == &**key) {
            Some(name) if out.iter().any(|(n, _)| n == name) => {
                report(k.pos, format!("duplicate field `{name}` in {what}"));
            }
            Some(name) => out.push((name, v)),
            None => {
                let hint = match suggest(key, allowed.iter().copied()) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => {
                        format!("expected {}", allowed.iter().map(|a| format!("`{a}`")).collect::<Vec<_>>().join(", "))
                    }
                };
                report(k.pos, format!("unknown field {} in {what}; {hint}", quote(key)));
            }
        }
    }
    Some(out)
}

/// The value of field `name` among `fields`.
pub(crate) fn field<'n, 't>(fields: &[(&'static str, &'n Node<'t>)], name: &str) -> Option<&'n Node<'t>> {
    fields.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

/// A string-to-string mapping of labels (`matchLabels`, `metadata.labels`, or a segment
/// selector's `labels`); `field` names it in messages. Null is no labels.
pub(crate) fn read_labels(n: &Node, field: &str, report: Report<'_>) -> Labels {
    let entries = match &n.value {
        Value::Map(e) => &e[..],
        Value::Null => return Labels::new(),
        v => {
            report(n.pos, format!("`{field}` must be a mapping of label keys to values, not {}", v.kind()));
            return Labels::new();
        }
    };
    let mut out = Labels::new();
    for (k, v) in entries {
        let Value::Str(key) = &k.value else {
            report(k.pos, format!("a label key must be a string, not {}", k.value.kind()));
            continue;
        };
        if let Some(problem) = label_key_problem(key) {
            report(k.pos, format!("invalid label key {}: {problem}", quote(key)));
            continue;
        }
        match &v.value {
            Value::Str(s) => {
                out.insert(String::from(&**key), String::from(&**s));
            }
            Value::Null => {
                out.insert(String::from(&**key), String::new());
            }
            other => report(
                v.pos,
                format!("the value of label {} must be a string, not {}", quote(key), not_a_string(other)),
            ),
        }
    }
    out
}

/// Why `key` cannot be a label key (an optional DNS prefix and `/`, then a name of at most 63
/// characters), or `None`.
fn label_key_problem(key: &str) -> Option<&'static str> {
    let name = key.rsplit_once('/').map_or(key, |(_, n)| n);
    if name.is_empty() {
        return Some("the name part is empty");
    }
    if name.len() > 63 {
        return Some("the name part is longer than 63 characters");
    }
    None
}

const EXPRESSION_FIELDS: &[&str] = &["key", "operator", "values"];

/// A `matchExpressions` list.
pub(crate) fn read_expressions(n: &Node, report: Report<'_>) -> Vec<Requirement> {
    match &n.value {
        Value::Seq(items) => items.iter().filter_map(|item| read_expression(item, &mut *report)).collect(),
        Value::Null => Vec::new(),
        v => {
            report(
                n.pos,
                format!("`matchExpressions` must be a list of {{ key, operator, values }}, not {}", v.kind()),
            );
            Vec::new()
        }
    }
}

/// One `{ key, operator, values }`; `None` (with every problem reported) if it is not a valid
/// requirement.
fn read_expression(item: &Node, report: Report<'_>) -> Option<Requirement> {
    let Some(f) = known_fields(item, "a match expression", EXPRESSION_FIELDS, &mut *report) else {
        report(
            item.pos,
            format!("a match expression must be a mapping with `key` and `operator`, not {}", item.value.kind()),
        );
        return None;
    };
    let key = expression_key(field(&f, "key"), item, &mut *report);
    let operator = expression_operator(field(&f, "operator"), item, &mut *report);
    let values_node = field(&f, "values");
    let values = expression_values(values_node, &mut *report);
    let (key, operator) = (key?, operator?);
    let at = values_node.map_or(item.pos, |v| v.pos);
    match operator {
        Operator::In | Operator::NotIn if values.is_empty() => {
            report(at, format!("operator {operator} needs at least one value in `values`"));
            None
        }
        Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
            report(at, format!("operator {operator} takes no `values`"));
            None
        }
        _ => Some(Requirement { key, operator, values }),
    }
}

/// A match expression's `key`: a non-empty string.
fn expression_key(key: Option<&Node>, item: &Node, report: Report<'_>) -> Option<String> {
    match key {
        Some(Node { value: Value::Str(s), .. }) if !s.is_empty() => Some(String::from(&**s)),
        Some(k) => {
            report(k.pos, format!("`key` must be a non-empty label key, not {}", k.value.kind()));
            None
        }
        None => {
            report(item.pos, "this match expression has no `key`".to_owned());
            None
        }
    }
}

/// A match expression's `operator`, with a did-you-mean for a misspelt one.
fn expression_operator(operator: Option<&Node>, item: &Node, report: Report<'_>) -> Option<Operator> {
    match operator {
        Some(Node { value: Value::Str(s), pos }) => {
            let op = Operator::from_name(s);
            if op.is_none() {
                let hint = suggest(s, Operator::NAMES).map_or(String::new(), |g| format!("; did you mean `{g}`?"));
                report(
                    *pos,
                    format!("unknown operator {}: expected In, NotIn, Exists or DoesNotExist{hint}", quote(s)),
                );
            }
            op
        }
        Some(o) => {
            report(o.pos, format!("`operator` must be In, NotIn, Exists or DoesNotExist, not {}", o.value.kind()));
            None
        }
        None => {
            report(item.pos, "this match expression has no `operator` (In, NotIn, Exists or DoesNotExist)".to_owned());
            None
        }
    }
}

/// A match expression's `values`: strings, sorted, without duplicates (absent or null: none).
fn expression_values(values: Option<&Node>, report: Report<'_>) -> Vec<String> {
    let mut out = Vec::new();
    match values.map(|v| (v, &v.value)) {
        Some((_, Value::Seq(vs))) => {
            for v in vs.iter() {
                match &v.value {
                    Value::Str(s) => out.push(String::from(&**s)),
                    other => {
                        report(v.pos, format!("a value of `values` must be a string, not {}", not_a_string(other)))
                    }
                }
            }
        }
        Some((_, Value::Null)) | None => {}
        Some((vn, other)) => report(vn.pos, format!("`values` must be a list of strings, not {}", other.kind())),
    }
    out.sort();
    out.dedup();
    out
}

const SELECTOR_FIELDS: &[&str] = &["matchLabels", "matchExpressions"];

/// A Kubernetes `LabelSelector` (`{ matchLabels, matchExpressions }`); `what` names it in
/// messages (`podSelector`, ...). Null is `{}`, everything (as the API server reads it).
pub(crate) fn read_selector(n: &Node, what: &str, report: Report<'_>) -> Option<LabelSelector> {
    if n.value == Value::Null {
        return Some(LabelSelector::everything());
    }
    let Some(f) = known_fields(n, &format!("`{what}`"), SELECTOR_FIELDS, report) else {
        report(
            n.pos,
            format!(
                "`{what}` must be a label selector such as {{ matchLabels: {{ app: web }} }}, not {}",
                n.value.kind()
            ),
        );
        return None;
    };
    let mut sel = LabelSelector::everything();
    if let Some(m) = field(&f, "matchLabels") {
        sel.match_labels = read_labels(m, "matchLabels", report);
    }
    if let Some(e) = field(&f, "matchExpressions") {
        sel.expressions = read_expressions(e, report);
    }
    Some(sel)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::source::tree::parse_tree;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn selector(yaml: &str) -> Result<LabelSelector, Vec<(u32, u32, String)>> {
        let tree = parse_tree(yaml).unwrap();
        let mut problems = Vec::new();
        let sel = read_selector(&tree, "podSelector", &mut |p: Pos, m: String| problems.push((p.line, p.col, m)));
        if problems.is_empty() { Ok(sel.unwrap()) } else { Err(problems) }
    }

    #[test]
    fn match_labels_and_expressions() {
        let web = labels(&[("app", "web"), ("tier", "api")]);
        let db = labels(&[("app", "db"), ("legacy", "yes")]);
        let none = labels(&[]);
        let all = selector("{}").unwrap();
        assert!(all.is_everything() && all.matches(&web) && all.matches(&none));
        let s = selector("matchLabels: { app: web }").unwrap();
        assert!(s.matches(&web) && !s.matches(&db) && !s.matches(&none));
        let s = selector("matchExpressions: [ { key: app, operator: In, values: [web, api] } ]").unwrap();
        assert!(s.matches(&web) && !s.matches(&db) && !s.matches(&none));
        // NotIn matches objects without the label.
        let s = selector("matchExpressions: [ { key: app, operator: NotIn, values: [web] } ]").unwrap();
        assert!(!s.matches(&web) && s.matches(&db) && s.matches(&none));
        let s = selector("matchExpressions: [ { key: legacy, operator: Exists } ]").unwrap();
        assert!(!s.matches(&web) && s.matches(&db) && !s.matches(&none));
        let s = selector("matchExpressions: [ { key: legacy, operator: DoesNotExist } ]").unwrap();
        assert!(s.matches(&web) && !s.matches(&db) && s.matches(&none));
        // Everything is ANDed.
        let s = selector("matchLabels: { app: web }\nmatchExpressions: [ { key: tier, operator: In, values: [db] } ]")
            .unwrap();
        assert!(!s.matches(&web));
        assert_eq!(s.to_string(), "app=web,tier in (db)");
    }

    #[test]
    fn selectors_are_validated_with_positions() {
        let e = selector("matchExpressions:\n  - { key: app, operator: In }\n").unwrap_err();
        assert_eq!((e[0].0, e[0].2.as_str()), (2, "operator In needs at least one value in `values`"));
        let e = selector("matchExpressions:\n  - { key: app, operator: Exists, values: [x] }\n").unwrap_err();
        assert_eq!((e[0].0, e[0].1), (2, 43), "{e:?}");
        assert!(e[0].2.contains("takes no `values`"));
        let e = selector("matchExpressions:\n  - { key: app, operator: in, values: [x] }\n").unwrap_err();
        assert!(e[0].2.contains("did you mean `In`?"), "{e:?}");
        let e = selector("matchLabel: { app: web }\n").unwrap_err();
        assert_eq!((e[0].0, e[0].1), (1, 1));
        assert!(e[0].2.contains("did you mean `matchLabels`?"), "{e:?}");
        let e = selector("matchLabels: { version: 2 }\n").unwrap_err();
        assert!(e[0].2.contains("must be a string, not a number (quote it)"), "{e:?}");
        let e = selector("matchLabels: { ns: y }\n").unwrap_err();
        assert!(e[0].2.contains("not a boolean (quote it: YAML reads y,"), "{e:?}");
    }
}
