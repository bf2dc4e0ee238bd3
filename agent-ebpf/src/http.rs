//! HTTP/1.x on the ports the policy declares (see `agent_common::http`): each direction of a
//! declared connection is parsed as a byte stream, in TCP sequence order, by a small state
//! machine that frames messages exactly (start line, the headers framing depends on,
//! `Content-Length` and `chunked` bodies, pipelining, messages without a body), so that every
//! request is reported once with its response, or the connection is reported unparsable.
//!
//! Shape forced by the verifier: the bytes are copied, a window at a time, into a per-CPU
//! buffer, and walked by `bpf_loop` (one callback verified once, instead of a loop unrolled
//! per byte); bodies are skipped by arithmetic, never walked. Everything the walk keeps lives
//! in the connection's map value, so nothing of it is on the stack.
use core::ffi::c_void;

use agent_common::http::{
    FLOW_F_DONE, HOST_MAX, HTTP_F_HEAD, HTTP_F_HOST_TRUNCATED, HTTP_F_PATH_TRUNCATED, HTTP_F_QUERY, HttpEvent,
    HttpFlow, HttpRequest, HttpStream, KIND_EXCHANGE, KIND_UNPARSABLE, METHOD_MAX, PATH_MAX, PENDING, STREAM_F_CHUNKED,
    STREAM_F_CODING, STREAM_F_LENGTH, STREAM_F_SYNCED, STREAM_F_TRAILER, UNPARSABLE_FRAMING, UNPARSABLE_GAP,
    UNPARSABLE_HTTP2, UNPARSABLE_PIPELINE, UNPARSABLE_START_LINE, UNPARSABLE_TLS, UNPARSABLE_TOO_LONG,
    UNPARSABLE_UNSOLICITED, UNPARSABLE_UNSYNCED, UNPARSABLE_UPGRADE,
};
use agent_common::{CtKey, counter, http::ApiPortKey};
use aya_ebpf::{
    bindings::xdp_md,
    helpers::generated::{bpf_ktime_get_ns, bpf_loop, bpf_skb_load_bytes, bpf_xdp_load_bytes},
    macros::map,
    maps::PerCpuArray,
};

use crate::{
    maps::{API_PORTS, EVENTS, HTTP_FLOWS, count},
    parse::{Packet, TCP_SYN},
};

/// Bytes copied and walked at a time.
const WINDOW: usize = 512;
/// Steps of the walk per packet at most (a byte parsed, a window copied, a body skipped): 16 KiB
/// of message heads in one packet (a TC socket buffer may hold many segments); more makes the
/// connection unparsable, never skipped.
const MAX_STEPS: u32 = 16 * 1024 + 256;

/// Where in a message the next byte of a stream is ([`HttpStream::state`]).
const S_START: u8 = 0;
const S_METHOD: u8 = 1;
const S_TARGET: u8 = 2;
const S_QUERY: u8 = 3;
/// The rest of the start line (the request's version, the response's reason phrase).
const S_LINE_REST: u8 = 4;
/// A response's `HTTP/1.x NNN`.
const S_STATUS: u8 = 5;
/// At a header line's first byte.
const S_HEADER: u8 = 6;
const S_NAME: u8 = 7;
/// The rest of a header line the parser does not need.
const S_SKIP: u8 = 8;
const S_VALUE: u8 = 9;
/// The CR of the empty line that ends the head: LF must follow.
const S_HEAD_END: u8 = 10;
/// `HttpStream::remaining` bytes of body.
const S_BODY: u8 = 11;
const S_CHUNK_SIZE: u8 = 12;
/// A chunk size's extensions, to the end of its line.
const S_CHUNK_EXT: u8 = 13;
/// A chunk's data and its CRLF (`remaining`).
const S_CHUNK_DATA: u8 = 14;
/// A response body delimited by the connection's end: nothing more to frame.
const S_CLOSE: u8 = 15;

