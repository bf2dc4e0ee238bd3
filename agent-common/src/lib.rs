//! Types shared by the eBPF programs and the userspace agent: map keys, map values and
//! constants. Everything here is `#[repr(C)]`, plain old data, and the single definition of
//! the layout both sides use.
//!
//! # How a packet is judged (the map design)
//!
//! All addresses are 16 bytes: IPv6 as is, IPv4 as IPv4-mapped IPv6 (`::ffff:a.b.c.d`), so one
//! set of maps serves both families.
//!
//! The policy lives twice in the maps, in two *slots*; `ZT_ACTIVE` says which one the
//! datapath uses. A push writes the inactive slot, then flips the active index with one 4-byte
//! write, so no packet is ever judged by a mix of two policies.
//!
//! 1. identity: `HOSTS` (exact /32 and /128, hash) then `CIDRS` (LPM trie) give the
//!    [`SegmentInfo`] of the source and of the destination; a miss is segment [`SEG_WORLD`].
//! 2. pair: `PAIRS[(slot, src, dst)]` gives a *profile* (the set of rules that can match this
//!    pair of segments). On a miss, the flags of the two segments say which wildcard entry holds
//!    the answer: `(src, ANY)` if the source has [`SEG_F_SRC_WILD`], else `(ANY, dst)` if the
//!    destination has [`SEG_F_DST_WILD`], else the slot's `any_any` profile. The compiler writes
//!    explicit pairs wherever two wildcard entries would both apply, so at most two lookups.
//! 3. ports: `PORTS` (LPM trie) keyed by (profile, protocol, port) gives the [`Verdict`]; the
//!    compiler has already merged overlapping rules (deny beats allow), so the entries never
//!    overlap. A miss is the slot's default action.
//!
//! No step loops over rules: the cost does not depend on the size of the policy. A denial is
//! remembered in `DENIED` with the revision it was decided under, so further packets of a
//! denied flow cost one lookup until the next push.
#![no_std]

pub mod http;

/// A 16-byte address: IPv6, or IPv4 mapped into IPv6 (`::ffff:a.b.c.d`).
pub type Addr = [u8; 16];

/// The reserved segment of every address that is in no named segment.
pub const SEG_WORLD: u32 = 0;
/// The wildcard segment in [`PairKey`] (`*` in a rule).
pub const SEG_ANY: u32 = u32::MAX;
/// "No profile" in [`SlotConfig::any_any`].
pub const PROFILE_NONE: u32 = u32::MAX;
/// Profile ids carry their slot in the top bit so the two slots never share `PORTS` keys.
pub const PROFILE_SLOT_SHIFT: u32 = 31;

/// A `(segment, ANY)` entry exists in `PAIRS` for this segment as a source.
pub const SEG_F_SRC_WILD: u32 = 1;
/// An `(ANY, segment)` entry exists in `PAIRS` for this segment as a destination.
pub const SEG_F_DST_WILD: u32 = 2;
/// The segment is in audit mode: what the policy denies to or from it passes, reported as
/// would-deny (see [`VERDICT_F_AUDIT`]).
pub const SEG_F_AUDIT: u32 = 4;
/// The policy allows this segment nothing as a source: every packet from it that no tracked
/// flow carries is denied by the default action (no rule names it, no rule has `*` on either
/// side, no segment is in audit mode, the default is deny). Under a flood (see
/// [`FLOOD_BUDGET`]) such a packet is dropped right after its source's identity lookup.
pub const SEG_F_DENIED_ALL: u32 = 8;
/// As [`SEG_F_DENIED_ALL`], and the policy allows nothing *to* this segment either (no rule
/// names it as a destination, none has `*` as its destination): no flow with it can be tracked,
/// so under a flood its packets are dropped before the conntrack lookup too.
pub const SEG_F_ISOLATED: u32 = 16;

pub const ACTION_ALLOW: u32 = 1;
pub const ACTION_DENY: u32 = 2;

