//! The compiler: a [`Policy`] becomes the contents of the kernel maps (see `agent_common` for
//! the map design), slot-independent. The caller adds the slot to every key.
//!
//! # Pairs and profiles
//!
//! A *profile* is the set of rules that can match a (source segment, destination segment)
//! pair; pairs with the same rule set share one profile. Writing a profile for every pair of
//! segments would be quadratic, so wildcard rules (`*` in `from` or `to`) are written once,
//! as `(s, ANY)`, `(ANY, d)` or the slot's `any_any` profile, and the datapath falls back to
//! them when the explicit pair is missing:
//!
//! 1. `(s, d)` if present; else
//! 2. `(s, ANY)` if `s` has [`SEG_F_SRC_WILD`]; else
//! 3. `(ANY, d)` if `d` has [`SEG_F_DST_WILD`]; else
//! 4. `any_any`; no profile means the default action.
//!
//! With `SRC_WILD` = segments named in the `from` of a rule whose `to` has `*`, and
//! `DST_WILD` = segments named in the `to` of a rule whose `from` has `*`, the compiler writes:
//!
//! - `(s, d)` for every `s`, `d` named together in one rule, and for every `s` in `SRC_WILD`
//!   and `d` in `DST_WILD`, with the profile of *all* rules matching `(s, d)`;
//! - `(s, ANY)` for `s` in `SRC_WILD`: rules with `from` ∋ s and `to` ∋ `*`, plus `(*, *)` rules;
//! - `(ANY, d)` for `d` in `DST_WILD`: rules with `from` ∋ `*` and `to` ∋ d, plus `(*, *)` rules;
//! - `any_any`: rules with `*` in both.
//!
//! Why this is exact for a pair `(s, d)` that has no explicit entry: no rule names both `s`
//! and `d` (else the pair would be explicit), so every rule matching it has either `s` named
//! with `to` ∋ `*` (then `s` ∈ SRC_WILD), or `from` ∋ `*` with `d` named (then `d` ∈ DST_WILD),
//! or `*` on both sides. `s` ∈ SRC_WILD and `d` ∈ DST_WILD together would make the pair
//! explicit, so at most one of the first two kinds exists, and the fallback entry the datapath
//! picks holds exactly the matching rules. (A rule with `*` in `from` is treated as if it named
//! no source segment, since the names add nothing; likewise for `to`.)
//!
//! # Ports
//!
//! For each profile the 24-bit space of port keys `(proto << 16) | port` is cut at every
//! boundary of its rules' port ranges; each piece gets the verdict of its matching rules (the
//! first deny, else the first allow), pieces matched by no rule are dropped (default action),
//! adjacent pieces with the same verdict are merged, and each piece is split into aligned
//! prefixes for the LPM trie. Entries of one profile therefore never overlap.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use ipnet::IpNet;

use agent_common::{
    Addr, PORT_KEY_BITS, SEG_ANY, SEG_F_DST_WILD, SEG_F_SRC_WILD, SEG_WORLD, SegmentInfo, Verdict,
};

use super::eval::addr16;
use super::model::{Action, Policy, Rule, SegRef, WORLD_NAME};

/// The whole port-key space: `(proto << 16) | port`, 24 bits.
pub(crate) const PORT_SPACE: u32 = 1 << PORT_KEY_BITS;

/// One `PORTS` entry: in profile `profile`, the keys whose first `bits` bits equal those of
/// `value` get `verdict`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortEntry {
    pub profile: u32,
    /// Prefix length within the 24-bit key, 0..=24.
    pub bits: u32,
    /// 24-bit `(proto << 16) | port`; bits beyond the prefix are zero.
    pub value: u32,
    pub verdict: Verdict,
}

/// The contents of the maps for one policy (slot-independent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledPolicy {
    /// [`agent_common::ACTION_ALLOW`] or [`agent_common::ACTION_DENY`].
    pub default_action: u32,
    /// Index = segment id; `[0]` is `world`, named segments are `1..` in file order.
    pub segment_names: Vec<String>,
    /// Index = rule id - 1 (rule ids are 1-based; 0 is the default action).
    pub rule_names: Vec<String>,
    /// [`SegmentInfo::flags`] of `world`.
    pub world_flags: u32,
    /// Every /32 (as `::ffff:a.b.c.d`) and /128.
    pub hosts: Vec<(Addr, SegmentInfo)>,
    /// (prefix length in IPv6 space, network address, info) of every other CIDR.
    pub cidrs: Vec<(u32, Addr, SegmentInfo)>,
    /// (source segment or [`SEG_ANY`], destination segment or [`SEG_ANY`], profile).
    pub pairs: Vec<(u32, u32, u32)>,
    /// Profile of the `(*, *)` rules, if any.
    pub any_any: Option<u32>,
    pub ports: Vec<PortEntry>,
    pub profile_count: u32,
}

