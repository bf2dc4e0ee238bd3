//! HTTP/1.x on the ports the policy declares (`apis:`): the datapath follows each such TCP
//! connection's byte stream in both directions, frames its requests and responses, and reports
//! every request with its response (method, path, `Host`, status, latency).
//!
//! A connection is declared when its first packet (the client's SYN) goes to a (destination
//! segment, TCP port) in [`ApiPortKey`]s of the slot in force: the datapath then marks both of
//! its conntrack entries `CT_F_HTTP` and opens an [`HttpFlow`] keyed by the original
//! direction's tuple. Each direction is a [`HttpStream`]: the next TCP sequence number it
//! expects (so a segment seen twice on one host, or retransmitted, is parsed once, and a gap
//! makes the connection unparsable instead of misframed) and where in a message it is.
use crate::Addr;

/// Key of `API_PORTS`: a destination segment's TCP port that speaks HTTP/1.x, per slot. The value
/// is [`API_HTTP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ApiPortKey {
    pub slot: u32,
    pub segment: u32,
    pub port: u16,
    pub _pad: [u8; 2],
}

/// `API_PORTS` value: plaintext HTTP/1.x (TLS and HTTP/2 on such a port are reported as such).
pub const API_HTTP: u32 = 1;
/// Declared ports per policy, at most (`API_PORTS` holds two slots of them).
pub const MAX_API_PORTS: u32 = 4096;

/// Bytes of a request's method kept (longer methods are unparsable: none is registered).
pub const METHOD_MAX: usize = 8;
/// Bytes of a request's path kept (the request-target before `?`); longer paths are kept
/// truncated and flagged [`HTTP_F_PATH_TRUNCATED`].
pub const PATH_MAX: usize = 64;
/// Bytes of a request's `Host` kept (truncated beyond, flagged [`HTTP_F_HOST_TRUNCATED`]).
pub const HOST_MAX: usize = 32;
/// Requests of one connection awaiting their responses (pipelining), at most; one more makes
/// the connection unparsable ([`UNPARSABLE_PIPELINE`]).
pub const PENDING: usize = 4;

/// One direction of a connection: the parser's state between packets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HttpStream {
    /// The TCP sequence number of the next byte to parse.
    pub next_seq: u32,
    /// Where in a message the next byte is (the datapath's `S_*` states).
    pub state: u8,
    /// `STREAM_F_*`.
    pub flags: u8,
    /// The header being read (`HDR_*`), or the length of the header name read so far.
    pub header: u8,
    pub name_len: u8,
    /// The header name's first 24 bytes, lower-cased, packed (compared with the few names the
    /// parser needs, exactly).
    pub name: [u64; 3],
    /// A number being read (`Content-Length`, a chunk size, a status code), or the last bytes
    /// of a `Transfer-Encoding` value.
    pub num: u64,
    /// Body bytes left to skip.
    pub remaining: u64,
    /// The message's `Content-Length` (valid with `STREAM_F_LENGTH`).
    pub length: u64,
    /// Responses: the time of the response's first byte; requests: of the request's.
    pub start_ns: u64,
    /// Position in the start line; responses: the status code once read.
    pub pos: u16,
    pub status: u16,
    pub _pad: u32,
}

/// A request awaiting its response.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpRequest {
    /// The time of the request's first byte.
    pub start_ns: u64,
    pub method: [u8; METHOD_MAX],
    pub path: [u8; PATH_MAX],
    pub host: [u8; HOST_MAX],
    pub path_len: u16,
    pub method_len: u8,
    pub host_len: u8,
    /// `HTTP_F_*` of the request.
    pub flags: u32,
}

impl Default for HttpRequest {
    fn default() -> Self {
        HttpRequest {
            start_ns: 0,
            method: [0; METHOD_MAX],
            path: [0; PATH_MAX],
            host: [0; HOST_MAX],
            path_len: 0,
            method_len: 0,
            host_len: 0,
            flags: 0,
        }
    }
}

/// Value of `HTTP_FLOWS`, keyed by the connection's original (client -> server) tuple.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HttpFlow {
    pub request: HttpStream,
    pub response: HttpStream,
    /// Requests parsed and responses matched so far: the pending ones are
    /// `pending[responses % PENDING ..= (requests - 1) % PENDING]`.
    pub requests: u32,
    pub responses: u32,
    pub client_segment: u32,
    pub server_segment: u32,
    /// `FLOW_F_*`.
    pub flags: u32,
    pub revision: u32,
    pub pending: [HttpRequest; PENDING],
}