/// Protocol numbers as the datapath keys them. ICMPv6 is folded into [`PROTO_ICMP`] and its
/// echo types into ICMPv4's, so a rule's `icmp` means both families.
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;
/// The "port" of an ICMP packet is its type; echo request is 8 (ICMPv6 128 is mapped to 8).
pub const ICMP_ECHO_REQUEST: u16 = 8;
pub const ICMP_ECHO_REPLY: u16 = 0;

/// Number of bits of `(protocol << 16) | port` in a `PORTS` key, after the profile's 32.
pub const PORT_KEY_BITS: u32 = 24;
/// Bits of the slot prefix in a `CIDRS` key, before the 128 bits of the address.
pub const CIDR_SLOT_BITS: u32 = 32;

/// Value of `HOSTS` and `CIDRS`: the identity of an address in one slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Segment id, 1.. for named segments ([`SEG_WORLD`] is never stored).
    pub id: u32,
    /// [`SEG_F_SRC_WILD`] | [`SEG_F_DST_WILD`].
    pub flags: u32,
}

/// Key of `HOSTS`: an exact address in one slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HostKey {
    pub slot: u32,
    pub addr: Addr,
}

/// Data of a `CIDRS` LPM key: the slot (big endian) then the address; the key's prefix length
/// is [`CIDR_SLOT_BITS`] + the CIDR's length in IPv6 space (IPv4 /n is /96+n).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CidrData {
    pub slot: [u8; 4],
    pub addr: Addr,
}

/// Key of `PAIRS`. `src`/`dst` may be [`SEG_ANY`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PairKey {
    pub slot: u32,
    pub src: u32,
    pub dst: u32,
}

/// Data of a `PORTS` LPM key: profile (big endian), protocol, port (big endian), padding.
/// The prefix length is 32 + the number of leading bits of `(proto << 16) | port` that matter.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortData {
    pub profile: [u8; 4],
    pub proto: u8,
    pub port: [u8; 2],
    pub _pad: u8,
}

/// Value of `PORTS`: what to do, which rule (1-based index in the policy) decided it, and
/// which rate limit (1-based index into the policy's `rateLimits`, 0 = none) bounds it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    pub action: u32,
    pub rule: u32,
    pub limit: u32,
    /// [`VERDICT_F_AUDIT`].
    pub flags: u32,
}

/// [`Verdict::flags`] above this shift: 1 + the index in `GRANTS` of the time-bound grant whose
/// allow this is (0: not a grant). Past the grant's deadline the verdict is the default action.
pub const VERDICT_GRANT_SHIFT: u32 = 16;
/// Grants in force at once, at most (`GRANTS` entries).
pub const MAX_GRANTS: u32 = 256;

/// [`Verdict::flags`]: a denial by a rule in audit mode. The packet passes, counted as
/// `audit_deny` and reported as would-deny, as in a policy in audit mode; the rest of the
/// policy enforces.
pub const VERDICT_F_AUDIT: u32 = 1;
/// [`Verdict::flags`], set by the datapath for a new flow (never in the maps): the flow goes to a
/// port the policy declares HTTP (`http::ApiPortKey`); its conntrack entries get [`CT_F_HTTP`].
pub const VERDICT_F_HTTP: u32 = 2;

/// Per-slot settings, `SLOTS[slot]`. Written only while the slot is inactive.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotConfig {
    /// [`ACTION_ALLOW`] or [`ACTION_DENY`] when no rule matches.
    pub default_action: u32,
    /// Policy revision; a conntrack entry verified under another revision is judged again.
    pub revision: u32,
    /// Profile of the `(*, *)` rules, or [`PROFILE_NONE`].
    pub any_any: u32,
    /// [`SegmentInfo::flags`] of the `world` segment (addresses found in no map).
    pub world_flags: u32,
    /// [`SLOT_F_AUDIT`].
    pub flags: u32,
}

