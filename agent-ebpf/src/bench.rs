//! The benchmark's own eBPF object (`ztbench-ebpf`), never loaded by the agent: reference
//! programs that the per-packet and comparative benchmarks measure ztagent against, and the
//! comparative benchmark's forwarder. Loaded with the agent's map pin directory, it shares the
//! agent's pinned maps by name (the CIDR trie, conntrack, the denial cache), so the references
//! look up the very entries ztagent's programs use. The modules are the datapath's own files.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![allow(internal_features, dead_code)]

#[path = "atomics.rs"]
mod atomics;
#[path = "conntrack.rs"]
mod conntrack;
#[path = "maps.rs"]
mod maps;
#[path = "parse.rs"]
mod parse;

use agent_common::DenyKey;
use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::DevMap,
    programs::XdpContext,
};
use maps::{ACTIVE, CIDRS, DENIED};
use parse::Packet;

/// `[0]`: the interface the forwarder sends every frame to (set by the benchmark).
#[map(name = "ZTB_TX_PORT")]
static TX_PORT: DevMap = DevMap::with_max_entries(1, 0);

/// The comparative benchmark's forwarder: sends every frame it receives out of `TX_PORT[0]`
/// (XDP_REDIRECT), so that the receiver behind that veth gets XDP frames rather than the
/// skbs of the AF_PACKET generator (which a veth copies before its XDP program runs).
#[xdp]
pub fn zt_bench_redirect(_ctx: XdpContext) -> u32 {
    TX_PORT.redirect(0, 0).unwrap_or(xdp_action::XDP_ABORTED)
}

/// Does nothing but pass: the benchmark's baseline, measured in the same run as the real
/// programs so that costs are compared as ratios.
#[xdp]
pub fn zt_baseline(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The least a stateful program can do with a packet: parse it and look its flow up in the
/// conntrack table (pass on a hit). The benchmark's second reference, next to the empty
/// program: what any design pays before it decides anything.
#[xdp]
pub fn zt_reference(ctx: XdpContext) -> u32 {
    let mut pkt = Packet::new();
    let len = ctx.data_end() - ctx.data();
    if parse::parse(ctx.data(), ctx.data_end(), len, &mut pkt).is_ok() && conntrack::get(&pkt.tuple).is_some() {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

/// `zt_reference` plus a read of the coarse clock (what the datapath reads for timeouts).
#[xdp]
pub fn zt_bench_coarse(ctx: XdpContext) -> u32 {
    let mut pkt = Packet::new();
    let len = ctx.data_end() - ctx.data();
    // SAFETY: a helper with no arguments.
    let now = unsafe { aya_ebpf::helpers::generated::bpf_ktime_get_coarse_ns() };
    if parse::parse(ctx.data(), ctx.data_end(), len, &mut pkt).is_ok()
        && conntrack::get(&pkt.tuple).is_some()
        && now != 0
    {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

/// `zt_reference` plus a read of the nanosecond clock (what the datapath reads for rate limits
/// instead of the coarse one): the two programs' difference is what the finer clock costs.
#[xdp]
pub fn zt_bench_fine(ctx: XdpContext) -> u32 {
    let mut pkt = Packet::new();
    let len = ctx.data_end() - ctx.data();
    // SAFETY: a helper with no arguments.
    let now = unsafe { aya_ebpf::helpers::generated::bpf_ktime_get_ns() };
    if parse::parse(ctx.data(), ctx.data_end(), len, &mut pkt).is_ok()
        && conntrack::get(&pkt.tuple).is_some()
        && now != 0
    {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

/// The least a stateful program with a denial cache does with a repeat-denied packet: parse
/// it, miss the conntrack table, find its flow in the denial cache (drop on a hit, pass on a
/// miss, so the verdict proves the lookup). The benchmark's denied floor, next to
/// `zt_reference`.
#[xdp]
pub fn zt_denied_floor(ctx: XdpContext) -> u32 {
    let mut pkt = Packet::new();
    let len = ctx.data_end() - ctx.data();
    if parse::parse(ctx.data(), ctx.data_end(), len, &mut pkt).is_err() || conntrack::get(&pkt.tuple).is_some() {
        return xdp_action::XDP_PASS;
    }
    let key =
        DenyKey { src: pkt.tuple.src, dst: pkt.tuple.dst, port: pkt.policy_port, proto: pkt.tuple.proto, _pad: 0 };
    if DENIED.get_ptr(&key).is_some() { xdp_action::XDP_DROP } else { xdp_action::XDP_PASS }
}

/// Drops everything: the comparative benchmark's limit.
#[xdp]
pub fn zt_bench_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

/// One LPM lookup and nothing else: the IPv4 source (Ethernet, no VLAN) in the active slot's
/// CIDR trie, drop on a hit. The comparative benchmark's "XDP with one LPM lookup", on the
/// same trie ztagent uses.
#[xdp]
pub fn zt_bench_lpm(ctx: XdpContext) -> u32 {
    let data = ctx.data();
    if data + 34 > ctx.data_end() {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: the 34 bytes of Ethernet + IPv4 header read below are within the frame.
    let (ethertype, src) = unsafe {
        (
            core::ptr::read_unaligned((data + 12) as *const [u8; 2]),
            core::ptr::read_unaligned((data + 26) as *const [u8; 4]),
        )
    };
    let slot = match ACTIVE.get(0) {
        Some(&s) if s == 1 || s == 2 => s - 1,
        _ => return xdp_action::XDP_PASS,
    };
    if ethertype != [0x08, 0x00] {
        return xdp_action::XDP_PASS;
    }
    let mut addr = [0u8; 16];
    addr[10] = 0xff;
    addr[11] = 0xff;
    addr[12..].copy_from_slice(&src);
    let key = aya_ebpf::maps::lpm_trie::Key::new(
        agent_common::CIDR_SLOT_BITS + 128,
        agent_common::CidrData { slot: slot.to_be_bytes(), addr },
    );
    if CIDRS.get(&key).is_some() { xdp_action::XDP_DROP } else { xdp_action::XDP_PASS }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
