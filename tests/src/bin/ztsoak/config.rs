//! The soak's configuration: its two policies and their rate limit, the agent's flags' values,
//! the memory bounds, and the command line.
use super::*;

pub(crate) const POLICY_A: &str = r#"# ztsoak policy A: B plus the toggled range
version: 1
segments:
  frontend: { cidrs: [10.20.1.0/24, "fd20:1::/64"] }
  payments: { cidrs: [10.20.2.10/32, "fd20:2::10/128"] }
  batch: { cidrs: [10.20.3.0/24, "fd20:3::/64"] }
rules:
  - { name: web, from: [frontend], to: [payments], ports: ["443/tcp", "53/udp", "icmp"], action: allow }
  - { name: batch-jobs, from: [batch], to: [payments], ports: ["7000-7009/udp"], action: allow }
  - { name: no-admin, from: ["*"], to: [payments], ports: ["8081/tcp"], action: deny }
  - { name: toggled, from: [frontend], to: [payments], ports: ["9000-9099/udp"], action: allow }
rateLimits:
  - name: batch-udp
    from: batch
    to: [payments]
    ports: ["udp"]
    packets: { rate: 200, per: second, burst: 40 }
"#;

/// Policy A without the `toggled` rule (the last one: the other rules keep their ids).
pub(crate) fn policy_b() -> String {
    POLICY_A
        .replace("# ztsoak policy A: B plus the toggled range", "# ztsoak policy B: A without the toggled range")
        .replace(
            "  - { name: toggled, from: [frontend], to: [payments], ports: [\"9000-9099/udp\"], action: allow }\n",
            "",
        )
}

pub(crate) const LIMIT_NAME: &str = "batch-udp";
pub(crate) const LIMIT_RATE: f64 = 200.0;
pub(crate) const LIMIT_BURST: f64 = 40.0;

pub(crate) const METRICS_PORT: u16 = 9465;
/// The agent keeps this many recent events (default 10,000): a bounded ring that fills within
/// the warm-up, so that its filling is not mistaken for a trend.
pub(crate) const EVENTS_HISTORY: usize = 2000;
/// The agent's live event stream (a broadcast channel) keeps the last 16,384 records for its
/// clients: bounded too, and filled once that many events were delivered.
pub(crate) const EVENT_BROADCAST: u64 = 16_384;

/// Memory bounds (see the README's Tests section for the reasoning).
pub(crate) const RSS_END_SLACK_KB: i64 = 20 * 1024;
pub(crate) const RSS_TREND_KB: i64 = 4 * 1024;

pub(crate) struct Options {
    pub(crate) seconds: u64,
    pub(crate) wait_udp: bool,
    pub(crate) push_every: u64,
    pub(crate) scan_rate: f64,
    pub(crate) csv: Option<PathBuf>,
}

pub(crate) fn parse_args() -> Result<Options> {
    let mut o = Options { seconds: 120, wait_udp: true, push_every: 1, scan_rate: SCAN_RATE, csv: None };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--seconds" => o.seconds = value("--seconds")?.parse().context("--seconds: not a number")?,
            "--no-wait-udp" => o.wait_udp = false,
            "--push-every" => o.push_every = value("--push-every")?.parse().context("--push-every: not a number")?,
            "--scan-rate" => o.scan_rate = value("--scan-rate")?.parse().context("--scan-rate: not a number")?,
            "--csv" => o.csv = Some(value("--csv")?.into()),
            "-h" | "--help" => {
                println!(
                    "usage: ztsoak [--seconds N] [--no-wait-udp] [--push-every S] [--scan-rate R] [--csv PATH]\n\
                     --seconds N     traffic and pushes for N seconds (default 60, at least 8)\n\
                     --no-wait-udp   after the traffic, wait only past the closing-TCP timeout (10 s),\n\
                     \x20               not the UDP one (60 s): live UDP entries are then checked\n\
                     \x20               against the flows that may still be live\n\
                     --push-every S  push a policy every S seconds (default 1; 0: never, for comparison)\n\
                     --scan-rate R   new denied keys the attacker's scan sends per second (default 300)\n\
                     --csv PATH      also write the per-second samples to PATH"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    ensure!(o.seconds >= 8, "--seconds must be at least 8");
    Ok(o)
}
