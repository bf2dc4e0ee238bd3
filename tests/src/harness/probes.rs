//! Real traffic that says whether a flow gets through, and what `ztagent check` says of it.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    path::Path,
    process::Command,
    time::Duration,
};

use crate::harness::netns::Netns;
use crate::harness::util::bin;

/// How long a TCP probe waits for the handshake. A denied probe (its SYN or SYN-ACK dropped)
/// costs this much, so it is short; the handshake is answered by the kernel, not by the
/// server's thread, so a busy machine hardly delays an allowed one.
const TCP_CONNECT: Duration = Duration::from_millis(700);
/// How long a connected TCP probe waits for the greeting, which the server's thread writes:
/// generous, since only a probe that passed the datapath waits for it.
const TCP_GREETING: Duration = Duration::from_secs(5);
/// How long each try of a UDP probe waits for its echo: the echo comes from the server's
/// thread, which a busy machine may delay, so the last try is patient. A denied probe costs
/// the sum.
const UDP_TRIES: [Duration; 3] = [Duration::from_millis(300), Duration::from_millis(300), Duration::from_millis(1000)];

/// Connects from `ns` to `dst:port` and reads the server's greeting.
pub fn tcp_ok(ns: &Netns, dst: IpAddr, port: u16) -> bool {
    ns.run(move || {
        let Ok(mut s) = TcpStream::connect_timeout(&SocketAddr::new(dst, port), TCP_CONNECT) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(TCP_GREETING));
        let mut buf = [0u8; 3];
        s.read_exact(&mut buf).is_ok() && &buf == b"hi\n"
    })
}

/// A TCP connection from `ns` to `dst:port`, its greeting read: an established flow to test
/// later with [`echoes`].
pub fn hold_tcp(ns: &Netns, dst: IpAddr, port: u16) -> TcpStream {
    let s = ns.run(move || {
        let s = TcpStream::connect_timeout(&SocketAddr::new(dst, port), Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("connect to {dst}:{port}: {e}"));
        s.set_read_timeout(Some(ECHO)).unwrap();
        s
    });
    let mut greeting = [0u8; 3];
    (&s).read_exact(&mut greeting).unwrap_or_else(|e| panic!("no greeting from {dst}:{port}: {e}"));
    s
}

/// How long to wait for an echo that must come (the server's thread may wait for a CPU on a
/// busy machine), and for one that must not (nothing can make it come late).
pub const ECHO: Duration = Duration::from_secs(5);
pub const NO_ECHO: Duration = Duration::from_millis(500);

/// One line sent on `s` and echoed back within `wait` ([`ECHO`] or [`NO_ECHO`]).
pub fn echoes(s: &mut TcpStream, wait: Duration) -> bool {
    let mut line = [0u8; 5];
    s.set_read_timeout(Some(wait)).is_ok() && s.write_all(b"ping\n").is_ok() && s.read_exact(&mut line).is_ok()
}

/// Sends a datagram from `ns` to `dst:port` and waits for its echo (up to 3 tries).
pub fn udp_ok(ns: &Netns, dst: IpAddr, port: u16) -> bool {
    let bind: SocketAddr = if dst.is_ipv4() { "0.0.0.0:0".parse().unwrap() } else { "[::]:0".parse().unwrap() };
    udp_ok_from(ns, bind.ip(), dst, port)
}

/// As [`udp_ok`], from the address `src` of `ns` (the unspecified address: any).
pub fn udp_ok_from(ns: &Netns, src: IpAddr, dst: IpAddr, port: u16) -> bool {
    ns.run(move || {
        let s = UdpSocket::bind(SocketAddr::new(src, 0)).unwrap();
        let mut buf = [0u8; 64];
        UDP_TRIES.iter().any(|wait| {
            s.set_read_timeout(Some(*wait)).unwrap();
            let _ = s.send_to(b"ping", SocketAddr::new(dst, port));
            matches!(s.recv_from(&mut buf), Ok((4, _)))
        })
    })
}

/// One ICMP echo (ping) from `ns` to `dst`, waiting up to a second.
pub fn ping_ok(ns: &Netns, dst: IpAddr) -> bool {
    let out = ns.exec(&["ping", "-c", "1", "-W", "1", &dst.to_string()]);
    out.status.success()
}

/// One kind of real traffic that tests and the demo send.
#[derive(Clone, Copy, Debug)]
pub enum Probe {
    Tcp(u16),
    Udp(u16),
    Icmp,
}

impl Probe {
    pub fn proto_port(self) -> (&'static str, u16) {
        match self {
            Probe::Tcp(p) => ("tcp", p),
            Probe::Udp(p) => ("udp", p),
            Probe::Icmp => ("icmp", 0),
        }
    }
    pub fn label(self) -> String {
        match self {
            Probe::Icmp => "icmp echo".into(),
            p => {
                let (proto, port) = p.proto_port();
                format!("{proto}/{port}")
            }
        }
    }
    /// Real traffic from `ns` to `dst`: true when it got through (and back).
    pub fn observe(self, ns: &Netns, dst: IpAddr) -> bool {
        match self {
            Probe::Tcp(p) => tcp_ok(ns, dst, p),
            Probe::Udp(p) => udp_ok(ns, dst, p),
            Probe::Icmp => ping_ok(ns, dst),
        }
    }
}

/// What `ztagent check -o json` says about one flow.
pub struct Why {
    pub allow: bool,
    pub rule: Option<String>,
    pub src_segment: String,
    pub dst_segment: String,
    pub rate_limit: Option<String>,
    pub revision: Option<u64>,
    /// The pods (`ns/pod`) of the addresses, under Kubernetes inputs.
    pub src_pod: Option<String>,
    pub dst_pod: Option<String>,
}

pub fn check_args(src: IpAddr, dst: IpAddr, probe: Probe) -> Vec<String> {
    let (proto, port) = probe.proto_port();
    [
        "check",
        "-o",
        "json",
        "--proto",
        proto,
        "--src",
        &src.to_string(),
        "--dst",
        &dst.to_string(),
        "--port",
        &port.to_string(),
    ]
    .map(String::from)
    .to_vec()
}

/// Judged offline against a policy file.
pub fn check_file(policy: &Path, src: IpAddr, dst: IpAddr, probe: Probe) -> anyhow::Result<Why> {
    let out = Command::new(bin("ztagent")).args(check_args(src, dst, probe)).arg("--policy").arg(policy).output()?;
    parse_check(out)
}

pub fn parse_check(out: std::process::Output) -> anyhow::Result<Why> {
    // 0 allow, 1 deny; anything else is an error.
    if !matches!(out.status.code(), Some(0 | 1)) {
        anyhow::bail!("ztagent check failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| anyhow::anyhow!("ztagent check -o json: {e}"))?;
    let allow = match v["verdict"].as_str() {
        Some("allow") => true,
        Some("deny") => false,
        other => anyhow::bail!("ztagent check gave the verdict {other:?}"),
    };
    if out.status.code() != Some(if allow { 0 } else { 1 }) {
        anyhow::bail!("ztagent check's exit status {} is not its verdict's ({v})", out.status);
    }
    Ok(Why {
        allow,
        rule: v["rule"].as_str().map(String::from),
        src_segment: v["src_segment"].as_str().unwrap_or("?").into(),
        dst_segment: v["dst_segment"].as_str().unwrap_or("?").into(),
        rate_limit: v["rate_limit"].as_str().map(String::from),
        revision: v["revision"].as_u64(),
        src_pod: v["src_pod"].as_str().map(String::from),
        dst_pod: v["dst_pod"].as_str().map(String::from),
    })
}
