//! Evaluation: what the datapath decides for a packet ([`CompiledPolicy::lookup`], which
//! performs the kernel's steps on the compiled maps), and what the policy means
//! ([`evaluate_naive`], a plain loop over the rules). The two must always agree.

use std::collections::HashMap;
use std::net::IpAddr;

use agent_common::{
    ACTION_ALLOW, Addr, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, PORT_KEY_BITS, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP,
    PROTO_UDP, SEG_ANY, SEG_F_AUDIT, SEG_F_DST_WILD, SEG_F_SRC_WILD, SEG_WORLD, SegmentInfo, VERDICT_F_AUDIT, Verdict,
};

use super::compile::{CompiledPolicy, cidr_key, combine, limit_ranges, rule_ranges, seg_id};
use super::model::{Mode, Policy, SegRef};

/// The decision for one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Decision {
    /// [`agent_common::ACTION_ALLOW`] or [`agent_common::ACTION_DENY`].
    pub action: u32,
    /// 1-based rule id, or 0 for the default action.
    pub rule: u32,
    /// 1-based id of the rate limit that bounds the packet, or 0 for none (always 0 when the
    /// packet is denied).
    pub limit: u32,
    pub src_segment: u32,
    pub dst_segment: u32,
    /// A denial that passes, counted and reported as would-deny: the policy, the deciding deny
    /// rule, or the source or destination segment is in audit mode.
    pub audit: bool,
}

/// An address as the maps key it: IPv6 as is, IPv4 as `::ffff:a.b.c.d`.
pub fn addr16(ip: IpAddr) -> Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The 24-bit port key `(proto << 16) | port` the datapath looks up, normalised the way the
/// datapath normalises packets: ICMPv6 (58) is folded into ICMP (1) with its echo request
/// (128) and echo reply (129) types mapped to ICMP's (8 and 0); for ICMP `port` is the type;
/// for protocols other than TCP, UDP and ICMP the port is 0.
pub fn port_key(proto: u8, port: u16) -> u32 {
    let (proto, port) = match proto {
        PROTO_TCP | PROTO_UDP | PROTO_ICMP => (proto, port),
        PROTO_ICMPV6 => match port {
            128 => (PROTO_ICMP, ICMP_ECHO_REQUEST),
            129 => (PROTO_ICMP, ICMP_ECHO_REPLY),
            other => (PROTO_ICMP, other),
        },
        other => (other, 0),
    };
    (u32::from(proto) << 16) | u32::from(port)
}

/// Indexes over a [`CompiledPolicy`] that make a lookup a handful of hash probes, like the
/// kernel's maps. Build it once with [`CompiledPolicy::index`] and reuse it.
#[derive(Clone, Debug)]
pub struct Lookup<'a> {
    policy: &'a CompiledPolicy,
    hosts: HashMap<Addr, SegmentInfo>,
    /// (prefix length, network) -> info; probed from the longest length down.
    cidrs: HashMap<(u32, Addr), SegmentInfo>,
    cidr_lens: Vec<u32>,
    /// The address blocks of grants, as `cidrs`.
    blocks: HashMap<(u32, Addr), SegmentInfo>,
    block_lens: Vec<u32>,
    pairs: HashMap<(u32, u32), u32>,
    /// (profile, bits, value) -> verdict; probed from the longest prefix down.
    ports: HashMap<(u32, u32, u32), Verdict>,
    port_bits: HashMap<u32, Vec<u32>>,
}

