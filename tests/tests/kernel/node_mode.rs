//! Node mode (`ztagent run --iface-pattern GLOB`): a node namespace routing between pod
//! namespaces as a CNI does (the harness's `PodNode`), the agent started before the pods.
//!
//! - Pods whose veths appear after the agent started are attached (polled, within a generous
//!   bound; the time is printed) and enforced (a denied flow dropped, an allowed one passes);
//!   a veth deleted leaves no pin and no allowed source behind, and the agent runs on without
//!   a warning; a restart adopts the pods that are there (their links updated in place, an
//!   established connection going on) and removes the pins and sources of a pod that went
//!   while no agent ran; a renamed veth keeps its links while its name matches.
//! - Anti-spoofing: from a pod, raw frames with forged sources (an address of a segment the
//!   policy allows, another pod's address) are dropped, counted as `drop_spoofed` and reported
//!   as `denied` / `spoofed` naming the pod's interface, while the same frames from the pod's
//!   real addresses (IPv4 /32 and IPv6 /128 routes, and a pod routed as a /28) are delivered;
//!   an IPv6 link-local source passes the guard (and is judged by the policy).
use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use integration_tests::{
    Agent, ECHO, Pod, PodNode, Servers, TempDir, echoes, frame, hold_tcp, json_of, link_pins, send_frame,
    source_ifindexes, tcp_ok, udp_ok, wait_for,
};

/// Pod a may call pod b on 80/tcp and 7000/udp; `trusted` (no pod has its addresses) may send
/// to pod b on 7000/udp too; nothing else is allowed.
const POLICY: &str = r#"
version: 1
segments:
  pod-a: { cidrs: [10.77.0.1/32, "fd77::1/128"] }
  pod-b: { cidrs: [10.77.0.16/28, "fd77::18/128"] }
  pod-c: { cidrs: [10.77.0.3/32, "fd77::3/128"] }
  trusted: { cidrs: [10.77.0.64/26, "fd77::40/122"] }
rules:
  - { name: a-to-b, from: [pod-a], to: [pod-b], ports: ["80/tcp", "7000/udp"], action: allow }
  - { name: trusted-to-b, from: [trusted], to: [pod-b], ports: ["7000/udp"], action: allow }
"#;

/// A generous bound for what the agent does within 1 s of a change (attach, clean-up).
const WITHIN: Duration = Duration::from_secs(10);

fn status(agent: &Agent) -> serde_json::Value {
    json_of(&agent.cli(&["status", "-o", "json"]))
}

/// The interface `name` as `status` lists it, if it does.
fn listed(agent: &Agent, name: &str) -> Option<serde_json::Value> {
    status(agent)["interfaces"].get(name).cloned()
}

fn pins_of(agent: &Agent, iface: &str) -> Vec<String> {
    link_pins(&agent.pins).into_iter().filter(|p| p.ends_with(&format!("@{iface}"))).collect()
}

/// A pod routed as one address per family (`10.77.0.N/32`, `fd77::N/128`).
fn host_pod(node: &PodNode, suffix: &str, n: u8) -> Pod {
    let (v4, v6) = (format!("10.77.0.{n}"), format!("fd77::{n:x}"));
    node.pod(suffix, (&v4, &format!("{v4}/32")), (&v6, &format!("{v6}/128")))
}

fn pod_a(node: &PodNode) -> Pod {
    host_pod(node, "a", 1)
}

/// Pod b is routed as small blocks (a /28, a /124), as CNIs that hand out blocks route pods.
fn pod_b(node: &PodNode) -> Pod {
    node.pod("b", ("10.77.0.18", "10.77.0.16/28"), ("fd77::18", "fd77::10/124"))
}

/// The routes of a pod, as `status` lists its sources: pod b's blocks, the others' addresses.
fn routes_of(pod: &Pod) -> Vec<String> {
    if pod.veth.ends_with('b') {
        vec!["10.77.0.16/28".into(), "fd77::10/124".into()]
    } else {
        vec![format!("{}/32", pod.v4), format!("{}/128", pod.v6)]
    }
}