/// [`SlotConfig::flags`]: the policy is in audit mode. What it would deny or rate-limit passes,
/// counted and reported as `would-deny` / `would-rate-limit`; malformed packets and packets
/// without any policy are still dropped.
pub const SLOT_F_AUDIT: u32 = 1;
/// [`SlotConfig::flags`]: time-bound grants from address blocks are in force (`GRANT_SOURCES`
/// holds them): a packet the policy denies by default is looked up there too.
pub const SLOT_F_GRANT_SOURCES: u32 = 2;
/// [`SlotConfig::flags`]: the policy declares HTTP ports (`API_PORTS` holds them): a new TCP flow's
/// destination is looked up there.
pub const SLOT_F_APIS: u32 = 4;

/// Conntrack key: one entry per direction of a flow (the reply entry has the tuple reversed).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub src: Addr,
    pub dst: Addr,
    /// For ICMP echo both ports hold the echo identifier.
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// The entry is the reply direction of the flow (its key is the reversed original tuple).
pub const CT_F_REPLY: u32 = 1;
/// A TCP FIN or RST was seen: the entry uses the short closing timeout.
pub const CT_F_CLOSING: u32 = 2;
/// A TCP flow that has seen traffic in both directions.
pub const CT_F_SEEN_REPLY: u32 = 4;
/// A flow the policy denies, passed in audit mode: its packets count as `audit_deny`.
pub const CT_F_AUDIT: u32 = 8;
/// A connection to a port the policy declares HTTP: its streams are parsed (see [`http`]).
pub const CT_F_HTTP: u32 = 16;

/// Conntrack value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtValue {
    /// `bpf_ktime_get_ns` of the last packet (refreshed at most every [`CT_REFRESH_NS`]).
    pub last_seen: u64,
    /// Policy revision that last allowed this flow.
    pub revision: u32,
    pub flags: u32,
    /// The rule that allowed the flow (1-based; 0 = default allow).
    pub rule: u32,
    /// The rate limit its packets count against (1-based in the slot's policy; 0 = none).
    /// Set on the original direction's entry only: replies are the other side's traffic.
    pub limit: u32,
    /// The segment of this direction's source (for `SEGMENT_COUNTERS`).
    pub src_segment: u32,
    /// 1 + the `GRANTS` index of the time-bound grant that allowed the flow (0: none): past
    /// its deadline the flow is cut at its next packet, agent or not.
    pub grant: u32,
    /// Packets and bytes (frame length) of this direction the datapath passed, the first
    /// packet included (atomic adds); the agent reads them for the inventory. A new entry for
    /// the same tuple (a new TCP connection) starts from zero again.
    pub packets: u64,
    pub bytes: u64,
}

pub const CT_REFRESH_NS: u64 = 1_000_000_000;
pub const CT_TIMEOUT_TCP_NS: u64 = 6 * 3600 * 1_000_000_000;
pub const CT_TIMEOUT_TCP_CLOSING_NS: u64 = 10 * 1_000_000_000;
pub const CT_TIMEOUT_UDP_NS: u64 = 60 * 1_000_000_000;
pub const CT_TIMEOUT_ICMP_NS: u64 = 30 * 1_000_000_000;

/// Key of `FRAGS`: one IP datagram whose first fragment was allowed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub src: Addr,
    pub dst: Addr,
    pub id: u32,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Key of `DENIED`: what policy judges of a packet (the source port plays no part), so every
/// packet of a denied flow, and of a scan from one source, finds the verdict in one lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DenyKey {
    pub src: Addr,
    pub dst: Addr,
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Value of `DENIED`: the revision the denial was decided under (any other revision means
/// "judge again"), the deciding rule (0 = default deny), the segments, and the aggregation of
/// its events: `total` packets denied so far (only ever incremented), `last_emit` the time of
/// the last event about it. See [`Event::total`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DenyValue {
    pub revision: u32,
    pub rule: u32,
    pub src_segment: u32,
    pub dst_segment: u32,
    pub total: u64,
    pub last_emit: u64,
}

