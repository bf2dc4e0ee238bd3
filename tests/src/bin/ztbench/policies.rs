//! The benchmark's policies: deterministic (the harness's one [`Rng`]), sized by rules and
//! CIDRs, with the fixed segments and rules the measured paths need.

use super::{
    Action, CIDRS_PER_SEGMENT, FIXED_RULES, FIXED_SEGMENTS, Ipv4Addr, Mode, Policy, PortSpec, Proto, Result, Rng, Rule,
    SEG_CLIENT, SEG_DENIED, SEG_MONITORING, SEG_SERVER, SegRef, Segment, ensure,
};
use anyhow::Context as _;

/// The network of the `k`th IPv4 /24 handed out (10.0.0.0, 10.0.1.0, ... then into 11/8).
pub(crate) fn net24(k: usize) -> u32 {
    0x0a00_0000 + ((k as u32) << 8)
}

/// CIDR number `j` (segment `j / 10`), all distinct and non-overlapping: of every 10, seven
/// IPv4 /24 (from 10.0.0.0 on), two IPv4 /32 (from 100.64.0.0 on) and one IPv6 (a /64 under
/// fd00::/16 or a /128 under fd01::/16, alternately).
pub(crate) fn cidr_text(j: usize) -> String {
    let (block, kind) = (j / 10, j % 10);
    match kind {
        0..=6 => format!("{}/24", Ipv4Addr::from(net24(block * 7 + kind))),
        7 | 8 => format!("{}/32", Ipv4Addr::from(0x6440_0000 + (block * 2 + kind - 7) as u32)),
        _ if block % 2 == 0 => format!("fd00:{:x}:{:x}::/64", block >> 16, block & 0xffff),
        _ => format!("fd01::{:x}:{:x}/128", block >> 16, block & 0xffff),
    }
}

/// An address inside the first /24 of `segment` (see [`cidr_text`]).
pub(crate) fn host_in(segment: usize, host: u8) -> Ipv4Addr {
    Ipv4Addr::from(net24(segment * 7) + u32::from(host))
}

pub(crate) fn tcp(lo: u16, hi: u16) -> PortSpec {
    PortSpec::Range { proto: Proto::Tcp, lo, hi }
}

/// A policy of `rules` rules over `cidrs` CIDRs, `CIDRS_PER_SEGMENT` per segment. Random rules
/// join two random segments (not the fixed ones) with the port shapes real policies have:
/// single TCP ports (mostly well known), ranges, UDP, a whole protocol, several specs; one in
/// ten denies.
pub(crate) fn make_policy(rules: usize, cidrs: usize) -> Result<Policy> {
    let nseg = cidrs / CIDRS_PER_SEGMENT;
    ensure!(nseg > FIXED_SEGMENTS + 1 && rules >= FIXED_RULES, "policy too small");
    let mut segments: Vec<Segment> = (0..nseg)
        .map(|k| {
            let name = match k {
                SEG_CLIENT => "client".to_owned(),
                SEG_SERVER => "server".to_owned(),
                SEG_DENIED => "denied".to_owned(),
                SEG_MONITORING => "monitoring".to_owned(),
                _ => format!("seg{k}"),
            };
            Segment { name, cidrs: Vec::with_capacity(CIDRS_PER_SEGMENT), mode: Mode::Enforce, selector: None }
        })
        .collect();
    for j in 0..nseg * CIDRS_PER_SEGMENT {
        let text = cidr_text(j);
        let net = text.parse().with_context(|| format!("generated CIDR {text}"))?;
        segments[j / CIDRS_PER_SEGMENT].cidrs.push(net);
    }

    let rule = |name: String, from, to, ports: Vec<PortSpec>, action| Rule {
        name,
        description: None,
        from: vec![from],
        to: vec![to],
        ports: Some(ports),
        action,
        mode: Mode::Enforce,
        grant: None,
    };
    let mut out = vec![
        rule(
            "client-to-server".into(),
            SegRef::Named(SEG_CLIENT),
            SegRef::Named(SEG_SERVER),
            vec![tcp(443, 443)],
            Action::Allow,
        ),
        rule(
            "denied-to-server-db".into(),
            SegRef::Named(SEG_DENIED),
            SegRef::Named(SEG_SERVER),
            vec![tcp(5432, 5432)],
            Action::Allow,
        ),
        rule(
            "scrape-everything".into(),
            SegRef::Any,
            SegRef::Named(SEG_MONITORING),
            vec![tcp(9100, 9100)],
            Action::Allow,
        ),
    ];
    const WELL_KNOWN: [u16; 10] = [22, 80, 443, 3306, 5432, 6379, 8080, 8443, 9092, 27017];
    let mut rng = Rng(0x5eed ^ ((rules as u64) << 32) ^ cidrs as u64);
    for i in 0..rules - FIXED_RULES {
        let from = SegRef::Named(FIXED_SEGMENTS + rng.below(nseg - FIXED_SEGMENTS));
        let to = SegRef::Named(FIXED_SEGMENTS + rng.below(nseg - FIXED_SEGMENTS));
        let ports = match rng.below(100) {
            0..45 => {
                let p = if rng.below(2) == 0 { WELL_KNOWN[rng.below(WELL_KNOWN.len())] } else { rng.port(1024, 65535) };
                vec![tcp(p, p)]
            }
            45..65 => {
                let lo = rng.port(1024, 60000);
                vec![tcp(lo, lo + rng.port(1, 200))]
            }
            65..80 => {
                let p = rng.port(1, 65535);
                vec![PortSpec::Range { proto: Proto::Udp, lo: p, hi: p }]
            }
            80..85 => vec![PortSpec::All(Proto::Tcp)],
            85..95 => vec![tcp(80, 80), tcp(443, 443), tcp(8000, 8099)],
            _ => vec![PortSpec::Icmp, tcp(22, 22)],
        };
        let action = if rng.below(10) == 0 { Action::Deny } else { Action::Allow };
        out.push(rule(format!("r{i}"), from, to, ports, action));
    }
    Ok(Policy { default_action: Action::Deny, segments, rules: out, ..Policy::default() })
}
