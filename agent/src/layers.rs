//! The layer rule of `lib.rs`, checked: every source file of a top-level module is read, every
//! `crate::MODULE` path in it (in `use` items and in code alike; comments skipped) is an edge,
//! and an edge the rule does not allow fails the test. Also: `policy` and `k8s` stay pure (no
//! tokio, no aya), and only `kernel` uses aya.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

/// The top-level modules and what each may import (besides itself). `daemon` may import
/// everything.
const RULE: &[(&str, &[&str])] = &[
    ("clock", &[]),
    ("policy", &[]),
    ("k8s", &["policy"]),
    ("api", &["clock"]),
    ("store", &["policy"]),
    ("sources", &["k8s", "policy", "api", "store", "clock"]),
    ("kernel", &["policy", "api", "clock"]),
    ("events", &["policy", "k8s", "api", "clock"]),
    ("observe", &["events", "policy", "k8s", "api", "store", "clock"]),
];

/// Crates only some modules may use: (crate, the modules allowed).
const CRATES: &[(&str, &[&str])] =
    &[("aya", &["kernel"]), ("tokio", &["api", "events", "observe", "sources", "kernel", "daemon"])];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `path` (or `path` itself).
fn files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        let mut entries: Vec<_> = fs::read_dir(path).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        for e in entries {
            files(&e, out);
        }
    } else if path.is_file() && path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_path_buf());
    }
}

/// The files of top-level module `module`: `src/MODULE.rs` and `src/MODULE/**`.
fn module_files(module: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    files(&src().join(format!("{module}.rs")), &mut out);
    files(&src().join(module), &mut out);
    out
}

/// The code of a file without its comments (line comments, doc comments included).
fn code(text: &str) -> String {
    text.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

/// The top-level modules a text names as `crate::NAME` (also `crate::{NAME, ...}` groups).
fn crate_edges(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a::b, c, d::{e, f}}`: the first name of each top-level item.
            let mut depth = 0;
            let mut item_start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && !c.is_whitespace() => {
                        out.insert(ident(&group[j..]));
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            out.insert(ident(rest));
        }
    }
    out.remove("");
    out
}

/// Whether the code uses crate `name` (`use name::`, `name::` in a path).
fn uses_crate(code: &str, name: &str) -> bool {
    let pat = format!("{name}::");
    code.match_indices(&pat).any(|(i, _)| {
        // Not part of a longer identifier or path (`crate::x::aya::`, `my_aya::`).
        let before = code[..i].chars().last();
        !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
    })
}

#[test]
fn modules_import_only_what_the_layer_rule_allows() {
    let mut broken = Vec::new();
    for (module, allowed) in RULE {
        let files = module_files(module);
        assert!(!files.is_empty(), "no source files for module `{module}`");
        for file in files {
            let code = code(&fs::read_to_string(&file).unwrap());
            for edge in crate_edges(&code) {
                if edge != *module && !allowed.contains(&edge.as_str()) {
                    broken.push(format!("{}: `{module}` imports `crate::{edge}`", file.display()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "imports across the layer rule (see lib.rs):\n{}", broken.join("\n"));
}

#[test]
fn aya_and_tokio_stay_in_their_modules() {
    let mut broken = Vec::new();
    let modules = RULE.iter().map(|(m, _)| *m).chain(["daemon"]);
    for module in modules {
        for file in module_files(module) {
            let code = code(&fs::read_to_string(&file).unwrap());
            for (krate, allowed) in CRATES {
                if !allowed.contains(&module) && uses_crate(&code, krate) {
                    broken.push(format!("{}: `{module}` uses `{krate}`", file.display()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "crates used outside their modules:\n{}", broken.join("\n"));
}

#[test]
fn every_top_level_module_has_a_rule() {
    let lib = fs::read_to_string(src().join("lib.rs")).unwrap();
    for line in lib.lines() {
        if let Some(name) = line.strip_prefix("pub mod ").and_then(|l| l.strip_suffix(';')) {
            assert!(
                name == "daemon" || RULE.iter().any(|(m, _)| *m == name),
                "module `{name}` has no place in the layer rule (layers.rs RULE, lib.rs table)"
            );
        }
    }
}

#[test]
fn the_edge_reader_reads_groups_and_paths() {
    let edges = crate_edges("use crate::{api::{self, X}, policy::Y, store};\nlet x = crate::clock::now();");
    assert_eq!(edges, ["api", "clock", "policy", "store"].into_iter().map(String::from).collect());
    assert!(uses_crate("use aya::maps;", "aya"));
    assert!(!uses_crate("use my_aya::maps;", "aya"));
    assert!(!uses_crate("crate::kernel::aya::x", "aya"));
}
