//! From text to a validated [`Policy`], reporting every problem with its position.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::str::FromStr;

use ipnet::IpNet;

use super::diag::{Diagnostic, Diagnostics, quote, suggest};
use super::model::{
    ANY_NAME, Action, Alerts, BucketSpec, LimitScope, MAX_RATE, MAX_REFILL_SECONDS, MIN_BYTES_BURST,
    Mode, POLICY_VERSION, Per, PodSelector, Policy, PortSpec, RateLimit, Rule, SegRef, Segment, WORLD_NAME,
};
use super::node::{Node, Pos, Value, parse_tree};

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
    if v.diags.is_empty() {
        Ok(policy)
    } else {
        Err(v.finish())
    }
}

/// Reads and validates a policy file. Read errors and invalid UTF-8 are diagnostics too.
pub fn load(path: &Path) -> Result<Policy, Diagnostics> {
    let origin = path.display().to_string();
    let one = |line, col, message: String| {
        Diagnostics(vec![Diagnostic {
            origin: origin.clone(),
            line,
            col,
            message,
        }])
    };
    let bytes =
        std::fs::read(path).map_err(|e| one(1, 1, format!("cannot read the policy file: {e}")))?;
    match std::str::from_utf8(&bytes) {
        Ok(text) => parse(text, &origin),
        Err(e) => Err(Diagnostics(vec![super::diag::utf8_diagnostic(&origin, &bytes, e)])),
    }
}

