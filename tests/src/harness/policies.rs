//! The tests' shared policies: fixtures under `tests/data/policies/` and the few generated
//! from parameters.

/// A policy for [`Lan::four_hosts`](crate::Lan::four_hosts): its segments (frontend, payments,
/// batch; the attacker is in none: `tests/data/policies/four-hosts.yaml`), then the rest of the
/// file as given (a string literal: `rules:` and more).
#[macro_export]
macro_rules! four_host_policy {
    ($rest:literal) => {
        concat!(include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/data/policies/four-hosts.yaml")), $rest)
    };
}

/// A policy whose segments are frontend (10.20.1.0/24, fd20:1::/64) and payments (10.20.2.10,
/// fd20:2::10): `tests/data/policies/frontend-payments.yaml`, then the rest of the file as
/// given (a string literal: more segments, `rules:` and more). Its first line is a comment, so
/// the rest starts at line 5.
#[macro_export]
macro_rules! frontend_payments_policy {
    ($rest:literal) => {
        concat!(include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/data/policies/frontend-payments.yaml")), $rest)
    };
}

/// The tests' smallest policy (`tests/data/policies/web.yaml`): frontend (10.20.1.0/24) may
/// reach payments (10.20.2.10) on 443/tcp, and nothing else is allowed. Tests extend it with
/// rules appended at the end. Its first line is a comment: the address of payments is on line 5.
pub const WEB_POLICY: &str = include_str!("../../data/policies/web.yaml");

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
