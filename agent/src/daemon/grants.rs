//! Time-bound grants: `ztagent grant --from SEG|CIDR --to SEG --port SPEC --for 15m --reason
//! TEXT`, a temporary allow for an exception, that ends by itself.
//!
//! A grant is an allow rule the agent appends to the policy in force (after the file's rules:
//! a deny rule still beats it, and where another rule allows, that rule decides), whose verdicts
//! carry the grant's index in `ZT_GRANTS`. A grant from an address block names a
//! pseudo-segment of that block which no address belongs to (addresses keep their identity):
//! the datapath looks the block up only for a packet the policy denies by default, and judges
//! it again as if from the block (see `Policy::grant_sources`). That map holds the grant's deadline, and the kernel
//! checks it: past it, the grant's verdicts are the default action and the flows it allowed
//! are cut at their next packet, like a revocation, whether an agent is running or not. The
//! agent keeps the grants in its state directory (`grants.json`, written atomically), so a
//! restarted agent lists and installs those still running; an ended grant is removed from the
//! policy at the next second's housekeeping, and its index is free again only then (a new
//! revision re-judges every tracked flow, so no flow can outlive its grant through a reused
//! index).
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use std::net::IpAddr;

use ipnet::IpNet;

use crate::api::Grant;
use crate::policy::{Action, GrantSource, MAX_GRANTS, Mode, Policy, PortSpec, Rule, SegRef, Segment};

const FILE: &str = "grants.json";
/// The longest grant: an exception, not a rule (write that in the policy).
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error(
        "unknown segment `{0}` in the policy in force (a grant names segments, `world` or \"*\", and comes --from those or an address block)"
    )]
    Segment(String),
    #[error("the address block {given} has host bits set: did you mean {network}?")]
    HostBits { given: String, network: String },
    #[error("invalid port spec `{spec}`: {message}")]
    Port { spec: String, message: String },
    #[error("{0} grants are in force already, the most there can be; revoke one first")]
    Full(u32),
    #[error("no grant {0} is in force")]
    Unknown(u32),
    #[error("a grant lasts from 1 second to 7 days, not {0}")]
    Duration(String),
    #[error("the grant needs a reason (--reason TEXT): it is reported with every event about it")]
    Reason,
    #[error("this agent has no policy yet: a grant opens an exception in one, so push a policy first")]
    NoPolicy,
    #[error(
        "a grant from an address block ({0}) cannot apply while Kubernetes inputs are in force; grant from a segment instead"
    )]
    BlockUnderKubernetes(String),
    #[error("cannot write the grants to {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("the grants file {path} cannot be read: {message}")]
    Read { path: PathBuf, message: String },
}

/// A grant's duration, from 1 second to [`MAX_DURATION`].
pub fn check_duration(d: Duration) -> Result<Duration, GrantError> {
    if d.as_secs() == 0 || d > MAX_DURATION {
        return Err(GrantError::Duration(format!("{} s", d.as_secs())));
    }
    Ok(d)
}

/// `15m`, `90s`, `2h`, `1d` (or seconds without a unit) -> a duration within [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, GrantError> {
    let bad = || GrantError::Duration(format!("`{text}`"));
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(bad()),
    };
    let d = Duration::from_secs(secs);
    if secs == 0 || d > MAX_DURATION {
        return Err(bad());
    }
    Ok(d)
}

/// The segment reference of a grant's side in `policy`.
fn side(policy: &Policy, name: &str) -> Result<SegRef, GrantError> {
    match name {
        crate::policy::ANY_NAME => Ok(SegRef::Any),
        crate::policy::WORLD_NAME => Ok(SegRef::World),
        _ => policy.segment_index(name).map(SegRef::Named).ok_or_else(|| GrantError::Segment(name.to_owned())),
    }
}

/// A grant's `--from` as an address block, if it is one (`10.20.9.0/24`, or an address: its
/// /32 or /128); `Err` for a block with host bits set.
pub fn block(from: &str) -> Result<Option<IpNet>, GrantError> {
    let net = match (from.parse::<IpNet>(), from.parse::<IpAddr>()) {
        (Ok(n), _) => n,
        (_, Ok(a)) => IpNet::from(a),
        _ => return Ok(None),
    };
    if net.trunc() != net {
        return Err(GrantError::HostBits { given: from.to_owned(), network: net.trunc().to_string() });
    }
    Ok(Some(net))
}