/// The headers framing depends on ([`HttpStream::header`]).
const HDR_HOST: u8 = 1;
const HDR_LENGTH: u8 = 2;
const HDR_CODING: u8 = 3;

/// A lower-case name packed as `HttpStream::name` packs it (little-endian, 8 bytes a word).
const fn packed(name: &[u8]) -> [u64; 3] {
    let mut w = [0u64; 3];
    let mut i = 0;
    while i < name.len() {
        w[i / 8] |= (name[i] as u64) << ((i % 8) * 8);
        i += 1;
    }
    w
}
const NAME_HOST: [u64; 3] = packed(b"host");
const NAME_LENGTH: [u64; 3] = packed(b"content-length");
const NAME_CODING: [u64; 3] = packed(b"transfer-encoding");
/// The last seven bytes of a `Transfer-Encoding` token, as [`HttpStream::num`] accumulates them.
const CHUNKED: u64 = {
    let mut v = 0u64;
    let s = b"chunked";
    let mut i = 0;
    while i < s.len() {
        v = v << 8 | s[i] as u64;
        i += 1;
    }
    v
};
/// Larger lengths break framing (no body is a terabyte).
const MAX_LENGTH: u64 = 1 << 40;

/// Per-CPU scratch: the window of bytes being walked, the walk's scalars, and a blank
/// connection to open one from.
#[repr(C)]
pub struct Scratch {
    buf: [u8; WINDOW],
    walk: Walk,
    blank: HttpFlow,
}

#[map(name = "ZT_HTTP_SCRATCH")]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::pinned(1, 0);

/// Whether a new TCP flow to `port` of segment `segment` goes to a declared HTTP port. (A
/// subprogram: its key stays off the caller's stack.)
#[inline(never)]
pub fn declared(slot: u32, segment: u32, port: u16) -> bool {
    API_PORTS.get_ptr(&ApiPortKey { slot, segment, port, _pad: [0; 2] }).is_some()
}

/// Opens the connection whose SYN is `pkt` (a declared flow, allowed): its request stream
/// starts after the SYN's sequence number. `segments` as `events::segments`.
#[inline(never)]
pub fn open(pkt: &Packet, segments: u64) {
    let Some(s) = SCRATCH.get_ptr_mut(0) else { return };
    // SAFETY: this CPU's scratch value, for this program run. The blank is all zeros but for
    // the fields set here, which are put back to zero after the copy into the map.
    let blank = unsafe { &mut (*s).blank };
    blank.request.next_seq = pkt.seq.wrapping_add(1);
    blank.request.flags = STREAM_F_SYNCED;
    blank.client_segment = (segments >> 32) as u32;
    blank.server_segment = segments as u32;
    blank.revision = pkt.revision;
    let _ = HTTP_FLOWS.insert(&pkt.tuple, &*blank, 0);
    blank.request.next_seq = 0;
    blank.request.flags = 0;
    blank.client_segment = 0;
    blank.server_segment = 0;
    blank.revision = 0;
}

/// The walk over one packet's payload (scalars only: the verifier does not keep pointers
/// stored in a map; those travel in [`Refs`]).
#[repr(C)]
struct Walk {
    /// The connection's original tuple, for events.
    key: CtKey,
    now: u64,
    /// The payload's next byte not in the window, and its end (offsets in the frame); from
    /// `prepare`, its start and length.
    cur: u32,
    end: u32,
    /// From `prepare`: the segment's sequence number and TCP flags.
    seq: u32,
    tcp_flags: u32,
    ifindex: u32,
    /// The window: its next byte, and how many it holds.
    i: u32,
    n: u32,
    /// 1: the response stream.
    response: u32,
}

/// What the `bpf_loop` callbacks work on: on `observe`'s stack, as `bpf_loop` requires.
#[repr(C)]
struct Refs {
    scratch: *mut Scratch,
    flow: *mut HttpFlow,
    /// The program's context (an `xdp_md` or a `__sk_buff`), to copy bytes from.
    ctx: *mut c_void,
}