/// [`HttpStream::flags`]: the stream's starting sequence number is known (its SYN was seen).
pub const STREAM_F_SYNCED: u8 = 1;
/// The message has a `Content-Length` ([`HttpStream::length`]).
pub const STREAM_F_LENGTH: u8 = 2;
/// The message's last transfer coding is `chunked`.
pub const STREAM_F_CHUNKED: u8 = 4;
/// The message has a `Transfer-Encoding` header.
pub const STREAM_F_CODING: u8 = 8;
/// The header lines being read are a chunked body's trailer.
pub const STREAM_F_TRAILER: u8 = 16;

/// [`HttpFlow::flags`]: nothing more is parsed on this connection (reported once, see
/// [`HttpEvent::kind`]).
pub const FLOW_F_DONE: u32 = 1;

/// [`HttpEvent::flags`] / [`HttpRequest::flags`]: the path was longer than [`PATH_MAX`].
pub const HTTP_F_PATH_TRUNCATED: u32 = 1;
/// The `Host` was longer than [`HOST_MAX`].
pub const HTTP_F_HOST_TRUNCATED: u32 = 2;
/// The request is `HEAD` (its response has no body).
pub const HTTP_F_HEAD: u32 = 4;
/// The request has a query (`?...`), not kept.
pub const HTTP_F_QUERY: u32 = 8;

/// [`HttpEvent::kind`]: a request and its response.
pub const KIND_EXCHANGE: u8 = 1;
/// The connection stopped being parsed (`HttpEvent::reason` says why); counted
/// `http_unparsable` unless the reason is a protocol the port does not speak as declared
/// (TLS, HTTP/2) or an upgrade, which are reported, not counted as parse failures.
pub const KIND_UNPARSABLE: u8 = 2;

/// [`HttpEvent::reason`] of [`KIND_UNPARSABLE`]: bytes missing (a gap in the TCP sequence).
pub const UNPARSABLE_GAP: u8 = 1;
/// A start line that is not HTTP/1.x.
pub const UNPARSABLE_START_LINE: u8 = 2;
/// A header line or a length that breaks the framing rules (e.g. two different
/// `Content-Length`s, a bad chunk size).
pub const UNPARSABLE_FRAMING: u8 = 3;
/// More header bytes in one packet than the parser walks.
pub const UNPARSABLE_TOO_LONG: u8 = 4;
/// More pipelined requests awaiting responses than [`PENDING`].
pub const UNPARSABLE_PIPELINE: u8 = 5;
/// A response without a request.
pub const UNPARSABLE_UNSOLICITED: u8 = 6;
/// The stream's start was not seen (a connection older than the agent's tracking of it).
pub const UNPARSABLE_UNSYNCED: u8 = 7;
/// A TLS handshake (a ClientHello) on a port declared plaintext HTTP/1.
pub const UNPARSABLE_TLS: u8 = 8;
/// The HTTP/2 connection preface.
pub const UNPARSABLE_HTTP2: u8 = 9;
/// `101 Switching Protocols` (e.g. a WebSocket): no longer HTTP/1.
pub const UNPARSABLE_UPGRADE: u8 = 10;

/// An HTTP event in the `EVENTS` ring buffer, beside [`crate::Event`]s (told apart by size).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpEvent {
    /// The request's first byte (`bpf_ktime_get_ns`).
    pub time_ns: u64,
    /// From the request's first byte to the response's first byte (0: no response).
    pub latency_ns: u64,
    /// The connection's client and server.
    pub src: Addr,
    pub dst: Addr,
    pub sport: u16,
    pub dport: u16,
    pub ifindex: u32,
    pub src_segment: u32,
    pub dst_segment: u32,
    pub revision: u32,
    /// `HTTP_F_*`.
    pub flags: u32,
    pub status: u16,
    /// `KIND_*`, and for [`KIND_UNPARSABLE`] its reason (`UNPARSABLE_*`).
    pub kind: u8,
    pub reason: u8,
    pub path_len: u16,
    pub method_len: u8,
    pub host_len: u8,
    pub method: [u8; METHOD_MAX],
    pub path: [u8; PATH_MAX],
    pub host: [u8; HOST_MAX],
}

const _: () = assert!(core::mem::size_of::<ApiPortKey>() == 12);
const _: () = assert!(core::mem::size_of::<HttpStream>() == 72);
const _: () = assert!(core::mem::size_of::<HttpRequest>() == 120);
const _: () = assert!(core::mem::size_of::<HttpFlow>() == 168 + PENDING * 120);
const _: () = assert!(core::mem::size_of::<HttpEvent>() == 184);
