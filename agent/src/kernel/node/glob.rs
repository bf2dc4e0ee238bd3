//! Interface-name patterns (`--iface-pattern`): shell globs over the whole name. `*` matches
//! any run of characters (none included), `?` one character, `[abc]`, `[a-z]` one of a set
//! (`[!...]` or `[^...]`: one not in it); every other character matches itself.
use std::fmt;

/// Interface names are at most 15 bytes (IFNAMSIZ - 1); a pattern may be longer only through
/// its wildcards and sets.
const MAX_PATTERN: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    text: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("--iface-pattern {pattern:?}: {message}")]
pub struct PatternError {
    pub pattern: String,
    pub message: &'static str,
}

impl Pattern {
    pub fn new(text: &str) -> Result<Pattern, PatternError> {
        let err = |message| Err(PatternError { pattern: text.into(), message });
        if text.is_empty() {
            return err("an empty pattern matches no interface");
        }
        if text.len() > MAX_PATTERN {
            return err("too long for an interface name pattern (at most 64 bytes)");
        }
        // What an interface name cannot hold (dev_valid_name: '/', ':', white space).
        if text.bytes().any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0) {
            return err("interface names hold no '/', ':' or white space");
        }
        if text.bytes().all(|b| b == b'*') {
            return err("it would match every interface, the loopback and the uplinks included; name them");
        }
        let b = text.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'[' {
                match set_end(b, i) {
                    Some(end) => i = end,
                    None => return err("a '[' set is not closed by ']'"),
                }
            }
            i += 1;
        }
        Ok(Pattern { text: text.into() })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn matches(&self, name: &str) -> bool {
        glob(self.text.as_bytes(), name.as_bytes())
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The index of the `]` that closes the set opening at `p[start]` (a `]` right after `[`, `[!`
/// or `[^` is a member, as in the shell).
fn set_end(p: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    if i < p.len() && (p[i] == b'!' || p[i] == b'^') {
        i += 1;
    }
    if i < p.len() && p[i] == b']' {
        i += 1;
    }
    while i < p.len() {
        if p[i] == b']' {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// Whether byte `c` is in the set `p[start..=end]` (`[` ... `]`).
fn in_set(p: &[u8], start: usize, end: usize, c: u8) -> bool {
    let mut i = start + 1;
    let negated = p[i] == b'!' || p[i] == b'^';
    if negated {
        i += 1;
    }
    let mut found = false;
    let first = i;
    while i < end {
        if i + 2 < end && p[i + 1] == b'-' {
            found |= (p[i]..=p[i + 2]).contains(&c);
            i += 3;
        } else {
            // A ']' is a member only first in the set (set_end found the closing one).
            found |= p[i] == c && (p[i] != b']' || i == first);
            i += 1;
        }
    }
    found != negated
}

/// Iterative glob match with one backtrack point for the last `*` (linear in practice).
fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() {
            match p[pi] {
                b'*' => {
                    star = Some((pi, si));
                    pi += 1;
                    continue;
                }
                b'?' => {
                    pi += 1;
                    si += 1;
                    continue;
                }
                b'[' => {
                    let end = set_end(p, pi).expect("validated in Pattern::new");
                    if in_set(p, pi, end, s[si]) {
                        pi = end + 1;
                        si += 1;
                        continue;
                    }
                }
                c if c == s[si] => {
                    pi += 1;
                    si += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, ss)) => {
                pi = sp + 1;
                si = ss + 1;
                star = Some((sp, ss + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, s: &str) -> bool {
        Pattern::new(p).unwrap().matches(s)
    }

    #[test]
    fn globs() {
        assert!(m("veth*", "veth0") && m("veth*", "veth") && m("veth*", "veth1a2b.3"));
        assert!(!m("veth*", "eth0") && !m("veth*", "xveth0"));
        assert!(m("cali*", "cali12ab34cd56e") && m("lxc*", "lxc_health"));
        assert!(m("*pod", "mypod") && !m("*pod", "mypods"));
        assert!(m("v?th*", "vath9") && !m("v?th*", "vth9"));
        assert!(m("a*b*c", "axxbyyc") && !m("a*b*c", "axxbyy") && m("a*b*c", "abc"));
        assert!(m("eth[0-3]", "eth2") && !m("eth[0-3]", "eth4") && !m("eth[0-3]", "eth"));
        assert!(m("eth[!0-3]", "eth7") && !m("eth[!0-3]", "eth1") && m("eth[^0]", "eth1"));
        assert!(m("x[]a]", "x]") && m("x[]a]", "xa") && !m("x[]a]", "xb"));
        assert!(m("pod", "pod") && !m("pod", "pod1"));
    }

    #[test]
    fn refuses_bad_patterns() {
        for (p, why) in [
            ("", "empty"),
            ("*", "every interface"),
            ("**", "every interface"),
            ("veth[0-", "not closed"),
            ("a b", "white space"),
            ("a:b", "':'"),
        ] {
            let e = Pattern::new(p).unwrap_err();
            assert!(e.to_string().contains(why), "{p:?}: {e}");
        }
    }
}