/// Key of `AGG`: aggregation of drops that are not policy denials (rate limits, fragments,
/// malformed packets, no policy), per flow and reason. Value: [`AggValue`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AggKey {
    pub src: Addr,
    pub dst: Addr,
    pub port: u16,
    pub proto: u8,
    /// The event reason, with [`AGG_AUDIT`] for would-rate-limit aggregates.
    pub reason: u8,
}

/// In [`AggKey::reason`]: the aggregate of packets passed in audit mode (`would-rate-limit`),
/// kept apart from the same flow's `rate-limited` drops.
pub const AGG_AUDIT: u8 = 0x80;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AggValue {
    pub total: u64,
    pub last_emit: u64,
    /// Rate limit id (rate-limited) or 0.
    pub rule: u32,
    pub revision: u32,
    pub src_segment: u32,
    pub dst_segment: u32,
}

/// Policy denials each CPU handles per flow (the denial cache, one event per flow and interval)
/// in one [`EVENT_INTERVAL_NS`]; past it the CPU is under a flood, and a denial that needs no
/// per-flow state (a new denied flow, or any packet of a [`SEG_F_DENIED_ALL`] source) is
/// counted in `FLOOD` per (source segment, class) instead: no cache entry, one event per
/// aggregate and interval. Counters stay exact either way.
pub const FLOOD_BUDGET: u64 = 1024;

/// `FLOOD` (per CPU) holds `2 * MAX_COUNTED_SEGMENTS` aggregates: index
/// `min(segment, MAX_COUNTED_SEGMENTS - 1) * 2 + class` (class 0: denied by default, 1: by a rule).
#[inline]
pub const fn flood_index(src_segment: u32, rule: u32) -> u32 {
    let row = if src_segment < MAX_COUNTED_SEGMENTS { src_segment } else { MAX_COUNTED_SEGMENTS - 1 };
    row * 2 + (rule != 0) as u32
}

/// A flood aggregate of one CPU: packets so far (only grows), time of its last event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FloodValue {
    pub total: u64,
    pub last_emit: u64,
}

/// `FLOOD_STATE` (per CPU, one entry): the policy denials this CPU handled per flow in the
/// interval that started at `window`, and the packets of isolated segments ([`SEG_F_ISOLATED`])
/// seen in its flood in that interval (dropped by the flood path, or the packet that spent the
/// budget): while there are any, every packet's source is looked up before the conntrack
/// lookup, to drop those early.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FloodBudget {
    pub window: u64,
    pub used: u64,
    pub isolated: u64,
}

/// Events of one aggregate (a flow and reason) are emitted at most this often; the packets in
/// between are carried by the next event's `total` (or found by the agent's sweep of the maps).
pub const EVENT_INTERVAL_NS: u64 = 1_000_000_000;

/// What the kernel tells the agent, through the `EVENTS` ring buffer.
pub mod event {
    pub const VERDICT_ALLOWED: u8 = 1;
    pub const VERDICT_DENIED: u8 = 2;
    pub const VERDICT_RATE_LIMITED: u8 = 3;
    /// Audit mode: the policy denies it (reason rule or default), and it passed.
    pub const VERDICT_WOULD_DENY: u8 = 4;
    /// Audit mode: over its rate limit (reason rate-limit), and it passed.
    pub const VERDICT_WOULD_RATE_LIMIT: u8 = 5;

