#!/usr/bin/python3
"""The hostile frame corpus of tests/tests/hostile.rs.

Builds ~1,400 crafted Ethernet frames of one IP family from a fixed seed, sends each as a raw
frame (AF_PACKET) on an interface, and prints a JSON manifest: for every frame (in the order
sent) its kind, the datapath's expected outcome and its length.

    corpus.py FAMILY ROLE IFACE DST_MAC SRC_IP DST_IP SEED ALLOWED

Every frame is marked by its source MAC 02:7a:ROLE:FAMILY:HI:LO (HI:LO = its index), so a
packet socket at the receiver can tell exactly which frames got there, even truncated ones.
ALLOWED (0/1) says whether SRC_IP is in a segment the test policy lets reach DST_IP on 443/tcp,
8080/tcp and 53/udp (8081/tcp is denied by a rule for everyone; the rest by default).

Expected outcomes follow the datapath's documented contract (README, agent-ebpf/src/parse.rs):
  pass      parsed, and allowed by policy (or a later fragment of an allowed first fragment)
  default   parsed, denied by the default action
  rule      parsed, denied by the rule for 8081/tcp
  fragment  a later fragment without an allowed first fragment
  malformed cannot be parsed: dropped as malformed
"Well-formed" is what the datapath must parse: at most two VLAN tags; IPv4 with IHL >= 5 and a
total length that covers the header and ends within the frame (options are not interpreted);
IPv6 with a payload length within the frame (0 only with hop-by-hop first) and at most 7
extension headers ending within 512 bytes of the frame start; a complete TCP (14 bytes read),
UDP or ICMP header at the end of the chain; later fragments at offset >= 16 bytes. Checksums,
option contents, TCP flag combinations and payload lengths are not the datapath's business
(the kernel validates them later): frames with bad checksums, odd options or any TCP flags are
well-formed. Edge cases where the code and the README disagree (exactly 8 extension headers,
an L4 header beyond the IP length) are left out: hostile.rs tests them separately.
Non-IP frames and ICMPv6 neighbour discovery / MLD pass by design and are never generated.
"""
import json
import random
import socket
import struct
import sys
import time

TCP, UDP, ICMP, ICMP6 = 6, 17, 1, 58
HOP, ROUTING, FRAG, AH, DSTOPTS, NONXT = 0, 43, 44, 51, 60, 59
ETH_IP, ETH_IP6, TPID_Q, TPID_AD = 0x0800, 0x86DD, 0x8100, 0x88A8
MAX_FRAME = 1514  # the veth MTU (1500) plus the Ethernet header
MAX_HDR_OFF = 512
ALLOW_TCP, ALLOW_UDP, RULE_TCP = (443, 8080), (53,), 8081
SPECIAL_PORTS = {53, 443, 8080, 8081}
# ICMPv6 types the datapath passes by design (MLD, neighbour discovery): never sent.
ICMP6_PASS = set(range(130, 138)) | {143}


def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


class Frame:
    """One frame: Ethernet tags, body (IP header onwards), optional truncation."""

    def __init__(self, kind, label, tags, body, keep=None):
        self.kind, self.label, self.tags, self.body, self.keep = kind, label, tags, body, keep


