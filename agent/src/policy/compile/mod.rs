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

use std::collections::BTreeSet;
use std::fmt;

use ipnet::IpNet;

use agent_common::{
    Addr, PORT_KEY_BITS, SEG_F_AUDIT, SEG_F_DENIED_ALL, SEG_F_DST_WILD, SEG_F_ISOLATED, SEG_F_SRC_WILD, SEG_WORLD,
    SegmentInfo, Verdict,
};

use super::eval::addr16;
use super::model::{Action, BucketSpec, Mode, Policy, WORLD_NAME};

mod limits;
mod pairs;
mod ports;
#[cfg(test)]
mod tests;

use limits::compile_limit;
pub use limits::limit_fingerprint;
pub(crate) use pairs::seg_id;
use pairs::{Sides, intern_profiles, pair_items, wildcards};
pub(crate) use ports::{combine, limit_ranges, prefixes, profile_intervals, rule_ranges};

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
    /// The declared API ports (`apis`): (destination segment id, TCP port), sorted, each once.
    /// The datapath parses the TCP flows to these as HTTP/1.x ([`agent_common::http::API_HTTP`]).
    pub api_ports: Vec<(u32, u16)>,
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
        Bucket { rate, per_seconds, burst, cost_fp16: sat(cost), tolerance_fp16: sat(tolerance) }
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
    /// Declared (segment, TCP port) pairs of `apis`.
    pub api_ports: usize,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} segments, {} rules, {} hosts, {} cidrs, {} pairs, {} profiles, {} port entries",
            self.segments, self.rules, self.hosts, self.cidrs, self.pairs, self.profiles, self.port_entries
        )?;
        match self.rate_limits {
            0 => {}
            1 => write!(f, ", 1 rate limit")?,
            n => write!(f, ", {n} rate limits")?,
        }
        match self.api_ports {
            0 => {}
            1 => write!(f, ", 1 API port")?,
            n => write!(f, ", {n} API ports")?,
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
            api_ports: self.api_ports.len(),
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
        self.segment_names.get(usize::try_from(id).ok()?).map(String::as_str)
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

/// Compiles a policy. Pure and deterministic: the same policy gives the same output.
pub fn compile(policy: &Policy) -> CompiledPolicy {
    let n = policy.segments.len();
    // The address blocks of grants are the last segments.
    let first_block = n.saturating_sub(policy.grant_sources.len());
    // Items: the rules (0..nrules), then the rate limits.
    let sides = Sides::of_policy(policy, first_block);
    let (src_wild, dst_wild) = wildcards(&sides);
    let (pair_items, any_any_items) = pair_items(&sides, &src_wild, &dst_wild);
    let (profiles, pairs, any_any) = intern_profiles(pair_items, any_any_items);
    let ports = port_entries(policy, &profiles);
    let denied_all = denied_all(policy, &pairs, any_any, &dst_wild);
    let destinations: BTreeSet<u32> = pairs.iter().map(|&(_, dst, _)| dst).collect();
    let flags_of = |id: u32| {
        let audited = id != SEG_WORLD && policy.segments.get(id as usize - 1).is_some_and(|s| s.mode == Mode::Audit);
        let mut f = if audited { SEG_F_AUDIT } else { 0 };
        if denied_all(id) {
            f |= SEG_F_DENIED_ALL;
            if src_wild.is_empty() && !destinations.contains(&id) {
                f |= SEG_F_ISOLATED;
            }
        }
        if src_wild.contains(&id) {
            f |= SEG_F_SRC_WILD;
        }
        if dst_wild.contains(&id) {
            f |= SEG_F_DST_WILD;
        }
        f
    };
    let ids = identities(policy, first_block, &flags_of);
    let mut segment_names = Vec::with_capacity(n + 1);
    segment_names.push(WORLD_NAME.to_owned());
    segment_names.extend(policy.segments.iter().map(|s| s.name.clone()));
    CompiledPolicy {
        default_action: policy.default_action.code(),
        mode: policy.mode,
        segment_names,
        rule_names: policy.rules.iter().map(|r| r.name.clone()).collect(),
        world_flags: flags_of(SEG_WORLD),
        hosts: ids.hosts,
        cidrs: ids.cidrs,
        pairs,
        any_any,
        ports,
        profile_count: u32::try_from(profiles.len()).unwrap_or(u32::MAX),
        limits: policy.rate_limits.iter().map(|l| compile_limit(policy, l)).collect(),
        grant_sources: ids.grant_sources,
        api_ports: api_ports(policy),
    }
}

/// The (segment id, TCP port) pairs the APIs declare, expanded, sorted and deduplicated.
fn api_ports(policy: &Policy) -> Vec<(u32, u16)> {
    let mut by_segment: std::collections::BTreeMap<u32, Vec<(u32, u32)>> = std::collections::BTreeMap::new();
    for api in &policy.apis {
        // A dangling index (only in a hand-built policy) declares nothing.
        let Some(id) = seg_id(super::model::SegRef::Named(api.segment), policy.segments.len()) else { continue };
        let set = by_segment.entry(id).or_default();
        for (lo, hi) in api.tcp_ranges() {
            insert_range(set, u32::from(lo), u32::from(hi));
        }
    }
    let mut out = Vec::new();
    for (id, ranges) in by_segment {
        for (lo, hi) in ranges {
            // The ranges hold TCP ports (u16): the conversion never fails.
            out.extend((lo..=hi).filter_map(|p| u16::try_from(p).ok()).map(|p| (id, p)));
        }
    }
    out
}

/// Inserts `[lo, hi]` into sorted disjoint (non-adjacent) ranges; returns how many values were
/// not covered before.
pub(crate) fn insert_range(set: &mut Vec<(u32, u32)>, lo: u32, hi: u32) -> usize {
    // The ranges that touch or overlap [lo, hi]: set[first..last].
    let first = set.partition_point(|&(_, h)| h.saturating_add(1) < lo);
    let last = set.partition_point(|&(l, _)| l <= hi.saturating_add(1));
    if first < last && set[first].0 <= lo && set[first].1 >= hi {
        return 0;
    }
    let mut covered_before = 0u64;
    let (mut new_lo, mut new_hi) = (lo, hi);
    for &(l, h) in &set[first..last] {
        // Overlap of [l, h] with [lo, hi].
        let (ol, oh) = (l.max(lo), h.min(hi));
        if ol <= oh {
            covered_before += u64::from(oh - ol) + 1;
        }
        new_lo = new_lo.min(l);
        new_hi = new_hi.max(h);
    }
    set.splice(first..last, [(new_lo, new_hi)]);
    (u64::from(hi - lo) + 1 - covered_before) as usize
}

/// Whether the policy allows a segment nothing as a source, in a form the datapath may trust
/// without a judgement (`SEG_F_DENIED_ALL`): the default is deny, no segment is in audit mode
/// (a denial to it would pass), no rule has `*` as its source (it would apply to this one) or
/// neither side (`any_any`), and no pair starts at this segment (no rule, grant or rate limit
/// names it as a source, nor `*` as its destination). Every packet from it is then denied by
/// default, whatever its destination and port.
fn denied_all(
    policy: &Policy,
    pairs: &[(u32, u32, u32)],
    any_any: Option<u32>,
    dst_wild: &BTreeSet<u32>,
) -> impl Fn(u32) -> bool + use<> {
    let possible = policy.default_action == Action::Deny
        && policy.mode != Mode::Audit
        && policy.segments.iter().all(|s| s.mode != Mode::Audit)
        && any_any.is_none()
        && dst_wild.is_empty();
    let sources: BTreeSet<u32> = pairs.iter().map(|&(src, _, _)| src).collect();
    move |id| possible && !sources.contains(&id)
}

/// The `PORTS` entries of every profile (its items sorted, rules first).
fn port_entries(policy: &Policy, profiles: &[Vec<usize>]) -> Vec<PortEntry> {
    let nrules = policy.rules.len();
    let mut ports = Vec::new();
    for (p, items) in profiles.iter().enumerate() {
        let profile = u32::try_from(p).unwrap_or(u32::MAX);
        // Items are sorted, rules first.
        let split = items.partition_point(|&i| i < nrules);
        let limits: Vec<usize> = items[split..].iter().map(|&i| i - nrules).collect();
        for (lo, hi, verdict) in profile_intervals(policy, &items[..split], &limits) {
            for (bits, value) in prefixes(lo, hi) {
                ports.push(PortEntry { profile, bits, value, verdict });
            }
        }
    }
    ports
}

/// The identity maps' contents: host addresses, prefixes, and the grants' address blocks.
struct Identities {
    hosts: Vec<(Addr, SegmentInfo)>,
    cidrs: Vec<(u32, Addr, SegmentInfo)>,
    grant_sources: Vec<(u32, Addr, SegmentInfo)>,
}

fn identities(policy: &Policy, first_block: usize, flags_of: &dyn Fn(u32) -> u32) -> Identities {
    let mut ids = Identities { hosts: Vec::new(), cidrs: Vec::new(), grant_sources: Vec::new() };
    let mut seen = BTreeSet::new();
    for (i, seg) in policy.segments.iter().enumerate() {
        let id = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let info = SegmentInfo { id, flags: flags_of(id) };
        if i >= first_block {
            ids.grant_sources.extend(seg.cidrs.iter().map(|net| {
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
                ids.hosts.push((addr, info));
            } else {
                ids.cidrs.push((len, addr, info));
            }
        }
    }
    ids
}
