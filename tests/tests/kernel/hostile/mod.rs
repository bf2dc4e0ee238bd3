//! Attack tests: hostile packets and port scans against a protected server.
//!
//! - A generated corpus of crafted frames per IP family (tests/data/hostile/corpus.py, fixed
//!   seed: truncated headers, bad IHL, IPv4 options, IPv6 extension-header chains short, long
//!   and with bogus lengths, overlapping, tiny and orphan fragments, VLAN, QinQ and three or
//!   more tags, zero-length payloads, frames up to the MTU, random TCP flags, bad checksums) is
//!   sent as raw Ethernet frames from a denied segment: none reaches the server, and the
//!   agent's counters account for every frame. From an allowed segment, exactly the well-formed
//!   allowed frames reach the server and none of the malformed ones do.
//! - nmap SYN scans: from a denied segment no port is open (nor closed: nothing answers), from
//!   an allowed one exactly the allowed listening ports are open.
//! - Edge cases where what the datapath does and what the README promises part ways.
//!
//! What "reaches the server" means: a packet socket (AF_PACKET, ETH_P_ALL) on every interface
//! of the server's namespace. XDP runs before packet taps, so the socket sees exactly what the
//! datapath passed. Every crafted frame carries a unique source MAC (02:7a:ROLE:FAMILY:INDEX), so
//! the socket can tell which ones arrived, even truncated ones. As a calibration, the denied
//! corpus is first sent before the agent runs: the socket then sees every frame (but tagged
//! frames shorter than 20 bytes, which the kernel frees before any tap).
//!
//! The corpus goes over a direct veth link from the sender's namespace to the server's (which
//! the agent enforces too), not through the harness's switch: a Linux bridge port moves the
//! outer VLAN tag of a frame into the socket buffer's metadata (where XDP does not see it) and
//! drops tagged frames too short to untag, so what the agent judged would not be what was
//! sent. A second pass of the denied corpus goes through the switch all the same, with a
//! witness socket on the switch port that counts what was delivered to the server's link.
//!
//! The tests, by topic: [`corpus`] (hostile packets), [`scan`] (port scans), [`edge`] (where
//! the datapath and the README part ways); the sniffer, the corpus and the counters they share
//! are here.
mod corpus;
mod edge;
mod scan;

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use integration_tests::{
    Agent, Lan, Netns, Servers, TempDir,
    frame::{ETH_IP, ETH_IPV6, TCP_SYN, cat, eth, ipv4, ipv6, tcp},
    sh, unique,
};

const POLICY: &str = integration_tests::frontend_payments_policy!(
    r#"rules:
  - { name: web, from: [frontend], to: [payments], ports: ["443/tcp", "8080/tcp", "53/udp"], action: allow }
  - { name: no-admin, from: ["*"], to: [payments], ports: ["8081/tcp"], action: deny }
"#
);

/// payments (server), frontend (allowed), attacker (world: denied by default).
const HOSTS: [(&str, &str); 3] = [("10.20.2.10", "fd20:2::10"), ("10.20.1.2", "fd20:1::2"), ("10.20.9.2", "fd20:9::2")];

/// The corpus's seed: the same frames on every run.
const SEED: u32 = 1858;

/// Who sent a marked frame, and how (the third byte of its source MAC).
const ROLE_UNENFORCED: u8 = 0xa0;
const ROLE_ATTACKER_LINK: u8 = 0xa1;
const ROLE_ATTACKER_SWITCH: u8 = 0xa2;
const ROLE_FRONTEND_LINK: u8 = 0xf1;
const ROLE_EDGE: u8 = 0xe1;

const DROPS: [&str; 4] = ["drop_malformed", "drop_default", "drop_rule", "drop_fragment"];

// ---- plumbing ------------------------------------------------------------------------------

/// Every counter of `ztagent status -o json`.
fn counters(agent: &Agent) -> BTreeMap<String, u64> {
    let out = agent.cli(&["status", "-o", "json"]);
    assert!(out.status.success(), "status failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["counters"].as_object().unwrap().iter().map(|(name, n)| (name.clone(), n.as_u64().unwrap())).collect()
}

fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after.iter().map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0))).collect()
}

fn nonzero(d: &BTreeMap<String, u64>) -> String {
    d.iter().filter(|(_, v)| **v != 0).map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
}

