//! nginx (Debian's) as the HTTP server of a test, in a namespace: one process (no master), its
//! own configuration, pid, logs and temporary directories in a directory of the test; its access
//! log has one line per request: `METHOD REQUEST_URI STATUS`. Killed on drop.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::harness::netns::Netns;
use crate::harness::util::{TempDir, wait_for};

/// The body every `/` request gets: `ok\n`.
pub const OK_BODY: &str = "ok\n";

pub struct Nginx {
    child: Child,
    dir: TempDir,
}

impl Nginx {
    /// nginx listening on `port` of every address of `ns`:
    /// - `/` and anything not below: 200 `ok\n` (Content-Length), the request body read and
    ///   discarded;
    /// - `/files/...`: static files from [`Nginx::file`]'s directory (404 when missing; gzip,
    ///   chunked, when the client accepts it);
    /// - `/empty`: 204.
    pub fn start(ns: &Netns, port: u16) -> Nginx {
        let dir = TempDir::new();
        let d = dir.0.to_str().expect("utf-8 path").to_string();
        std::fs::create_dir_all(format!("{d}/files")).expect("mkdir");
        let conf = format!(
            r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 512; }}
http {{
    log_format zt '$request_method $request_uri $status';
    access_log {d}/access.log zt;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 100000;
    large_client_header_buffers 4 16k;
    default_type text/plain;
    server {{
        listen {port};
        location / {{ return 200 "{body}"; }}
        location /files/ {{
            root {d};
            gzip on;
            gzip_min_length 1;
            gzip_types text/plain;
        }}
        location = /empty {{ return 204; }}
    }}
}}
"#,
            body = OK_BODY.replace('\n', "\\n"),
        );
        let conf_path = dir.file("nginx.conf", &conf);
        let child = Command::new("nsenter")
            .arg(format!("--net={}", ns.path()))
            .args(["--", "nginx", "-c"])
            .arg(&conf_path)
            .args(["-p", &d])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nginx: is Debian's nginx installed? (`cargo xtask setup` installs it)");
        let nginx = Nginx { child, dir };
        let up = wait_for(Duration::from_secs(10), || {
            !ns.exec(&["ss", "-Htln", &format!("sport = :{port}")]).stdout.is_empty()
        });
        assert!(up.is_some(), "nginx did not listen on {port}: {}", nginx.error_log());
        nginx
    }

    /// Writes a static file served at `/files/NAME`.
    pub fn file(&self, name: &str, contents: &str) {
        std::fs::write(self.dir.0.join("files").join(name), contents).expect("write file");
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("error.log")).unwrap_or_default()
    }

    /// The access log: (method, request-target, status) per request, in order.
    pub fn requests(&self) -> Vec<(String, String, u16)> {
        let log: PathBuf = self.dir.0.join("access.log");
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let mut f = l.split(' ');
                let (m, t, s) = (f.next(), f.next(), f.next());
                match (m, t, s.and_then(|s| s.parse().ok())) {
                    (Some(m), Some(t), Some(s)) => (m.to_string(), t.to_string(), s),
                    _ => panic!("access log line {l:?}"),
                }
            })
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
