//! `translate`: (native policy, inventory, NetworkPolicies) -> the native policy to enforce,
//! in phases: the native segments' CIDRs, the endpoints' owners, classes of addresses (pods,
//! then regions), the pair matrix, blocks (merged classes) named as segments, the native rules
//! rewritten over them, and NetworkPolicy's allows.

use super::matrix::{PodFacts, merge, pair_matrix, pod_facts};
use super::*;

/// Translates (native policy, inventory, NetworkPolicies) into the native policy to enforce.
/// See the module documentation for the meaning and the construction.
pub fn translate(
    native: &Policy,
    cluster: &Cluster,
    policies: &[NetworkPolicy],
) -> Result<Translation, TranslateError> {
    if !policies.is_empty() && native.default_action == Action::Allow {
        return Err(TranslateError::DefaultAllow);
    }
    // Without NetworkPolicies under `defaultAction: allow` every pod flow is allowed either
    // way: pods are plain addresses of their segments.
    let netpol = !(policies.is_empty() && native.default_action == Action::Allow);
    let ix = Index::new(policies);
    let mut warnings = Vec::new();
    let nat = NativeCidrs::new(native);
    let selectors: Vec<(usize, &crate::policy::PodSelector)> =
        native.segments.iter().enumerate().filter_map(|(i, s)| s.selector.as_ref().map(|sel| (i, sel))).collect();
    let owner = endpoint_owners(cluster, &mut warnings);
    let ctx = Ctx {
        native,
        cluster,
        policies,
        ix: &ix,
        netpol,
        words: ix.rules.len().div_ceil(64),
        nat: &nat,
        selectors: &selectors,
    };
    let mut classes = Classes::new(ctx.words);
    let (pod_addresses, classified) = classify_pods(&ctx, &owner, &mut classes, &mut warnings);
    let block_net = classify_regions(&ctx, &classified, &mut classes);
    let n = classes.keys.len();
    if n > MAX_CLASSES {
        return Err(TranslateError::TooManyClasses(n));
    }
    // The pair matrix over classes, then the classes no pair tells apart merged.
    let (entries, m) = if netpol { pair_matrix(&ix, &classes.keys) } else { (Entries::default(), vec![0; n * n]) };
    let blocks = merge(&classes.keys, &m);
    let mut named = name_blocks(native, &classes, &blocks);
    fill_cidrs(native, &classes, &blocks, &mut named, &nat, &block_net);
    let (mut rules, rate_limits) = rewrite_native(native, &named, &mut warnings);
    // NetworkPolicy allows, over blocks, after the native rules.
    if netpol {
        let mut pos = vec![usize::MAX; blocks.len()];
        for (i, &b) in named.order.iter().enumerate() {
            pos[b] = i;
        }
        let taken: BTreeSet<String> = rules.iter().map(|r| r.name.clone()).collect();
        let view = Blocks { blocks: &blocks, m: &m, n, pos: &pos, seg_ref: &named.seg_ref };
        rules.extend(np_rules(&view, &entries, policies, taken));
    }
    let apis = rewrite_apis(native, &named);
    let policy = Policy {
        mode: native.mode,
        default_action: native.default_action,
        segments: named.segments,
        rules,
        rate_limits,
        alerts: native.alerts.clone(),
        apis,
        // The daemon applies no grant from an address block under Kubernetes inputs: the
        // native policy has no grant sources here.
        grant_sources: Vec::new(),
    };
    Ok(Translation { policy, warnings, pod_addresses, classes: n })
}

/// What every phase reads.
struct Ctx<'a> {
    native: &'a Policy,
    cluster: &'a Cluster,
    policies: &'a [NetworkPolicy],
    ix: &'a Index,
    netpol: bool,
    /// 64-bit words of a bitset over the rules.
    words: usize,
    nat: &'a NativeCidrs,
    selectors: &'a [(usize, &'a crate::policy::PodSelector)],
}

/// The native segments' CIDRs: exact keys and the longest-prefix lookup.
struct NativeCidrs {
    /// CIDR key -> the first segment listing it.
    cidrs: HashMap<Key, usize>,
    nets: HashMap<Key, IpNet>,
    /// Prefix lengths present, longest first.
    lens: Vec<u32>,
}

