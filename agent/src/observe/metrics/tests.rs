use std::{collections::BTreeSet, sync::Arc};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::*;

fn scrape() -> Scrape {
    Scrape {
        counters: agent_common::counter::NAMES.iter().enumerate().map(|(i, n)| (*n, i as u64 * 10)).collect(),
        events_delivered: 7,
        limits: vec![LimitCounts { name: "batch-pings".into(), packets_passed: 12, packets_dropped: 3 }],
        revision: 4,
        last_push: Some(1_700_000_000.5),
        segments: vec![("frontend".into(), [5, 1, 2])],
        inventory: (42, 3),
        api_endpoints: (5, 1),
        api_requests: vec![
            (("payments".into(), 8080, "GET".into(), "/v1/payments/{id}".into(), "2xx"), 9),
            (("payments".into(), 8080, "GET".into(), "other".into(), "5xx"), 2),
        ],
        grants: 2,
        fleet: Some((false, 12)),
    }
}

fn counters() -> EventCounters {
    let counters = EventCounters::default();
    counters.record("frontend", "payments", "allowed", 1);
    counters.record("frontend", "payments", "allowed", 2);
    counters.record("world", "payments", "denied", 40);
    counters
}

fn exposition(format: Format) -> String {
    let fill = vec![MapFill { map: agent_common::maps::CONNTRACK, entries: 2, capacity: 262_144 }];
    encode(scrape(), fill, &counters().registry(), format).unwrap()
}

/// The samples every exposition holds, whatever its format.
const SAMPLES: &[&str] = &[
    r#"ztagent_packets_total{outcome="pass_tracked"} 0"#,
    r#"ztagent_packets_total{outcome="drop_rate_limit"} 120"#,
    "ztagent_events_lost_total 130",
    "ztagent_events_delivered_total 7",
    r#"ztagent_rate_limit_dropped_packets_total{limit="batch-pings"} 3"#,
    r#"ztagent_rate_limit_passed_packets_total{limit="batch-pings"} 12"#,
    r#"ztagent_segment_packets_total{segment="frontend",outcome="rate_limited"} 2"#,
    r#"ztagent_map_entries{map="ZT_CT"} 2"#,
    r#"ztagent_map_capacity{map="ZT_CT"} 262144"#,
    "ztagent_policy_revision 4",
    "ztagent_inventory_entries 42",
    "ztagent_inventory_evicted_total 3",
    "ztagent_grants 2",
    "ztagent_api_endpoints 5",
    "ztagent_api_endpoints_evicted_total 1",
    r#"ztagent_api_requests_total{dst_segment="payments",port="8080",method="GET",route="/v1/payments/{id}",status_class="2xx"} 9"#,
    r#"ztagent_api_requests_total{dst_segment="payments",port="8080",method="GET",route="other",status_class="5xx"} 2"#,
    "ztagent_policy_last_push_timestamp_seconds 1700000000.5",
    "ztagent_fleet_connected 0",
    "ztagent_fleet_revision 12",
    r#"ztagent_event_packets_total{src_segment="frontend",dst_segment="payments",verdict="allowed"} 3"#,
    r#"ztagent_event_packets_total{src_segment="world",dst_segment="payments",verdict="denied"} 40"#,
];

/// Each family described once, with a HELP text.
fn assert_described_once(text: &str) {
    let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
    let unique: BTreeSet<&str> = types.iter().copied().collect();
    assert_eq!(types.len(), unique.len(), "{text}");
    let helps = text.lines().filter(|l| l.starts_with("# HELP ") && l.split(' ').nth(3).is_some()).count();
    assert_eq!(helps, types.len(), "a family without HELP text:\n{text}");
}

