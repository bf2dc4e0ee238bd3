//! Hostile input, offline: every input of the bad-policy corpus (`tests/data/bad-policies/`,
//! one small file per problem, named for it, and the inputs generated here because they are too
//! big to commit: see [`crate::bad_policy_corpus`]) is rejected by `ztagent policy validate FILE`,
//! which exits non-zero (no panic, no signal, no hang: killed after [`HARD_LIMIT`]) and prints
//! only `FILE:LINE:COL: message` lines, among them the expected one: its exact position and a
//! distinctive part of its message. A running agent's refusals are `kernel::bad_policies`'.
//!
//! Times are printed, never judged: how fast inputs are refused is `cargo xtask bench`'s.
//!
//! Every input is tried before failing, so one run lists every problem at once.

use std::{collections::BTreeSet, fs, path::Path};

use crate::bad_policy_corpus::*;
use integration_tests::TempDir;

#[test]
fn the_corpus_is_complete_and_small() {
    let files: BTreeSet<String> =
        fs::read_dir(DATA).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    let listed: BTreeSet<String> = CASES.iter().map(|c| c.file.to_owned()).collect();
    assert_eq!(listed.len(), CASES.len(), "a file is listed twice in CASES");
    let unlisted: Vec<_> = files.difference(&listed).collect();
    let missing: Vec<_> = listed.difference(&files).collect();
    assert!(
        unlisted.is_empty() && missing.is_empty(),
        "files without an expectation: {unlisted:?}; expectations without a file: {missing:?}"
    );
    assert!(files.len() >= 60, "only {} broken policies", files.len());
    for f in &files {
        let n = fs::metadata(Path::new(DATA).join(f)).unwrap().len();
        assert!(n <= 4096, "{f} is {n} bytes: keep committed cases small, generate big ones");
    }
}

#[test]
fn validate_rejects_every_bad_policy_precisely() {
    let dir = TempDir::new();
    let mut inputs = committed();
    inputs.extend(generated(&dir));
    let mut failures = Vec::new();
    for input in &inputs {
        let r = ztagent(&["policy", "validate", input.path.to_str().unwrap()]);
        if input.generated {
            eprintln!(
                "validate {:<32} {:>9}  {:>7.3} s  {}",
                input.name,
                size(&input.path),
                r.took.as_secs_f64(),
                short(r.stderr.lines().next().unwrap_or("").trim_start_matches(input.path.to_str().unwrap()), 160)
            );
        }
        if let Err(e) = judge(input, &r, "validate") {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{} of {} inputs:\n  {}", failures.len(), inputs.len(), failures.join("\n  "));
}
