//! Packet parsing: Ethernet (with up to two 802.1Q/802.1ad tags), IPv4 (with options), IPv6
//! (with a bounded walk of extension headers), and the first bytes of TCP, UDP and ICMP.
//! Everything the later stages need ends in a [`Packet`]; anything that cannot be parsed is an
//! error and the packet is dropped.
use agent_common::{Addr, CtKey, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};
use core::mem::size_of;

use crate::maps::ICMP_INNER;
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;

/// At most this many IPv6 extension headers are walked (the walk takes one more step to reach
/// the upper-layer header); a longer chain is malformed.
const MAX_IPV6_EXT: usize = 8;
/// Headers (L2 + L3 + extensions) must end within this many bytes of the frame start. Bounds
/// every offset for the verifier and rejects absurd header chains.
const MAX_HDR_OFF: usize = 512;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Not IP (ARP, LLDP, ...).
    NonIp,
    /// ICMPv6 neighbour discovery or multicast listener messages, which IPv6 needs to work.
    Ndp,
    /// An ordinary packet (or the first fragment of a datagram).
    Ip,
    /// A fragment other than the first: no L4 header.
    LaterFragment,
    /// An ICMP/ICMPv6 error; `inner` is the tuple of the packet it refers to.
    IcmpError,
}

/// The 5-tuple of a packet is its conntrack key, so lookups need no copy: addresses 16 bytes
/// each, protocol normalised (ICMPv6 folded into ICMP), TCP/UDP ports, for ICMP echo the
/// identifier in both ports, otherwise 0.
pub type Tuple = CtKey;

pub struct Packet {
    pub kind: Kind,
    pub tuple: Tuple,
    /// The port policy judges: TCP/UDP destination port; ICMP type (echo request = 8).
    pub policy_port: u16,
    pub tcp_flags: u8,
    /// TCP: the segment's sequence number, and where its payload starts (from the frame's
    /// first byte) and how long it is (0 for other protocols).
    pub seq: u32,
    pub payload_off: u16,
    pub payload_len: u32,
    /// When `fragment`: the packet's fragment identification (see [`Packet::frag_id`]). Two
    /// fields rather than an `Option`: three bytes fewer in the datapath's frame.
    pub frag: u32,
    pub fragment: bool,
    /// ICMP/ICMPv6: the message's type and code as on the wire, for events only.
    pub icmp: [u8; 2],
    /// Set by the pipeline, for events: frame length, interface, policy revision, and the
    /// time (coarse clock) once read.
    pub len: u32,
    pub ifindex: u32,
    pub revision: u32,
    pub now: u64,
}

pub struct Malformed;

/// Bounds-checked pointer into the packet.
#[inline(always)]
fn ptr_at<T>(data: usize, data_end: usize, off: usize) -> Result<*const T, Malformed> {
    let start = data + off;
    if start + size_of::<T>() > data_end {
        return Err(Malformed);
    }
    Ok(start as *const T)
}

#[inline(always)]
fn load<T: Copy>(data: usize, data_end: usize, off: usize) -> Result<T, Malformed> {
    // SAFETY: ptr_at checked that the whole T lies inside the packet.
    Ok(unsafe { ptr_at::<T>(data, data_end, off)?.read_unaligned() })
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

#[inline(always)]
pub fn mapped_v4(a: [u8; 4]) -> Addr {
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3]]
}

const EMPTY: Tuple = Tuple { src: [0; 16], dst: [0; 16], sport: 0, dport: 0, proto: 0, _pad: [0; 3] };

impl Packet {
    pub const fn new() -> Self {
        Packet {
            kind: Kind::Ip,
            tuple: EMPTY,
            policy_port: 0,
            tcp_flags: 0,
            seq: 0,
            payload_off: 0,
            payload_len: 0,
            frag: 0,
            fragment: false,
            icmp: [0; 2],
            len: 0,
            ifindex: 0,
            revision: 0,
            now: 0,
        }
    }

    /// `Some(id)` when the packet is a fragment (first or later).
    #[inline(always)]
    pub fn frag_id(&self) -> Option<u32> {
        self.fragment.then_some(self.frag)
    }
}

