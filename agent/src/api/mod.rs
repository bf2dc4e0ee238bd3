//! The control socket's contract: a Unix stream socket carrying one JSON request line and
//! JSON reply lines. The daemon serves it ([`server`]); the CLI is its client ([`client`]);
//! [`auth`] checks the caller's peer credentials.
//!
//! Every wire type is defined here, owned by no implementation: the daemon, the event
//! decoder, the inventory and the datapath convert to these. `api` imports nothing of the
//! agent but the clock (see `lib.rs` for the layer rule).
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

mod apis;
pub mod auth;
pub mod client;
mod events;
mod grants;
mod inventory;
pub mod server;

pub use apis::{ApiEndpoint, ApiListing};
pub use client::{ClientError, call, stream};
pub use events::{Criteria, EventFilter, EventRecord, HttpRecord, Icmp, status_matches, status_spec};
pub use grants::Grant;
pub use inventory::{Key, Listing, Row, Seen};
pub use server::{RequestError, read_request, write_line, write_reply};

pub const DEFAULT_SOCKET: &str = "/run/ztagent/ztagent.sock";
/// The largest request the daemon reads (a policy of ~100,000 CIDRs is a few MB).
pub const MAX_REQUEST: u64 = 64 << 20;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Validate and install a policy file's text; `origin` names it in messages.
    Push {
        origin: String,
        source: String,
    },
    /// The policy in force.
    Get,
    /// The verdict for one flow under the policy in force.
    Check(Flow),
    /// As `Check`, each end an address, a segment's name or a pod (`namespace/name`), resolved
    /// by the agent against the policy in force and the pods it knows.
    CheckNamed {
        src: String,
        dst: String,
        proto: u8,
        port: u16,
    },
    Status,
    /// Recent events matching the filter (one JSON line each), then, following, the live
    /// ones; `{"missed": N}` when the client fell behind.
    Events {
        follow: bool,
        /// Boxed: the filters are larger than every other request.
        #[serde(default)]
        filter: Box<EventFilter>,
    },
    /// A time-bound allow (see `grants`).
    Grant {
        from: String,
        to: String,
        ports: Vec<String>,
        seconds: u64,
        reason: String,
    },
    /// The grants in force.
    Grants,
    /// Ends a grant now.
    Revoke {
        id: u32,
    },
    /// What has been seen talking to what (since `since`, unix seconds; all without).
    Inventory {
        #[serde(default)]
        since: Option<f64>,
    },
    /// The HTTP endpoints seen on declared ports (`ztagent api inventory`).
    ApiInventory,
}