impl CompiledPolicy {
    /// Builds the lookup indexes.
    pub fn index(&self) -> Lookup<'_> {
        // Insert in reverse so that, as in a map written in order, the first entry of a
        // duplicate key would win (the compiler never writes duplicates).
        let hosts = self.hosts.iter().rev().map(|(a, i)| (*a, *i)).collect();
        let cidrs = self.cidrs.iter().rev().map(|(l, a, i)| ((*l, mask(a, *l)), *i)).collect();
        let mut cidr_lens: Vec<u32> = self.cidrs.iter().map(|c| c.0.min(128)).collect();
        cidr_lens.sort_unstable_by(|a, b| b.cmp(a));
        cidr_lens.dedup();
        let blocks = self.grant_sources.iter().rev().map(|(l, a, i)| ((*l, mask(a, *l)), *i)).collect();
        let mut block_lens: Vec<u32> = self.grant_sources.iter().map(|c| c.0.min(128)).collect();
        block_lens.sort_unstable_by(|a, b| b.cmp(a));
        block_lens.dedup();
        let pairs = self.pairs.iter().rev().map(|&(s, d, p)| ((s, d), p)).collect();
        let mut ports = HashMap::new();
        let mut port_bits: HashMap<u32, Vec<u32>> = HashMap::new();
        for e in self.ports.iter().rev() {
            let bits = e.bits.min(PORT_KEY_BITS);
            ports.insert((e.profile, bits, mask_key(e.value, bits)), e.verdict);
            port_bits.entry(e.profile).or_default().push(bits);
        }
        for v in port_bits.values_mut() {
            v.sort_unstable_by(|a, b| b.cmp(a));
            v.dedup();
        }
        Lookup { policy: self, hosts, cidrs, cidr_lens, blocks, block_lens, pairs, ports, port_bits }
    }

    /// The datapath's decision for a packet. Builds the indexes on every call: for many
    /// lookups use [`CompiledPolicy::index`] once and [`Lookup::lookup`].
    pub fn lookup(&self, src: IpAddr, dst: IpAddr, proto: u8, port: u16) -> Decision {
        self.index().lookup(src, dst, proto, port)
    }
}

impl Lookup<'_> {
    /// The datapath's decision for a packet (see [`port_key`] for `proto` and `port`).
    pub fn lookup(&self, src: IpAddr, dst: IpAddr, proto: u8, port: u16) -> Decision {
        let s = self.segment_of(&addr16(src));
        let d = self.segment_of(&addr16(dst));
        let key = port_key(proto, port);
        let mut v = self.judge(s, d, key);
        if v.rule == 0
            && v.action != ACTION_ALLOW
            && let Some(g) = self.granted(&addr16(src), d, key)
        {
            v = g;
        }
        let audited =
            self.policy.mode == Mode::Audit || v.flags & VERDICT_F_AUDIT != 0 || (s.flags | d.flags) & SEG_F_AUDIT != 0;
        Decision {
            action: v.action,
            rule: v.rule,
            limit: v.limit,
            src_segment: s.id,
            dst_segment: d.id,
            audit: v.action != ACTION_ALLOW && audited,
        }
    }

    /// Identity: exact host, else longest prefix, else world.
    pub fn segment_of(&self, addr: &Addr) -> SegmentInfo {
        if let Some(info) = self.hosts.get(addr) {
            return *info;
        }
        for &len in &self.cidr_lens {
            if let Some(info) = self.cidrs.get(&(len, mask(addr, len))) {
                return *info;
            }
        }
        SegmentInfo { id: SEG_WORLD, flags: self.policy.world_flags }
    }

    /// The allow of a time-bound grant from an address block holding `src` (the longest), as
    /// the datapath finds it for a packet the policy denies by default: the block's pair with
    /// `dst`, else its wildcard pair.
    pub fn granted(&self, src: &Addr, dst: SegmentInfo, key: u32) -> Option<Verdict> {
        let block = self.block_lens.iter().find_map(|&len| self.blocks.get(&(len, mask(src, len))))?;
        let profile = match self.pairs.get(&(block.id, dst.id)) {
            Some(p) => *p,
            None if block.flags & SEG_F_SRC_WILD != 0 => *self.pairs.get(&(block.id, SEG_ANY))?,
            None => return None,
        };
        let lens = self.port_bits.get(&profile)?;
        lens.iter()
            .find_map(|&bits| self.ports.get(&(profile, bits, mask_key(key, bits))))
            .copied()
            .filter(|v| v.action == ACTION_ALLOW)
    }

    /// The profile for a pair of segments, with the datapath's fallback order.
    pub fn profile(&self, src: SegmentInfo, dst: SegmentInfo) -> Option<u32> {
        if let Some(p) = self.pairs.get(&(src.id, dst.id)) {
            return Some(*p);
        }
        if src.flags & SEG_F_SRC_WILD != 0 {
            self.pairs.get(&(src.id, SEG_ANY)).copied()
        } else if dst.flags & SEG_F_DST_WILD != 0 {
            self.pairs.get(&(SEG_ANY, dst.id)).copied()
        } else {
            self.policy.any_any
        }
    }

    /// Pair, then ports; a miss at either step is the default action.
    pub fn judge(&self, src: SegmentInfo, dst: SegmentInfo, key: u32) -> Verdict {
        let default = Verdict { action: self.policy.default_action, rule: 0, ..Default::default() };
        let Some(profile) = self.profile(src, dst) else {
            return default;
        };
        let Some(lens) = self.port_bits.get(&profile) else {
            return default;
        };
        lens.iter().find_map(|&bits| self.ports.get(&(profile, bits, mask_key(key, bits)))).copied().unwrap_or(default)
    }
}