/// Hands the passed packet `pkt` of a declared connection (`reply`: from the server to the
/// client) to the parser, which the program tail-calls next: what it needs of the packet, in
/// this CPU's scratch (the tail call runs on this CPU, right after).
#[inline(never)]
pub fn prepare(pkt: &Packet, reply: bool) {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else { return };
    // SAFETY: this CPU's scratch value, for this program run.
    let w = unsafe { &mut (*scratch).walk };
    // The original tuple, written in place (no copy of it on this frame).
    let t = &pkt.tuple;
    (w.key.proto, w.key._pad) = (t.proto, [0; 3]);
    if reply {
        (w.key.src, w.key.dst, w.key.sport, w.key.dport) = (t.dst, t.src, t.dport, t.sport);
    } else {
        (w.key.src, w.key.dst, w.key.sport, w.key.dport) = (t.src, t.dst, t.sport, t.dport);
    }
    (w.seq, w.cur, w.end, w.tcp_flags) = (pkt.seq, pkt.payload_off as u32, pkt.payload_len, pkt.tcp_flags as u32);
    (w.ifindex, w.response) = (pkt.ifindex, reply as u32);
}

/// The parser's program body: parses the payload of the packet [`prepare`] described. `ctx`:
/// the program's context (`XDP`: an `xdp_md`, else a `__sk_buff`), to copy the payload from.
#[inline(always)]
pub fn observe<const XDP: bool>(ctx: *mut c_void) {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else { return };
    // SAFETY: this CPU's scratch value, for this program run.
    let w = unsafe { &mut (*scratch).walk };
    let Some(flow) = HTTP_FLOWS.get_ptr_mut(&w.key) else { return };
    // SAFETY: a map value pointer valid for this program run.
    let f = unsafe { &mut *flow };
    if f.flags & FLOW_F_DONE != 0 {
        return;
    }
    // SAFETY: a helper with no arguments.
    w.now = unsafe { bpf_ktime_get_ns() };
    // `prepare` left the payload's offset in `cur` and its length in `end`.
    let (seq, len, reply) = (w.seq, w.end, w.response != 0);
    let st = if reply { &mut f.response } else { &mut f.request };
    if w.tcp_flags & TCP_SYN as u32 != 0 {
        // The SYN of the client (seen again at a second interface) or the server's SYN-ACK.
        if st.flags & STREAM_F_SYNCED == 0 {
            st.next_seq = seq.wrapping_add(1);
            st.flags |= STREAM_F_SYNCED;
        }
        return;
    }
    if len == 0 {
        return;
    }
    if st.flags & STREAM_F_SYNCED == 0 {
        give_up(w, f, UNPARSABLE_UNSYNCED);
        return;
    }
    let ahead = seq.wrapping_sub(st.next_seq) as i32;
    let mut skip = 0u32;
    if ahead > 0 {
        // Bytes missing: fine inside a body being skipped, fatal anywhere else.
        let gap = ahead as u64;
        if (st.state == S_BODY || st.state == S_CHUNK_DATA) && st.remaining > gap {
            st.remaining -= gap;
        } else if st.state != S_CLOSE {
            give_up(w, f, UNPARSABLE_GAP);
            return;
        }
    } else if ahead < 0 {
        // Seen already (a retransmission, or this packet at a second interface of this host).
        skip = ahead.unsigned_abs();
        if skip >= len {
            return;
        }
    }
    st.next_seq = seq.wrapping_add(len);
    (w.cur, w.end) = (w.cur + skip, w.cur + len);
    (w.i, w.n) = (0, 0);
    let mut refs = Refs { scratch, flow, ctx };
    // SAFETY: `step` has bpf_loop's callback signature; `refs` outlives the call.
    unsafe {
        let callback = core::mem::transmute::<unsafe extern "C" fn(u64, *mut c_void) -> i64, *mut c_void>(step::<XDP>);
        bpf_loop(MAX_STEPS, callback, (&raw mut refs).cast(), 0);
    }
    if f.flags & FLOW_F_DONE == 0 && (w.cur < w.end || w.i < w.n) {
        give_up(w, f, UNPARSABLE_TOO_LONG);
    }
}