impl NativeCidrs {
    fn new(native: &Policy) -> NativeCidrs {
        let mut cidrs: HashMap<Key, usize> = HashMap::new();
        let mut nets: HashMap<Key, IpNet> = HashMap::new();
        for (i, s) in native.segments.iter().enumerate() {
            for net in &s.cidrs {
                let k = cidr_key(net);
                cidrs.entry(k).or_insert(i);
                nets.entry(k).or_insert(*net);
            }
        }
        let mut lens: Vec<u32> = cidrs.keys().map(|k| k.0).collect();
        lens.sort_unstable_by(|a, b| b.cmp(a));
        lens.dedup();
        NativeCidrs { cidrs, nets, lens }
    }

    /// The native segment whose longest CIDR holds `k`.
    fn of(&self, k: Key) -> Option<usize> {
        self.lens.iter().filter(|&&l| l <= k.0).find_map(|&l| self.cidrs.get(&(l, policy::mask(&k.1, l))).copied())
    }
}

/// Every address of every endpoint pod, the first pod (by namespace and name) keeping an
/// address two claim.
fn endpoint_owners(cluster: &Cluster, warnings: &mut Vec<String>) -> BTreeMap<IpAddr, usize> {
    let mut owner: BTreeMap<IpAddr, usize> = BTreeMap::new();
    for (pi, p) in cluster.pods.iter().enumerate().filter(|(_, p)| p.is_endpoint()) {
        for ip in &p.ips {
            match owner.get(ip) {
                Some(&first) => warnings.push(format!(
                    "pods {} and {} both have address {ip}: it is taken as {}'s",
                    cluster.pods[first].id(),
                    p.id(),
                    cluster.pods[first].id()
                )),
                None => {
                    owner.insert(*ip, pi);
                }
            }
        }
    }
    owner
}

/// The classes of addresses: what tells them apart, and their members.
struct Classes {
    keys: Vec<ClassKey>,
    members: Vec<Members>,
    ids: HashMap<ClassKey, usize>,
}

impl Classes {
    /// The world base is class 0.
    fn new(words: usize) -> Classes {
        let mut c = Classes { keys: Vec::new(), members: Vec::new(), ids: HashMap::new() };
        c.class_of(ClassKey {
            native: None,
            world_base: true,
            pod: false,
            ing: vec![],
            eg: vec![],
            matched: vec![0; words],
            named: vec![],
        });
        c
    }

    fn class_of(&mut self, key: ClassKey) -> usize {
        let (keys, members) = (&mut self.keys, &mut self.members);
        *self.ids.entry(key.clone()).or_insert_with(|| {
            keys.push(key);
            members.push(Members::default());
            keys.len() - 1
        })
    }
}

/// Every pod address into its class (what its labels decide, once per (namespace, labels)).
/// Returns how many there are, and the addresses classes hold (all of them, unless
/// NetworkPolicy adds nothing).
fn classify_pods(
    ctx: &Ctx<'_>,
    owner: &BTreeMap<IpAddr, usize>,
    classes: &mut Classes,
    warnings: &mut Vec<String>,
) -> (usize, BTreeSet<IpAddr>) {
    let mut by_labels: HashMap<(&str, &Labels), PodFacts> = HashMap::new();
    let mut ns_labels: HashMap<&str, Labels> = HashMap::new();
    let mut pod_addresses = 0;
    let mut classified: BTreeSet<IpAddr> = BTreeSet::new();
    for (&ip, &pi) in owner {
        let pod: &Pod = &ctx.cluster.pods[pi];
        let nsl = ns_labels.entry(&pod.namespace).or_insert_with(|| ctx.cluster.namespace_labels(&pod.namespace));
        let facts = by_labels
            .entry((&pod.namespace, &pod.labels))
            .or_insert_with(|| pod_facts(pod, ctx.policies, ctx.words, nsl, ctx.selectors))
            .clone();
        let k = (128, addr16(ip));
        let native_seg = pod_segment(ctx, pod, ip, facts.selected, warnings);
        if !ctx.netpol && native_seg == ctx.nat.of(k) {
            // A plain address its CIDRs already classify.
            continue;
        }
        let key = if ctx.netpol {
            let mut matched = facts.matched;
            for b in &ctx.ix.blocks {
                if block_holds_ip(b, ip) {
                    matched[b.rule as usize / 64] |= 1 << (b.rule % 64);
                }
            }
            ClassKey {
                native: native_seg,
                world_base: false,
                pod: true,
                ing: facts.ing,
                eg: facts.eg,
                matched,
                named: named_ports(ctx.ix, pod),
            }
        } else {
            ClassKey {
                native: native_seg,
                world_base: false,
                pod: false,
                ing: vec![],
                eg: vec![],
                matched: vec![0; ctx.words],
                named: vec![],
            }
        };
        let c = classes.class_of(key);
        classes.members[c].pods.push(ip);
        classified.insert(ip);
        pod_addresses += 1;
    }
    (pod_addresses, classified)
}

