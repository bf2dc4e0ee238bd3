//! The metrics endpoint and the events file, against real traffic: the counters served at
//! `/metrics` are those of `ztagent status` at the same moment, the per-segment event counters
//! add up to the packets sent, a tiny ring buffer's losses are shown by both, and the events
//! file holds exactly what `ztagent events` shows, also across rotations.
use std::{
    collections::BTreeMap,
    fs,
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use integration_tests::{Agent, Host, Lan, Netns, Servers, TempDir, tcp_ok};
use serde_json::Value;

/// The agent listens on the loopback of the namespace it runs in (the payments host's).
const METRICS_PORT: u16 = 9464;

const POLICY: &str = integration_tests::frontend_payments_policy!(
    r#"  batch: { cidrs: [10.20.3.0/24, "fd20:3::/64"] }
rules:
  - { name: web, from: [frontend], to: [payments], ports: ["443/tcp"], action: allow }
  - { name: pings, from: [batch], to: [payments], ports: ["icmp"], action: allow }
rateLimits:
  - name: batch-pings
    from: batch
    to: [payments]
    ports: ["icmp"]
    packets: { rate: 1, per: second, burst: 2 }
"#
);

// ---------------------------------------------------------------------------------------------
// Reading the endpoint

/// One scrape: every sample as (metric name, labels sorted by name) -> value as written.
#[derive(Clone, Debug, PartialEq)]
struct Metrics {
    samples: BTreeMap<(String, Vec<(String, String)>), String>,
    text: String,
}

impl Metrics {
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<&str> {
        let mut l: Vec<(String, String)> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        l.sort();
        self.samples.get(&(name.to_string(), l)).map(String::as_str)
    }

    /// An integer sample (counters, entries); panics with the exposition when absent.
    fn u(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let v = self.get(name, labels).unwrap_or_else(|| panic!("no sample {name}{labels:?} in:\n{}", self.text));
        v.parse().unwrap_or_else(|e| panic!("{name}{labels:?} = {v:?}: {e}"))
    }

    fn f(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.get(name, labels).map(|v| v.parse().unwrap_or_else(|e| panic!("{name} = {v:?}: {e}")))
    }

    /// Every sample of `name`: its labels (as a map) and integer value.
    fn family(&self, name: &str) -> Vec<(BTreeMap<String, String>, u64)> {
        self.samples
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|((_, l), v)| {
                (l.iter().cloned().collect(), v.parse().unwrap_or_else(|e| panic!("{name} = {v:?}: {e}")))
            })
            .collect()
    }
}

/// `name{a="x",b="y"} value` (label values may hold escaped quotes and backslashes).
fn parse_sample(line: &str) -> ((String, Vec<(String, String)>), String) {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => panic!("bad sample line {line:?}"),
    };
    let mut labels = Vec::new();
    let value_part = if let Some(mut r) = rest.strip_prefix('{') {
        loop {
            r = r.trim_start_matches(',');
            if let Some(after) = r.strip_prefix('}') {
                break after;
            }
            let eq = r.find('=').unwrap_or_else(|| panic!("bad labels in {line:?}"));
            let key = r[..eq].to_string();
            let mut chars =
                r[eq + 1..].strip_prefix('"').unwrap_or_else(|| panic!("bad label value in {line:?}")).char_indices();
            let mut value = String::new();
            let end = loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c)) => value.push(c),
                        None => panic!("bad escape in {line:?}"),
                    },
                    Some((i, '"')) => break i,
                    Some((_, c)) => value.push(c),
                    None => panic!("unterminated label value in {line:?}"),
                }
            };
            labels.push((key, value));
            r = &r[eq + 1 + 1 + end + 1..];
        }
    } else {
        rest
    };
    let value = value_part.split_whitespace().next().unwrap_or_else(|| panic!("no value in {line:?}")).to_string();
    labels.sort();
    ((name.to_string(), labels), value)
}

