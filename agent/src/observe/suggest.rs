//! `ztagent policy suggest`: the least policy that allows exactly what the inventory saw
//! allowed (or would-deny, in audit) and nothing else, written as a v1 policy file with each
//! rule commented with what it was learned from. Pure: the same inventory and base give the
//! same text.
//!
//! - Identities are the base policy's segments (kept as they are, so the suggestion can replace
//!   it); a caller or service in no segment, which the inventory groups by prefix, becomes a
//!   segment of that prefix (`unknown-10-20-9-0-24`): review those, they name networks, not
//!   workloads.
//! - One rule per (source, destination), its ports exactly those seen: single ports, and
//!   ranges only where every port of the range was seen; ICMP as `icmp` (echo). Traffic of
//!   other protocols cannot be named by port in v1 and is listed in a comment instead.
//! - The base's deny rules, rate limits and alerts are kept as they are; an allow rule's
//!   description goes to the suggested rules that took over its flows (those of the base's
//!   allow rules that allowed nothing are listed as dropped, with their descriptions).
//! - Against the base: the suggested rules that allow what the base denies (to add), and the
//!   base's allow rules that decided nothing in the window (that could be removed).
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::IpAddr,
};

use crate::{
    api::Row,
    policy::{self, Action, Policy, PortSpec, Proto, WORLD_NAME},
};

/// What `suggest` gives: the policy text, and the comparison with the base.
pub struct Suggestion {
    pub text: String,
    /// Names of suggested rules that allow flows the base denies.
    pub added: Vec<String>,
    /// Names of the base's allow rules that allowed nothing in the window.
    pub unused: Vec<String>,
    /// Names of the base's deny rules, kept as they are.
    pub kept_denies: Vec<String>,
    /// The base's allow rules whose descriptions no suggested rule carries (they allowed
    /// nothing in the window): name and description.
    pub dropped_descriptions: Vec<(String, String)>,
}

/// A segment name for a prefix in no segment: `10.20.9.0/24` -> `unknown-10-20-9-0-24`.
fn unknown_name(prefix: &str) -> String {
    let mut s = String::from("unknown-");
    s.extend(prefix.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }));
    s
}

/// The prefix of an inventory identity in no segment (`world 10.20.9.0/24`).
fn world_prefix(identity: &str) -> Option<&str> {
    identity.strip_prefix(WORLD_NAME)?.strip_prefix(' ')
}

/// The segment name a suggested rule uses for an identity.
fn segment_of(identity: &str) -> String {
    match world_prefix(identity) {
        Some(p) => unknown_name(p),
        None => identity.to_owned(),
    }
}

/// Consecutive ports as ranges: [22, 80, 81, 82] -> 22, 80-82.
fn ranges(ports: &BTreeSet<u16>) -> Vec<(u16, u16)> {
    let mut out: Vec<(u16, u16)> = Vec::new();
    for &p in ports {
        match out.last_mut() {
            Some((_, hi)) if u32::from(*hi) + 1 == u32::from(p) => *hi = p,
            _ => out.push((p, p)),
        }
    }
    out
}

/// An address inside an identity, to ask the base policy what it decides for it.
fn address_of(base: &Policy, identity: &str) -> Option<IpAddr> {
    let net: ipnet::IpNet = match world_prefix(identity) {
        Some(p) => p.parse().ok()?,
        None => *base.segments.iter().find(|s| s.name == identity)?.cidrs.first()?,
    };
    // The first host of the network (the network itself for a single address).
    match net.network() {
        IpAddr::V4(a) if net.prefix_len() < 32 => Some(IpAddr::V4((u32::from(a) + 1).into())),
        IpAddr::V6(a) if net.prefix_len() < 128 => Some(IpAddr::V6((u128::from(a) + 1).into())),
        a => Some(a),
    }
}

/// Quotes a YAML scalar when it could be read as anything but the string it is.
fn scalar(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""))
}

/// What a (source, destination) pair is learned from: protocols and ports, and counts.
struct Learned {
    tcp: BTreeSet<u16>,
    udp: BTreeSet<u16>,
    icmp: bool,
    other: BTreeSet<String>,
    flows: u64,
    packets: u64,
    bytes: u64,
    first: f64,
    last: f64,
    /// Flows of it that the base denies (by its verdict, or as would-deny).
    denied_by_base: bool,
    /// The base's rules that allowed flows of it.
    rules: BTreeSet<String>,
}

