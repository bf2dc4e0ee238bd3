//! The bad-policy corpus both test binaries judge: the committed files (`tests/data/bad-policies/`)
//! with what `validate` must say of each, the inputs generated at test time, and the judge of a
//! refusal. The unprivileged binary checks `validate` offline with it (`cli::bad_policies`), the
//! kernel binary a running agent's refusals (`kernel::bad_policies`).
#![allow(dead_code)] // each binary uses its part

use std::{
    fmt::Write as _,
    fs,
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use integration_tests::{TempDir, build_bin};
use ztagent::api::{MAX_REQUEST, Request};

/// The committed corpus.
pub(crate) const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/bad-policies");
/// A process still running after this is killed (and the input reported as a hang). Hang
/// detection only, not a speed limit: the speed of validation and push is measured by
/// `cargo xtask bench`, which has its own floors.
pub(crate) const HARD_LIMIT: Duration = Duration::from_secs(60);
/// The longest acceptable diagnostic message: one sentence that quotes, never echoes, input.
pub(crate) const MAX_MESSAGE: usize = 1000;

// The committed files and what `validate` must say of each: bad_policy_cases.rs.
#[path = "bad_policy_cases.rs"]
mod cases;
pub(crate) use cases::{CASES, Case, Want};

/// One parsed `FILE:LINE:COL: message` line.
#[derive(Debug)]
pub(crate) struct Diag {
    pub(crate) line: usize,
    pub(crate) col: usize,
    pub(crate) message: String,
}

pub(crate) type Check = Box<dyn Fn(&[Diag]) -> Result<(), String> + Send + Sync>;

/// An input and what must be said about it.
pub(crate) struct Input {
    pub(crate) name: String,
    pub(crate) path: PathBuf,
    pub(crate) check: Check,
    /// Generated at test time (big or pathological): timed and reported, and pushed while
    /// watching the agent's memory and responsiveness.
    pub(crate) generated: bool,
    /// What the agent itself must answer to the raw text on its socket, when it cannot be the
    /// same as `validate` (`None`: the same diagnostics).
    pub(crate) raw_reply: Option<&'static str>,
}

pub(crate) fn matches(d: &Diag, w: &Want) -> bool {
    d.line == w.0 && (w.1 == 0 || d.col == w.1) && d.message.to_lowercase().contains(&w.2.to_lowercase())
}

pub(crate) fn show(diags: &[Diag]) -> String {
    let mut s = String::new();
    for d in diags.iter().take(5) {
        let _ = write!(s, "\n      {}:{}: {}", d.line, d.col, short(&d.message, 300));
    }
    if diags.len() > 5 {
        let _ = write!(s, "\n      ... and {} more", diags.len() - 5);
    }
    s
}

pub(crate) fn short(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &s[..end], s.len())
}

pub(crate) fn case_check(case: &'static Case) -> Check {
    Box::new(move |diags| {
        let ok = case.any_of.iter().any(|alt| {
            alt.iter().all(|w| diags.iter().any(|d| matches(d, w))) && (!case.exact || diags.len() == alt.len())
        });
        if ok {
            Ok(())
        } else {
            let exact = if case.exact { " and nothing else" } else { "" };
            Err(format!("expected {:?}{exact}; got:{}", case.any_of, show(diags)))
        }
    })
}

pub(crate) fn committed() -> Vec<Input> {
    CASES
        .iter()
        .map(|c| Input {
            name: c.file.to_owned(),
            path: Path::new(DATA).join(c.file),
            check: case_check(c),
            generated: false,
            raw_reply: None,
        })
        .collect()
}

/// Exactly one diagnostic, this one.
pub(crate) fn only(line: usize, col: usize, msg: &'static str) -> Check {
    Box::new(move |diags| match diags {
        [d] if matches(d, &(line, col, msg)) => Ok(()),
        _ => Err(format!("expected {line}:{col}: ...{msg}... and nothing else; got:{}", show(diags))),
    })
}

/// One diagnostic that mentions nesting, on `line`.
pub(crate) fn nesting_on(line: usize) -> Check {
    Box::new(move |diags| match diags {
        [d] if d.line == line
            && ["recursion", "depth", "deep", "nest"].iter().any(|w| d.message.to_lowercase().contains(w)) =>
        {
            Ok(())
        }
        _ => Err(format!("expected one diagnostic about nesting on line {line}; got:{}", show(diags))),
    })
}