/// Told to an events client that fell behind the stream.
#[derive(Debug, Serialize, Deserialize)]
pub struct Missed {
    pub missed: u64,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Flow {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol number (6 tcp, 17 udp, 1 icmp).
    pub proto: u8,
    /// Destination port; for ICMP the type (8 = echo request).
    pub port: u16,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Pushed(PushResult),
    Policy {
        revision: u32,
        policy: serde_json::Value,
    },
    Check(CheckResult),
    Status(Box<Status>),
    /// A grant given (and the revision that holds it) or ended early.
    Granted {
        grant: Grant,
        revision: u32,
    },
    Grants {
        grants: Vec<Grant>,
    },
    Revoked {
        grant: Grant,
        revision: u32,
    },
    Inventory(Listing),
    ApiInventory(ApiListing),
    Error {
        message: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PushResult {
    pub revision: u32,
    pub segments: usize,
    pub rules: usize,
    /// Map entries written into the kernel.
    pub entries: usize,
}

/// A verdict and what decided it (`ztagent check -o json` prints this object).
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CheckResult {
    /// "allow" or "deny".
    pub verdict: String,
    /// The deciding rule's name, or null when the default action decided.
    pub rule: Option<String>,
    pub src_segment: String,
    pub dst_segment: String,
    /// With `--k8s-objects` (live checks): the pod (`namespace/name`) at the source or
    /// destination address, as the inventory in force names it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub src_pod: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub dst_pod: Option<String>,
    /// The rate limit the flow's packets count against, if any (allowed flows only).
    #[serde(default)]
    pub rate_limit: Option<String>,
    /// The policy revision judged against (live checks only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub revision: Option<u32>,
    /// "enforce", or "audit": then a "deny" passes, reported as would-deny.
    #[serde(default)]
    pub mode: String,
    /// A "deny" that passes, reported as would-deny: the policy, the deciding rule, or one of
    /// the two segments is in audit mode.
    #[serde(default)]
    pub audit: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Status {
    pub revision: u32,
    /// "enforce" or "audit" (the policy in force; "enforce" before any).
    #[serde(default)]
    pub mode: String,
    pub pin_path: String,
    /// On the wire an object keyed by interface name (`jq '.interfaces.eth0.ingress'`).
    #[serde(with = "keyed")]
    pub interfaces: Vec<Interface>,
    /// Packets by outcome since the maps were created, in the datapath's order; on the wire an
    /// object keyed by counter name (`jq .counters.events_lost`).
    #[serde(with = "counters")]
    pub counters: Vec<(String, u64)>,
    /// The rate limits in force; on the wire an object keyed by limit name.
    #[serde(default, with = "keyed")]
    pub limits: Vec<LimitStatus>,
    /// The APIs the policy in force declares (`apis`), keyed by name (an unnamed one by
    /// `SEGMENT:PORTS`): the flows the datapath parses as HTTP.
    #[serde(default)]
    pub apis: std::collections::BTreeMap<String, ApiStatus>,
    /// Fill of the state maps (conntrack, event aggregation, fragments, address buckets); on
    /// the wire an object keyed by map name (`jq .maps.ZT_CT.entries`).
    #[serde(default, with = "keyed")]
    pub maps: Vec<MapStatus>,
    /// The XDP attach mode asked for: "auto" (the kernel's choice), "native" or "generic".
    #[serde(default)]
    pub xdp_mode: String,
    /// Whether every map and link is still pinned under `pin_path`, and what the agent did
    /// about pins that vanished under it.
    #[serde(default)]
    pub pins: PinsStatus,
    /// `run --policy-dir`: the directory and what became of its versions (null without it).
    #[serde(default)]
    pub policy_source: Option<PolicySource>,
    /// `run --k8s-objects`: the directory of Kubernetes objects and what became of its
    /// versions (null without it).
    #[serde(default)]
    pub k8s_source: Option<K8sSource>,
}

/// The pin directory as the running agent checks it (every second): pins removed under a
/// running agent (by hand, or `ztagent uninstall`) are pinned again from what it holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PinsStatus {
    /// Every map and link is pinned under the pin path: enforcement outlives the agent.
    pub intact: bool,
    /// Pins found missing and pinned again since the agent started.
    pub restored: u64,
    /// When pins were last found missing and pinned again (RFC 3339), or null.
    pub last_restored: Option<String>,
    /// Pins missing that could not be pinned again (`PATH: why`): enforcement there ends with
    /// the agent.
    #[serde(default)]
    pub missing: Vec<String>,
}

/// The Kubernetes objects source (`ztagent run --k8s-objects DIR`), as `status` shows it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct K8sSource {
    /// `dir` (`--k8s-objects`) or `api` (`--k8s-api`).
    #[serde(default)]
    pub source: String,
    /// The directory watched; with `api`, the API server's URL.
    pub dir: String,
    /// True when the directory's newest version is the one in force; false while it is
    /// rejected (the inventory and NetworkPolicies applied before stay in force).
    pub up_to_date: bool,
    /// What is in force: object files read (with `api`: objects), namespaces, pods (endpoint
    /// addresses among them), NetworkPolicies.
    pub files: usize,
    pub namespaces: usize,
    pub pods: usize,
    pub pod_addresses: usize,
    pub network_policies: usize,
    /// The warnings of the version in force (skipped kinds, ...), one line each.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// `sha256`: of the object files (each file's name, a NUL, its bytes, in name order).
    pub last_applied: Option<AppliedVersion>,
    pub last_rejection: Option<RejectedVersion>,
}

/// The policy directory source (`ztagent run --policy-dir DIR`), as `status` shows it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PolicySource {
    /// The directory watched.
    pub dir: String,
    /// The policy file last read, through its symlinks (in a ConfigMap,
    /// `DIR/..2026_11_28_10_00_00.123/policy.yaml`); null before any was found.
    pub file: Option<String>,
    /// True when the directory's newest version is the one applied; false while it is
    /// rejected (the policy applied before stays in force).
    pub up_to_date: bool,
    pub last_applied: Option<AppliedVersion>,
    /// The last version rejected, also once a later one was applied (compare the times).
    pub last_rejection: Option<RejectedVersion>,
    // --- fleet (etcd) source: `dir` is its etcd:// URL, `file` PREFIX/policy@REVISION
    /// Whether the agent is connected to etcd now (null for a directory source).
    #[serde(default)]
    pub connected: Option<bool>,
    /// The fleet revision in force (etcd mod_revision of PREFIX/policy).
    #[serde(default)]
    pub fleet_revision: Option<i64>,
    // ---
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AppliedVersion {
    /// SHA-256 of the file's bytes (hex, as `sha256sum` prints it).
    pub sha256: String,
    /// The policy revision it was installed as.
    pub revision: u32,
    /// RFC 3339, UTC.
    pub time: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RejectedVersion {
    /// SHA-256 of the file's bytes; null when there was no file to read.
    pub sha256: Option<String>,
    /// Why: the diagnostics (`DIR/NAME:LINE:COL: message`, one per line), or what is missing.
    pub message: String,
    /// RFC 3339, UTC.
    pub time: String,
}

/// Entries and capacity of one kernel map (what `status` and `/metrics` report).
#[derive(Clone, Debug)]
pub struct MapFill {
    pub map: &'static str,
    pub entries: u64,
    pub capacity: u64,
}

/// `status --offline`: what the kernel enforces, read from the pinned maps and links alone
/// (no agent needed).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct OfflineStatus {
    pub pin_path: String,
    /// The revision in force (0: none was ever installed on these maps).
    pub revision: u32,
    /// "enforce" or "audit": the policy in force's.
    pub mode: String,
    /// One per interface with a pinned link, keyed by name (from the pin's name).
    #[serde(with = "keyed")]
    pub interfaces: Vec<PinnedInterface>,
    /// As in [`Status`]: packets by outcome since the maps were created.
    #[serde(with = "counters")]
    pub counters: Vec<(String, u64)>,
    /// As in [`Status`], keyed by map name.
    #[serde(with = "keyed")]
    pub maps: Vec<MapStatus>,
}

/// An interface's pinned links.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct PinnedInterface {
    pub name: String,
    /// The XDP link, null when none is pinned.
    pub ingress: Option<PinnedLinkState>,
    /// The TC (TCX) egress link, null when none is pinned.
    pub egress: Option<PinnedLinkState>,
}

/// A pinned link, as the kernel describes it.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct PinnedLinkState {
    pub link_id: u32,
    pub program_id: u32,
    /// The interface it is attached to in its network namespace; 0 when that interface is
    /// gone (the link enforces nothing), null when the kernel does not say.
    pub ifindex: Option<u32>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct MapStatus {
    pub map: String,
    pub entries: u64,
    pub capacity: u64,
}

/// One declared API of the policy in force.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiStatus {
    /// The servers' segment.
    pub segment: String,
    /// TCP ports and ranges as the policy writes them (`"8080/tcp"`, `"8000-8099/tcp"`).
    pub ports: Vec<String>,
    /// `http`: plaintext HTTP/1.x.
    pub protocol: String,
}