class Corpus:
    def __init__(self, fam, rng, src, dst, allowed):
        self.fam, self.rng, self.allowed = fam, rng, allowed
        af = socket.AF_INET if fam == 4 else socket.AF_INET6
        self.src, self.dst = socket.inet_pton(af, src), socket.inet_pton(af, dst)
        self.groups = []  # each a list of frames sent in this order
        self._sport = 1024
        self._ident = 1000
        self._orphan = 40000

    # ---- small helpers ------------------------------------------------------------------
    def sport(self):
        # Unique per flow: no two frames merge in the receiver's GRO.
        self._sport += 1
        return self._sport

    def ident(self):
        self._ident += 1
        return self._ident

    def orphan_ident(self):
        self._orphan += 1
        return self._orphan

    def dport(self, proto):
        r = self.rng.random()
        if proto == TCP and r < 0.5:
            return self.rng.choice(ALLOW_TCP)
        if proto == TCP and r < 0.65:
            return RULE_TCP
        if proto == UDP and r < 0.5:
            return 53
        while True:
            p = self.rng.randrange(1, 65536)
            if p not in SPECIAL_PORTS:
                return p

    def verdict(self, proto, dport):
        if proto == TCP and dport == RULE_TCP:
            return "rule"
        if self.allowed and ((proto == TCP and dport in ALLOW_TCP) or (proto == UDP and dport in ALLOW_UDP)):
            return "pass"
        return "default"

    def tags(self, lo=0, hi=2):
        n = self.rng.randint(lo, hi)
        if n == 0:
            return []
        if n == 1:
            return [TPID_Q]
        if n == 2:
            return self.rng.choice([[TPID_AD, TPID_Q], [TPID_Q, TPID_Q], [TPID_AD, TPID_AD]])
        return [self.rng.choice([TPID_AD, TPID_Q]) for _ in range(n)]

    def add(self, *frames):
        self.groups.append(list(frames))

    # ---- L4 -------------------------------------------------------------------------------
    def pseudo(self, proto, length, src=None, dst=None):
        src, dst = src or self.src, dst or self.dst
        if self.fam == 4:
            return src + dst + struct.pack("!BBH", 0, proto, length)
        return src + dst + struct.pack("!I3xB", length, proto)

    def tcp(self, sport, dport, flags, payload=b"", opts=b"", bad=False):
        h = struct.pack("!HHIIBBHHH", sport, dport, self.rng.getrandbits(32), self.rng.getrandbits(32),
                        ((20 + len(opts)) // 4) << 4, flags, 65535, 0, 0) + opts
        seg = h + payload
        c = csum(self.pseudo(TCP, len(seg)) + seg) ^ (0x5A5A if bad else 0)
        return seg[:16] + struct.pack("!H", c) + seg[18:]

    def udp(self, sport, dport, payload=b"", bad=False):
        seg = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
        c = (csum(self.pseudo(UDP, len(seg)) + seg) or 0xFFFF) ^ (0x5A5A if bad else 0)
        return seg[:6] + struct.pack("!H", c) + seg[8:]

    def icmp(self, ty, code, rest, bad=False):
        proto = ICMP if self.fam == 4 else ICMP6
        msg = struct.pack("!BBH", ty, code, 0) + rest
        c = csum((self.pseudo(ICMP6, len(msg)) if self.fam == 6 else b"") + msg) ^ (0x5A5A if bad else 0)
        return proto, msg[:2] + struct.pack("!H", c) + msg[4:]

    def upper(self, proto=None, plen=None, flags=None, bad=False, opts=b""):
        """A TCP or UDP header (random flags, ports) with payload: (proto, dport, bytes)."""
        proto = proto or self.rng.choice([TCP, TCP, UDP])
        dport = self.dport(proto)
        payload = self.rng.randbytes(self.rng.randrange(0, 200) if plen is None else plen)
        if proto == TCP:
            fl = self.rng.randrange(256) if flags is None else flags
            return proto, dport, self.tcp(self.sport(), dport, fl, payload, opts, bad)
        return proto, dport, self.udp(self.sport(), dport, payload, bad)

    # ---- L3 -------------------------------------------------------------------------------
    def ip4(self, proto, payload, opts=b"", frag=None, ident=None, ihl=None, tot=None, ver=4, bad=False,
            src=None, dst=None):
        ihl = (20 + len(opts)) // 4 if ihl is None else ihl
        tot = 20 + len(opts) + len(payload) if tot is None else tot
        frag = self.rng.choice([0, 0x4000]) if frag is None else frag
        ident = self.rng.getrandbits(16) if ident is None else ident
        h = struct.pack("!BBHHHBBH4s4s", (ver << 4) | ihl, 0, tot & 0xFFFF, ident, frag, 64, proto, 0,
                        src or self.src, dst or self.dst) + opts
        c = csum(h) ^ (0x5A5A if bad else 0)
        return h[:10] + struct.pack("!H", c) + h[12:] + payload

    def ip6(self, nh, payload, plen=None, ver=6, src=None, dst=None):
        plen = len(payload) if plen is None else plen
        first = (ver << 28) | self.rng.getrandbits(20)
        return struct.pack("!IHBB", first, plen & 0xFFFF, nh, 64) + (src or self.src) + (dst or self.dst) + payload

    def ext(self, t, nh, units=None):
        """One IPv6 extension header of type t followed by nh, with a legal random length."""
        r = self.rng
        if t in (HOP, DSTOPTS):
            u = r.randint(0, 3) if units is None else units
            n = (u + 1) * 8
            return bytes([nh, u, 1, n - 4]) + bytes(n - 4)  # PadN over the rest
        if t == ROUTING:
            u = r.randint(0, 2) if units is None else units
            return bytes([nh, u, 253, 0]) + bytes(4 + 8 * u)  # experimental type, 0 segments left
        if t == AH:
            ln = r.choice([2, 4]) if units is None else units
            return struct.pack("!BBHII", nh, ln, 0, r.getrandbits(32), r.getrandbits(32)) + bytes((ln + 2) * 4 - 12)
        if t == FRAG:  # atomic: offset 0, no more fragments
            return struct.pack("!BBHI", nh, 0, 0, r.getrandbits(32))
        raise ValueError(t)

    def chain(self, types, upper):
        """Extension headers `types` in order, then the upper protocol: (first nh, bytes)."""
        out, nxt = b"", upper
        for t in reversed(types):
            out = self.ext(t, nxt) + out
            nxt = t
        return nxt, out

    def ip(self, proto, l4, v4opts=b"", exts=(), bad_ip=False):
        """A well-formed IP packet of this family around `l4`."""
        if self.fam == 4:
            return self.ip4(proto, l4, opts=v4opts, bad=bad_ip)
        nh, ext = self.chain(list(exts), proto)
        return self.ip6(nh, ext + l4)

    def packet(self, kind, tags=None, proto=None, plen=None, flags=None, bad_l4=False, bad_ip=False,
               v4opts=b"", exts=(), tcpopts=b""):
        tags = self.tags() if tags is None else tags
        proto, dport, l4 = self.upper(proto, plen, flags, bad_l4, tcpopts)
        return Frame(kind, self.verdict(proto, dport), tags, self.ip(proto, l4, v4opts, exts, bad_ip))

    def random_exts(self, lo=1, hi=7):
        return [self.rng.choice([HOP, DSTOPTS, ROUTING, FRAG, AH]) for _ in range(self.rng.randint(lo, hi))]

    def v4options(self):
        """4..40 bytes of IPv4 options, not necessarily meaningful: the datapath only skips them."""
        r = self.rng
        n = 4 * r.randint(1, 10)
        pick = r.random()
        if pick < 0.25:
            o = bytes([1] * (n - 1) + [0])  # NOPs then end of list
        elif pick < 0.5:
            o = bytes([7, n - 1, 4]) + bytes(n - 4) + b"\0"  # record route
        elif pick < 0.6:
            o = bytes([148, 4, 0, 0]) + bytes([1] * (n - 4))  # router alert
        else:
            o = r.randbytes(n)
        return o[:n]

    # ---- the corpus ---------------------------------------------------------------------------
    def well_formed(self):
        r, v6 = self.rng, self.fam == 6
        for _ in range(150):
            self.add(self.packet("tcp", proto=TCP))
        for _ in range(80):
            self.add(self.packet("udp", proto=UDP))
        for _ in range(40):
            self.add(self.packet("zero-payload", plen=0))
        for _ in range(40):
            # Frames up to the MTU.
            tags = self.tags()
            proto = r.choice([TCP, UDP])
            dport = self.dport(proto)
            nh, ext = self.chain(self.random_exts(0, 3), proto) if v6 else (proto, b"")
            hdr = 14 + 4 * len(tags) + (40 if v6 else 20) + len(ext) + (20 if proto == TCP else 8)
            payload = r.randbytes(r.randint(1400, MAX_FRAME) - hdr)
            if proto == TCP:
                l4 = self.tcp(self.sport(), dport, r.randrange(256), payload)
            else:
                l4 = self.udp(self.sport(), dport, payload)
            body = self.ip6(nh, ext + l4) if v6 else self.ip4(proto, l4)
            self.add(Frame("jumbo", self.verdict(proto, dport), tags, body))
        for flags in [0x00, 0xFF, 0x03, 0x06, 0x29, 0x3F, 0xC2, 0x01, 0x04, 0x14] * 6:
            self.add(self.packet("tcp-flags", proto=TCP, flags=flags))
        for _ in range(30):
            self.add(self.packet("tcp-options", proto=TCP, tcpopts=r.randbytes(4 * r.randint(1, 10))))
        for _ in range(50):
            self.add(self.packet("bad-checksum", bad_l4=True, bad_ip=not v6 and r.random() < 0.5))
        for _ in range(50):
            self.add(self.packet("vlan", tags=[TPID_Q]))
        for _ in range(50):
            self.add(self.packet("qinq", tags=self.tags(2, 2)))
        if not v6:
            for _ in range(100):
                self.add(self.packet("ip-options", v4opts=self.v4options()))
        else:
            for _ in range(150):
                self.add(self.packet("ext-chain", exts=self.random_exts(1, 7)))
            for _ in range(20):
                self.add(self.packet("ext-atomic-fragment", exts=[FRAG]))
            for _ in range(10):
                # Payload length 0 with hop-by-hop first: a jumbogram announcement, which the
                # datapath parses through (the kernel validates the jumbo option afterwards).
                proto, dport, l4 = self.upper()
                nh, ext = self.chain([HOP], proto)
                self.add(Frame("jumbogram-announced", self.verdict(proto, dport), self.tags(), self.ip6(nh, ext + l4, plen=0)))
        # ICMP: echo and other informational types (no rule allows ICMP: denied by default).
        types = [8, 0, 13, 14, 17, 5, 9, 10] if not v6 else [128, 129, 0, 5, 100, 127, 138, 139, 140, 200, 255]
        for _ in range(30):
            proto, l4 = self.icmp(r.choice(types), r.randrange(4), r.randbytes(4 + r.randrange(60)))
            self.add(Frame("icmp", "default", self.tags(), self.ip(proto, l4)))
        for _ in range(30):
            self.add(Frame("icmp-error", "default", self.tags(), self.ip(*self.icmp_error(cut=False))))
        others = [47, 50, 59, 132, 253, 254, 255] if v6 else [47, 50, 132, 253, 254, 255, 0, 41]
        for _ in range(30):
            self.add(Frame("other-proto", "default", self.tags(),
                           self.ip(r.choice(others), r.randbytes(r.randrange(1, 100)))))

    def icmp_error(self, cut):
        """An ICMP(v6) error quoting a flow nobody tracks; `cut` truncates the quote."""
        r, v6 = self.rng, self.fam == 6
        inner_dst = socket.inet_pton(socket.AF_INET6 if v6 else socket.AF_INET,
                                     "2001:db8::%x" % r.randrange(1, 65535) if v6 else "192.0.2.%d" % r.randrange(1, 255))
        proto = r.choice([TCP, UDP])
        quoted_l4 = struct.pack("!HHI", r.randrange(1, 65536), r.randrange(1, 65536), r.getrandbits(32))
        if v6:
            inner = self.ip6(proto, quoted_l4, plen=r.randrange(8, 1400), src=self.dst, dst=inner_dst)
            ty = r.randint(1, 4)
        else:
            inner = self.ip4(proto, quoted_l4, tot=r.randrange(28, 1400), src=self.dst, dst=inner_dst)
            ty = r.choice([3, 11, 12])
            if cut and r.random() < 0.3:
                inner = bytes([0x40 | r.randrange(5)]) + inner[1:]  # inner IHL below 5
                return self.icmp(ty, 0, b"\0\0\0\0" + inner)
        if cut:
            inner = inner[:r.randrange(0, len(inner))]
        return self.icmp(ty, r.randrange(4), b"\0\0\0\0" + inner)

    def fragments(self):
        r, v6 = self.rng, self.fam == 6
        for _ in range(40):
            self.add(*self.train("frag-train"))
        for _ in range(40):
            # A later fragment of a datagram whose first fragment never came.
            proto = r.choice([TCP, UDP])
            off = r.randint(2, 180)
            self.add(Frame("frag-orphan", "fragment", self.tags(),
                           self.frag(proto, r.randbytes(8 * r.randint(1, 20)), off, r.random() < 0.5, self.orphan_ident())))
        for _ in range(15):
            # The first fragment (judged), then a "later fragment" of the same ID but another protocol.
            pieces = self.train("frag-proto-mismatch")
            first = pieces[0]
            first.kind = "frag-proto-mismatch:first"
            other = UDP if first.proto == TCP else TCP
            later = Frame("frag-proto-mismatch", "fragment", first.tags,
                          self.frag(other, r.randbytes(16), r.randint(3, 50), False, first.ident))
            self.add(first, later)
        for _ in range(40):
            # Offset 8 bytes: would rewrite the L4 header (ports, flags) after it was judged.
            if r.random() < 0.5:
                first = self.train("frag-overlap")[0]
                first.kind = "frag-overlap:first"
                self.add(first, Frame("frag-overlap", "malformed", first.tags,
                                      self.frag(first.proto, r.randbytes(16), 1, r.random() < 0.5, first.ident)))
            else:
                self.add(Frame("frag-overlap", "malformed", self.tags(),
                               self.frag(r.choice([TCP, UDP]), r.randbytes(16), 1, False, self.ident())))
        for _ in range(30):
            # A first fragment holding only 8 bytes of TCP header (no flags): the tiny-fragment attack.
            ident = self.ident()
            dport = self.dport(TCP)
            tcp = self.tcp(self.sport(), dport, 0x02, r.randbytes(40))
            tags = self.tags()
            tiny = Frame("frag-tiny-first", "malformed", tags, self.frag(TCP, tcp[:8], 0, True, ident))
            rest = Frame("frag-tiny-first", "malformed", tags, self.frag(TCP, tcp[8:], 1, False, ident))
            self.add(tiny, rest) if r.random() < 0.5 else self.add(tiny)

    def frag(self, proto, data, off8, more, ident, pre=()):
        """One fragment (offset in 8-byte units) of a datagram carrying `proto`."""
        if self.fam == 4:
            return self.ip4(proto, data, frag=(0x2000 if more else 0) | off8, ident=ident & 0xFFFF)
        fh = struct.pack("!BBHI", proto, 0, (off8 << 3) | (1 if more else 0), ident)
        nh, ext = self.chain(list(pre), FRAG)
        return self.ip6(nh, ext + fh + data)

    def train(self, kind):
        """A datagram cut in 2..4 fragments, the first holding the whole L4 header."""
        r = self.rng
        proto = r.choice([TCP, UDP])
        _, dport, l4 = self.upper(proto, plen=r.randrange(40, 1200))
        label = self.verdict(proto, dport)
        ident = self.ident()
        tags = self.tags()
        pre = [r.choice([HOP, DSTOPTS, ROUTING]) for _ in range(r.randint(0, 2))] if self.fam == 6 else ()
        cuts = sorted(set(8 * r.randint(3, (len(l4) - 1) // 8) for _ in range(r.randint(1, 3))))
        bounds = [0] + cuts + [len(l4)]
        out = []
        for i in range(len(bounds) - 1):
            lo, hi = bounds[i], bounds[i + 1]
            more = i < len(bounds) - 2
            lab = label if i == 0 else ("pass" if label == "pass" else "fragment")
            f = Frame(kind, lab, tags, self.frag(proto, l4[lo:hi], lo // 8, more, ident, pre))
            f.proto, f.ident = proto, ident
            out.append(f)
        return out

    def malformed(self):
        r, v6 = self.rng, self.fam == 6
        for _ in range(40):
            f = self.packet("vlan3", tags=self.tags(3, 3))
            f.label = "malformed"
            self.add(f)
        for _ in range(10):
            f = self.packet("vlan4+", tags=self.tags(4, 6))
            f.label = "malformed"
            self.add(f)
        for _ in range(150):
            # Any well-formed frame cut anywhere after the Ethernet header: the IP length then
            # runs beyond the frame (or a header is cut).
            pick = r.random()
            if pick < 0.3:
                f = self.packet("truncated", proto=TCP)
            elif pick < 0.5:
                f = self.packet("truncated", proto=UDP)
            elif pick < 0.75:
                f = self.packet("truncated", v4opts=self.v4options() if not v6 else b"",
                                exts=self.random_exts(1, 7) if v6 else ())
            else:
                proto, l4 = self.icmp(8, 0, r.randbytes(r.randrange(0, 64)))
                f = Frame("truncated", "", self.tags(), self.ip(proto, l4))
            full = 14 + 4 * len(f.tags) + len(f.body)
            f.keep, f.label = r.randrange(14, full), "malformed"
            self.add(f)
        if not v6:
            for _ in range(40):
                proto, _, l4 = self.upper()
                self.add(Frame("bad-ihl-low", "malformed", self.tags(), self.ip4(proto, l4, ihl=r.randrange(5))))
            for _ in range(40):
                proto, _, l4 = self.upper(UDP, plen=r.randrange(0, 28))
                tot = 20 + len(l4)
                self.add(Frame("bad-ihl-high", "malformed", self.tags(),
                               self.ip4(proto, l4, ihl=r.randint(tot // 4 + 1, 15))))
            for _ in range(40):
                proto, _, l4 = self.upper()
                self.add(Frame("total-length-beyond-frame", "malformed", self.tags(),
                               self.ip4(proto, l4, tot=20 + len(l4) + r.randint(1, 1000))))
            for _ in range(20):
                proto, _, l4 = self.upper()
                self.add(Frame("total-length-below-ihl", "malformed", self.tags(),
                               self.ip4(proto, l4, tot=r.randrange(0, 20))))
        else:
            for _ in range(40):
                proto, _, l4 = self.upper()
                self.add(Frame("payload-length-beyond-frame", "malformed", self.tags(),
                               self.ip6(proto, l4, plen=len(l4) + r.randint(1, 1000))))
            for _ in range(20):
                proto = r.choice([TCP, UDP, NONXT])
                self.add(Frame("payload-length-zero", "malformed", self.tags(), self.ip6(proto, b"", plen=0)))
            for _ in range(40):
                # 9..14 extension headers: longer than the datapath walks.
                exts = [r.choice([HOP, DSTOPTS, FRAG]) for _ in range(r.randint(9, 14))]
                nh, ext = self.chain(exts, TCP)
                proto, dport, l4 = self.upper(TCP, plen=r.randrange(0, 40))
                self.add(Frame("ext-chain-too-long", "malformed", self.tags(), self.ip6(nh, ext + l4)))
            for _ in range(30):
                # Genuine, present extension headers that end beyond 512 bytes.
                tags = self.tags()
                exts, end = [], 14 + 4 * len(tags) + 40
                while end <= MAX_HDR_OFF:
                    u = r.randint(10, 30)
                    exts.append((r.choice([HOP, DSTOPTS]), u))
                    end += (u + 1) * 8
                body, nxt = b"", TCP
                for t, u in reversed(exts):
                    body = self.ext(t, nxt, u) + body
                    nxt = t
                _, _, l4 = self.upper(TCP, plen=0)
                self.add(Frame("ext-beyond-512", "malformed", tags, self.ip6(nxt, body + l4)))
            for _ in range(40):
                # A header whose length field claims far more than the frame holds.
                good = self.random_exts(0, 3)
                bogus = r.choice([HOP, DSTOPTS, ROUTING, AH])
                follow = r.choice([TCP, UDP, DSTOPTS])
                units = r.randint(40, 255)
                if bogus == AH:
                    hdr = struct.pack("!BBHI", follow, units, 0, 1)
                else:
                    hdr = bytes([follow, units]) + bytes(6)
                _, _, l4 = self.upper(TCP if follow == DSTOPTS else follow, plen=r.randrange(0, 60))
                nh, ext = self.chain(good, bogus)
                self.add(Frame("ext-bogus-length", "malformed", self.tags(), self.ip6(nh, ext + hdr + l4)))
            for _ in range(20):
                # The chain ends inside an extension header (consistent payload length).
                t = r.choice([HOP, DSTOPTS, ROUTING, FRAG, AH])
                hdr = self.ext(t, TCP)
                self.add(Frame("ext-cut", "malformed", self.tags(), self.ip6(t, hdr[:r.randrange(0, min(len(hdr), 8))])))
        for _ in range(30):
            ver = r.choice([v for v in range(16) if v != self.fam])
            proto, _, l4 = self.upper()
            body = self.ip4(proto, l4, ver=ver) if not v6 else self.ip6(proto, l4, ver=ver)
            self.add(Frame("bad-version", "malformed", self.tags(), body))
        for _ in range(40):
            # A consistent IP length, but the L4 header it holds is too short to read.
            proto = r.choice([TCP, UDP, ICMP if not v6 else ICMP6])
            need = 14 if proto == TCP else 8
            self.add(Frame("l4-cut", "malformed", self.tags(), self.ip(proto, r.randbytes(r.randrange(0, need)))))
        for _ in range(20):
            self.add(Frame("icmp-error-cut", "malformed", self.tags(), self.ip(*self.icmp_error(cut=True))))
        for _ in range(10):
            # Nothing after the Ethernet header (and tags), or a few bytes of an IP header.
            tags = self.tags()
            self.add(Frame("ip-header-cut", "malformed", tags, r.randbytes(r.randrange(0, 20)) if r.random() < 0.7 else b""))

    def build(self):
        self.well_formed()
        self.fragments()
        self.malformed()
        self.rng.shuffle(self.groups)  # trains stay in order inside their group
        return [f for g in self.groups for f in g]


def main():
    fam, role, iface, dst_mac, src_ip, dst_ip, seed, allowed = sys.argv[1:9]
    fam, role, seed, allowed = int(fam), int(role, 0), int(seed), allowed == "1"
    rng = random.Random(seed * 10 + fam)
    frames = Corpus(fam, rng, src_ip, dst_ip, allowed).build()
    assert len(frames) < 65536
    dmac = bytes.fromhex(dst_mac.replace(":", ""))
    ethertype = ETH_IP if fam == 4 else ETH_IP6
    s = None
    if iface != "-":  # "-": build and print the manifest only
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        s.bind((iface, 0))
    manifest, errors = [], []
    for i, f in enumerate(frames):
        smac = bytes([0x02, 0x7A, role, fam, i >> 8, i & 0xFF])
        eth = dmac + smac
        for t in f.tags:
            eth += struct.pack("!HH", t, r16(rng))
        # A frame with tags but an empty body still ends in an EtherType: the IP one.
        eth += struct.pack("!H", ethertype)
        raw = (eth + f.body)[: f.keep]
        assert 14 <= len(raw) <= MAX_FRAME, (f.kind, len(raw))
        assert f.label in ("pass", "default", "rule", "fragment", "malformed"), (f.kind, f.label)
        try:
            if s:
                s.send(raw)
        except OSError as e:
            errors.append("%d %s: %s" % (i, f.kind, e))
        manifest.append([f.kind, f.label, len(raw), len(f.tags)])
        if s and i % 16 == 15:
            time.sleep(0.001)  # the receiving veth queues at most 256 frames while XDP runs
    json.dump({"family": fam, "role": role, "frames": manifest, "errors": errors}, sys.stdout)


def r16(rng):
    return rng.randrange(1, 4095)  # VLAN ID


if __name__ == "__main__":
    main()