/// The planted error at its place, and nothing else; or one diagnostic saying the document is
/// too large (a size limit is a fine answer to a 20 MB policy, if it says so).
pub(crate) fn planted_or_too_large(line: usize, col: usize, msg: &'static str) -> Check {
    Box::new(move |diags| match diags {
        [d] if matches(d, &(line, col, msg)) => Ok(()),
        [d] if d.message.to_lowercase().contains("too large") => Ok(()),
        _ => Err(format!(
            "expected {line}:{col}: ...{msg}... (the planted error), or one \"too large\" diagnostic; got:{}",
            show(diags)
        )),
    })
}

/// Segments `s0`.. each with one /32 and one /128, `lines` of them, YAML block style; then a
/// segment with host bits set. Returns the text and the planted error's line and column.
pub(crate) fn yaml_segments(target_bytes: usize) -> (String, usize, usize) {
    let mut s = String::with_capacity(target_bytes + 100);
    s.push_str("version: 1\nsegments:\n");
    let mut lines = 2;
    let mut i = 0u32;
    while s.len() < target_bytes {
        let _ = writeln!(
            s,
            "  s{i}: {{ cidrs: [10.{}.{}.{}/32, \"fd00::{:x}:{:x}/128\"] }}",
            (i >> 16) & 255,
            (i >> 8) & 255,
            i & 255,
            i >> 16,
            i & 0xffff
        );
        lines += 1;
        i += 1;
    }
    s.push_str("  last: { cidrs: [10.255.255.1/24] }\nrules: []\n");
    (s, lines + 1, 19)
}

/// The same in compact JSON, the planted segment last, on its own line.
pub(crate) fn json_segments(target_bytes: usize) -> (String, usize, usize) {
    let mut s = String::with_capacity(target_bytes + 100);
    s.push_str("{\"version\": 1, \"rules\": [], \"segments\": {");
    let mut i = 0u32;
    while s.len() < target_bytes {
        let _ = write!(s, "\"s{i}\":{{\"cidrs\":[\"10.{}.{}.{}/32\"]}},", (i >> 16) & 255, (i >> 8) & 255, i & 255);
        i += 1;
    }
    s.push_str("\n\"last\": {\"cidrs\": [\"10.255.255.1/24\"]}}}\n");
    (s, 2, 20)
}

