//! References to segments, ports, CIDRs.

use std::net::IpAddr;

use ipnet::IpNet;

use super::*;

impl Validator<'_> {
    pub(super) fn seg_refs(&mut self, f: &Fields<'_>, field: &str, rule: &str, segments: &Names<'_>) -> Vec<SegRef> {
        let Some(n) = f.get(field) else {
            self.err(f.pos, format!("{rule} has no `{field}`; list segment names, or \"*\" for any address"));
            return Vec::new();
        };
        self.seg_list(
            n,
            field,
            &format!("`{field}` is empty; list at least one segment, or \"*\" for any address"),
            segments,
        )
    }

    /// A list of segment references (`field` is `from` or `to`); `empty` is the message for `[]`.
    pub(super) fn seg_list(&mut self, n: &Node, field: &str, empty: &str, segments: &Names<'_>) -> Vec<SegRef> {
        let items = match &n.value {
            Value::Seq(items) => &items[..],
            Value::Str(s) => {
                self.err(n.pos, format!("`{field}` must be a list; write [{s}]"));
                return Vec::new();
            }
            v => {
                self.err(n.pos, format!("`{field}` must be a list of segment names, not {}", v.kind()));
                return Vec::new();
            }
        };
        if items.is_empty() {
            self.err(n.pos, empty);
        }
        let mut out = Vec::new();
        for item in items {
            let Value::Str(s) = &item.value else {
                self.err(item.pos, format!("a segment name must be a string, not {}", item.value.kind()));
                continue;
            };
            if let Some(r) = self.seg_name(item.pos, s, field, segments) {
                out.push(r);
            }
        }
        out
    }

    /// Resolves one segment name (`*`, `world` or a named segment) found in `field` at `pos`.
    pub(super) fn seg_name(&mut self, pos: Pos, s: &str, field: &str, names: &Names<'_>) -> Option<SegRef> {
        if s == ANY_NAME {
            return Some(SegRef::Any);
        }
        if s == WORLD_NAME {
            return Some(SegRef::World);
        }
        if let Some(&i) = names.index.get(s) {
            return Some(SegRef::Named(i));
        }
        if self.left_out(pos) {
            return None;
        }
        let hint = match self.suggestions_left.checked_sub(1) {
            Some(left) => {
                self.suggestions_left = left;
                let known = names.segments.iter().map(|seg| seg.name.as_str()).chain([WORLD_NAME]);
                match suggest(s, known) {
                    Some(g) => format!("; did you mean {}?", quote(g)),
                    None => String::new(),
                }
            }
            None => String::new(),
        };
        self.err(pos, format!("unknown segment {} in `{field}`{hint}", quote(s)));
        None
    }

    /// A `ports` list; `what` (`rule`, `rate limit`) names its owner in messages.
    pub(super) fn ports(&mut self, n: &Node, what: &str) -> Vec<PortSpec> {
        let Some(items) = self.list(n, "ports", "a list like [\"443/tcp\"]") else { return Vec::new() };
        if items.is_empty() {
            self.err(
                n.pos,
                format!("`ports` is empty, so the {what} could never match; remove it to match every port"),
            );
        }
        let mut out = Vec::new();
        for item in items {
            match &item.value {
                Value::Str(s) => match PortSpec::from_str(s) {
                    Ok(p) => out.push(p),
                    Err(e) => self.err(item.pos, format!("invalid port spec {}: {e}", quote(s))),
                },
                Value::Int(p) => {
                    self.err(item.pos, format!("port {p} needs a protocol: write \"{p}/tcp\" or \"{p}/udp\""))
                }
                v => self.err(item.pos, format!("a port spec must be a string such as \"443/tcp\", not {}", v.kind())),
            }
        }
        out
    }
}

/// Parses one CIDR. The message of the error is a complete diagnostic sentence.
pub(super) fn parse_cidr(text: &str) -> Result<IpNet, String> {
    if let Ok(net) = IpNet::from_str(text) {
        let trunc = net.trunc();
        if trunc != net {
            return Err(format!("{} has host bits set; did you mean {trunc}?", quote(text)));
        }
        return Ok(net);
    }
    if let Ok(ip) = IpAddr::from_str(text) {
        let len = if ip.is_ipv4() { 32 } else { 128 };
        return Err(format!("{} is an address, not a CIDR; write {ip}/{len} for a single address", quote(text)));
    }
    if let Some((addr, len)) = text.split_once('/')
        && let Ok(ip) = IpAddr::from_str(addr)
        && !len.is_empty()
        && len.bytes().all(|b| b.is_ascii_digit())
    {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        return Err(format!(
            "invalid CIDR {}: the prefix length must be at most {max} for an IPv{} address",
            quote(text),
            if ip.is_ipv4() { 4 } else { 6 }
        ));
    }
    Err(format!(
        "invalid CIDR {}; expected an address and a prefix length such as 10.0.0.0/8 or fd00::/64",
        quote(text)
    ))
}