/// Parses a frame of `pkt_len` bytes whose first bytes lie in `[data, data_end)` (all of it
/// for XDP; the linear part for TC) into `pkt` (which must be fresh). A subprogram of its own
/// so that its temporaries do not add to the caller's stack frame.
#[inline(never)]
pub fn parse(data: usize, data_end: usize, pkt_len: usize, pkt: &mut Packet) -> Result<(), Malformed> {
    // The EtherType is the last field of the Ethernet header.
    let mut ether_type = be16(load(data, data_end, EthHdr::LEN - 2)?);
    let mut off = EthHdr::LEN;
    // Up to two VLAN tags (802.1ad outer, 802.1Q inner), each TCI(2) + next EtherType(2).
    for _ in 0..2 {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        ether_type = be16(load(data, data_end, off + 2)?);
        off += 4;
    }
    // A third tag is not something a host we protect sends or receives.
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        return Err(Malformed);
    }
    let l4_off;
    let raw_proto;
    // Where the IP packet ends, by its own length field: L4 headers must lie within it (bytes
    // after it, such as an Ethernet trailer, are not the packet's).
    let ip_end;
    match ether_type {
        ETH_P_IP => {
            let ip: Ipv4Hdr = load(data, data_end, off)?;
            let ihl = ((ip.vihl & 0x0f) as usize) * 4;
            if ip.vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN || (be16(ip.tot_len) as usize) < ihl {
                return Err(Malformed);
            }
            if off + be16(ip.tot_len) as usize > pkt_len {
                return Err(Malformed); // truncated
            }
            ip_end = off + be16(ip.tot_len) as usize;
            pkt.tuple.src = mapped_v4(ip.src_addr);
            pkt.tuple.dst = mapped_v4(ip.dst_addr);
            raw_proto = ip.proto;
            let frags = be16(ip.frags);
            let frag_off = frags & 0x1fff;
            let more = frags & 0x2000 != 0;
            if frag_off != 0 || more {
                (pkt.frag, pkt.fragment) = (be16(ip.id) as u32, true);
            }
            if frag_off != 0 {
                // A later fragment that would overlap the first 16 bytes of the L4 header can
                // rewrite ports after they were judged (RFC 1858): never legitimate.
                if frag_off < 2 {
                    return Err(Malformed);
                }
                pkt.kind = Kind::LaterFragment;
                pkt.tuple.proto = normalise(raw_proto);
                return Ok(());
            }
            l4_off = off + ihl;
        }
        ETH_P_IPV6 => {
            let ip: Ipv6Hdr = load(data, data_end, off)?;
            if ip.vcf[0] >> 4 != 6 {
                return Err(Malformed);
            }
            let payload = be16(ip.payload_len) as usize;
            // payload 0 is only legal for a jumbogram, announced in hop-by-hop options.
            if (payload == 0 && ip.next_hdr != IPPROTO_HOPOPTS) || off + Ipv6Hdr::LEN + payload > pkt_len {
                return Err(Malformed);
            }
            ip_end = if payload == 0 { pkt_len } else { off + Ipv6Hdr::LEN + payload };
            pkt.tuple.src = ip.src_addr;
            pkt.tuple.dst = ip.dst_addr;
            let mut next = ip.next_hdr;
            let mut l4 = off + Ipv6Hdr::LEN;
            let mut done = false;
            for _ in 0..=MAX_IPV6_EXT {
                // The verifier needs every offset bounded.
                if l4 > MAX_HDR_OFF {
                    return Err(Malformed);
                }
                match next {
                    IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                        let h: [u8; 2] = load(data, data_end, l4)?;
                        next = h[0];
                        l4 += (h[1] as usize + 1) * 8;
                    }
                    IPPROTO_AH => {
                        let h: [u8; 2] = load(data, data_end, l4)?;
                        next = h[0];
                        l4 += (h[1] as usize + 2) * 4;
                    }
                    IPPROTO_FRAGMENT => {
                        // next(1) reserved(1) offset+flags(2) identification(4)
                        let h: [u8; 8] = load(data, data_end, l4)?;
                        next = h[0];
                        let fo = be16([h[2], h[3]]);
                        (pkt.frag, pkt.fragment) = (u32::from_be_bytes([h[4], h[5], h[6], h[7]]), true);
                        l4 += 8;
                        if fo >> 3 != 0 {
                            if fo >> 3 < 2 {
                                return Err(Malformed);
                            }
                            pkt.kind = Kind::LaterFragment;
                            pkt.tuple.proto = normalise(next);
                            return Ok(());
                        }
                        if fo & 1 == 0 {
                            // An "atomic" fragment (offset 0, no more): an ordinary packet.
                            pkt.fragment = false;
                        }
                    }
                    _ => {
                        done = true;
                        break;
                    }
                }
            }
            if !done || l4 > MAX_HDR_OFF {
                return Err(Malformed);
            }
            raw_proto = next;
            l4_off = l4;
        }
        _ => {
            pkt.kind = Kind::NonIp;
            return Ok(());
        }
    }
    if l4_off > MAX_HDR_OFF {
        return Err(Malformed);
    }
    pkt.tuple.proto = normalise(raw_proto);
    let l4_len = match raw_proto {
        PROTO_TCP => 14,
        PROTO_UDP | PROTO_ICMP | PROTO_ICMPV6 => 8,
        _ => 0,
    };
    if l4_off + l4_len > ip_end {
        return Err(Malformed); // the L4 header is cut short by the IP length
    }
    match raw_proto {
        PROTO_TCP => {
            // ports(4) seq(4) ack(4) doff(1) flags(1)
            let h: [u8; 14] = load(data, data_end, l4_off)?;
            pkt.tuple.sport = be16([h[0], h[1]]);
            pkt.tuple.dport = be16([h[2], h[3]]);
            pkt.tcp_flags = h[13];
            pkt.policy_port = pkt.tuple.dport;
            pkt.seq = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
            let payload = l4_off + ((h[12] >> 4) as usize) * 4;
            if payload <= ip_end {
                pkt.payload_off = payload as u16;
                pkt.payload_len = (ip_end - payload) as u32;
            }
        }
        PROTO_UDP => {
            let h: [u8; 8] = load(data, data_end, l4_off)?;
            pkt.tuple.sport = be16([h[0], h[1]]);
            pkt.tuple.dport = be16([h[2], h[3]]);
            pkt.policy_port = pkt.tuple.dport;
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            // type(1) code(1) checksum(2) identifier(2) sequence(2)
            let h: [u8; 8] = load(data, data_end, l4_off)?;
            let v6 = raw_proto == PROTO_ICMPV6;
            let ty = h[0];
            pkt.icmp = [ty, h[1]];
            let id = be16([h[4], h[5]]);
            match (v6, ty) {
                (false, 8) | (true, 128) => {
                    pkt.tuple.sport = id;
                    pkt.tuple.dport = id;
                    pkt.policy_port = ICMP_ECHO_REQUEST;
                }
                (false, 0) | (true, 129) => {
                    pkt.tuple.sport = id;
                    pkt.tuple.dport = id;
                    pkt.policy_port = ICMP_ECHO_REPLY;
                }
                // Destination unreachable (incl. fragmentation needed), time exceeded,
                // parameter problem; ICMPv6 also packet too big.
                (false, 3) | (false, 11) | (false, 12) | (true, 1..=4) => {
                    pkt.kind = Kind::IcmpError;
                    pkt.policy_port = ty as u16;
                    // The quoted packet's tuple goes to this CPU's `ICMP_INNER` (not into
                    // `Packet`: 40 bytes off the datapath's frame for a rare packet).
                    let inner = ICMP_INNER.get_ptr_mut(0).ok_or(Malformed)?;
                    // SAFETY: this CPU's map value, for this program run.
                    parse_inner(data, data_end, l4_off + 8, v6, unsafe { &mut *inner })?;
                }
                // MLD (130-132, 143) and neighbour discovery (133-137).
                (true, 130..=137) | (true, 143) => pkt.kind = Kind::Ndp,
                _ => pkt.policy_port = ty as u16,
            }
        }
        _ => {}
    }
    Ok(())
}

