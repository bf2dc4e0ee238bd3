//! Prometheus' own tools read the live endpoint: `promtool check metrics` passes on a scrape of
//! an agent that saw traffic (no warning), the classic text and OpenMetrics carry the same
//! samples, chosen by the `Accept` header as client libraries choose; a real Prometheus server
//! (Debian's) scrapes the agent and answers PromQL about it through its HTTP API.
use std::{collections::BTreeSet, time::Duration};

use integration_tests::{Lan, Prometheus, Servers, TempDir, promtool_check_metrics, tcp_ok};
use serde_json::Value;

use super::{
    METRICS_PORT, POLICY,
    exposition::{Metrics, kernel_matches_events, scrape, scrape_as},
    metrics_flags, start,
    traffic::{denied_syns, pings, udp_send},
};

/// Polls the endpoint (up to 15 s: a busy machine may delay the event reader) until the event
/// stream's counters add up to the kernel's; panics with the last difference.
fn settled(ns: &integration_tests::Netns) -> Metrics {
    for _ in 0..30 {
        let m = scrape(ns);
        if kernel_matches_events(&m).is_ok() {
            return m;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let m = scrape(ns);
    if let Err(e) = kernel_matches_events(&m) {
        panic!("the event counters never caught up with the kernel's: {e}\n{}", m.text);
    }
    m
}

/// Every sample's name and labels.
fn keys(m: &Metrics) -> BTreeSet<(String, Vec<(String, String)>)> {
    m.samples.keys().cloned().collect()
}

#[test]
fn promtool_passes_a_live_scrape_and_both_formats_carry_the_same_samples() {
    const N: usize = 3; // allowed TCP connections, frontend -> payments:443
    let lan = Lan::four_hosts();
    let (pay, front, batch, attacker) = (&lan.hosts[0], &lan.hosts[1], &lan.hosts[2], &lan.hosts[3]);
    let dir = TempDir::new();
    let agent = start(pay, &dir.file("p.yaml", POLICY), &metrics_flags(&[]));
    let _srv = Servers::start(&pay.ns, &[443], &[]);
    // Traffic of every kind, so that every family has samples and the counters are not zero:
    // allowed, denied, rate limited.
    for i in 0..N {
        assert!(tcp_ok(&front.ns, pay.v4, 443), "allowed connection {i} failed");
    }
    denied_syns(&front.ns, pay.v4, 22, 2);
    udp_send(&attacker.ns, pay.v4, 9999, 50, false, true);
    let (transmitted, received) = pings(&batch.ns, pay.v4, 6);
    assert!(received < transmitted, "{received} of {transmitted} pings passed a limit of burst 2");
    // Let the sweep report the aggregates' last packets, then take the settled counters.
    std::thread::sleep(Duration::from_millis(2500));
    let om = settled(&pay.ns);

    // What the default scrape (no Accept, as curl asks) gets: the classic text format.
    let text = scrape_as(&pay.ns, None, false);
    for (name, labels, at_least) in [
        ("ztagent_packets_total", &[("outcome", "pass_policy")][..], N as u64),
        ("ztagent_packets_total", &[("outcome", "drop_default")][..], 52),
        ("ztagent_packets_total", &[("outcome", "drop_rate_limit")][..], 1),
        (
            "ztagent_event_packets_total",
            &[("src_segment", "frontend"), ("dst_segment", "payments"), ("verdict", "allowed")][..],
            N as u64,
        ),
        ("ztagent_segment_packets_total", &[("segment", "batch"), ("outcome", "rate_limited")][..], 1),
        ("ztagent_rate_limit_dropped_packets_total", &[("limit", "batch-pings")][..], 1),
        ("ztagent_events_delivered_total", &[][..], 1),
        ("ztagent_policy_revision", &[][..], 1),
    ] {
        let v = text.u(name, labels);
        assert!(v >= at_least, "{name}{labels:?} = {v}, expected at least {at_least}:\n{}", text.text);
    }
    assert!(text.f("ztagent_policy_last_push_timestamp_seconds", &[]).is_some(), "{}", text.text);
    for family in ["ztagent_packets", "ztagent_event_packets", "ztagent_rate_limit_dropped_packets"] {
        let typed = format!("# TYPE {family}_total counter");
        assert!(text.text.lines().any(|l| l == typed), "no {typed:?} in:\n{}", text.text);
    }

    // The same samples in both formats; any text/plain the endpoint writes is the classic text.
    assert_eq!(keys(&text), keys(&om), "the classic text and OpenMetrics differ in their samples");
    let asked = scrape_as(&pay.ns, Some("text/plain;version=0.0.4;q=0.9,application/openmetrics-text;q=0.5"), false);
    assert_eq!(keys(&asked), keys(&text));
    scrape_as(&pay.ns, Some("application/openmetrics-text"), true);

    // Prometheus' linter: nothing to say (exit 0, no problem printed).
    let out = promtool_check_metrics(&text.text);
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("promtool check metrics on {} samples: {} {said:?}", text.samples.len(), out.status);
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics: {said}\non:\n{}", text.text);
    // ... and it does say something when there is something to say: a counter without HELP
    // text nor `_total` is reported.
    let bad = promtool_check_metrics("# TYPE ztagent_bad counter\nztagent_bad 1\n");
    let said = String::from_utf8_lossy(&bad.stderr).into_owned() + &String::from_utf8_lossy(&bad.stdout);
    assert!(!bad.status.success() && said.contains("no help text"), "promtool on a bad exposition: {said}");
    drop(agent);
}

/// The value of a one-sample PromQL answer.
fn only_value(result: &[Value], promql: &str) -> Result<String, String> {
    match result {
        [one] => one["value"][1].as_str().map(str::to_string).ok_or_else(|| format!("{promql}: no value in {one}")),
        [] => Err(format!("{promql}: no sample yet")),
        many => Err(format!("{promql}: {} samples: {many:?}", many.len())),
    }
}

#[test]
fn a_real_prometheus_scrapes_the_agent_and_answers_promql() {
    const N: usize = 4; // allowed TCP connections, frontend -> payments:443
    let lan = Lan::four_hosts();
    let (pay, front, attacker) = (&lan.hosts[0], &lan.hosts[1], &lan.hosts[3]);
    let dir = TempDir::new();
    let agent = start(pay, &dir.file("p.yaml", POLICY), &metrics_flags(&[]));
    let _srv = Servers::start(&pay.ns, &[443], &[]);
    for i in 0..N {
        assert!(tcp_ok(&front.ns, pay.v4, 443), "allowed connection {i} failed");
    }
    udp_send(&attacker.ns, pay.v4, 9999, 20, false, true);
    let m = settled(&pay.ns);
    // Nothing else is allowed here: the count stays at N whenever Prometheus scrapes.
    assert_eq!(m.u("ztagent_packets_total", &[("outcome", "pass_policy")]), N as u64);

    // Prometheus in the agent's namespace, scraping its loopback endpoint every second.
    let target = format!("127.0.0.1:{METRICS_PORT}");
    let prom = Prometheus::start(&pay.ns, "ztagent", &[&target]);
    // The first scrape: until it lands, `up` has no sample (a generous bound, not a speed figure).
    let up = prom.wait_for("the first scrape of the agent", Duration::from_secs(90), |p| {
        only_value(&p.query("up{job=\"ztagent\"}")?, "up")
    });
    let targets = prom.get("/api/v1/targets").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(up, "1", "Prometheus could not scrape the agent: {targets}\n{}", prom.log());
    let target = &targets["data"]["activeTargets"][0];
    assert_eq!(target["health"], "up", "{targets}");
    assert_eq!(target["lastError"], "", "{targets}");
    eprintln!("prometheus on 127.0.0.1:{} scraped {target}", prom.port);

    // PromQL about the agent: the allowed connections, and the denied datagrams.
    let q = "ztagent_packets_total{job=\"ztagent\",outcome=\"pass_policy\"}";
    assert_eq!(only_value(&prom.query(q).unwrap_or_else(|e| panic!("{e}")), q).unwrap(), N.to_string());
    let q = "sum(ztagent_event_packets_total{job=\"ztagent\",src_segment=\"world\",dst_segment=\"payments\"})";
    let denied: u64 = only_value(&prom.query(q).unwrap_or_else(|e| panic!("{e}")), q).unwrap().parse().unwrap();
    assert_eq!(denied, 20, "{q}");
    let q = "ztagent_packets_total{job=\"ztagent\"} > 0";
    let nonzero = prom.query(q).unwrap_or_else(|e| panic!("{e}"));
    assert!(nonzero.len() >= 2, "{q}: {nonzero:?}");

    // What Prometheus learnt of each family: a HELP text for all, and the unit that only
    // OpenMetrics carries (so it negotiated OpenMetrics, as it prefers).
    let meta = prom.wait_for("the families' metadata", Duration::from_secs(30), |p| {
        let v = p.get("/api/v1/metadata")?;
        let ours: Vec<(String, Value)> = v["data"]
            .as_object()
            .map(|o| o.iter().filter(|(k, _)| k.starts_with("ztagent_")).map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        if ours.is_empty() { Err(format!("no ztagent metadata in {v}")) } else { Ok(ours) }
    });
    eprintln!("metadata of {} families", meta.len());
    for (name, entries) in &meta {
        let help = entries[0]["help"].as_str().unwrap_or("");
        assert!(!help.is_empty(), "{name} has no HELP text in Prometheus: {entries}");
    }
    let pushed = meta
        .iter()
        .find(|(k, _)| k == "ztagent_policy_last_push_timestamp_seconds")
        .unwrap_or_else(|| panic!("no metadata of the last push time: {meta:?}"));
    assert_eq!(pushed.1[0]["unit"], "seconds", "{pushed:?}");
    drop(prom);
    drop(agent);
}
