//! The policy's sections: alerts, segments (CIDRs, selectors, modes), names.

use std::collections::HashMap;

use ipnet::IpNet;

use super::refs::parse_cidr;
use super::*;

impl Validator<'_> {
    /// The `alerts` section: every field optional, defaults as in [`Alerts::default`].
    pub(super) fn alerts(&mut self, n: &Node) -> Option<Alerts> {
        let Some(f) = self.fields(n, Owner::Text("`alerts`"), ALERT_FIELDS) else {
            self.err(
                n.pos,
                format!("`alerts` must be a mapping like {{ scanDestinations: 20 }}, not {}", n.value.kind()),
            );
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

    pub(super) fn action(&mut self, n: &Node, field: &str) -> Option<Action> {
        match &n.value {
            Value::Str(s) if &**s == "allow" => Some(Action::Allow),
            Value::Str(s) if &**s == "deny" => Some(Action::Deny),
            Value::Str(s) => {
                self.err(n.pos, format!("`{field}` must be `allow` or `deny`, not {}", quote(s)));
                None
            }
            v => {
                self.err(n.pos, format!("`{field}` must be `allow` or `deny`, not {}", v.kind()));
                None
            }
        }
    }

    /// Every segment whose name is usable gets an index, even if its CIDRs have problems, so
    /// that rules naming it do not also report "unknown segment".
    /// The items of list field `field` (none when it is empty or null), or None after reporting
    /// that it must be `what`.
    pub(super) fn list<'n, 't>(&mut self, n: &'n Node<'t>, field: &str, what: &str) -> Option<&'n [Node<'t>]> {
        match &n.value {
            Value::Seq(items) => Some(&items[..]),
            Value::Null => Some(&[]),
            v => {
                self.err(n.pos, format!("`{field}` must be {what}, not {}", v.kind()));
                None
            }
        }
    }

    pub(super) fn segments(&mut self, n: &Node) -> Vec<Segment> {
        // Sized for policies of hundreds of thousands of segments: nothing per segment but
        // its name and CIDRs is kept, and names are borrowed from the tree.
        let entries = match &n.value {
            Value::Map(e) => &e[..],
            Value::Null => &[],
            v => {
                self.err(
                    n.pos,
                    format!("`segments` must be a mapping from segment name to {{ cidrs: [...] }}, not {}", v.kind()),
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
            let Some(name) = self.segment_name(k, &name_lines) else { continue };
            name_lines.insert(name, k.pos.line);
            let segment = self.segment(k, v, name, &segments, &mut seen);
            segments.push(segment);
        }
        segments
    }

    /// A segment's name, if it is one: a string, not empty, not reserved, not a duplicate.
    fn segment_name<'t>(&mut self, k: &'t Node<'_>, name_lines: &HashMap<&str, u32>) -> Option<&'t str> {
        let name: &'t str = match &k.value {
            Value::Str(s) => s,
            other => {
                self.err(k.pos, format!("a segment name must be a string (quote it), not {}", other.kind()));
                return None;
            }
        };
        if name.is_empty() {
            self.err(k.pos, "a segment name must not be empty");
            return None;
        }
        if name == WORLD_NAME {
            self.err(k.pos, "the segment name `world` is reserved: it means every address in no segment");
            return None;
        }
        if name == ANY_NAME {
            self.err(k.pos, "the segment name `*` is reserved: it means any address");
            return None;
        }
        if let Some(line) = name_lines.get(name) {
            // Only reachable through the JSON fallback (YAML rejects duplicate keys).
            self.err(k.pos, format!("duplicate segment {} (first defined on line {line})", quote(name)));
            return None;
        }
        Some(name)
    }

    /// Segment `name` (key `k`, value `v`): its CIDRs, selector and mode.
    fn segment(
        &mut self,
        k: &Node,
        v: &Node,
        name: &str,
        segments: &[Segment],
        seen: &mut HashMap<(u32, [u8; 16]), CidrSeen>,
    ) -> Segment {
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
                    cidrs = self.cidrs(list, index, segments, name, seen);
                }
                if let Some(n) = f.get("selector") {
                    selector = self.selector(n);
                }
                if f.get("cidrs").is_none() && f.get("selector").is_none() {
                    self.err(
                        k.pos,
                        format!("segment {} has no `cidrs` (or `selector`, for pods selected by labels)", quote(name)),
                    );
                }
                if let Some(n) = f.get("mode") {
                    mode = self.mode(n);
                }
            }
        }
        Segment { name: name.to_owned(), cidrs, mode, selector }
    }

    /// A segment's `selector`: `{ namespace: NS, labels: { k: v }, matchExpressions: [...] }`,
    /// every field optional (`{}`: every pod of every namespace).
    pub(super) fn selector(&mut self, n: &Node) -> Option<PodSelector> {
        use crate::policy::selector as sel;
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
        let mut selector = crate::policy::selector::LabelSelector::everything();
        if let Some(l) = sel::field(&f, "labels") {
            selector.match_labels = sel::read_labels(l, "labels", &mut report);
        }
        if let Some(e) = sel::field(&f, "matchExpressions") {
            selector.expressions = sel::read_expressions(e, &mut report);
        }
        Some(PodSelector { namespace, selector })
    }

    /// A `mode` (of the policy, a segment or a rule): `enforce` or `audit`.
    pub(super) fn mode(&mut self, n: &Node) -> Mode {
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

    pub(super) fn cidrs(
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
                self.err(item.pos, format!("a CIDR must be a string like 10.0.0.0/8, not {}", item.value.kind()));
                continue;
            };
            let net = match parse_cidr(text) {
                Ok(net) => net,
                Err(msg) => {
                    self.err(item.pos, msg);
                    continue;
                }
            };
            let key = crate::policy::compile::cidr_key(&net);
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
                        CidrSeen { net, segment: u32::try_from(index).unwrap_or(u32::MAX), line: item.pos.line },
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
    pub(super) fn unique_name(&mut self, f: &Fields<'_>, what: &str, names: &mut HashMap<String, usize>) -> String {
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
}
