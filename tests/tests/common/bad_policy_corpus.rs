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

/// One expected diagnostic: line, column (`0` = any column of that line, only where the
/// column depends on a parser limit) and a distinctive part of the message (compared
/// case-insensitively).
pub(crate) type Want = (usize, usize, &'static str);

/// A committed file and what `validate` must say about it.
pub(crate) struct Case {
    pub(crate) file: &'static str,
    /// The acceptable outcomes: every diagnostic of one of them must be printed.
    pub(crate) any_of: &'static [&'static [Want]],
    /// No diagnostic beyond those (no cascade of follow-on errors).
    pub(crate) exact: bool,
}

macro_rules! case {
    ($file:literal, $l:literal : $c:literal, $msg:literal) => {
        Case { file: $file, any_of: &[&[($l, $c, $msg)]], exact: true }
    };
}

/// Every file in [`DATA`], by category (the file name's prefix).
pub(crate) const CASES: &[Case] = &[
    // ---- YAML syntax
    case!("yaml-tab-indentation.yaml", 3:1, "tabs disallowed"),
    case!("yaml-unclosed-flow-mapping.yaml", 4:1, "did not find expected ',' or '}'"),
    case!("yaml-unclosed-flow-sequence.yaml", 3:22, "mismatched bracket '[' closed by '}'"),
    case!("yaml-unquoted-star.yaml", 7:12, "to mean any address, write \"*\" in quotes"),
    case!("yaml-undefined-alias.yaml", 7:11, "unknown alias `*front`"),
    case!("yaml-duplicate-top-key.yaml", 5:1, "duplicate key `version`"),
    case!("yaml-duplicate-segment.yaml", 4:3, "duplicate key `frontend`"),
    case!("yaml-multiple-documents.yaml", 12:1, "several YAML documents"),
    case!("yaml-bad-indentation.yaml", 5:4, "did not find expected key; indent `payments:` like `frontend:` on line 3"),
    case!("yaml-unterminated-string.yaml", 3:23, "unclosed quote"),
    case!("yaml-mapping-in-sequence-context.yaml", 6:3, "did not find expected '-' indicator; indent `from:` like `name:` on line 5"),
    // 100 levels: beyond the depth limit (64 levels, YAML and JSON alike), reported where the
    // limit is crossed.
    case!("yaml-nested-100-deep.yaml", 3:0, "nests deeper than 64 levels"),
    // ---- JSON syntax (strict: what YAML would forgive is an error in a .json file)
    case!("json-trailing-comma.json", 5:1, "trailing comma"),
    case!("json-missing-comma.json", 3:3, "expected `,` or `}`"),
    case!("json-comment.json", 2:3, "invalid JSON"),
    case!("json-single-quotes.json", 2:3, "key must be a string"),
    // The file ends (line 5, after the last newline) inside the `rules` list.
    case!("json-unclosed-object.json", 5:1, "EOF while parsing a list"),
    case!("json-duplicate-key.json", 4:3, "duplicate key `version`"),
    case!("json-duplicate-segment.json", 5:5, "duplicate key `frontend`"),
    case!("json-trailing-garbage.json", 6:1, "trailing characters"),
    case!("json-wrong-type.json", 4:83, "`action` must be `allow` or `deny`, not a boolean"),
    // 100 levels. Either the CIDR that is a list, where it is, or the nesting refused on its
    // line (beyond the depth limit of 64); not a position-less 1:1.
    Case {
        file: "json-nested-100-deep.json",
        any_of: &[
            &[(4, 24, "a CIDR must be a string like 10.0.0.0/8, not a list")],
            &[(4, 0, "nests deeper than 64 levels")],
        ],
        exact: true,
    },
    // ---- encoding and degenerate files
    case!("non-utf8.yaml", 3:5, "not valid UTF-8 (byte 0xff)"),
    case!("non-utf8-latin1-description.yaml", 7:22, "not valid UTF-8 (byte 0xe9)"),
    case!("utf16-bom.yaml", 1:1, "not valid UTF-8 (byte 0xff)"),
    case!("nul-byte.yaml", 3:8, "unexpected character `\\u{0}`"),
    case!("empty.yaml", 1:1, "the policy is empty"),
    case!("only-comment.yaml", 2:1, "the policy is empty"),
    case!("only-whitespace.yaml", 4:1, "the policy is empty"),
    // ---- the top level: structure, version, defaultAction
    case!("top-level-list.yaml", 1:1, "the policy must be a mapping with `version`, `segments` and `rules`, not a list"),
    case!("top-level-scalar.yaml", 1:1, "the policy must be a mapping with `version`, `segments` and `rules`, not a string"),
    Case {
        file: "unknown-top-field.yaml",
        any_of: &[&[(2, 1, "unknown field `segmetns` in the policy; did you mean `segments`?")]],
        exact: false,
    },
    case!("unknown-top-field-no-suggestion.yaml", 11:1, "unknown field `owner` in the policy; expected `version`"),
    case!("version-missing.yaml", 1:1, "missing `version`; add `version: 1`"),
    case!("version-2.yaml", 1:10, "unsupported policy version 2"),
    case!("version-string.yaml", 1:10, "`version` must be the number 1, not a string"),
    case!("version-float.yaml", 1:10, "`version` must be the whole number 1, not 1.5"),
    case!("version-infinite.yaml", 1:10, "`.inf` is not a finite number"),
    case!("version-huge-number.yaml", 1:10, "`version` must be the whole number 1"),
    case!("default-action-unknown.yaml", 2:16, "`defaultAction` must be `allow` or `deny`, not `reject`"),
    case!("default-action-bool.yaml", 2:16, "`defaultAction` must be `allow` or `deny`, not a boolean"),
    case!("segments-list.yaml", 3:3, "`segments` must be a mapping"),
    case!("rules-mapping.yaml", 6:3, "`rules` must be a list of rules, not a mapping"),
    case!("rate-limits-mapping.yaml", 12:3, "`rateLimits` must be a list of rate limits, not a mapping"),
    // ---- segments
    case!("segment-reserved-world.yaml", 5:3, "the segment name `world` is reserved"),
    case!("segment-reserved-star.yaml", 5:3, "the segment name `*` is reserved"),
    case!("segment-empty-name.yaml", 5:3, "a segment name must not be empty"),
    case!("segment-name-number.yaml", 5:3, "a segment name must be a string (quote it), not a number"),
    case!("segment-name-null.yaml", 5:3, "a segment name must be a string (quote it), not nothing"),
    case!("segment-not-mapping.yaml", 5:10, "segment `batch` must be a mapping like { cidrs: [10.0.0.0/8] }, not a list"),
    case!("segment-no-cidrs.yaml", 5:3, "segment `batch` has no `cidrs`"),
    Case {
        file: "segment-unknown-field.yaml",
        any_of: &[&[(5, 12, "unknown field `cidr` in segment `batch`; did you mean `cidrs`?")]],
        exact: false,
    },
    case!("cidrs-not-list.yaml", 5:19, "`cidrs` must be a list of CIDRs, not a string"),
    // ---- CIDRs
    case!("cidr-syntax.yaml", 5:20, "invalid CIDR `ten.thirty.0.0/16`"),
    case!("cidr-octet-out-of-range.yaml", 5:20, "invalid CIDR `10.30.0.300/32`"),
    case!("cidr-prefix-too-long-v4.yaml", 5:20, "the prefix length must be at most 32"),
    case!("cidr-prefix-too-long-v6.yaml", 5:20, "the prefix length must be at most 128"),
    case!("cidr-negative-prefix.yaml", 5:20, "invalid CIDR `10.30.0.0/-8`"),
    case!("cidr-host-bits.yaml", 5:20, "`10.30.0.5/16` has host bits set; did you mean 10.30.0.0/16?"),
    case!("cidr-host-bits-v6.yaml", 5:20, "`fd20:3::1/64` has host bits set; did you mean fd20:3::/64?"),
    case!("cidr-bare-address.yaml", 5:20, "`10.30.0.7` is an address, not a CIDR; write 10.30.0.7/32"),
    case!("cidr-bare-address-v6.yaml", 5:20, "`fd20:3::7` is an address, not a CIDR; write fd20:3::7/128"),
    case!("cidr-number.yaml", 5:20, "a CIDR must be a string like 10.0.0.0/8, not a number"),
    case!("cidr-duplicate-across-segments.yaml", 5:34, "`10.20.2.10/32` is already in segment `payments` (line 4)"),
    case!("cidr-duplicate-in-segment.yaml", 5:48, "`10.30.0.0/16` is listed twice in segment `batch`"),
    case!("cidr-duplicate-other-spelling.yaml", 5:20, "is already in segment `frontend` (line 3)"),
    case!("cidr-v4-mapped-duplicate.yaml", 5:21, "(the same network as `10.20.1.0/24`) is already in segment `frontend`"),
    // ---- ports
    case!("port-zero.yaml", 9:13, "port 0 is out of range"),
    case!("port-65536.yaml", 9:24, "port 65536 is out of range"),
    case!("port-range-low-zero.yaml", 9:13, "port 0 is out of range"),
    case!("port-range-high-65536.yaml", 9:13, "port 65536 is out of range"),
    case!("port-reversed-range.yaml", 9:13, "the port range is reversed; did you mean `8000-8099/tcp`?"),
    case!("port-unknown-protocol.yaml", 9:13, "unknown protocol `sctp`"),
    case!("port-empty-list.yaml", 9:12, "`ports` is empty, so the rule could never match"),
    case!("port-negative.yaml", 9:13, "invalid port spec `-1/tcp`"),
    // A port number that is a number, only too big: out of range, not "expected N/tcp".
    case!("port-huge-number.yaml", 9:13, "port 99999999999999999999 is out of range"),
    case!("port-without-protocol.yaml", 9:13, "invalid port spec `443`"),
    case!("port-bare-integer.yaml", 9:13, "port 443 needs a protocol"),
    case!("port-not-list.yaml", 9:12, "`ports` must be a list"),
    case!("port-icmp-with-number.yaml", 9:13, "invalid port spec `icmp/8`"),
    // ---- rules
    case!("rule-not-mapping.yaml", 6:5, "a rule must be a mapping"),
    case!("rule-unknown-segment-in-from.yaml", 7:12, "unknown segment `frontnd` in `from`; did you mean `frontend`?"),
    case!("rule-unknown-segment-in-to.yaml", 8:20, "unknown segment `ledger` in `to`"),
    case!("rule-empty-from.yaml", 7:11, "`from` is empty"),
    case!("rule-empty-to.yaml", 8:9, "`to` is empty"),
    case!("rule-missing-from.yaml", 6:5, "rule `web` has no `from`"),
    case!("rule-from-string.yaml", 7:11, "`from` must be a list; write [frontend]"),
    case!("rule-segment-name-number.yaml", 8:10, "a segment name must be a string, not a number"),
    case!("rule-missing-action.yaml", 6:5, "rule `web` has no `action`"),
    case!("rule-bad-action.yaml", 9:13, "`action` must be `allow` or `deny`, not `permit`"),
    case!("rule-action-list.yaml", 9:13, "`action` must be `allow` or `deny`, not a list"),
    case!("rule-duplicate-name.yaml", 7:13, "duplicate rule name `web` (first used on line 6)"),
    case!("rule-missing-name.yaml", 6:5, "this rule has no `name`"),
    case!("rule-empty-name.yaml", 6:11, "a rule name must not be empty"),
    case!("rule-name-number.yaml", 6:11, "a rule name must be a string, not a number"),
    case!("rule-unknown-field.yaml", 9:5, "unknown field `acton` in a rule; did you mean `action`?"),
    case!("rule-description-number.yaml", 7:18, "`description` must be a string, not a number"),
    // ---- rate limits
    case!("rate-limit-not-mapping.yaml", 12:5, "a rate limit must be a mapping"),
    case!("rate-limit-from-star.yaml", 13:11, "the `from` of a rate limit must name one segment or world, not \"*\""),
    case!("rate-limit-from-list.yaml", 13:11, "not a list; write `from: frontend`"),
    case!("rate-limit-from-unknown.yaml", 13:11, "unknown segment `frontnd` in `from`; did you mean `frontend`?"),
    case!("rate-limit-missing-from.yaml", 12:5, "rate limit `lim` has no `from`"),
    case!("rate-limit-missing-name.yaml", 12:5, "this rate limit has no `name`"),
    case!("rate-limit-duplicate-name.yaml", 13:13, "duplicate rate limit name `lim` (first used on line 12)"),
    case!("rate-limit-limits-nothing.yaml", 12:5, "rate limit `lim` limits nothing"),
    case!("rate-limit-unknown-field.yaml", 15:5, "unknown field `packet` in a rate limit; did you mean `packets`?"),
    case!("rate-limit-empty-to.yaml", 15:9, "`to` is empty, so the rate limit could never match"),
    case!("rate-limit-to-string.yaml", 15:9, "`to` must be a list; write [payments]"),
    case!("rate-limit-unknown-segment-in-to.yaml", 15:10, "unknown segment `ledger` in `to`"),
    case!("rate-limit-empty-ports.yaml", 15:12, "`ports` is empty, so the rate limit could never match"),
    case!("rate-limit-bad-port.yaml", 15:24, "port 0 is out of range"),
    case!("rate-limit-bad-scope.yaml", 15:12, "`scope` must be `segment` or `address`, not `host`"),
    case!("rate-limit-scope-bool.yaml", 15:12, "`scope` must be `segment` or `address`, not a boolean"),
    case!("rate-limit-bucket-not-mapping.yaml", 14:14, "`packets` must be a mapping"),
    case!("rate-limit-bucket-unknown-field.yaml", 14:51, "unknown field `window` in `packets`"),
    case!("rate-limit-missing-rate.yaml", 14:14, "`packets` has no `rate`"),
    case!("rate-limit-missing-per.yaml", 14:14, "`packets` has no `per`"),
    case!("rate-limit-missing-burst.yaml", 14:14, "`packets` has no `burst`"),
    case!("rate-limit-per-unknown.yaml", 14:32, "`per` must be `second`, `minute` or `hour`, not `day`"),
    case!("rate-limit-per-typo.yaml", 14:36, "not `secnd`; did you mean `second`?"),
    case!("rate-limit-per-number.yaml", 14:32, "`per` must be `second`, `minute` or `hour`, not a number"),
    case!("rate-limit-rate-zero.yaml", 14:22, "`rate` must be at least 1, not 0"),
    case!("rate-limit-rate-negative.yaml", 14:22, "`rate` must be at least 1, not -5"),
    case!("rate-limit-rate-fraction.yaml", 14:22, "`rate` must be a whole number, not 2.5"),
    case!("rate-limit-rate-string.yaml", 14:22, "`rate` must be a whole number, not a string"),
    case!("rate-limit-rate-too-large.yaml", 14:20, "`rate` must be at most 1000000000000"),
    case!("rate-limit-burst-zero.yaml", 14:50, "`burst` must be at least 1, not 0"),
    case!("rate-limit-burst-u64-overflow.yaml", 14:47, "`burst` must be at most 18446744073709551615"),
    case!("rate-limit-bytes-burst-too-small.yaml", 14:49, "`bytes.burst` must be at least 1500, not 1000"),
    case!("rate-limit-refill-too-long.yaml", 14:43, "takes about 25 hours to refill; at most 24 hours"),
    // ---- apis (declared HTTP ports)
    case!("api-unknown-segment.yaml", 13:14, "unknown segment `paymnts` in `segment`; did you mean `payments`?"),
    case!("api-segment-star.yaml", 12:14, "the `segment` of an API must be a named segment, not `*`"),
    case!("api-segment-world.yaml", 12:14, "the `segment` of an API must be a named segment, not `world`"),
    case!("api-udp-port.yaml", 13:25, "`53/udp` is not TCP: HTTP/1.x runs over TCP; did you mean `53/tcp`?"),
    case!("api-icmp-port.yaml", 13:13, "`icmp` is not TCP"),
    case!("api-every-tcp-port.yaml", 13:13, "`tcp` would declare every TCP port"),
    case!("api-unknown-protocol.yaml", 14:15, "unknown API protocol `htp`; did you mean `http`?"),
    case!("api-duplicate-name.yaml", 15:11, "duplicate API name `payments-api` (first used on line 12)"),
    case!("api-unknown-field.yaml", 14:5, "unknown field `protocl` in an API; did you mean `protocol`?"),
    case!("api-missing-ports.yaml", 12:5, "API `payments-api` has no `ports`"),
    case!("api-too-many-ports.yaml", 15:12, "declares more than 4096 (segment, port) pairs"),
];

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