impl Default for Learned {
    fn default() -> Learned {
        Learned {
            tcp: BTreeSet::new(),
            udp: BTreeSet::new(),
            icmp: false,
            other: BTreeSet::new(),
            flows: 0,
            packets: 0,
            bytes: 0,
            first: f64::MAX,
            last: 0.0,
            denied_by_base: false,
            rules: BTreeSet::new(),
        }
    }
}

/// The suggestion for the inventory `rows` (those with at least `min_flows` allowed or
/// would-deny flows), given the policy in force or a file as `base`.
pub fn suggest(base: &Policy, rows: &[Row], min_flows: u64) -> Suggestion {
    let (pairs, used_rules) = learn(base, rows, min_flows);
    let mut text = segments_text(base, &pairs);
    // The rules (and the comments on what they were learned from), then `rules:` before them.
    let (mut rules, added, mut any) = rules_text(base, &pairs);
    let kept_denies = denies_text(base, &mut rules);
    any |= !kept_denies.is_empty();
    text.push_str(if any { "rules:\n" } else { "rules: []\n" });
    text.push_str(&rules);
    // The base's rate limits and alerts carry over as they are (its segments come first, in
    // its order, so they name the same identities).
    let carried = Policy { rules: Vec::new(), ..base.clone() }.to_yaml();
    if let Some(i) = ["\nrateLimits:", "\nalerts:"].iter().filter_map(|k| carried.find(k)).min() {
        text.push_str("# carried over from the base policy:\n");
        text.push_str(&carried[i + 1..]);
        if !text.ends_with('\n') {
            text.push('\n');
        }
    }
    let unused = base
        .rules
        .iter()
        .filter(|r| r.action == Action::Allow && !used_rules.contains(&r.name))
        .map(|r| r.name.clone())
        .collect();
    let dropped_descriptions = base
        .rules
        .iter()
        .filter(|r| r.action == Action::Allow && !used_rules.contains(&r.name))
        .filter_map(|r| Some((r.name.clone(), r.description.clone()?)))
        .collect();
    Suggestion { text, added, unused, kept_denies, dropped_descriptions }
}

/// The base's deny rules as they are (deny wins over the suggested allows, as it did over the
/// base's), after a comment; their names.
fn denies_text(base: &Policy, rules: &mut String) -> Vec<String> {
    let denies: Vec<&policy::Rule> = base.rules.iter().filter(|r| r.action != Action::Allow).collect();
    if !denies.is_empty() {
        rules.push_str("  # kept from the base policy: its deny rules, as they are\n");
    }
    let names = |refs: &[policy::SegRef]| refs.iter().map(|r| scalar(&base.seg_ref_name(*r))).collect::<Vec<_>>();
    for r in &denies {
        let mut line = format!("  - {{ name: {}", scalar(&r.name));
        if let Some(d) = &r.description {
            let _ = write!(line, ", description: {}", scalar(d));
        }
        let _ = write!(line, ", from: [{}], to: [{}]", names(&r.from).join(", "), names(&r.to).join(", "));
        if let Some(ports) = &r.ports {
            let ports: Vec<String> = ports.iter().map(|p| scalar(&p.to_string())).collect();
            let _ = write!(line, ", ports: [{}]", ports.join(", "));
        }
        line.push_str(", action: deny");
        if r.mode == policy::Mode::Audit {
            line.push_str(", mode: audit");
        }
        rules.push_str(&line);
        rules.push_str(" }\n");
    }
    denies.iter().map(|r| r.name.clone()).collect()
}