/// `bpf_loop`'s callback, one step of the walk over a packet's payload: the next byte of the
/// window to the stream's parser, or, when the window is used up, body bytes skipped or the
/// next window copied. Returns 1 (stop) at the payload's end or when the stream is done with.
/// (One callback for all three, not nested loops: each frame stacked under the datapath's
/// counts against the verifier's 512 bytes.)
#[inline(never)]
unsafe extern "C" fn step<const XDP: bool>(_: u64, refs: *mut c_void) -> i64 {
    // SAFETY: `refs` is `observe`'s `Refs`; its pointers are valid for this program run.
    let r = unsafe { &mut *refs.cast::<Refs>() };
    let (sc, f) = unsafe { (&mut *r.scratch, &mut *r.flow) };
    let w = &mut sc.walk;
    if w.i >= w.n {
        return refill::<XDP>(r.ctx, sc, f);
    }
    let b = sc.buf[w.i as usize & (WINDOW - 1)];
    let w = &mut sc.walk;
    w.i += 1;
    let stop = if w.response != 0 { response_byte(w, f, b) } else { request_byte(w, f, b) };
    if stop {
        if f.flags & FLOW_F_DONE != 0 {
            return 1;
        }
        // A body starts: the window's bytes after this one are the next refill's to skip.
        w.cur -= w.n - w.i;
        (w.i, w.n) = (0, 0);
    }
    0
}

/// The window is used up: skips body bytes, or copies the payload's next window. Returns 1
/// (stop the walk) at the payload's end.
#[inline(always)]
fn refill<const XDP: bool>(ctx: *mut c_void, sc: &mut Scratch, f: &mut HttpFlow) -> i64 {
    let w = &mut sc.walk;
    if w.cur >= w.end {
        return 1;
    }
    let left = (w.end - w.cur) as u64;
    let st = if w.response != 0 { &mut f.response } else { &mut f.request };
    match st.state {
        S_CLOSE => return 1,
        S_BODY | S_CHUNK_DATA => {
            let take = if st.remaining < left { st.remaining } else { left };
            st.remaining -= take;
            w.cur += take as u32;
            if st.remaining == 0 {
                if st.state == S_BODY {
                    st.state = S_START;
                } else {
                    (st.state, st.num, st.pos) = (S_CHUNK_SIZE, 0, 0);
                }
            }
            return 0;
        }
        _ => {}
    }
    // Read back through memory, so that the compiler cannot drop the check below as implied
    // by `cur < end` (which the verifier cannot relate to the length it gets).
    // SAFETY: a read of a local.
    let n = unsafe { core::ptr::read_volatile(&(if left < WINDOW as u64 { left as u32 } else { WINDOW as u32 })) };
    if n == 0 || n > WINDOW as u32 {
        return 1;
    }
    // SAFETY: helpers given this program's context and this CPU's buffer of WINDOW bytes.
    let copied = unsafe {
        let buf = (&raw mut sc.buf).cast::<c_void>();
        if XDP {
            bpf_xdp_load_bytes(ctx.cast::<xdp_md>(), w.cur, buf, n)
        } else {
            bpf_skb_load_bytes(ctx.cast_const(), w.cur, buf, n)
        }
    };
    if copied != 0 {
        return 1;
    }
    (w.i, w.n) = (0, n);
    w.cur += n;
    0
}

#[inline(always)]
const fn lower(b: u8) -> u8 {
    if b.is_ascii_uppercase() { b | 0x20 } else { b }
}

/// A `tchar` of a method token (RFC 9110: upper-case letters are all registered methods use).
#[inline(always)]
fn method_char(b: u8) -> bool {
    b.is_ascii_uppercase() || b == b'-' || b == b'_'
}

