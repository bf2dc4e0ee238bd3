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

// ---- 1. hostile packets --------------------------------------------------------------------

#[test]
fn hostile_frames_from_a_denied_segment_reach_nothing_and_are_all_counted() {
    let lan = Lan::new(&HOSTS);
    let (pay, attacker) = (&lan.hosts[0], &lan.hosts[2]);
    let (link_pay, link_att) = direct_link(&pay.ns, &attacker.ns);
    let (link_mac, _) = link(&pay.ns, &link_pay);
    let (lan_mac, switch_port) = link(&pay.ns, &pay.iface);
    let server = Sniffer::start(&pay.ns);
    let witness = Sniffer::start(&lan.switch);

    // Calibration, before the agent runs: the server's packet socket sees every frame of the
    // corpus, malformed ones included, so that later "none seen" means the datapath dropped them.
    let mut unenforced = Vec::new();
    for family in [4u8, 6] {
        let (src, dst) = if family == 4 { (attacker.v4, pay.v4) } else { (attacker.v6, pay.v6) };
        unenforced.push(send_corpus(&attacker.ns, &link_att, family, ROLE_UNENFORCED, &link_mac, src, dst, false));
    }
    settle();

    let dir = TempDir::new();
    let agent = Agent::start(&pay.ns, &[&pay.iface, &link_pay], Some(&dir.file("p.yaml", POLICY)));

    // Over the direct link every byte sent reaches XDP: the counters must account for each
    // frame exactly (malformed, fragment and rule drops) or at least (default drops).
    let mut problems = Vec::new();
    let mut direct = Vec::new();
    for family in [4u8, 6] {
        let (src, dst) = if family == 4 { (attacker.v4, pay.v4) } else { (attacker.v6, pay.v6) };
        let before = counters(&agent);
        let t = Instant::now();
        let c = send_corpus(&attacker.ns, &link_att, family, ROLE_ATTACKER_LINK, &link_mac, src, dst, false);
        let secs = t.elapsed().as_secs_f64();
        let d = delta(&before, &settled(&agent));
        eprintln!(
            "IPv{family} corpus from the attacker over a direct link: {} frames ({} malformed, {} later fragments, \
             {} denied by default, {} denied by rule) in {secs:.1} s\n{}\n  counters: {}",
            c.frames.len(),
            c.count("malformed"),
            c.count("fragment"),
            c.count("default"),
            c.count("rule"),
            c.summary(),
            nonzero(&d)
        );
        if c.count("pass") != 0 {
            problems.push(format!("IPv{family}: the denied corpus has frames labelled pass"));
        }
        account(&c, &d, &mut problems);
        direct.push(c);
    }
    let lost_in_link = link_lost(&attacker.ns, &link_att);

    // The same corpus through the switch, to the server's address on the LAN.
    let mut switched = Vec::new();
    for family in [4u8, 6] {
        let (src, dst) = if family == 4 { (attacker.v4, pay.v4) } else { (attacker.v6, pay.v6) };
        let before = counters(&agent);
        let c = send_corpus(&attacker.ns, &attacker.iface, family, ROLE_ATTACKER_SWITCH, &lan_mac, src, dst, false);
        switched.push((c, delta(&before, &settled(&agent))));
    }

    let seen = server.stop();
    let delivered = witness.stop();
    eprintln!("direct link: {lost_in_link} frames lost in the link before the datapath");
    if lost_in_link != 0 {
        problems.push(format!("{lost_in_link} frames were lost in the link before the datapath saw them"));
    }
    for c in &unenforced {
        let got = marked(&seen, ROLE_UNENFORCED, c.family, |s| s.pkttype != PACKET_OUTGOING);
        // Except tagged frames shorter than 20 bytes: the kernel cannot untag them and frees
        // them before any packet tap (the datapath still sees and counts them).
        let visible: BTreeSet<u16> = (0..c.frames.len() as u16)
            .filter(|&i| {
                let f = &c.frames[i as usize];
                f.3 == 0 || f.2 >= 20
            })
            .collect();
        eprintln!(
            "IPv{} without the agent: the server's packet socket saw {} of {} frames ({} tagged frames too short to untag)",
            c.family,
            got.len(),
            c.frames.len(),
            c.frames.len() - visible.len()
        );
        if got != visible {
            let diff: Vec<_> = got.symmetric_difference(&visible).map(|&i| &c.frames[i as usize]).collect();
            problems.push(format!(
                "IPv{}: without the agent the packet socket saw other frames than expected: {diff:?}",
                c.family
            ));
        }
    }
    for c in &direct {
        let got = marked(&seen, ROLE_ATTACKER_LINK, c.family, |s| s.pkttype != PACKET_OUTGOING);
        eprintln!(
            "IPv{} over the direct link: the server's packet socket saw {} of {} frames",
            c.family,
            got.len(),
            c.frames.len()
        );
        if !got.is_empty() {
            problems.push(format!(
                "IPv{}: frames from the denied segment reached the server: {:?}",
                c.family,
                c.kinds_of(&got)
            ));
        }
    }
    for (c, d) in &switched {
        let got = marked(&seen, ROLE_ATTACKER_SWITCH, c.family, |s| s.pkttype != PACKET_OUTGOING);
        let on_link = marked(&delivered, ROLE_ATTACKER_SWITCH, c.family, |s| {
            s.ifindex == switch_port && s.pkttype == PACKET_OUTGOING
        });
        let all: BTreeSet<u16> = (0..c.frames.len() as u16).collect();
        let lost: Vec<u16> = all.difference(&on_link).copied().collect();
        let drops: u64 = DROPS.iter().map(|k| d[*k]).sum();
        let malformed_on_link = on_link.iter().filter(|&&i| c.frames[i as usize].1 == "malformed").count();
        let lost: Vec<_> = lost
            .iter()
            .map(|&i| {
                let f = &c.frames[i as usize];
                format!("{} ({} bytes, {} tags)", f.0, f.2, f.3)
            })
            .collect();
        eprintln!(
            "IPv{} through the switch: {} frames sent, {} delivered to the server's link (the switch dropped {:?}), \
             {} seen by the server's packet socket; {} of the {} malformed frames delivered were counted malformed \
             (the switch hands the outer VLAN tag over out of band: three tags look like two); counters: {}",
            c.family,
            c.frames.len(),
            on_link.len(),
            lost,
            got.len(),
            d["drop_malformed"],
            malformed_on_link,
            nonzero(d)
        );
        if !got.is_empty() {
            problems.push(format!(
                "IPv{} through the switch: frames from the denied segment reached the server: {:?}",
                c.family,
                c.kinds_of(&got)
            ));
        }
        // Not a vacuous pass: the switch delivers nearly all of the corpus.
        if on_link.len() * 10 < c.frames.len() * 9 {
            problems.push(format!(
                "IPv{}: the switch delivered only {} of {} frames",
                c.family,
                on_link.len(),
                c.frames.len()
            ));
        }
        if drops < on_link.len() as u64 {
            problems.push(format!(
                "IPv{} through the switch: {drops} drops counted for {} frames delivered",
                c.family,
                on_link.len()
            ));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn from_an_allowed_segment_only_the_well_formed_allowed_frames_reach_the_server() {
    let lan = Lan::new(&HOSTS);
    let (pay, front) = (&lan.hosts[0], &lan.hosts[1]);
    let (link_pay, link_front) = direct_link(&pay.ns, &front.ns);
    let dir = TempDir::new();
    let agent = Agent::start(&pay.ns, &[&pay.iface, &link_pay], Some(&dir.file("p.yaml", POLICY)));
    let (link_mac, _) = link(&pay.ns, &link_pay);
    let server = Sniffer::start(&pay.ns);

    let mut problems = Vec::new();
    let mut sent = Vec::new();
    for family in [4u8, 6] {
        let (src, dst) = if family == 4 { (front.v4, pay.v4) } else { (front.v6, pay.v6) };
        let before = counters(&agent);
        let c = send_corpus(&front.ns, &link_front, family, ROLE_FRONTEND_LINK, &link_mac, src, dst, true);
        let d = delta(&before, &settled(&agent));
        eprintln!(
            "IPv{family} corpus from the frontend over a direct link: {} frames: {} well-formed and allowed, \
             {} malformed, {} later fragments without an allowed first, {} denied by default, {} denied by rule\n{}\n  counters: {}",
            c.frames.len(),
            c.count("pass"),
            c.count("malformed"),
            c.count("fragment"),
            c.count("default"),
            c.count("rule"),
            c.summary(),
            nonzero(&d)
        );
        account(&c, &d, &mut problems);
        sent.push(c);
    }
    let lost_in_link = link_lost(&front.ns, &link_front);

    let seen = server.stop();
    eprintln!("direct link: {lost_in_link} frames lost in the link before the datapath");
    if lost_in_link != 0 {
        problems.push(format!("{lost_in_link} frames were lost in the link before the datapath saw them"));
    }
    for c in &sent {
        let got = marked(&seen, ROLE_FRONTEND_LINK, c.family, |s| s.pkttype != PACKET_OUTGOING);
        let want = c.indices("pass");
        let missing: Vec<u16> = want.difference(&got).copied().collect();
        let extra: Vec<u16> = got.difference(&want).copied().collect();
        eprintln!(
            "IPv{}: the server's packet socket saw {} frames: {} of the {} well-formed allowed ones, {} others",
            c.family,
            got.len(),
            got.intersection(&want).count(),
            want.len(),
            extra.len()
        );
        if !missing.is_empty() {
            problems.push(format!(
                "IPv{}: well-formed allowed frames did not reach the server: {:?}",
                c.family,
                c.kinds_of(&missing)
            ));
        }
        if !extra.is_empty() {
            problems.push(format!(
                "IPv{}: frames that must be dropped reached the server: {:?}",
                c.family,
                c.kinds_of(&extra)
            ));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

// ---- 2. port scans -------------------------------------------------------------------------

const SCAN_PORTS: &str = "1-1024,8000-8100";
const SCAN_PORT_COUNT: usize = 1024 + 101;

#[derive(Debug, Default)]
struct Scan {
    open: BTreeSet<u16>,
    closed: BTreeSet<u16>,
    /// Ports listed as filtered plus the "Ignored State" count, by state.
    others: BTreeMap<String, usize>,
    secs: f64,
}

impl Scan {
    fn total(&self) -> usize {
        self.open.len() + self.closed.len() + self.others.values().sum::<usize>()
    }
}

/// A TCP SYN scan of the server from `ns`, parsed from nmap's greppable output.
fn nmap(ns: &Netns, dst: IpAddr) -> Scan {
    let addr = dst.to_string();
    let mut args =
        vec!["nmap", "-n", "-Pn", "-sS", "-p", SCAN_PORTS, "-T4", "--max-retries", "1", "--host-timeout", "60s"];
    args.extend(["--min-rate", "3000", "-oG", "-"]);
    if dst.is_ipv6() {
        args.push("-6");
    }
    args.push(&addr);
    let t = Instant::now();
    let out = ns.exec(&args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "nmap failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    let mut scan = Scan { secs: t.elapsed().as_secs_f64(), ..Scan::default() };
    assert!(text.contains("Status: Up"), "nmap did not scan {addr}:\n{text}");
    assert!(!text.contains("Status: Timeout"), "nmap timed out on {addr}:\n{text}");
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        for field in line.split('\t') {
            if let Some(ports) = field.strip_prefix("Ports: ") {
                for entry in ports.split(", ").filter(|e| !e.trim().is_empty()) {
                    let parts: Vec<&str> = entry.trim().split('/').collect();
                    let port: u16 = parts[0].parse().unwrap_or_else(|_| panic!("nmap port entry {entry:?}"));
                    match parts[1] {
                        "open" => scan.open.insert(port),
                        "closed" => scan.closed.insert(port),
                        other => {
                            *scan.others.entry(other.to_string()).or_default() += 1;
                            true
                        }
                    };
                }
            } else if let Some(ignored) = field.strip_prefix("Ignored State: ") {
                // "filtered (1123)"
                let (state, n) = ignored.split_once(" (").unwrap_or_else(|| panic!("nmap ignored state {ignored:?}"));
                *scan.others.entry(state.to_string()).or_default() += n.trim_end_matches(')').parse::<usize>().unwrap();
            }
        }
    }
    // Every port accounted for, once.
    assert_eq!(scan.total(), SCAN_PORT_COUNT, "nmap output does not cover every port:\n{text}");
    scan
}

/// A scan from `ns` expected to find exactly `open` open. nmap gives a port up after one
/// retry (`--max-retries 1`, for speed): on a busy machine a reply can come too late for it
/// and an open port shows as filtered. So a scan that found a subset of `open` is made again
/// (at most three scans, the open ports of all counted); a port found open outside `open` is
/// never retried, it fails at once.
fn scan_expecting(ns: &Netns, dst: IpAddr, open: &BTreeSet<u16>, what: &str) -> Scan {
    let mut found = BTreeSet::new();
    for attempt in 1..=3 {
        let s = nmap(ns, dst);
        eprintln!(
            "{what} -> {dst}: open {:?}, closed {:?}, other {:?}, in {:.1} s",
            s.open, s.closed, s.others, s.secs
        );
        assert!(s.open.is_subset(open), "{what} found ports open on {dst} beyond {open:?}: {:?}", s.open);
        found.extend(s.open.iter().copied());
        if &found == open {
            return Scan { open: found, ..s };
        }
        eprintln!(
            "{what} -> {dst}: scan {attempt} missed {:?} (machine busy?): scanning again",
            open.difference(&found).collect::<Vec<_>>()
        );
    }
    panic!("{what} did not find {:?} open on {dst} in three scans", open.difference(&found).collect::<Vec<_>>());
}

#[test]
fn a_port_scan_finds_exactly_the_allowed_ports() {
    let lan = Lan::new(&HOSTS);
    let (pay, front, attacker) = (&lan.hosts[0], &lan.hosts[1], &lan.hosts[2]);
    let _servers = Servers::start(&pay.ns, &[22, 443, 8080, 8081], &[]);
    let listening: BTreeSet<u16> = [22, 443, 8080, 8081].into();

    // Before enforcement the scan finds every listener: the scan itself works.
    let bare = scan_expecting(&attacker.ns, pay.v4, &listening, "before enforcement, attacker");
    assert_eq!(bare.open, listening, "without the agent, the scan should find every listener");

    let dir = TempDir::new();
    let agent = Agent::start(&pay.ns, &[&pay.iface], Some(&dir.file("p.yaml", POLICY)));
    let before = counters(&agent);
    let mut attacker_probes = 0;
    for dst in [pay.v4, pay.v6] {
        let s = nmap(&attacker.ns, dst);
        eprintln!(
            "attacker -> {dst}: open {:?}, closed {:?}, other {:?}, in {:.1} s",
            s.open, s.closed, s.others, s.secs
        );
        assert!(s.open.is_empty(), "the attacker found open ports on {dst}: {:?}", s.open);
        // Not even a reset: the server's stack never saw a probe.
        assert!(s.closed.is_empty(), "the attacker got answers from {dst} (closed ports): {:?}", s.closed);
        attacker_probes += SCAN_PORT_COUNT;
    }
    let after_attacker = counters(&agent);
    for dst in [pay.v4, pay.v6] {
        let s = scan_expecting(&front.ns, dst, &[443, 8080].into(), "frontend");
        assert_eq!(s.open, [443, 8080].into(), "the frontend should find exactly 443 and 8080 open on {dst}");
        assert!(s.closed.is_empty(), "denied ports answered the frontend on {dst}: {:?}", s.closed);
    }
    let d_att = delta(&before, &after_attacker);
    let d_front = delta(&after_attacker, &counters(&agent));
    eprintln!("counters, attacker scans: {}\ncounters, frontend scans: {}", nonzero(&d_att), nonzero(&d_front));
    // Every probe of the attacker was dropped and counted (at least once per port).
    let dropped = d_att["drop_default"] + d_att["drop_rule"];
    assert!(dropped >= attacker_probes as u64, "{dropped} drops for {attacker_probes} ports probed");
    assert!(d_att["drop_rule"] >= 2, "the probes of 8081/tcp were not denied by the rule");
    assert!(d_front["drop_default"] + d_front["drop_rule"] >= 2 * (SCAN_PORT_COUNT as u64 - 2));
}

// ---- 3. where the datapath and the README part ways --------------------------------------------

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