/// Keeps the first `len` bits of an address.
pub(crate) fn mask(addr: &Addr, len: u32) -> Addr {
    let mut out = [0u8; 16];
    for (i, (o, a)) in out.iter_mut().zip(addr).enumerate() {
        let start = i as u32 * 8;
        if len >= start + 8 {
            *o = *a;
        } else if len > start {
            *o = *a & (0xffu8 << (8 - (len - start)));
        }
    }
    out
}

/// Keeps the first `bits` bits of a 24-bit port key.
fn mask_key(key: u32, bits: u32) -> u32 {
    let key = key & ((1 << PORT_KEY_BITS) - 1);
    if bits == 0 { 0 } else { key & !((1u32 << (PORT_KEY_BITS - bits.min(PORT_KEY_BITS))) - 1) }
}

/// The reference semantics: the segment of an address is the longest prefix over all the
/// segments' CIDRs (first listed on a tie), else world; a rule matches if the source segment
/// is in `from` (or `from` has `*`), the destination in `to` (or `*`) and a port spec covers
/// the packet (or the rule has no `ports`); the first matching deny decides, else the first
/// matching allow, else the default action (rule 0). If the packet is allowed, the first rate
/// limit (file order) whose `from` is the source segment, whose `to` holds the destination (or
/// is absent or has `*`) and whose ports cover the packet (or are absent) bounds it (`limit`,
/// 1-based; 0 if none).
pub fn evaluate_naive(policy: &Policy, src: IpAddr, dst: IpAddr, proto: u8, port: u16) -> Decision {
    let s = naive_segment(policy, src);
    let d = naive_segment(policy, dst);
    let mut v = naive_verdict(policy, s, d, port_key(proto, port));
    // Denied by default: judged again from the longest grant block holding the source, by the
    // grants' rules only (the blocks are named by them alone).
    if v.rule == 0
        && v.action != ACTION_ALLOW
        && let Some(b) = naive_block(policy, src)
    {
        let n = policy.segments.len();
        let first = n - policy.grant_sources.len().min(n);
        let identity =
            policy.grant_sources.get(b as usize - 1 - first).and_then(|g| g.identity).and_then(|r| seg_id(r, n));
        // A block with no single identity is bound by no limit (an id no limit names).
        let g = naive_verdict_as(policy, b, identity.unwrap_or(b), d, port_key(proto, port));
        if g.action == ACTION_ALLOW && g.rule != 0 {
            v = g;
        }
    }
    let segment_audited = |id: u32| id != SEG_WORLD && policy.segments[id as usize - 1].mode == Mode::Audit;
    let rule_audited = v.rule != 0 && policy.rules[v.rule as usize - 1].mode == Mode::Audit;
    let audited = policy.mode == Mode::Audit || rule_audited || segment_audited(s) || segment_audited(d);
    Decision {
        action: v.action,
        rule: v.rule,
        limit: v.limit,
        src_segment: s,
        dst_segment: d,
        audit: v.action != ACTION_ALLOW && audited,
    }
}

/// The segments of `policy` that are identities (not grant blocks), with their ids.
fn naive_identities(policy: &Policy) -> impl Iterator<Item = (u32, &super::model::Segment)> {
    let n = policy.segments.len() - policy.grant_sources.len().min(policy.segments.len());
    policy.segments[..n].iter().enumerate().map(|(i, s)| (u32::try_from(i + 1).unwrap_or(u32::MAX), s))
}

