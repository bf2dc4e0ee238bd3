//! Crafted frames through the real programs with BPF_PROG_TEST_RUN: malformed and truncated
//! packets are dropped and counted; VLAN tags, IPv4 options and IPv6 extension headers are
//! parsed to judge the real protocol and port; ARP and neighbour discovery pass.
use agent_common::programs::{EGRESS, INGRESS};
use integration_tests::{
    Loaded,
    frame::{ETH_IP, ETH_IPV6, TCP_SYN, cat, eth, ipv4, ipv6, tcp},
};
use ztagent::kernel::datapath::Limits;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const TC_OK: u32 = 0;
const TC_SHOT: u32 = 2;

const POLICY: &str = integration_tests::frontend_payments_policy!(
    r#"rules:
  - { name: web, from: [frontend], to: [payments], ports: ["443/tcp"], action: allow }
"#
);

const FRONT: [u8; 4] = [10, 20, 1, 5];
const PAY: [u8; 4] = [10, 20, 2, 10];
const ATTACKER: [u8; 4] = [10, 20, 9, 5];

fn v6(last: u8, net: u8) -> [u8; 16] {
    [0xfd, 0x20, 0, net, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, last]
}

fn syn(src: [u8; 4], port: u16) -> Vec<u8> {
    cat(&[&eth(&[], ETH_IP), &ipv4(src, PAY, 6, &[], 0, &tcp(40000, port, TCP_SYN))])
}

#[test]
fn well_formed_packets_are_judged_through_vlan_options_and_extension_headers() {
    let mut dp = Loaded::new(&Limits::default());
    // Before any policy: fail closed.
    assert_eq!(dp.run(INGRESS, &syn(FRONT, 443)), XDP_DROP);
    assert_eq!(dp.counter("drop_no_policy"), 1);
    dp.apply(POLICY);

    assert_eq!(dp.run(INGRESS, &syn(FRONT, 443)), XDP_PASS);
    assert_eq!(dp.run(INGRESS, &syn(FRONT, 22)), XDP_DROP);
    assert_eq!(dp.run(INGRESS, &syn(ATTACKER, 443)), XDP_DROP);
    assert_eq!(dp.run(EGRESS, &syn(FRONT, 443)), TC_OK);
    assert_eq!(dp.run(EGRESS, &syn(ATTACKER, 443)), TC_SHOT);

    // 802.1Q and QinQ frames are parsed and judged, not waved through.
    for tags in [&[1u16][..], &[1, 2]] {
        let allowed = cat(&[&eth(tags, ETH_IP), &ipv4(FRONT, PAY, 6, &[], 0, &tcp(40001, 443, TCP_SYN))]);
        let denied = cat(&[&eth(tags, ETH_IP), &ipv4(ATTACKER, PAY, 6, &[], 0, &tcp(40001, 443, TCP_SYN))]);
        assert_eq!(dp.run(INGRESS, &allowed), XDP_PASS, "tags {tags:?}");
        assert_eq!(dp.run(INGRESS, &denied), XDP_DROP, "tags {tags:?}");
    }
    // IPv4 options are skipped to find the real port.
    let opts = [1u8, 1, 1, 0]; // NOP NOP NOP EOL
    let with_opts = |port| cat(&[&eth(&[], ETH_IP), &ipv4(FRONT, PAY, 6, &opts, 0, &tcp(40002, port, TCP_SYN))]);
    assert_eq!(dp.run(INGRESS, &with_opts(443)), XDP_PASS);
    assert_eq!(dp.run(INGRESS, &with_opts(22)), XDP_DROP);
    // IPv6 extension headers (hop-by-hop, destination options, routing) are walked.
    let ext = [
        60u8, 0, 1, 4, 0, 0, 0, 0, /* dst opts -> routing */ 43, 0, 1, 4, 0, 0, 0, 0, /* routing -> tcp */ 6,
        0, 0, 0, 0, 0, 0, 0,
    ];
    let v6pkt = |src, port| cat(&[&eth(&[], ETH_IPV6), &ipv6(src, v6(0x10, 2), 0, &ext, &tcp(40003, port, TCP_SYN))]);
    assert_eq!(dp.run(INGRESS, &v6pkt(v6(5, 1), 443)), XDP_PASS);
    assert_eq!(dp.run(INGRESS, &v6pkt(v6(5, 1), 22)), XDP_DROP);
    assert_eq!(dp.run(INGRESS, &v6pkt(v6(5, 9), 443)), XDP_DROP);

    // Non-IP and neighbour discovery pass.
    let mut arp = eth(&[], 0x0806);
    arp.extend_from_slice(&[0u8; 28]);
    assert_eq!(dp.run(INGRESS, &arp), XDP_PASS);
    let ns = [135u8, 0, 0, 0, 0, 0, 0, 0, 0xfd, 0x20, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];
    assert_eq!(dp.run(INGRESS, &cat(&[&eth(&[], ETH_IPV6), &ipv6(v6(5, 9), v6(0x10, 2), 58, &[], &ns)])), XDP_PASS);
    assert_eq!(dp.counter("pass_non_ip"), 1);
    assert_eq!(dp.counter("pass_ndp"), 1);
    assert_eq!(dp.counter("drop_malformed"), 0);
}

