//! A real Prometheus server (Debian's `prometheus`) in a test's namespace: its own configuration
//! and data directory, its web API on a loopback port chosen free there (never 9090, where a
//! system Prometheus would listen), killed by its pid and its files removed on drop.

use std::{
    fs::{self, File},
    process::{Child, Command},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::harness::{metrics::http_request_at, netns::Netns, util::TempDir};

/// A `prometheus` process scraping targets in one namespace.
pub struct Prometheus {
    child: Child,
    ns: String,
    /// Its web API's port on 127.0.0.1 in the namespace.
    pub port: u16,
    dir: TempDir,
}

impl Prometheus {
    /// A server in `ns` scraping `targets` (`host:port` as seen from `ns`) as job `job` every
    /// second. Panics when prometheus is not installed (`cargo xtask setup`).
    pub fn start(ns: &Netns, job: &str, targets: &[&str]) -> Prometheus {
        assert!(
            Command::new("prometheus").arg("--version").output().is_ok_and(|o| o.status.success()),
            "prometheus is not installed: run `cargo xtask setup` (Debian package prometheus)"
        );
        let dir = TempDir::new();
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: {job}\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        );
        let config = dir.file("prometheus.yml", &config);
        // A port nobody listens on in the test's own namespace (bound, then let go: nothing
        // else runs there to take it meanwhile).
        let port = ns.run(|| {
            std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free loopback port")
        });
        let port = port.port();
        let log = File::create(dir.0.join("prometheus.log")).expect("prometheus log");
        let child = Command::new("nsenter")
            .arg(format!("--net={}", ns.path()))
            .args(["--", "prometheus"])
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.0.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone().expect("prometheus log"))
            .stderr(log)
            .spawn()
            .expect("spawn prometheus");
        Prometheus { child, ns: ns.path(), port, dir }
    }

    /// `GET PATH` on the web API (a path with its query string, already encoded): the JSON
    /// document it answered, or why there is none (not up yet, an error status).
    pub fn get(&self, path: &str) -> Result<Value, String> {
        // HTTP/1.0: the answer is the whole body, closed by the server (no chunks).
        let raw = http_request_at(&self.ns, self.port, &format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n"))
            .map_err(|e| format!("GET {path}: {e}"))?;
        let (head, body) = raw.split_once("\r\n\r\n").ok_or_else(|| format!("GET {path}: no HTTP head in {raw:?}"))?;
        if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
            return Err(format!("GET {path}: {}\n{body}", head.lines().next().unwrap_or("")));
        }
        serde_json::from_str(body).map_err(|e| format!("GET {path}: not JSON ({e}): {body}"))
    }

    /// The `result` of an instant PromQL query (`/api/v1/query`): a vector's samples.
    pub fn query(&self, promql: &str) -> Result<Vec<Value>, String> {
        let v = self.get(&format!("/api/v1/query?query={}", percent_encode(promql)))?;
        if v["status"] != "success" {
            return Err(format!("{promql}: {v}"));
        }
        v["data"]["result"].as_array().cloned().ok_or_else(|| format!("{promql}: no result in {v}"))
    }

    /// Polls `f` (every 250 ms) until it returns Some, up to `within`; panics with `what`, the
    /// last error and Prometheus' log when it never does. A bound that only catches a server
    /// that never gets there, not a speed figure.
    pub fn wait_for<T>(&self, what: &str, within: Duration, mut f: impl FnMut(&Self) -> Result<T, String>) -> T {
        let deadline = Instant::now() + within;
        loop {
            let last = match f(self) {
                Ok(v) => return v,
                Err(e) => e,
            };
            if Instant::now() > deadline {
                panic!("{what}: not within {within:?}; last: {last}\nprometheus' log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// What the server logged, for failure messages.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.0.join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // By its pid; its data directory goes with `dir`.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A query string's value, percent-encoded (RFC 3986 unreserved characters kept).
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