/// Sizes of a compiled policy, for a one-line summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Named segments (`world` not counted).
    pub segments: usize,
    pub rules: usize,
    pub hosts: usize,
    pub cidrs: usize,
    pub pairs: usize,
    pub profiles: usize,
    pub port_entries: usize,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} segments, {} rules, {} hosts, {} cidrs, {} pairs, {} profiles, {} port entries",
            self.segments,
            self.rules,
            self.hosts,
            self.cidrs,
            self.pairs,
            self.profiles,
            self.port_entries
        )
    }
}

impl CompiledPolicy {
    pub fn summary(&self) -> Summary {
        Summary {
            segments: self.segment_names.len().saturating_sub(1),
            rules: self.rule_names.len(),
            hosts: self.hosts.len(),
            cidrs: self.cidrs.len(),
            pairs: self.pairs.len(),
            profiles: self.profile_count as usize,
            port_entries: self.ports.len(),
        }
    }

    /// The name of a rule id (1-based); `None` for 0 (the default action) or an unknown id.
    pub fn rule_name(&self, rule: u32) -> Option<&str> {
        let i = usize::try_from(rule).ok()?.checked_sub(1)?;
        self.rule_names.get(i).map(String::as_str)
    }

    /// The name of a segment id (0 is `world`).
    pub fn segment_name(&self, id: u32) -> Option<&str> {
        self.segment_names
            .get(usize::try_from(id).ok()?)
            .map(String::as_str)
    }
}

/// A CIDR in the 16-byte address space: (prefix length, network address).
pub(crate) fn cidr_key(net: &IpNet) -> (u32, Addr) {
    let net = net.trunc();
    match net {
        IpNet::V4(n) => (96 + u32::from(n.prefix_len()), addr16(n.network().into())),
        IpNet::V6(n) => (u32::from(n.prefix_len()), n.network().octets()),
    }
}

/// A rule's sides as segment ids. A side with `*` keeps no names (they add nothing).
struct Sides {
    from_any: bool,
    from: BTreeSet<u32>,
    to_any: bool,
    to: BTreeSet<u32>,
}

impl Sides {
    fn of(rule: &Rule, segment_count: usize) -> Sides {
        let side = |refs: &[SegRef]| {
            let any = refs.contains(&SegRef::Any);
            let ids = if any {
                BTreeSet::new()
            } else {
                // A dangling index (hand-built policy) names a segment no address is in.
                refs.iter()
                    .filter_map(|r| seg_id(*r, segment_count))
                    .collect()
            };
            (any, ids)
        };
        let (from_any, from) = side(&rule.from);
        let (to_any, to) = side(&rule.to);
        Sides {
            from_any,
            from,
            to_any,
            to,
        }
    }
}

/// The segment id a reference names (`None` for `*` or a dangling index).
pub(crate) fn seg_id(r: SegRef, segment_count: usize) -> Option<u32> {
    match r {
        SegRef::Any => None,
        SegRef::World => Some(SEG_WORLD),
        SegRef::Named(i) if i < segment_count => u32::try_from(i + 1).ok(),
        SegRef::Named(_) => None,
    }
}

/// The inclusive port-key ranges a rule covers.
pub(crate) fn rule_ranges(rule: &Rule) -> Vec<(u32, u32)> {
    match &rule.ports {
        None => vec![(0, PORT_SPACE - 1)],
        Some(specs) => specs.iter().map(|p| p.key_range()).collect(),
    }
}

/// Combines matching rules: the first deny if any, else the first allow. `rules` holds rule
/// indexes (0-based) in increasing order.
pub(crate) fn combine(policy: &Policy, rules: impl IntoIterator<Item = usize>) -> Option<Verdict> {
    let mut allow = None;
    for i in rules {
        let verdict = Verdict {
            action: policy.rules[i].action.code(),
            rule: rule_id(i),
            ..Default::default()
        };
        match policy.rules[i].action {
            Action::Deny => return Some(verdict),
            Action::Allow => {
                allow.get_or_insert(verdict);
            }
        }
    }
    allow
}

fn rule_id(index: usize) -> u32 {
    u32::try_from(index + 1).unwrap_or(u32::MAX)
}

