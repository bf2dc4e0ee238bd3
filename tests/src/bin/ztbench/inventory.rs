//! The agent's memory for what it learns, for 100,000 distinct flows: the inventory (`ztagent
//! inventory`: its entries, with their flows, packets and bytes, and what the agent last read
//! of each conntrack entry's counters, two per flow) and the alerts' baseline (the services and
//! ports each identity reached, and the rate history of each identity), measured as the growth
//! of this process's heap (the same code the agent runs), and what recording costs.
use std::{fmt::Write as _, time::Instant};

use agent_common::{CT_F_REPLY, CtKey, CtValue, PROTO_TCP};
use anyhow::Result;
use ztagent::{
    api::{EventRecord, Key},
    observe::inventory::Inventory,
};

/// Heap bytes in use (glibc's count: memory freed and reused does not hide what is kept, as it
/// would in the resident size).
fn heap() -> u64 {
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    let m = unsafe { libc::mallinfo2() };
    (m.uordblks + m.hblkhd) as u64
}

/// Identities that flow `i` comes from: 50,000 flows each.
const PER_IDENTITY: u32 = 50_000;

fn port(i: u32) -> u16 {
    (i % PER_IDENTITY) as u16 + 1
}

fn addr(i: u32) -> [u8; 16] {
    ztagent::policy::addr16(std::net::IpAddr::from([10, 1, (i >> 8) as u8, i as u8]))
}

