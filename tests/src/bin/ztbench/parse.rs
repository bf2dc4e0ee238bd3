//! How fast large policies are read: `ztagent policy validate FILE` and pushes to a running
//! agent, for the same policy written as YAML and as JSON, valid and with one mistake at its
//! very end (so the whole file is read before it is refused).
//!
//! The policy is the hostile-input corpus's largest YAML file: 20 MB of segments, each with one
//! IPv4 /32 and one IPv6 /128 in a one-line flow mapping (357,190 segments, 714,380 CIDRs).
//! Each figure is the median of several runs, YAML and JSON interleaved run by run, so that
//! a busy moment slows both alike; the targets are ratios from the same rounds.
//!
//! - *validate*: the CLI, as a user runs it (process start, read, parse, validate, compile).
//! - *push*: a valid policy through `ztagent policy push` to a real agent (the CLI validates it,
//!   the agent parses, validates and compiles it again and writes 714,380 host entries into
//!   its maps).
//! - *refused push*: the invalid one sent straight to the agent's socket (as a client that
//!   skips the CLI's own check would): the agent's parse and validation, and its refusal.
use std::{
    fmt::Write as _,
    io::{Read, Write},
    os::unix::net::UnixStream,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use integration_tests::{Agent, Lan, TempDir, bin};
use ztagent::api::{Reply, Request};

use crate::{median, verdict};

/// YAML may take at most this much longer than JSON for the same policy (issue 13): the floor,
/// a ratio of the same rounds (MB/s are reported, but follow whatever else the 2 CPUs run).
pub const MAX_YAML_OVER_JSON: f64 = 1.5;

/// The same policy in both formats.
struct Texts {
    yaml: String,
    json: String,
}

/// Segments `s0`, `s1`, ... until the YAML text holds `target_bytes`, then one segment
/// `last` whose CIDR has host bits set when `broken`.
fn policy_texts(target_bytes: usize, broken: bool) -> Texts {
    let mut yaml = String::with_capacity(target_bytes + 4096);
    let mut json = String::with_capacity(target_bytes);
    yaml.push_str("version: 1\nsegments:\n");
    json.push_str("{\"version\": 1, \"segments\": {");
    let mut i = 0u32;
    while yaml.len() < target_bytes {
        let v4 = format!("10.{}.{}.{}/32", (i >> 16) & 255, (i >> 8) & 255, i & 255);
        let v6 = format!("fd00::{:x}:{:x}/128", i >> 16, i & 0xffff);
        let _ = writeln!(yaml, "  s{i}: {{ cidrs: [{v4}, \"{v6}\"] }}");
        let _ = write!(json, "\"s{i}\":{{\"cidrs\":[\"{v4}\",\"{v6}\"]}},");
        i += 1;
    }
    let last = if broken { "10.255.255.1/24" } else { "10.255.255.0/24" };
    let _ = write!(yaml, "  last: {{ cidrs: [{last}] }}\nrules: []\n");
    let _ = writeln!(json, "\n\"last\": {{\"cidrs\": [\"{last}\"]}}}}, \"rules\": []}}");
    Texts { yaml, json }
}

/// One measured path: median seconds for YAML and JSON, and the median of the per-round ratios.
struct Figure {
    yaml_s: f64,
    json_s: f64,
    ratio: f64,
}

/// Runs `f(yaml)` and `f(json)` alternately `rounds` times (after one unrecorded round each).
fn interleaved(rounds: usize, mut f: impl FnMut(bool) -> Result<Duration>) -> Result<Figure> {
    f(true)?;
    f(false)?;
    let (mut y, mut j, mut r) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let ys = f(true)?.as_secs_f64();
        let js = f(false)?.as_secs_f64();
        y.push(ys);
        j.push(js);
        r.push(ys / js.max(1e-9));
    }
    Ok(Figure { yaml_s: median(&mut y), json_s: median(&mut j), ratio: median(&mut r) })
}

/// `ztagent ARGS...`: its wall time, and whether it succeeded.
fn ztagent(args: &[&str]) -> Result<(Duration, bool, String)> {
    let t = Instant::now();
    let out = Command::new(bin("ztagent")).args(args).output().context("running ztagent")?;
    let took = t.elapsed();
    Ok((took, out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned()))
}

/// A push straight to the agent's socket; its reply and the time to it.
fn raw_push(socket: &Path, origin: &str, source: &str) -> Result<(Duration, Reply)> {
    let request = serde_json::to_vec(&Request::Push { origin: origin.to_owned(), source: source.to_owned() })?;
    let t = Instant::now();
    let mut s = UnixStream::connect(socket).context("connecting to the agent")?;
    s.write_all(&request)?;
    s.write_all(b"\n")?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)?;
    let took = t.elapsed();
    let first = answer.split(|b| *b == b'\n').next().unwrap_or_default();
    Ok((took, serde_json::from_slice(first).context("the agent's reply")?))
}