#[test]
fn malformed_and_truncated_packets_are_dropped_and_counted() {
    let mut dp = Loaded::new(&Limits::default());
    dp.apply(POLICY);
    let good = syn(FRONT, 443);
    let ip_at = 14;
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut f = good.clone();
    f[ip_at] = 0x44; // IHL 4 (< 20 bytes)
    cases.push(("IHL below 5", f));
    let mut f = good.clone();
    f[ip_at] = 0x4f; // IHL 15: 60 bytes of header that are not there
    cases.push(("IHL beyond the packet", f));
    let mut f = good.clone();
    f[ip_at] = 0x65; // version 6 in an IPv4 frame
    cases.push(("wrong IP version", f));
    let mut f = good.clone();
    f[ip_at + 2..ip_at + 4].copy_from_slice(&2000u16.to_be_bytes());
    cases.push(("total length beyond the frame", f));
    cases.push(("TCP header truncated", good[..good.len() - 10].to_vec()));
    cases.push(("IPv4 header truncated", good[..ip_at + 12].to_vec()));
    cases.push(("IPv4 header missing (Ethernet only)", eth(&[], ETH_IP)));
    cases.push(("three VLAN tags", cat(&[&eth(&[1, 2, 3], ETH_IP), &good[14..]])));
    // A later fragment overlapping the L4 header (offset 8 bytes): rewrites ports.
    cases.push(("overlapping fragment", cat(&[&eth(&[], ETH_IP), &ipv4(FRONT, PAY, 6, &[], 1, &[0u8; 16])])));
    // Nine hop-by-hop headers: longer than the bounded walk.
    let chain: Vec<u8> = (0..9).flat_map(|i| [if i < 8 { 0u8 } else { 6 }, 0, 1, 4, 0, 0, 0, 0]).collect();
    cases.push((
        "IPv6 extension chain too long",
        cat(&[&eth(&[], ETH_IPV6), &ipv6(v6(5, 1), v6(0x10, 2), 0, &chain, &tcp(1, 443, TCP_SYN))]),
    ));
    let mut short6 = cat(&[&eth(&[], ETH_IPV6), &ipv6(v6(5, 1), v6(0x10, 2), 6, &[], &tcp(1, 443, TCP_SYN))]);
    short6.truncate(14 + 40 + 6);
    cases.push(("IPv6 payload truncated", short6));

    let mut dropped = 0;
    for (what, frame) in &cases {
        assert_eq!(dp.run(INGRESS, frame), XDP_DROP, "{what} passed ingress");
        dropped += 1;
        match dp.try_run(EGRESS, frame) {
            Ok(v) => {
                assert_eq!(v, TC_SHOT, "{what} passed egress");
                dropped += 1;
            }
            // The kernel will not even build a socket buffer whose IPv4 header is cut short
            // (so no such packet can reach egress): only that refusal is accepted.
            Err(e) => assert!(what.starts_with("IPv4 header") && e.contains("os error 22"), "{what}: {e}"),
        }
        assert_eq!(dp.counter("drop_malformed"), dropped, "{what} was not counted as malformed");
    }
    // The well-formed original still passes.
    assert_eq!(dp.run(INGRESS, &good), XDP_PASS);
}