    /// Allowed or denied by a rule (`Event::rule`).
    pub const REASON_RULE: u8 = 1;
    /// By the default action.
    pub const REASON_DEFAULT: u8 = 2;
    /// A later fragment whose first fragment was not allowed.
    pub const REASON_FRAGMENT: u8 = 3;
    /// Headers that could not be parsed.
    pub const REASON_MALFORMED: u8 = 4;
    /// A tracked flow the new policy no longer allows.
    pub const REASON_REVOKED: u8 = 5;
    /// No policy installed yet.
    pub const REASON_NO_POLICY: u8 = 6;
    /// Over its identity's rate limit (`Event::rule` = the limit).
    pub const REASON_RATE_LIMIT: u8 = 7;
    /// A tracked flow of a time-bound grant past its deadline (`Event::rule` = the grant's rule).
    pub const REASON_GRANT_EXPIRED: u8 = 8;
    /// Entered a guarded (pod) interface from a source address that interface may not send
    /// from (see [`super::SourceData`]).
    pub const REASON_SPOOFED: u8 = 9;

    pub const DIRECTION_INGRESS: u8 = 0;
    pub const DIRECTION_EGRESS: u8 = 1;
}

/// One event. Events about drops are aggregated per flow and reason: `total` is the number of
/// packets of that aggregate so far (it only grows while the aggregate lives), so the agent
/// gets exact counts as differences, whichever events it received.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC).
    pub time_ns: u64,
    /// Packets of the aggregate so far; 1 for events that are not aggregated.
    pub total: u64,
    pub src: Addr,
    pub dst: Addr,
    pub sport: u16,
    pub dport: u16,
    pub ifindex: u32,
    pub src_segment: u32,
    pub dst_segment: u32,
    /// Rule id (1-based) for rule verdicts, limit id for rate limits, 0 otherwise.
    pub rule: u32,
    pub revision: u32,
    /// Length of the packet that triggered the event.
    pub len: u32,
    pub proto: u8,
    pub direction: u8,
    pub verdict: u8,
    pub reason: u8,
    /// 0: a flow's event (or its aggregate's); `1 + cpu`: a flood aggregate of that CPU (see
    /// [`FLOOD_BUDGET`]): `total` counts every packet of `src_segment` denied for `reason` on
    /// that CPU, and the addresses and ports are those of the packet that triggered the event.
    pub aggregate: u32,
    /// ICMP and ICMPv6 (`proto` [`PROTO_ICMP`]): the message's type and code as on the wire
    /// (ICMPv6's own numbers: an echo request is 128); 0 for other protocols. (The ports hold
    /// an echo's identifier, as the conntrack key does.)
    pub icmp_type: u8,
    pub icmp_code: u8,
    pub _pad: u16,
}

const _: () = assert!(core::mem::size_of::<Event>() == 88);

/// `SEGMENT_COUNTERS` (per CPU): packets by (source segment, outcome), at index
/// `min(segment, MAX_COUNTED_SEGMENTS - 1) * SEGMENT_OUTCOMES + outcome`; segments past the
/// last are counted together in the last row.
pub const MAX_COUNTED_SEGMENTS: u32 = 4096;
pub const SEGMENT_OUTCOMES: u32 = 4;
pub const SEGMENT_PASSED: u32 = 0;
pub const SEGMENT_DENIED: u32 = 1;
pub const SEGMENT_RATE_LIMITED: u32 = 2;

/// Rate limits: at most this many per policy; `LIMITS` and `LIMIT_STATS` hold two slots of
/// them (index = slot * MAX_LIMITS + limit id - 1).
pub const MAX_LIMITS: u32 = 1024;
/// Bucket clocks run in ticks of 1/256 ns (ns << TICK_SHIFT), so that byte costs keep their
/// precision; all comparisons use wrapping differences, so the clock may wrap.
pub const TICK_SHIFT: u32 = 8;

/// The three buckets of a limit, by index in [`LimitConfig::buckets`].
pub const BUCKET_PACKETS: usize = 0;
pub const BUCKET_CONNECTIONS: usize = 1;
pub const BUCKET_BYTES: usize = 2;

/// One GCRA bucket: each unit (packet, new connection, byte) moves the bucket's theoretical
/// arrival time `cost` ticks ahead; a unit is admitted while that time stays within
/// `tolerance` ticks (= burst x cost) of now. `cost` 0 = no such bucket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BucketConfig {
    pub cost: u64,
    pub tolerance: u64,
}

