//! `docs/cli.md` against the binary: for every command and subcommand, the reference holds its
//! `--help` text verbatim (white space at line ends aside), in a ```text block under a line naming the command line
//! ("`ztagent check --help`"). The test runs the built `ztagent` for every command the
//! reference names and every subcommand the binary lists (recursively), and fails when a help
//! text differs from the reference or a command is missing from it, printing a diff.
//!
//! Refresh the reference after changing the CLI (then review the prose around the blocks):
//!
//! ```sh
//! ZTAGENT_BLESS=1 cargo test --release -p integration-tests --test cli cli_reference
//! ```
//!
//! Blessing rewrites every block with the binary's text and appends a section for each command
//! the reference lacks; a documented command the binary no longer has is left for you to remove.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

const REFRESH: &str = "to refresh docs/cli.md from the binary: \
                       ZTAGENT_BLESS=1 cargo test --release -p integration-tests --test cli cli_reference";

fn reference_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/cli.md")
}

/// One documented help text: the command's words after `ztagent`, and the lines of
/// `docs/cli.md` its block occupies (between the fences, exclusive).
#[derive(Debug)]
struct Block {
    command: Vec<String>,
    /// Index of the opening fence's line.
    open: usize,
    /// Index of the closing fence's line.
    close: usize,
}

/// "`ztagent policy push --help`" (alone on a line, maybe after `#`s, maybe ending with `:`)
/// -> ["policy", "push"].
fn help_line(line: &str) -> Option<Vec<String>> {
    let t = line.trim().trim_start_matches('#').trim().trim_end_matches(':');
    let inner = t.strip_prefix('`')?.strip_suffix('`')?;
    let mut words: Vec<&str> = inner.split_whitespace().collect();
    if words.first() != Some(&"ztagent") || words.last() != Some(&"--help") {
        return None;
    }
    words.remove(0);
    words.pop();
    Some(words.into_iter().map(String::from).collect())
}

fn parse_reference(lines: &[&str]) -> Result<Vec<Block>, String> {
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        // Lines inside other fenced blocks are not headers.
        if lines[i].trim_start().starts_with("```") {
            let close = (i + 1..lines.len())
                .find(|&j| lines[j].trim() == "```")
                .ok_or_else(|| format!("docs/cli.md:{}: a fenced block is never closed", i + 1))?;
            i = close + 1;
            continue;
        }
        if let Some(command) = help_line(lines[i]) {
            let open = (i + 1..lines.len())
                .find(|&j| !lines[j].trim().is_empty())
                .filter(|&j| lines[j].trim() == "```text")
                .ok_or_else(|| {
                    format!(
                        "docs/cli.md:{}: `ztagent {} --help` is not followed by a ```text block",
                        i + 1,
                        command.join(" ")
                    )
                })?;
            let close = (open + 1..lines.len())
                .find(|&j| lines[j].trim() == "```")
                .ok_or_else(|| format!("docs/cli.md:{}: the ```text block is never closed", open + 1))?;
            blocks.push(Block { command, open, close });
            i = close + 1;
            continue;
        }
        i += 1;
    }
    Ok(blocks)
}