/// (source, destination) -> what was seen of it, and the base's rules that allowed a flow.
fn learn(base: &Policy, rows: &[Row], min_flows: u64) -> (BTreeMap<(String, String), Learned>, BTreeSet<String>) {
    let compiled = policy::compile(base);
    let index = compiled.index();
    let mut pairs: BTreeMap<(String, String), Learned> = BTreeMap::new();
    let mut used_rules = BTreeSet::new();
    for r in rows {
        if let Some(rule) = &r.seen.rule {
            used_rules.insert(rule.clone());
        }
        let flows = r.seen.allowed_flows + r.seen.would_deny_flows;
        if flows == 0 || flows < min_flows {
            continue;
        }
        let l = pairs.entry((r.key.src.clone(), r.key.dst.clone())).or_default();
        l.rules.extend(r.seen.rule.iter().cloned());
        let (proto, port) = match r.key.proto.as_str() {
            "tcp" => {
                l.tcp.insert(r.key.port);
                (agent_common::PROTO_TCP, r.key.port)
            }
            "udp" => {
                l.udp.insert(r.key.port);
                (agent_common::PROTO_UDP, r.key.port)
            }
            "icmp" => {
                l.icmp = true;
                (agent_common::PROTO_ICMP, agent_common::ICMP_ECHO_REQUEST)
            }
            other => {
                l.other.insert(other.to_owned());
                (0, 0)
            }
        };
        l.flows += flows;
        l.packets += r.seen.packets;
        l.bytes += r.seen.bytes;
        l.first = l.first.min(r.seen.first_seen);
        l.last = l.last.max(r.seen.last_seen);
        let base_denies = match (address_of(base, &r.key.src), address_of(base, &r.key.dst)) {
            (Some(s), Some(d)) if proto != 0 => index.lookup(s, d, proto, port).action != agent_common::ACTION_ALLOW,
            _ => false,
        };
        l.denied_by_base |= r.seen.would_deny_flows > 0 || base_denies;
    }
    (pairs, used_rules)
}

/// The header and the segments: the base's, then one per prefix in no segment that a rule
/// needs.
fn segments_text(base: &Policy, pairs: &BTreeMap<(String, String), Learned>) -> String {
    let mut text = String::from("# Suggested by `ztagent policy suggest` from the inventory of observed flows:\n");
    text.push_str("# it allows exactly what was seen allowed or would-deny, and nothing else.\n");
    text.push_str("version: 1\ndefaultAction: deny\nsegments:\n");
    for s in &base.segments {
        let cidrs: Vec<String> = s.cidrs.iter().map(|c| scalar(&c.to_string())).collect();
        let mode = if s.mode == policy::Mode::Audit { ", mode: audit" } else { "" };
        let _ = writeln!(text, "  {}: {{ cidrs: [{}]{mode} }}", scalar(&s.name), cidrs.join(", "));
    }
    let unknown: BTreeSet<&str> =
        pairs.keys().flat_map(|(s, d)| [s.as_str(), d.as_str()]).filter_map(world_prefix).collect();
    for p in &unknown {
        let _ = writeln!(
            text,
            "  {}: {{ cidrs: [{}] }}   # seen from or to addresses in no segment",
            scalar(&unknown_name(p)),
            scalar(p)
        );
    }
    if base.segments.is_empty() && unknown.is_empty() {
        text.push_str("  {}\n");
    }
    text
}

/// The rules' lines, the names of those the base denies (added), and whether there is any.
fn rules_text(base: &Policy, pairs: &BTreeMap<(String, String), Learned>) -> (String, Vec<String>, bool) {
    let mut rules = String::new();
    let (mut added, mut names) = (Vec::new(), BTreeSet::new());
    for ((src, dst), l) in pairs {
        let (from, to) = (segment_of(src), segment_of(dst));
        // Written as the policy's own port specs write themselves.
        let mut ports: Vec<PortSpec> = Vec::new();
        for (proto, seen) in [(Proto::Tcp, &l.tcp), (Proto::Udp, &l.udp)] {
            ports.extend(ranges(seen).into_iter().map(|(lo, hi)| PortSpec::Range { proto, lo, hi }));
        }
        if l.icmp {
            ports.push(PortSpec::Icmp);
        }
        learned_comment(&mut rules, l);
        if ports.is_empty() {
            continue;
        }
        let mut name = format!("{from}-to-{to}");
        while !names.insert(name.clone()) {
            name.push('_');
        }
        if l.denied_by_base {
            added.push(name.clone());
        }
        let ports: Vec<String> = ports.iter().map(|p| scalar(&p.to_string())).collect();
        // The descriptions of the base's rules whose flows this one takes over.
        let descriptions: Vec<&str> =
            base.rules.iter().filter(|r| l.rules.contains(&r.name)).filter_map(|r| r.description.as_deref()).collect();
        let description = if descriptions.is_empty() {
            String::new()
        } else {
            format!(", description: {}", scalar(&descriptions.join("; ")))
        };
        let _ = writeln!(
            rules,
            "  - {{ name: {}{description}, from: [{}], to: [{}], ports: [{}], action: allow }}",
            scalar(&name),
            scalar(&from),
            scalar(&to),
            ports.join(", ")
        );
    }
    let any = !names.is_empty();
    (rules, added, any)
}