/// Inputs too big or too odd to commit, written into `dir`.
pub(crate) fn generated(dir: &TempDir) -> Vec<Input> {
    let mut out = Vec::new();
    let mut add = |name: &str, bytes: Vec<u8>, check: Check, raw_reply: Option<&'static str>| {
        let path = dir.0.join(name);
        fs::write(&path, bytes).unwrap();
        out.push(Input { name: name.to_owned(), path, check, generated: true, raw_reply });
    };
    // Deep nesting, 10,000 levels.
    add("deep-flow-sequences.yaml", "[".repeat(10_000).into_bytes(), nesting_on(1), None);
    add(
        "deep-flow-sequences-closed.yaml",
        format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes(),
        nesting_on(1),
        None,
    );
    add(
        "deep-flow-mappings.yaml",
        format!("version: 1\nsegments: {}1{}\n", "{a: ".repeat(10_000), "}".repeat(10_000)).into_bytes(),
        nesting_on(2),
        None,
    );
    add(
        "deep-objects.json",
        format!("{}1{}", "{\"a\": ".repeat(10_000), "}".repeat(10_000)).into_bytes(),
        nesting_on(1),
        None,
    );
    add(
        "deep-arrays-in-policy.json",
        format!("{{\"version\": 1, \"segments\": {{}}, \"rules\": {}{}}}", "[".repeat(10_000), "]".repeat(10_000))
            .into_bytes(),
        nesting_on(1),
        None,
    );
    // Block style nests by indentation: 3,000 levels (4.5 MB of indentation).
    let mut block = String::from("version: 1\nsegments:\n");
    for i in 0..3_000 {
        let _ = writeln!(block, "{}a:", " ".repeat(i + 2));
    }
    let block_check: Check = Box::new(|diags| match diags {
        [d] if (3..=3_002).contains(&d.line)
            && ["recursion", "depth", "deep", "nest"].iter().any(|w| d.message.to_lowercase().contains(w)) =>
        {
            Ok(())
        }
        _ => Err(format!("expected one diagnostic about nesting within the nesting; got:{}", show(diags))),
    });
    add("deep-block-mappings.yaml", block.into_bytes(), block_check, None);

    // An alias bomb: 10^9 strings if expanded.
    let mut bomb = String::from(
        "a0: &a0 [\"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\"]\n",
    );
    for i in 1..10 {
        let refs = vec![format!("*a{}", i - 1); 10].join(", ");
        let _ = writeln!(bomb, "a{i}: &a{i} [{refs}]");
    }
    bomb.push_str("version: 1\n");
    let bomb_check: Check = Box::new(|diags| match diags {
        [d] if (2..=10).contains(&d.line)
            && ["too large", "alias", "complex"].iter().any(|w| d.message.to_lowercase().contains(w)) =>
        {
            Ok(())
        }
        _ => Err(format!("expected one diagnostic about the aliases' expansion, on lines 2-10; got:{}", show(diags))),
    });
    add("alias-bomb.yaml", bomb.into_bytes(), bomb_check, None);

    // 20 MB of segments, one mistake at the very end.
    let (text, line, col) = yaml_segments(20 << 20);
    add(
        "huge-segments-20mb.yaml",
        text.into_bytes(),
        planted_or_too_large(line, col, "`10.255.255.1/24` has host bits set"),
        None,
    );
    let (text, line, col) = json_segments(20 << 20);
    add(
        "huge-segments-20mb.json",
        text.into_bytes(),
        planted_or_too_large(line, col, "`10.255.255.1/24` has host bits set"),
        None,
    );
    // The largest request the agent reads is MAX_REQUEST; JSON text grows when escaped into
    // the request (every `"` becomes `\"`): 48 MiB of it is still one request.
    let (text, line, col) = json_segments(48 << 20);
    assert!(push_request("/tmp/x/huge-segments-48mb.json", text.as_bytes()).len() < MAX_REQUEST as usize - 4096);
    add(
        "huge-segments-48mb.json",
        text.into_bytes(),
        planted_or_too_large(line, col, "`10.255.255.1/24` has host bits set"),
        None,
    );
    // A 20 MB scalar: quoted in the message, not echoed.
    add(
        "huge-string-20mb.yaml",
        format!("version: 1\nsegments:\n  web: {{ cidrs: [\"{}\"] }}\nrules: []\n", "x".repeat(20 << 20)).into_bytes(),
        only(3, 18, "invalid CIDR `xxxxxxxx"),
        None,
    );
    // 100,000 mistakes: every one is reported (or a bounded number of them), in order.
    let mut many = String::from("version: 1\nsegments:\n  web:\n    cidrs:\n");
    for i in 0..100_000u32 {
        let _ = writeln!(many, "      - 10.{}.{}.0/33", (i >> 8) & 255, i & 255);
    }
    many.push_str("rules: []\n");
    let many_check: Check = Box::new(|diags| {
        let first = diags.first().ok_or("no diagnostics")?;
        if !matches(first, &(5, 9, "invalid CIDR `10.0.0.0/33`: the prefix length must be at most 32")) {
            return Err(format!("the first mistake (5:9) is not reported first; got:{}", show(diags)));
        }
        if diags.len() > 100_000 || diags.windows(2).any(|w| (w[0].line, w[0].col) > (w[1].line, w[1].col)) {
            return Err(format!("{} diagnostics, or not in order", diags.len()));
        }
        Ok(())
    });
    add("many-errors.yaml", many.into_bytes(), many_check, None);

    // Beyond the agent's request limit (65 MB, mostly one comment): `validate` finds the
    // mistake at the end; the agent refuses to read that much.
    let mut over = String::from("version: 1\nsegments:\n");
    let comment = format!("# {}\n", "x".repeat(98));
    let lines = (MAX_REQUEST as usize + (1 << 20)) / comment.len();
    for _ in 0..lines {
        over.push_str(&comment);
    }
    over.push_str("  web: { cidrs: [10.0.0.5/8] }\nrules: []\n");
    add(
        "over-request-limit.yaml",
        over.into_bytes(),
        only(lines + 3, 18, "`10.0.0.5/8` has host bits set"),
        Some("larger than"),
    );
    out
}

/// What one `ztagent` run did.
pub(crate) struct Ran {
    /// `None`: killed by a signal (or by us, after [`HARD_LIMIT`]).
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    pub(crate) took: Duration,
}