/// The pending request `index` (a request count) is kept in.
#[inline(always)]
fn slot(f: &mut HttpFlow, index: u32) -> &mut HttpRequest {
    &mut f.pending[index as usize % PENDING]
}

#[inline(always)]
fn request_byte(w: &mut Walk, f: &mut HttpFlow, b: u8) -> bool {
    let requests = f.requests;
    let s = &mut f.request;
    match s.state {
        S_START => {
            // Empty lines before a request are ignored (RFC 9112, 2.2).
            if b == b'\r' || b == b'\n' {
                return false;
            }
            if b == 0x16 {
                return give_up(w, f, UNPARSABLE_TLS);
            }
            if !method_char(b) {
                return give_up(w, f, UNPARSABLE_START_LINE);
            }
            if requests.wrapping_sub(f.responses) >= PENDING as u32 {
                return give_up(w, f, UNPARSABLE_PIPELINE);
            }
            s.flags &= STREAM_F_SYNCED;
            (s.state, s.pos) = (S_METHOD, 1);
            let now = w.now;
            let r = slot(f, requests);
            r.start_ns = now;
            r.method = [0; METHOD_MAX];
            r.method[0] = b;
            (r.method_len, r.path_len, r.host_len, r.flags) = (1, 0, 0, 0);
        }
        S_METHOD => {
            let r = &mut f.pending[requests as usize % PENDING];
            if b == b' ' {
                let m = r.method;
                if r.method_len == 3 && m[0] == b'P' && m[1] == b'R' && m[2] == b'I' {
                    return give_up(w, f, UNPARSABLE_HTTP2);
                }
                if r.method_len == 4 && m[0] == b'H' && m[1] == b'E' && m[2] == b'A' && m[3] == b'D' {
                    r.flags |= HTTP_F_HEAD;
                }
                f.request.state = S_TARGET;
            } else if method_char(b) && (r.method_len as usize) < METHOD_MAX {
                r.method[r.method_len as usize & (METHOD_MAX - 1)] = b;
                r.method_len += 1;
            } else {
                return give_up(w, f, UNPARSABLE_START_LINE);
            }
        }
        S_TARGET | S_QUERY => {
            let r = &mut f.pending[requests as usize % PENDING];
            match b {
                b' ' if r.path_len > 0 || r.flags & HTTP_F_PATH_TRUNCATED != 0 => f.request.state = S_LINE_REST,
                b' ' | b'\r' | b'\n' => return give_up(w, f, UNPARSABLE_START_LINE),
                _ if f.request.state == S_QUERY => {}
                b'?' => {
                    r.flags |= HTTP_F_QUERY;
                    f.request.state = S_QUERY;
                }
                _ if (r.path_len as usize) < PATH_MAX => {
                    r.path[r.path_len as usize & (PATH_MAX - 1)] = b;
                    r.path_len += 1;
                }
                _ => r.flags |= HTTP_F_PATH_TRUNCATED,
            }
        }
        S_LINE_REST => {
            if b == b'\n' {
                s.state = S_HEADER;
            }
        }
        S_VALUE if s.header == HDR_HOST => {
            let r = &mut f.pending[requests as usize % PENDING];
            match b {
                b'\n' => f.request.state = S_HEADER,
                b'\r' => {}
                b' ' | b'\t' if r.host_len == 0 => {}
                _ if (r.host_len as usize) < HOST_MAX => {
                    r.host[r.host_len as usize & (HOST_MAX - 1)] = b;
                    r.host_len += 1;
                }
                _ => r.flags |= HTTP_F_HOST_TRUNCATED,
            }
        }
        _ => return head_byte(w, f, b, false),
    }
    false
}