/// `LIMITS[slot * MAX_LIMITS + id - 1]`: one rate limit of a slot's policy.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimitConfig {
    /// Identifies the limit across pushes: unchanged limits keep their buckets.
    pub fingerprint: u64,
    pub buckets: [BucketConfig; 3],
    /// 1: one bucket per source address; 0: one for the whole segment.
    pub per_address: u32,
    /// The limit's stable index: its segment-scope buckets are `BUCKETS[bucket * 3 + kind]` and
    /// its statistics `LIMIT_STATS[bucket]`. The agent gives each fingerprint a stable index, so
    /// an unchanged limit keeps its buckets and counts across pushes.
    pub bucket: u32,
}

/// Segment-scope bucket sets in `BUCKETS` (the limits of both slots, at most).
pub const MAX_BUCKET_SETS: u32 = 2 * MAX_LIMITS;

/// Key of `ADDR_BUCKETS` (an LRU map: address-scope buckets). Value: the bucket's theoretical
/// arrival time in ticks. (Segment-scope buckets live in the `BUCKETS` array.)
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BucketKey {
    pub fingerprint: u64,
    pub kind: u32,
    pub _pad: u32,
    pub addr: Addr,
}

/// Per-CPU `LIMIT_STATS[LimitConfig::bucket]` (the limit's stable index).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimitStats {
    pub packets_passed: u64,
    pub packets_dropped: u64,
    pub connections_passed: u64,
    pub connections_dropped: u64,
    pub bytes_passed: u64,
    pub bytes_dropped: u64,
    /// Per-address buckets created (minus the live ones: evicted ones).
    pub buckets_created: u64,
    pub _pad: u64,
}

/// Data of a `SOURCES` LPM key (anti-spoofing on guarded interfaces, the pod interfaces of node
/// mode): the interface index (big endian) then the source address. An entry is one prefix a
/// packet entering that interface may come from; its key's prefix length is
/// [`SOURCE_IFINDEX_BITS`] + the prefix's length in IPv6 space (IPv4 /n is /96+n). The datapath
/// looks a packet up with the whole key (32 + 128 bits): a miss is a spoofed source.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceData {
    pub ifindex: [u8; 4],
    pub addr: Addr,
}

/// Bits of the interface prefix in a `SOURCES` key, before the 128 bits of the address.
pub const SOURCE_IFINDEX_BITS: u32 = 32;
/// Capacity of `SOURCES`: allowed source prefixes over all guarded interfaces together.
pub const MAX_SOURCES: u32 = 65_536;

/// Fragments of an allowed datagram are accepted for this long after its first fragment.
pub const FRAG_TIMEOUT_NS: u64 = 30 * 1_000_000_000;