/// Compiles a policy. Pure and deterministic: the same policy gives the same output.
pub fn compile(policy: &Policy) -> CompiledPolicy {
    let n = policy.segments.len();
    let sides: Vec<Sides> = policy.rules.iter().map(|r| Sides::of(r, n)).collect();

    // Wildcard segments.
    let mut src_wild = BTreeSet::new();
    let mut dst_wild = BTreeSet::new();
    for s in &sides {
        if s.to_any {
            src_wild.extend(s.from.iter().copied());
        }
        if s.from_any {
            dst_wild.extend(s.to.iter().copied());
        }
    }

    // Pair -> rules (indexes, increasing). (s, ANY) and (ANY, d) sort after the explicit
    // pairs of the same source since SEG_ANY is u32::MAX. One pass files every rule under what
    // it names (both sides, one side, or neither); a pair's rules are then the merge of its own
    // lists, so the cost follows the policy's size, not pairs x rules.
    let mut direct: HashMap<(u32, u32), Vec<usize>> = HashMap::new();
    let mut by_src: HashMap<u32, Vec<usize>> = HashMap::new(); // named source, `to: *`
    let mut by_dst: HashMap<u32, Vec<usize>> = HashMap::new(); // `from: *`, named destination
    let mut any_any_rules: Vec<usize> = Vec::new();
    for (i, s) in sides.iter().enumerate() {
        match (s.from_any, s.to_any) {
            (false, false) => {
                for &a in &s.from {
                    for &b in &s.to {
                        direct.entry((a, b)).or_default().push(i);
                    }
                }
            }
            (false, true) => s.from.iter().for_each(|&a| by_src.entry(a).or_default().push(i)),
            (true, false) => s.to.iter().for_each(|&b| by_dst.entry(b).or_default().push(i)),
            (true, true) => any_any_rules.push(i),
        }
    }
    let merged = |lists: &[Option<&Vec<usize>>]| -> Vec<usize> {
        let mut v: Vec<usize> = lists.iter().flatten().flat_map(|l| l.iter().copied()).collect();
        v.sort_unstable();
        v
    };
    let mut pair_rules: BTreeMap<(u32, u32), Vec<usize>> = BTreeMap::new();
    let explicit = direct.keys().copied().chain(src_wild.iter().flat_map(|&a| dst_wild.iter().map(move |&b| (a, b))));
    for (a, b) in explicit.collect::<BTreeSet<_>>() {
        let rules = merged(&[direct.get(&(a, b)), by_src.get(&a), by_dst.get(&b), Some(&any_any_rules)]);
        pair_rules.insert((a, b), rules);
    }
    for &a in &src_wild {
        pair_rules.insert((a, SEG_ANY), merged(&[by_src.get(&a), Some(&any_any_rules)]));
    }
    for &b in &dst_wild {
        pair_rules.insert((SEG_ANY, b), merged(&[by_dst.get(&b), Some(&any_any_rules)]));
    }

    // Profiles: identical rule sets share one.
    let mut profiles: Vec<Vec<usize>> = Vec::new();
    let mut interned: HashMap<Vec<usize>, u32> = HashMap::new();
    let mut intern = |rules: Vec<usize>| -> u32 {
        if let Some(&p) = interned.get(&rules) {
            return p;
        }
        let p = u32::try_from(profiles.len()).unwrap_or(u32::MAX);
        interned.insert(rules.clone(), p);
        profiles.push(rules);
        p
    };
    let mut pairs = Vec::with_capacity(pair_rules.len());
    for ((a, b), rules) in pair_rules {
        // Every pair written above has at least one rule, by construction.
        pairs.push((a, b, intern(rules)));
    }
    let any_any = (!any_any_rules.is_empty()).then(|| intern(any_any_rules));

    let mut ports = Vec::new();
    for (p, rules) in profiles.iter().enumerate() {
        let profile = u32::try_from(p).unwrap_or(u32::MAX);
        for (lo, hi, verdict) in profile_intervals(policy, rules) {
            for (bits, value) in prefixes(lo, hi) {
                ports.push(PortEntry {
                    profile,
                    bits,
                    value,
                    verdict,
                });
            }
        }
    }

    // Identity.
    let flags_of = |id: u32| {
        let mut f = 0;
        if src_wild.contains(&id) {
            f |= SEG_F_SRC_WILD;
        }
        if dst_wild.contains(&id) {
            f |= SEG_F_DST_WILD;
        }
        f
    };
    let mut hosts = Vec::new();
    let mut cidrs = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, seg) in policy.segments.iter().enumerate() {
        let id = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let info = SegmentInfo {
            id,
            flags: flags_of(id),
        };
        for net in &seg.cidrs {
            let (len, addr) = cidr_key(net);
            // Validation rejects duplicates; for a hand-built policy the first listing wins,
            // as in `evaluate_naive`.
            if !seen.insert((len, addr)) {
                continue;
            }
            if len == 128 {
                hosts.push((addr, info));
            } else {
                cidrs.push((len, addr, info));
            }
        }
    }

    let mut segment_names = Vec::with_capacity(n + 1);
    segment_names.push(WORLD_NAME.to_owned());
    segment_names.extend(policy.segments.iter().map(|s| s.name.clone()));

    CompiledPolicy {
        default_action: policy.default_action.code(),
        segment_names,
        rule_names: policy.rules.iter().map(|r| r.name.clone()).collect(),
        world_flags: flags_of(SEG_WORLD),
        hosts,
        cidrs,
        pairs,
        any_any,
        ports,
        profile_count: u32::try_from(profiles.len()).unwrap_or(u32::MAX),
    }
}