#[inline(always)]
fn response_byte(w: &mut Walk, f: &mut HttpFlow, b: u8) -> bool {
    let s = &mut f.response;
    match s.state {
        S_START => {
            if f.requests == f.responses {
                return give_up(w, f, UNPARSABLE_UNSOLICITED);
            }
            if b != b'H' {
                return give_up(w, f, UNPARSABLE_START_LINE);
            }
            s.flags &= STREAM_F_SYNCED;
            (s.state, s.pos, s.status, s.start_ns) = (S_STATUS, 1, 0, w.now);
        }
        S_STATUS => {
            // "HTTP/1.x NNN" then the reason phrase.
            let pos = s.pos;
            s.pos += 1;
            let ok = match pos {
                1 | 2 => b == b'T',
                3 => b == b'P',
                4 => b == b'/',
                5 => b == b'1',
                6 => b == b'.',
                7 => b.is_ascii_digit(),
                8 => b == b' ',
                9..=11 => {
                    s.status = s.status * 10 + (b.wrapping_sub(b'0')) as u16;
                    b.is_ascii_digit()
                }
                _ => {
                    s.state = if b == b'\n' { S_HEADER } else { S_LINE_REST };
                    b == b' ' || b == b'\r' || b == b'\n'
                }
            };
            if !ok {
                return give_up(w, f, UNPARSABLE_START_LINE);
            }
        }
        S_LINE_REST => {
            if b == b'\n' {
                s.state = S_HEADER;
            }
        }
        _ => return head_byte(w, f, b, true),
    }
    false
}

/// Header lines, the end of the head, and chunk sizes: the same in both directions.
#[inline(always)]
fn head_byte(w: &mut Walk, f: &mut HttpFlow, b: u8, response: bool) -> bool {
    let s = if response { &mut f.response } else { &mut f.request };
    match s.state {
        S_HEADER => match b {
            b'\r' => s.state = S_HEAD_END,
            b'\n' => return head_end(w, f, response),
            // Obsolete line folding: a smuggling vector, never accepted.
            b' ' | b'\t' => return give_up(w, f, UNPARSABLE_FRAMING),
            _ => {
                (s.state, s.name, s.name_len) = (S_NAME, [0; 3], 1);
                s.name[0] = lower(b) as u64;
            }
        },
        S_NAME => match b {
            b':' => {
                let header = if s.name_len == 4 && named(s, &NAME_HOST) && !response {
                    HDR_HOST
                } else if s.name_len == 14 && named(s, &NAME_LENGTH) {
                    HDR_LENGTH
                } else if s.name_len == 17 && named(s, &NAME_CODING) {
                    s.flags |= STREAM_F_CODING;
                    HDR_CODING
                } else {
                    0
                };
                // Trailers never frame anything.
                let header = if s.flags & STREAM_F_TRAILER != 0 { 0 } else { header };
                (s.header, s.num, s.pos) = (header, 0, 0);
                s.state = if header == 0 { S_SKIP } else { S_VALUE };
            }
            b'\n' | b'\r' | b' ' | b'\t' => return give_up(w, f, UNPARSABLE_FRAMING),
            _ => {
                let i = s.name_len as usize;
                let bits = (lower(b) as u64) << ((i % 8) * 8);
                match i / 8 {
                    0 => s.name[0] |= bits,
                    1 => s.name[1] |= bits,
                    2 => s.name[2] |= bits,
                    _ => {}
                }
                s.name_len = s.name_len.saturating_add(1);
            }
        },
        S_SKIP => {
            if b == b'\n' {
                s.state = S_HEADER;
            }
        }
        S_VALUE => {
            // Content-Length: digits between optional whitespace; Transfer-Encoding: the last
            // token (`num` keeps its last bytes, `pos` its length).
            match b {
                b'\n' => {
                    s.state = S_HEADER;
                    if s.header == HDR_LENGTH {
                        if s.pos & 1 == 0 || (s.flags & STREAM_F_LENGTH != 0 && s.length != s.num) {
                            return give_up(w, f, UNPARSABLE_FRAMING);
                        }
                        s.length = s.num;
                        s.flags |= STREAM_F_LENGTH;
                    } else if s.pos == 7 && s.num == CHUNKED {
                        s.flags |= STREAM_F_CHUNKED;
                    } else {
                        s.flags &= !STREAM_F_CHUNKED;
                    }
                }
                b'\r' => {}
                _ if s.header == HDR_LENGTH => match b {
                    b' ' | b'\t' => {
                        if s.pos & 1 != 0 {
                            s.pos |= 2;
                        }
                    }
                    b'0'..=b'9' if s.pos & 2 == 0 => {
                        s.num = s.num * 10 + (b - b'0') as u64;
                        s.pos |= 1;
                        if s.num > MAX_LENGTH {
                            return give_up(w, f, UNPARSABLE_FRAMING);
                        }
                    }
                    _ => return give_up(w, f, UNPARSABLE_FRAMING),
                },
                b',' => (s.num, s.pos) = (0, 0),
                b' ' | b'\t' => {}
                _ => {
                    s.num = s.num << 8 | lower(b) as u64;
                    s.pos = s.pos.saturating_add(1);
                }
            }
        }
        S_HEAD_END => {
            if b != b'\n' {
                return give_up(w, f, UNPARSABLE_FRAMING);
            }
            return head_end(w, f, response);
        }
        S_CHUNK_SIZE => match b {
            b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                let d = if b <= b'9' { b - b'0' } else { lower(b) - b'a' + 10 };
                s.num = s.num << 4 | d as u64;
                s.pos |= 1;
                if s.num > MAX_LENGTH {
                    return give_up(w, f, UNPARSABLE_FRAMING);
                }
            }
            b';' | b' ' | b'\t' if s.pos & 1 != 0 => s.state = S_CHUNK_EXT,
            b'\r' => {}
            b'\n' if s.pos & 1 != 0 => return chunk_line_end(s),
            _ => return give_up(w, f, UNPARSABLE_FRAMING),
        },
        S_CHUNK_EXT => {
            if b == b'\n' {
                return chunk_line_end(s);
            }
        }
        _ => return give_up(w, f, UNPARSABLE_FRAMING),
    }
    false
}