/// Indexes of the per-CPU `COUNTERS` array.
pub mod counter {
    /// Packet of a tracked flow (conntrack hit).
    pub const PASS_TRACKED: u32 = 0;
    /// New flow allowed by a rule or by default allow.
    pub const PASS_POLICY: u32 = 1;
    /// Not IP (ARP, ...): passed.
    pub const PASS_NON_IP: u32 = 2;
    /// ICMPv6 neighbour discovery / MLD: passed.
    pub const PASS_NDP: u32 = 3;
    /// Non-first fragment of an allowed datagram.
    pub const PASS_FRAGMENT: u32 = 4;
    /// ICMP error about a tracked flow.
    pub const PASS_ICMP_ERROR: u32 = 5;
    /// Denied by a deny rule.
    pub const DROP_RULE: u32 = 6;
    /// Denied because no rule allowed it (default deny).
    pub const DROP_DEFAULT: u32 = 7;
    /// Headers could not be parsed or the packet is truncated.
    pub const DROP_MALFORMED: u32 = 8;
    /// Non-first fragment of a datagram whose first fragment was not allowed.
    pub const DROP_FRAGMENT: u32 = 9;
    /// A tracked flow that the current policy no longer allows.
    pub const DROP_REVOKED: u32 = 10;
    /// No policy has been installed yet: everything IP is dropped (fail closed).
    pub const DROP_NO_POLICY: u32 = 11;
    /// Allowed by policy, over its identity's rate limit.
    pub const DROP_RATE_LIMIT: u32 = 12;
    /// Events that did not fit in the ring buffer (not packets).
    pub const EVENTS_LOST: u32 = 13;
    /// Audit mode: a packet the policy denies, passed (the first of a flow, and every later
    /// packet of that flow in either direction).
    pub const AUDIT_DENY: u32 = 14;
    /// Audit mode: a packet over its rate limit, passed.
    pub const AUDIT_RATE_LIMIT: u32 = 15;
    /// Entered a guarded (pod) interface from a source address it may not send from.
    pub const DROP_SPOOFED: u32 = 16;
    /// HTTP requests parsed on declared ports (not packets).
    pub const HTTP_REQUESTS: u32 = 17;
    /// HTTP responses matched to their requests (not packets).
    pub const HTTP_RESPONSES: u32 = 18;
    /// Connections on declared HTTP ports that stopped being parsed because they broke HTTP/1.x
    /// framing or lost bytes (not TLS, HTTP/2 or upgrades, which are reported as such).
    pub const HTTP_UNPARSABLE: u32 = 19;
    pub const COUNT: u32 = 20;

    pub const NAMES: [&str; COUNT as usize] = [
        "pass_tracked",
        "pass_policy",
        "pass_non_ip",
        "pass_ndp",
        "pass_fragment",
        "pass_icmp_error",
        "drop_rule",
        "drop_default",
        "drop_malformed",
        "drop_fragment",
        "drop_revoked",
        "drop_no_policy",
        "drop_rate_limit",
        "events_lost",
        "audit_deny",
        "audit_rate_limit",
        "drop_spoofed",
        "http_requests",
        "http_responses",
        "http_unparsable",
    ];
}

/// `ACTIVE_SLOT[0]` holds 1 + the slot in force, and `NO_POLICY` (0, what a new array map
/// holds) before the first push. Every change (0->1, 1<->2) is in the low byte only, so a
/// reader never sees a torn value.
pub const NO_POLICY: u32 = 0;

/// Map names, as the programs declare them and the agent pins them.
pub mod maps {
    pub const ACTIVE_SLOT: &str = "ZT_ACTIVE";
    pub const SLOTS: &str = "ZT_SLOTS";
    pub const HOSTS: &str = "ZT_HOSTS";
    pub const CIDRS: &str = "ZT_CIDRS";
    pub const PAIRS: &str = "ZT_PAIRS";
    pub const PORTS: &str = "ZT_PORTS";
    pub const CONNTRACK: &str = "ZT_CT";
    pub const FRAGS: &str = "ZT_FRAGS";
    pub const DENIED: &str = "ZT_DENIED";
    pub const LIMITS: &str = "ZT_LIMITS";
    pub const BUCKETS: &str = "ZT_BUCKETS";
    pub const ADDR_BUCKETS: &str = "ZT_ADDR_BUCKETS";
    pub const LIMIT_STATS: &str = "ZT_LIMIT_STATS";
    pub const AGG: &str = "ZT_AGG";
    pub const EVENTS: &str = "ZT_EVENTS";
    pub const SEGMENT_COUNTERS: &str = "ZT_SEG_COUNTERS";
    pub const COUNTERS: &str = "ZT_COUNTERS";
    pub const GRANTS: &str = "ZT_GRANTS";
    pub const GRANT_SOURCES: &str = "ZT_GRANT_SRCS";
    pub const SOURCES: &str = "ZT_SOURCES";
    pub const FLOOD: &str = "ZT_FLOOD";
    pub const FLOOD_STATE: &str = "ZT_FLOOD_STATE";
    pub const API_PORTS: &str = "ZT_API_PORTS";
    pub const HTTP_FLOWS: &str = "ZT_HTTP_FLOWS";
    /// The HTTP parser's programs, tail-called by the datapath's (one array per program type).
    pub const HTTP_XDP: &str = "ZT_HTTP_XDP";
    pub const HTTP_TC: &str = "ZT_HTTP_TC";
}

