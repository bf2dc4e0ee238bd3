//! The endpoint's counters against the traffic sent, `status` at the same moment and the event
//! stream; a tiny ring buffer's losses counted by both.
use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::PermissionsExt,
    time::{Duration, Instant},
};

use integration_tests::{Lan, Servers, TempDir, tcp_ok};
use serde_json::Value;

use super::{
    POLICY,
    events_file::{counts_by_verdict, file_matches_events, show},
    exposition::{
        assert_counters_agree, kernel_matches_events, same_moment, scrape, status, status_counters, status_limit,
    },
    is_igmp_chatter, metrics_flags, start,
    traffic::{denied_syns, pings, udp_send},
    unix_now,
};

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

    // Distinct denied flows, one datagram each: each first denial is an event (until the
    // per-flow budget is spent), far more than 4 KiB hold. The agent is frozen meanwhile, so that its reader cannot keep up however fast
    // it is.
    agent.freeze(true);
    udp_send(&attacker.ns, pay.v4, 20_000, FLOWS, true, false);
    agent.freeze(false);

    // Once the thawed agent has read what the ring kept (polled, up to 15 s: a busy machine
    // may make it late; it stops once the events' count no longer moves).
    let (mut tries, mut last) = (0, u64::MAX);
    let (m, s, attempts, lost, delivered, denied) = loop {
        tries += 1;
        std::thread::sleep(Duration::from_millis(500));
        let (m, s, attempts) = same_moment(&agent, &pay.ns);
        let lost = m.u("ztagent_events_lost_total", &[]);
        let delivered = m.u("ztagent_events_delivered_total", &[]);
        // Since the agent started (its maps are new): the flood, and the LAN's IGMP reports.
        let denied = m.u("ztagent_packets_total", &[("outcome", "drop_default")]);
        // Done when the ring is drained: the events' count stopped moving.
        if delivered + lost == last || tries == 30 {
            break (m, s, attempts, lost, delivered, denied);
        }
        last = delivered + lost;
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
    // Every event here is a denial and stands for one packet or more: each datagram of the
    // flood is the first of its flow, one event each until the CPU's per-flow budget (1,024 a
    // second) is spent, then aggregated per segment (see docs/operations.md#aggregation).
    assert!(
        delivered + lost <= denied && delivered + lost >= denied.min(1_000),
        "{delivered} events delivered + {lost} lost for {denied} packets denied"
    );
    assert!(
        denied - (counters["drop_default"] - before["drop_default"]) <= 8,
        "denials before the flood: only IGMP reports"
    );
    assert!(counted <= delivered && counted > 0, "{counted} packets counted from {delivered} events");
}