/// The section of the report, and whether its targets hold. `mb`: the size of the policy.
pub fn throughput(mb: usize, rounds: usize) -> Result<(String, bool)> {
    let dir = TempDir::new();
    let files = |broken: bool| -> Result<(std::path::PathBuf, std::path::PathBuf, usize)> {
        let t = policy_texts(mb << 20, broken);
        let name = if broken { "broken" } else { "valid" };
        let (y, j) = (dir.0.join(format!("{name}.yaml")), dir.0.join(format!("{name}.json")));
        std::fs::write(&y, &t.yaml)?;
        std::fs::write(&j, &t.json)?;
        Ok((y, j, t.yaml.len()))
    };
    eprintln!("ztbench: writing the {mb} MB policies");
    let (valid_yaml, valid_json, yaml_bytes) = files(false)?;
    let (broken_yaml, broken_json, _) = files(true)?;
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len() as f64 / 1e6).unwrap_or(0.0);
    let s = |p: &Path| p.to_str().map(str::to_owned).context("path not UTF-8");
    let (vy, vj, by, bj) = (s(&valid_yaml)?, s(&valid_json)?, s(&broken_yaml)?, s(&broken_json)?);

    eprintln!("ztbench: validating them ({rounds} rounds)");
    let validate = |file: &str, valid: bool| -> Result<Duration> {
        let (took, ok, stderr) = ztagent(&["policy", "validate", file])?;
        ensure!(ok == valid, "validate {file}: {}", if valid { stderr } else { "accepted".into() });
        ensure!(
            valid || stderr.contains("has host bits set"),
            "validate {file} refused it for another reason: {stderr}"
        );
        Ok(took)
    };
    let validate_valid = interleaved(rounds, |yaml| validate(if yaml { &vy } else { &vj }, true))?;
    let validate_broken = interleaved(rounds, |yaml| validate(if yaml { &by } else { &bj }, false))?;

    eprintln!("ztbench: pushing them to an agent ({rounds} rounds)");
    let lan = Lan::new(&[("10.20.2.10", "fd20:2::10")]);
    let host = &lan.hosts[0];
    let agent = Agent::start_with(&host.ns, &[&host.iface], None, &["--max-cidrs", "2000000"]);
    let socket = s(&agent.socket)?;
    let push_valid = interleaved(rounds, |yaml| {
        let file = if yaml { &vy } else { &vj };
        let (took, ok, stderr) = ztagent(&["--socket", &socket, "policy", "push", file])?;
        ensure!(ok, "push {file}: {stderr}");
        Ok(took)
    })?;
    let texts = [std::fs::read_to_string(&broken_yaml)?, std::fs::read_to_string(&broken_json)?];
    let push_broken = interleaved(rounds, |yaml| {
        let (file, text) = if yaml { (&by, &texts[0]) } else { (&bj, &texts[1]) };
        match raw_push(&agent.socket, file, text)? {
            (took, Reply::Error { message }) if message.contains("has host bits set") => Ok(took),
            (_, other) => bail!("the agent did not refuse {file} for its mistake: {other:?}"),
        }
    })?;
    drop(agent);

    let mut text = String::new();
    let _ = writeln!(
        text,
        "\nPolicy input: the same policy as YAML ({:.1} MB, {} bytes) and as JSON ({:.1} MB), \
         {} segments of two CIDRs; median of {rounds} rounds, YAML and JSON interleaved; MB/s of \
         the file's own size.\n\n\
         | path | YAML | JSON | YAML / JSON |\n|---|---:|---:|---:|",
        size(&valid_yaml),
        yaml_bytes,
        size(&valid_json),
        crate::fmt_count(texts[0].matches("cidrs").count()),
    );
    let mut ok = true;
    let rows = [
        ("`policy validate`, valid", &validate_valid, size(&valid_yaml), size(&valid_json)),
        ("`policy validate`, a mistake at the end", &validate_broken, size(&broken_yaml), size(&broken_json)),
        (
            "`policy push` (CLI check, agent's parse, compile, map writes)",
            &push_valid,
            size(&valid_yaml),
            size(&valid_json),
        ),
        ("push refused by the agent (its parse and validation)", &push_broken, size(&broken_yaml), size(&broken_json)),
    ];
    for (name, f, ymb, jmb) in rows {
        let _ = writeln!(
            text,
            "| {name} | {:.2} s, {:.0} MB/s | {:.2} s, {:.0} MB/s | {:.2}x |",
            f.yaml_s,
            ymb / f.yaml_s,
            f.json_s,
            jmb / f.json_s,
            f.ratio
        );
    }
    text.push('\n');
    for (name, f, _, _) in rows {
        let fast = f.ratio <= MAX_YAML_OVER_JSON;
        ok &= fast;
        let _ = writeln!(text, "- {}: {name}: YAML / JSON {:.2} <= {MAX_YAML_OVER_JSON}", verdict(fast), f.ratio);
    }
    Ok((text, ok))
}
