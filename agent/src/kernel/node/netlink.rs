//! What node mode reads of the kernel over rtnetlink: the links and the routes of this network
//! namespace (dumps), and a socket subscribed to their changes (the watch). The dumps are the
//! whole truth each time; an event only says "read again", so a missed or coalesced event
//! (or a socket overrun) can never leave the agent's view out of date for longer than the next
//! dump.
use std::{
    io,
    net::IpAddr,
    os::fd::{AsRawFd, RawFd},
    time::Duration,
};

use ipnet::IpNet;
use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    link::{LinkAttribute, LinkMessage},
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteType},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// A network interface as rtnetlink lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
}

/// A unicast route (any table) whose packets leave through interface `oif`: `dst` is a prefix
/// the node sends out of that interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub oif: u32,
    pub dst: IpNet,
}

/// How often a dump is tried again when the kernel says it changed while it was being read.
const DUMP_TRIES: usize = 5;
/// Receive buffer for dumps: the kernel fills at most 32 KiB per datagram for dumps.
const RECV_BUF: usize = 64 << 10;

fn request(msg: RouteNetlinkMessage, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = seq;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    buf
}

/// One dump: every message of the reply, in order. `Ok(None)`: the kernel flagged the dump as
/// interrupted by a change (NLM_F_DUMP_INTR); read it again.
fn dump_once(msg: RouteNetlinkMessage) -> io::Result<Option<Vec<RouteNetlinkMessage>>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let seq = 1;
    socket.send(&request(msg, seq), 0)?;
    let mut out = Vec::new();
    let mut interrupted = false;
    let mut buf = vec![0u8; RECV_BUF];
    loop {
        let n = socket.recv(&mut &mut buf[..], 0)?;
        let mut at = 0;
        while at < n {
            let bytes = &buf[at..n];
            let len = NetlinkBuffer::new_checked(bytes)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?
                .length() as usize;
            if len == 0 {
                break;
            }
            at += (len + 3) & !3;
            let message = match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes[..len.min(bytes.len())]) {
                Ok(m) => m,
                // A message this crate cannot read (a newer kernel's attribute): skip it.
                Err(e) => {
                    tracing::debug!("skipping an rtnetlink message that does not parse: {e}");
                    continue;
                }
            };
            if message.header.sequence_number != seq {
                continue;
            }
            interrupted |= message.header.flags & NLM_F_DUMP_INTR != 0;
            match message.payload {
                NetlinkPayload::Done(_) => return Ok((!interrupted).then_some(out)),
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    return Err(io::Error::from_raw_os_error(-e.raw_code()));
                }
                NetlinkPayload::InnerMessage(m) => out.push(m),
                _ => {}
            }
        }
    }
}

fn dump(msg: impl Fn() -> RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
    for _ in 0..DUMP_TRIES {
        if let Some(messages) = dump_once(msg())? {
            return Ok(messages);
        }
    }
    Err(io::Error::other(format!("the table kept changing during {DUMP_TRIES} dumps in a row")))
}

/// Every interface of this network namespace.
pub fn links() -> io::Result<Vec<Link>> {
    let messages = dump(|| RouteNetlinkMessage::GetLink(LinkMessage::default()))?;
    Ok(messages
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => {
                let name = l.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n.clone()),
                    _ => None,
                })?;
                Some(Link { index: l.header.index, name })
            }
            _ => None,
        })
        .collect())
}

/// Every unicast IPv4 and IPv6 route of every table, one [`Route`] per interface it leaves
/// through (a multipath route gives one per next hop).
pub fn routes() -> io::Result<Vec<Route>> {
    let messages = dump(|| RouteNetlinkMessage::GetRoute(RouteMessage::default()))?;
    let mut out = Vec::new();
    for m in messages {
        if let RouteNetlinkMessage::NewRoute(r) = m {
            out.extend(route_exits(&r));
        }
    }
    Ok(out)
}

/// The (interface, destination) pairs of one route message; none for a route that is not a
/// unicast route (local, broadcast, multicast, blackhole, ...) or of another family.
fn route_exits(r: &RouteMessage) -> Vec<Route> {
    let h = &r.header;
    if h.kind != RouteType::Unicast {
        return Vec::new();
    }
    let len = h.destination_prefix_length;
    let dst = r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
        RouteAttribute::Destination(RouteAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
        _ => None,
    });
    // No destination attribute: the default route of its family.
    let dst = match (dst, h.address_family) {
        (Some(a), _) => a,
        (None, AddressFamily::Inet) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        (None, AddressFamily::Inet6) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        _ => return Vec::new(),
    };
    let Ok(dst) = IpNet::new(dst, len).map(|n| n.trunc()) else { return Vec::new() };
    let mut exits: Vec<u32> = Vec::new();
    for a in &r.attributes {
        match a {
            RouteAttribute::Oif(i) => exits.push(*i),
            RouteAttribute::MultiPath(hops) => exits.extend(hops.iter().map(|h| h.interface_index)),
            _ => {}
        }
    }
    exits.sort_unstable();
    exits.dedup();
    exits.into_iter().filter(|&i| i != 0).map(|oif| Route { oif, dst }).collect()
}

/// A socket subscribed to link and route changes (IPv4 and IPv6). Opened before the first
/// dumps, so that no change between them and the watch is missed.
pub struct Watch {
    socket: Socket,
}

impl Watch {
    pub fn subscribe() -> io::Result<Watch> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        for group in [libc::RTNLGRP_LINK, libc::RTNLGRP_IPV4_ROUTE, libc::RTNLGRP_IPV6_ROUTE] {
            socket.add_membership(group)?;
        }
        socket.set_non_blocking(true)?;
        Ok(Watch { socket })
    }

    fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// Waits up to `timeout` for a change; true if there was one (or the socket overran, which
    /// means changes were lost: read everything again all the same). Reads and discards
    /// everything pending.
    pub fn wait(&self, timeout: Duration) -> bool {
        let mut pfd = libc::pollfd { fd: self.fd(), events: libc::POLLIN, revents: 0 };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
        if ready <= 0 {
            return false;
        }
        self.drain();
        true
    }

    /// Discards every pending notification.
    pub fn drain(&self) {
        let mut buf = vec![0u8; RECV_BUF];
        loop {
            match self.socket.recv(&mut &mut buf[..], 0) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // ENOBUFS: notifications were lost; the caller reads everything anyway.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!("rtnetlink watch: {e}");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dumps of the namespace the tests run in: it always has a loopback, and every route
    /// found names an interface that exists.
    #[test]
    fn dumps_this_namespace() {
        let links = links().expect("link dump");
        assert!(links.iter().any(|l| l.name == "lo" && l.index > 0), "{links:?}");
        let routes = routes().expect("route dump");
        for r in &routes {
            assert!(links.iter().any(|l| l.index == r.oif), "{r:?} leaves through no listed link");
        }
    }
}