/// Whether the header name read so far is `name` (compared word by word: no memcmp in BPF).
#[inline(always)]
fn named(s: &HttpStream, name: &[u64; 3]) -> bool {
    s.name[0] == name[0] && s.name[1] == name[1] && s.name[2] == name[2]
}

/// The end of a chunk-size line: the chunk's data and CRLF follow, or, after the last chunk,
/// the trailer. Returns true (stop the walk) before data.
#[inline(always)]
fn chunk_line_end(s: &mut HttpStream) -> bool {
    if s.num == 0 {
        s.flags |= STREAM_F_TRAILER;
        s.state = S_HEADER;
        return false;
    }
    (s.remaining, s.state) = (s.num + 2, S_CHUNK_DATA);
    true
}

/// The empty line that ends a message's head (or a chunked body's trailer). Returns true
/// (stop the walk) when a body follows, or the stream gives up.
#[inline(always)]
fn head_end(w: &mut Walk, f: &mut HttpFlow, response: bool) -> bool {
    let s = if response { &mut f.response } else { &mut f.request };
    if s.flags & STREAM_F_TRAILER != 0 {
        s.state = S_START;
        return false;
    }
    let (flags, length) = (s.flags, s.length);
    let chunked = flags & STREAM_F_CHUNKED != 0;
    if !response {
        f.requests = f.requests.wrapping_add(1);
        count(counter::HTTP_REQUESTS);
        // A request's last coding must be chunked (RFC 9112, 6.3); chunked wins over a length.
        if flags & STREAM_F_CODING != 0 && !chunked {
            return give_up(w, f, UNPARSABLE_FRAMING);
        }
        return body(&mut f.request, chunked, flags & STREAM_F_LENGTH != 0, length);
    }
    let status = s.status;
    if (100..200).contains(&status) && status != 101 {
        // An interim response: the final one follows.
        s.state = S_START;
        return false;
    }
    let responses = f.responses;
    let head = slot(f, responses).flags & HTTP_F_HEAD != 0;
    exchange(w, f, status);
    f.responses = responses.wrapping_add(1);
    count(counter::HTTP_RESPONSES);
    if status == 101 {
        return give_up(w, f, UNPARSABLE_UPGRADE);
    }
    let s = &mut f.response;
    if head || status == 204 || status == 304 {
        s.state = S_START;
        return false;
    }
    if flags & STREAM_F_CODING != 0 && !chunked {
        s.state = S_CLOSE;
        return true;
    }
    if !chunked && flags & STREAM_F_LENGTH == 0 {
        s.state = S_CLOSE;
        return true;
    }
    body(s, chunked, true, length)
}

