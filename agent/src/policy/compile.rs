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
//! # Rate limits
//!
//! A rate limit matches a pair like a rule whose `from` is its one segment and whose `to` is its
//! `to` (absent = `*`), so profiles are really sets of *items* (rules and rate limits) and
//! limits take part in everything above exactly as rules do: they are filed under the pairs
//! they name, a limit without `to` puts its source in `SRC_WILD`, and so on. The argument
//! above holds word for word with "item" for "rule". Internally items are numbered rules first
//! (`0..rules`), then limits (`rules..rules + limits`).
//!
//! # Ports
//!
//! For each profile the 24-bit space of port keys `(proto << 16) | port` is cut at every
//! boundary of its rules' and limits' port ranges; each piece gets the verdict of its matching
//! rules (the first deny, else the first allow) and, if that verdict allows, the first matching
//! limit (`Verdict::limit`, 1-based). Pieces matched by no rule take the default action: they
//! are dropped, unless the default action is allow and a limit matches, in which case they get
//! `ALLOW`, rule 0 and that limit. Adjacent pieces with the same verdict are merged, and each
//! piece is split into aligned prefixes for the LPM trie. Entries of one profile therefore never
//! overlap.
//!
//! # Limit parameters
//!
//! Each limit's buckets are compiled to fixed-point GCRA parameters ([`Bucket`]) and the limit
//! gets a stable [`CompiledLimit::fingerprint`] so that the agent can keep the bucket state of
//! unchanged limits across pushes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use ipnet::IpNet;

use agent_common::{
    Addr, PORT_KEY_BITS, SEG_ANY, SEG_F_AUDIT, SEG_F_DST_WILD, SEG_F_SRC_WILD, SEG_WORLD, SegmentInfo,
    VERDICT_F_AUDIT, VERDICT_GRANT_SHIFT, Verdict,
};

use super::eval::addr16;
use super::model::{
    Action, BucketSpec, LimitScope, Mode, Policy, PortSpec, RateLimit, Rule, SegRef, WORLD_NAME,
};

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
    /// Enforce, or audit: denials and rate limits are reported, not enforced.
    pub mode: Mode,
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
    /// The rate limits: index = limit id - 1 (limit ids are 1-based; 0 is no limit).
    pub limits: Vec<CompiledLimit>,
    /// (prefix length in IPv6 space, network address, info) of the address blocks of
    /// time-bound grants ([`Policy::grant_sources`]): `GRANT_SOURCES`, not the identity maps.
    pub grant_sources: Vec<(u32, Addr, SegmentInfo)>,
}

/// A rate limit as the datapath needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledLimit {
    pub name: String,
    /// Stable 64-bit fingerprint of everything that defines the limit (name, from, to, ports,
    /// the three buckets, scope): FNV-1a 64 over a canonical byte serialization (see
    /// [`limit_fingerprint`]), not std's `DefaultHasher`. Unchanged limits keep the same
    /// fingerprint across pushes and agent versions (it does not depend on the limit's
    /// position, on other limits or rules, or on segment ids), so their bucket state can be
    /// kept; any change gives a new one. Never 0.
    pub fingerprint: u64,
    pub packets: Option<Bucket>,
    pub connections: Option<Bucket>,
    pub bytes: Option<Bucket>,
    /// One set of buckets per source address (`scope: address`) instead of one per segment.
    pub per_address: bool,
}

/// One bucket's GCRA parameters. The datapath keeps one `u64` "theoretical arrival time"
/// (TAT) per bucket in nanoseconds << 16 and, for `n` units (1 packet, 1 connection, or the
/// packet's length in bytes), admits them iff `max(TAT, now) + n * cost_fp16 - now <=
/// tolerance_fp16`, then stores the new TAT.
///
/// # Bounds (for a validated policy)
///
/// - `1 <= rate <= MAX_RATE` (10^12), `per_seconds <= 3600`, so
///   `66 <= cost_fp16 <= 3600e9 << 16` ≈ 2.36e17 < 2^58: the cost is computed in `u128` and
///   never overflows, and its rounding error is below 1%.
/// - `burst * per / rate <= MAX_REFILL_SECONDS` (24 h), so
///   `cost_fp16 <= tolerance_fp16 <= (86400e9 << 16) + burst / 2` < 5.71e18 < 2^63.
/// - `tolerance_fp16 = burst * cost_fp16` exactly, so `n * cost_fp16 <= tolerance_fp16` iff
///   `n <= burst`: a datapath that checks `n <= tolerance_fp16 / cost_fp16` (or `n <= burst`)
///   before multiplying never overflows, and a conforming TAT is never more than
///   `tolerance_fp16` (< 2^63) ahead of `now`, so `TAT - now` always fits an `i64`.
///
/// For a hand-built policy outside these ranges the values saturate at `u64::MAX` (and a rate
/// of 0 is taken as 1) instead of overflowing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bucket {
    /// As configured (for display): `rate` units per `per_seconds` seconds, bursts of `burst`.
    pub rate: u64,
    pub per_seconds: u64,
    pub burst: u64,
    /// Cost of one unit (packet, connection, or byte) in nanoseconds << 16 (fixed point),
    /// i.e. `round(per_seconds * 1e9 * 65536 / rate)`.
    pub cost_fp16: u64,
    /// `burst * cost_fp16`, in nanoseconds << 16: how far ahead of now the bucket's clock may
    /// run.
    pub tolerance_fp16: u64,
}

