//! The events file: exactly what `ztagent events` shows, also across rotations.
use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use integration_tests::{Agent, Lan, TempDir};
use serde_json::Value;

use super::{POLICY, is_igmp_chatter, start, traffic::udp_send};

/// PATH, PATH.1, PATH.2, PATH.3 that exist, oldest first.
pub(super) fn event_files(path: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = (1..=3).rev().map(|n| PathBuf::from(format!("{}.{n}", path.display()))).collect();
    v.push(path.to_path_buf());
    v.into_iter().filter(|p| p.exists()).collect()
}

/// Every line of the files, oldest first; each must be a JSON object.
pub(super) fn read_event_files(path: &Path) -> Vec<Value> {
    let mut out = Vec::new();
    for p in event_files(path) {
        let text = fs::read_to_string(&p).unwrap_or_default();
        for (i, line) in text.lines().enumerate() {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}:{}: not JSON ({e}): {line:?}", p.display(), i + 1));
            assert!(v.is_object(), "{}:{}: not an object: {line}", p.display(), i + 1);
            out.push(v);
        }
    }
    out
}

/// The files' records and `events -o json`'s, once they agree (the file is written a moment
/// after a record is published, and the sweep may publish at any time): panics with both
/// when they never do.
pub(super) fn file_matches_events(agent: &Agent, path: &Path) -> (Vec<Value>, Vec<Value>) {
    // Generous: it returns as soon as they agree; a busy machine may delay the writer.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let file = read_event_files(path);
        let evs = agent.events(&[]);
        if file == evs || Instant::now() > deadline {
            return (file, evs);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Sum of `count` per verdict.
pub(super) fn counts_by_verdict(records: &[Value]) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for r in records {
        *m.entry(r["verdict"].as_str().unwrap_or("?").to_string()).or_default() += r["count"].as_u64().unwrap_or(0);
    }
    m
}

pub(super) fn show(records: &[Value]) -> String {
    records.iter().map(Value::to_string).collect::<Vec<_>>().join("\n")
}

#[test]
fn the_events_file_rotates_and_keeps_every_record() {
    const MAX: u64 = 4000;
    const FLOWS: usize = 36; // ~300-byte lines: 3 files of 4000 bytes, far from the 4 kept
    let lan = Lan::four_hosts();
    let (pay, attacker) = (&lan.hosts[0], &lan.hosts[3]);
    let dir = TempDir::new();
    let policy = dir.file("p.yaml", POLICY);
    let path = dir.0.join("events.jsonl");
    let flags = vec![
        "--events-file".to_string(),
        path.to_str().unwrap().to_string(),
        "--events-file-max-bytes".to_string(),
        MAX.to_string(),
    ];
    let agent = start(pay, &policy, &flags);
    udp_send(&attacker.ns, pay.v4, 30_000, FLOWS, true, true);
    std::thread::sleep(Duration::from_millis(500));

    let (file, evs) = file_matches_events(&agent, &path);
    let files: Vec<(String, u64, usize)> = event_files(&path)
        .iter()
        .map(|p| {
            let text = fs::read_to_string(p).unwrap();
            (p.file_name().unwrap().to_string_lossy().into_owned(), text.len() as u64, text.lines().count())
        })
        .collect();
    eprintln!(
        "rotation: {} records ({} IGMP) in the files {files:?}; events -o json: {} records",
        file.len(),
        file.iter().filter(|r| is_igmp_chatter(r)).count(),
        evs.len()
    );
    for n in ["", ".1", ".2"] {
        let p = PathBuf::from(format!("{}{n}", path.display()));
        assert!(p.exists(), "{} does not exist: fewer than two rotations", p.display());
    }
    for (name, size, _) in &files {
        assert!(*size <= MAX, "{name} has {size} bytes, more than {MAX}");
        assert!(*size > 0, "{name} is empty");
    }
    // No record lost or added: the files, oldest first, are exactly the events kept.
    assert!(
        file == evs,
        "the files and `events -o json` differ:\n--- files\n{}\n--- events\n{}",
        show(&file),
        show(&evs)
    );
    // One record per flow sent; anything else is the LAN's IGMP reports.
    let (ours, others): (Vec<&Value>, Vec<&Value>) = file.iter().partition(|r| r["dst_segment"] == "payments");
    let mut ports: Vec<u64> = ours.iter().map(|r| r["dport"].as_u64().unwrap()).collect();
    ports.sort();
    assert_eq!(ports, (30_000..30_000 + FLOWS as u64).collect::<Vec<_>>(), "one record per flow sent");
    assert!(ours.iter().all(|r| r["count"] == 1 && r["src_segment"] == "world" && r["verdict"] == "denied"));
    assert!(others.iter().all(|r| is_igmp_chatter(r)), "records of traffic the test did not send");
}
