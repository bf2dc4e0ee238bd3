//! From text to a validated [`Policy`], reporting every problem with its position.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use ipnet::IpNet;

use crate::policy::model::{
    ANY_NAME, Action, Alerts, BucketSpec, LimitScope, MAX_RATE, MAX_REFILL_SECONDS, MIN_BYTES_BURST, Mode,
    POLICY_VERSION, Per, PodSelector, Policy, PortSpec, RateLimit, Rule, SegRef, Segment, WORLD_NAME,
};
use crate::policy::source::diag::{Diagnostic, Diagnostics, quote, suggest};
use crate::policy::source::tree::{Node, Pos, Value, parse_tree};

mod apis;
mod refs;
mod rules;
mod sections;

/// Parses and validates a policy (YAML, or JSON if the first non-blank character is `{`).
/// `origin` names the text in diagnostics (usually the file path).
pub fn parse(text: &str, origin: &str) -> Result<Policy, Diagnostics> {
    let mut v = Validator {
        origin,
        diags: Vec::new(),
        omitted: 0,
        first_omitted: (usize::MAX, usize::MAX),
        last_kept: None,
        suggestions_left: MAX_SEGMENT_SUGGESTIONS,
    };
    let root = match parse_tree(text) {
        Ok(root) => root,
        Err(e) => {
            v.err(e.pos, e.message);
            return Err(v.finish());
        }
    };
    let policy = v.policy(&root);
    if v.diags.is_empty() { Ok(policy) } else { Err(v.finish()) }
}

/// Reads and validates a policy file. Read errors and invalid UTF-8 are diagnostics too.
pub fn load(path: &Path) -> Result<Policy, Diagnostics> {
    let origin = path.display().to_string();
    let one = |line, col, message: String| Diagnostics(vec![Diagnostic { origin: origin.clone(), line, col, message }]);
    let bytes = std::fs::read(path).map_err(|e| one(1, 1, format!("cannot read the policy file: {e}")))?;
    match std::str::from_utf8(&bytes) {
        Ok(text) => parse(text, &origin),
        Err(e) => Err(Diagnostics(vec![super::source::diag::utf8_diagnostic(&origin, &bytes, e)])),
    }
}

const TOP_FIELDS: &[&str] = &["version", "mode", "defaultAction", "segments", "rules", "rateLimits", "alerts", "apis"];
const API_FIELDS: &[&str] = &["name", "segment", "ports", "protocol"];
const ALERT_FIELDS: &[&str] = &[
    "learnSeconds",
    "newPeer",
    "newPort",
    "scanDestinations",
    "scanSeconds",
    "intervalSeconds",
    "rateFactor",
    "rateHistorySeconds",
    "rateWindowSeconds",
];
const SEGMENT_FIELDS: &[&str] = &["cidrs", "selector", "mode"];
const SELECTOR_FIELDS: &[&str] = &["namespace", "labels", "matchExpressions"];
const RULE_FIELDS: &[&str] = &["name", "description", "from", "to", "ports", "action", "mode"];
const LIMIT_FIELDS: &[&str] = &["name", "from", "to", "ports", "packets", "connections", "bytes", "scope"];
const BUCKET_FIELDS: &[&str] = &["rate", "per", "burst"];
/// The buckets of a rate limit, in file order.
const BUCKETS: [&str; 3] = ["packets", "connections", "bytes"];

/// The known fields of one mapping, with their value nodes.
struct Fields<'n> {
    /// Position of the mapping itself, for "missing field" errors.
    pos: Pos,
    found: Vec<(&'static str, &'n Node<'n>)>,
}

impl<'n> Fields<'n> {
    fn get(&self, name: &str) -> Option<&'n Node<'n>> {
        self.found.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }
}

struct Validator<'a> {
    origin: &'a str,
    diags: Vec<Diagnostic>,
    /// Problems found but not kept (see [`MAX_DIAGNOSTICS`]), and the first position among them.
    omitted: usize,
    first_omitted: (usize, usize),
    /// Once problems were left out: the position of the last one kept.
    last_kept: Option<(usize, usize)>,
    /// How many more "did you mean" searches over the segment names may be made: each costs
    /// time in the number of segments, and a policy can name thousands of unknown segments.
    suggestions_left: usize,
}

/// The most problems reported for one policy (those first in the file); one more diagnostic
/// says how many others there are. A policy of millions of values could otherwise hold
/// millions of problems, and their messages would cost more memory than the policy.
const MAX_DIAGNOSTICS: usize = 1000;

/// "Did you mean" searches over the segment names per policy.
const MAX_SEGMENT_SUGGESTIONS: usize = 100;

/// The segments, and their index by name.
struct Names<'p> {
    segments: &'p [Segment],
    index: HashMap<&'p str, usize>,
}

impl<'p> Names<'p> {
    fn new(segments: &'p [Segment]) -> Self {
        let index = segments.iter().enumerate().map(|(i, s)| (s.name.as_str(), i)).collect();
        Names { segments, index }
    }
}

/// What a mapping is, for messages about its fields ("unknown field `x` in {owner}"): built
/// only if there is something to say (a policy may have hundreds of thousands of segments).
#[derive(Clone, Copy)]
enum Owner<'s> {
    Text(&'s str),
    /// A segment, by name.
    Segment(&'s str),
}

impl fmt::Display for Owner<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Text(s) => f.write_str(s),
            Owner::Segment(name) => write!(f, "segment {}", quote(name)),
        }
    }
}

/// Where a CIDR was first listed, to report duplicates.
struct CidrSeen {
    net: IpNet,
    segment: u32,
    line: u32,
}