/// The port-key intervals `[lo, hi]` of one profile with their verdicts: sorted, disjoint,
/// adjacent intervals with equal verdicts merged, keys matched by no rule left out.
pub(crate) fn profile_intervals(policy: &Policy, rules: &[usize]) -> Vec<(u32, u32, Verdict)> {
    // Sweep over the boundaries: +1 where a range starts, -1 just after it ends. A rule may
    // list overlapping ranges, hence a count per rule.
    let mut events: Vec<(u32, bool, usize)> = Vec::new();
    for (j, &r) in rules.iter().enumerate() {
        for (lo, hi) in rule_ranges(&policy.rules[r]) {
            events.push((lo, true, j));
            events.push((hi + 1, false, j));
        }
    }
    events.sort_unstable();
    let mut counts = vec![0u32; rules.len()];
    let mut active: BTreeSet<usize> = BTreeSet::new();
    let mut out: Vec<(u32, u32, Verdict)> = Vec::new();
    let mut i = 0;
    while i < events.len() {
        let pos = events[i].0;
        while i < events.len() && events[i].0 == pos {
            let (_, start, j) = events[i];
            if start {
                counts[j] += 1;
                if counts[j] == 1 {
                    active.insert(rules[j]);
                }
            } else {
                counts[j] -= 1;
                if counts[j] == 0 {
                    active.remove(&rules[j]);
                }
            }
            i += 1;
        }
        let end = events.get(i).map_or(PORT_SPACE, |e| e.0);
        if pos >= PORT_SPACE || end <= pos {
            continue;
        }
        let Some(verdict) = combine(policy, active.iter().copied()) else {
            continue;
        };
        match out.last_mut() {
            Some(last) if last.1 + 1 == pos && last.2 == verdict => last.1 = end - 1,
            _ => out.push((pos, end - 1, verdict)),
        }
    }
    out
}

/// Splits `[lo, hi]` (within the 24-bit space) into aligned prefixes `(bits, value)`.
pub(crate) fn prefixes(lo: u32, hi: u32) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    let mut lo = u64::from(lo);
    let end = u64::from(hi) + 1;
    let space = u64::from(PORT_SPACE);
    while lo < end {
        // The largest aligned block starting at lo that fits.
        let mut size = if lo == 0 {
            space
        } else {
            (lo & lo.wrapping_neg()).min(space)
        };
        while lo + size > end {
            size >>= 1;
        }
        let bits = PORT_KEY_BITS - size.trailing_zeros();
        out.push((bits, lo as u32));
        lo += size;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_decomposition() {
        assert_eq!(prefixes(0, PORT_SPACE - 1), vec![(0, 0)]);
        assert_eq!(prefixes(6 << 16, (6 << 16) | 0xffff), vec![(8, 6 << 16)]);
        assert_eq!(prefixes(5, 5), vec![(24, 5)]);
        // [1, 6] = 1/24, 2-3/23, 4-5/23, 6/24
        assert_eq!(prefixes(1, 6), vec![(24, 1), (23, 2), (23, 4), (24, 6)]);
        // Exhaustive on small ranges: the prefixes tile exactly [lo, hi].
        for lo in 0..70u32 {
            for hi in lo..70 {
                let mut covered = Vec::new();
                for (bits, value) in prefixes(lo, hi) {
                    let size = 1u32 << (PORT_KEY_BITS - bits);
                    assert_eq!(value % size, 0, "unaligned");
                    covered.extend(value..value + size);
                }
                assert_eq!(covered, (lo..=hi).collect::<Vec<_>>());
            }
        }
        // Worst case stays within 2 * 24 prefixes.
        assert!(prefixes(1, PORT_SPACE - 2).len() <= 2 * 24);
    }
}
