//! Which rules and rate limits (items) apply to which (source, destination) pair, and the
//! profiles: identical item sets share one.
use std::collections::{BTreeMap, BTreeSet, HashMap};

use agent_common::{SEG_ANY, SEG_WORLD};

use super::super::model::{Policy, RateLimit, Rule, SegRef};

/// The sides of a rule or a rate limit as segment ids. A side with `*` keeps no names (they
/// add nothing).
pub(super) struct Sides {
    from_any: bool,
    from: BTreeSet<u32>,
    to_any: bool,
    to: BTreeSet<u32>,
}

impl Sides {
    fn of(rule: &Rule, segment_count: usize) -> Sides {
        Sides::new(&rule.from, &rule.to, segment_count)
    }

    /// A limit's `from` is one segment; no `to` means `*`.
    fn of_limit(limit: &RateLimit, segment_count: usize) -> Sides {
        let to = limit.to.as_deref().unwrap_or(&[SegRef::Any]);
        Sides::new(&[limit.from], to, segment_count)
    }

    fn new(from: &[SegRef], to: &[SegRef], segment_count: usize) -> Sides {
        let side = |refs: &[SegRef]| {
            let any = refs.contains(&SegRef::Any);
            let ids = if any {
                BTreeSet::new()
            } else {
                // A dangling index (hand-built policy) names a segment no address is in.
                refs.iter().filter_map(|r| seg_id(*r, segment_count)).collect()
            };
            (any, ids)
        };
        let (from_any, from) = side(from);
        let (to_any, to) = side(to);
        Sides { from_any, from, to_any, to }
    }
}

/// The segment id a reference names (`None` for `*` or a dangling index).
pub(crate) fn seg_id(r: SegRef, segment_count: usize) -> Option<u32> {
    match r {
        SegRef::Any => None,
        SegRef::World => Some(SEG_WORLD),
        SegRef::Named(i) if i < segment_count => u32::try_from(i + 1).ok(),
        SegRef::Named(_) => None,
    }
}

impl Sides {
    /// The sides of every item: the rules, then the rate limits. The address blocks of grants
    /// (the segments from `first_block` on) are each bound by the rate limits of the identity
    /// their addresses have, as if they were that identity.
    pub(super) fn of_policy(policy: &Policy, first_block: usize) -> Vec<Sides> {
        let n = policy.segments.len();
        let blocks_of = |id: u32| -> Vec<u32> {
            policy
                .grant_sources
                .iter()
                .enumerate()
                .filter(|(_, g)| g.identity.and_then(|r| seg_id(r, n)) == Some(id))
                .filter_map(|(j, _)| u32::try_from(first_block + j + 1).ok())
                .collect()
        };
        policy
            .rules
            .iter()
            .map(|r| Sides::of(r, n))
            .chain(policy.rate_limits.iter().map(|l| {
                let mut s = Sides::of_limit(l, n);
                let also: Vec<u32> = s.from.iter().flat_map(|&id| blocks_of(id)).collect();
                s.from.extend(also);
                s
            }))
            .collect()
    }
}

/// Wildcard segments: sources of an item to `*`, destinations of an item from `*`.
pub(super) fn wildcards(sides: &[Sides]) -> (BTreeSet<u32>, BTreeSet<u32>) {
    let mut src_wild = BTreeSet::new();
    let mut dst_wild = BTreeSet::new();
    for s in sides {
        if s.to_any {
            src_wild.extend(s.from.iter().copied());
        }
        if s.from_any {
            dst_wild.extend(s.to.iter().copied());
        }
    }
    (src_wild, dst_wild)
}

/// Items filed under what they name: both sides, one side, or neither.
#[derive(Default)]
struct Filed {
    direct: HashMap<(u32, u32), Vec<usize>>,
    /// Named source, `to: *`.
    by_src: HashMap<u32, Vec<usize>>,
    /// `from: *`, named destination.
    by_dst: HashMap<u32, Vec<usize>>,
    any_any: Vec<usize>,
}

fn file_items(sides: &[Sides]) -> Filed {
    let mut f = Filed::default();
    for (i, s) in sides.iter().enumerate() {
        match (s.from_any, s.to_any) {
            (false, false) => {
                for &a in &s.from {
                    for &b in &s.to {
                        f.direct.entry((a, b)).or_default().push(i);
                    }
                }
            }
            (false, true) => s.from.iter().for_each(|&a| f.by_src.entry(a).or_default().push(i)),
            (true, false) => s.to.iter().for_each(|&b| f.by_dst.entry(b).or_default().push(i)),
            (true, true) => f.any_any.push(i),
        }
    }
    f
}

/// (source segment, destination segment) -> the items (rule and limit indexes, increasing)
/// that apply to it.
pub(super) type PairItems = BTreeMap<(u32, u32), Vec<usize>>;

/// Profiles (item sets), the pairs as (source, destination, profile), the profile of (any, any).
pub(super) type Interned = (Vec<Vec<usize>>, Vec<(u32, u32, u32)>, Option<u32>);

/// Pair -> items (indexes, increasing), and the items of (any, any). (s, ANY) and (ANY, d)
/// sort after the explicit pairs of the same source since SEG_ANY is u32::MAX. One pass files
/// every item under what it names; a pair's items are then the merge of its own lists, so the
/// cost follows the policy's size, not pairs x items.
pub(super) fn pair_items(
    sides: &[Sides],
    src_wild: &BTreeSet<u32>,
    dst_wild: &BTreeSet<u32>,
) -> (PairItems, Vec<usize>) {
    let f = file_items(sides);
    let merged = |lists: &[Option<&Vec<usize>>]| -> Vec<usize> {
        let mut v: Vec<usize> = lists.iter().flatten().flat_map(|l| l.iter().copied()).collect();
        v.sort_unstable();
        v
    };
    let mut pair_items = PairItems::new();
    let explicit = f.direct.keys().copied().chain(src_wild.iter().flat_map(|&a| dst_wild.iter().map(move |&b| (a, b))));
    for (a, b) in explicit.collect::<BTreeSet<_>>() {
        let items = merged(&[f.direct.get(&(a, b)), f.by_src.get(&a), f.by_dst.get(&b), Some(&f.any_any)]);
        pair_items.insert((a, b), items);
    }
    for &a in src_wild {
        pair_items.insert((a, SEG_ANY), merged(&[f.by_src.get(&a), Some(&f.any_any)]));
    }
    for &b in dst_wild {
        pair_items.insert((SEG_ANY, b), merged(&[f.by_dst.get(&b), Some(&f.any_any)]));
    }
    (pair_items, f.any_any)
}

/// Profiles: identical item sets (rules and limits) share one. Returns the profiles, the
/// pairs with theirs, and the profile of (any, any).
pub(super) fn intern_profiles(pair_items: PairItems, any_any_items: Vec<usize>) -> Interned {
    let mut profiles: Vec<Vec<usize>> = Vec::new();
    let mut interned: HashMap<Vec<usize>, u32> = HashMap::new();
    let mut intern = |items: Vec<usize>| -> u32 {
        if let Some(&p) = interned.get(&items) {
            return p;
        }
        let p = u32::try_from(profiles.len()).unwrap_or(u32::MAX);
        interned.insert(items.clone(), p);
        profiles.push(items);
        p
    };
    let mut pairs = Vec::with_capacity(pair_items.len());
    for ((a, b), items) in pair_items {
        // Every pair written above has at least one item, by construction.
        pairs.push((a, b, intern(items)));
    }
    let any_any = (!any_any_items.is_empty()).then(|| intern(any_any_items));
    (profiles, pairs, any_any)
}