/// The comment above a rule: what it was learned from.
fn learned_comment(rules: &mut String, l: &Learned) {
    let when = |t: f64| crate::clock::rfc3339((t.max(0.0) * 1e9) as u64);
    let _ = writeln!(
        rules,
        "  # learned from {} flows ({} packets, {} bytes), first seen {}, last seen {}",
        l.flows,
        l.packets,
        l.bytes,
        when(l.first),
        when(l.last)
    );
    if !l.other.is_empty() {
        let other: Vec<&str> = l.other.iter().map(String::as_str).collect();
        let _ = writeln!(rules, "  # also seen, not expressible by port: protocols {}", other.join(", "));
    }
}

/// The HTTP requests the API inventory saw, per (caller segment, server segment, port), as
/// YAML comments in the syntax issue 24 proposes for a rule (`http: [ { methods: [GET],
/// paths: ["/v1/payments/*"] } ]`): the policy format has no `http:` yet, so the suggestion
/// stays valid. A route's `{id}` segments become `*`, a truncated path's route ends in `*`;
/// paths used with the same methods share an entry. Empty without requests.
pub fn api_comments(apis: &crate::api::ApiListing) -> String {
    // (caller, server, port) -> path pattern -> methods.
    let mut used: BTreeMap<(String, String, u16), BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for e in apis.endpoints.values() {
        let mut path = e.route.replace("{id}", "*");
        if e.path_truncated {
            path.push('*');
        }
        for caller in e.callers.keys() {
            // `segment`, `world PREFIX`, then ` namespace/pod` with Kubernetes inputs.
            let mut words = caller.split(' ');
            let segment = match (words.next(), words.next()) {
                (Some(WORLD_NAME), Some(prefix)) => format!("{WORLD_NAME} {prefix}"),
                (first, _) => first.unwrap_or_default().to_owned(),
            };
            let key = (segment_of(&segment), e.dst_segment.clone(), e.port);
            used.entry(key).or_default().entry(path.clone()).or_default().insert(e.method.clone());
        }
    }
    if used.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "\n# HTTP requests seen on declared ports, per caller, server and port, as per-endpoint rules\n\
         # would allow them (the syntax issue 24 proposes; the policy format has no `http:` yet):\n",
    );
    for ((caller, server, port), paths) in used {
        // Paths with the same methods together.
        let mut by_methods: BTreeMap<Vec<String>, Vec<String>> = BTreeMap::new();
        for (path, methods) in paths {
            by_methods.entry(methods.into_iter().collect()).or_default().push(path);
        }
        let entries: Vec<String> = by_methods
            .into_iter()
            .map(|(methods, paths)| {
                let paths: Vec<String> = paths.iter().map(|p| format!("{p:?}")).collect();
                format!("{{ methods: [{}], paths: [{}] }}", methods.join(", "), paths.join(", "))
            })
            .collect();
        let _ = writeln!(out, "# {caller} -> {server} tcp/{port}:\n#   http: [ {} ]", entries.join(", "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Key, Seen};

    fn row(src: &str, dst: &str, proto: &str, port: u16, allowed: u64, would: u64, rule: Option<&str>) -> Row {
        Row {
            key: Key { src: src.into(), dst: dst.into(), proto: proto.into(), port },
            seen: Seen {
                first_seen: 100.0,
                last_seen: 200.0,
                allowed_flows: allowed,
                would_deny_flows: would,
                rule: rule.map(str::to_owned),
                ..Seen::default()
            },
        }
    }

    #[test]
    fn api_comments_list_methods_and_paths_per_caller_and_stay_valid() {
        use crate::api::{ApiEndpoint, ApiListing};
        let endpoint = |method: &str, route: &str, truncated: bool, callers: &[&str]| ApiEndpoint {
            dst_segment: "payments".into(),
            port: 8080,
            method: method.into(),
            route: route.into(),
            path_truncated: truncated,
            requests: 1,
            callers: callers.iter().map(|c| ((*c).to_owned(), 1)).collect(),
            ..ApiEndpoint::default()
        };
        let mut l = ApiListing::default();
        for (i, e) in [
            endpoint("GET", "/v1/payments/{id}", false, &["frontend", "world 10.9.9.0/24"]),
            endpoint("POST", "/v1/payments", false, &["frontend default/web-1"]),
            endpoint("GET", "/v1/refunds/{id}", false, &["frontend"]),
            endpoint("GET", "/v1/very/long", true, &["batch", "world 10.9.8.0/24 default/x"]),
        ]
        .into_iter()
        .enumerate()
        {
            l.endpoints.insert(i.to_string(), e);
        }
        let text = api_comments(&l);
        assert!(
            text.contains(
                "# frontend -> payments tcp/8080:\n#   http: [ { methods: [GET], paths: [\"/v1/payments/*\", \"/v1/refunds/*\"] }, { methods: [POST], paths: [\"/v1/payments\"] } ]\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "# batch -> payments tcp/8080:\n#   http: [ { methods: [GET], paths: [\"/v1/very/long*\"] } ]"
            ),
            "{text}"
        );
        assert!(text.contains("# unknown-10-9-9-0-24 -> payments tcp/8080:"), "{text}");
        assert!(text.contains("# unknown-10-9-8-0-24 -> payments tcp/8080:"), "{text}");
        assert!(text.lines().all(|l| l.is_empty() || l.starts_with('#')), "{text}");
        // Appended to a suggestion, it still validates.
        let base = policy::parse("version: 1\nsegments: {}\nrules: []\n", "t").unwrap();
        let full = suggest(&base, &[], 1).text + &text;
        policy::parse(&full, "suggested").unwrap_or_else(|d| panic!("invalid:\n{d}\n{full}"));
        assert_eq!(api_comments(&ApiListing::default()), "");
    }

    #[test]
    fn the_least_policy_that_allows_what_was_seen() {
        let base = policy::parse(
            "version: 1\nsegments:\n  web: { cidrs: [10.0.1.0/24] }\n  db: { cidrs: [10.0.2.5/32] }\nrules:\n  - { name: web-db, from: [web], to: [db], ports: [\"5432/tcp\"], action: allow }\n  - { name: old, from: [db], to: [web], action: allow }\nrateLimits:\n  - { name: slow-db, from: web, to: [db], packets: { rate: 100, per: second, burst: 10 } }\nalerts: { learnSeconds: 60 }\n",
            "t",
        )
        .unwrap();
        let rows = [
            row("web", "db", "tcp", 5432, 7, 0, Some("web-db")),
            row("web", "db", "tcp", 6379, 0, 2, None),
            row("web", "db", "tcp", 6380, 0, 1, None),
            row("web", "db", "icmp", 0, 1, 0, Some("web-db")),
            row("world 10.9.9.0/24", "web", "tcp", 443, 3, 0, None),
            row("web", "db", "tcp", 9999, 0, 0, None), // only denied: not allowed by the suggestion
            row("db", "web", "udp", 53, 1, 0, Some("old")),
        ];
        let s = suggest(&base, &rows, 1);
        let p = policy::parse(&s.text, "suggested").unwrap_or_else(|d| panic!("invalid suggestion:\n{d}\n{}", s.text));
        let c = policy::compile(&p);
        let check = |src: &str, dst: &str, proto, port| {
            policy::explain(&c, src.parse().unwrap(), dst.parse().unwrap(), proto, port).verdict
        };
        assert_eq!(check("10.0.1.7", "10.0.2.5", 6, 5432), "allow");
        assert_eq!(check("10.0.1.7", "10.0.2.5", 6, 6380), "allow");
        assert_eq!(check("10.0.1.7", "10.0.2.5", 6, 6381), "deny", "a range wider than what was seen");
        assert_eq!(check("10.0.1.7", "10.0.2.5", 6, 9999), "deny");
        assert_eq!(check("10.9.9.4", "10.0.1.7", 6, 443), "allow");
        assert_eq!(check("10.9.8.4", "10.0.1.7", 6, 443), "deny");
        assert_eq!(check("10.0.2.5", "10.0.1.7", 17, 53), "allow");
        assert_eq!(check("10.0.2.5", "10.0.1.7", 6, 22), "deny", "the base's broad rule is not kept");
        assert!(s.text.contains("ports: [\"5432/tcp\", \"6379-6380/tcp\", \"icmp\"]"), "{}", s.text);
        assert!(s.text.contains("# learned from 11 flows"), "{}", s.text);
        assert_eq!((p.rate_limits.len(), p.rate_limits[0].name.as_str()), (1, "slow-db"));
        assert_eq!(p.alerts.as_ref().map(|a| a.learn_seconds), Some(60));
        // Against the base: web-to-db needs 6379-6380, the unknown caller is new; nothing of
        // the base went unused.
        assert_eq!(s.added, ["web-to-db", "unknown-10-9-9-0-24-to-web"]);
        assert!(s.unused.is_empty(), "{:?}", s.unused);
        assert_eq!(suggest(&base, &rows[..1], 1).unused, ["old"]);
        // Deterministic, and --min-flows drops the rare.
        assert_eq!(suggest(&base, &rows, 1).text, s.text);
        assert!(!suggest(&base, &rows, 3).text.contains("6380"));
    }

    #[test]
    fn the_base_deny_rules_and_descriptions_are_kept() {
        let base = policy::parse(
            "version: 1\nsegments:\n  web: { cidrs: [10.0.1.0/24] }\n  db: { cidrs: [10.0.2.5/32] }\nrules:\n  - { name: web-db, description: \"the app's queries\", from: [web], to: [db], ports: [\"5432/tcp\"], action: allow }\n  - { name: old, description: legacy sync, from: [db], to: [web], action: allow }\n  - { name: no-admin, description: nobody on the admin port, from: [\"*\"], to: [db], ports: [\"8081/tcp\", \"8000-8099/udp\"], action: deny }\n  - { name: no-db-out, from: [db], to: [world], action: deny, mode: audit }\n",
            "t",
        )
        .unwrap();
        let rows = [row("web", "db", "tcp", 5432, 4, 0, Some("web-db"))];
        let s = suggest(&base, &rows, 1);
        let p = policy::parse(&s.text, "suggested").unwrap_or_else(|d| panic!("invalid suggestion:\n{d}\n{}", s.text));
        let kept: Vec<&policy::Rule> = p.rules.iter().filter(|r| r.action == Action::Deny).collect();
        assert_eq!(kept.len(), 2, "{}", s.text);
        assert_eq!(kept[0], &base.rules[2], "{}", s.text);
        assert_eq!((kept[1].name.as_str(), kept[1].mode), ("no-db-out", policy::Mode::Audit));
        let learned = p.rules.iter().find(|r| r.name == "web-to-db").unwrap();
        assert_eq!(learned.description.as_deref(), Some("the app's queries"));
        let c = policy::compile(&p);
        let check = |port| policy::explain(&c, "10.0.1.7".parse().unwrap(), "10.0.2.5".parse().unwrap(), 6, port);
        assert_eq!((check(5432).verdict.as_str(), check(8081).rule.as_deref()), ("allow", Some("no-admin")));
        assert_eq!(s.kept_denies, ["no-admin", "no-db-out"]);
        assert_eq!(s.dropped_descriptions, [("old".to_string(), "legacy sync".to_string())]);
        // Without deny rules in the base, none appear.
        let plain = suggest(&policy::parse("version: 1\nsegments: {}\nrules: []\n", "t").unwrap(), &[], 1);
        assert!(!plain.text.contains("action: deny") && plain.kept_denies.is_empty(), "{}", plain.text);
    }
}
