//! `ztagent grant`, `grants` and `revoke`: the grant as the agent keeps and lists it.
use serde::{Deserialize, Serialize};

/// One grant, as the agent keeps and lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Grant {
    pub id: u32,
    /// Its entry in `ZT_GRANTS` (unique among the grants in force).
    pub index: u32,
    /// A segment name, `world`, `*`, or an address block (`10.20.9.0/24`).
    pub from: String,
    pub to: String,
    /// Port specs as in a rule; empty = every port and protocol.
    pub ports: Vec<String>,
    pub reason: String,
    /// Unix times (seconds) it was made and ends.
    pub granted_at: f64,
    pub expires_at: f64,
}
