//! Diagnostics: what is wrong with a policy file, and where.

use std::fmt;

/// One problem in a policy file, at a 1-based line and column (columns count characters).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{origin}:{line}:{col}: {message}")]
pub struct Diagnostic {
    /// Where the text came from (a file path, `<stdin>`, ...).
    pub origin: String,
    pub line: usize,
    pub col: usize,
    /// One sentence, lower-case start, no trailing period.
    pub message: String,
}

/// The problems found in a policy file (the first 1000, then one saying how many more),
/// sorted by position; at the same position, in the order they were found. Never empty when
/// returned as an error. `Display` prints one diagnostic per line as `ORIGIN:LINE:COL: message`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn iter(&self) -> std::slice::Iter<'_, Diagnostic> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

impl IntoIterator for Diagnostics {
    type Item = Diagnostic;
    type IntoIter = std::vec::IntoIter<Diagnostic>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a Diagnostics {
    type Item = &'a Diagnostic;
    type IntoIter = std::slice::Iter<'a, Diagnostic>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Quotes user text for a message: in backticks, control characters escaped (so a diagnostic
/// always stays on one line) and very long text shortened.
pub(crate) fn quote(s: &str) -> String {
    const MAX: usize = 80;
    let mut out = String::with_capacity(s.len().min(MAX) + 2);
    out.push('`');
    for (i, c) in s.chars().enumerate() {
        if i == MAX {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out.push('`');
    out
}

/// The diagnostic for a text that is not UTF-8: where the bad byte is (lines and characters of
/// the valid prefix), and which byte it is.
pub(crate) fn utf8_diagnostic(origin: &str, bytes: &[u8], e: std::str::Utf8Error) -> Diagnostic {
    // The prefix before the bad byte is valid UTF-8: count lines and characters in it.
    let good = String::from_utf8_lossy(&bytes[..e.valid_up_to()]);
    let line = good.matches('\n').count() + 1;
    let col = good.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    let byte = bytes.get(e.valid_up_to()).copied().unwrap_or_default();
    Diagnostic {
        origin: origin.to_owned(),
        line,
        col,
        message: format!("the file is not valid UTF-8 (byte 0x{byte:02x})"),
    }
}

/// Makes third-party message text fit on one line.
pub(crate) fn one_line(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let esc: Vec<char> = if c.is_control() { c.escape_default().collect() } else { vec![c] };
            esc
        })
        .collect()
}

/// Levenshtein distance, for "did you mean" suggestions (inputs are short names).
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let subst = prev[j] + usize::from(ca != cb);
            cur[j + 1] = subst.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// The candidate closest to `name`, if it is close enough to be a likely typo.
pub(crate) fn suggest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    // Names are compared case-insensitively; a pure case difference is the best suggestion.
    let lower = name.to_lowercase();
    if lower.chars().count() > 64 {
        return None;
    }
    let limit = match lower.chars().count() {
        0..=2 => 0,
        3..=5 => 1,
        _ => 2,
    };
    candidates
        .into_iter()
        .filter(|c| c.chars().count() <= 64)
        .map(|c| (edit_distance(&lower, &c.to_lowercase()), c))
        .filter(|(d, c)| *d <= limit && *c != name)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_one_per_line() {
        let d = Diagnostics(vec![
            Diagnostic { origin: "p.yaml".into(), line: 3, col: 7, message: "bad thing".into() },
            Diagnostic { origin: "p.yaml".into(), line: 9, col: 1, message: "other".into() },
        ]);
        assert_eq!(d.to_string(), "p.yaml:3:7: bad thing\np.yaml:9:1: other");
    }

    #[test]
    fn quoting_and_suggestions() {
        assert_eq!(quote("a\nb"), "`a\\nb`");
        assert_eq!(edit_distance("paymnts", "payments"), 1);
        assert_eq!(suggest("paymnts", ["frontend", "payments"]), Some("payments"));
        assert_eq!(suggest("Payments", ["frontend", "payments"]), Some("payments"));
        assert_eq!(suggest("zzz", ["frontend", "payments"]), None);
    }
}