/// `GET /metrics` from inside `ns` (where the agent listens on 127.0.0.1), parsed.
fn scrape(ns: &Netns) -> Metrics {
    let raw = integration_tests::get_metrics(ns, METRICS_PORT).expect("scrape the metrics endpoint");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no end of head in:\n{raw}"));
    assert!(head.starts_with("HTTP/1.1 200 "), "metrics answered:\n{raw}");
    assert!(
        head.lines()
            .any(|l| l.to_ascii_lowercase().starts_with("content-type: application/openmetrics-text; version=1.0.0")),
        "content type:\n{head}"
    );
    assert!(body.ends_with("# EOF\n"), "the exposition does not end with # EOF:\n{body}");
    let mut samples = BTreeMap::new();
    for line in body.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (k, v) = parse_sample(line);
        assert!(samples.insert(k.clone(), v).is_none(), "sample {k:?} twice in:\n{body}");
    }
    Metrics { samples, text: body.to_string() }
}

// ---------------------------------------------------------------------------------------------
// The agent's own view

fn status(agent: &Agent) -> Value {
    let out = agent.cli(&["status", "-o", "json"]);
    assert!(out.status.success(), "status failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("status JSON")
}

fn status_counters(s: &Value) -> BTreeMap<String, u64> {
    s["counters"].as_object().expect("counters").iter().map(|(name, n)| (name.clone(), n.as_u64().unwrap())).collect()
}

fn status_limit<'a>(s: &'a Value, name: &str) -> &'a Value {
    s["limits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == name)
        .unwrap_or_else(|| panic!("no limit {name} in {s}"))
}