/// The native segment of a pod's address: a CIDR naming it exactly wins over a selector
/// (with a warning), a selector over a wider CIDR.
fn pod_segment(
    ctx: &Ctx<'_>,
    pod: &Pod,
    ip: IpAddr,
    selected: Option<usize>,
    warnings: &mut Vec<String>,
) -> Option<usize> {
    let k = (128, addr16(ip));
    match ctx.nat.cidrs.get(&k) {
        Some(&i) => {
            if let Some(s) = selected.filter(|s| *s != i) {
                warnings.push(format!(
                    "pod {} ({ip}) is selected into segment `{}`, but the CIDR {} of segment `{}` names its address: the CIDR wins",
                    pod.id(),
                    ctx.native.segments[s].name,
                    net_of(k),
                    ctx.native.segments[i].name
                ));
            }
            Some(i)
        }
        None => selected.or_else(|| ctx.nat.of(k)),
    }
}

/// The named ports of a pod that policies name: (index in `names`, port number), sorted.
fn named_ports(ix: &Index, pod: &Pod) -> Vec<(u32, u16)> {
    let mut named = Vec::new();
    for (ni, (name, proto)) in ix.names.iter().enumerate() {
        for cp in &pod.ports {
            let same_proto = matches!((cp.protocol, proto), (Protocol::Tcp, Proto::Tcp) | (Protocol::Udp, Proto::Udp));
            if same_proto && cp.name.as_deref() == Some(name.as_str()) {
                named.push((ni as u32, cp.port));
            }
        }
    }
    named.sort_unstable();
    named.dedup();
    named
}

/// Regions into their classes: every native CIDR and ipBlock cidr and except (a pod's own
/// address excepted: its class holds it). Returns the ipBlocks' networks by key.
fn classify_regions(ctx: &Ctx<'_>, classified: &BTreeSet<IpAddr>, classes: &mut Classes) -> HashMap<Key, IpNet> {
    let mut cuts: BTreeSet<Key> = ctx.nat.cidrs.keys().copied().collect();
    let mut block_net: HashMap<Key, IpNet> = HashMap::new();
    let mut v6_covers_v4 = false;
    for b in &ctx.ix.blocks {
        for net in std::iter::once(&b.cidr).chain(&b.except) {
            let k = cidr_key(net);
            cuts.insert(k);
            block_net.entry(k).or_insert(*net);
            v6_covers_v4 |= !key_is_v4(k) && key_contains(k, V4_SPACE);
        }
    }
    if v6_covers_v4 {
        // An IPv6 ipBlock covering the IPv4-mapped space must not hold IPv4 addresses: cut
        // the IPv4 space off as a region of its own.
        cuts.insert(V4_SPACE);
    }
    for &k in &cuts {
        if k.0 == 128 && classified.contains(&ip_of(k)) {
            continue;
        }
        let mut matched = vec![0u64; ctx.words];
        if ctx.netpol {
            for b in &ctx.ix.blocks {
                if block_holds_region(b, k) {
                    matched[b.rule as usize / 64] |= 1 << (b.rule % 64);
                }
            }
        }
        let key = ClassKey {
            native: ctx.nat.of(k),
            world_base: false,
            pod: false,
            ing: vec![],
            eg: vec![],
            matched,
            named: vec![],
        };
        let c = classes.class_of(key);
        classes.members[c].regions.push(k);
    }
    block_net
}

