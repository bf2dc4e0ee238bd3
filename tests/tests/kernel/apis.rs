//! Declared HTTP ports (`apis:`) in the kernel: a push writes the policy's (segment, TCP port)
//! pairs into its slot of `ZT_API_PORTS` and sets `SLOT_F_APIS` on that slot; a push without
//! APIs clears the flag, and the stale entries go with the next push into their slot. Read
//! from the pinned maps by bpftool, and from `ztagent status`.
use std::collections::BTreeSet;

use agent_common::{SLOT_F_APIS, http::API_HTTP};
use integration_tests::{Agent, Lan, TempDir, WEB_POLICY, harness::bpf::dump};
use serde_json::{Value, json};

const APIS_POLICY: &str = r#"version: 1
segments:
  frontend: { cidrs: [10.20.1.0/24] }
  payments: { cidrs: [10.20.2.10/32] }
rules:
  - { name: web, from: [frontend], to: [payments], ports: ["443/tcp", "8080/tcp"], action: allow }
apis:
  - name: payments-api
    segment: payments
    ports: ["8080/tcp", "8443/tcp"]
    protocol: http
  - segment: frontend
    ports: ["9000-9001/tcp"]
"#;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// The kernel's `ZT_API_PORTS`: (slot, segment id, port), each checked to hold `API_HTTP`.
fn api_ports(agent: &Agent) -> BTreeSet<(u32, u32, u16)> {
    dump(&agent.pins, "ZT_API_PORTS")
        .into_iter()
        .map(|(k, v)| {
            assert_eq!((k.len(), v.len()), (12, 4), "ZT_API_PORTS entry {k:?} -> {v:?}");
            assert_eq!(u32_at(&v, 0), API_HTTP, "value of {k:?}");
            (u32_at(&k, 0), u32_at(&k, 4), u16::from_le_bytes([k[8], k[9]]))
        })
        .collect()
}

/// The slot in force and its `SlotConfig::flags`, from the pinned `ZT_ACTIVE` and `ZT_SLOTS`.
fn active_slot(agent: &Agent) -> (u32, u32) {
    let active = dump(&agent.pins, "ZT_ACTIVE");
    let slot = u32_at(&active[0].1, 0).checked_sub(1).expect("no policy in force");
    let slots = dump(&agent.pins, "ZT_SLOTS");
    let (_, cfg) = slots.iter().find(|(k, _)| u32_at(k, 0) == slot).expect("slot config");
    // SlotConfig: default_action, revision, any_any, world_flags, flags.
    (slot, u32_at(cfg, 16))
}

fn status(agent: &Agent) -> Value {
    let out = agent.cli(&["status", "-o", "json"]);
    assert!(out.status.success(), "status: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn declared_api_ports_reach_the_kernel_and_leave_it() {
    let lan = Lan::four_hosts();
    let payments = &lan.hosts[0];
    let dir = TempDir::new();
    let agent = Agent::start(&payments.ns, &[&payments.iface], Some(&dir.file("web.yaml", WEB_POLICY)));
    let (first, flags) = active_slot(&agent);
    assert_eq!(flags & SLOT_F_APIS, 0, "SLOT_F_APIS set without any API");
    assert!(api_ports(&agent).is_empty());
    assert_eq!(status(&agent)["apis"], json!({}));

    // With APIs: the slot pushed into holds exactly the declared pairs (frontend is segment 1,
    // payments 2), flagged.
    agent.push(&dir.file("apis.yaml", APIS_POLICY));
    let (slot, flags) = active_slot(&agent);
    assert_eq!(slot, 1 - first);
    assert_ne!(flags & SLOT_F_APIS, 0, "SLOT_F_APIS not set: flags {flags:#x}");
    let want: BTreeSet<(u32, u32, u16)> =
        [(2, 8080), (2, 8443), (1, 9000), (1, 9001)].into_iter().map(|(seg, port)| (slot, seg, port)).collect();
    assert_eq!(api_ports(&agent), want);
    assert_eq!(
        status(&agent)["apis"],
        json!({
            "payments-api": {"segment": "payments", "ports": ["8080/tcp", "8443/tcp"], "protocol": "http"},
            "frontend:9000-9001/tcp": {"segment": "frontend", "ports": ["9000-9001/tcp"], "protocol": "http"},
        })
    );
    let text = agent.cli(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("api payments-api: segment payments, ports 8080/tcp, 8443/tcp, protocol http"), "{text}");
    // `policy get` shows them.
    let got = agent.cli(&["policy", "get"]);
    let got = String::from_utf8_lossy(&got.stdout);
    assert!(got.contains("apis:") && got.contains("payments-api") && got.contains("9000-9001/tcp"), "{got}");

    // Without APIs: the flag is off in the slot in force; its entries were the other slot's
    // (judged by nobody now) and go with the next push into that slot.
    agent.push(&dir.file("web2.yaml", WEB_POLICY));
    let (now, flags) = active_slot(&agent);
    assert_eq!(now, first);
    assert_eq!(flags & SLOT_F_APIS, 0, "SLOT_F_APIS still set: flags {flags:#x}");
    assert!(api_ports(&agent).iter().all(|&(s, _, _)| s != now), "{:?}", api_ports(&agent));
    assert_eq!(status(&agent)["apis"], json!({}));
    agent.push(&dir.file("web3.yaml", WEB_POLICY));
    assert!(api_ports(&agent).is_empty(), "stale entries left: {:?}", api_ports(&agent));
    let (_, flags) = active_slot(&agent);
    assert_eq!(flags & SLOT_F_APIS, 0);
}