/// Checks that `g` can apply to `policy`: its segments exist, its ports parse.
pub fn check(policy: &Policy, g: &Grant) -> Result<(), GrantError> {
    if block(&g.from)?.is_none() {
        side(policy, &g.from)?;
    }
    side(policy, &g.to)?;
    ports(&g.ports)?;
    Ok(())
}

/// Port specs as a rule takes them.
pub fn ports(specs: &[String]) -> Result<Option<Vec<PortSpec>>, GrantError> {
    if specs.is_empty() {
        return Ok(None);
    }
    specs
        .iter()
        .map(|s| s.parse::<PortSpec>().map_err(|e| GrantError::Port { spec: s.clone(), message: e.to_string() }))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// The identity every address of `net` has in `policy` (a segment, or `world`), if one: the
/// longest segment CIDR holding the block, unless a segment CIDR lies strictly inside it.
fn identity_of(policy: &Policy, net: &IpNet) -> Option<SegRef> {
    let mut best: Option<(u8, usize)> = None;
    for (i, s) in policy.segments.iter().enumerate() {
        for c in &s.cidrs {
            if c.contains(net) && best.is_none_or(|(len, _)| c.prefix_len() > len) {
                best = Some((c.prefix_len(), i));
            } else if net.contains(c) && c != net {
                return None;
            }
        }
    }
    Some(best.map_or(SegRef::World, |(_, i)| SegRef::Named(i)))
}

/// `policy` with the grants appended: each a rule after the file's rules, and each address
/// block a grant is from a pseudo-segment of its own (see `Policy::grant_sources`), which the
/// rules of every grant whose block holds it name (so the longest block the datapath finds
/// carries the grants of the blocks around it too). A grant that names a segment the policy
/// no longer has cannot apply, and is left out (returned, for the log); so is a grant from an
/// address block when `blocks` is false (under Kubernetes inputs: the translation has no class
/// for such a pseudo-segment, see `k8s::translate`).
pub fn with_grants(policy: &Policy, grants: &[Grant], blocks: bool) -> (Policy, Vec<(u32, GrantError)>) {
    let mut out = policy.clone();
    let mut skipped = Vec::new();
    let mut applying: Vec<(&Grant, Option<IpNet>)> = Vec::new();
    for g in grants {
        match check(policy, g).and_then(|()| block(&g.from)) {
            Ok(Some(net)) if !blocks => skipped.push((g.id, GrantError::BlockUnderKubernetes(net.to_string()))),
            Ok(b) => applying.push((g, b)),
            Err(e) => skipped.push((g.id, e)),
        }
    }
    let mut blocks: Vec<IpNet> = applying.iter().filter_map(|(_, b)| *b).collect();
    blocks.sort();
    blocks.dedup();
    let first = out.segments.len();
    for b in &blocks {
        out.segments.push(Segment { name: format!("grant {b}"), cidrs: vec![*b], selector: None, mode: Mode::Enforce });
        out.grant_sources.push(GrantSource { identity: identity_of(policy, b) });
    }
    for (g, b) in applying {
        let from = match b {
            Some(net) => blocks
                .iter()
                .enumerate()
                .filter(|(_, c)| net.contains(*c))
                .map(|(j, _)| SegRef::Named(first + j))
                .collect(),
            // Checked above.
            None => side(policy, &g.from).into_iter().collect(),
        };
        out.rules.push(Rule {
            name: format!("grant-{}", g.id),
            description: Some(g.reason.clone()),
            from,
            to: side(policy, &g.to).into_iter().collect(),
            ports: ports(&g.ports).unwrap_or_default(),
            action: Action::Allow,
            mode: Mode::Enforce,
            grant: Some(g.index),
        });
    }
    (out, skipped)
}

/// The grants in force, kept in the state directory.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Store {
    next_id: u32,
    pub grants: Vec<Grant>,
}

impl Store {
    /// The saved grants (none when there is no file), those that ended meanwhile included: the
    /// pinned policy may still hold their rules, and their end is reported by the housekeeping.
    pub fn load(dir: &Path) -> Result<Store, GrantError> {
        crate::store::read_json(dir, FILE).map_err(|(path, message)| GrantError::Read { path, message })
    }

    pub fn save(&self, dir: &Path) -> Result<(), GrantError> {
        crate::store::write_json(dir, FILE, self).map_err(|(path, source)| GrantError::Write { path, source })
    }