/// ICMPv6 shares ICMP's protocol number in keys, so one `icmp` rule covers both families.
#[inline(always)]
fn normalise(proto: u8) -> u8 {
    if proto == PROTO_ICMPV6 { PROTO_ICMP } else { proto }
}

/// The header of the packet an ICMP error quotes: its IP header and first 8 L4 bytes.
#[inline(always)]
fn parse_inner(data: usize, data_end: usize, off: usize, v6: bool, t: &mut Tuple) -> Result<(), Malformed> {
    let l4;
    let proto;
    if v6 {
        let ip: Ipv6Hdr = load(data, data_end, off)?;
        t.src = ip.src_addr;
        t.dst = ip.dst_addr;
        proto = ip.next_hdr;
        l4 = off + Ipv6Hdr::LEN;
    } else {
        let ip: Ipv4Hdr = load(data, data_end, off)?;
        let ihl = ((ip.vihl & 0x0f) as usize) * 4;
        if ihl < Ipv4Hdr::LEN {
            return Err(Malformed);
        }
        t.src = mapped_v4(ip.src_addr);
        t.dst = mapped_v4(ip.dst_addr);
        proto = ip.proto;
        l4 = off + ihl;
    }
    if l4 > MAX_HDR_OFF {
        return Err(Malformed);
    }
    t.proto = normalise(proto);
    let h: [u8; 8] = load(data, data_end, l4)?;
    match proto {
        PROTO_TCP | PROTO_UDP => {
            t.sport = be16([h[0], h[1]]);
            t.dport = be16([h[2], h[3]]);
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            let id = be16([h[4], h[5]]);
            t.sport = id;
            t.dport = id;
        }
        _ => {}
    }
    Ok(())
}
