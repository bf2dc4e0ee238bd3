//! What the demo prints and leaves: colours, headers, the events tail, leftovers.

use super::{Agent, Command, PathBuf, Result, bin, fs};
use anyhow::Context as _;

/// What this process created and did not remove (names from `integration_tests::unique`).
pub(crate) fn leftovers() -> Vec<String> {
    let tag = format!("{}x", std::process::id() % 100_000);
    let mut left = Vec::new();
    let netns = Command::new("ip").args(["netns", "list"]).output().map(|o| o.stdout).unwrap_or_default();
    for line in String::from_utf8_lossy(&netns).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if name.starts_with(&format!("zs{tag}")) || name.starts_with(&format!("zh{tag}")) {
            left.push(format!("netns {name}"));
        }
    }
    for (dir, prefix) in [(PathBuf::from("/sys/fs/bpf"), "zt-test-"), (std::env::temp_dir(), "ztagent-test-")] {
        for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with(&format!("{prefix}{tag}")) {
                left.push(e.path().display().to_string());
            }
        }
    }
    left
}

pub(crate) fn possessive(name: &str) -> String {
    if name.ends_with('s') { format!("{name}'") } else { format!("{name}'s") }
}

pub(crate) fn header(st: Style, n: u32, title: &str) {
    println!("\n{}", st.bold(&format!("== {n}. {title} ==")));
}

/// ANSI colours, only when stdout is a terminal.
#[derive(Clone, Copy)]
pub(crate) struct Style(pub(crate) bool);

impl Style {
    pub(crate) fn paint(self, code: &str, s: &str) -> String {
        if self.0 { format!("\x1b[{code}m{s}\x1b[0m") } else { s.to_string() }
    }
    pub(crate) fn green(self, s: &str) -> String {
        self.paint("32", s)
    }
    pub(crate) fn red(self, s: &str) -> String {
        self.paint("31", s)
    }
    pub(crate) fn bold(self, s: &str) -> String {
        self.paint("1", s)
    }
    pub(crate) fn alarm(self, s: &str) -> String {
        self.paint("1;31", s)
    }
}

/// `ztagent events -f` in the background, as an operator would tail it. Killed (by its pid) and
/// reaped on stop or drop.
pub(crate) struct Tail {
    pub(crate) child: std::process::Child,
    pub(crate) reader: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl Tail {
    pub(crate) fn start(agent: &Agent) -> Result<Tail> {
        let mut child = Command::new(bin("ztagent"))
            .arg("--socket")
            .arg(&agent.socket)
            .args(["events", "-f"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("cannot start ztagent events -f")?;
        let out = child.stdout.take().context("no stdout")?;
        let reader = std::thread::spawn(move || {
            use std::io::BufRead;
            std::io::BufReader::new(out).lines().map_while(Result::ok).collect()
        });
        Ok(Tail { child, reader: Some(reader) })
    }

    pub(crate) fn stop(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.reader.take().and_then(|r| r.join().ok()).unwrap_or_default()
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