/// Waits until `status` lists `pod`'s interface, guarded, with its routes (and the always
/// allowed link-local and unspecified sources) as sources; returns how long it took.
fn attached(agent: &Agent, pod: &Pod, since: Instant) -> Duration {
    let routes = routes_of(pod);
    let found = wait_for(WITHIN, || listed(agent, &pod.veth).is_some());
    assert!(found.is_some(), "{} was not attached within {WITHIN:?}:\n{}", pod.veth, agent.log());
    let took = since.elapsed();
    let i = listed(agent, &pod.veth).unwrap();
    assert_eq!(i["guarded"], true, "{i}");
    let sources: Vec<&str> = i["sources"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    for want in routes.iter().map(String::as_str).chain(["fe80::/10", "::/128"]) {
        // The route's source may be learned a moment after the attach (the route is added after
        // the veth): poll for it too.
        if !sources.contains(&want) {
            let ok = wait_for(WITHIN, || has_source(agent, &pod.veth, want));
            assert!(ok.is_some(), "{}: source {want} not learned: {i}", pod.veth);
        }
    }
    assert_eq!(pins_of(agent, &pod.veth).len(), 2, "{:?}", link_pins(&agent.pins));
    took
}

/// Whether `status` lists `iface` with the allowed source `prefix`.
fn has_source(agent: &Agent, iface: &str, prefix: &str) -> bool {
    listed(agent, iface).is_some_and(|i| i["sources"].as_array().unwrap().iter().any(|s| s == prefix))
}

/// A log line at warning level or above (the agent logs plain text).
fn warnings(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).collect()
}

#[test]
fn pods_are_attached_cleaned_up_and_adopted() {
    let node = PodNode::new();
    let dir = TempDir::new();
    let pattern = node.pattern();
    let args = ["--iface-pattern", pattern.as_str()];
    let agent = Agent::start_with(&node.ns, &[], Some(&dir.file("p.yaml", POLICY)), &args);
    assert!(status(&agent)["interfaces"].as_object().unwrap().is_empty(), "{}", status(&agent));

    // Pods appear after the agent started.
    let start = Instant::now();
    let a = pod_a(&node);
    let took_a = attached(&agent, &a, start);
    let start = Instant::now();
    let b = pod_b(&node);
    let took_b = attached(&agent, &b, start);
    println!("attached after the veth appeared: {took_a:?}, {took_b:?} (the pod's set-up included)");
    let servers_b = Servers::start(&b.ns, &[80], &[7000]);
    let _servers_a = Servers::start(&a.ns, &[81], &[]);

    // Enforced: a -> b 80/tcp and 7000/udp allowed (IPv4 and IPv6), b -> a denied at b's
    // interface.
    assert!(tcp_ok(&a.ns, b.v4, 80), "a -> b 80/tcp:\n{}", agent.log());
    assert!(tcp_ok(&a.ns, b.v6, 80), "a -> b [v6] 80/tcp:\n{}", agent.log());
    assert!(udp_ok(&a.ns, b.v4, 7000), "a -> b 7000/udp");
    assert!(!tcp_ok(&b.ns, a.v4, 81), "b -> a 81/tcp must be denied");
    let denied = agent.events(&["--verdict", "denied"]);
    assert!(
        denied.iter().any(|e| e["iface"] == b.veth.as_str() && e["dport"] == 81 && e["reason"] == "default"),
        "no denial at {}: {denied:?}",
        b.veth
    );

    // Pod c comes and goes: its pins and sources go with it; the agent runs on, quietly.
    let c = host_pod(&node, "c", 3);
    attached(&agent, &c, Instant::now());
    let c_index = node.ifindex(&c.veth);
    assert!(source_ifindexes(&agent.pins).contains(&c_index));
    node.ns.ip(&["link", "del", &c.veth]);
    let gone = wait_for(WITHIN, || pins_of(&agent, &c.veth).is_empty() && listed(&agent, &c.veth).is_none());
    assert!(gone.is_some(), "pins of {} left: {:?}\n{}", c.veth, link_pins(&agent.pins), agent.log());
    assert!(!source_ifindexes(&agent.pins).contains(&c_index), "sources of the deleted {} left", c.veth);
    assert!(tcp_ok(&a.ns, b.v4, 80), "the agent must run on after a pod went");
    assert_eq!(warnings(&agent.log()), Vec::<&str>::new(), "a pod going is no error");
    drop(c);

    // Pod d is there when the agent is killed and gone when it restarts; an established
    // connection a -> b goes on across the restart.
    let d = host_pod(&node, "d", 4);
    attached(&agent, &d, Instant::now());
    let d_index = node.ifindex(&d.veth);
    let mut held = hold_tcp(&a.ns, b.v4, 80);
    assert!(echoes(&mut held, ECHO));
    let agent = {
        let mut agent = agent;
        agent.kill();
        node.ns.ip(&["link", "del", &d.veth]);
        drop(d);
        // No agent: enforcement stays.
        assert!(!tcp_ok(&b.ns, a.v4, 81), "b -> a denied while no agent runs");
        assert!(echoes(&mut held, ECHO), "the established connection while no agent runs");
        assert_eq!(pins_of(&agent, &format!("{}d", node.prefix)).len(), 2, "the dead agent cannot clean up");
        agent.crash_and_restart_with(&node.ns, &[], &args)
    };
    for pod in [&a, &b] {
        let i = listed(&agent, &pod.veth).unwrap_or_else(|| panic!("{} not adopted: {}", pod.veth, status(&agent)));
        assert_eq!((i["ingress"].as_str(), i["egress"].as_str()), (Some("adopted"), Some("adopted")), "{i}");
    }
    let mut want: Vec<String> =
        [&a.veth, &b.veth].iter().flat_map(|v| [format!("tc-egress@{v}"), format!("xdp@{v}")]).collect();
    want.sort();
    assert_eq!(link_pins(&agent.pins), want, "only the present pods' pins");
    let indexes = source_ifindexes(&agent.pins);
    assert!(!indexes.contains(&d_index), "sources of {} (gone while no agent ran) left: {indexes:?}", d_index);
    assert_eq!(indexes, {
        let mut v = vec![node.ifindex(&a.veth), node.ifindex(&b.veth)];
        v.sort();
        v
    });
    assert!(echoes(&mut held, ECHO), "the established connection after the restart");
    assert!(tcp_ok(&a.ns, b.v4, 80), "a -> b after the restart");
    assert!(!tcp_ok(&b.ns, a.v4, 81), "b -> a still denied after the restart");
    // A pod created after the restart is attached too.
    let e = host_pod(&node, "e", 5);
    attached(&agent, &e, Instant::now());
    assert!(!tcp_ok(&e.ns, b.v4, 80), "e is in no segment: denied");

    // Renamed to a name the pattern matches, e's links stay (their pins follow the name);
    // renamed to one it does not match, they are removed.
    let rename = |from: &str, to: &str| {
        node.ns.ip(&["link", "set", from, "down"]);
        node.ns.ip(&["link", "set", from, "name", to]);
        node.ns.ip(&["link", "set", to, "up"]);
    };
    let (f, away) = (format!("{}f", node.prefix), format!("w{}", &e.veth[1..]));
    rename(&e.veth, &f);
    let moved = wait_for(WITHIN, || listed(&agent, &f).is_some() && pins_of(&agent, &e.veth).is_empty());
    assert!(moved.is_some(), "{}: {:?}\n{}", status(&agent), link_pins(&agent.pins), agent.log());
    assert_eq!(pins_of(&agent, &f).len(), 2, "{:?}", link_pins(&agent.pins));
    assert!(agent.log().contains("enforced interface renamed"), "the links were not kept:\n{}", agent.log());
    rename(&f, &away);
    let dropped = wait_for(WITHIN, || listed(&agent, &f).is_none() && pins_of(&agent, &f).is_empty());
    assert!(dropped.is_some(), "{}: {:?}", status(&agent), link_pins(&agent.pins));
    assert!(listed(&agent, &away).is_none() && pins_of(&agent, &away).is_empty());
    assert_eq!(warnings(&agent.log()), Vec::<&str>::new(), "renames are no error");
    drop(servers_b);
}

