//! The comparative benchmark, quick: `ztbench --compare --quick --rounds 1` must set up every
//! dropper (XDP drop-all, XDP with one LPM lookup, ztagent, xdp-filter, nftables netdev ingress
//! and inet input, the empty program) at every N, send live traffic through each with its
//! generator (an AF_PACKET TX ring: no BPF_PROG_TEST_RUN live frames, which these kernels
//! refuse), and see it arrive and cost the receiver CPU time. It fails loudly when a dropper
//! cannot be set up; it never fails on the measured rates (targets are `ztbench`'s report).
use std::process::Command;

use integration_tests::TempDir;
use serde_json::Value;

#[test]
fn every_dropper_is_set_up_and_sees_live_traffic() {
    let dir = TempDir::new();
    let json = dir.0.join("compare.json");
    let out = Command::new(env!("CARGO_BIN_EXE_ztbench"))
        .args(["--compare", "--quick", "--rounds", "1", "--json"])
        .arg(&json)
        .output()
        .expect("run ztbench");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "ztbench --compare failed ({}):\n{stdout}\n{stderr}", out.status);
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).expect("the JSON report")).expect("JSON");
    let results = v["results"].as_array().expect("results");
    for dropper in [
        "no program",
        "XDP drop-all",
        "XDP one LPM lookup",
        "ztagent",
        "xdp-filter",
        "nft netdev ingress",
        "nft inet input",
    ] {
        for traffic in ["denied, one source", "denied, scan from 65,536 sources", "allowed, established"] {
            if dropper == "XDP drop-all" && traffic.starts_with("allowed") {
                continue;
            }
            for n in [10, 1_000, 100_000] {
                let r = results
                    .iter()
                    .find(|r| r["dropper"] == dropper && r["traffic"] == traffic && r["cidrs"] == n)
                    .unwrap_or_else(|| panic!("no result for {dropper}, {traffic}, {n} CIDRs:\n{stdout}"));
                // Traffic reached the receiver (a property, not a rate floor).
                let mpps = r["mpps_median"].as_f64().expect("mpps");
                assert!(mpps > 0.0, "{dropper}, {traffic}, {n} CIDRs: no packet arrived:\n{stdout}");
                // The generator sent, and the receiver's NAPI thread spent time on the packets.
                let offered = r["offered_mpps_median"].as_f64().expect("offered");
                assert!(offered > 0.0, "{dropper}, {traffic}, {n} CIDRs: the generator sent nothing:\n{stdout}");
                let ns = r["rx_cpu_ns_per_packet_median"].as_f64().expect("receiver CPU time");
                assert!(ns > 0.0, "{dropper}, {traffic}, {n} CIDRs: no receiver CPU time measured:\n{stdout}");
            }
        }
    }
    assert!(stdout.contains("Targets ("), "no targets in the report:\n{stdout}");
}
