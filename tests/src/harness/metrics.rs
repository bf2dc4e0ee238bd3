//! The agent's metrics endpoint, read as a scraper reads it, and checked by Prometheus' own
//! linter (`promtool check metrics`).

use std::{
    io::Write as _,
    process::{Command, Output, Stdio},
    time::Duration,
};

use crate::harness::netns::{Netns, enter};

/// The `Accept` header Prometheus 2.x sends when it scrapes: OpenMetrics preferred.
pub const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,\
     application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// `GET /metrics` on 127.0.0.1:`port` from inside `ns` (where an agent serves its metrics),
/// without an `Accept` header (as curl or a plain scraper asks: the classic text format): the
/// raw HTTP response, head and body.
pub fn get_metrics(ns: &Netns, port: u16) -> std::io::Result<String> {
    get_metrics_accepting(ns, port, None)
}

/// As [`get_metrics`], with an `Accept` header when given.
pub fn get_metrics_accepting(ns: &Netns, port: u16, accept: Option<&str>) -> std::io::Result<String> {
    let accept = accept.map(|a| format!("Accept: {a}\r\n")).unwrap_or_default();
    let request = format!("GET /metrics HTTP/1.1\r\nHost: localhost\r\n{accept}Connection: close\r\n\r\n");
    http_request(ns, port, &request)
}

/// `request` written as is to 127.0.0.1:`port` in `ns`; everything read until the server
/// closes (the request must ask it to: `Connection: close`, or HTTP/1.0).
pub fn http_request(ns: &Netns, port: u16, request: &str) -> std::io::Result<String> {
    http_request_at(&ns.path(), port, request)
}

/// As [`http_request`], in the namespace at `ns_path` (`/var/run/netns/NAME`).
pub(crate) fn http_request_at(ns_path: &str, port: u16, request: &str) -> std::io::Result<String> {
    use std::io::Read;
    let (path, request) = (ns_path.to_string(), request.to_string());
    std::thread::spawn(move || {
        enter(&path);
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(request.as_bytes())?;
        let mut raw = String::new();
        s.read_to_string(&mut raw)?;
        Ok(raw)
    })
    .join()
    .expect("thread in namespace panicked")
}

/// A response's head and body; panics with the response when it has no end of head.
pub fn split_response(raw: &str) -> (&str, &str) {
    raw.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no end of the HTTP head in:\n{raw}"))
}

/// A header's value in a response head (name compared case-insensitively).
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// `promtool check metrics` (Prometheus' own parser and linter, Debian's `prometheus`) on
/// `exposition` given on its standard input; panics when promtool is not installed.
pub fn promtool_check_metrics(exposition: &str) -> Output {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run promtool ({e}): run `cargo xtask setup` (Debian package prometheus)"));
    let mut stdin = child.stdin.take().expect("promtool's stdin");
    stdin.write_all(exposition.as_bytes()).expect("write to promtool");
    drop(stdin);
    child.wait_with_output().expect("wait for promtool")
}