/// The MAC address of `iface` in `ns`, and the ifindex of its veth peer (in the peer's namespace).
fn link(ns: &Netns, iface: &str) -> (String, i32) {
    let out = ns.ip(&["-j", "link", "show", iface]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    (v[0]["address"].as_str().unwrap().to_string(), v[0]["link_index"].as_i64().unwrap_or(0) as i32)
}

/// A direct veth link between `a` and `b` without addresses (no IPv6 link-local either, so no
/// chatter of its own): returns the interface names in `a` and in `b`.
fn direct_link(a: &Netns, b: &Netns) -> (String, String) {
    let (ia, ib) = (unique("wa"), unique("wb"));
    sh(&["ip", "link", "add", &ia, "netns", &a.name, "type", "veth", "peer", "name", &ib, "netns", &b.name]);
    for (ns, i) in [(a, &ia), (b, &ib)] {
        ns.ip(&["link", "set", i, "addrgenmode", "none"]);
        ns.ip(&["link", "set", i, "up"]);
    }
    (ia, ib)
}

/// Frames a veth could not queue to its peer (`tx dropped` of the sending end): a full queue
/// would lose frames before the datapath saw them, and the accounting below would not add up.
fn link_lost(ns: &Netns, iface: &str) -> u64 {
    let out = ns.ip(&["-j", "-s", "link", "show", iface]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[0]["stats64"]["tx"]["dropped"].as_u64().unwrap_or(0)
}

/// Checks the counter deltas `d` of one corpus sent over a direct link: every frame is
/// accounted for by its expected outcome.
fn account(c: &Corpus, d: &BTreeMap<String, u64>, problems: &mut Vec<String>) {
    let f = c.family;
    let mut check = |ok: bool, what: String| {
        if !ok {
            problems.push(format!("IPv{f}: {what}"));
        }
    };
    check(c.frames.len() >= 1000, format!("only {} frames in the corpus", c.frames.len()));
    for (counter, label) in [("drop_malformed", "malformed"), ("drop_fragment", "fragment"), ("drop_rule", "rule")] {
        check(
            d[counter] == c.count(label) as u64,
            format!("{counter} counted {} for {} {label} frames", d[counter], c.count(label)),
        );
    }
    // Default denials: at least (replies the server's egress denies count there too).
    check(
        d["drop_default"] >= c.count("default") as u64,
        format!("drop_default counted {} for {} frames", d["drop_default"], c.count("default")),
    );
    let drops: u64 = DROPS.iter().map(|k| d[*k]).sum();
    let dropped = c.frames.len() - c.count("pass");
    check(drops >= dropped as u64, format!("{drops} drops counted for {dropped} frames to drop (every frame is IP)"));
    let passed = d["pass_policy"] + d["pass_tracked"] + d["pass_fragment"];
    check(passed >= c.count("pass") as u64, format!("{passed} passes counted for {} allowed frames", c.count("pass")));
}

fn enter(ns_path: &str) {
    let f = File::open(ns_path).unwrap_or_else(|e| panic!("open {ns_path}: {e}"));
    // SAFETY: setns on a valid namespace fd affects only the calling thread for CLONE_NEWNET.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns({ns_path}): {}", std::io::Error::last_os_error());
}

const PACKET_OUTGOING: u8 = 4;

/// A marked frame seen by a packet socket.
#[derive(Clone, Copy, Debug)]
struct Seen {
    role: u8,
    family: u8,
    index: u16,
    ifindex: i32,
    pkttype: u8,
}

/// A packet socket (ETH_P_ALL, every interface of a namespace) recording the marked frames it
/// sees, on a thread of its own until [`Sniffer::stop`] (or drop).
struct Sniffer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<(Vec<Seen>, u32)>>,
}

impl Sniffer {
    fn start(ns: &Netns) -> Sniffer {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let (path, flag) = (ns.path(), stop.clone());
        let thread = std::thread::spawn(move || {
            enter(&path);
            // SAFETY: plain socket calls on a descriptor this thread owns; buffers outlive them.
            unsafe {
                let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, (libc::ETH_P_ALL as u16).to_be() as i32);
                assert!(fd >= 0, "packet socket: {}", std::io::Error::last_os_error());
                let fd = OwnedFd::from_raw_fd(fd);
                let size: libc::c_int = 64 << 20;
                let rc = libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
                assert_eq!(rc, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
                let tv = libc::timeval { tv_sec: 0, tv_usec: 20_000 };
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&tv as *const libc::timeval).cast(),
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                );
                tx.send(()).unwrap();
                let mut seen = Vec::new();
                let mut buf = vec![0u8; 65536];
                loop {
                    let mut sa: libc::sockaddr_ll = std::mem::zeroed();
                    let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
                    let n = libc::recvfrom(
                        fd.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        0,
                        (&mut sa as *mut libc::sockaddr_ll).cast(),
                        &mut len,
                    );
                    if n < 0 {
                        // Timed out: stop once asked to, after the queue is drained.
                        if flag.load(Ordering::Relaxed) {
                            break;
                        }
                        continue;
                    }
                    if n >= 12 && buf[6] == 0x02 && buf[7] == 0x7a {
                        seen.push(Seen {
                            role: buf[8],
                            family: buf[9],
                            index: u16::from_be_bytes([buf[10], buf[11]]),
                            ifindex: sa.sll_ifindex,
                            pkttype: sa.sll_pkttype,
                        });
                    }
                }
                // struct tpacket_stats { tp_packets, tp_drops }: frames the socket lost.
                let mut stats = [0u32; 2];
                let mut len = std::mem::size_of_val(&stats) as libc::socklen_t;
                libc::getsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_PACKET,
                    libc::PACKET_STATISTICS,
                    stats.as_mut_ptr().cast(),
                    &mut len,
                );
                (seen, stats[1])
            }
        });
        rx.recv_timeout(Duration::from_secs(5)).expect("packet socket did not start");
        Sniffer { stop, thread: Some(thread) }
    }

    /// Stops and returns the marked frames seen (and asserts the socket lost none).
    fn stop(mut self) -> Vec<Seen> {
        self.stop.store(true, Ordering::Relaxed);
        let (seen, drops) = self.thread.take().unwrap().join().expect("sniffer panicked");
        assert_eq!(drops, 0, "the packet socket itself dropped {drops} frames: the count is not trustworthy");
        seen
    }
}