fn v4(a: IpAddr) -> [u8; 4] {
    match a {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(_) => panic!("not IPv4"),
    }
}

fn v6(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V6(a) => a.octets(),
        IpAddr::V4(_) => panic!("not IPv6"),
    }
}

#[test]
fn forged_sources_are_dropped_and_reported() {
    let node = PodNode::new();
    let dir = TempDir::new();
    let pattern = node.pattern();
    let agent = Agent::start_with(&node.ns, &[], Some(&dir.file("p.yaml", POLICY)), &["--iface-pattern", &pattern]);
    let (a, b) = (pod_a(&node), pod_b(&node));
    for pod in [&a, &b] {
        attached(&agent, pod, Instant::now());
    }
    let servers = Servers::start(&b.ns, &[], &[7000]);
    // The pod's own stack, from its real addresses: passes.
    assert!(udp_ok(&a.ns, b.v4, 7000) && udp_ok(&a.ns, b.v6, 7000), "a -> b 7000/udp:\n{}", agent.log());

    // Raw frames from pod a to pod b's 7000/udp, to the node's MAC on a's veth.
    let mac = node.mac(&a.veth);
    let me = [0x02, 0, 0, 0, 0, 0xaa];
    let send4 = |src: &str| {
        send_frame(&a.ns, "eth0", frame::udp4_frame(mac, me, v4(src.parse().unwrap()), v4(b.v4), 7000, b"spoof"))
    };
    let send6 = |src: &str| {
        send_frame(&a.ns, "eth0", frame::udp6_frame(mac, me, v6(src.parse().unwrap()), v6(b.v6), 7000, b"spoof"))
    };
    let delivered =
        |before: u64, n: u64| wait_for(Duration::from_secs(5), || servers.udp_count(7000) >= before + n).is_some();

    // The same frames from the real addresses are delivered: the frames are sound.
    let before = servers.udp_count(7000);
    send4("10.77.0.1");
    send6("fd77::1");
    assert!(
        delivered(before, 2),
        "real-source frames not delivered ({} of 2):\n{}",
        servers.udp_count(7000) - before,
        agent.log()
    );

    // Forged: an address of `trusted` (which the policy would let reach b), and b's own.
    let spoofed_before = agent.counter("drop_spoofed");
    let before = servers.udp_count(7000);
    let forged = ["10.77.0.70", "10.77.0.18", "fd77::41", "fd77::18"];
    for _ in 0..5 {
        send4(forged[0]);
        send4(forged[1]);
        send6(forged[2]);
        send6(forged[3]);
    }
    let counted = wait_for(WITHIN, || agent.counter("drop_spoofed") >= spoofed_before + 20);
    assert!(
        counted.is_some(),
        "drop_spoofed {} (before {spoofed_before}):\n{}",
        agent.counter("drop_spoofed"),
        agent.log()
    );
    // Give any that slipped through time to arrive: none may.
    send4("10.77.0.1");
    assert!(delivered(before, 1), "the real-source frame after the forged ones");
    assert_eq!(servers.udp_count(7000), before + 1, "a forged frame reached pod b");
    assert_eq!(agent.counter("drop_spoofed"), spoofed_before + 20, "exactly the forged frames are counted");

    let events = agent.events(&["--verdict", "denied"]);
    for src in forged {
        let e = events.iter().filter(|e| e["reason"] == "spoofed" && e["src"] == src).collect::<Vec<_>>();
        assert!(!e.is_empty(), "no spoofed event from {src}: {events:?}");
        assert!(e.iter().all(|e| e["iface"] == a.veth.as_str() && e["direction"] == "ingress"), "{e:?}");
        let count: u64 = e.iter().map(|e| e["count"].as_u64().unwrap()).sum();
        assert!((1..=5).contains(&count), "{src}: {count} packets reported of 5: {e:?}");
    }
    let total: u64 = wait_until_reported(&agent, &forged, 20);
    assert_eq!(total, 20, "every forged packet reported (aggregated)");

    // A link-local source passes the guard: it is judged by the policy (world -> pod b:
    // denied by default), not dropped as spoofed.
    let (spoofed, default) = (agent.counter("drop_spoofed"), agent.counter("drop_default"));
    send6("fe80::1234");
    let judged = wait_for(WITHIN, || agent.counter("drop_default") > default);
    assert!(judged.is_some(), "the link-local frame was not judged by the policy:\n{}", agent.log());
    assert_eq!(agent.counter("drop_spoofed"), spoofed, "a link-local source is not spoofed");

    // Routes are followed: without pod a's IPv4 route its real address is not allowed either;
    // with the route back, it is again.
    node.ns.ip(&["route", "del", "10.77.0.1/32", "dev", &a.veth]);
    assert!(wait_for(WITHIN, || !has_source(&agent, &a.veth, "10.77.0.1/32")).is_some(), "{}", status(&agent));
    let (spoofed, before) = (agent.counter("drop_spoofed"), servers.udp_count(7000));
    send4("10.77.0.1");
    assert!(
        wait_for(WITHIN, || agent.counter("drop_spoofed") > spoofed).is_some(),
        "no route, no source:\n{}",
        agent.log()
    );
    node.ns.ip(&["route", "add", "10.77.0.1/32", "dev", &a.veth]);
    assert!(wait_for(WITHIN, || has_source(&agent, &a.veth, "10.77.0.1/32")).is_some(), "{}", status(&agent));
    send4("10.77.0.1");
    assert!(delivered(before, 1), "the route is back: the real source passes again");
    assert_eq!(agent.counter("drop_spoofed"), spoofed + 1);

    // The metrics' outcome and the text status name the counter.
    let text = String::from_utf8_lossy(&agent.cli(&["status"]).stdout).into_owned();
    assert!(
        text.contains("drop_spoofed") && text.contains(&format!("interface {} (pattern {pattern}, guarded)", a.veth)),
        "{text}"
    );
}

/// The packets the spoofed events from `srcs` stand for, once they add up to `want` (the sweep
/// reports an aggregate's later packets within a few seconds), or what they add up to then.
fn wait_until_reported(agent: &Agent, srcs: &[&str], want: u64) -> u64 {
    let total = || -> u64 {
        agent
            .events(&["--verdict", "denied"])
            .iter()
            .filter(|e| e["reason"] == "spoofed" && srcs.iter().any(|s| e["src"] == *s))
            .map(|e| e["count"].as_u64().unwrap())
            .sum()
    };
    wait_for(WITHIN, || total() >= want);
    total()
}
