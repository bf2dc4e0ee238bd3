//! nmap SYN scans from a denied and from an allowed segment.
use super::*;

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
