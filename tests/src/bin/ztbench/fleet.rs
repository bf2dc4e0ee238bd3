//! Push-to-enforced latency across a fleet (`ztbench --fleet`, and the last section of the
//! default run): three host namespaces run agents with `--policy-source etcd://...` against one
//! etcd member started here (in a management namespace, as in the `fleet` tests); a client
//! namespace probes real TCP. Each of [`PUSHES`] pushes opens another port; its latency runs
//! from the start of `ztagent fleet push` (a process: validation, connect, transaction) until
//! all three hosts admit a connection to that port.
use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

use anyhow::{Result, bail, ensure};
use std::{
    io::Read,
    net::{IpAddr, SocketAddr, TcpStream},
};

use integration_tests::{Agent, Etcd, Netns, Servers, TempDir, fleet_lan, ports_policy};

pub const PUSHES: usize = 20;
const PORTS: [u16; 2] = [8443, 9443];

/// A connection from `ns` to `dst:port` gets the server's greeting. The harness's probe waits
/// 700 ms for a SYN the old policy drops, which would hide the latency measured here: this one
/// gives up after 10 ms and is simply tried again.
fn admits(ns: &Netns, dst: IpAddr, port: u16) -> bool {
    ns.run(move || {
        let Ok(mut s) = TcpStream::connect_timeout(&SocketAddr::new(dst, port), Duration::from_millis(10)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
        let mut buf = [0u8; 3];
        s.read_exact(&mut buf).is_ok() && &buf == b"hi\n"
    })
}

/// (median, max) in ms of [`PUSHES`] pushes, appended to `text` as a section.
pub fn push_to_enforced(text: &mut String) -> Result<(f64, f64)> {
    eprintln!("ztbench: fleet: three agents against one etcd, {PUSHES} pushes");
    let (lan, mgmt) = fleet_lan();
    let etcd = Etcd::start(&mgmt, 1);
    let url = etcd.url(&format!("ztbench/{}", std::process::id()));
    let files = TempDir::new();
    let push = |port: u16| -> Result<()> {
        let file = files.file(&format!("p{port}.yaml"), &ports_policy("10.20.2.0/24", &[port]));
        let out = mgmt.ztagent(&["fleet", "push", file.to_str().unwrap(), "--etcd", &url]);
        ensure!(out.status.success(), "fleet push: {}", String::from_utf8_lossy(&out.stderr).trim());
        Ok(())
    };
    let start = Instant::now();
    while push(PORTS[1]).is_err() {
        if start.elapsed() > Duration::from_secs(30) {
            bail!("etcd did not come up:\n{}", etcd.log());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _servers: Vec<Servers> = lan.hosts[1..].iter().map(|h| Servers::start(&h.ns, &PORTS, &[])).collect();
    let agents: Vec<Agent> = (0..3)
        .map(|i| {
            let h = &lan.hosts[i + 1];
            let name = format!("host{i}");
            Agent::start_with(&h.ns, &[&h.iface], None, &["--policy-source", &url, "--fleet-host", &name])
        })
        .collect();
    let reach = |i: usize, port| admits(&lan.hosts[0].ns, lan.hosts[i + 1].v4, port);
    let mut ms = Vec::new();
    for n in 0..PUSHES {
        let port = PORTS[n % 2];
        let t = Instant::now();
        push(port)?;
        for (i, agent) in agents.iter().enumerate() {
            while !reach(i, port) {
                if t.elapsed() > Duration::from_secs(30) {
                    bail!("host{i} did not enforce push {n} within 30 s:\n{}", agent.log());
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let mut sorted = ms.clone();
    sorted.sort_by(f64::total_cmp);
    let (median, max) = (sorted[PUSHES / 2], sorted[PUSHES - 1]);
    let _ = writeln!(
        text,
        "\nFleet over etcd (3 agents, 1 etcd member, {PUSHES} pushes): push-to-enforced at all three \
         hosts, from the start of `ztagent fleet push` to a connection admitted by each: median \
         {median:.0} ms, max {max:.0} ms."
    );
    Ok((median, max))
}
