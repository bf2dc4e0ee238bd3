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
    assert!(!ok && err.is_empty(), "a denial exits 1, silently: {err}");
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
    assert!(!ok);
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

/// `ztagent ARGS` from a clean environment: exit status, stdout, stderr.
fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(build_bin("ztagent", "ztagent")).args(args).env_remove("ZTAGENT_SOCKET").output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `check` gates CI: 0 allow, 1 deny, 2 usage or any other error; --src and --dst take a
/// segment's name as well as an address, and a pod only where pods are known.
#[test]
fn check_exits_by_verdict_and_takes_segment_names() {
    let policy = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/policy.yaml");
    let check = |src: &str, dst: &str, port: &str| {
        run(&["check", "--policy", policy, "--src", src, "--dst", dst, "--port", port, "-o", "json"])
    };
    let verdict =
        |out: &str| -> serde_json::Value { serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}")) };
    let (code, out, _) = check("10.20.1.7", "10.20.2.10", "443");
    assert_eq!((code, verdict(&out)["verdict"].clone()), (Some(0), "allow".into()));
    let (code, out, _) = check("10.20.3.4", "10.20.2.10", "8081");
    assert_eq!((code, verdict(&out)["verdict"].clone()), (Some(1), "deny".into()));
    // Segment names, alone or against an address (whose family they take).
    let (code, out, err) = check("frontend", "payments", "443");
    let v = verdict(&out);
    assert_eq!(
        (code, v["verdict"].as_str(), v["src_segment"].as_str(), v["dst_segment"].as_str()),
        (Some(0), Some("allow"), Some("frontend"), Some("payments")),
        "{err}"
    );
    let (code, out, _) = check("batch", "payments", "8081");
    assert_eq!((code, verdict(&out)["rule"].as_str()), (Some(1), Some("nobody-reaches-admin-port")));
    let (code, out, _) = check("world", "fd20:2::10", "443");
    let v = verdict(&out);
    assert_eq!((code, v["src_segment"].as_str(), v["rule"].is_null()), (Some(1), Some("world"), true));
    // Errors: exit 2, one sentence.
    let errors: [(&[&str], &str); 5] = [
        (
            &["check", "--policy", policy, "--src", "paymnts", "--dst", "10.20.2.10", "--port", "1"],
            "did you mean `payments`?",
        ),
        (&["check", "--policy", policy, "--src", "shop/web-0", "--dst", "payments", "--port", "1"], "names a pod"),
        (&["check", "--policy", policy, "--src", "10.20.1.0/24", "--dst", "payments", "--port", "1"], "is a network"),
        (
            &["check", "--policy", "/nonexistent.yaml", "--src", "10.0.0.1", "--dst", "10.0.0.2", "--port", "1"],
            "nonexistent",
        ),
        (&["check", "--src", "10.0.0.1", "--dst", "10.0.0.2", "--bogus"], "--bogus"),
    ];
    for (args, says) in errors {
        let (code, out, err) = run(args);
        assert_eq!(code, Some(2), "{args:?}: {out}{err}");
        assert!(err.contains(says) && err.lines().count() <= 6, "{args:?}: {err}");
    }
}

/// Without an agent, `status` says so and points at `status --offline`.
#[test]
fn status_without_an_agent_points_at_offline() {
    let dir = TempDir::new();
    let sock = dir.0.join("nobody.sock");
    let (code, _, err) = run(&["status", "--socket", sock.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no agent answers") && err.contains("status --offline"), "{err}");
    // The socket given before the command, as before, still counts.
    let (_, _, err) = run(&["--socket", sock.to_str().unwrap(), "status"]);
    assert!(err.contains(sock.to_str().unwrap()), "{err}");
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