impl Bucket {
    /// The GCRA parameters of `rate` units per `per_seconds` with bursts of `burst`.
    pub fn new(rate: u64, per_seconds: u64, burst: u64) -> Bucket {
        let r = u128::from(rate.max(1));
        let num = u128::from(per_seconds) * 1_000_000_000 * 65_536;
        let cost = (num + r / 2) / r;
        let tolerance = cost.saturating_mul(u128::from(burst));
        let sat = |v: u128| u64::try_from(v).unwrap_or(u64::MAX);
        Bucket {
            rate,
            per_seconds,
            burst,
            cost_fp16: sat(cost),
            tolerance_fp16: sat(tolerance),
        }
    }

    fn of(spec: &BucketSpec) -> Bucket {
        Bucket::new(spec.rate, spec.per.seconds(), spec.burst)
    }
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
    pub rate_limits: usize,
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
        )?;
        match self.rate_limits {
            0 => {}
            1 => write!(f, ", 1 rate limit")?,
            n => write!(f, ", {n} rate limits")?,
        }
        Ok(())
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
            rate_limits: self.limits.len(),
        }
    }

    /// The name of a rate limit id (1-based); `None` for 0 (no limit) or an unknown id.
    pub fn limit_name(&self, limit: u32) -> Option<&str> {
        let i = usize::try_from(limit).ok()?.checked_sub(1)?;
        self.limits.get(i).map(|l| l.name.as_str())
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

/// The sides of a rule or a rate limit as segment ids. A side with `*` keeps no names (they
/// add nothing).
struct Sides {
    from_any: bool,
    from: BTreeSet<u32>,
    to_any: bool,
    to: BTreeSet<u32>,
}

impl Sides {
    fn of(rule: &Rule, segment_count: usize) -> Sides {
        Sides::new(&rule.from, &rule.to, segment_count)
    }

    /// A limit's `from` is one segment; no `to` means `*`.
    fn of_limit(limit: &RateLimit, segment_count: usize) -> Sides {
        let to = limit.to.as_deref().unwrap_or(&[SegRef::Any]);
        Sides::new(&[limit.from], to, segment_count)
    }

    fn new(from: &[SegRef], to: &[SegRef], segment_count: usize) -> Sides {
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
        let (from_any, from) = side(from);
        let (to_any, to) = side(to);
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
    port_ranges(rule.ports.as_deref())
}

/// The inclusive port-key ranges a rate limit covers.
pub(crate) fn limit_ranges(limit: &RateLimit) -> Vec<(u32, u32)> {
    port_ranges(limit.ports.as_deref())
}

/// The inclusive port-key ranges of a `ports` list (absent = the whole space).
fn port_ranges(ports: Option<&[PortSpec]>) -> Vec<(u32, u32)> {
    match ports {
        None => vec![(0, PORT_SPACE - 1)],
        Some(specs) => specs.iter().map(|p| p.key_range()).collect(),
    }
}

/// Combines matching rules: the first deny if any, else the first allow. `rules` holds rule
/// indexes (0-based) in increasing order.
pub(crate) fn combine(policy: &Policy, rules: impl IntoIterator<Item = usize>) -> Option<Verdict> {
    let mut allow = None;
    for i in rules {
        let rule = &policy.rules[i];
        let verdict = Verdict {
            action: rule.action.code(),
            rule: rule_id(i),
            // Only a deny rule is ever audited (validation); its denials pass, reported. A
            // grant's allow carries its index, for the datapath to check its deadline.
            flags: if rule.mode == Mode::Audit { VERDICT_F_AUDIT } else { 0 }
                | rule.grant.map_or(0, |g| (g + 1) << VERDICT_GRANT_SHIFT),
            ..Default::default()
        };
        match rule.action {
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

/// The 1-based id of the limit at `index`.
pub(crate) fn limit_id(index: usize) -> u32 {
    u32::try_from(index + 1).unwrap_or(u32::MAX)
}

/// The verdict of a piece of port space: `rules` decide it (else the default action); when it
/// allows, the first of `limits` (0-based indexes, increasing) bounds it. `None` when the
/// piece needs no `PORTS` entry (it is the default action with no limit).
pub(crate) fn piece_verdict(
    policy: &Policy,
    rules: impl IntoIterator<Item = usize>,
    first_limit: Option<usize>,
) -> Option<Verdict> {
    let mut verdict = match combine(policy, rules) {
        Some(v) => v,
        None if policy.default_action == Action::Allow && first_limit.is_some() => Verdict {
            action: Action::Allow.code(),
            rule: 0,
            ..Default::default()
        },
        None => return None,
    };
    if verdict.action == Action::Allow.code() {
        verdict.limit = first_limit.map_or(0, limit_id);
    }
    Some(verdict)
}

/// Compiles a policy. Pure and deterministic: the same policy gives the same output.
pub fn compile(policy: &Policy) -> CompiledPolicy {
    let n = policy.segments.len();
    // Items: the rules (0..nrules), then the rate limits.
    let nrules = policy.rules.len();
    // The address blocks of grants are the last segments; each is bound by the rate limits of
    // the identity its addresses have, as if it were that identity.
    let first_block = n.saturating_sub(policy.grant_sources.len());
    let blocks_of = |id: u32| -> Vec<u32> {
        policy
            .grant_sources
            .iter()
            .enumerate()
            .filter(|(_, g)| g.identity.and_then(|r| seg_id(r, n)) == Some(id))
            .filter_map(|(j, _)| u32::try_from(first_block + j + 1).ok())
            .collect()
    };
    let sides: Vec<Sides> = policy
        .rules
        .iter()
        .map(|r| Sides::of(r, n))
        .chain(policy.rate_limits.iter().map(|l| {
            let mut s = Sides::of_limit(l, n);
            let also: Vec<u32> = s.from.iter().flat_map(|&id| blocks_of(id)).collect();
            s.from.extend(also);
            s
        }))
        .collect();

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

    // Pair -> items (indexes, increasing). (s, ANY) and (ANY, d) sort after the explicit
    // pairs of the same source since SEG_ANY is u32::MAX. One pass files every item under what
    // it names (both sides, one side, or neither); a pair's items are then the merge of its own
    // lists, so the cost follows the policy's size, not pairs x items.
    let mut direct: HashMap<(u32, u32), Vec<usize>> = HashMap::new();
    let mut by_src: HashMap<u32, Vec<usize>> = HashMap::new(); // named source, `to: *`
    let mut by_dst: HashMap<u32, Vec<usize>> = HashMap::new(); // `from: *`, named destination
    let mut any_any_items: Vec<usize> = Vec::new();
    for (i, s) in sides.iter().enumerate() {
        match (s.from_any, s.to_any) {
            (false, false) => {
                for &a in &s.from {
                    for &b in &s.to {
                        direct.entry((a, b)).or_default().push(i);
                    }
                }
            }
            (false, true) => s
                .from
                .iter()
                .for_each(|&a| by_src.entry(a).or_default().push(i)),
            (true, false) => {
                s.to.iter()
                    .for_each(|&b| by_dst.entry(b).or_default().push(i))
            }
            (true, true) => any_any_items.push(i),
        }
    }
    let merged = |lists: &[Option<&Vec<usize>>]| -> Vec<usize> {
        let mut v: Vec<usize> = lists
            .iter()
            .flatten()
            .flat_map(|l| l.iter().copied())
            .collect();
        v.sort_unstable();
        v
    };
    let mut pair_items: BTreeMap<(u32, u32), Vec<usize>> = BTreeMap::new();
    let explicit = direct.keys().copied().chain(
        src_wild
            .iter()
            .flat_map(|&a| dst_wild.iter().map(move |&b| (a, b))),
    );
    for (a, b) in explicit.collect::<BTreeSet<_>>() {
        let items = merged(&[
            direct.get(&(a, b)),
            by_src.get(&a),
            by_dst.get(&b),
            Some(&any_any_items),
        ]);
        pair_items.insert((a, b), items);
    }
    for &a in &src_wild {
        pair_items.insert(
            (a, SEG_ANY),
            merged(&[by_src.get(&a), Some(&any_any_items)]),
        );
    }
    for &b in &dst_wild {
        pair_items.insert(
            (SEG_ANY, b),
            merged(&[by_dst.get(&b), Some(&any_any_items)]),
        );
    }

    // Profiles: identical item sets (rules and limits) share one.
    let mut profiles: Vec<Vec<usize>> = Vec::new();
    let mut interned: HashMap<Vec<usize>, u32> = HashMap::new();
    let mut intern = |items: Vec<usize>| -> u32 {
        if let Some(&p) = interned.get(&items) {
            return p;
        }
        let p = u32::try_from(profiles.len()).unwrap_or(u32::MAX);
        interned.insert(items.clone(), p);
        profiles.push(items);
        p
    };
    let mut pairs = Vec::with_capacity(pair_items.len());
    for ((a, b), items) in pair_items {
        // Every pair written above has at least one item, by construction.
        pairs.push((a, b, intern(items)));
    }
    let any_any = (!any_any_items.is_empty()).then(|| intern(any_any_items));

    let mut ports = Vec::new();
    for (p, items) in profiles.iter().enumerate() {
        let profile = u32::try_from(p).unwrap_or(u32::MAX);
        // Items are sorted, rules first.
        let split = items.partition_point(|&i| i < nrules);
        let limits: Vec<usize> = items[split..].iter().map(|&i| i - nrules).collect();
        for (lo, hi, verdict) in profile_intervals(policy, &items[..split], &limits) {
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
        let audited = id != SEG_WORLD
            && policy.segments.get(id as usize - 1).is_some_and(|s| s.mode == Mode::Audit);
        let mut f = if audited { SEG_F_AUDIT } else { 0 };
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
    let mut grant_sources = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, seg) in policy.segments.iter().enumerate() {
        let id = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let info = SegmentInfo {
            id,
            flags: flags_of(id),
        };
        if i >= first_block {
            grant_sources.extend(seg.cidrs.iter().map(|net| {
                let (len, addr) = cidr_key(net);
                (len, addr, info)
            }));
            continue;
        }
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
        mode: policy.mode,
        segment_names,
        rule_names: policy.rules.iter().map(|r| r.name.clone()).collect(),
        world_flags: flags_of(SEG_WORLD),
        hosts,
        cidrs,
        pairs,
        any_any,
        ports,
        profile_count: u32::try_from(profiles.len()).unwrap_or(u32::MAX),
        limits: policy
            .rate_limits
            .iter()
            .map(|l| compile_limit(policy, l))
            .collect(),
        grant_sources,
    }
}

fn compile_limit(policy: &Policy, limit: &RateLimit) -> CompiledLimit {
    CompiledLimit {
        name: limit.name.clone(),
        fingerprint: limit_fingerprint(policy, limit),
        packets: limit.packets.as_ref().map(Bucket::of),
        connections: limit.connections.as_ref().map(Bucket::of),
        bytes: limit.bytes.as_ref().map(Bucket::of),
        per_address: limit.scope == LimitScope::Address,
    }
}

/// FNV-1a 64.
struct Fnv(u64);

impl Fnv {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    fn bytes(&mut self, data: &[u8]) {
        for &b in data {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }
    fn u8(&mut self, v: u8) {
        self.bytes(&[v]);
    }
    fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
    /// Length-prefixed, so that consecutive strings cannot run into each other.
    fn str(&mut self, s: &str) {
        self.u64(s.len() as u64);
        self.bytes(s.as_bytes());
    }
}

/// The fingerprint of a rate limit: FNV-1a 64 over this canonical serialization (integers
/// little endian, strings as a u64 byte length then UTF-8):
///
/// 1. the tag `ztagent.rateLimit.v1` (a string);
/// 2. `name` (a string);
/// 3. `from` as the segment's name (`world` for world, `*` for any);
/// 4. `to` as a u64 count then the names, sorted and without duplicates; absent or containing
///    `*` is the single name `*` (they mean the same);
/// 5. `ports` as the covered port-key intervals, sorted and merged (so equivalent lists such as
///    `[80/tcp, 81/tcp]` and `[80-81/tcp]` agree; absent = the whole space): a u64 count then
///    each interval as two u32;
/// 6. `packets`, `connections`, `bytes`, each as a u8 0 (absent) or 1 followed by `rate`,
///    `per` in seconds and `burst` as u64;
/// 7. `scope` as a u8: 0 segment, 1 address.
///
/// Segments are named, not numbered, so adding, removing or reordering segments, rules or
/// other limits never changes the fingerprint of a limit; changing any of the limit's own
/// fields (or renaming a segment it names) does. The fingerprint is never 0 (a hash of 0 is
/// replaced by 1), so 0 can mark an unused entry.
pub fn limit_fingerprint(policy: &Policy, limit: &RateLimit) -> u64 {
    let mut h = Fnv(Fnv::OFFSET);
    h.str("ztagent.rateLimit.v1");
    h.str(&limit.name);
    h.str(&policy.seg_ref_name(limit.from));
    let to: BTreeSet<String> = match limit.to.as_deref() {
        Some(to) if !to.contains(&SegRef::Any) => {
            to.iter().map(|r| policy.seg_ref_name(*r)).collect()
        }
        _ => [policy.seg_ref_name(SegRef::Any)].into(),
    };
    h.u64(to.len() as u64);
    for name in &to {
        h.str(name);
    }
    let mut ranges = limit_ranges(limit);
    ranges.sort_unstable();
    let mut merged: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match merged.last_mut() {
            Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
            _ => merged.push((lo, hi)),
        }
    }
    h.u64(merged.len() as u64);
    for (lo, hi) in merged {
        h.u32(lo);
        h.u32(hi);
    }
    for bucket in [&limit.packets, &limit.connections, &limit.bytes] {
        match bucket {
            None => h.u8(0),
            Some(b) => {
                h.u8(1);
                h.u64(b.rate);
                h.u64(b.per.seconds());
                h.u64(b.burst);
            }
        }
    }
    h.u8(match limit.scope {
        LimitScope::Segment => 0,
        LimitScope::Address => 1,
    });
    // 0 is free for "no limit" in the datapath's tables; FNV-1a gives it with odds of 2^-64.
    if h.0 == 0 { 1 } else { h.0 }
}

/// The port-key intervals `[lo, hi]` of one profile with their verdicts: sorted, disjoint,
/// adjacent intervals with equal verdicts merged, keys that need no entry (default action and
/// no limit, see [`piece_verdict`]) left out. `rules` and `limits` are 0-based indexes into
/// the policy's rules and rate limits, increasing.
pub(crate) fn profile_intervals(
    policy: &Policy,
    rules: &[usize],
    limits: &[usize],
) -> Vec<(u32, u32, Verdict)> {
    // Sweep over the boundaries: +1 where a range starts, -1 just after it ends. An item may
    // list overlapping ranges, hence a count per item. Items are numbered rules first, then
    // limits (j >= rules.len()).
    let mut events: Vec<(u32, bool, usize)> = Vec::new();
    for (j, &r) in rules.iter().enumerate() {
        for (lo, hi) in rule_ranges(&policy.rules[r]) {
            events.push((lo, true, j));
            events.push((hi + 1, false, j));
        }
    }
    for (j, &l) in limits.iter().enumerate() {
        for (lo, hi) in limit_ranges(&policy.rate_limits[l]) {
            events.push((lo, true, rules.len() + j));
            events.push((hi + 1, false, rules.len() + j));
        }
    }
    events.sort_unstable();
    let mut counts = vec![0u32; rules.len() + limits.len()];
    let mut active: BTreeSet<usize> = BTreeSet::new();
    let mut active_limits: BTreeSet<usize> = BTreeSet::new();
    let mut out: Vec<(u32, u32, Verdict)> = Vec::new();
    let mut i = 0;
    while i < events.len() {
        let pos = events[i].0;
        while i < events.len() && events[i].0 == pos {
            let (_, start, j) = events[i];
            let (set, id) = if j < rules.len() {
                (&mut active, rules[j])
            } else {
                (&mut active_limits, limits[j - rules.len()])
            };
            if start {
                counts[j] += 1;
                if counts[j] == 1 {
                    set.insert(id);
                }
            } else {
                counts[j] -= 1;
                if counts[j] == 0 {
                    set.remove(&id);
                }
            }
            i += 1;
        }
        let end = events.get(i).map_or(PORT_SPACE, |e| e.0);
        if pos >= PORT_SPACE || end <= pos {
            continue;
        }
        let Some(verdict) = piece_verdict(
            policy,
            active.iter().copied(),
            active_limits.first().copied(),
        ) else {
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
    fn fnv1a_64_test_vectors() {
        let hash = |data: &[u8]| {
            let mut h = Fnv(Fnv::OFFSET);
            h.bytes(data);
            h.0
        };
        // From the FNV reference test suite.
        assert_eq!(hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(hash(b"foobar"), 0x8594_4171_f739_67e8);
    }

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
