//! The per-packet table as markdown, and the targets it is judged against.

use super::{
    DENIED, DENIED_FLOOR, EMPTY, ESTABLISHED, GUARDED, MAX_CIDR_GROWTH, MAX_DENIED_VS_FLOOR,
    MAX_ESTABLISHED_VS_REFERENCE, MAX_RULE_GROWTH, NEW_FLOW, Options, Probe, REFERENCE, Row,
};
use std::fmt::Write as _;

pub(crate) fn fmt_count(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub(crate) fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "FAIL" }
}

/// The markdown report and whether every target passed.
pub(crate) fn report(rows: &[Row], probes: &[Probe], opts: &Options) -> (String, bool) {
    let mut s = String::new();
    cost_tables(&mut s, rows, probes, opts);
    let all_ok = targets(&mut s, rows);
    (s, all_ok)
}

/// A cost and its ratio to the empty program: `12 (1.50x)`.
fn cell(r: &Row, i: usize) -> String {
    format!("{:.0} ({:.2}x)", r.cost[i].0, r.cost[i].1)
}

/// The per-packet table, the guarded ingress, the breakdown (when measured), the notes and the
/// policies measured.
fn cost_tables(s: &mut String, rows: &[Row], probes: &[Probe], opts: &Options) {
    let _ = writeln!(
        s,
        "ztagent XDP ingress, BPF_PROG_TEST_RUN: median of {} runs of {} repeats; \
         (x empty) = median ratio to the empty XDP program measured in the same runs. \
         The kernel reports whole ns (rounded down). push ms: the first install of the policy \
         (clearing the inactive slot, which holds the policy measured before, then writing this \
         one); compile ms: `policy::compile`.\n",
        opts.runs,
        fmt_count(opts.repeat as usize)
    );
    let _ = writeln!(
        s,
        "| rules | CIDRs | empty ns | established ns (x empty) | denied ns (x empty) | denied, first packet ns (x empty) | new flow ns (x empty) | reference ns (x empty) | denied floor ns (x empty) | established / reference | denied / denied floor | push ms | compile ms |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {} | {} | {:.0} ({:.2}x) | {} | {} | {} | {:.2} | {:.2} | {:.1} | {:.1} |",
            fmt_count(r.rules),
            fmt_count(r.cidrs),
            r.cost[EMPTY].0,
            cell(r, ESTABLISHED),
            cell(r, DENIED),
            r.first_denied.0,
            r.first_denied.1,
            cell(r, NEW_FLOW),
            cell(r, REFERENCE),
            cell(r, DENIED_FLOOR),
            r.vs_floor.0,
            r.vs_floor.1,
            r.push_ms,
            r.compile_ms
        );
    }
    let _ = writeln!(
        s,
        "\nAnti-spoofing (node mode's guarded ingress, `zt_ingress_guarded`: one LPM lookup of \
         (interface, source) before the pipeline), the established frame, ns (x empty):\n"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "- {} rules / {} CIDRs: guarded {} against unguarded {}: {:+.0} ns",
            fmt_count(r.rules),
            fmt_count(r.cidrs),
            cell(r, GUARDED),
            cell(r, ESTABLISHED),
            r.cost[GUARDED].0 - r.cost[ESTABLISHED].0
        );
    }
    breakdown(s, rows, probes);
    let _ = writeln!(
        s,
        "\n*reference*: a program that only parses the established frame and looks its flow up in \
         the conntrack table (`zt_reference`): the least any stateful program does per packet, \
         measured in the same runs. *denied floor*: a program that parses the denied frame, \
         misses the conntrack table and finds the flow in the denial cache (`zt_denied_floor`): \
         the least a stateful program with a denial cache does with a repeat-denied packet. The \
         two ratio columns are medians of per-round ratios."
    );
    let _ = writeln!(s, "\nPolicies (one slot; both slots hold the policy while it is measured):\n");
    for r in rows {
        let _ = writeln!(s, "- {} rules / {} CIDRs: {}", fmt_count(r.rules), fmt_count(r.cidrs), r.summary);
    }
}

