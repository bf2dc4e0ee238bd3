//! The `apis` section: the TCP ports of a segment's servers that speak HTTP.

use std::collections::HashMap;

use agent_common::http::MAX_API_PORTS;

use super::*;
use crate::policy::compile::insert_range;
use crate::policy::model::{Api, ApiProtocol, Proto};

impl Validator<'_> {
    pub(super) fn apis(&mut self, n: &Node, segments: &Names<'_>) -> Vec<Api> {
        let Some(items) = self.list(n, "apis", "a list of APIs") else { return Vec::new() };
        let mut apis = Vec::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        // The (segment, port) pairs declared so far, per segment as disjoint ranges.
        let mut declared = DeclaredPorts::default();
        let mut over_cap = false;
        for item in items {
            let Some(f) = self.fields(item, Owner::Text("an API"), API_FIELDS) else {
                self.err(
                    item.pos,
                    format!(
                        "an API must be a mapping with `segment`, `ports` and `protocol`, not {}",
                        item.value.kind()
                    ),
                );
                continue;
            };
            let name = f.get("name").and_then(|n| self.api_name(n, &mut names));
            let label = match &name {
                Some(s) => format!("API {}", quote(s)),
                None => "this API".to_owned(),
            };
            let segment = match f.get("segment") {
                None => {
                    self.err(f.pos, format!("{label} has no `segment`; name the segment of its servers"));
                    None
                }
                Some(n) => self.api_segment(n, segments),
            };
            let ports = match f.get("ports") {
                None => {
                    self.err(f.pos, format!("{label} has no `ports`; list its TCP ports, such as [\"8080/tcp\"]"));
                    Vec::new()
                }
                Some(n) => self.api_ports(n),
            };
            let protocol = f.get("protocol").map_or(Some(ApiProtocol::Http), |n| self.api_protocol(n));
            let (Some(segment), Some(protocol)) = (segment, protocol) else { continue };
            let api = Api { name, segment, ports, protocol };
            if !over_cap {
                let total = declared.add(&api);
                if total > MAX_API_PORTS as usize {
                    over_cap = true;
                    let at = f.get("ports").map_or(f.pos, |n| n.pos);
                    self.err(
                        at,
                        format!(
                            "with {label} the policy declares more than {MAX_API_PORTS} (segment, port) \
                             pairs, the most a policy may declare: name fewer ports or narrower ranges"
                        ),
                    );
                }
            }
            apis.push(api);
        }
        apis
    }

    /// An API's optional `name`: a non-empty string not used by another API.
    fn api_name(&mut self, n: &Node, names: &mut HashMap<String, usize>) -> Option<String> {
        match &n.value {
            Value::Str(s) if s.is_empty() => {
                self.err(n.pos, "an API name must not be empty; remove `name` to leave the API unnamed");
                None
            }
            Value::Str(s) => {
                if let Some(line) = names.get(&**s) {
                    self.err(n.pos, format!("duplicate API name {} (first used on line {line})", quote(s)));
                } else {
                    names.insert(String::from(&**s), n.pos.line as usize);
                }
                Some(String::from(&**s))
            }
            v => {
                self.err(n.pos, format!("an API name must be a string, not {}", v.kind()));
                None
            }
        }
    }

    /// An API's `segment`: one named segment, the servers.
    fn api_segment(&mut self, n: &Node, segments: &Names<'_>) -> Option<usize> {
        match &n.value {
            Value::Str(s) if &**s == ANY_NAME || &**s == WORLD_NAME => {
                self.err(
                    n.pos,
                    format!(
                        "the `segment` of an API must be a named segment, not {}: it names the servers \
                         whose ports speak HTTP",
                        quote(s)
                    ),
                );
                None
            }
            Value::Str(s) => match self.seg_name(n.pos, s, "segment", segments)? {
                SegRef::Named(i) => Some(i),
                SegRef::Any | SegRef::World => None,
            },
            Value::Seq(_) => {
                self.err(n.pos, "the `segment` of an API is one segment name, not a list; declare one API per segment");
                None
            }
            v => {
                self.err(n.pos, format!("the `segment` of an API must be a segment name, not {}", v.kind()));
                None
            }
        }
    }

    /// An API's `ports`: TCP ports and ranges.
    fn api_ports(&mut self, n: &Node) -> Vec<PortSpec> {
        let Some(items) = self.list(n, "ports", "a list like [\"8080/tcp\"]") else { return Vec::new() };
        if items.is_empty() {
            self.err(n.pos, "`ports` is empty; list the TCP ports that speak HTTP, such as [\"8080/tcp\"]");
        }
        let mut out = Vec::new();
        for item in items {
            match &item.value {
                Value::Str(s) => match PortSpec::from_str(s) {
                    Ok(p @ PortSpec::Range { proto: Proto::Tcp, .. }) => out.push(p),
                    Ok(PortSpec::All(Proto::Tcp)) => self.err(
                        item.pos,
                        format!(
                            "{} would declare every TCP port; name the ports that speak HTTP, such as \"8080/tcp\"",
                            quote(s)
                        ),
                    ),
                    Ok(PortSpec::Range { proto: Proto::Udp, lo, hi }) => {
                        let tcp = if lo == hi { format!("{lo}/tcp") } else { format!("{lo}-{hi}/tcp") };
                        self.err(
                            item.pos,
                            format!("{} is not TCP: HTTP/1.x runs over TCP; did you mean `{tcp}`?", quote(s)),
                        );
                    }
                    Ok(_) => self.err(
                        item.pos,
                        format!(
                            "{} is not TCP: an API's ports are TCP ports or ranges, such as \"8080/tcp\"",
                            quote(s)
                        ),
                    ),
                    Err(e) => self.err(item.pos, format!("invalid port spec {}: {e}", quote(s))),
                },
                Value::Int(p) => self.err(item.pos, format!("port {p} needs its protocol: write \"{p}/tcp\"")),
                v => self.err(item.pos, format!("a port spec must be a string such as \"8080/tcp\", not {}", v.kind())),
            }
        }
        out
    }

    /// An API's `protocol`.
    fn api_protocol(&mut self, n: &Node) -> Option<ApiProtocol> {
        let expected = ApiProtocol::NAMES.map(|p| format!("`{p}`")).join(", ");
        match &n.value {
            Value::Str(s) => {
                if let Some(p) = ApiProtocol::from_name(s) {
                    return Some(p);
                }
                let hint = match suggest(s, ApiProtocol::NAMES) {
                    Some(g) => format!("; did you mean `{g}`?"),
                    None => String::new(),
                };
                self.err(
                    n.pos,
                    format!(
                        "unknown API protocol {}{hint} (supported: {expected}, plaintext HTTP/1.x; TLS and \
                         HTTP/2 on such a port are reported as such)",
                        quote(s)
                    ),
                );
                None
            }
            v => {
                self.err(n.pos, format!("`protocol` must be {expected}, not {}", v.kind()));
                None
            }
        }
    }
}

/// The distinct (segment, TCP port) pairs of APIs, kept per segment as sorted disjoint ranges
/// (a policy may list the same ports many times: the count stays exact and cheap).
#[derive(Default)]
pub(crate) struct DeclaredPorts {
    ranges: HashMap<usize, Vec<(u32, u32)>>,
    total: usize,
}

impl DeclaredPorts {
    /// Adds the ports of `api`; returns the total of distinct pairs so far.
    pub(crate) fn add(&mut self, api: &Api) -> usize {
        let set = self.ranges.entry(api.segment).or_default();
        for (lo, hi) in api.tcp_ranges() {
            self.total += insert_range(set, u32::from(lo), u32::from(hi));
        }
        self.total
    }
}