/// The two conntrack entries of flow `i` (its first packet and the reply), as the agent reads
/// them: 3 packets of 300 bytes one way, 2 of 200 the other.
fn entries(i: u32) -> [(CtKey, CtValue); 2] {
    let orig =
        CtKey { src: addr(i), dst: addr(u32::MAX), sport: 40_000, dport: port(i), proto: PROTO_TCP, _pad: [0; 3] };
    let reply = CtKey { src: orig.dst, dst: orig.src, sport: orig.dport, dport: orig.sport, ..orig };
    [
        (orig, CtValue { packets: 3, bytes: 300, ..CtValue::default() }),
        (reply, CtValue { packets: 2, bytes: 200, flags: CT_F_REPLY, ..CtValue::default() }),
    ]
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// The inventory section of the report.
pub fn memory(flows: u32) -> Result<String> {
    let record = |i: u32| {
        let src = std::net::IpAddr::from([10, 1, (i >> 8) as u8, i as u8]);
        let mut r = EventRecord::flow(
            "allowed",
            "rule",
            (&format!("client{}", i / PER_IDENTITY), src),
            ("payments", [10, 2, 0, 1].into()),
            "tcp",
            port(i),
            1,
        );
        r.rule = Some("web".into());
        r
    };
    let records: Vec<EventRecord> = (0..flows).map(record).collect();
    // The conntrack entries of the flows, and the inventory key each belongs to (the agent
    // names them with the policy in force).
    let mut table: Vec<(CtKey, CtValue)> = Vec::with_capacity(2 * flows as usize);
    let mut names = std::collections::HashMap::with_capacity(2 * flows as usize);
    for i in 0..flows {
        let key = Key {
            src: format!("client{}", i / PER_IDENTITY),
            dst: "payments".into(),
            proto: "tcp".into(),
            port: port(i),
        };
        for (k, v) in entries(i) {
            names.insert(k, key.clone());
            table.push((k, v));
        }
    }

    let before = heap();
    let mut inv = Inventory::default();
    let t = Instant::now();
    for (i, r) in records.iter().enumerate() {
        inv.record(r, i as f64);
    }
    let per_event = t.elapsed().as_nanos() as f64 / f64::from(flows);
    let entries_grown = heap().saturating_sub(before);
    let t = Instant::now();
    let counted = inv.count_flows(&table, |k, _| names.get(k).cloned(), f64::from(flows));
    let first_read = t.elapsed().as_nanos() as f64 / table.len() as f64;
    drop(counted);
    let grown = heap().saturating_sub(before);
    // A later read in which every entry passed one more packet.
    for (_, v) in &mut table {
        v.packets += 1;
        v.bytes += 100;
    }
    let t = Instant::now();
    let counted = inv.count_flows(&table, |k, _| names.get(k).cloned(), f64::from(flows) + 1.0);
    let per_read = t.elapsed().as_nanos() as f64 / table.len() as f64;
    drop(counted);
    let listed = inv.list(None).entries.len();
    let packets: u64 = inv.list(None).entries.iter().map(|r| r.seen.packets).sum();
    anyhow::ensure!(
        packets == 7 * u64::from(flows),
        "the inventory counted {packets} packets of {flows} flows, not 7 each"
    );
    let mut text = String::new();
    let _ = writeln!(
        text,
        "\nInventory memory: {} distinct flows, each (identity, service, protocol, port) of its own, recorded \
         ({} entries kept, the bound is {}) with their packets and bytes read from {} conntrack entries: the heap grew \
         by {:.1} MB, {:.1} MB of it the entries ({:.0} bytes an entry) and {:.1} MB what was last read of each \
         conntrack entry ({:.0} bytes an entry); recording one event took {per_event:.0} ns, taking in one conntrack \
         entry's counters {first_read:.0} ns the first time, {per_read:.0} ns in a later read where every entry counted more.",
        crate::fmt_count(flows as usize),
        crate::fmt_count(listed),
        crate::fmt_count(ztagent::observe::inventory::MAX_ENTRIES),
        crate::fmt_count(inv.tracked()),
        mb(grown),
        mb(entries_grown),
        entries_grown as f64 / f64::from(flows.max(1)),
        mb(grown - entries_grown),
        (grown - entries_grown) as f64 / inv.tracked().max(1) as f64,
    );
    drop(inv);

    // The alerts' baseline, learning the same flows: services and ports per identity, then a
    // rate window closed.
    let before = heap();
    let mut engine = ztagent::observe::alerts::Engine::default();
    engine.configure(Some(ztagent::policy::Alerts::default()), 0.0);
    engine.tick(0.0);
    let t = Instant::now();
    for (i, r) in records.iter().enumerate() {
        engine.observe(r, i as f64 * 1e-3);
    }
    let per_event = t.elapsed().as_nanos() as f64 / f64::from(flows);
    engine.tick(3600.0);
    let grown = heap().saturating_sub(before);
    let (identities, rated) = engine.size();
    let _ = writeln!(
        text,
        "Alerts' baseline: the same {} flows learned ({identities} identities, {rated} with a rate history): the heap \
         grew by {:.1} MB ({:.0} bytes a flow); one event took {per_event:.0} ns.",
        crate::fmt_count(flows as usize),
        mb(grown),
        grown as f64 / f64::from(flows.max(1)),
    );
    drop(engine);

    // The rate history's own cost per identity, at its bound (16,384 identities).
    let before = heap();
    let mut engine = ztagent::observe::alerts::Engine::default();
    engine.configure(Some(ztagent::policy::Alerts::default()), 0.0);
    engine.tick(0.0);
    for i in 0..16_384u32 {
        let r = EventRecord::flow(
            "denied",
            "default",
            ("world", std::net::IpAddr::from([10, (i >> 8) as u8, i as u8, 1])),
            ("payments", [10, 2, 0, 1].into()),
            "tcp",
            22,
            1,
        );
        engine.observe(&r, 1.0);
    }
    engine.tick(60.0);
    let grown = heap().saturating_sub(before);
    let (_, rated) = engine.size();
    let _ = writeln!(
        text,
        "Rate history at its bound: {} identities (world prefixes sending one packet each): the heap grew by {:.1} MB \
         ({:.0} bytes an identity, 25 hourly tallies each).",
        crate::fmt_count(rated),
        mb(grown),
        grown as f64 / rated.max(1) as f64,
    );
    Ok(text)
}

/// What reading a full conntrack table costs the agent (`flowcount::FlowReader::read`, the
/// agent's own code): the datapath's maps loaded with a table of 262,144 entries, all filled.
pub fn table_read() -> Result<String> {
    use anyhow::Context as _;
    use ztagent::kernel::datapath::{Datapath, Limits, PinLayout};
    const ENTRIES: u32 = 262_144;
    let pins = PinLayout::new(format!("/sys/fs/bpf/ztbench-ct-{}", std::process::id()));
    let _guard = crate::PinGuard(pins.clone());
    let limits = Limits { conntrack: ENTRIES, ..Limits::default() };
    let mut dp = Datapath::load(pins.clone(), &limits).context("loading the datapath")?;
    let map = dp.ebpf.map_mut(agent_common::maps::CONNTRACK).context("no conntrack map")?;
    let mut table: aya::maps::HashMap<_, CtKey, CtValue> = aya::maps::HashMap::try_from(map)?;
    for i in 0..ENTRIES {
        let (k, v) = entries(i % PER_IDENTITY + (i / PER_IDENTITY) * 65_536)[(i & 1) as usize];
        let k = CtKey { sport: (i >> 1) as u16, ..k };
        table.insert(k, v, 0).context("filling the conntrack table")?;
    }
    let mut reader = ztagent::kernel::flowcount::FlowReader::open(&pins.maps())?;
    let t = Instant::now();
    let read = reader.read();
    let took = t.elapsed();
    Ok(format!(
        "Reading the conntrack table for the flows' counters: {} entries read (a full table of {}) in {:.0} ms \
         ({:.1} µs an entry, two syscalls each); the agent reads it again after 20 times what a read and its counting took.\n",
        crate::fmt_count(read.len()),
        crate::fmt_count(ENTRIES as usize),
        took.as_secs_f64() * 1e3,
        took.as_secs_f64() * 1e6 / read.len().max(1) as f64,
    ))
}
