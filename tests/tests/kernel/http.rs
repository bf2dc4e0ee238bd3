//! HTTP on a declared port (issue 20): nginx serves payments on 8080, which the policy declares
//! `http`; curl and raw sockets from frontend send requests in every framing a server must
//! handle. Every request the server logged is reported exactly once, with its method, path and
//! status, and nothing is reported that it did not log; no connection is unparsable. The API
//! inventory counts them by endpoint.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use integration_tests::{Agent, Lan, Netns, TempDir, nginx::Nginx, wait_for};

const PORT: u16 = 8080;

const POLICY: &str = integration_tests::four_host_policy!(
    r#"rules:
  - { name: web, from: [frontend], to: [payments], ports: ["8080/tcp"], action: allow }
apis:
  - { name: payments-api, segment: payments, ports: ["8080/tcp"], protocol: http }
"#
);

/// `curl ARGS` in `ns`, asserting it succeeded.
fn curl(ns: &Netns, args: &[&str]) {
    let out = ns.exec(&[&["curl", "-sS", "-o", "/dev/null", "--max-time", "10"], args].concat());
    assert!(out.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Reads from `s` until `buf` holds a whole response to a request that was not HEAD (head, and
/// a body of the Content-Length it announces, or none), and removes it from `buf`.
fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().expect("content-length"));
            if buf.len() >= end + 4 + length {
                buf.drain(..end + 4 + length);
                return;
            }
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).expect("read response");
        assert!(n > 0, "connection closed before a whole response");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// One connection; request `k` (its request line `GET /split/k`) written in two segments split
/// after its byte `k`, for every byte position of the request.
fn split_at_every_byte(dst: SocketAddr) -> usize {
    let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(5)).expect("connect");
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();
    let len = "GET /split/00 HTTP/1.1\r\nHost: payments\r\n\r\n".len();
    for k in 1..len {
        let req = format!("GET /split/{k:02} HTTP/1.1\r\nHost: payments\r\n\r\n");
        s.write_all(&req.as_bytes()[..k]).unwrap();
        // Two segments: the first leaves before the second is written (Nagle is off).
        std::thread::sleep(Duration::from_millis(3));
        s.write_all(&req.as_bytes()[k..]).unwrap();
        read_response(&mut s, &mut buf);
    }
    len - 1
}

/// Three requests in one write (pipelined), the last closing the connection; read to the end.
fn pipelined(dst: SocketAddr) {
    let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = "name=value&more=1";
    let reqs = format!(
        "GET /pipe/1 HTTP/1.1\r\nHost: payments\r\n\r\n\
         POST /pipe/2 HTTP/1.1\r\nHost: payments\r\nContent-Length: {}\r\n\r\n{body}\
         POST /pipe/3 HTTP/1.1\r\nHost: payments\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: t\r\n\r\n",
        body.len()
    );
    s.write_all(reqs.as_bytes()).unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).expect("read pipelined responses");
    assert_eq!(String::from_utf8_lossy(&all).matches("HTTP/1.1 200").count(), 3, "{}", String::from_utf8_lossy(&all));
}

/// The request events' (method, path, status), sorted.
fn seen(agent: &Agent) -> Vec<(String, String, u16)> {
    let mut v: Vec<_> = agent
        .events(&[])
        .iter()
        .filter(|e| e["reason"] == "request")
        .map(|e| {
            let h = &e["http"];
            let s = |k: &str| h[k].as_str().unwrap_or_default().to_string();
            (s("method"), s("path"), h["status"].as_u64().unwrap_or(0) as u16)
        })
        .collect();
    v.sort();
    v
}

