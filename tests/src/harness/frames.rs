use crate::harness::netns::Netns;

/// Crafted frames for test runs and benchmarks.
pub mod frame {
    pub const ETH_IP: u16 = 0x0800;
    pub const ETH_IPV6: u16 = 0x86DD;
    pub const TCP_SYN: u8 = 0x02;
    pub const TCP_ACK: u8 = 0x10;

    /// Ethernet header with optional VLAN tags (outer first), then `ethertype`.
    pub fn eth(tags: &[u16], ethertype: u16) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
        for (i, _) in tags.iter().enumerate() {
            let tpid: u16 = if i == 0 && tags.len() > 1 { 0x88A8 } else { 0x8100 };
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&(100 + i as u16).to_be_bytes());
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        f
    }

    pub fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
        let mut t = vec![0u8; 20];
        t[0..2].copy_from_slice(&sport.to_be_bytes());
        t[2..4].copy_from_slice(&dport.to_be_bytes());
        t[12] = 5 << 4;
        t[13] = flags;
        t
    }

    /// IPv4 header (with `options`, a multiple of 4 bytes) and payload `l4`.
    pub fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, options: &[u8], frag: u16, l4: &[u8]) -> Vec<u8> {
        let ihl = 20 + options.len();
        let mut h = vec![0u8; 20];
        h[0] = 0x40 | (ihl / 4) as u8;
        h[2..4].copy_from_slice(&((ihl + l4.len()) as u16).to_be_bytes());
        h[4..6].copy_from_slice(&7u16.to_be_bytes());
        h[6..8].copy_from_slice(&frag.to_be_bytes());
        h[8] = 64;
        h[9] = proto;
        h[12..16].copy_from_slice(&src);
        h[16..20].copy_from_slice(&dst);
        h.extend_from_slice(options);
        h.extend_from_slice(l4);
        h
    }

    /// IPv6 header followed by `ext` (already chained) and `l4`; `next` is the first header.
    pub fn ipv6(src: [u8; 16], dst: [u8; 16], next: u8, ext: &[u8], l4: &[u8]) -> Vec<u8> {
        let mut h = vec![0u8; 40];
        h[0] = 0x60;
        h[4..6].copy_from_slice(&((ext.len() + l4.len()) as u16).to_be_bytes());
        h[6] = next;
        h[7] = 64;
        h[8..24].copy_from_slice(&src);
        h[24..40].copy_from_slice(&dst);
        h.extend_from_slice(ext);
        h.extend_from_slice(l4);
        h
    }

    pub fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    /// The Internet checksum (RFC 1071) of `parts` in sequence.
    /// No allocation: the benchmark's generator calls it for every frame it sends.
    pub fn checksum(parts: &[&[u8]]) -> u16 {
        let mut bytes = parts.iter().flat_map(|p| p.iter().copied());
        let mut sum: u32 = 0;
        while let Some(hi) = bytes.next() {
            sum += u32::from(u16::from_be_bytes([hi, bytes.next().unwrap_or(0)]));
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    fn udp_header(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut u = Vec::with_capacity(8 + payload.len());
        u.extend_from_slice(&sport.to_be_bytes());
        u.extend_from_slice(&dport.to_be_bytes());
        u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        u.extend_from_slice(&[0, 0]);
        u.extend_from_slice(payload);
        u
    }

    /// A whole Ethernet frame `dst_mac` <- `src_mac` carrying an IPv4 UDP datagram whose
    /// header and UDP checksums are right: a receiving stack delivers it.
    pub fn udp4_frame(
        dst_mac: [u8; 6],
        src_mac: [u8; 6],
        src: [u8; 4],
        dst: [u8; 4],
        dport: u16,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut u = udp_header(40000, dport, payload);
        let len = (u.len() as u16).to_be_bytes();
        let sum = checksum(&[&src, &dst, &[0, 17], &len, &u]);
        u[6..8].copy_from_slice(&sum.to_be_bytes());
        let mut ip = ipv4(src, dst, 17, &[], 0, &u);
        let sum = checksum(&[&ip[..20]]);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        cat(&[&dst_mac, &src_mac, &ETH_IP.to_be_bytes(), &ip])
    }

    /// As [`udp4_frame`], IPv6 (the UDP checksum is mandatory there).
    pub fn udp6_frame(
        dst_mac: [u8; 6],
        src_mac: [u8; 6],
        src: [u8; 16],
        dst: [u8; 16],
        dport: u16,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut u = udp_header(40000, dport, payload);
        let len = (u.len() as u32).to_be_bytes();
        let sum = checksum(&[&src, &dst, &len, &[0, 0, 0, 17], &u]);
        u[6..8].copy_from_slice(&sum.to_be_bytes());
        let ip = ipv6(src, dst, 17, &[], &u);
        cat(&[&dst_mac, &src_mac, &ETH_IPV6.to_be_bytes(), &ip])
    }
}

/// Sends one raw Ethernet frame out of `iface` in `ns` (AF_PACKET): a frame the pod's own
/// stack would not send (a forged source address).
pub fn send_frame(ns: &Netns, iface: &str, frame: Vec<u8>) {
    send_frames(ns, iface, vec![frame]);
}

/// Sends raw Ethernet frames out of `iface` in `ns`, in order, through one AF_PACKET socket.
pub fn send_frames(ns: &Netns, iface: &str, frames: Vec<Vec<u8>>) {
    send_frames_counted(ns, iface, frames);
}

/// How long one frame may be refused (the device's receive ring full) before the sender gives
/// up: the receiver then took nothing for that long, its receive queue is stuck.
const REFUSED_FOR: std::time::Duration = std::time::Duration::from_secs(20);

/// As [`send_frames`]; returns how many times a frame was refused and sent again. A veth whose
/// peer receives in NAPI (an XDP program, GRO, threaded NAPI on another CPU) queues each frame in
/// a ring of 256 and, when it is full, drops the frame and fails the send with ENOBUFS (the
/// frame never reached the peer's XDP program): the frame is then sent again, so that every
/// frame reaches the receiver exactly once, however far it falls behind. Panics when a frame is
/// refused for [`REFUSED_FOR`].
pub fn send_frames_counted(ns: &Netns, iface: &str, frames: Vec<Vec<u8>>) -> u64 {
    let iface = std::ffi::CString::new(iface).unwrap();
    ns.run(move || {
        let mut refused = 0;
        // SAFETY: plain socket calls on a socket this closure owns; the address and the
        // buffers outlive the calls.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = libc::if_nametoindex(iface.as_ptr()) as i32;
            addr.sll_halen = 6;
            for frame in &frames {
                addr.sll_addr[..6].copy_from_slice(&frame[..6]);
                let mut since: Option<std::time::Instant> = None;
                loop {
                    let n = libc::sendto(
                        fd,
                        frame.as_ptr().cast(),
                        frame.len(),
                        0,
                        (&addr as *const libc::sockaddr_ll).cast(),
                        std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                    );
                    if n == frame.len() as isize {
                        break;
                    }
                    let err = std::io::Error::last_os_error();
                    let t0 = *since.get_or_insert_with(std::time::Instant::now);
                    if matches!(err.raw_os_error(), Some(libc::ENOBUFS) | Some(libc::EAGAIN))
                        && t0.elapsed() < REFUSED_FOR
                    {
                        refused += 1;
                        std::thread::sleep(std::time::Duration::from_micros(50));
                        continue;
                    }
                    libc::close(fd);
                    panic!("send a raw frame: {err} (refused for {:?})", t0.elapsed());
                }
            }
            libc::close(fd);
        }
        refused
    })
}