/// A scrape and a `status` taken at the same moment: the status is read between two scrapes
/// whose kernel counters are identical. The counters only grow, so the status's must be those
/// too; any difference is the endpoint's. Retried while stray packets move the counters.
fn same_moment(agent: &Agent, ns: &Netns) -> (Metrics, Value, usize) {
    let kernel = |m: &Metrics| {
        let mut v = m.family("ztagent_packets_total");
        v.push((BTreeMap::new(), m.u("ztagent_events_lost_total", &[])));
        v.extend(m.family("ztagent_rate_limit_dropped_packets_total"));
        v.extend(m.family("ztagent_rate_limit_passed_packets_total"));
        v
    };
    for attempt in 1..=30 {
        let m1 = scrape(ns);
        let s = status(agent);
        let m2 = scrape(ns);
        if kernel(&m1) == kernel(&m2) {
            return (m1, s, attempt);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the kernel counters never stood still for a scrape, a status and a scrape");
}

/// Every outcome of `status` has the same value in `ztagent_packets_total` (and no other
/// outcome is there), and `events_lost` is `ztagent_events_lost_total`.
fn assert_counters_agree(m: &Metrics, s: &Value) {
    let from_status = status_counters(s);
    let mut from_metrics: BTreeMap<String, u64> =
        m.family("ztagent_packets_total").into_iter().map(|(l, v)| (l["outcome"].clone(), v)).collect();
    from_metrics.insert("events_lost".into(), m.u("ztagent_events_lost_total", &[]));
    assert_eq!(from_metrics, from_status, "/metrics and `status` disagree at the same moment");
}

// ---------------------------------------------------------------------------------------------
// Traffic

/// `n` denied TCP connection attempts from `ns` to `dst:port` at once, each a single SYN: every
/// socket is given up after 250 ms, before the first retransmission (1 s).
fn denied_syns(ns: &Netns, dst: IpAddr, port: u16, n: usize) {
    let connected = ns.run(move || {
        let threads: Vec<_> = (0..n)
            .map(|_| {
                // Threads started here are in the namespace too.
                std::thread::spawn(move || {
                    TcpStream::connect_timeout(&SocketAddr::new(dst, port), Duration::from_millis(250)).is_ok()
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).filter(|ok| *ok).count()
    });
    assert_eq!(connected, 0, "a connection to a denied port was established");
}

/// `n` one-byte UDP datagrams from `ns` to `dst`, to `port` (or `port + i` when `distinct`),
/// from one socket. `paced`: a pause every 50 datagrams, so that no queue between the
/// namespaces overflows and every datagram reaches the enforced interface.
fn udp_send(ns: &Netns, dst: IpAddr, port: u16, n: usize, distinct: bool, paced: bool) {
    ns.run(move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        for i in 0..n {
            let p = if distinct { port + i as u16 } else { port };
            s.send_to(b"x", SocketAddr::new(dst, p)).expect("send");
            if paced && i % 50 == 49 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    });
}

/// `ping -c count -i 0.01` from `ns`: (transmitted, received).
fn pings(ns: &Netns, dst: IpAddr, count: u32) -> (u64, u64) {
    let out = ns.exec(&["ping", "-q", "-n", "-c", &count.to_string(), "-i", "0.01", "-W", "1", &dst.to_string()]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text.lines().find(|l| l.contains("packets transmitted")).unwrap_or_else(|| panic!("ping said:\n{text}"));
    let num = |word: &str| -> u64 {
        let words: Vec<&str> = line.split([' ', ',']).filter(|w| !w.is_empty()).collect();
        let i = words.iter().position(|w| *w == word).unwrap_or_else(|| panic!("no {word} in {line:?}"));
        words[i - 1].parse().unwrap()
    };
    (num("packets"), num("received"))
}

// ---------------------------------------------------------------------------------------------
// The events file

/// PATH, PATH.1, PATH.2, PATH.3 that exist, oldest first.
fn event_files(path: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = (1..=3).rev().map(|n| PathBuf::from(format!("{}.{n}", path.display()))).collect();
    v.push(path.to_path_buf());
    v.into_iter().filter(|p| p.exists()).collect()
}

/// Every line of the files, oldest first; each must be a JSON object.
fn read_event_files(path: &Path) -> Vec<Value> {
    let mut out = Vec::new();
    for p in event_files(path) {
        let text = fs::read_to_string(&p).unwrap_or_default();
        for (i, line) in text.lines().enumerate() {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}:{}: not JSON ({e}): {line:?}", p.display(), i + 1));
            assert!(v.is_object(), "{}:{}: not an object: {line}", p.display(), i + 1);
            out.push(v);
        }
    }
    out
}

/// The files' records and `events -o json`'s, once they agree (the file is written a moment
/// after a record is published, and the sweep may publish at any time): panics with both
/// when they never do.
fn file_matches_events(agent: &Agent, path: &Path) -> (Vec<Value>, Vec<Value>) {
    // Generous: it returns as soon as they agree; a busy machine may delay the writer.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let file = read_event_files(path);
        let evs = agent.events(&[]);
        if file == evs || Instant::now() > deadline {
            return (file, evs);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Sum of `count` per verdict.
fn counts_by_verdict(records: &[Value]) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for r in records {
        *m.entry(r["verdict"].as_str().unwrap_or("?").to_string()).or_default() += r["count"].as_u64().unwrap_or(0);
    }
    m
}

fn show(records: &[Value]) -> String {
    records.iter().map(Value::to_string).collect::<Vec<_>>().join("\n")
}

fn metrics_flags(extra: &[&str]) -> Vec<String> {
    let mut v = vec!["--metrics-addr".to_string(), format!("127.0.0.1:{METRICS_PORT}")];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn start(pay: &Host, policy: &Path, flags: &[String]) -> Agent {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    Agent::start_with(&pay.ns, &[&pay.iface], Some(policy), &flags)
}

/// An IGMP membership report of the LAN's own interfaces (sent from 0.0.0.0 by those without an
/// IPv4 address, to 224.0.0.22): the only traffic the test does not send itself, denied by
/// default (world -> world).
fn is_igmp_chatter(r: &Value) -> bool {
    r["proto"] == "2"
        && r["verdict"] == "denied"
        && r["reason"] == "default"
        && r["src_segment"] == "world"
        && r["dst_segment"] == "world"
        && r["dst"].as_str().and_then(|d| d.parse::<std::net::Ipv4Addr>().ok()).is_some_and(|d| d.is_multicast())
}

/// The kernel's counters since the agent started are the sums of the event stream's counts:
/// allowed = new flows (every allowed packet here starts one), denied = drop_default (no deny
/// rule here), rate-limited = drop_rate_limit.
fn kernel_matches_events(m: &Metrics) -> Result<(), String> {
    let mut by_verdict: BTreeMap<String, u64> = BTreeMap::new();
    for (l, v) in m.family("ztagent_event_packets_total") {
        *by_verdict.entry(l["verdict"].clone()).or_default() += v;
    }
    let kernel = |outcome: &str| m.u("ztagent_packets_total", &[("outcome", outcome)]);
    let pairs = [("allowed", "pass_policy"), ("denied", "drop_default"), ("rate-limited", "drop_rate_limit")];
    for (verdict, outcome) in pairs {
        let (events, counter) = (by_verdict.get(verdict).copied().unwrap_or(0), kernel(outcome));
        if events != counter {
            return Err(format!("{verdict} events add up to {events} packets, {outcome} is {counter}"));
        }
    }
    Ok(())
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

// ---------------------------------------------------------------------------------------------

#[test]
fn the_endpoint_counts_what_was_sent_and_agrees_with_status_and_the_events_file() {
    const N: usize = 5; // allowed TCP connections, frontend -> payments:443
    const M: usize = 6; // denied TCP attempts (default), frontend -> payments:22
    const K: usize = 3000; // denied UDP datagrams of one flow (default), world -> payments:9999
    const PINGS: u32 = 20; // batch -> payments, 1/s with a burst of 2

    let lan = Lan::four_hosts();
    let (pay, front, batch, attacker) = (&lan.hosts[0], &lan.hosts[1], &lan.hosts[2], &lan.hosts[3]);
    let dir = TempDir::new();
    let policy = dir.file("p.yaml", POLICY);
    let events_path = dir.0.join("events.jsonl");
    let flags = metrics_flags(&["--events-file", events_path.to_str().unwrap()]);
    let started = unix_now();
    let agent = start(pay, &policy, &flags);
    let _srv = Servers::start(&pay.ns, &[443], &[]);

    let (m0, s0, _) = same_moment(&agent, &pay.ns);
    assert_counters_agree(&m0, &s0);
    assert_eq!(m0.u("ztagent_policy_revision", &[]), 1, "revision before any push");
    let pushed1 = m0.f("ztagent_policy_last_push_timestamp_seconds", &[]).expect("no last push time after --policy");
    assert!(
        pushed1 >= started - 0.01 && pushed1 <= unix_now() + 0.01,
        "last push {pushed1}, agent started at {started}"
    );

    // The traffic.
    for i in 0..N {
        assert!(tcp_ok(&front.ns, pay.v4, 443), "allowed connection {i} failed");
    }
    denied_syns(&front.ns, pay.v4, 22, M);
    udp_send(&attacker.ns, pay.v4, 9999, K, false, true);
    let t = Instant::now();
    let (transmitted, received) = pings(&batch.ns, pay.v4, PINGS);
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(transmitted, PINGS as u64);
    // A burst of 2, then 1 a second (ping waits a second for the last replies).
    let most = 2 + secs.ceil() as u64;
    assert!(
        (1..=most).contains(&received),
        "{received} of {transmitted} pings in {secs:.1} s passed a limit of 1/s, burst 2"
    );
    let limited = transmitted - received;
    // The flood's and the SYNs' last packets are reported by the sweep once their aggregate has
    // been idle for a second.
    std::thread::sleep(Duration::from_millis(2500));

    // A moment where the kernel's counters and the event stream's agree: background chatter
    // (below) may arrive at any time, and the sweep reports an aggregate's last packets up to
    // two seconds after them.
    let mut tries = 0;
    let (m, s, attempts) = loop {
        tries += 1;
        let (m, s, attempts) = same_moment(&agent, &pay.ns);
        // Up to 15 s: it stops at the first agreement; a busy machine may delay the sweep.
        if tries == 30 || kernel_matches_events(&m).is_ok() {
            break (m, s, attempts);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let evs = agent.events(&[]);
    let before = status_counters(&s0);
    let now = status_counters(&s);
    let delta: BTreeMap<&str, u64> = now.iter().map(|(k, v)| (k.as_str(), v - before[k])).collect();
    let got: BTreeMap<(String, String, String), u64> = m
        .family("ztagent_event_packets_total")
        .into_iter()
        .map(|(l, v)| ((l["src_segment"].clone(), l["dst_segment"].clone(), l["verdict"].clone()), v))
        .collect();
    let chatter_records: Vec<Value> = evs.iter().filter(|r| r["dst_segment"] != "payments").cloned().collect();
    eprintln!(
        "sent: {N} allowed connections, {M} denied SYNs, {K} denied datagrams, {transmitted} pings ({received} answered, {limited} over the limit)\n\
         same moment after {tries} try(ies), {attempts} attempt(s) in the last; counters since the agent started: {now:?}\n\
         during the traffic: {delta:?}\n\
         event packets: {got:?}\n\
         limit batch-pings: dropped {} passed {}; ZT_CT entries {}; events delivered {}, lost {}\n\
         background records: {}",
        m.u("ztagent_rate_limit_dropped_packets_total", &[("limit", "batch-pings")]),
        m.u("ztagent_rate_limit_passed_packets_total", &[("limit", "batch-pings")]),
        m.u("ztagent_map_entries", &[("map", "ZT_CT")]),
        m.u("ztagent_events_delivered_total", &[]),
        m.u("ztagent_events_lost_total", &[]),
        show(&chatter_records),
    );

    // 1. The packet counters are those of `status` at the same moment.
    assert_counters_agree(&m, &s);

    // 2. The event stream's packets per (source, destination, verdict) are what was sent, and
    // add up to the kernel's counters (both count from the agent's start: its maps are new).
    // The only other traffic is the LAN's IGMP membership reports (from address-less
    // interfaces, 0.0.0.0 -> 224.0.0.22: world -> world), denied by default; nothing else.
    for r in &chatter_records {
        assert!(is_igmp_chatter(r), "an event of traffic the test did not send: {r}");
    }
    let mut want: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    for (src, dst, verdict, n) in [
        ("frontend", "payments", "allowed", N as u64),
        ("frontend", "payments", "denied", M as u64),
        ("world", "payments", "denied", K as u64),
        ("batch", "payments", "allowed", 1),
        ("batch", "payments", "rate-limited", limited),
    ] {
        want.insert((src.into(), dst.into(), verdict.into()), n);
    }
    let chatter_key = ("world".to_string(), "world".to_string(), "denied".to_string());
    let chatter = got.get(&chatter_key).copied().unwrap_or(0);
    let mut ours = got.clone();
    ours.remove(&chatter_key);
    assert_eq!(ours, want, "ztagent_event_packets_total");
    assert!(
        chatter <= evs.iter().filter(|r| is_igmp_chatter(r)).map(|r| r["count"].as_u64().unwrap()).sum(),
        "IGMP packets counted vs reported"
    );
    if let Err(e) = kernel_matches_events(&m) {
        panic!("{e}");
    }
    let kernel = |outcome: &str| m.u("ztagent_packets_total", &[("outcome", outcome)]);
    assert_eq!(
        kernel("pass_policy"),
        N as u64 + 1,
        "pass_policy: the first packet of each allowed flow (the pings are one)"
    );
    assert_eq!(
        kernel("drop_default"),
        (M + K) as u64 + chatter,
        "drop_default: the denied packets sent, and the IGMP reports"
    );
    assert_eq!(kernel("drop_rate_limit"), limited, "drop_rate_limit");
    assert_eq!(delta["pass_policy"], N as u64 + 1);
    assert_eq!(delta["drop_rate_limit"], limited);
    assert!(delta["drop_default"] >= (M + K) as u64);
    for outcome in ["drop_rule", "drop_malformed", "drop_no_policy", "drop_revoked", "drop_fragment"] {
        assert_eq!(kernel(outcome), 0, "{outcome}");
    }
    assert_eq!(m.u("ztagent_events_lost_total", &[]), 0);

    // The kernel's per-CPU counters by source segment: every packet, also of tracked flows.
    let seg = |segment: &str, outcome: &str| {
        m.u("ztagent_segment_packets_total", &[("segment", segment), ("outcome", outcome)])
    };
    assert_eq!(seg("frontend", "denied"), M as u64, "frontend's denied SYNs");
    assert_eq!(seg("batch", "rate_limited"), 18, "batch's pings over the limit");
    // Each of the N connections: its SYN, the handshake's ACK, at least the close (payments
    // side's replies count for payments).
    assert!(seg("frontend", "passed") >= 3 * N as u64, "frontend passed {}", seg("frontend", "passed"));
    assert!(seg("payments", "passed") >= 2 * N as u64, "payments' replies {}", seg("payments", "passed"));
    assert!(seg("world", "denied") >= K as u64);

    // 3. The rate limit's drops, as `status` shows them.
    let st = status_limit(&s, "batch-pings");
    let dropped = m.u("ztagent_rate_limit_dropped_packets_total", &[("limit", "batch-pings")]);
    let passed = m.u("ztagent_rate_limit_passed_packets_total", &[("limit", "batch-pings")]);
    assert_eq!(
        (dropped, passed),
        (st["packets_dropped"].as_u64().unwrap(), st["packets_passed"].as_u64().unwrap()),
        "limit vs status {st}"
    );
    assert_eq!((dropped, passed), (limited, received), "the limit's counts vs the pings");
    assert_eq!(m.family("ztagent_rate_limit_dropped_packets_total").len(), 1, "one limit in force");

    // 4. State maps.
    let ct = m.u("ztagent_map_entries", &[("map", "ZT_CT")]);
    assert!(ct > 0 && ct <= m.u("ztagent_map_capacity", &[("map", "ZT_CT")]), "ZT_CT entries {ct}");
    assert!(m.u("ztagent_map_entries", &[("map", "ZT_DENIED")]) >= 2, "two denied aggregates");
    assert!(m.u("ztagent_events_delivered_total", &[]) > 0);

    // 5. The events file holds exactly the records `events -o json` shows.
    let (file, evs) = file_matches_events(&agent, &events_path);
    eprintln!(
        "events file: {} records {:?}; events -o json: {} records {:?}",
        file.len(),
        counts_by_verdict(&file),
        evs.len(),
        counts_by_verdict(&evs)
    );
    assert!(
        file == evs,
        "the events file and `events -o json` differ:\n--- file\n{}\n--- events\n{}",
        show(&file),
        show(&evs)
    );
    assert!(file.iter().all(|r| r.get("missed").is_none()), "the file writer missed records");
    let by_verdict = counts_by_verdict(&file);
    let chatter_in_file: u64 = file.iter().filter(|r| is_igmp_chatter(r)).map(|r| r["count"].as_u64().unwrap()).sum();
    let want_by_verdict: BTreeMap<String, u64> = [
        ("allowed".to_string(), N as u64 + 1),
        ("denied".to_string(), (M + K) as u64 + chatter_in_file),
        ("rate-limited".to_string(), limited),
    ]
    .into();
    assert_eq!(by_verdict, want_by_verdict, "count sums per verdict in the file");
    let mode = fs::metadata(&events_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640, "events file mode {mode:o}");

    // 6. A push: revision 2, a later push time; the unchanged limit keeps its counts.
    std::thread::sleep(Duration::from_millis(20));
    let before_push = unix_now();
    agent.push(&dir.file("p2.yaml", &format!("{POLICY}\n# pushed again\n")));
    let after_push = unix_now();
    let m2 = scrape(&pay.ns);
    let pushed2 = m2.f("ztagent_policy_last_push_timestamp_seconds", &[]).expect("no last push time after a push");
    eprintln!(
        "push: revision {} -> {}, last push {pushed1:.3} -> {pushed2:.3}",
        1,
        m2.u("ztagent_policy_revision", &[])
    );
    assert_eq!(m2.u("ztagent_policy_revision", &[]), 2);
    assert_eq!(status(&agent)["revision"], 2);
    assert!(pushed2 > pushed1, "the last push time did not advance: {pushed1} -> {pushed2}");
    assert!(
        pushed2 >= before_push - 0.01 && pushed2 <= after_push + 0.01,
        "push at {pushed2}, between {before_push} and {after_push}"
    );
    assert_eq!(
        m2.u("ztagent_rate_limit_dropped_packets_total", &[("limit", "batch-pings")]),
        dropped,
        "an unchanged limit keeps its counts"
    );
}

#[test]
fn a_tiny_ring_buffer_loses_events_and_both_status_and_the_endpoint_count_them() {
    const FLOWS: usize = 20_000;
    let lan = Lan::four_hosts();
    let (pay, attacker) = (&lan.hosts[0], &lan.hosts[3]);
    let dir = TempDir::new();
    let policy = dir.file("p.yaml", POLICY);
    let agent = start(pay, &policy, &metrics_flags(&["--events-ring-bytes", "4096"]));
    let (m0, s0, _) = same_moment(&agent, &pay.ns);
    assert_counters_agree(&m0, &s0);
    let before = status_counters(&s0);

    // Distinct denied flows, one datagram each: each first denial is an event, far more than
    // 4 KiB hold. The agent is frozen meanwhile, so that its reader cannot keep up however fast
    // it is.
    agent.freeze(true);
    udp_send(&attacker.ns, pay.v4, 20_000, FLOWS, true, false);
    agent.freeze(false);

    // Once the thawed agent has read what the ring kept (polled, up to 15 s: a busy machine
    // may make it late; it stops at the first moment every denial is delivered or lost).
    let mut tries = 0;
    let (m, s, attempts, lost, delivered, denied) = loop {
        tries += 1;
        std::thread::sleep(Duration::from_millis(500));
        let (m, s, attempts) = same_moment(&agent, &pay.ns);
        let lost = m.u("ztagent_events_lost_total", &[]);
        let delivered = m.u("ztagent_events_delivered_total", &[]);
        // Since the agent started (its maps are new): the flood, and the LAN's IGMP reports.
        let denied = m.u("ztagent_packets_total", &[("outcome", "drop_default")]);
        if delivered + lost + 8 >= denied || tries == 30 {
            break (m, s, attempts, lost, delivered, denied);
        }
    };
    let counters = status_counters(&s);
    let counted = m.u(
        "ztagent_event_packets_total",
        &[("src_segment", "world"), ("dst_segment", "payments"), ("verdict", "denied")],
    );
    eprintln!(
        "tiny ring: {FLOWS} flows sent, {} denied during the flood ({denied} since the start), {delivered} events delivered, \
         {lost} lost (status: {}), {counted} packets counted from events; same moment after {attempts} attempt(s)",
        counters["drop_default"] - before["drop_default"],
        counters["events_lost"]
    );
    assert_counters_agree(&m, &s);
    assert!(lost > 0, "no event was lost through a 4 KiB ring buffer");
    assert_eq!(lost, counters["events_lost"]);
    assert!(delivered > 0, "no event got through at all");
    assert_eq!(
        counters.iter().filter(|(k, _)| k.starts_with("drop_") && *k != "drop_default").map(|(_, v)| v).sum::<u64>(),
        0
    );
    assert_eq!(counters["pass_policy"], 0, "nothing was allowed");
    // Every event here is a denial, and each datagram of the flood is the first of its flow: one
    // event each, delivered or lost. The IGMP reports (a few, see `is_igmp_chatter`) are the
    // only other denials; repeated ones within a second share an event.
    assert!(
        delivered + lost <= denied && delivered + lost + 8 >= denied,
        "{delivered} events delivered + {lost} lost for {denied} packets denied"
    );
    assert!(
        denied - (counters["drop_default"] - before["drop_default"]) <= 8,
        "denials before the flood: only IGMP reports"
    );
    assert!(counted <= delivered && counted > 0, "{counted} packets counted from {delivered} events");
}

#[test]
fn the_events_file_rotates_and_keeps_every_record() {
    const MAX: u64 = 4000;
    const FLOWS: usize = 36; // ~300-byte lines: 3 files of 4000 bytes, far from the 4 kept
    let lan = Lan::four_hosts();
    let (pay, attacker) = (&lan.hosts[0], &lan.hosts[3]);
    let dir = TempDir::new();
    let policy = dir.file("p.yaml", POLICY);
    let path = dir.0.join("events.jsonl");
    let flags = vec![
        "--events-file".to_string(),
        path.to_str().unwrap().to_string(),
        "--events-file-max-bytes".to_string(),
        MAX.to_string(),
    ];
    let agent = start(pay, &policy, &flags);
    udp_send(&attacker.ns, pay.v4, 30_000, FLOWS, true, true);
    std::thread::sleep(Duration::from_millis(500));

    let (file, evs) = file_matches_events(&agent, &path);
    let files: Vec<(String, u64, usize)> = event_files(&path)
        .iter()
        .map(|p| {
            let text = fs::read_to_string(p).unwrap();
            (p.file_name().unwrap().to_string_lossy().into_owned(), text.len() as u64, text.lines().count())
        })
        .collect();
    eprintln!(
        "rotation: {} records ({} IGMP) in the files {files:?}; events -o json: {} records",
        file.len(),
        file.iter().filter(|r| is_igmp_chatter(r)).count(),
        evs.len()
    );
    for n in ["", ".1", ".2"] {
        let p = PathBuf::from(format!("{}{n}", path.display()));
        assert!(p.exists(), "{} does not exist: fewer than two rotations", p.display());
    }
    for (name, size, _) in &files {
        assert!(*size <= MAX, "{name} has {size} bytes, more than {MAX}");
        assert!(*size > 0, "{name} is empty");
    }
    // No record lost or added: the files, oldest first, are exactly the events kept.
    assert!(
        file == evs,
        "the files and `events -o json` differ:\n--- files\n{}\n--- events\n{}",
        show(&file),
        show(&evs)
    );
    // One record per flow sent; anything else is the LAN's IGMP reports.
    let (ours, others): (Vec<&Value>, Vec<&Value>) = file.iter().partition(|r| r["dst_segment"] == "payments");
    let mut ports: Vec<u64> = ours.iter().map(|r| r["dport"].as_u64().unwrap()).collect();
    ports.sort();
    assert_eq!(ports, (30_000..30_000 + FLOWS as u64).collect::<Vec<_>>(), "one record per flow sent");
    assert!(ours.iter().all(|r| r["count"] == 1 && r["src_segment"] == "world" && r["verdict"] == "denied"));
    assert!(others.iter().all(|r| is_igmp_chatter(r)), "records of traffic the test did not send");
}
