//! etcd members a fleet test starts in the management namespace (plain or TLS).

use std::{
    fs::{self, File},
    path::PathBuf,
    process::{Child, Command},
};

use crate::harness::topology::{ETCD_ADDR, Mgmt};
use crate::harness::util::{TempDir, sh};

/// etcd members started by a test in the management namespace, each with its data directory in
/// a [`TempDir`]; killed (by pid) on drop. Member `i` serves clients on ETCD_ADDR:2379+10000*i.
pub struct Etcd {
    members: Vec<Option<Child>>,
    dir: TempDir,
    ns_path: String,
    size: usize,
    /// TLS: the directory of [`EtcdCerts`]; clients must then present a certificate too.
    tls: Option<PathBuf>,
}

/// A CA, a member certificate for ETCD_ADDR and a client certificate (openssl), in a TempDir:
/// `ca.pem`, `server.pem`/`server-key.pem`, `client.pem`/`client-key.pem`.
pub struct EtcdCerts(pub TempDir);

impl EtcdCerts {
    pub fn new() -> EtcdCerts {
        let d = TempDir::new();
        let p = |n: &str| d.0.join(n).to_str().unwrap().to_string();
        sh(&[
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &p("ca-key.pem"),
            "-out",
            &p("ca.pem"),
            "-days",
            "1",
            "-subj",
            "/CN=ztagent-test-ca",
        ]);
        for (name, ext) in [
            ("server", format!("subjectAltName=IP:{ETCD_ADDR}\nextendedKeyUsage=serverAuth\n")),
            ("client", "extendedKeyUsage=clientAuth\n".to_string()),
        ] {
            let ext_file = d.file(&format!("{name}.ext"), &ext);
            let key = p(&format!("{name}-key.pem"));
            let csr = p(&format!("{name}.csr"));
            sh(&[
                "openssl",
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={name}"),
            ]);
            sh(&[
                "openssl",
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &p("ca.pem"),
                "-CAkey",
                &p("ca-key.pem"),
                "-CAcreateserial",
                "-out",
                &p(&format!("{name}.pem")),
                "-days",
                "1",
                "-extfile",
                ext_file.to_str().unwrap(),
            ]);
        }
        EtcdCerts(d)
    }

    pub fn path(&self, name: &str) -> String {
        self.0.0.join(name).to_str().unwrap().to_string()
    }
}

impl Default for EtcdCerts {
    fn default() -> Self {
        Self::new()
    }
}

impl Etcd {
    /// A cluster of `size` members; panics if etcd is not installed (`cargo xtask setup`).
    pub fn start(mgmt: &Mgmt, size: usize) -> Etcd {
        assert!(
            Command::new("etcd").arg("--version").output().is_ok_and(|o| o.status.success()),
            "etcd is not installed: run `cargo xtask setup` (Debian package etcd-server)"
        );
        Self::start_with(mgmt, size, None)
    }

    /// One member speaking only TLS with client certificates (`certs`).
    pub fn start_tls(mgmt: &Mgmt, certs: &EtcdCerts) -> Etcd {
        Self::start_with(mgmt, 1, Some(certs.0.0.clone()))
    }

    fn start_with(mgmt: &Mgmt, size: usize, tls: Option<PathBuf>) -> Etcd {
        let members = (0..size).map(|_| None).collect();
        let mut e = Etcd { members, dir: TempDir::new(), ns_path: mgmt.ns.path(), size, tls };
        for i in 0..size {
            e.start_member(i);
        }
        e
    }

    pub fn client_port(i: usize) -> u16 {
        2379 + 10_000 * i as u16
    }

    /// etcd://members/PREFIX, all members.
    pub fn url(&self, prefix: &str) -> String {
        let members: Vec<String> = (0..self.size).map(|i| format!("{ETCD_ADDR}:{}", Self::client_port(i))).collect();
        format!("etcd://{}/{prefix}", members.join(","))
    }

    /// Starts member `i` again (on its data directory, if it ran before).
    pub fn start_member(&mut self, i: usize) {
        let peer = |i: usize| format!("http://{ETCD_ADDR}:{}", Self::client_port(i) + 1);
        let cluster: Vec<String> = (0..self.size).map(|j| format!("m{j}={}", peer(j))).collect();
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://{ETCD_ADDR}:{}", Self::client_port(i));
        let mut tls = Vec::new();
        if let Some(d) = &self.tls {
            for (flag, file) in
                [("--cert-file", "server.pem"), ("--key-file", "server-key.pem"), ("--trusted-ca-file", "ca.pem")]
            {
                tls.push(flag.to_string());
                tls.push(d.join(file).to_str().unwrap().to_string());
            }
            tls.push("--client-cert-auth".into());
        }
        let data = self.dir.0.join(format!("m{i}"));
        let log = File::create(self.dir.0.join(format!("m{i}.log"))).unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.ns_path))
            .args(["--", "etcd", "--name", &format!("m{i}"), "--data-dir"])
            .arg(&data)
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer(i), "--initial-advertise-peer-urls", &peer(i)])
            .args(["--initial-cluster", &cluster.join(","), "--initial-cluster-token", &self.ns_path])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(&tls)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        self.members[i] = Some(child);
    }

    /// Kills member `i` (SIGKILL, by its pid).
    pub fn kill_member(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills every member.
    pub fn stop(&mut self) {
        for i in 0..self.size {
            self.kill_member(i);
        }
    }

    /// Starts every member that is not running.
    pub fn restart(&mut self) {
        for i in 0..self.size {
            if self.members[i].is_none() {
                self.start_member(i);
            }
        }
    }

    /// The members' logs, for failure messages.
    pub fn log(&self) -> String {
        (0..self.size).map(|i| fs::read_to_string(self.dir.0.join(format!("m{i}.log"))).unwrap_or_default()).collect()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
