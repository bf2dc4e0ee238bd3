//! The CLI as a user meets it: offline validation with FILE:LINE:COL messages, offline check
//! with the documented JSON fields, and errors that are one sentence, never a panic.
use std::process::Command;

use integration_tests::{TempDir, build_bin};

fn ztagent(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(build_bin("ztagent", "ztagent")).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn validate_reports_every_problem_with_its_position() {
    let dir = TempDir::new();
    let bad = dir.file(
        "bad.yaml",
        "version: 1\nsegments:\n  web: { cidrs: [10.0.0.5/24] }\n  db: { cidrs: [10.1.0.0/16] }\nrules:\n  - name: r1\n    from: [web]\n    to: [dbb]\n    ports: [\"0/tcp\"]\n    action: allow\n",
    );
    let path = bad.to_str().unwrap();
    let (ok, _, err) = ztagent(&["policy", "validate", path]);
    assert!(!ok, "an invalid policy validated");
    let lines: Vec<&str> = err.lines().collect();
    assert!(lines.iter().any(|l| l.starts_with(&format!("{path}:3:")) && l.contains("host bits")), "{err}");
    assert!(lines.iter().any(|l| l.starts_with(&format!("{path}:8:")) && l.contains("dbb")), "{err}");
    assert!(lines.iter().any(|l| l.starts_with(&format!("{path}:9:")) && l.contains('0')), "{err}");

    let good = dir.file("good.yaml", "version: 1\nsegments:\n  web: { cidrs: [10.0.0.0/24] }\nrules: []\n");
    let (ok, out, _) = ztagent(&["policy", "validate", good.to_str().unwrap()]);
    assert!(ok && out.contains("valid"), "{out}");
}

#[test]
fn check_offline_prints_the_documented_fields() {
    let policy = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/policy.yaml");
    let (ok, out, err) = ztagent(&[
        "check",
        "--policy",
        policy,
        "--src",
        "10.20.1.7",
        "--dst",
        "10.20.2.10",
        "--port",
        "8081",
        "-o",
        "json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["verdict"], "deny");
    assert_eq!(v["rule"], "nobody-reaches-admin-port");
    assert_eq!(v["src_segment"], "frontend");
    assert_eq!(v["dst_segment"], "payments");
    let (ok, out, _) = ztagent(&[
        "check",
        "--policy",
        policy,
        "--src",
        "fd20:9::1",
        "--dst",
        "fd20:2::10",
        "--proto",
        "icmp",
        "-o",
        "json",
    ]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["verdict"].as_str(), v["rule"].is_null(), v["src_segment"].as_str()),
        (Some("deny"), true, Some("world"))
    );
}

#[test]
fn errors_are_one_clear_sentence() {
    let dir = TempDir::new();
    let sock = dir.0.join("nobody-here.sock");
    let cases: Vec<Vec<String>> = vec![
        vec!["--socket".into(), sock.display().to_string(), "status".into()],
        vec!["--socket".into(), sock.display().to_string(), "policy".into(), "get".into()],
        vec!["policy".into(), "validate".into(), "/nonexistent/policy.yaml".into()],
        vec![
            "check".into(),
            "--src".into(),
            "10.0.0.1".into(),
            "--dst".into(),
            "fd00::1".into(),
            "--port".into(),
            "1".into(),
            "--policy".into(),
            "x".into(),
        ],
        vec!["check".into(), "--src".into(), "10.0.0.1".into(), "--dst".into(), "10.0.0.2".into()],
    ];
    for args in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, _, err) = ztagent(&args);
        assert!(!ok, "{args:?} succeeded");
        assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "{args:?}: {err}");
        assert!(err.lines().count() <= 2 && !err.trim().is_empty(), "{args:?}: {err}");
    }
}

/// `events`' usage errors are caught before any agent is asked: `--not` with no filter after
/// it, a time that is neither a duration nor RFC 3339, `--until` with `-f`, `--reconnect`
/// without `-f`, a verdict that does not exist.
#[test]
fn events_usage_errors_say_what_is_expected() {
    let socket = ["--socket", "/nonexistent/ztagent.sock", "events"];
    let cases: [(&[&str], &str); 6] = [
        (&["--not"], "--not negates the filter right after it"),
        (&["--from", "a", "--not"], "--not negates the filter right after it"),
        (&["--since", "yesterday"], "--since takes a duration back from now"),
        (&["--until", "2026-13-01T00:00:00Z"], "--until takes a duration back from now"),
        (&["-f", "--until", "5m"], "cannot be used with"),
        (&["--not", "--verdict", "dropped"], "invalid value 'dropped'"),
    ];
    for (args, want) in cases {
        let (ok, _, err) = ztagent(&[&socket[..], args].concat());
        assert!(!ok && err.contains(want), "events {args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let (ok, _, err) = ztagent(&[&socket[..], &["--reconnect"]].concat());
    assert!(!ok && err.contains("--follow"), "{err}");
}
