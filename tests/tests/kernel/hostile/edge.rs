//! Where what the datapath does and what the README promises part ways: VLAN tags behind a
//! switch, the parser's limits.
use super::*;

/// Sends raw frames from `ns` on `iface` (AF_PACKET).
fn send_raw(ns: &Netns, iface: &str, frames: Vec<Vec<u8>>) {
    let iface = std::ffi::CString::new(iface).unwrap();
    ns.run(move || {
        // SAFETY: socket calls on a descriptor this closure owns; buffers outlive the calls.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(fd >= 0, "packet socket: {}", std::io::Error::last_os_error());
            let fd = OwnedFd::from_raw_fd(fd);
            let mut sa: libc::sockaddr_ll = std::mem::zeroed();
            sa.sll_family = libc::AF_PACKET as u16;
            sa.sll_ifindex = libc::if_nametoindex(iface.as_ptr()) as i32;
            assert!(sa.sll_ifindex > 0, "no interface {iface:?}");
            let rc = libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_ll).cast(),
                std::mem::size_of_val(&sa) as libc::socklen_t,
            );
            assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
            for f in frames {
                let n = libc::send(fd.as_raw_fd(), f.as_ptr().cast(), f.len(), 0);
                assert_eq!(n, f.len() as isize, "send: {}", std::io::Error::last_os_error());
            }
        }
    });
}

/// `frame` with the destination MAC `dst` and the mark of edge case `index`.
fn marked_frame(mut frame: Vec<u8>, dst: &str, family: u8, index: u16) -> Vec<u8> {
    let dst: Vec<u8> = dst.split(':').map(|b| u8::from_str_radix(b, 16).unwrap()).collect();
    frame[0..6].copy_from_slice(&dst);
    let i = index.to_be_bytes();
    frame[6..12].copy_from_slice(&[0x02, 0x7a, ROLE_EDGE, family, i[0], i[1]]);
    frame
}