/// ICMP errors quoting a tracked flow pass with it (path-MTU discovery keeps working); errors
/// quoting anything else are judged by policy like any other packet.
#[test]
fn icmp_errors_of_tracked_flows_pass() {
    let mut dp = Loaded::new(&Limits::default());
    dp.apply(POLICY);
    let router = [10, 20, 9, 1];
    // Track frontend:40000 -> payments:443.
    assert_eq!(
        dp.run(INGRESS, &cat(&[&eth(&[], ETH_IP), &ipv4(FRONT, PAY, 6, &[], 0, &tcp(40000, 443, TCP_SYN))])),
        XDP_PASS
    );
    // "Fragmentation needed" from a router, quoting a packet of the flow (either direction).
    let frag_needed = |inner_src, inner_dst, sport, dport| {
        let quoted = ipv4(inner_src, inner_dst, 6, &[], 0, &tcp(sport, dport, 0x10)[..8]);
        let icmp = cat(&[&[3u8, 4, 0, 0, 0, 0, 0x05, 0xdc], &quoted]);
        cat(&[&eth(&[], ETH_IP), &ipv4(router, PAY, 1, &[], 0, &icmp)])
    };
    assert_eq!(dp.run(INGRESS, &frag_needed(PAY, FRONT, 443, 40000)), XDP_PASS);
    assert_eq!(dp.run(INGRESS, &frag_needed(FRONT, PAY, 40000, 443)), XDP_PASS);
    assert_eq!(dp.counter("pass_icmp_error"), 2);
    // An error about a flow nobody tracks is judged by policy: the router is `world`: denied.
    assert_eq!(dp.run(INGRESS, &frag_needed(PAY, FRONT, 443, 40001)), XDP_DROP);

    // ICMPv6 "packet too big" likewise.
    let (f6, p6, r6) = (v6(5, 1), v6(0x10, 2), v6(1, 9));
    let syn6 = cat(&[&eth(&[], ETH_IPV6), &ipv6(f6, p6, 6, &[], &tcp(40000, 443, TCP_SYN))]);
    assert_eq!(dp.run(INGRESS, &syn6), XDP_PASS);
    let too_big = |sport| {
        let quoted = ipv6(p6, f6, 6, &[], &tcp(443, sport, 0x10)[..8]);
        let icmp = cat(&[&[2u8, 0, 0, 0, 0, 0, 0x05, 0x00], &quoted]);
        cat(&[&eth(&[], ETH_IPV6), &ipv6(r6, p6, 58, &[], &icmp)])
    };
    assert_eq!(dp.run(INGRESS, &too_big(40000)), XDP_PASS);
    assert_eq!(dp.run(INGRESS, &too_big(40001)), XDP_DROP);
    assert_eq!(dp.counter("pass_icmp_error"), 3);
}

/// A denial is remembered for the repeat packets of its flow, and forgotten by the next push.
#[test]
fn a_remembered_denial_ends_with_the_policy_that_made_it() {
    let mut dp = Loaded::new(&Limits::default());
    dp.apply(POLICY);
    let ack = |port| cat(&[&eth(&[], ETH_IP), &ipv4(FRONT, PAY, 6, &[], 0, &tcp(40010, port, 0x10))]);
    for _ in 0..3 {
        assert_eq!(dp.run(INGRESS, &ack(8443)), XDP_DROP);
    }
    assert_eq!(dp.counter("drop_default"), 3);
    dp.apply(&POLICY.replace(r#"["443/tcp"]"#, r#"["443/tcp", "8443/tcp"]"#));
    assert_eq!(dp.run(INGRESS, &ack(8443)), XDP_PASS, "a denial outlived the policy that made it");
    dp.apply(POLICY);
    assert_eq!(dp.run(INGRESS, &ack(8443)), XDP_DROP, "revocation of the flow allowed a moment ago");
    assert_eq!(dp.counter("drop_revoked"), 1);
}