impl Validator<'_> {
    fn err(&mut self, pos: Pos, message: impl Into<String>) {
        let pos = pos.or(Pos::START);
        if self.left_out(pos) {
            return;
        }
        self.diags.push(Diagnostic {
            origin: self.origin.to_owned(),
            line: pos.line as usize,
            col: pos.col as usize,
            message: message.into(),
        });
        if self.diags.len() >= 2 * MAX_DIAGNOSTICS {
            self.keep_first();
        }
    }

    /// Whether a problem at `pos` is certain to be left out (see [`MAX_DIAGNOSTICS`]): then it
    /// is counted, and its message need not be made.
    fn left_out(&mut self, pos: Pos) -> bool {
        let at = (pos.line as usize, pos.col as usize);
        match self.last_kept {
            // As many problems are kept, all before it (or found before it, at its position).
            Some(last) if at >= last => {
                self.omitted += 1;
                self.first_omitted = self.first_omitted.min(at);
                true
            }
            _ => false,
        }
    }

    /// Keeps the first [`MAX_DIAGNOSTICS`] problems by position (found first among equals),
    /// counting the others.
    fn keep_first(&mut self) {
        self.diags.sort_by_key(|d| (d.line, d.col));
        if self.diags.len() > MAX_DIAGNOSTICS {
            let first = &self.diags[MAX_DIAGNOSTICS];
            self.first_omitted = self.first_omitted.min((first.line, first.col));
            self.omitted += self.diags.len() - MAX_DIAGNOSTICS;
            self.diags.truncate(MAX_DIAGNOSTICS);
            self.last_kept = self.diags.last().map(|d| (d.line, d.col));
        }
    }

    fn finish(mut self) -> Diagnostics {
        self.keep_first();
        if self.omitted > 0 {
            let (line, col) = self.first_omitted;
            self.diags.push(Diagnostic {
                origin: self.origin.to_owned(),
                line,
                col,
                message: format!(
                    "{} more problems from here on are not shown; only the first {} are reported",
                    self.omitted, MAX_DIAGNOSTICS
                ),
            });
        }
        Diagnostics(self.diags)
    }

    /// Checks that `node` is a mapping whose keys are strings from `allowed`, each at most once.
    /// Reports the problems; returns the fields it could read (`None` if not a mapping).
    fn fields<'n>(
        &mut self,
        node: &'n Node<'n>,
        what: Owner<'_>,
        allowed: &'static [&'static str],
    ) -> Option<Fields<'n>> {
        let Value::Map(entries) = &node.value else {
            return None;
        };
        let mut fields = Fields { pos: node.pos, found: Vec::new() };
        for (k, v) in entries {
            let Value::Str(key) = &k.value else {
                self.err(k.pos, format!("keys of {what} must be strings, not {}", k.value.kind()));
                continue;
            };
            let Some(name) = allowed.iter().find(|a| **a == &**key) else {
                if self.left_out(k.pos) {
                    continue;
                }
                let hint = match suggest(key, allowed.iter().copied()) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => {
                        format!("expected {}", allowed.iter().map(|a| format!("`{a}`")).collect::<Vec<_>>().join(", "))
                    }
                };
                self.err(k.pos, format!("unknown field {} in {what}; {hint}", quote(key)));
                continue;
            };
            if fields.get(name).is_some() {
                // The YAML parser already rejects duplicate keys; this covers the JSON fallback.
                self.err(k.pos, format!("duplicate field `{name}` in {what}"));
                continue;
            }
            fields.found.push((name, v));
        }
        Some(fields)
    }

    fn policy(&mut self, root: &Node) -> Policy {
        let mut policy = Policy::default();
        let Some(top) = self.fields(root, Owner::Text("the policy"), TOP_FIELDS) else {
            let msg = match root.value {
                Value::Null => "the policy is empty; expected a mapping with `version`, \
                                `segments` and `rules`"
                    .to_owned(),
                ref v => {
                    format!("the policy must be a mapping with `version`, `segments` and `rules`, not {}", v.kind())
                }
            };
            self.err(root.pos, msg);
            return policy;
        };

        match top.get("version") {
            None => self.err(top.pos, format!("missing `version`; add `version: {POLICY_VERSION}`")),
            Some(n) => match n.value {
                Value::Int(v) if v.get() == i128::from(POLICY_VERSION) => {}
                Value::Int(v) => self
                    .err(n.pos, format!("unsupported policy version {v}; this agent reads version {POLICY_VERSION}")),
                Value::Float(f) => {
                    self.err(n.pos, format!("`version` must be the whole number {POLICY_VERSION}, not {f:?}"))
                }
                ref v => self.err(n.pos, format!("`version` must be the number {POLICY_VERSION}, not {}", v.kind())),
            },
        }

        if let Some(n) = top.get("mode") {
            policy.mode = self.mode(n);
        }

        if let Some(n) = top.get("defaultAction")
            && let Some(a) = self.action(n, "defaultAction")
        {
            policy.default_action = a;
        }

        if let Some(n) = top.get("segments") {
            policy.segments = self.segments(n);
        }
        let names = Names::new(&policy.segments);
        if let Some(n) = top.get("rules") {
            policy.rules = self.rules(n, &names);
        }
        if let Some(n) = top.get("rateLimits") {
            policy.rate_limits = self.rate_limits(n, &names);
        }
        if let Some(n) = top.get("alerts") {
            policy.alerts = self.alerts(n);
        }
        if let Some(n) = top.get("apis") {
            policy.apis = self.apis(n, &names);
        }
        policy
    }
}