/// What the server logged, as the kernel reports it: the path without its query, at most 64
/// bytes of it.
fn logged(nginx: &Nginx) -> Vec<(String, String, u16)> {
    let mut v: Vec<_> = nginx
        .requests()
        .into_iter()
        .map(|(m, target, status)| {
            let path = target.split('?').next().unwrap_or_default();
            (m, path.chars().take(64).collect(), status)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn every_request_the_server_logs_is_seen_once_with_its_response() {
    let lan = Lan::four_hosts();
    let (pay, front) = (&lan.hosts[0], &lan.hosts[1]);
    let dir = TempDir::new();
    let agent = Agent::start(&pay.ns, &[&pay.iface], Some(&dir.file("p.yaml", POLICY)));
    let nginx = Nginx::start(&pay.ns, PORT);
    nginx.file("big.txt", &"all work and no play makes a dull log line\n".repeat(500));
    let base = format!("http://{}:{PORT}", pay.v4);
    let url = |p: &str| format!("{base}{p}");
    let payload = dir.file("body", &"x".repeat(3000));
    let payload = format!("@{}", payload.display());

    // Keep-alive: one connection, ten requests.
    let ten: Vec<String> = (0..10).map(|i| url(&format!("/ka/{i}"))).collect();
    curl(&front.ns, &ten.iter().map(String::as_str).collect::<Vec<_>>());
    // HEAD, a query, a 204, a 404, a path longer than the kernel keeps.
    curl(&front.ns, &["-I", &url("/head")]);
    curl(&front.ns, &[&url("/query?a=1&b=2")]);
    curl(&front.ns, &[&url("/empty")]);
    curl(&front.ns, &[&url("/files/missing")]);
    curl(&front.ns, &[&url(&format!("/long/{}", "a".repeat(100)))]);
    // Bodies: Content-Length, chunked, 100-continue; a gzip'ed (chunked) response; large headers.
    curl(&front.ns, &["--data-binary", &payload, &url("/post/length")]);
    curl(&front.ns, &["-H", "Transfer-Encoding: chunked", "--data-binary", &payload, &url("/post/chunked")]);
    curl(&front.ns, &["-H", "Expect: 100-continue", "--data-binary", &payload, &url("/post/expect")]);
    curl(&front.ns, &["--compressed", &url("/files/big.txt"), &url("/after-gzip")]);
    curl(&front.ns, &["-H", &format!("X-Large: {}", "h".repeat(6000)), &url("/large-header"), &url("/after-large")]);
    // Raw sockets: pipelining (with both body framings), and a request line split at every byte.
    let dst = SocketAddr::new(pay.v4, PORT);
    front.ns.run(move || pipelined(dst));
    let split = front.ns.run(move || split_at_every_byte(dst));

    let expected = 10 + 5 + 3 + 2 + 2 + 3 + split;
    let settled = wait_for(Duration::from_secs(10), || {
        nginx.requests().len() == expected && agent.counter("http_responses") as usize == expected
    });
    let logged = logged(&nginx);
    let seen = seen(&agent);
    assert!(settled.is_some(), "server logged {}, kernel matched {}", logged.len(), agent.counter("http_responses"));
    assert_eq!(seen, logged, "the request events are not what the server logged");
    assert_eq!(agent.counter("http_requests") as usize, expected);
    assert_eq!(agent.counter("http_unparsable"), 0);
    assert_eq!(agent.counter("events_lost"), 0);

    // What each event says beyond (method, path, status).
    let events = agent.events(&[]);
    let one = |path: &str| {
        events
            .iter()
            .find(|e| e["http"]["path"].as_str().is_some_and(|p| p.starts_with(path)))
            .unwrap_or_else(|| panic!("no event for {path}"))
            .clone()
    };
    let head = one("/head");
    assert_eq!(head["http"]["method"], "HEAD");
    assert_eq!(head["http"]["host"], format!("{}:{PORT}", pay.v4));
    assert_eq!((head["src_segment"].as_str(), head["dst_segment"].as_str()), (Some("frontend"), Some("payments")));
    assert_eq!(head["dport"], PORT);
    assert!(head["http"]["latency_us"].is_u64());
    assert_eq!(one("/long/")["http"]["path_truncated"], true);
    assert_eq!(one("/query")["http"]["path"], "/query");
    assert_eq!(one("/post/expect")["http"]["status"], 200);

    // The API inventory: the ten keep-alive requests are one endpoint by their route template,
    // called by frontend; the 404 is counted in its class.
    let out = agent.cli(&["api", "inventory", "-o", "json"]);
    assert!(out.status.success(), "api inventory: {}", String::from_utf8_lossy(&out.stderr));
    let inv: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ka = &inv["endpoints"][format!("payments:{PORT} GET /ka/{{id}}")];
    assert_eq!(ka["requests"], 10, "{inv:#}");
    assert_eq!(ka["callers"]["frontend"], 10, "{inv:#}");
    assert_eq!(ka["status"]["2xx"], 10, "{inv:#}");
    assert_eq!(inv["endpoints"][format!("payments:{PORT} GET /files/missing")]["status"]["4xx"], 1, "{inv:#}");
}

/// TLS and HTTP/2 on a port declared HTTP/1 are reported as such (not parse failures).
#[test]
fn tls_and_http2_on_a_declared_port_are_reported_as_such() {
    let lan = Lan::four_hosts();
    let (pay, front) = (&lan.hosts[0], &lan.hosts[1]);
    let dir = TempDir::new();
    let agent = Agent::start(&pay.ns, &[&pay.iface], Some(&dir.file("p.yaml", POLICY)));
    let _nginx = Nginx::start(&pay.ns, PORT);
    let dst = SocketAddr::new(pay.v4, PORT);
    for hello in [&b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03"[..], b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"] {
        let hello = hello.to_vec();
        front.ns.run(move || {
            let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(5)).expect("connect");
            s.write_all(&hello).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let _ = s.read(&mut [0u8; 256]);
        });
    }
    let reasons = || -> Vec<String> {
        let mut v: Vec<String> = agent
            .events(&[])
            .iter()
            .filter(|e| e["reason"] == "unparsable")
            .map(|e| e["http"]["unparsable"].as_str().unwrap_or_default().to_string())
            .collect();
        v.sort();
        v
    };
    let reported = wait_for(Duration::from_secs(5), || reasons().len() == 2);
    assert!(reported.is_some(), "events: {:?}", reasons());
    assert_eq!(reasons(), ["http2", "tls"]);
    assert_eq!(agent.counter("http_unparsable"), 0);
}
