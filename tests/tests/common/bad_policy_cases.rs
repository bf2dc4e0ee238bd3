//! The committed bad-policy corpus (`tests/data/bad-policies/`): every file with what
//! `validate` must say of it (see `bad_policy_corpus.rs`).
#![allow(dead_code)] // each binary uses its part

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
    case!("rate-limit-refill-too-long.yaml", 14:43, "takes about 25 hours to refill; at most 24 hours"), // ---- apis (declared HTTP ports)
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
