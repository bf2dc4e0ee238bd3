//! Ports: the intervals of a profile's port-key space and their verdicts, as prefixes.
use std::collections::BTreeSet;

use agent_common::{PORT_KEY_BITS, VERDICT_F_AUDIT, VERDICT_GRANT_SHIFT, Verdict};

use super::super::model::{Action, Mode, Policy, PortSpec, RateLimit, Rule};
use super::PORT_SPACE;

/// The inclusive port-key ranges a rule covers.
pub(crate) fn rule_ranges(rule: &Rule) -> Vec<(u32, u32)> {
    port_ranges(rule.ports.as_deref())
}

/// The inclusive port-key ranges a rate limit covers.
pub(crate) fn limit_ranges(limit: &RateLimit) -> Vec<(u32, u32)> {
    port_ranges(limit.ports.as_deref())
}

/// The inclusive port-key ranges of a `ports` list (absent = the whole space).
fn port_ranges(ports: Option<&[PortSpec]>) -> Vec<(u32, u32)> {
    match ports {
        None => vec![(0, PORT_SPACE - 1)],
        Some(specs) => specs.iter().map(|p| p.key_range()).collect(),
    }
}

/// Combines matching rules: the first deny if any, else the first allow. `rules` holds rule
/// indexes (0-based) in increasing order.
pub(crate) fn combine(policy: &Policy, rules: impl IntoIterator<Item = usize>) -> Option<Verdict> {
    let mut allow = None;
    for i in rules {
        let rule = &policy.rules[i];
        let verdict = Verdict {
            action: rule.action.code(),
            rule: rule_id(i),
            // Only a deny rule is ever audited (validation); its denials pass, reported. A
            // grant's allow carries its index, for the datapath to check its deadline.
            flags: if rule.mode == Mode::Audit { VERDICT_F_AUDIT } else { 0 }
                | rule.grant.map_or(0, |g| (g + 1) << VERDICT_GRANT_SHIFT),
            ..Default::default()
        };
        match rule.action {
            Action::Deny => return Some(verdict),
            Action::Allow => {
                allow.get_or_insert(verdict);
            }
        }
    }
    allow
}

fn rule_id(index: usize) -> u32 {
    u32::try_from(index + 1).unwrap_or(u32::MAX)
}

/// The 1-based id of the limit at `index`.
pub(crate) fn limit_id(index: usize) -> u32 {
    u32::try_from(index + 1).unwrap_or(u32::MAX)
}

/// The verdict of a piece of port space: `rules` decide it (else the default action); when it
/// allows, the first of `limits` (0-based indexes, increasing) bounds it. `None` when the
/// piece needs no `PORTS` entry (it is the default action with no limit).
pub(crate) fn piece_verdict(
    policy: &Policy,
    rules: impl IntoIterator<Item = usize>,
    first_limit: Option<usize>,
) -> Option<Verdict> {
    let mut verdict = match combine(policy, rules) {
        Some(v) => v,
        None if policy.default_action == Action::Allow && first_limit.is_some() => {
            Verdict { action: Action::Allow.code(), rule: 0, ..Default::default() }
        }
        None => return None,
    };
    if verdict.action == Action::Allow.code() {
        verdict.limit = first_limit.map_or(0, limit_id);
    }
    Some(verdict)
}

/// The port-key intervals `[lo, hi]` of one profile with their verdicts: sorted, disjoint,
/// adjacent intervals with equal verdicts merged, keys that need no entry (default action and
/// no limit, see [`piece_verdict`]) left out. `rules` and `limits` are 0-based indexes into
/// the policy's rules and rate limits, increasing.
pub(crate) fn profile_intervals(policy: &Policy, rules: &[usize], limits: &[usize]) -> Vec<(u32, u32, Verdict)> {
    // Sweep over the boundaries: +1 where a range starts, -1 just after it ends. An item may
    // list overlapping ranges, hence a count per item. Items are numbered rules first, then
    // limits (j >= rules.len()).
    let mut events: Vec<(u32, bool, usize)> = Vec::new();
    for (j, &r) in rules.iter().enumerate() {
        for (lo, hi) in rule_ranges(&policy.rules[r]) {
            events.push((lo, true, j));
            events.push((hi + 1, false, j));
        }
    }
    for (j, &l) in limits.iter().enumerate() {
        for (lo, hi) in limit_ranges(&policy.rate_limits[l]) {
            events.push((lo, true, rules.len() + j));
            events.push((hi + 1, false, rules.len() + j));
        }
    }
    events.sort_unstable();
    let mut counts = vec![0u32; rules.len() + limits.len()];
    let mut active: BTreeSet<usize> = BTreeSet::new();
    let mut active_limits: BTreeSet<usize> = BTreeSet::new();
    let mut out: Vec<(u32, u32, Verdict)> = Vec::new();
    let mut i = 0;
    while i < events.len() {
        let pos = events[i].0;
        while i < events.len() && events[i].0 == pos {
            let (_, start, j) = events[i];
            let (set, id) =
                if j < rules.len() { (&mut active, rules[j]) } else { (&mut active_limits, limits[j - rules.len()]) };
            if start {
                counts[j] += 1;
                if counts[j] == 1 {
                    set.insert(id);
                }
            } else {
                counts[j] -= 1;
                if counts[j] == 0 {
                    set.remove(&id);
                }
            }
            i += 1;
        }
        let end = events.get(i).map_or(PORT_SPACE, |e| e.0);
        if pos >= PORT_SPACE || end <= pos {
            continue;
        }
        let Some(verdict) = piece_verdict(policy, active.iter().copied(), active_limits.first().copied()) else {
            continue;
        };
        match out.last_mut() {
            Some(last) if last.1 + 1 == pos && last.2 == verdict => last.1 = end - 1,
            _ => out.push((pos, end - 1, verdict)),
        }
    }
    out
}

/// Splits `[lo, hi]` (within the 24-bit space) into aligned prefixes `(bits, value)`.
pub(crate) fn prefixes(lo: u32, hi: u32) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    let mut lo = u64::from(lo);
    let end = u64::from(hi) + 1;
    let space = u64::from(PORT_SPACE);
    while lo < end {
        // The largest aligned block starting at lo that fits.
        let mut size = if lo == 0 { space } else { (lo & lo.wrapping_neg()).min(space) };
        while lo + size > end {
            size >>= 1;
        }
        let bits = PORT_KEY_BITS - size.trailing_zeros();
        out.push((bits, lo as u32));
        lo += size;
    }
    out
}
