//! Tests across the policy modules, by topic: the meaning of rules (`semantics`), diagnostics,
//! serialization round trips and robustness (`round_trip`), the compiled lookup against the
//! reference semantics (`compiled`), rate limits (`limits`, `limit_config`), audit mode and
//! label-selected segments (`modes`). The helpers they share are here.

mod apis;
mod compiled;
mod diagnostics;
mod limit_config;
mod limits;
mod modes;
mod round_trip;
mod semantics;

use std::collections::BTreeSet;
use std::net::IpAddr;

use agent_common::{
    ACTION_ALLOW, ACTION_DENY, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, SEG_ANY, SEG_F_DENIED_ALL,
    SEG_F_DST_WILD, SEG_F_ISOLATED, SEG_F_SRC_WILD, SegmentInfo,
};

use super::compile::PORT_SPACE;
use super::compile::limit_fingerprint;
use super::eval::naive_verdict;
use super::*;

const EXAMPLE: &str = r#"version: 1
defaultAction: deny        # deny | allow. Absent means deny.
segments:                  # named set of addresses = the identity of those addresses
  frontend: { cidrs: [10.20.1.0/24, "fd20:1::/64"] }
  payments: { cidrs: [10.20.2.10/32] }
  batch:    { cidrs: [10.20.3.0/24] }
rules:
  - name: frontend-calls-payments
    from: [frontend]
    to: [payments]
    ports: ["443/tcp", "8000-8099/tcp", "53/udp", "icmp"]
    action: allow
"#;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn ok(text: &str) -> Policy {
    parse(text, "t.yaml").unwrap_or_else(|d| panic!("unexpected diagnostics:\n{d}"))
}

/// The diagnostics of an invalid policy as (line, col, message).
fn errs(text: &str) -> Vec<(usize, usize, String)> {
    match parse(text, "t.yaml") {
        Ok(p) => panic!("expected diagnostics, got {p:?}"),
        Err(d) => {
            assert!(!d.is_empty());
            d.iter()
                .map(|d| {
                    assert_eq!(d.origin, "t.yaml");
                    (d.line, d.col, d.message.clone())
                })
                .collect()
        }
    }
}

/// The one diagnostic of an invalid policy.
fn one_err(text: &str) -> (usize, usize, String) {
    let e = errs(text);
    assert_eq!(e.len(), 1, "expected one diagnostic, got {e:#?}");
    e.into_iter().next().unwrap()
}

/// Decides with the compiled policy, checking it against the reference semantics.
fn decide(p: &Policy, src: &str, dst: &str, proto: u8, port: u16) -> Decision {
    let (src, dst) = (ip(src), ip(dst));
    let compiled = compile(p);
    let d = compiled.lookup(src, dst, proto, port);
    assert_eq!(d, evaluate_naive(p, src, dst, proto, port), "{src} -> {dst} {proto}/{port}");
    d
}

fn allow(rule: u32) -> (u32, u32) {
    (ACTION_ALLOW, rule)
}
fn deny(rule: u32) -> (u32, u32) {
    (ACTION_DENY, rule)
}
fn verdict(d: Decision) -> (u32, u32) {
    (d.action, d.rule)
}

/// xorshift64*: a tiny deterministic PRNG for the randomized tests.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn check_no_panic(text: &str) {
    match parse(text, "fuzz") {
        Ok(p) => {
            let _ = compile(&p);
        }
        Err(d) => {
            assert!(!d.is_empty());
            for x in &d {
                assert!(x.line >= 1 && x.col >= 1, "{x}");
                assert!(!x.message.is_empty() && !x.message.contains('\n'), "{x:?}");
            }
        }
    }
}