/// The longest grant block holding `ip` (its pseudo-segment id).
fn naive_block(policy: &Policy, ip: IpAddr) -> Option<u32> {
    let addr = addr16(ip);
    let first = policy.segments.len() - policy.grant_sources.len().min(policy.segments.len());
    let mut best: Option<(u32, u32)> = None;
    for (i, seg) in policy.segments.iter().enumerate().skip(first) {
        for net in &seg.cidrs {
            let (len, network) = cidr_key(net);
            if mask(&addr, len) == network && best.is_none_or(|(l, _)| len > l) {
                best = Some((len, u32::try_from(i + 1).unwrap_or(u32::MAX)));
            }
        }
    }
    best.map(|(_, id)| id)
}

fn naive_segment(policy: &Policy, ip: IpAddr) -> u32 {
    let addr = addr16(ip);
    let mut best: Option<(u32, u32)> = None; // (prefix length, segment id)
    for (id, seg) in naive_identities(policy) {
        for net in &seg.cidrs {
            let (len, network) = cidr_key(net);
            if mask(&addr, len) == network && best.is_none_or(|(l, _)| len > l) {
                best = Some((len, id));
            }
        }
    }
    best.map_or(SEG_WORLD, |(_, id)| id)
}

/// The verdict of the rules, and the bounding rate limit, for segments `src`, `dst` and a port
/// key: a loop over every rule, then (if allowed) over every limit.
pub(crate) fn naive_verdict(policy: &Policy, src: u32, dst: u32, key: u32) -> Verdict {
    naive_verdict_as(policy, src, src, dst, key)
}

/// As [`naive_verdict`], the rules matched with source `src`, the limits with `limits_src`
/// (for a grant block: the identity its addresses have).
fn naive_verdict_as(policy: &Policy, src: u32, limits_src: u32, dst: u32, key: u32) -> Verdict {
    let n = policy.segments.len();
    let side = |refs: &[SegRef], id: u32| refs.iter().any(|r| *r == SegRef::Any || seg_id(*r, n) == Some(id));
    let covers = |ranges: Vec<(u32, u32)>| ranges.iter().any(|&(lo, hi)| lo <= key && key <= hi);
    let matching = policy
        .rules
        .iter()
        .enumerate()
        .filter(|(_, r)| side(&r.from, src) && side(&r.to, dst) && covers(rule_ranges(r)));
    let mut verdict = combine(policy, matching.map(|(i, _)| i)).unwrap_or(Verdict {
        action: policy.default_action.code(),
        rule: 0,
        ..Default::default()
    });
    // Written independently of the compiler's `piece_verdict`, as the reference.
    if verdict.action == ACTION_ALLOW
        && let Some(i) = policy.rate_limits.iter().position(|l| {
            side(&[l.from], limits_src) && l.to.as_deref().is_none_or(|to| side(to, dst)) && covers(limit_ranges(l))
        })
    {
        verdict.limit = u32::try_from(i + 1).unwrap_or(u32::MAX);
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_masks() {
        assert_eq!(port_key(6, 443), (6 << 16) | 443);
        assert_eq!(port_key(1, 8), (1 << 16) | 8);
        assert_eq!(port_key(58, 128), (1 << 16) | 8);
        assert_eq!(port_key(58, 129), 1 << 16);
        assert_eq!(port_key(47, 1234), 47 << 16);
        assert_eq!(mask_key(0xffffff, 8), 0xff0000);
        assert_eq!(mask_key(0xffffff, 0), 0);
        assert_eq!(mask_key(0xffffff, 24), 0xffffff);
        let a = addr16("10.1.2.3".parse().unwrap());
        assert_eq!(a[..12], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        assert_eq!(mask(&a, 104), addr16("10.0.0.0".parse().unwrap()));
        assert_eq!(mask(&a, 117), addr16("10.1.0.0".parse().unwrap()));
        assert_eq!(mask(&a, 0), [0; 16]);
        assert_eq!(mask(&a, 128), a);
    }
}