    /// A new grant (not saved yet), with the first free index.
    pub fn add(
        &mut self,
        from: String,
        to: String,
        ports: Vec<String>,
        reason: String,
        now: f64,
        d: Duration,
    ) -> Result<Grant, GrantError> {
        if reason.trim().is_empty() {
            return Err(GrantError::Reason);
        }
        let index =
            (0..MAX_GRANTS).find(|i| self.grants.iter().all(|g| g.index != *i)).ok_or(GrantError::Full(MAX_GRANTS))?;
        self.next_id += 1;
        let g = Grant {
            id: self.next_id,
            index,
            from,
            to,
            ports,
            reason,
            granted_at: now,
            expires_at: now + d.as_secs_f64(),
        };
        self.grants.push(g.clone());
        Ok(g)
    }

    /// Takes out the grant `id`.
    pub fn remove(&mut self, id: u32) -> Result<Grant, GrantError> {
        let i = self.grants.iter().position(|g| g.id == id).ok_or(GrantError::Unknown(id))?;
        Ok(self.grants.remove(i))
    }

    /// Takes out the grants that have ended by `now`.
    pub fn take_ended(&mut self, now: f64) -> Vec<Grant> {
        let (ended, live) = std::mem::take(&mut self.grants).into_iter().partition(|g| g.expires_at <= now);
        self.grants = live;
        ended
    }
}