/// `ztagent ARGS...`, killed if it runs longer than [`HARD_LIMIT`].
pub(crate) fn ztagent(args: &[&str]) -> Ran {
    // Built (if need be) before the clock starts: the build is not the run.
    let ztagent = build_bin("ztagent", "ztagent");
    let start = Instant::now();
    let mut child = Command::new(ztagent)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ztagent");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            String::from_utf8_lossy(&v).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for ztagent") {
            break Some(s);
        }
        if start.elapsed() > HARD_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let took = start.elapsed();
    Ran { code: status.and_then(|s| s.code()), stdout: out.join().unwrap(), stderr: err.join().unwrap(), took }
}

/// The diagnostics of a refusal, checked to be nothing but `ORIGIN:LINE:COL: message` lines.
pub(crate) fn diags(origin: &str, stderr: &str) -> Result<Vec<Diag>, String> {
    let mut out = Vec::new();
    for l in stderr.lines() {
        let parsed = l.strip_prefix(origin).and_then(|r| r.strip_prefix(':')).and_then(|r| {
            let mut it = r.splitn(3, ':');
            let line: usize = it.next()?.parse().ok()?;
            let col: usize = it.next()?.parse().ok()?;
            let message = it.next()?.strip_prefix(' ')?;
            (line >= 1 && col >= 1 && !message.trim().is_empty()).then(|| Diag {
                line,
                col,
                message: message.to_owned(),
            })
        });
        match parsed {
            Some(d) if d.message.len() <= MAX_MESSAGE => out.push(d),
            Some(d) => return Err(format!("a {}-byte message: {}", d.message.len(), short(&d.message, 200))),
            None => return Err(format!("a line that is not `{origin}:LINE:COL: message`: {}", short(l, 300))),
        }
    }
    if out.is_empty() {
        return Err("no diagnostics at all".into());
    }
    Ok(out)
}

/// A refusal by the CLI: non-zero exit (not a panic's 101, not a signal), nothing on stdout,
/// only diagnostics on stderr, the expected ones among them (its time is only printed).
pub(crate) fn judge(input: &Input, r: &Ran, what: &str) -> Result<(), String> {
    let fail = |why: String| format!("{what} {}: {why}", input.name);
    if r.code.is_none() {
        return Err(fail(format!("killed (hang or signal) after {:?}; stderr: {}", r.took, short(&r.stderr, 500))));
    }
    if r.stderr.contains("panicked") || r.stderr.contains("RUST_BACKTRACE") || r.code == Some(101) {
        return Err(fail(format!("panicked: {}", short(&r.stderr, 2000))));
    }
    if r.code == Some(0) {
        return Err(fail(format!("accepted: {}", short(&r.stdout, 500))));
    }
    if !r.stdout.trim().is_empty() {
        return Err(fail(format!("printed on stdout: {}", short(&r.stdout, 500))));
    }
    let ds = diags(input.path.to_str().unwrap(), &r.stderr).map_err(fail)?;
    (input.check)(&ds).map_err(fail)
}

pub(crate) fn size(path: &Path) -> String {
    let n = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if n >= 1 << 20 { format!("{:.1} MB", n as f64 / 1e6) } else { format!("{n} B") }
}

/// A push request carrying the file's bytes as they are. JSON can only carry UTF-8: other
/// bytes are put into the string raw, and the agent must refuse the request.
pub(crate) fn push_request(origin: &str, bytes: &[u8]) -> Vec<u8> {
    match std::str::from_utf8(bytes) {
        Ok(source) => {
            serde_json::to_vec(&Request::Push { origin: origin.to_owned(), source: source.to_owned() }).unwrap()
        }
        Err(_) => {
            const MARK: &str = "\u{1}SOURCE\u{1}";
            let template =
                serde_json::to_string(&Request::Push { origin: origin.to_owned(), source: MARK.to_owned() }).unwrap();
            let escaped_mark = serde_json::to_string(MARK).unwrap();
            let escaped_mark = &escaped_mark[1..escaped_mark.len() - 1];
            let (head, tail) = template.split_once(escaped_mark).unwrap();
            let mut out = head.as_bytes().to_vec();
            for &b in bytes {
                match b {
                    b'"' => out.extend_from_slice(b"\\\""),
                    b'\\' => out.extend_from_slice(b"\\\\"),
                    0..=0x1f => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
                    _ => out.push(b),
                }
            }
            out.extend_from_slice(tail.as_bytes());
            out
        }
    }
}
