//! What NetworkPolicy allows between classes: what a pod's labels decide, the pair matrix,
//! and the classes no pair tells apart merged into blocks.

use super::*;

/// What a pod's namespace and labels decide (the same for every pod of those).
#[derive(Clone)]
pub(super) struct PodFacts {
    /// Policies selecting it for ingress, for egress.
    pub(super) ing: Vec<u32>,
    pub(super) eg: Vec<u32>,
    /// Rules one of whose selector peers matches it (bitset over the rules).
    pub(super) matched: Vec<u64>,
    /// The first label-selected native segment selecting it.
    pub(super) selected: Option<usize>,
}

pub(super) fn pod_facts(
    pod: &Pod,
    policies: &[NetworkPolicy],
    words: usize,
    ns_labels: &Labels,
    selectors: &[(usize, &policy::PodSelector)],
) -> PodFacts {
    let (mut ing, mut eg) = (Vec::new(), Vec::new());
    for (pi, p) in policies.iter().enumerate() {
        if p.namespace == pod.namespace && p.pod_selector.matches(&pod.labels) {
            if p.ingress_type {
                ing.push(pi as u32);
            }
            if p.egress_type {
                eg.push(pi as u32);
            }
        }
    }
    // Rules are numbered as `Index::new` numbers them: per policy, ingress then egress, the
    // rules of a direction the policy does not isolate left out.
    let mut matched = vec![0u64; words];
    let mut r = 0usize;
    for p in policies {
        for (rules, on) in [(&p.ingress, p.ingress_type), (&p.egress, p.egress_type)] {
            if !on {
                continue;
            }
            for rule in rules {
                let hit = rule.peers.iter().any(|peer| match peer {
                    Peer::Pods { namespaces, pods } => {
                        let ns_ok = match namespaces {
                            None => pod.namespace == p.namespace,
                            Some(s) => s.matches(ns_labels),
                        };
                        let pod_ok = pods.as_ref().is_none_or(|s| s.matches(&pod.labels));
                        (namespaces.is_some() || pods.is_some()) && ns_ok && pod_ok
                    }
                    Peer::IpBlock { .. } => false,
                });
                if hit {
                    matched[r / 64] |= 1 << (r % 64);
                }
                r += 1;
            }
        }
    }
    let selected = selectors
        .iter()
        .find(|(_, s)| s.namespace.as_deref().is_none_or(|n| n == pod.namespace) && s.selector.matches(&pod.labels))
        .map(|(i, _)| *i);
    PodFacts { ing, eg, matched, selected }
}

/// What NetworkPolicy allows for every ordered pair of classes (`n * n`, row = source): the
/// interned (ports, why) of the pair, 0 for nothing (or no pod at either end).
pub(super) fn pair_matrix(ix: &Index, classes: &[ClassKey]) -> (Entries, Vec<EntryId>) {
    let n = classes.len();
    let mut entries = Entries::default();
    let mut m: Vec<EntryId> = vec![0; n * n];
    let resolved = |r: &GRule, d: &ClassKey| -> Ports {
        if r.named.is_empty() {
            return r.fixed.clone();
        }
        let mut v = r.fixed.clone();
        for &nid in &r.named {
            let proto = ix.names[nid as usize].1;
            for &(_, port) in d.named.iter().filter(|(ni, _)| *ni == nid) {
                v.push(proto_range(proto, port, port));
            }
        }
        normalise(v)
    };
    let open = entries.intern(vec![ALL_KEYS], Why { egress: None, ingress: None });
    for (si, s) in classes.iter().enumerate() {
        for (di, d) in classes.iter().enumerate() {
            if !s.pod && !d.pod {
                continue;
            }
            let e_open = !s.pod || s.eg.is_empty();
            let i_open = !d.pod || d.ing.is_empty();
            if e_open && i_open {
                m[si * n + di] = open;
                continue;
            }
            // Per admitting policy, what it allows (egress: to d; ingress: from s).
            let side = |sel: &[u32], lists: &[Vec<u32>], peer: &ClassKey| -> Vec<(u32, Ports)> {
                let mut out = Vec::new();
                for &p in sel {
                    let mut v = Vec::new();
                    for &r in &lists[p as usize] {
                        if peer.matches(&ix.rules, r) {
                            v.extend(resolved(&ix.rules[r as usize], d));
                        }
                    }
                    let v = normalise(v);
                    if !v.is_empty() {
                        out.push((p, v));
                    }
                }
                out
            };
            let eg = if e_open { Vec::new() } else { side(&s.eg, &ix.egress, d) };
            let ing = if i_open { Vec::new() } else { side(&d.ing, &ix.ingress, s) };
            let union = |v: &[(u32, Ports)]| normalise(v.iter().flat_map(|(_, p)| p.iter().copied()).collect());
            let e_set = if e_open { vec![ALL_KEYS] } else { union(&eg) };
            let i_set = if i_open { vec![ALL_KEYS] } else { union(&ing) };
            let allowed = intersect(&e_set, &i_set);
            if allowed.is_empty() {
                continue;
            }
            let admitting = |v: &[(u32, Ports)], other: &[(u32, u32)]| -> Vec<u32> {
                v.iter().filter(|(_, p)| overlaps(p, other)).map(|(p, _)| *p).collect()
            };
            let why = Why {
                egress: (!e_open).then(|| admitting(&eg, &i_set)),
                ingress: (!i_open).then(|| admitting(&ing, &e_set)),
            };
            m[si * n + di] = entries.intern(allowed, why);
        }
    }
    (entries, m)
}

/// Classes no pair tells apart: the same native segment, and the same row and column of the
/// pair matrix `m` (`n * n`). The world base (the only class of its kind) stays alone. Blocks
/// of class indexes, in the order of their first class.
pub(super) fn merge(classes: &[ClassKey], m: &[EntryId]) -> Vec<Vec<usize>> {
    let n = classes.len();
    // Columns as slices: the transposed matrix.
    let t: Vec<EntryId> = (0..n * n).map(|i| m[(i % n) * n + i / n]).collect();
    type Key<'a> = (Option<usize>, bool, &'a [EntryId], &'a [EntryId]);
    let mut seen: HashMap<Key<'_>, usize> = HashMap::new();
    let mut blocks: Vec<Vec<usize>> = Vec::new();
    for (c, class) in classes.iter().enumerate() {
        let key = (class.native, class.world_base, &m[c * n..(c + 1) * n], &t[c * n..(c + 1) * n]);
        let b = *seen.entry(key).or_insert_with(|| {
            blocks.push(Vec::new());
            blocks.len() - 1
        });
        blocks[b].push(c);
    }
    blocks
}
