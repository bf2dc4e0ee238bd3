//! The agent's memory for what it learns: the inventory (`ztagent inventory`) and the alerts'
//! baseline with 100,000 distinct flows recorded, measured as the growth of this process's
//! resident memory (the same code the agent runs), and what it costs to record one event.
use std::{fmt::Write as _, time::Instant};

use anyhow::Result;
use ztagent::{events::EventRecord, inventory::Inventory};

/// Heap bytes in use (glibc's count: memory freed and reused does not hide what is kept, as it
/// would in the resident size).
fn rss() -> u64 {
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    let m = unsafe { libc::mallinfo2() };
    (m.uordblks + m.hblkhd) as u64
}

/// The inventory section of the report.
pub fn memory(flows: u32) -> Result<String> {
    let record = |i: u32| {
        let src = std::net::IpAddr::from([10, 1, (i >> 8) as u8, i as u8]);
        let mut r = EventRecord::flow("allowed", "rule", (&format!("client{}", i / 50_000), src), ("payments", [10, 2, 0, 1].into()), "tcp", (i % 50_000) as u16 + 1, 1);
        r.rule = Some("web".into());
        r
    };
    let records: Vec<EventRecord> = (0..flows).map(record).collect();
    let before = rss();
    let mut inv = Inventory::default();
    let t = Instant::now();
    for (i, r) in records.iter().enumerate() {
        inv.record(r, i as f64);
    }
    let per_event = t.elapsed().as_nanos() as f64 / f64::from(flows);
    let grown = rss().saturating_sub(before);
    let listed = inv.list(None).entries.len();
    let mut text = String::new();
    let _ = writeln!(
        text,
        "\nInventory memory: {} distinct (identity, service, protocol, port) recorded ({} entries kept, \
         the bound is {}): the heap grew by {:.1} MB ({:.0} bytes an entry); recording one event took {per_event:.0} ns.",
        crate::fmt_count(flows as usize),
        crate::fmt_count(listed),
        crate::fmt_count(ztagent::inventory::MAX_ENTRIES),
        grown as f64 / 1e6,
        grown as f64 / f64::from(flows.max(1)),
    );
    drop(inv);

    // The alerts' baseline, learning the same flows.
    let before = rss();
    let mut engine = ztagent::alerts::Engine::default();
    engine.configure(Some(ztagent::policy::Alerts::default()), 0.0);
    let t = Instant::now();
    for (i, r) in records.iter().enumerate() {
        engine.observe(r, i as f64 * 1e-3);
    }
    let per_event = t.elapsed().as_nanos() as f64 / f64::from(flows);
    let grown = rss().saturating_sub(before);
    let _ = writeln!(
        text,
        "Alerts' baseline: the same {} flows learned: the heap grew by {:.1} MB ({:.0} bytes a flow); one event took {per_event:.0} ns.",
        crate::fmt_count(flows as usize),
        grown as f64 / 1e6,
        grown as f64 / f64::from(flows.max(1)),
    );
    drop(engine);
    Ok(text)
}