/// With `--breakdown`: the same rounds, frames that each take part of the denied path.
fn breakdown(s: &mut String, rows: &[Row], probes: &[Probe]) {
    if probes.len() > GUARDED + 1 {
        let extra = &probes[GUARDED + 1..];
        let _ = write!(s, "\nBreakdown, ns (x empty):\n\n| rules | CIDRs | established | denied |");
        for p in extra {
            let _ = write!(s, " {} |", p.name);
        }
        let _ = writeln!(s, "\n|---:|---:|---:|---:|{}", "---:|".repeat(extra.len()));
        for r in rows {
            let _ = write!(
                s,
                "| {} | {} | {} | {} |",
                fmt_count(r.rules),
                fmt_count(r.cidrs),
                cell(r, ESTABLISHED),
                cell(r, DENIED)
            );
            for i in GUARDED + 1..probes.len() {
                let _ = write!(s, " {} |", cell(r, i));
            }
            let _ = writeln!(s);
        }
    }
}

/// The targets, each PASS or FAIL; true when all pass.
fn targets(s: &mut String, rows: &[Row]) -> bool {
    let mut all_ok = true;
    let _ = writeln!(s, "\nTargets:\n");
    let mut line = |ok: bool, text: String| {
        all_ok &= ok;
        let _ = writeln!(s, "- {}: {text}", verdict(ok));
    };
    for r in rows {
        let (rules, cidrs) = (fmt_count(r.rules), fmt_count(r.cidrs));
        let (est, den) = r.vs_floor;
        line(
            est <= MAX_ESTABLISHED_VS_REFERENCE,
            format!(
                "{rules} rules / {cidrs} CIDRs: established {est:.2}x the reference <= {MAX_ESTABLISHED_VS_REFERENCE}x"
            ),
        );
        line(
            den <= MAX_DENIED_VS_FLOOR,
            format!(
                "{rules} rules / {cidrs} CIDRs: repeat denied {den:.2}x the denied floor <= {MAX_DENIED_VS_FLOOR}x"
            ),
        );
    }
    // Growth checks compare ratios to the empty program (the cost normalised by the run's
    // speed), between the smallest and the largest size measured.
    let find = |rules: usize, cidrs: usize| rows.iter().find(|r| r.rules == rules && r.cidrs == cidrs);
    let sizes = |f: fn(&Row) -> usize| {
        let mut v: Vec<usize> = rows.iter().map(f).collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let (rule_sizes, cidr_sizes) = (sizes(|r| r.rules), sizes(|r| r.cidrs));
    if let (Some(&lo), Some(&hi)) = (cidr_sizes.first(), cidr_sizes.last())
        && lo < hi
    {
        for &n in &rule_sizes {
            if let (Some(a), Some(b)) = (find(n, lo), find(n, hi)) {
                let g = b.first_denied.1 / a.first_denied.1;
                line(
                    g <= MAX_CIDR_GROWTH,
                    format!(
                        "{} rules: first denied packet (full policy path) at {} CIDRs / at {} CIDRs = {g:.2} <= {MAX_CIDR_GROWTH}",
                        fmt_count(n),
                        fmt_count(hi),
                        fmt_count(lo)
                    ),
                );
            }
        }
    }
    if let (Some(&lo), Some(&hi)) = (rule_sizes.first(), rule_sizes.last())
        && lo < hi
    {
        for &n in &cidr_sizes {
            if let (Some(a), Some(b)) = (find(lo, n), find(hi, n)) {
                let g = b.first_denied.1 / a.first_denied.1;
                line(
                    g <= MAX_RULE_GROWTH,
                    format!(
                        "{} CIDRs: denied cost with {} rules / with {} rules = {g:.2} <= {MAX_RULE_GROWTH} (lookups, not loops)",
                        fmt_count(n),
                        fmt_count(hi),
                        fmt_count(lo)
                    ),
                );
            }
        }
    }
    all_ok
}