impl Drop for Sniffer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What one run of corpus.py sent: per frame (in order, index = position) its kind, the
/// datapath's expected outcome, its length and its number of VLAN tags.
struct Corpus {
    family: u8,
    frames: Vec<(String, String, usize, usize)>,
}

impl Corpus {
    fn count(&self, label: &str) -> usize {
        self.frames.iter().filter(|f| f.1 == label).count()
    }

    fn indices(&self, label: &str) -> BTreeSet<u16> {
        self.frames.iter().enumerate().filter(|(_, f)| f.1 == label).map(|(i, _)| i as u16).collect()
    }

    /// "kind: n (label n, ...)" per kind.
    fn summary(&self) -> String {
        let mut kinds: BTreeMap<&str, BTreeMap<&str, usize>> = BTreeMap::new();
        for (k, l, ..) in &self.frames {
            *kinds.entry(k).or_default().entry(l).or_default() += 1;
        }
        kinds
            .iter()
            .map(|(k, ls)| {
                let n: usize = ls.values().sum();
                let ls = ls.iter().map(|(l, n)| format!("{l} {n}")).collect::<Vec<_>>().join(", ");
                format!("    {k:<28} {n:>4}  ({ls})")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn kinds_of<'a>(&self, idx: impl IntoIterator<Item = &'a u16>) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for &i in idx {
            let f = &self.frames[i as usize];
            *m.entry(format!("{} ({})", f.0, f.1)).or_default() += 1;
        }
        m
    }
}

/// Generates the corpus of `family` in `ns` and sends it on `iface` to `dst_mac`.
#[allow(clippy::too_many_arguments)]
fn send_corpus(
    ns: &Netns,
    iface: &str,
    family: u8,
    role: u8,
    dst_mac: &str,
    src: IpAddr,
    dst: IpAddr,
    allowed: bool,
) -> Corpus {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/hostile/corpus.py");
    let args = [
        family.to_string(),
        format!("{role:#x}"),
        iface.to_string(),
        dst_mac.to_string(),
        src.to_string(),
        dst.to_string(),
        SEED.to_string(),
        (allowed as u8).to_string(),
    ];
    let mut cmd = vec!["/usr/bin/python3", script.to_str().unwrap()];
    cmd.extend(args.iter().map(String::as_str));
    let out = ns.exec(&cmd);
    assert!(out.status.success(), "corpus.py failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("corpus.py manifest");
    let errors = v["errors"].as_array().unwrap();
    assert!(errors.is_empty(), "frames could not be sent: {errors:?}");
    let frames = v["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let n = |i: usize| f[i].as_u64().unwrap() as usize;
            (f[0].as_str().unwrap().to_string(), f[1].as_str().unwrap().to_string(), n(2), n(3))
        })
        .collect();
    Corpus { family, frames }
}

/// Lets the last frames through the receiving queues before counting.
fn settle() {
    std::thread::sleep(Duration::from_millis(400));
}

/// The counters once the frames just sent have all been judged: after [`settle`], read until
/// two reads 200 ms apart agree (a busy machine may still be processing the tail), for at most
/// 10 s; then the last read, whatever it is (background chatter may never stand still).
fn settled(agent: &Agent) -> BTreeMap<String, u64> {
    settle();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = counters(agent);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = counters(agent);
        if now == last || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

/// The indices of the frames of `role`/`family` among `seen` that pass `filter`.
fn marked(seen: &[Seen], role: u8, family: u8, filter: impl Fn(&Seen) -> bool) -> BTreeSet<u16> {
    seen.iter().filter(|s| s.role == role && s.family == family && filter(s)).map(|s| s.index).collect()
}
