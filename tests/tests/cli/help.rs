//! Every `--help` of every command: each argument says what it is (no bare `--src <SRC>`), and
//! the commands that never talk to the agent do not offer `--socket`.
use std::process::Command;

use integration_tests::build_bin;

fn help(command: &[String]) -> String {
    let out = Command::new(build_bin("ztagent", "ztagent")).args(command).arg("--help").env_clear().output().unwrap();
    assert!(out.status.success(), "ztagent {command:?} --help: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Every command path, from the `Commands:` lists, the top level (`[]`) included.
fn commands() -> Vec<(Vec<String>, String)> {
    let (mut found, mut todo) = (Vec::new(), vec![Vec::new()]);
    while let Some(command) = todo.pop() {
        let text = help(&command);
        let subs = text
            .lines()
            .skip_while(|l| l.trim() != "Commands:")
            .skip(1)
            .take_while(|l| l.starts_with("  "))
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| *n != "help");
        for sub in subs {
            todo.push([command.clone(), vec![sub.to_string()]].concat());
        }
        found.push((command, text));
    }
    found
}

/// The arguments of a long help text (`Arguments:` and `Options:`) that have no text: an entry
/// line (indented by 2 to 6 spaces, starting with `-`, `<` or `[`) with nothing after it and no
/// deeper-indented line below.
fn undocumented(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut bare = Vec::new();
    let mut in_args = false;
    for (i, l) in lines.iter().enumerate() {
        if !l.starts_with(' ') {
            in_args = matches!(l.trim(), "Arguments:" | "Options:");
            continue;
        }
        let t = l.trim();
        if !in_args || !(2..=6).contains(&indent(l)) || !t.starts_with(['-', '<', '[']) {
            continue;
        }
        let same_line = t.contains("  "); // short help: the text follows on the same line
        let below = lines.get(i + 1).is_some_and(|n| !n.trim().is_empty() && indent(n) > indent(l) + 2);
        if !same_line && !below {
            bare.push(t.to_string());
        }
    }
    bare
}

#[test]
fn every_argument_of_every_command_has_help_text() {
    let all = commands();
    assert!(all.len() >= 15, "only {} commands found", all.len());
    let bare: Vec<String> = all
        .iter()
        .flat_map(|(c, text)| undocumented(text).into_iter().map(move |a| format!("ztagent {} {a}", c.join(" "))))
        .collect();
    assert!(bare.is_empty(), "arguments without help text:\n  {}", bare.join("\n  "));
    // The walk itself finds a bare argument.
    assert_eq!(
        undocumented("Options:\n      --src <SRC>\n      --dst <DST>\n          The destination\n"),
        ["--src <SRC>"]
    );
}

#[test]
fn only_the_commands_that_talk_to_the_agent_offer_socket() {
    let offline = [&["policy", "validate"][..], &["k8s", "translate"], &["fleet", "push"], &["fleet", "status"]];
    // `uninstall` asks the socket whether an agent still uses the pins (and refuses if so).
    let online = [
        &["run"][..],
        &["status"],
        &["check"],
        &["events"],
        &["policy", "push"],
        &["policy", "get"],
        &["grants"],
        &["uninstall"],
    ];
    for c in offline {
        let text = help(&c.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert!(!text.contains("--socket"), "ztagent {} --help offers --socket:\n{text}", c.join(" "));
    }
    for c in online {
        let text = help(&c.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert!(text.contains("--socket <PATH>"), "ztagent {} --help lacks --socket:\n{text}", c.join(" "));
    }
}