const TOP_FIELDS: &[&str] = &[
    "version",
    "mode",
    "defaultAction",
    "segments",
    "rules",
    "rateLimits",
    "alerts",
];
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
const LIMIT_FIELDS: &[&str] = &[
    "name",
    "from",
    "to",
    "ports",
    "packets",
    "connections",
    "bytes",
    "scope",
];
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
        let index = segments
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i))
            .collect();
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
        let mut fields = Fields {
            pos: node.pos,
            found: Vec::new(),
        };
        for (k, v) in entries {
            let Value::Str(key) = &k.value else {
                self.err(
                    k.pos,
                    format!("keys of {what} must be strings, not {}", k.value.kind()),
                );
                continue;
            };
            let Some(name) = allowed.iter().find(|a| **a == &**key) else {
                if self.left_out(k.pos) {
                    continue;
                }
                let hint = match suggest(key, allowed.iter().copied()) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!(
                        "expected {}",
                        allowed
                            .iter()
                            .map(|a| format!("`{a}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                };
                self.err(
                    k.pos,
                    format!("unknown field {} in {what}; {hint}", quote(key)),
                );
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
                ref v => format!(
                    "the policy must be a mapping with `version`, `segments` and `rules`, not {}",
                    v.kind()
                ),
            };
            self.err(root.pos, msg);
            return policy;
        };

        match top.get("version") {
            None => self.err(
                top.pos,
                format!("missing `version`; add `version: {POLICY_VERSION}`"),
            ),
            Some(n) => match n.value {
                Value::Int(v) if v.get() == i128::from(POLICY_VERSION) => {}
                Value::Int(v) => self.err(
                    n.pos,
                    format!(
                        "unsupported policy version {v}; this agent reads version {POLICY_VERSION}"
                    ),
                ),
                Value::Float(f) => self.err(
                    n.pos,
                    format!("`version` must be the whole number {POLICY_VERSION}, not {f:?}"),
                ),
                ref v => self.err(
                    n.pos,
                    format!(
                        "`version` must be the number {POLICY_VERSION}, not {}",
                        v.kind()
                    ),
                ),
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
        policy
    }

    /// The `alerts` section: every field optional, defaults as in [`Alerts::default`].
    fn alerts(&mut self, n: &Node) -> Option<Alerts> {
        let Some(f) = self.fields(n, Owner::Text("`alerts`"), ALERT_FIELDS) else {
            self.err(n.pos, format!("`alerts` must be a mapping like {{ scanDestinations: 20 }}, not {}", n.value.kind()));
            return None;
        };
        let mut a = Alerts::default();
        const DAY: u64 = 86_400;
        for (field, value, min, max) in [
            ("learnSeconds", &mut a.learn_seconds, 0, 30 * DAY),
            ("scanDestinations", &mut a.scan_destinations, 0, 1_000_000),
            ("scanSeconds", &mut a.scan_seconds, 1, DAY),
            ("intervalSeconds", &mut a.interval_seconds, 1, DAY),
            ("rateFactor", &mut a.rate_factor, 0, 1_000_000),
            ("rateHistorySeconds", &mut a.rate_history_seconds, 1, 365 * DAY),
            ("rateWindowSeconds", &mut a.rate_window_seconds, 1, 3600),
        ] {
            if let Some(n) = f.get(field)
                && let Some(v) = self.whole(n, field, min, max)
            {
                *value = v;
            }
        }
        for (field, value) in [("newPeer", &mut a.new_peer), ("newPort", &mut a.new_port)] {
            if let Some(n) = f.get(field) {
                match n.value {
                    Value::Bool(b) => *value = b,
                    ref v => self.err(n.pos, format!("`{field}` must be true or false, not {}", v.kind())),
                }
            }
        }
        Some(a)
    }

    fn action(&mut self, n: &Node, field: &str) -> Option<Action> {
        match &n.value {
            Value::Str(s) if &**s == "allow" => Some(Action::Allow),
            Value::Str(s) if &**s == "deny" => Some(Action::Deny),
            Value::Str(s) => {
                self.err(
                    n.pos,
                    format!("`{field}` must be `allow` or `deny`, not {}", quote(s)),
                );
                None
            }
            v => {
                self.err(
                    n.pos,
                    format!("`{field}` must be `allow` or `deny`, not {}", v.kind()),
                );
                None
            }
        }
    }

    /// Every segment whose name is usable gets an index, even if its CIDRs have problems, so
    /// that rules naming it do not also report "unknown segment".
    /// The items of list field `field` (none when it is empty or null), or None after reporting
    /// that it must be `what`.
    fn list<'n, 't>(&mut self, n: &'n Node<'t>, field: &str, what: &str) -> Option<&'n [Node<'t>]> {
        match &n.value {
            Value::Seq(items) => Some(&items[..]),
            Value::Null => Some(&[]),
            v => {
                self.err(n.pos, format!("`{field}` must be {what}, not {}", v.kind()));
                None
            }
        }
    }

    fn segments(&mut self, n: &Node) -> Vec<Segment> {
        // Sized for policies of hundreds of thousands of segments: nothing per segment but
        // its name and CIDRs is kept, and names are borrowed from the tree.
        let entries = match &n.value {
            Value::Map(e) => &e[..],
            Value::Null => &[],
            v => {
                self.err(
                    n.pos,
                    format!(
                        "`segments` must be a mapping from segment name to {{ cidrs: [...] }}, not {}",
                        v.kind()
                    ),
                );
                return Vec::new();
            }
        };
        let mut segments: Vec<Segment> = Vec::with_capacity(entries.len());
        let mut name_lines: HashMap<&str, u32> = HashMap::with_capacity(entries.len());
        // Normalised (prefix length in IPv6 space, 16-byte network) -> first listing. Most
        // segments hold one or a few CIDRs.
        let mut seen: HashMap<(u32, [u8; 16]), CidrSeen> = HashMap::with_capacity(entries.len());
        for (k, v) in entries {
            let name: &str = match &k.value {
                Value::Str(s) => s,
                other => {
                    self.err(
                        k.pos,
                        format!(
                            "a segment name must be a string (quote it), not {}",
                            other.kind()
                        ),
                    );
                    continue;
                }
            };
            if name.is_empty() {
                self.err(k.pos, "a segment name must not be empty");
                continue;
            }
            if name == WORLD_NAME {
                self.err(
                    k.pos,
                    "the segment name `world` is reserved: it means every address in no segment",
                );
                continue;
            }
            if name == ANY_NAME {
                self.err(
                    k.pos,
                    "the segment name `*` is reserved: it means any address",
                );
                continue;
            }
            if let Some(line) = name_lines.get(name) {
                // Only reachable through the JSON fallback (YAML rejects duplicate keys).
                self.err(
                    k.pos,
                    format!(
                        "duplicate segment {} (first defined on line {line})",
                        quote(name)
                    ),
                );
                continue;
            }
            name_lines.insert(name, k.pos.line);
            let index = segments.len();
            let mut cidrs = Vec::new();
            let mut mode = Mode::Enforce;
            let mut selector = None;
            match self.fields(v, Owner::Segment(name), SEGMENT_FIELDS) {
                None => self.err(
                    v.pos.or(k.pos),
                    format!(
                        "segment {} must be a mapping like {{ cidrs: [10.0.0.0/8] }}, not {}",
                        quote(name),
                        v.value.kind()
                    ),
                ),
                Some(f) => {
                    if let Some(list) = f.get("cidrs") {
                        cidrs = self.cidrs(list, index, &segments, name, &mut seen);
                    }
                    if let Some(n) = f.get("selector") {
                        selector = self.selector(n);
                    }
                    if f.get("cidrs").is_none() && f.get("selector").is_none() {
                        self.err(
                            k.pos,
                            format!(
                                "segment {} has no `cidrs` (or `selector`, for pods selected by labels)",
                                quote(name)
                            ),
                        );
                    }
                    if let Some(n) = f.get("mode") {
                        mode = self.mode(n);
                    }
                }
            }
            segments.push(Segment {
                name: name.to_owned(),
                cidrs,
                mode,
                selector,
            });
        }
        segments
    }

    /// A segment's `selector`: `{ namespace: NS, labels: { k: v }, matchExpressions: [...] }`,
    /// every field optional (`{}`: every pod of every namespace).
    fn selector(&mut self, n: &Node) -> Option<PodSelector> {
        use crate::k8s::selector as sel;
        let mut report = |pos, message| self.err(pos, message);
        let Some(f) = sel::known_fields(n, "a segment's `selector`", SELECTOR_FIELDS, &mut report) else {
            report(
                n.pos,
                format!(
                    "`selector` must be a mapping like {{ namespace: prod, labels: {{ app: web }} }}, not {}",
                    n.value.kind()
                ),
            );
            return None;
        };
        let namespace = match sel::field(&f, "namespace") {
            None => None,
            Some(Node { value: Value::Str(s), .. }) if !s.is_empty() => Some(String::from(&**s)),
            Some(v) => {
                report(v.pos, format!("`namespace` must be a namespace name, not {}", v.value.kind()));
                None
            }
        };
        let mut selector = crate::k8s::LabelSelector::everything();
        if let Some(l) = sel::field(&f, "labels") {
            selector.match_labels = sel::read_labels(l, "labels", &mut report);
        }
        if let Some(e) = sel::field(&f, "matchExpressions") {
            selector.expressions = sel::read_expressions(e, &mut report);
        }
        Some(PodSelector { namespace, selector })
    }

    /// A `mode` (of the policy, a segment or a rule): `enforce` or `audit`.
    fn mode(&mut self, n: &Node) -> Mode {
        match &n.value {
            Value::Str(s) if &**s == "enforce" => Mode::Enforce,
            Value::Str(s) if &**s == "audit" => Mode::Audit,
            Value::Str(s) => {
                self.err(n.pos, format!("`mode` must be `enforce` or `audit`, not {}", quote(s)));
                Mode::Enforce
            }
            v => {
                self.err(n.pos, format!("`mode` must be `enforce` or `audit`, not {}", v.kind()));
                Mode::Enforce
            }
        }
    }

    fn cidrs(
        &mut self,
        list: &Node,
        index: usize,
        segments: &[Segment],
        name: &str,
        seen: &mut HashMap<(u32, [u8; 16]), CidrSeen>,
    ) -> Vec<IpNet> {
        let Some(items) = self.list(list, "cidrs", "a list of CIDRs") else { return Vec::new() };
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            let Value::Str(text) = &item.value else {
                self.err(
                    item.pos,
                    format!(
                        "a CIDR must be a string like 10.0.0.0/8, not {}",
                        item.value.kind()
                    ),
                );
                continue;
            };
            let net = match parse_cidr(text) {
                Ok(net) => net,
                Err(msg) => {
                    self.err(item.pos, msg);
                    continue;
                }
            };
            let key = super::compile::cidr_key(&net);
            match seen.get(&key) {
                Some(first) => {
                    let what = if first.net == net {
                        quote(text)
                    } else {
                        format!("{} (the same network as `{}`)", quote(text), first.net)
                    };
                    let first_segment = first.segment as usize;
                    let msg = if first_segment == index {
                        format!("{what} is listed twice in segment {}", quote(name))
                    } else {
                        let other = segments.get(first_segment).map_or("?", |s| s.name.as_str());
                        format!(
                            "{what} is already in segment {} (line {}); a network can be in only one segment",
                            quote(other),
                            first.line
                        )
                    };
                    self.err(item.pos, msg);
                }
                None => {
                    seen.insert(
                        key,
                        CidrSeen {
                            net,
                            segment: u32::try_from(index).unwrap_or(u32::MAX),
                            line: item.pos.line,
                        },
                    );
                    out.push(net);
                }
            }
        }
        out
    }

    /// The `name` of a rule or rate limit (`what`), checked to be a non-empty string not used
    /// before by another of its kind (`names`: name -> line of first use). "" when missing or
    /// bad, after reporting why.
    fn unique_name(&mut self, f: &Fields<'_>, what: &str, names: &mut HashMap<String, usize>) -> String {
        let Some(n) = f.get("name") else {
            self.err(f.pos, format!("this {what} has no `name`"));
            return String::new();
        };
        match &n.value {
            Value::Str(s) if s.is_empty() => {
                self.err(n.pos, format!("a {what} name must not be empty"));
                String::new()
            }
            Value::Str(s) => {
                if let Some(line) = names.get(&**s) {
                    self.err(n.pos, format!("duplicate {what} name {} (first used on line {line})", quote(s)));
                } else {
                    names.insert(String::from(&**s), n.pos.line as usize);
                }
                String::from(&**s)
            }
            v => {
                self.err(n.pos, format!("a {what} name must be a string, not {}", v.kind()));
                String::new()
            }
        }
    }

    fn rules(&mut self, n: &Node, segments: &Names<'_>) -> Vec<Rule> {
        let Some(items) = self.list(n, "rules", "a list of rules") else { return Vec::new() };
        let mut rules = Vec::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        for item in items {
            let Some(f) = self.fields(item, Owner::Text("a rule"), RULE_FIELDS) else {
                self.err(
                    item.pos,
                    format!(
                        "a rule must be a mapping with `name`, `from`, `to` and `action`, not {}",
                        item.value.kind()
                    ),
                );
                continue;
            };
            let name = self.unique_name(&f, "rule", &mut names);
            let rule_label = if name.is_empty() {
                "this rule".to_owned()
            } else {
                format!("rule {}", quote(&name))
            };
            let description = match f.get("description") {
                None => None,
                Some(n) => match &n.value {
                    Value::Str(s) => Some(String::from(&**s)),
                    v => {
                        self.err(
                            n.pos,
                            format!("`description` must be a string, not {}", v.kind()),
                        );
                        None
                    }
                },
            };
            let from = self.seg_refs(&f, "from", &rule_label, segments);
            let to = self.seg_refs(&f, "to", &rule_label, segments);
            let ports = f.get("ports").map(|n| self.ports(n, "rule"));
            let action = match f.get("action") {
                None => {
                    self.err(
                        f.pos,
                        format!(
                            "{rule_label} has no `action`; add `action: allow` or `action: deny`"
                        ),
                    );
                    Action::Deny
                }
                Some(n) => self.action(n, "action").unwrap_or_default(),
            };
            let mut mode = Mode::Enforce;
            if let Some(n) = f.get("mode") {
                mode = self.mode(n);
                if mode == Mode::Audit && action == Action::Allow {
                    self.err(
                        n.pos,
                        format!(
                            "{rule_label} allows, so auditing it changes nothing: `mode: audit` \
                             applies to a deny rule (or a segment, or the whole policy)"
                        ),
                    );
                }
            }
            rules.push(Rule {
                name,
                description,
                from,
                to,
                ports,
                action,
                mode,
                grant: None,
            });
        }
        rules
    }

    fn rate_limits(&mut self, n: &Node, segments: &Names<'_>) -> Vec<RateLimit> {
        let Some(items) = self.list(n, "rateLimits", "a list of rate limits") else { return Vec::new() };
        let mut limits = Vec::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        for item in items {
            let Some(f) = self.fields(item, Owner::Text("a rate limit"), LIMIT_FIELDS) else {
                self.err(
                    item.pos,
                    format!(
                        "a rate limit must be a mapping with `name`, `from` and at least one of \
                         `packets`, `connections`, `bytes`, not {}",
                        item.value.kind()
                    ),
                );
                continue;
            };
            let name = self.unique_name(&f, "rate limit", &mut names);
            let label = if name.is_empty() {
                "this rate limit".to_owned()
            } else {
                format!("rate limit {}", quote(&name))
            };
            let from = match f.get("from") {
                None => {
                    self.err(
                        f.pos,
                        format!("{label} has no `from`; name one source segment, or world"),
                    );
                    None
                }
                Some(n) => self.limit_from(n, segments),
            };
            let to = f.get("to").map(|n| {
                self.seg_list(
                    n,
                    "to",
                    "`to` is empty, so the rate limit could never match; remove it to match every \
                     destination",
                    segments,
                )
            });
            let ports = f.get("ports").map(|n| self.ports(n, "rate limit"));
            let [packets, connections, bytes] =
                BUCKETS.map(|b| f.get(b).and_then(|n| self.bucket(n, b)));
            if BUCKETS.iter().all(|b| f.get(b).is_none()) {
                self.err(
                    f.pos,
                    format!(
                        "{label} limits nothing; give at least one of `packets`, `connections`, \
                         `bytes`"
                    ),
                );
            }
            let scope = match f.get("scope") {
                None => LimitScope::Segment,
                Some(n) => match &n.value {
                    Value::Str(s) if &**s == "segment" => LimitScope::Segment,
                    Value::Str(s) if &**s == "address" => LimitScope::Address,
                    Value::Str(s) => {
                        self.err(
                            n.pos,
                            format!("`scope` must be `segment` or `address`, not {}", quote(s)),
                        );
                        LimitScope::Segment
                    }
                    v => {
                        self.err(
                            n.pos,
                            format!("`scope` must be `segment` or `address`, not {}", v.kind()),
                        );
                        LimitScope::Segment
                    }
                },
            };
            limits.push(RateLimit {
                name,
                from: from.unwrap_or(SegRef::World),
                to,
                ports,
                packets,
                connections,
                bytes,
                scope,
            });
        }
        limits
    }

    /// The `from` of a rate limit: one segment name or `world`.
    fn limit_from(&mut self, n: &Node, segments: &Names<'_>) -> Option<SegRef> {
        match &n.value {
            Value::Str(s) if &**s == ANY_NAME => {
                self.err(
                    n.pos,
                    "the `from` of a rate limit must name one segment or world, not \"*\": a \
                     rate limit bounds one source identity",
                );
                None
            }
            Value::Str(s) => self.seg_name(n.pos, s, "from", segments),
            Value::Seq(items) => {
                let hint = match &items[..] {
                    [one] => match &one.value {
                        Value::Str(s) => format!("; write `from: {s}`"),
                        _ => String::new(),
                    },
                    _ => "; write one rate limit per source segment".to_owned(),
                };
                self.err(
                    n.pos,
                    format!("the `from` of a rate limit is one segment name, not a list{hint}"),
                );
                None
            }
            v => {
                self.err(
                    n.pos,
                    format!(
                        "the `from` of a rate limit must be a segment name, not {}",
                        v.kind()
                    ),
                );
                None
            }
        }
    }

    /// One bucket (`which` is `packets`, `connections` or `bytes`).
    fn bucket(&mut self, n: &Node, which: &str) -> Option<BucketSpec> {
        let what = format!("`{which}`");
        let Some(f) = self.fields(n, Owner::Text(&what), BUCKET_FIELDS) else {
            self.err(
                n.pos,
                format!(
                    "{what} must be a mapping like {{ rate: 100, per: second, burst: 20 }}, not {}",
                    n.value.kind()
                ),
            );
            return None;
        };
        let rate = match f.get("rate") {
            None => {
                self.err(f.pos, format!("{what} has no `rate`"));
                None
            }
            Some(n) => self.whole(n, "rate", 1, MAX_RATE),
        };
        let per = match f.get("per") {
            None => {
                self.err(
                    f.pos,
                    format!("{what} has no `per`; add `per: second`, `minute` or `hour`"),
                );
                None
            }
            Some(n) => match &n.value {
                Value::Str(s) => match Per::from_name(s) {
                    Some(p) => Some(p),
                    None => {
                        let hint = match suggest(s, ["second", "minute", "hour"]) {
                            Some(g) => format!("; did you mean `{g}`?"),
                            None => String::new(),
                        };
                        self.err(
                            n.pos,
                            format!(
                                "`per` must be `second`, `minute` or `hour`, not {}{hint}",
                                quote(s)
                            ),
                        );
                        None
                    }
                },
                v => {
                    self.err(
                        n.pos,
                        format!(
                            "`per` must be `second`, `minute` or `hour`, not {}",
                            v.kind()
                        ),
                    );
                    None
                }
            },
        };
        let (burst_node, burst) = match f.get("burst") {
            None => {
                self.err(
                    f.pos,
                    format!("{what} has no `burst` (how many units may pass at once)"),
                );
                (None, None)
            }
            Some(n) => (Some(n), self.whole(n, "burst", 1, u64::MAX)),
        };
        let (rate, per, burst, burst_node) = (rate?, per?, burst?, burst_node?);
        if which == "bytes" && burst < MIN_BYTES_BURST {
            self.err(
                burst_node.pos,
                format!(
                    "`bytes.burst` must be at least {MIN_BYTES_BURST}, not {burst}: a smaller \
                     bucket could never admit a full-size ({MIN_BYTES_BURST}-byte) packet"
                ),
            );
            return None;
        }
        // Refill time burst * per / rate, in u128: u64 * 3600 cannot overflow.
        let refill = u128::from(burst) * u128::from(per.seconds());
        if refill > u128::from(MAX_REFILL_SECONDS) * u128::from(rate) {
            let hours = refill.div_ceil(u128::from(rate) * 3600);
            self.err(
                burst_node.pos,
                format!(
                    "a burst of {burst} at {rate} per {per} takes about {hours} hours to refill; \
                     at most {} hours is supported: lower `burst` or raise `rate`",
                    MAX_REFILL_SECONDS / 3600
                ),
            );
            return None;
        }
        Some(BucketSpec { rate, per, burst })
    }

    /// A whole number in `min..=max` for `field`. A float with no fractional part (`5e6`) is
    /// accepted as the integer it is.
    fn whole(&mut self, n: &Node, field: &str, min: u64, max: u64) -> Option<u64> {
        // Integers beyond 2^53 may have been rounded when read as a float: not echoed then.
        const EXACT: f64 = 9_007_199_254_740_992.0;
        let (v, exact) = match n.value {
            Value::Int(v) => (v.get(), true),
            // A whole f64 below 1e30 converts to i128 without rounding.
            Value::Float(x) if x.is_finite() && x.fract() == 0.0 && x.abs() < 1e30 => {
                (x as i128, x.abs() <= EXACT)
            }
            Value::Float(x) => {
                self.err(
                    n.pos,
                    format!("`{field}` must be a whole number, not {x:?}"),
                );
                return None;
            }
            ref v => {
                self.err(
                    n.pos,
                    format!("`{field}` must be a whole number, not {}", v.kind()),
                );
                return None;
            }
        };
        let not = |v: i128| {
            if exact {
                format!(", not {v}")
            } else {
                String::new()
            }
        };
        if v < i128::from(min) {
            self.err(n.pos, format!("`{field}` must be at least {min}{}", not(v)));
            return None;
        }
        if v > i128::from(max) {
            self.err(n.pos, format!("`{field}` must be at most {max}{}", not(v)));
            return None;
        }
        u64::try_from(v).ok()
    }

    fn seg_refs(
        &mut self,
        f: &Fields<'_>,
        field: &str,
        rule: &str,
        segments: &Names<'_>,
    ) -> Vec<SegRef> {
        let Some(n) = f.get(field) else {
            self.err(
                f.pos,
                format!("{rule} has no `{field}`; list segment names, or \"*\" for any address"),
            );
            return Vec::new();
        };
        self.seg_list(
            n,
            field,
            &format!("`{field}` is empty; list at least one segment, or \"*\" for any address"),
            segments,
        )
    }

    /// A list of segment references (`field` is `from` or `to`); `empty` is the message for `[]`.
    fn seg_list(
        &mut self,
        n: &Node,
        field: &str,
        empty: &str,
        segments: &Names<'_>,
    ) -> Vec<SegRef> {
        let items = match &n.value {
            Value::Seq(items) => &items[..],
            Value::Str(s) => {
                self.err(n.pos, format!("`{field}` must be a list; write [{s}]"));
                return Vec::new();
            }
            v => {
                self.err(
                    n.pos,
                    format!(
                        "`{field}` must be a list of segment names, not {}",
                        v.kind()
                    ),
                );
                return Vec::new();
            }
        };
        if items.is_empty() {
            self.err(n.pos, empty);
        }
        let mut out = Vec::new();
        for item in items {
            let Value::Str(s) = &item.value else {
                self.err(
                    item.pos,
                    format!("a segment name must be a string, not {}", item.value.kind()),
                );
                continue;
            };
            if let Some(r) = self.seg_name(item.pos, s, field, segments) {
                out.push(r);
            }
        }
        out
    }

    /// Resolves one segment name (`*`, `world` or a named segment) found in `field` at `pos`.
    fn seg_name(&mut self, pos: Pos, s: &str, field: &str, names: &Names<'_>) -> Option<SegRef> {
        if s == ANY_NAME {
            return Some(SegRef::Any);
        }
        if s == WORLD_NAME {
            return Some(SegRef::World);
        }
        if let Some(&i) = names.index.get(s) {
            return Some(SegRef::Named(i));
        }
        if self.left_out(pos) {
            return None;
        }
        let hint = match self.suggestions_left.checked_sub(1) {
            Some(left) => {
                self.suggestions_left = left;
                let known = names
                    .segments
                    .iter()
                    .map(|seg| seg.name.as_str())
                    .chain([WORLD_NAME]);
                match suggest(s, known) {
                    Some(g) => format!("; did you mean {}?", quote(g)),
                    None => String::new(),
                }
            }
            None => String::new(),
        };
        self.err(
            pos,
            format!("unknown segment {} in `{field}`{hint}", quote(s)),
        );
        None
    }

    /// A `ports` list; `what` (`rule`, `rate limit`) names its owner in messages.
    fn ports(&mut self, n: &Node, what: &str) -> Vec<PortSpec> {
        let Some(items) = self.list(n, "ports", "a list like [\"443/tcp\"]") else { return Vec::new() };
        if items.is_empty() {
            self.err(
                n.pos,
                format!(
                    "`ports` is empty, so the {what} could never match; remove it to match every port"
                ),
            );
        }
        let mut out = Vec::new();
        for item in items {
            match &item.value {
                Value::Str(s) => match PortSpec::from_str(s) {
                    Ok(p) => out.push(p),
                    Err(e) => self.err(item.pos, format!("invalid port spec {}: {e}", quote(s))),
                },
                Value::Int(p) => self.err(
                    item.pos,
                    format!("port {p} needs a protocol: write \"{p}/tcp\" or \"{p}/udp\""),
                ),
                v => self.err(
                    item.pos,
                    format!(
                        "a port spec must be a string such as \"443/tcp\", not {}",
                        v.kind()
                    ),
                ),
            }
        }
        out
    }
}

/// Parses one CIDR. The message of the error is a complete diagnostic sentence.
fn parse_cidr(text: &str) -> Result<IpNet, String> {
    if let Ok(net) = IpNet::from_str(text) {
        let trunc = net.trunc();
        if trunc != net {
            return Err(format!(
                "{} has host bits set; did you mean {trunc}?",
                quote(text)
            ));
        }
        return Ok(net);
    }
    if let Ok(ip) = IpAddr::from_str(text) {
        let len = if ip.is_ipv4() { 32 } else { 128 };
        return Err(format!(
            "{} is an address, not a CIDR; write {ip}/{len} for a single address",
            quote(text)
        ));
    }
    if let Some((addr, len)) = text.split_once('/')
        && let Ok(ip) = IpAddr::from_str(addr)
        && !len.is_empty()
        && len.bytes().all(|b| b.is_ascii_digit())
    {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        return Err(format!(
            "invalid CIDR {}: the prefix length must be at most {max} for an IPv{} address",
            quote(text),
            if ip.is_ipv4() { 4 } else { 6 }
        ));
    }
    Err(format!(
        "invalid CIDR {}; expected an address and a prefix length such as 10.0.0.0/8 or fd00::/64",
        quote(text)
    ))
}