#[inline(always)]
fn body(s: &mut HttpStream, chunked: bool, has_length: bool, length: u64) -> bool {
    if chunked {
        (s.state, s.num, s.pos) = (S_CHUNK_SIZE, 0, 0);
        return false;
    }
    if has_length && length > 0 {
        (s.state, s.remaining) = (S_BODY, length);
        return true;
    }
    s.state = S_START;
    false
}

/// Reports the oldest pending request with its response's `status`.
#[inline(never)]
fn exchange(w: &Walk, f: &HttpFlow, status: u16) {
    let r = &f.pending[f.responses as usize % PENDING];
    let Some(mut entry) = EVENTS.reserve::<HttpEvent>(0) else {
        count(counter::EVENTS_LOST);
        return;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: a reserved ring-buffer entry of HttpEvent's size, written field by field (no
    // copy of the whole on the stack), then submitted.
    unsafe {
        header(e, w, f);
        (*e).time_ns = r.start_ns;
        (*e).latency_ns = f.response.start_ns.saturating_sub(r.start_ns);
        (*e).flags = r.flags;
        (*e).status = status;
        (*e).kind = KIND_EXCHANGE;
        (*e).reason = 0;
        (*e).path_len = r.path_len;
        (*e).method_len = r.method_len;
        (*e).host_len = r.host_len;
        (*e).method = r.method;
        (*e).path = r.path;
        (*e).host = r.host;
    }
    entry.submit(0);
}

/// The connection, the interface and the segments of an HTTP event.
#[inline(always)]
unsafe fn header(e: *mut HttpEvent, w: &Walk, f: &HttpFlow) {
    // SAFETY: the caller's reserved entry.
    unsafe {
        let k = &w.key;
        (*e).src = k.src;
        (*e).dst = k.dst;
        (*e).sport = k.sport;
        (*e).dport = k.dport;
        (*e).ifindex = w.ifindex;
        (*e).src_segment = f.client_segment;
        (*e).dst_segment = f.server_segment;
        (*e).revision = f.revision;
    }
}

/// Stops parsing the connection, reported once: `reason` is an `UNPARSABLE_*`. Returns true
/// (stop the walk).
#[inline(never)]
fn give_up(w: &Walk, f: &mut HttpFlow, reason: u8) -> bool {
    f.flags |= FLOW_F_DONE;
    if reason != UNPARSABLE_TLS && reason != UNPARSABLE_HTTP2 && reason != UNPARSABLE_UPGRADE {
        count(counter::HTTP_UNPARSABLE);
    }
    let Some(mut entry) = EVENTS.reserve::<HttpEvent>(0) else {
        count(counter::EVENTS_LOST);
        return true;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: as in `exchange`.
    unsafe {
        header(e, w, f);
        (*e).time_ns = w.now;
        (*e).latency_ns = 0;
        (*e).flags = 0;
        (*e).status = 0;
        (*e).kind = KIND_UNPARSABLE;
        (*e).reason = reason;
        (*e).path_len = 0;
        (*e).method_len = 0;
        (*e).host_len = 0;
    }
    entry.submit(0);
    true
}
