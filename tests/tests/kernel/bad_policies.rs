//! Hostile input, online: a running agent refuses every input of the bad-policy corpus
//! ([`crate::bad_policy_corpus`]; `validate`'s offline refusals are `cli::bad_policies`'), both
//! through `ztagent policy push FILE` and straight through its control socket (bypassing the
//! CLI's own check: the agent trusts no client), with the message `validate` prints; afterwards
//! the policy and its revision are exactly as before and the agent is alive and answering.
//! While the huge ones are pushed, another client is still served (its requests are answered
//! while the push is in flight) and the agent's memory (`/proc/PID/status`) stays bounded.
//!
//! Times are printed, never judged: how fast inputs are refused is `cargo xtask bench`'s.
//!
//! Every input is tried before failing, so one run lists every problem at once.

use std::{
    fs,
    io::{Read, Write},
    os::unix::net::UnixStream,
    path::Path,
    sync::Arc,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use crate::bad_policy_corpus::*;
use integration_tests::{Agent, Lan, TempDir};
use ztagent::api::{Reply, Request};

/// The responsiveness property: while a push is being refused, the agent keeps serving other
/// clients. It is observed, not timed: when a push takes at least [`OBSERVABLE`], some status
/// request sent after it must have been answered before it was (a daemon that handles one
/// request at a time would answer none). [`STALL`] is only a generous bound on any single
/// status answer (a stall detector, far above a status round trip on a busy machine).
const OBSERVABLE: Duration = Duration::from_secs(2);
/// The longest any status answer may take while a push is refused (see [`OBSERVABLE`]).
const STALL: Duration = Duration::from_secs(10);
/// How much a single refused push may raise the agent's peak resident memory (the largest
/// request it reads is `MAX_REQUEST`, 64 MiB).
const MAX_PEAK_GROWTH_KB: u64 = 512 * 1024;
/// How much resident memory all the refused pushes together may leave behind.
const MAX_KEPT_GROWTH_KB: u64 = 256 * 1024;

/// The policy in force while the bad ones are pushed.
const GOOD: &str = r#"version: 1
defaultAction: deny
segments:
  frontend: { cidrs: [10.20.1.0/24, "fd20:1::/64"] }
  payments: { cidrs: [10.20.2.10/32, "fd20:2::10/128"] }
rules:
  - name: web
    from: [frontend]
    to: [payments]
    ports: ["443/tcp", "8000-8099/tcp"]
    action: allow
rateLimits:
  - name: frontend-to-payments
    from: frontend
    to: [payments]
    packets: { rate: 2000, per: second, burst: 400 }
"#;

/// `VmRSS` and `VmHWM` of a process, in kB.
fn memory(pid: u32) -> (u64, u64) {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Resets the peak (`VmHWM`) to the current resident size.
fn reset_peak(pid: u32) {
    let _ = fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| !rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

/// Sends one raw request line to the agent's socket; returns its reply and how long it took.
fn raw(socket: &Path, line: &[u8]) -> Result<(Reply, Duration), String> {
    let start = Instant::now();
    let mut s = UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(HARD_LIMIT)).unwrap();
    s.set_write_timeout(Some(HARD_LIMIT)).unwrap();
    // The agent may stop reading an over-long request and answer at once: a failed write is
    // fine as long as its answer can be read.
    let _ = s.write_all(line).and_then(|_| s.write_all(b"\n"));
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let took = start.elapsed();
    let first = answer.split(|b| *b == b'\n').next().unwrap_or_default();
    if first.is_empty() {
        return Err(format!("no answer after {took:?}"));
    }
    let reply = serde_json::from_slice(first)
        .map_err(|e| format!("unreadable answer ({e}): {}", short(&String::from_utf8_lossy(first), 300)))?;
    Ok((reply, took))
}

fn policy_get(agent: &Agent) -> serde_json::Value {
    let out = agent.cli(&["policy", "get", "-o", "json"]);
    assert!(out.status.success(), "policy get failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn kernel_revision(agent: &Agent) -> u64 {
    let out = agent.cli(&["status", "-o", "json"]);
    assert!(out.status.success(), "status failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["revision"].as_u64().unwrap()
}

/// How another client fared while `work` ran.
struct Polled {
    /// The slowest status answer.
    slowest: Duration,
    /// Status requests sent after `work` started and answered before it ended.
    inside: usize,
    /// How long `work` ran.
    work: Duration,
}

/// While `work` runs, asks the agent for its status every 50 ms; returns `work`'s result and
/// how the status requests fared (or the first failure).
fn while_polling<T>(socket: &Path, work: impl FnOnce() -> T) -> (T, Result<Polled, String>) {
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (stop, socket) = (stop.clone(), socket.to_path_buf());
        let status = serde_json::to_vec(&Request::Status).unwrap();
        std::thread::spawn(move || {
            // (sent, answered) of every status request.
            let mut answers = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                match raw(&socket, &status) {
                    Ok((Reply::Status(_), _)) => answers.push((sent, Instant::now())),
                    Ok((other, _)) => return Err(format!("status answered {other:?}")),
                    Err(e) => return Err(format!("status: {e}")),
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(answers)
        })
    };
    let start = Instant::now();
    let result = work();
    let end = Instant::now();
    stop.store(true, Ordering::Relaxed);
    let polled = poller.join().unwrap().map(|answers: Vec<(Instant, Instant)>| Polled {
        slowest: answers.iter().map(|(s, a)| *a - *s).max().unwrap_or_default(),
        inside: answers.iter().filter(|(s, a)| *s >= start && *a <= end).count(),
        work: end - start,
    });
    (result, polled)
}

#[test]
fn pushing_bad_policies_changes_nothing() {
    let lan = Lan::new(&[("10.20.2.10", "fd20:2::10")]);
    let host = &lan.hosts[0];
    let dir = TempDir::new();
    let agent = Agent::start(&host.ns, &[&host.iface], Some(&dir.file("good.yaml", GOOD)));
    let pid = agent.pid();
    assert_eq!(
        fs::read_to_string(format!("/proc/{pid}/comm")).unwrap().trim(),
        "ztagent",
        "Agent::pid is not the daemon"
    );
    let before = policy_get(&agent);
    assert_eq!(before["revision"], 1, "{before}");
    assert_eq!(before["policy"]["rules"][0]["name"], "web", "{before}");
    let revision = kernel_revision(&agent);
    let (rss_start, _) = memory(pid);

    let mut inputs = committed();
    inputs.extend(generated(&dir));
    let mut failures = Vec::new();
    for input in &inputs {
        let path = input.path.to_str().unwrap();
        let fail = |why: String| format!("{}: {why}", input.name);

        // What `validate` says is what the push must say.
        let reference = ztagent(&["policy", "validate", path]);
        let reference = reference.stderr.trim_end();

        // 1. Through the CLI (which checks locally first).
        let socket = agent.socket.to_str().unwrap();
        let cli = ztagent(&["--socket", socket, "policy", "push", path]);
        if let Err(e) = judge(input, &cli, "push") {
            failures.push(e);
        } else if cli.stderr.trim_end() != reference {
            failures.push(fail(format!(
                "push and validate disagree:\n      push:     {}\n      validate: {}",
                short(&cli.stderr, 500),
                short(reference, 500)
            )));
        }

        // 2. Straight to the agent's socket, as a client that skips the check would.
        let bytes = fs::read(&input.path).unwrap();
        let request = push_request(path, &bytes);
        let utf8 = std::str::from_utf8(&bytes).is_ok();
        reset_peak(pid);
        let (rss_before, _) = memory(pid);
        let (reply, polled) = while_polling(&agent.socket, || raw(&agent.socket, &request));
        let (rss_after, peak) = memory(pid);
        match reply {
            Err(e) => failures.push(fail(format!("raw push: {e}"))),
            Ok((Reply::Error { message }, took)) => {
                let expected = match input.raw_reply {
                    Some(m) => m.to_owned(),
                    // Invalid UTF-8 cannot be carried by the JSON protocol: any refusal.
                    None if !utf8 => String::new(),
                    None => reference.to_owned(),
                };
                if !message.contains(&expected) {
                    failures.push(fail(format!(
                        "the agent's refusal differs from validate:\n      agent:    {}\n      expected: {}",
                        short(&message, 500),
                        short(&expected, 500)
                    )));
                }
                if input.generated {
                    eprintln!(
                        "agent    {:<32} {:>9}  {:>7.3} s  status answered {} times meanwhile, slowest {:>7.3} s  RSS {} -> {} MB, peak {} MB",
                        input.name,
                        size(&input.path),
                        took.as_secs_f64(),
                        polled.as_ref().map_or(0, |p| p.inside),
                        polled.as_ref().map_or(f64::NAN, |p| p.slowest.as_secs_f64()),
                        rss_before / 1024,
                        rss_after / 1024,
                        peak / 1024
                    );
                }
            }
            Ok((other, _)) => failures.push(fail(format!("the agent accepted it: {other:?}"))),
        }
        match polled {
            Ok(p) if p.work >= OBSERVABLE && p.inside == 0 => failures.push(fail(format!(
                "the push was in flight for {:?} and no other client's status request was answered meanwhile",
                p.work
            ))),
            Ok(p) if p.slowest > STALL => failures.push(fail(format!(
                "meanwhile another client waited {:?} for status (stall bound {STALL:?})",
                p.slowest
            ))),
            Ok(_) => {}
            Err(e) => failures.push(fail(format!("meanwhile another client was not served: {e}"))),
        }
        if peak.saturating_sub(rss_before) > MAX_PEAK_GROWTH_KB {
            failures.push(fail(format!(
                "the agent's peak memory grew by {} MB (from {} MB; limit {} MB)",
                (peak - rss_before) / 1024,
                rss_before / 1024,
                MAX_PEAK_GROWTH_KB / 1024
            )));
        }

        // 3. Nothing changed, and the agent is still there.
        if !alive(pid) {
            failures.push(fail("the agent died".into()));
            break;
        }
        let now = policy_get(&agent);
        if now != before {
            failures.push(fail(format!("the policy changed:\n      before: {before}\n      after:  {now}")));
        }
        let r = kernel_revision(&agent);
        if r != revision {
            failures.push(fail(format!("the kernel's revision went from {revision} to {r}")));
        }
    }

    assert!(alive(pid), "the agent died:\n{}", agent.log());
    // What the refused pushes left behind.
    std::thread::sleep(Duration::from_secs(1));
    let (rss_end, _) = memory(pid);
    eprintln!("agent    resident memory {} MB before the bad pushes, {} MB after", rss_start / 1024, rss_end / 1024);
    if rss_end.saturating_sub(rss_start) > MAX_KEPT_GROWTH_KB {
        failures.push(format!(
            "the agent kept {} MB more after the bad pushes ({} -> {} MB; limit {} MB)",
            (rss_end - rss_start) / 1024,
            rss_start / 1024,
            rss_end / 1024,
            MAX_KEPT_GROWTH_KB / 1024
        ));
    }
    let log = agent.log();
    assert!(!log.contains("panicked"), "the agent panicked:\n{}", short(&log, 5000));
    // Still serving, and still judging with the policy it had.
    let live = agent.cli(&["check", "--src", "10.20.1.7", "--dst", "10.20.2.10", "--port", "443", "-o", "json"]);
    assert!(live.status.success(), "{}", String::from_utf8_lossy(&live.stderr));
    let v: serde_json::Value = serde_json::from_slice(&live.stdout).unwrap();
    assert_eq!(
        (v["verdict"].as_str(), v["rule"].as_str(), v["revision"].as_u64()),
        (Some("allow"), Some("web"), Some(1)),
        "{v}"
    );
    assert!(failures.is_empty(), "{} of {} inputs:\n  {}", failures.len(), inputs.len(), failures.join("\n  "));
}
