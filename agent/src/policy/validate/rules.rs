//! Rules and rate limits (and their buckets).

use std::collections::HashMap;

use super::*;

impl Validator<'_> {
    pub(super) fn rules(&mut self, n: &Node, segments: &Names<'_>) -> Vec<Rule> {
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
            let rule_label = if name.is_empty() { "this rule".to_owned() } else { format!("rule {}", quote(&name)) };
            let description = match f.get("description") {
                None => None,
                Some(n) => match &n.value {
                    Value::Str(s) => Some(String::from(&**s)),
                    v => {
                        self.err(n.pos, format!("`description` must be a string, not {}", v.kind()));
                        None
                    }
                },
            };
            let from = self.seg_refs(&f, "from", &rule_label, segments);
            let to = self.seg_refs(&f, "to", &rule_label, segments);
            let ports = f.get("ports").map(|n| self.ports(n, "rule"));
            let action = match f.get("action") {
                None => {
                    self.err(f.pos, format!("{rule_label} has no `action`; add `action: allow` or `action: deny`"));
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
            rules.push(Rule { name, description, from, to, ports, action, mode, grant: None });
        }
        rules
    }

    pub(super) fn rate_limits(&mut self, n: &Node, segments: &Names<'_>) -> Vec<RateLimit> {
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
            let label =
                if name.is_empty() { "this rate limit".to_owned() } else { format!("rate limit {}", quote(&name)) };
            let from = match f.get("from") {
                None => {
                    self.err(f.pos, format!("{label} has no `from`; name one source segment, or world"));
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
            let [packets, connections, bytes] = BUCKETS.map(|b| f.get(b).and_then(|n| self.bucket(n, b)));
            if BUCKETS.iter().all(|b| f.get(b).is_none()) {
                self.err(
                    f.pos,
                    format!(
                        "{label} limits nothing; give at least one of `packets`, `connections`, \
                         `bytes`"
                    ),
                );
            }
            let scope = f.get("scope").map_or(LimitScope::Segment, |n| self.scope(n));
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

    /// A rate limit's `scope`: `segment` or `address` (`segment` after an error).
    fn scope(&mut self, n: &Node) -> LimitScope {
        match &n.value {
            Value::Str(s) if &**s == "segment" => LimitScope::Segment,
            Value::Str(s) if &**s == "address" => LimitScope::Address,
            Value::Str(s) => {
                self.err(n.pos, format!("`scope` must be `segment` or `address`, not {}", quote(s)));
                LimitScope::Segment
            }
            v => {
                self.err(n.pos, format!("`scope` must be `segment` or `address`, not {}", v.kind()));
                LimitScope::Segment
            }
        }
    }

    /// The `from` of a rate limit: one segment name or `world`.
    pub(super) fn limit_from(&mut self, n: &Node, segments: &Names<'_>) -> Option<SegRef> {
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
                self.err(n.pos, format!("the `from` of a rate limit is one segment name, not a list{hint}"));
                None
            }
            v => {
                self.err(n.pos, format!("the `from` of a rate limit must be a segment name, not {}", v.kind()));
                None
            }
        }
    }

    /// One bucket (`which` is `packets`, `connections` or `bytes`).
    pub(super) fn bucket(&mut self, n: &Node, which: &str) -> Option<BucketSpec> {
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
        let per = self.per(f.get("per"), f.pos, &what);
        let (burst_node, burst) = match f.get("burst") {
            None => {
                self.err(f.pos, format!("{what} has no `burst` (how many units may pass at once)"));
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

    /// A bucket's `per` (`pos`: the bucket's, for a missing one).
    fn per(&mut self, n: Option<&Node>, pos: Pos, what: &str) -> Option<Per> {
        let Some(n) = n else {
            self.err(pos, format!("{what} has no `per`; add `per: second`, `minute` or `hour`"));
            return None;
        };
        match &n.value {
            Value::Str(s) => match Per::from_name(s) {
                Some(p) => Some(p),
                None => {
                    let hint = match suggest(s, ["second", "minute", "hour"]) {
                        Some(g) => format!("; did you mean `{g}`?"),
                        None => String::new(),
                    };
                    self.err(n.pos, format!("`per` must be `second`, `minute` or `hour`, not {}{hint}", quote(s)));
                    None
                }
            },
            v => {
                self.err(n.pos, format!("`per` must be `second`, `minute` or `hour`, not {}", v.kind()));
                None
            }
        }
    }

    /// A whole number in `min..=max` for `field`. A float with no fractional part (`5e6`) is
    /// accepted as the integer it is.
    pub(super) fn whole(&mut self, n: &Node, field: &str, min: u64, max: u64) -> Option<u64> {
        // Integers beyond 2^53 may have been rounded when read as a float: not echoed then.
        const EXACT: f64 = 9_007_199_254_740_992.0;
        let (v, exact) = match n.value {
            Value::Int(v) => (v.get(), true),
            // A whole f64 below 1e30 converts to i128 without rounding.
            Value::Float(x) if x.is_finite() && x.fract() == 0.0 && x.abs() < 1e30 => (x as i128, x.abs() <= EXACT),
            Value::Float(x) => {
                self.err(n.pos, format!("`{field}` must be a whole number, not {x:?}"));
                return None;
            }
            ref v => {
                self.err(n.pos, format!("`{field}` must be a whole number, not {}", v.kind()));
                return None;
            }
        };
        let not = |v: i128| {
            if exact { format!(", not {v}") } else { String::new() }
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
}