/// One rate limit: configuration, state, and what it did since it was installed unchanged.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct LimitStatus {
    pub name: String,
    /// "segment" or "address".
    pub scope: String,
    /// Each bucket as configured (`{"rate": 2000, "per": "second", "burst": 400}`); null when
    /// the limit has no such bucket.
    pub packets: Option<LimitBucket>,
    pub connections: Option<LimitBucket>,
    pub bytes: Option<LimitBucket>,
    /// Packet tokens available now (segment scope, packets bucket); null otherwise.
    pub packet_tokens: Option<f64>,
    /// Live per-address buckets (address scope) and how many were evicted to make room.
    pub address_buckets: usize,
    pub evicted: u64,
    pub packets_passed: u64,
    pub packets_dropped: u64,
    pub connections_passed: u64,
    pub connections_dropped: u64,
    pub bytes_passed: u64,
    pub bytes_dropped: u64,
}

/// One bucket of a rate limit as configured: `rate` units (packets, connections or bytes) per
/// `per` (`second`, `minute` or `hour`), bursts of `burst`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitBucket {
    pub rate: u64,
    pub per: String,
    pub burst: u64,
}

/// `2000/second, burst 400`: as the policy's text says it.
impl std::fmt::Display for LimitBucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}, burst {}", self.rate, self.per, self.burst)
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    pub ingress: Attachment,
    pub egress: Attachment,
    /// Node mode: the `--iface-pattern` that matched it (null for an `--iface` interface).
    #[serde(default)]
    pub pattern: Option<String>,
    #[serde(default)]
    pub ifindex: Option<u32>,
    /// Anti-spoofing on its ingress (node mode's interfaces).
    #[serde(default)]
    pub guarded: bool,
    /// The source prefixes a packet entering it may have (guarded interfaces).
    #[serde(default)]
    pub sources: Vec<String>,
}

/// How a program came to be attached to an interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Attachment {
    /// A new link was created and pinned.
    #[default]
    Attached,
    /// A link pinned by an earlier agent was updated in place to the new program.
    Adopted,
}

/// An item of a list that is an object keyed by name on the wire: the field holding its name
/// (unique in the list).
pub trait Named {
    const NAME_FIELD: &'static str;
}

impl Named for Interface {
    const NAME_FIELD: &'static str = "name";
}

