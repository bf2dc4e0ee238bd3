//! Printing that several commands share: JSON lines, times, colours, grants.
use std::io::IsTerminal;

use serde::Serialize;

/// `-o json`: the value as one line of JSON on stdout.
pub fn json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

/// Whether stdout is a terminal (a person reading): colours only then.
pub fn colour() -> bool {
    std::io::stdout().is_terminal()
}

/// `text` in an ANSI colour (`32` green, `31` red, `33` yellow, `36` cyan).
pub fn paint(code: u8, text: &str) -> String {
    format!("\x1b[{code}m{text}\x1b[0m")
}

/// A unix time (seconds) in RFC 3339.
pub fn time_of(unix: f64) -> String {
    ztagent::clock::rfc3339((unix.max(0.0) * 1e9) as u64)
}

/// `frontend -> payments 8080/tcp`.
pub fn describe_grant(g: &ztagent::api::Grant) -> String {
    let ports = if g.ports.is_empty() { "every port".to_string() } else { g.ports.join(", ") };
    format!("{} -> {} {ports}", g.from, g.to)
}