#[test]
fn the_openmetrics_exposition_names_every_metric() {
    let text = exposition(Format::OpenMetrics);
    for line in SAMPLES.iter().chain(&[
        "# TYPE ztagent_packets counter",
        "# TYPE ztagent_map_entries gauge",
        "# UNIT ztagent_policy_last_push_timestamp_seconds seconds",
    ]) {
        assert!(text.lines().any(|l| l == *line), "missing {line:?} in:\n{text}");
    }
    assert!(!text.contains(r#"outcome="events_lost""#), "{text}");
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert_described_once(&text);
}

#[test]
fn the_classic_text_exposition_names_every_metric_and_types_it_by_its_sample_name() {
    let text = exposition(Format::Text);
    for line in SAMPLES.iter().chain(&[
        "# TYPE ztagent_packets_total counter",
        "# HELP ztagent_packets_total Packets by outcome, summed over CPUs, since the pinned maps were created.",
        "# TYPE ztagent_event_packets_total counter",
        "# TYPE ztagent_map_entries gauge",
        "# TYPE ztagent_policy_last_push_timestamp_seconds gauge",
    ]) {
        assert!(text.lines().any(|l| l == *line), "missing {line:?} in:\n{text}");
    }
    assert!(!text.contains("# EOF") && !text.contains("# UNIT"), "OpenMetrics only:\n{text}");
    assert_described_once(&text);
    // In the classic format a sample's name is its family's: every sample has its TYPE and HELP.
    let typed: BTreeSet<&str> = text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()).collect();
    let helped: BTreeSet<&str> = text.lines().filter_map(|l| l.strip_prefix("# HELP ")?.split(' ').next()).collect();
    for sample in text.lines().filter(|l| !l.starts_with('#')) {
        let name = sample.split(['{', ' ']).next().unwrap_or("");
        assert!(typed.contains(name) && helped.contains(name), "{name} has no TYPE or HELP of its own:\n{text}");
    }
}

#[test]
fn no_policy_no_push_time_no_limits() {
    for format in [Format::Text, Format::OpenMetrics] {
        let s = Scrape { last_push: None, limits: vec![], revision: 0, ..scrape() };
        let text = encode(s, vec![], &EventCounters::default().registry(), format).unwrap();
        assert!(text.contains("ztagent_policy_revision 0\n"), "{text}");
        assert!(!text.contains("last_push"), "{text}");
        assert!(!text.contains("ztagent_rate_limit"), "{text}");
        assert!(!text.contains("ztagent_event_packets"), "an empty family is left out:\n{text}");
    }
}

#[test]
fn negotiation_follows_the_accept_header_as_client_libraries_do() {
    use Format::{OpenMetrics, Text};
    // What Prometheus 2.x sends, and its OpenMetrics-only and text-only scrape protocols.
    let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,\
                      text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    for (accept, want) in [
        (None, Text),
        (Some(""), Text),
        (Some("*/*"), Text),
        (Some("text/plain"), Text),
        (Some("text/plain; version=0.0.4"), Text),
        (Some(prometheus), OpenMetrics),
        (Some("application/openmetrics-text"), OpenMetrics),
        (Some("Application/OpenMetrics-Text; Version=\"1.0.0\""), OpenMetrics),
        (Some("application/openmetrics-text; version=0.0.1"), OpenMetrics),
        // A version this endpoint does not write is not taken.
        (Some("application/openmetrics-text; version=2.0.0"), Text),
        // Quality decides, not the order written; q=0 refuses.
        (Some("text/plain;q=0.5, application/openmetrics-text"), OpenMetrics),
        (Some("application/openmetrics-text;q=0.3, text/plain;version=0.0.4;q=0.9"), Text),
        (Some("application/openmetrics-text;q=0, text/plain;q=0.1"), Text),
        (Some("application/openmetrics-text;q=0"), Text),
        (Some("application/json, application/openmetrics-text;q=0.2"), OpenMetrics),
        (Some("application/openmetrics-text;q=bad"), Text),
    ] {
        assert_eq!(Format::negotiate(accept), want, "Accept: {accept:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// The endpoint itself, on loopback: axum and hyper as the agent runs them.

async fn endpoint(read: Result<Scrape, &'static str>) -> std::net::SocketAddr {
    let listener = bind(([127, 0, 0, 1], 0).into()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let exporter = Exporter::new(&counters(), Vec::new, move || read.clone().map_err(ReadError::from));
    tokio::spawn(serve(listener, Arc::new(exporter)));
    addr
}

/// One raw request; the whole response (the request asks the server to close).
async fn request(addr: std::net::SocketAddr, head: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(30), s.read_to_end(&mut out)).await.unwrap().unwrap();
    String::from_utf8(out).unwrap()
}

fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    let head = response.split("\r\n\r\n").next()?;
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test]
async fn the_endpoint_serves_both_formats_by_the_accept_header() {
    let addr = endpoint(Ok(scrape())).await;
    let text = request(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert_eq!(header(&text, "content-type"), Some("text/plain; version=0.0.4; charset=utf-8"), "{text}");
    assert_eq!(header(&text, "vary"), Some("Accept"), "{text}");
    let body = text.split_once("\r\n\r\n").unwrap().1;
    assert_eq!(header(&text, "content-length"), Some(body.len().to_string().as_str()), "{text}");
    assert!(body.contains("# TYPE ztagent_packets_total counter\n") && !body.contains("# EOF"), "{body}");

    let om = request(
        addr,
        "GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n\
         Connection: close\r\n\r\n",
    )
    .await;
    assert!(om.starts_with("HTTP/1.1 200 OK\r\n"), "{om}");
    assert_eq!(header(&om, "content-type"), Some("application/openmetrics-text; version=1.0.0; charset=utf-8"));
    assert!(om.ends_with("# EOF\n") && om.contains("# TYPE ztagent_packets counter\n"), "{om}");

    // HTTP/1.0 as a plain client writes it: answered and closed.
    let old = request(addr, "GET /metrics HTTP/1.0\r\n\r\n").await;
    assert!(old.starts_with("HTTP/1.0 200 OK\r\n") && old.contains("ztagent_grants 2\n"), "{old}");
}

#[tokio::test]
async fn head_other_methods_and_paths() {
    let addr = endpoint(Ok(scrape())).await;
    let head = request(addr, "HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n") && head.ends_with("\r\n\r\n"), "{head}");
    let post =
        request(addr, "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
    assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
    let allow = header(&post, "allow").unwrap_or_else(|| panic!("no Allow in {post}"));
    assert!(allow.contains("GET") && allow.contains("HEAD"), "{post}");
    for path in ["/", "/metricsx", "/metrics/x"] {
        let r = request(addr, &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")).await;
        assert!(r.starts_with("HTTP/1.1 404 ") && r.ends_with("metrics are at /metrics\n"), "{path}: {r}");
    }
    let garbage = request(addr, "garbage\r\n\r\n").await;
    assert!(garbage.starts_with("HTTP/1.1 400 "), "{garbage}");
    let huge = format!("GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n", "a".repeat(20_000));
    assert!(request(addr, &huge).await.starts_with("HTTP/1.1 431 "), "a request head over the limit");
}

#[tokio::test]
async fn a_failed_read_is_a_500_in_one_sentence() {
    let addr = endpoint(Err("the pinned maps are gone")).await;
    let r = request(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 500 "), "{r}");
    assert!(r.ends_with("\r\n\r\ncannot read the agent's counters: the pinned maps are gone\n"), "{r}");
}
