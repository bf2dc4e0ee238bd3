//! Per-identity rate limits through the real programs with BPF_PROG_TEST_RUN: exact bursts,
//! per-address scope, other identities untouched, and push semantics (a limit's bucket survives
//! unrelated changes and goes with the limit).
use agent_common::programs::INGRESS;
use integration_tests::{
    Loaded,
    frame::{ETH_IP, TCP_ACK, TCP_SYN, cat, eth, ipv4, tcp},
};
use ztagent::kernel::datapath::Limits;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

const POLICY: &str = r#"
version: 1
segments:
  frontend: { cidrs: [10.20.1.0/24] }
  batch: { cidrs: [10.20.3.0/24] }
  payments: { cidrs: [10.20.2.10/32] }
rules:
  - { name: web, from: [frontend, batch], to: [payments], ports: ["443/tcp"], action: allow }
rateLimits:
  - name: frontend-packets
    from: frontend
    to: [payments]
    packets: { rate: 10, per: second, burst: 20 }
"#;

const PAY: [u8; 4] = [10, 20, 2, 10];

fn packet(src: [u8; 4], sport: u16, flags: u8) -> Vec<u8> {
    cat(&[&eth(&[], ETH_IP), &ipv4(src, PAY, 6, &[], 0, &tcp(sport, 443, flags))])
}

/// Sends `n` packets of one flow (a SYN, then ACKs) back to back; returns how many passed.
fn burst(dp: &mut Loaded, src: [u8; 4], sport: u16, n: usize) -> usize {
    (0..n)
        .filter(|&i| {
            let f = packet(src, sport, if i == 0 { TCP_SYN } else { TCP_ACK });
            let r = dp.run(INGRESS, &f);
            assert!(r == XDP_PASS || r == XDP_DROP);
            r == XDP_PASS
        })
        .count()
}

#[test]
fn a_burst_is_exact_and_other_identities_are_untouched() {
    let mut dp = Loaded::new(&Limits::default());
    dp.apply(POLICY);
    // 10/s refills 1 token per 100 ms: 50 back-to-back packets get the burst of 20, give or take
    // the one token a slow run may refill.
    let passed = burst(&mut dp, [10, 20, 1, 5], 40000, 50);
    assert!((20..=21).contains(&passed), "{passed} of 50 passed; burst is 20");
    assert_eq!(dp.counter("drop_rate_limit"), 50 - passed as u64);
    // batch has no limit: all pass, while frontend's bucket is empty.
    assert_eq!(burst(&mut dp, [10, 20, 3, 5], 40000, 50), 50);
    // The identity's bucket is shared by all its addresses (scope: segment).
    assert!(burst(&mut dp, [10, 20, 1, 6], 40001, 10) <= 1);
}

#[test]
fn address_scope_gives_each_address_its_own_budget() {
    let mut dp = Loaded::new(&Limits::default());
    dp.apply(&POLICY.replace("burst: 20 }", "burst: 5 }\n    scope: address"));
    assert!((5..=6).contains(&burst(&mut dp, [10, 20, 1, 5], 40000, 20)));
    assert!(
        (5..=6).contains(&burst(&mut dp, [10, 20, 1, 6], 40000, 20)),
        "a second address shared the first one's bucket"
    );
}

#[test]
fn new_connections_have_their_own_bucket() {
    let mut dp = Loaded::new(&Limits::default());
    dp.apply(
        &POLICY.replace(
            "packets: { rate: 10, per: second, burst: 20 }",
            "connections: { rate: 1, per: minute, burst: 3 }",
        ),
    );
    // Three new connections pass, the fourth is refused...
    let syns: Vec<u32> = (0..4).map(|i| dp.run(INGRESS, &packet([10, 20, 1, 5], 41000 + i, TCP_SYN))).collect();
    assert_eq!(syns, [XDP_PASS, XDP_PASS, XDP_PASS, XDP_DROP]);
    // ...while the established ones carry on: only connections are limited.
    assert_eq!(burst(&mut dp, [10, 20, 1, 5], 41000, 1), 0, "a fifth SYN of a known flow passed");
    for _ in 0..100 {
        assert_eq!(dp.run(INGRESS, &packet([10, 20, 1, 5], 41001, TCP_ACK)), XDP_PASS);
    }
}

#[test]
fn a_push_keeps_unchanged_limits_and_removes_removed_ones() {
    let mut dp = Loaded::new(&Limits::default());
    dp.apply(POLICY);
    let fingerprint = {
        let p = ztagent::policy::parse(POLICY, "t").unwrap();
        ztagent::policy::compile(&p).limits[0].fingerprint
    };
    assert!((20..=21).contains(&burst(&mut dp, [10, 20, 1, 5], 40000, 30)));
    // An unrelated change: the drained bucket stays drained (no fresh burst for anyone).
    let unrelated = POLICY.replace(r#"ports: ["443/tcp"]"#, r#"ports: ["443/tcp", "8443/tcp"]"#);
    dp.apply(&unrelated);
    assert!(burst(&mut dp, [10, 20, 1, 5], 40001, 10) <= 1, "a push refilled an unchanged limit");
    assert!(dp.writer.bucket_state(fingerprint, 0).0.is_some());
    // The limit removed: its bucket goes, and the traffic is no longer bounded.
    let without: String = unrelated.split("rateLimits:").next().unwrap().to_string();
    dp.apply(&without);
    assert_eq!(dp.writer.bucket_state(fingerprint, 0).0, None, "the removed limit's bucket is still there");
    assert_eq!(burst(&mut dp, [10, 20, 1, 5], 40002, 50), 50);
}