/// Program names in the object file.
pub mod programs {
    pub const INGRESS: &str = "zt_ingress";
    pub const EGRESS: &str = "zt_egress";
    /// Ingress on a guarded (pod) interface: anti-spoofing (`SOURCES`), then as `INGRESS`.
    pub const INGRESS_GUARDED: &str = "zt_ingress_guarded";
    /// The HTTP parser (see `http`), tail-called from `zt_ingress*` (XDP) and `zt_egress` (TC)
    /// through `ZT_HTTP_XDP[0]` and `ZT_HTTP_TC[0]`; loaded, never attached.
    pub const HTTP_INGRESS: &str = "zt_http_ingress";
    pub const HTTP_EGRESS: &str = "zt_http_egress";
    // The rest are in the benchmark's own object (`ztbench-ebpf`), never loaded by the agent.
    /// An empty XDP program, the benchmark's baseline.
    pub const BASELINE: &str = "zt_baseline";
    /// Parse and one conntrack lookup: the least a stateful program does, for the benchmark.
    pub const REFERENCE: &str = "zt_reference";
    /// Parse, a conntrack miss and one denial-cache lookup: the benchmark's denied floor.
    pub const DENIED_FLOOR: &str = "zt_denied_floor";
    /// `REFERENCE` plus a read of the coarse clock, and of the nanosecond clock: their
    /// difference is what the rate limits' clock costs a packet.
    pub const BENCH_COARSE: &str = "zt_bench_coarse";
    pub const BENCH_FINE: &str = "zt_bench_fine";
    /// The comparative benchmark's limit: drops everything.
    pub const BENCH_DROP: &str = "zt_bench_drop";
    /// The comparative benchmark's "XDP with one LPM lookup" (the active slot's CIDR trie).
    pub const BENCH_LPM: &str = "zt_bench_lpm";
    /// The comparative benchmark's forwarder (XDP_REDIRECT to the receiver's veth).
    pub const BENCH_REDIRECT: &str = "zt_bench_redirect";
    /// Its device map: `[0]` is the interface it sends to.
    pub const BENCH_TX_PORT: &str = "ZTB_TX_PORT";
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are #[repr(C)] structs of integers and byte arrays with explicit
    // padding fields, so every bit pattern is valid and there is no uninitialised padding.
    unsafe impl aya::Pod for SegmentInfo {}
    unsafe impl aya::Pod for HostKey {}
    unsafe impl aya::Pod for CidrData {}
    unsafe impl aya::Pod for PairKey {}
    unsafe impl aya::Pod for PortData {}
    unsafe impl aya::Pod for Verdict {}
    unsafe impl aya::Pod for SlotConfig {}
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtValue {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for DenyKey {}
    unsafe impl aya::Pod for DenyValue {}
    unsafe impl aya::Pod for BucketConfig {}
    unsafe impl aya::Pod for LimitConfig {}
    unsafe impl aya::Pod for BucketKey {}
    unsafe impl aya::Pod for LimitStats {}
    unsafe impl aya::Pod for AggKey {}
    unsafe impl aya::Pod for AggValue {}
    unsafe impl aya::Pod for Event {}
    unsafe impl aya::Pod for SourceData {}
    unsafe impl aya::Pod for FloodValue {}
    unsafe impl aya::Pod for FloodBudget {}
    unsafe impl aya::Pod for http::ApiPortKey {}
    unsafe impl aya::Pod for http::HttpFlow {}
    unsafe impl aya::Pod for http::HttpEvent {}
}
