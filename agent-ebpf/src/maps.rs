//! Every BPF map of the datapath. All are pinned by name under the agent's bpffs directory, so
//! enforcement outlives the daemon and a restarted daemon finds the same state. The sizes here
//! are defaults; the agent sets the real ones from its configuration before loading. The
//! policy hashes are not preallocated: memory follows the policy's size, and lookups cost the
//! same.
use agent_common::http::{ApiPortKey, HttpFlow, MAX_API_PORTS};
use agent_common::{
    AggKey, AggValue, BucketKey, CidrData, CtKey, CtValue, DenyKey, DenyValue, FloodBudget, FloodValue, FragKey,
    HostKey, LimitConfig, LimitStats, MAX_BUCKET_SETS, MAX_COUNTED_SEGMENTS, MAX_GRANTS, MAX_LIMITS, MAX_SOURCES,
    PairKey, PortData, SEGMENT_OUTCOMES, SegmentInfo, SlotConfig, SourceData, Verdict, counter,
};
use aya_ebpf::{
    bindings::{BPF_F_NO_COMMON_LRU, BPF_F_NO_PREALLOC},
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
};

/// `[0]`: 1 + the slot in force, or `NO_POLICY` (0) before the first push.
#[map(name = "ZT_ACTIVE")]
pub static ACTIVE: Array<u32> = Array::pinned(1, 0);

/// Per-slot settings (default action, revision, wildcard profile).
#[map(name = "ZT_SLOTS")]
pub static SLOTS: Array<SlotConfig> = Array::pinned(2, 0);

/// Exact host addresses (/32, /128) -> segment, checked before the trie.
#[map(name = "ZT_HOSTS")]
pub static HOSTS: HashMap<HostKey, SegmentInfo> = HashMap::pinned(65536, BPF_F_NO_PREALLOC);

/// CIDRs -> segment, longest prefix wins.
#[map(name = "ZT_CIDRS")]
pub static CIDRS: LpmTrie<CidrData, SegmentInfo> = LpmTrie::pinned(65536, 0);

/// (slot, source segment, destination segment) -> profile.
#[map(name = "ZT_PAIRS")]
pub static PAIRS: HashMap<PairKey, u32> = HashMap::pinned(65536, BPF_F_NO_PREALLOC);

/// (profile, protocol, port) -> verdict; entries never overlap.
#[map(name = "ZT_PORTS")]
pub static PORTS: LpmTrie<PortData, Verdict> = LpmTrie::pinned(262144, 0);

/// Connection tracking, one entry per direction.
#[map(name = "ZT_CT")]
pub static CONNTRACK: LruHashMap<CtKey, CtValue> = LruHashMap::pinned(262144, 0);

/// Datagrams whose first fragment was allowed -> time it was seen.
#[map(name = "ZT_FRAGS")]
pub static FRAGS: LruHashMap<FragKey, u64> = LruHashMap::pinned(16384, 0);

/// Recent denials (see `agent_common::DenyKey`). Per-CPU LRU lists: a flood of denied
/// packets from many sources churns this cache, never the conntrack table.
#[map(name = "ZT_DENIED")]
pub static DENIED: LruHashMap<DenyKey, DenyValue> = LruHashMap::pinned(65536, BPF_F_NO_COMMON_LRU);

/// Rate limits of both slots (index = slot * MAX_LIMITS + id - 1).
#[map(name = "ZT_LIMITS")]
pub static LIMITS: Array<LimitConfig> = Array::pinned(2 * MAX_LIMITS, 0);

/// Segment-scope buckets: theoretical arrival time (ticks), at `bucket * 3 + kind` (see
/// `LimitConfig::bucket`). An array: found without hashing.
#[map(name = "ZT_BUCKETS")]
pub static BUCKETS: Array<u64> = Array::pinned(3 * MAX_BUCKET_SETS, 0);

/// Address-scope buckets, per (limit, kind, source address): an LRU map, so a scan from a
/// million addresses evicts old buckets instead of exhausting memory.
#[map(name = "ZT_ADDR_BUCKETS")]
pub static ADDR_BUCKETS: LruHashMap<BucketKey, u64> = LruHashMap::pinned(65536, 0);

/// Per-limit outcomes, per CPU.
#[map(name = "ZT_LIMIT_STATS")]
pub static LIMIT_STATS: PerCpuArray<LimitStats> = PerCpuArray::pinned(2 * MAX_LIMITS, 0);

/// Aggregates of drops that are not policy denials, per flow and reason (see `events`).
#[map(name = "ZT_AGG")]
pub static AGG: LruHashMap<AggKey, AggValue> = LruHashMap::pinned(65536, BPF_F_NO_COMMON_LRU);

/// Policy denials under a flood, per CPU and (source segment, class): see `events::flood`.
#[map(name = "ZT_FLOOD")]
pub static FLOOD: PerCpuArray<FloodValue> = PerCpuArray::pinned(2 * MAX_COUNTED_SEGMENTS, 0);

/// This CPU's per-flow denials in the current interval (see `agent_common::FLOOD_BUDGET`).
#[map(name = "ZT_FLOOD_STATE")]
pub static FLOOD_STATE: PerCpuArray<FloodBudget> = PerCpuArray::pinned(1, 0);

