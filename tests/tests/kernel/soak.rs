//! The soak, short: `ztsoak --seconds 12 --no-wait-udp` (mixed allowed, denied and rate-limited
//! traffic with a policy push every second, then the audit of memory, map entries and events;
//! see `src/bin/ztsoak/`) must pass every check. The full soak (60 s of traffic, then past
//! the UDP timeout) is `cargo xtask soak`.
use std::process::Command;

#[test]
fn a_short_soak_passes_every_check() {
    let out = Command::new(env!("CARGO_BIN_EXE_ztsoak"))
        .args(["--seconds", "12", "--no-wait-udp"])
        .output()
        .expect("run ztsoak");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "ztsoak failed ({}):\n{stdout}\n{stderr}", out.status);
    eprintln!("{stdout}");
}