/// The blocks as output segments.
struct Named {
    /// The blocks in output order.
    order: Vec<usize>,
    /// Each block's segment.
    seg_ref: Vec<SegRef>,
    /// The output's segments: the native ones, in order, then the derived ones.
    segments: Vec<Segment>,
    /// What a native segment (and world) stands for in the output.
    of_native: Vec<Vec<SegRef>>,
    of_world: Vec<SegRef>,
}

/// Whether class `c` holds plain addresses (no pod, not the world base, no ipBlock).
fn plain(c: &ClassKey) -> bool {
    !c.pod && !c.world_base && c.matched.iter().all(|w| *w == 0)
}

/// The blocks in output order: per native segment (native order, world last), the one
/// holding the plain addresses first, then by address.
fn block_order(classes: &Classes, blocks: &[Vec<usize>]) -> Vec<usize> {
    let first_of = |b: &Vec<usize>| -> Option<Key> {
        b.iter().filter_map(|&c| classes.members[c].first()).min_by_key(|(l, a)| (*a, *l))
    };
    let sort_key = |b: usize| {
        let c0 = &classes.keys[blocks[b][0]];
        let native_rank = c0.native.map_or(usize::MAX, |i| i);
        let is_base = c0.world_base || blocks[b].iter().any(|&c| plain(&classes.keys[c]));
        (native_rank, !is_base, first_of(&blocks[b]).map(|(l, a)| (a, l)))
    };
    let mut order: Vec<usize> = (0..blocks.len()).collect();
    order.sort_by_key(|&b| sort_key(b));
    order
}

/// Orders and names the blocks: the one holding a native segment's plain addresses under the
/// segment's own name, the others `SEGMENT~N` (`world~N`).
fn name_blocks(native: &Policy, classes: &Classes, blocks: &[Vec<usize>]) -> Named {
    let order = block_order(classes, blocks);
    let mut taken: BTreeSet<String> = native.segments.iter().map(|s| s.name.clone()).collect();
    taken.insert(policy::WORLD_NAME.to_owned());
    let mut named = Named {
        seg_ref: vec![SegRef::World; blocks.len()],
        segments: native
            .segments
            .iter()
            .map(|s| Segment { name: s.name.clone(), cidrs: Vec::new(), mode: s.mode, selector: None })
            .collect(),
        of_native: vec![Vec::new(); native.segments.len()],
        of_world: vec![SegRef::World],
        order: Vec::new(),
    };
    let mut counters: HashMap<Option<usize>, usize> = HashMap::new();
    for &b in &order {
        let c0 = &classes.keys[blocks[b][0]];
        let is_base = blocks[b].iter().any(|&c| plain(&classes.keys[c]));
        let r = match c0.native {
            _ if c0.world_base => SegRef::World,
            Some(i) if is_base => SegRef::Named(i),
            native_seg => {
                let base = native_seg.map_or(policy::WORLD_NAME, |i| native.segments[i].name.as_str());
                let counter = counters.entry(native_seg).or_insert(0);
                let name = loop {
                    *counter += 1;
                    let name = format!("{base}~{counter}");
                    if !taken.contains(&name) {
                        break name;
                    }
                };
                taken.insert(name.clone());
                let mode = native_seg.map_or(Mode::Enforce, |i| native.segments[i].mode);
                named.segments.push(Segment { name, cidrs: Vec::new(), mode, selector: None });
                SegRef::Named(named.segments.len() - 1)
            }
        };
        named.seg_ref[b] = r;
        if r != SegRef::World {
            match c0.native {
                Some(i) => named.of_native[i].push(r),
                None => named.of_world.push(r),
            }
        }
    }
    // Every native segment stands for its own name first, even when it holds no address now.
    for (i, refs) in named.of_native.iter_mut().enumerate() {
        if !refs.contains(&SegRef::Named(i)) {
            refs.insert(0, SegRef::Named(i));
        }
    }
    named.order = order;
    named
}