/// HTTP ports the policy declares, per slot: (slot, destination segment, TCP port) -> `API_HTTP`
/// (see `agent_common::http`). Looked up once per new TCP flow, only while the slot has any
/// (`SLOT_F_APIS`).
#[map(name = "ZT_API_PORTS")]
pub static API_PORTS: HashMap<ApiPortKey, u32> = HashMap::pinned(2 * MAX_API_PORTS, BPF_F_NO_PREALLOC);

/// The HTTP connections being parsed, keyed by their original (client -> server) tuple: an LRU,
/// so connections closed without a FIN the datapath saw age out.
#[map(name = "ZT_HTTP_FLOWS")]
pub static HTTP_FLOWS: LruHashMap<CtKey, HttpFlow> = LruHashMap::pinned(16384, 0);

/// The HTTP parser's programs, tail-called on a declared connection's passed packet (a program
/// of its own: a fresh 512-byte stack, none of it under the datapath's frame). `[0]`: the XDP
/// one (`ZT_HTTP_XDP`), the TC one (`ZT_HTTP_TC`); filled by the agent at load.
#[map(name = "ZT_HTTP_XDP")]
pub static HTTP_XDP: ProgramArray = ProgramArray::pinned(1, 0);
#[map(name = "ZT_HTTP_TC")]
pub static HTTP_TC: ProgramArray = ProgramArray::pinned(1, 0);

/// For an ICMP error being parsed: the tuple of the packet it quotes (see `parse`), per CPU.
#[map(name = "ZT_ICMP_INNER")]
pub static ICMP_INNER: PerCpuArray<CtKey> = PerCpuArray::pinned(1, 0);

/// Events for the agent. The agent sets the size from its configuration.
#[map(name = "ZT_EVENTS")]
pub static EVENTS: RingBuf = RingBuf::pinned(4 << 20, 0);

/// Packets by (source segment, outcome), per CPU (see `agent_common::SEGMENT_COUNTERS`).
#[map(name = "ZT_SEG_COUNTERS")]
pub static SEGMENT_COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(MAX_COUNTED_SEGMENTS * SEGMENT_OUTCOMES, 0);

#[inline(always)]
pub fn count_segment(segment: u32, outcome: u32) {
    let row = if segment < MAX_COUNTED_SEGMENTS { segment } else { MAX_COUNTED_SEGMENTS - 1 };
    if let Some(c) = SEGMENT_COUNTERS.get_ptr_mut(row * SEGMENT_OUTCOMES + outcome) {
        // SAFETY: a per-CPU slot, only this CPU writes it while this program runs.
        unsafe { *c += 1 };
    }
}

/// Time-bound grants: the deadline (monotonic ns, as `bpf_ktime_get_coarse_ns`) of each, by the
/// index in its verdicts (`VERDICT_GRANT_SHIFT`). The kernel enforces it alone: past it, the
/// grant's verdicts are the default action and its flows are cut.
#[map(name = "ZT_GRANTS")]
pub static GRANTS: Array<u64> = Array::pinned(MAX_GRANTS, 0);

/// The address blocks of time-bound grants (`ztagent grant --from CIDR`), per slot, keyed like
/// `CIDRS`: the value is the block's pseudo-segment, which names no address (an address keeps
/// its segment) but has pairs and port entries of its own holding the grants' allows. Looked up
/// only for a packet the policy denies by default, and only while the slot has any
/// (`SLOT_F_GRANT_SOURCES`).
#[map(name = "ZT_GRANT_SRCS")]
pub static GRANT_SOURCES: LpmTrie<CidrData, SegmentInfo> = LpmTrie::pinned(2 * MAX_GRANTS, 0);

/// Whether grant `grant` (1 + its index; 0 = none) is past its deadline at `now`.
#[inline(always)]
pub fn grant_expired(grant: u32, now: u64) -> bool {
    match GRANTS.get(grant.wrapping_sub(1)) {
        Some(&deadline) => now > deadline,
        None => true,
    }
}

/// Anti-spoofing: per guarded (pod) interface, the source prefixes a packet entering it may come
/// from (the node's routes out of that interface, kept by the agent); see `guard`.
#[map(name = "ZT_SOURCES")]
pub static SOURCES: LpmTrie<SourceData, u32> = LpmTrie::pinned(MAX_SOURCES, 0);

/// Packet counters by outcome (see `agent_common::counter`).
#[map(name = "ZT_COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(counter::COUNT, 0);

#[inline(always)]
pub fn count(index: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot, only this CPU writes it while this program runs.
        unsafe { *c += 1 };
    }
}

/// The monotonic clock, read at most once per packet and only when needed: the coarse clock
/// (jiffies resolution, cheaper) is enough for timeouts measured in seconds; rate limits need
/// nanoseconds. Whichever was read serves every later use in the same packet.
pub struct Clock {
    ns: u64,
    fine: bool,
}

impl Clock {
    #[inline(always)]
    pub const fn new() -> Clock {
        Clock { ns: 0, fine: false }
    }

    /// For timeouts.
    #[inline(always)]
    pub fn coarse(&mut self) -> u64 {
        if self.ns == 0 {
            // SAFETY: a helper with no arguments, available to every program type.
            self.ns = unsafe { aya_ebpf::helpers::generated::bpf_ktime_get_coarse_ns() };
        }
        self.ns
    }

    /// For rate limits.
    #[inline(always)]
    pub fn fine(&mut self) -> u64 {
        if !self.fine {
            // SAFETY: as above.
            self.ns = unsafe { aya_ebpf::helpers::generated::bpf_ktime_get_ns() };
            self.fine = true;
        }
        self.ns
    }
}