/// `ztagent <command> --help`, run without the caller's environment (an exported
/// `ZTAGENT_SOCKET` would show in the text) and without a terminal (no colours).
fn help(command: &[String]) -> Result<String, String> {
    let out = Command::new(integration_tests::build_bin("ztagent", "ztagent"))
        .args(command)
        .arg("--help")
        .env_clear()
        .output()
        .map_err(|e| format!("cannot run ztagent: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    String::from_utf8(out.stdout).map_err(|e| format!("`ztagent {} --help` is not UTF-8: {e}", command.join(" ")))
}

/// The subcommands a help text lists under `Commands:` (clap's own `help` left out).
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(String::from)
        .collect()
}

/// Every command path the binary has, the top level (`[]`) first, depth first.
fn binary_commands() -> Result<Vec<Vec<String>>, String> {
    let mut found = Vec::new();
    let mut todo = vec![Vec::new()];
    while let Some(command) = todo.pop() {
        let text = help(&command)?;
        for sub in subcommands(&text).into_iter().rev() {
            let mut next = command.clone();
            next.push(sub);
            todo.push(next);
        }
        found.push(command);
    }
    Ok(found)
}

/// A line diff (longest common subsequence): `-` the reference, `+` the binary.
fn diff(expected: &[&str], actual: &[&str]) -> String {
    let (n, m) = (expected.len(), actual.len());
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if expected[i] == actual[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < n || j < m {
        if i < n && j < m && expected[i] == actual[j] {
            out += &format!("   {}\n", expected[i]);
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out += &format!("  -{}\n", expected[i]);
            i += 1;
        } else {
            out += &format!("  +{}\n", actual[j]);
            j += 1;
        }
    }
    out
}

fn name(command: &[String]) -> String {
    if command.is_empty() { "ztagent".to_string() } else { format!("ztagent {}", command.join(" ")) }
}

#[test]
fn cli_reference_matches_help() {
    let path = reference_path();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let lines: Vec<&str> = text.lines().collect();
    let blocks = parse_reference(&lines).unwrap_or_else(|e| panic!("{e}"));
    let bless = std::env::var_os("ZTAGENT_BLESS").is_some_and(|v| !v.is_empty() && v != "0");

    let mut problems = Vec::new();
    let mut documented = BTreeSet::new();
    // (block, the binary's text) for every block to rewrite when blessing.
    let mut rewrites: Vec<(&Block, String)> = Vec::new();
    for block in &blocks {
        if !documented.insert(block.command.clone()) {
            problems.push(format!("`{} --help` is documented twice in docs/cli.md", name(&block.command)));
            continue;
        }
        let actual = match help(&block.command) {
            Ok(t) => t,
            Err(e) => {
                problems.push(format!(
                    "docs/cli.md:{}: `{} --help` fails, the binary has no such command (remove its section): {e}",
                    block.open + 1,
                    name(&block.command)
                ));
                continue;
            }
        };
        // Verbatim but for white space at line ends, which editors strip and nobody sees.
        let expected: Vec<&str> = lines[block.open + 1..block.close].iter().map(|l| l.trim_end()).collect();
        let actual_lines: Vec<&str> = actual.trim_end_matches('\n').lines().map(str::trim_end).collect();
        if expected != actual_lines {
            problems.push(format!(
                "docs/cli.md:{}: `{} --help` differs from the reference (- docs/cli.md, + the binary):\n{}",
                block.open + 1,
                name(&block.command),
                diff(&expected, &actual_lines)
            ));
            rewrites.push((block, actual));
        }
    }

    let commands = binary_commands().unwrap_or_else(|e| panic!("{e}"));
    let missing: Vec<&Vec<String>> = commands.iter().filter(|c| !documented.contains(*c)).collect();
    for command in &missing {
        problems.push(format!("`{}` is missing from docs/cli.md (no `{} --help` block)", name(command), name(command)));
    }

    if problems.is_empty() {
        println!("docs/cli.md holds the --help of all {} commands, verbatim", commands.len());
        return;
    }
    if bless {
        let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        // From the last block up, so that earlier indices stay valid.
        let mut rewrites = rewrites;
        rewrites.sort_by_key(|(b, _)| std::cmp::Reverse(b.open));
        for (block, actual) in rewrites {
            let new: Vec<String> = actual.trim_end_matches('\n').lines().map(|l| l.trim_end().to_string()).collect();
            out.splice(block.open + 1..block.close, new);
        }
        while out.last().is_some_and(|l| l.trim().is_empty()) {
            out.pop();
        }
        for command in &missing {
            let actual = help(command).unwrap_or_else(|e| panic!("{e}"));
            out.push(String::new());
            out.push(format!("## `{}`", name(command)));
            out.push(String::new());
            out.push("(Added by ZTAGENT_BLESS: describe this command.)".to_string());
            out.push(String::new());
            out.push(format!("`{} --help`", name(command)));
            out.push(String::new());
            out.push("```text".to_string());
            out.extend(actual.trim_end_matches('\n').lines().map(|l| l.trim_end().to_string()));
            out.push("```".to_string());
        }
        let mut joined = out.join("\n");
        joined.push('\n');
        std::fs::write(&path, joined).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        let left: Vec<&String> =
            problems.iter().filter(|p| p.contains("no such command") || p.contains("twice")).collect();
        assert!(
            left.is_empty(),
            "docs/cli.md refreshed, but these need a hand:\n{}",
            left.iter().map(|p| p.as_str()).collect::<Vec<_>>().join("\n")
        );
        println!("docs/cli.md refreshed ({} problems fixed): review the prose around the blocks", problems.len());
        return;
    }
    panic!("docs/cli.md and the binary's --help disagree:\n\n{}\n\n{REFRESH}", problems.join("\n\n"));
}

#[test]
fn reference_parser_reads_blocks() {
    let doc = "# x\n\n```sh\n`ztagent nope --help`\n```\n\n### `ztagent policy push --help`:\n\n```text\na\nb\n```\n";
    let lines: Vec<&str> = doc.lines().collect();
    let blocks = parse_reference(&lines).expect("parses");
    assert_eq!(blocks.len(), 1);
    assert_eq!(blocks[0].command, vec!["policy".to_string(), "push".to_string()]);
    assert_eq!(&lines[blocks[0].open + 1..blocks[0].close], &["a", "b"]);
    assert_eq!(subcommands("x\n\nCommands:\n  run   R\n  help  H\n\nOptions:\n  -h\n"), vec!["run".to_string()]);
    assert_eq!(diff(&["a", "b"], &["a", "c"]), "   a\n  -b\n  +c\n");
}