/// The kernel deadline (monotonic ns) of a grant ending at unix time `expires_at`.
pub fn deadline_ns(expires_at: f64, unix_now: f64, monotonic_now: u64) -> u64 {
    let left = ((expires_at - unix_now).max(0.0) * 1e9) as u64;
    monotonic_now.saturating_add(left)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("3s").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        for bad in ["", "0s", "8d", "5 minutes", "-1m", "1.5h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn grants_become_rules_after_the_files_and_are_kept_across_restarts() {
        let p = crate::policy::parse(
            "version: 1\nsegments:\n  a: { cidrs: [10.0.1.0/24] }\n  b: { cidrs: [10.0.2.0/24] }\nrules:\n  - { name: no-ssh, from: [a], to: [b], ports: [\"22/tcp\"], action: deny }\n",
            "t",
        )
        .unwrap();
        let mut store = Store::default();
        let g1 = store
            .add("a".into(), "b".into(), vec!["8080/tcp".into()], "debugging".into(), 100.0, Duration::from_secs(60))
            .unwrap();
        let g2 = store.add("a".into(), "b".into(), vec![], "all of it".into(), 100.0, Duration::from_secs(5)).unwrap();
        assert_eq!((g1.index, g2.index, g1.id, g2.id), (0, 1, 1, 2));
        let (with, skipped) = with_grants(&p, &store.grants, true);
        assert!(skipped.is_empty());
        assert_eq!(with.rules.len(), 3);
        let c = crate::policy::compile(&with);
        let check = |port| {
            crate::daemon::check(
                &c,
                &crate::api::Flow {
                    src: "10.0.1.1".parse().unwrap(),
                    dst: "10.0.2.1".parse().unwrap(),
                    proto: 6,
                    port,
                },
            )
        };
        // The grant allows what the default denied; the deny rule still wins.
        assert_eq!((check(8080).verdict.as_str(), check(8080).rule.as_deref()), ("allow", Some("grant-1")));
        assert_eq!((check(22).verdict.as_str(), check(22).rule.as_deref()), ("deny", Some("no-ssh")));
        assert_eq!(check(5432).rule.as_deref(), Some("grant-2"));
        // A grant on a segment the policy lost is left out.
        let other = crate::policy::parse("version: 1\nsegments: {}\nrules: []\n", "t").unwrap();
        assert_eq!(with_grants(&other, &store.grants, true).1.len(), 2);
        // Saved and loaded back, less what has ended.
        let dir = std::env::temp_dir().join(format!("ztagent-grants-test-{}", std::process::id()));
        store.save(&dir).unwrap();
        let mut back = Store::load(&dir).unwrap();
        assert_eq!(back.grants, store.grants);
        assert_eq!(back.take_ended(106.0), vec![g2]);
        assert_eq!(back.grants, vec![g1.clone()]);
        // Ids are never reused, indexes are once free.
        let g3 = back.add("a".into(), "b".into(), vec![], "again".into(), 106.0, Duration::from_secs(5)).unwrap();
        assert_eq!((g3.id, g3.index), (3, 1));
        assert!(matches!(back.remove(7), Err(GrantError::Unknown(7))));
        assert!(matches!(
            store.add("a".into(), "b".into(), vec![], " ".into(), 0.0, Duration::from_secs(1)),
            Err(GrantError::Reason)
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn grants_from_address_blocks_keep_identities_and_agree_with_the_reference() {
        let p = crate::policy::parse(
            "version: 1\nsegments:\n  a: { cidrs: [10.0.1.0/24] }\n  b: { cidrs: [10.0.2.0/24] }\nrules:\n  - { name: no-ssh, from: [a], to: [b], ports: [\"22/tcp\"], action: deny }\nrateLimits:\n  - { name: world-in, from: world, packets: { rate: 100, per: second, burst: 10 } }\n",
            "t",
        )
        .unwrap();
        assert!(matches!(block("10.0.9.7/24"), Err(GrantError::HostBits { .. })));
        assert_eq!(block("10.0.9.7").unwrap().map(|n| n.to_string()).as_deref(), Some("10.0.9.7/32"));
        assert_eq!(block("a").unwrap(), None);
        let mut store = Store::default();
        let mut add = |from: &str, ports: Vec<String>| {
            store.add(from.into(), "b".into(), ports, "why".into(), 0.0, Duration::from_secs(60)).unwrap();
        };
        add("10.0.9.0/24", vec!["8080/tcp".into()]); // in no segment
        add("10.0.1.7/32", vec![]); // one host of a
        add("10.0.0.0/16", vec!["9000/tcp".into()]); // around both segments
        let g = store.grants.clone();
        // Under Kubernetes inputs the blocks are left out, each with the reason.
        let (without, skipped) = with_grants(&p, &g, false);
        assert_eq!((without.segments.len(), without.rules.len()), (p.segments.len(), p.rules.len()));
        assert!(
            skipped.iter().all(|(_, e)| matches!(e, GrantError::BlockUnderKubernetes(_))) && skipped.len() == 3,
            "{skipped:?}"
        );
        let (with, skipped) = with_grants(&p, &g, true);
        assert!(skipped.is_empty());
        assert_eq!(with.grant_sources.len(), 3);
        let c = crate::policy::compile(&with);
        let index = c.index();
        let at = |src: &str, port: u16| {
            let (s, d) = (src.parse().unwrap(), "10.0.2.1".parse().unwrap());
            let got = index.lookup(s, d, 6, port);
            assert_eq!(got, crate::policy::evaluate_naive(&with, s, d, 6, port), "{src} -> :{port}");
            (c.rule_name(got.rule).unwrap_or("default").to_owned(), got.src_segment, got.limit)
        };
        let (a, world) = (1, 0);
        // From a block in no segment: allowed on its port, bound by world's rate limit.
        assert_eq!(at("10.0.9.5", 8080), ("grant-1".into(), world, 1));
        assert_eq!(at("10.0.9.5", 8081), ("default".into(), world, 0));
        // A host of a: the deny rule still wins, the grant allows the rest, the host keeps
        // its segment, other hosts of a are not granted.
        assert_eq!(at("10.0.1.7", 22), ("no-ssh".into(), a, 0));
        assert_eq!(at("10.0.1.7", 5432), ("grant-2".into(), a, 0));
        assert_eq!(at("10.0.1.8", 5432), ("default".into(), a, 0));
        // Blocks inside a larger granted block carry its grant too; a block spanning several
        // identities is bound by no limit.
        assert_eq!(at("10.0.1.7", 9000), ("grant-2".into(), a, 0));
        assert_eq!(at("10.0.9.5", 9000), ("grant-3".into(), world, 1));
        assert_eq!(at("10.0.3.3", 9000), ("grant-3".into(), world, 0));
        assert_eq!(at("10.0.1.8", 9000), ("grant-3".into(), a, 0));
        // Everywhere else, the datapath's lookup and the reference agree.
        for src in ["10.0.1.1", "10.0.1.7", "10.0.2.9", "10.0.9.1", "10.0.200.1", "10.1.0.1", "192.0.2.1"] {
            for port in [1, 22, 8080, 9000, 9001, 65535] {
                at(src, port);
            }
        }
    }
}