/// The segments' CIDRs: a native segment's own CIDRs in its order, then the rest by address.
fn fill_cidrs(
    native: &Policy,
    classes: &Classes,
    blocks: &[Vec<usize>],
    named: &mut Named,
    nat: &NativeCidrs,
    block_net: &HashMap<Key, IpNet>,
) {
    for (b, block) in blocks.iter().enumerate() {
        let SegRef::Named(si) = named.seg_ref[b] else { continue };
        let members = &classes.members;
        let mut keys: Vec<Key> = block.iter().flat_map(|&c| members[c].regions.iter().copied()).collect();
        keys.extend(block.iter().flat_map(|&c| members[c].pods.iter().map(|ip| (128, addr16(*ip)))));
        keys.sort_by_key(|(l, a)| (*a, *l));
        let rank: HashMap<Key, usize> = native
            .segments
            .get(si)
            .map(|s| s.cidrs.iter().enumerate().map(|(i, c)| (cidr_key(c), i)).collect())
            .unwrap_or_default();
        keys.sort_by_key(|k| rank.get(k).copied().unwrap_or(usize::MAX));
        named.segments[si].cidrs = keys
            .iter()
            .map(|k| nat.nets.get(k).or_else(|| block_net.get(k)).copied().unwrap_or_else(|| net_of(*k)))
            .collect();
    }
}

/// The native rules and rate limits, rewritten over the output's segments (a rate limit from a
/// segment split in several classes becomes one per class).
/// The native APIs over the output's segments: an API of a native segment that stands for
/// several segments here is declared on each (named like rate limits, `NAME@SEGMENT` beyond the
/// first); one whose segment holds no address here declares nothing.
fn rewrite_apis(native: &Policy, named: &Named) -> Vec<Api> {
    let mut apis = Vec::new();
    for api in &native.apis {
        let targets = named.of_native.get(api.segment).map_or(&[][..], |v| v.as_slice());
        let segments = targets.iter().filter_map(|r| match r {
            SegRef::Named(i) => Some(*i),
            SegRef::Any | SegRef::World => None,
        });
        for (k, segment) in segments.enumerate() {
            let name = match &api.name {
                Some(n) if k > 0 => Some(format!("{n}@{}", seg_name(&named.segments, SegRef::Named(segment)))),
                other => other.clone(),
            };
            apis.push(Api { name, segment, ..api.clone() });
        }
    }
    apis
}

fn rewrite_native(native: &Policy, named: &Named, warnings: &mut Vec<String>) -> (Vec<Rule>, Vec<RateLimit>) {
    let rewrite = |refs: &[SegRef]| -> Vec<SegRef> {
        let mut out: Vec<SegRef> = Vec::new();
        for r in refs {
            let add: &[SegRef] = match r {
                SegRef::Any => &[SegRef::Any],
                SegRef::World => &named.of_world,
                SegRef::Named(i) => named.of_native.get(*i).map_or(&[], |v| v.as_slice()),
            };
            for a in add {
                if !out.contains(a) {
                    out.push(*a);
                }
            }
        }
        out
    };
    let rules: Vec<Rule> =
        native.rules.iter().map(|r| Rule { from: rewrite(&r.from), to: rewrite(&r.to), ..r.clone() }).collect();
    let mut rate_limits = Vec::new();
    for l in &native.rate_limits {
        let sources = rewrite(&[l.from]);
        if sources.len() > 1 && l.scope == LimitScope::Segment {
            warnings.push(format!(
                "rate limit `{}`: its source `{}` is {} classes of addresses here, each with a budget of its own",
                l.name,
                native.seg_ref_name(l.from),
                sources.len()
            ));
        }
        let to = l.to.as_deref().map(&rewrite);
        for (k, s) in sources.iter().enumerate() {
            let name = if k == 0 { l.name.clone() } else { format!("{}@{}", l.name, seg_name(&named.segments, *s)) };
            rate_limits.push(RateLimit { name, from: *s, to: to.clone(), ..l.clone() });
        }
    }
    (rules, rate_limits)
}