fn octets(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// Sends each (name, frame, should reach) from the frontend to the server over `via` (an
/// interface of the frontend's namespace; its peer in the server's namespace has `dst_mac`)
/// and returns the cases whose outcome differs.
fn edge_cases(lan: &Lan, via: &str, dst_mac: &str, cases: Vec<(&str, Vec<u8>, bool)>) -> Vec<String> {
    let (pay, front) = (&lan.hosts[0], &lan.hosts[1]);
    let server = Sniffer::start(&pay.ns);
    let frames = cases.iter().enumerate().map(|(i, c)| marked_frame(c.1.clone(), dst_mac, 0, i as u16)).collect();
    send_raw(&front.ns, via, frames);
    settle();
    let got = marked(&server.stop(), ROLE_EDGE, 0, |s| s.pkttype != PACKET_OUTGOING);
    let mut wrong = Vec::new();
    for (i, (name, _, reach)) in cases.iter().enumerate() {
        let reached = got.contains(&(i as u16));
        eprintln!(
            "  {name}: {} (should {})",
            if reached { "reached the server" } else { "dropped" },
            if *reach { "reach" } else { "be dropped" }
        );
        if reached != *reach {
            wrong.push(format!("{name}: {}", if reached { "reached the server" } else { "was dropped" }));
        }
    }
    wrong
}

fn syn4(src: IpAddr, dst: IpAddr, tags: &[u16]) -> Vec<u8> {
    let (s, d) = (octets(src).try_into().unwrap(), octets(dst).try_into().unwrap());
    cat(&[&eth(tags, ETH_IP), &ipv4(s, d, 6, &[], 0, &tcp(40000 + tags.len() as u16, 443, TCP_SYN))])
}

/// The README: more than two VLAN tags *in the frame* are malformed. A switch (like a NIC with
/// VLAN offload) hands the outermost tag over in the socket buffer's metadata, which XDP does
/// not see: the datapath then sees one tag fewer than the frame carried, and judges the IP
/// packet inside by policy as usual (documented). Four tags are still too many.
#[test]
fn behind_a_switch_the_outer_vlan_tag_is_metadata_and_the_packet_is_judged() {
    let lan = Lan::new(&HOSTS[..2]);
    let (pay, front) = (&lan.hosts[0], &lan.hosts[1]);
    let dir = TempDir::new();
    let agent = Agent::start(&pay.ns, &[&pay.iface], Some(&dir.file("p.yaml", POLICY)));
    let (mac, _) = link(&pay.ns, &pay.iface);
    let before = counters(&agent);
    let cases = vec![
        ("allowed SYN, untagged", syn4(front.v4, pay.v4, &[]), true),
        ("allowed SYN, one tag", syn4(front.v4, pay.v4, &[1]), true),
        ("allowed SYN, two tags", syn4(front.v4, pay.v4, &[1, 2]), true),
        ("allowed SYN, three tags (two in the frame)", syn4(front.v4, pay.v4, &[1, 2, 3]), true),
        ("allowed SYN, four tags (three in the frame)", syn4(front.v4, pay.v4, &[1, 2, 3, 4]), false),
    ];
    eprintln!("through the switch, from the frontend:");
    let wrong = edge_cases(&lan, &front.iface, &mac, cases);
    eprintln!("  counters: {}", nonzero(&delta(&before, &counters(&agent))));
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// The README: frames are malformed with "more than 8 IPv6 extension headers" and with "cut L4
/// headers"; so 8 extension headers are walked, and an L4 header that lies beyond the IP
/// packet's own length (in the Ethernet trailer) is not used to judge the packet.
#[test]
fn the_parser_limits_are_the_documented_ones() {
    let lan = Lan::new(&HOSTS[..2]);
    let (pay, front) = (&lan.hosts[0], &lan.hosts[1]);
    let (link_pay, link_front) = direct_link(&pay.ns, &front.ns);
    let dir = TempDir::new();
    let agent = Agent::start(&pay.ns, &[&pay.iface, &link_pay], Some(&dir.file("p.yaml", POLICY)));
    let (mac, _) = link(&pay.ns, &link_pay);
    let (s6, d6): ([u8; 16], [u8; 16]) = (octets(front.v6).try_into().unwrap(), octets(pay.v6).try_into().unwrap());
    let (s4, d4): ([u8; 4], [u8; 4]) = (octets(front.v4).try_into().unwrap(), octets(pay.v4).try_into().unwrap());
    // n destination-options headers (8 bytes each), then TCP.
    let chain = |n: usize| -> Vec<u8> {
        (0..n).flat_map(|i| [if i + 1 < n { 60u8 } else { 6 }, 0, 1, 4, 0, 0, 0, 0]).collect()
    };
    let v6_with =
        |n: usize| cat(&[&eth(&[], ETH_IPV6), &ipv6(s6, d6, 60, &chain(n), &tcp(41000 + n as u16, 443, TCP_SYN))]);
    // An allowed SYN whose IP length ends 4 bytes into the TCP header; the rest of the header
    // follows in the frame.
    let mut v4_short = cat(&[&eth(&[], ETH_IP), &ipv4(s4, d4, 6, &[], 0, &tcp(42000, 443, TCP_SYN))]);
    v4_short[16..18].copy_from_slice(&24u16.to_be_bytes());
    let mut v6_short = cat(&[&eth(&[], ETH_IPV6), &ipv6(s6, d6, 6, &[], &tcp(42001, 443, TCP_SYN))]);
    v6_short[18..20].copy_from_slice(&4u16.to_be_bytes());
    let before = counters(&agent);
    let cases = vec![
        ("IPv6, 7 extension headers", v6_with(7), true),
        ("IPv6, 8 extension headers", v6_with(8), true),
        ("IPv6, 9 extension headers", v6_with(9), false),
        (
            "IPv4 allowed SYN, whole",
            cat(&[&eth(&[], ETH_IP), &ipv4(s4, d4, 6, &[], 0, &tcp(42002, 443, TCP_SYN))]),
            true,
        ),
        ("IPv4 allowed SYN, total length ending 4 bytes into TCP", v4_short, false),
        ("IPv6 allowed SYN, payload length 4", v6_short, false),
    ];
    eprintln!("over a direct link, from the frontend:");
    let wrong = edge_cases(&lan, &link_front, &mac, cases);
    eprintln!("  counters: {}", nonzero(&delta(&before, &counters(&agent))));
    assert!(wrong.is_empty(), "{wrong:#?}");
}