impl Named for PinnedInterface {
    const NAME_FIELD: &'static str = "name";
}

impl Named for LimitStatus {
    const NAME_FIELD: &'static str = "name";
}

impl Named for MapStatus {
    const NAME_FIELD: &'static str = "map";
}

/// A list of [`Named`] items as a JSON object keyed by their names, in the list's order (the
/// name not repeated inside each item), read back in the order written.
mod keyed {
    use std::{fmt, marker::PhantomData};

    use serde::{
        Deserializer, Serialize, Serializer,
        de::{DeserializeOwned, Error as _, MapAccess, Visitor},
        ser::{Error as _, SerializeMap},
    };
    use serde_json::Value;

    use super::Named;

    pub fn serialize<T: Named + Serialize, S: Serializer>(items: &[T], s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(items.len()))?;
        for item in items {
            let mut value = serde_json::to_value(item).map_err(S::Error::custom)?;
            let name = value.as_object_mut().and_then(|o| o.remove(T::NAME_FIELD));
            let Some(Value::String(name)) = name else {
                return Err(S::Error::custom(format!("an item without its `{}`", T::NAME_FIELD)));
            };
            map.serialize_entry(&name, &value)?;
        }
        map.end()
    }

    pub fn deserialize<'de, T: Named + DeserializeOwned, D: Deserializer<'de>>(d: D) -> Result<Vec<T>, D::Error> {
        struct Items<T>(PhantomData<T>);
        impl<'de, T: Named + DeserializeOwned> Visitor<'de> for Items<T> {
            type Value = Vec<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object keyed by name")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some((name, mut value)) = map.next_entry::<String, Value>()? {
                    let Some(fields) = value.as_object_mut() else {
                        return Err(A::Error::custom(format!("`{name}` is not an object")));
                    };
                    fields.insert(T::NAME_FIELD.into(), Value::String(name));
                    out.push(serde_json::from_value(value).map_err(A::Error::custom)?);
                }
                Ok(out)
            }
        }
        d.deserialize_map(Items(PhantomData))
    }
}

/// `Status::counters` as a JSON object keyed by name, in the datapath's order (read back in the
/// order written).
mod counters {
    use std::fmt;

    use serde::{
        Deserializer, Serializer,
        de::{MapAccess, Visitor},
        ser::SerializeMap,
    };

    pub fn serialize<S: Serializer>(counters: &[(String, u64)], s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(counters.len()))?;
        for (name, value) in counters {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, u64)>, D::Error> {
        struct Counters;
        impl<'de> Visitor<'de> for Counters {
            type Value = Vec<(String, u64)>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of counter names and values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    out.push(entry);
                }
                Ok(out)
            }
        }
        d.deserialize_map(Counters)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_counters_are_an_object_keyed_by_name_in_order() {
        let status = Status { counters: vec![("pass".into(), 3), ("events_lost".into(), 1)], ..Status::default() };
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["counters"]["events_lost"], 1);
        let text = serde_json::to_string(&status).unwrap();
        assert!(text.contains(r#""counters":{"pass":3,"events_lost":1}"#), "{text}");
        let back: Status = serde_json::from_str(&text).unwrap();
        assert_eq!(back.counters, status.counters);
    }

    #[test]
    fn status_lists_are_objects_keyed_by_name_in_order() {
        let limit = |name: &str| LimitStatus { name: name.into(), scope: "segment".into(), ..LimitStatus::default() };
        let map = |name: &str, entries| MapStatus { map: name.into(), entries, capacity: 10 };
        let status = Status {
            interfaces: vec![Interface { name: "eth1".into(), ..Interface::default() }],
            limits: vec![limit("zeta"), limit("alpha")],
            maps: vec![map("ZT_CT", 3), map("ZT_AGG", 1)],
            ..Status::default()
        };
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["maps"]["ZT_CT"], serde_json::json!({"entries": 3, "capacity": 10}));
        assert_eq!(json["limits"]["alpha"]["scope"], "segment");
        assert_eq!(json["interfaces"]["eth1"]["ingress"], "attached");
        let text = serde_json::to_string(&status).unwrap();
        assert!(text.contains(r#""limits":{"zeta":"#), "{text}");
        let back: Status = serde_json::from_str(&text).unwrap();
        let names = back.limits.iter().map(|l| l.name.as_str()).collect::<Vec<_>>();
        assert_eq!(
            (names, back.maps[1].map.as_str(), back.interfaces[0].name.as_str()),
            (vec!["zeta", "alpha"], "ZT_AGG", "eth1")
        );
        assert!(serde_json::from_str::<Status>(&text.replace(r#""ZT_CT":{"#, r#""ZT_CT":[1],"x":{"#)).is_err());
    }
}
