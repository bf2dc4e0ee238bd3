//! The tests' shared policies: fixtures under `tests/data/policies/` and the few generated
//! from parameters.

/// A policy for [`Lan::four_hosts`]: its segments (frontend, payments, batch; the attacker is
/// in none), then the rest of the file as given (a string literal: `rules:` and more).
#[macro_export]
macro_rules! four_host_policy {
    ($rest:literal) => {
        concat!(
            "version: 1\nsegments:\n  frontend: { cidrs: [10.20.1.0/24] }\n  payments: { cidrs: [10.20.2.10/32] }\n  batch: { cidrs: [10.20.3.0/24] }\n",
            $rest
        )
    };
}

/// The tests' smallest policy: frontend (10.20.1.0/24) may reach payments (10.20.2.10) on
/// 443/tcp, and nothing else is allowed. Tests extend it with rules appended at the end.
pub const WEB_POLICY: &str = r#"
version: 1
segments:
  frontend: { cidrs: [10.20.1.0/24] }
  payments: { cidrs: [10.20.2.10/32] }
rules:
  - { name: web, from: [frontend], to: [payments], ports: ["443/tcp"], action: allow }
"#;

/// Frontend (10.20.1.0/24) may reach `payments` (a CIDR) on these TCP ports: the policy whose
/// versions the policy-source tests (directory, fleet) and the fleet bench push.
pub fn ports_policy(payments: &str, ports: &[u16]) -> String {
    let ports: Vec<String> = ports.iter().map(|p| format!("\"{p}/tcp\"")).collect();
    format!(
        "version: 1\nsegments:\n  frontend: {{ cidrs: [10.20.1.0/24] }}\n  payments: {{ cidrs: [{payments}] }}\nrules:\n  - {{ name: web, from: [frontend], to: [payments], ports: [{}], action: allow }}\n",
        ports.join(", ")
    )
}

/// [`ports_policy`] with 443 and a misspelt protocol at line 6, column 71.
pub fn broken_ports_policy(payments: &str) -> String {
    ports_policy(payments, &[443, 8443]).replace("8443/tcp", "8443/tpc")
}
