//! Reading Kubernetes objects: Namespaces, Pods and NetworkPolicies, as `kubectl get
//! pods,namespaces,networkpolicies -A -o yaml` prints them (`apiVersion: v1, kind: List,
//! items: [...]`), as multi-document YAML (`---`) of the same objects, or as JSON; any mix and
//! order across files. Other kinds are skipped with a warning. Every problem is reported as
//! `FILE:LINE:COL: error: ...` (warnings `FILE:LINE:COL: warning: ...`), using the
//! position-carrying document tree of the policy reader.
//!
//! Only what the translation needs is read, and checked as the API server would: names,
//! namespaces (absent: `default`), labels, a pod's addresses (`status.podIP`, `status.podIPs`),
//! phase, `spec.hostNetwork` and container ports, and a NetworkPolicy's whole `spec` (unknown
//! fields there are errors: a misspelt `podSelector` would change what the policy means).
//! Other fields of Pods and Namespaces (status conditions, managed fields, ...) are ignored.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::{Cluster, ContainerPort, Namespace, NetpolPort, NetpolRule, NetworkPolicy, Peer, Pod, PortRef, Protocol};
use crate::policy::selector::{field, known_fields, not_a_string, read_labels, read_selector};
use crate::policy::source::diag::{quote, utf8_diagnostic};
use crate::policy::source::tree::{Limits, Node, Pos, Value, parse_tree_with};
use crate::policy::{Diagnostic, Diagnostics};

/// What a set of files holds.
#[derive(Clone, Debug, Default)]
pub struct Objects {
    pub cluster: Cluster,
    /// Sorted by (namespace, name).
    pub policies: Vec<NetworkPolicy>,
    /// `FILE:LINE:COL: warning: ...` (skipped kinds, host bits, ...), in input order.
    pub warnings: Vec<Diagnostic>,
}

/// The most problems reported for one set of files; then one more says how many others.
const MAX_ERRORS: usize = 1000;

/// Reads and checks every file; `Err` holds every error (then nothing of the files is used).
pub fn load_objects(files: &[PathBuf]) -> Result<Objects, Diagnostics> {
    let mut read = Vec::with_capacity(files.len());
    let mut errors = Vec::new();
    for f in files {
        let origin = f.display().to_string();
        match fs::read(f) {
            Err(e) => errors.push(diag(&origin, Pos::START, format!("error: cannot read the file: {e}"))),
            Ok(bytes) => read.push((origin, bytes)),
        }
    }
    let inputs: Vec<(String, &[u8])> = read.iter().map(|(o, b)| (o.clone(), &b[..])).collect();
    with_errors(errors, parse_files(&inputs))
}

/// `result`, unless `errors` (found before it) are not empty: then they and its own.
fn with_errors(mut errors: Vec<Diagnostic>, result: Result<Objects, Diagnostics>) -> Result<Objects, Diagnostics> {
    match result {
        Ok(objects) if errors.is_empty() => Ok(objects),
        Ok(_) => Err(Diagnostics(errors)),
        Err(d) => {
            errors.extend(d);
            Err(Diagnostics(errors))
        }
    }
}

/// As [`parse_objects`], from files' bytes (`(origin, bytes)`): text that is not UTF-8 is a
/// diagnostic too.
pub fn parse_files(files: &[(String, &[u8])]) -> Result<Objects, Diagnostics> {
    let mut texts = Vec::with_capacity(files.len());
    let mut errors = Vec::new();
    for (origin, bytes) in files {
        match std::str::from_utf8(bytes) {
            Ok(text) => texts.push((origin.as_str(), text)),
            Err(e) => {
                let mut d = utf8_diagnostic(origin, bytes, e);
                d.message = format!("error: {}", d.message);
                errors.push(d);
            }
        }
    }
    with_errors(errors, parse_objects(&texts))
}

/// A directory of object files that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ObjectsError {
    #[error("cannot list {}: {source}", path.display())]
    List { path: PathBuf, source: std::io::Error },
}

/// The object files of directory `dir` (a `--k8s-objects` directory, maybe a ConfigMap
/// volume): every `*.yaml`, `*.yml` and `*.json` regular file (through symlinks), names
/// starting with `.` skipped (the kubelet's `..data` and timestamped directories), sorted.
pub fn load_dir(dir: &Path) -> Result<Vec<PathBuf>, ObjectsError> {
    let entries = fs::read_dir(dir).map_err(|source| ObjectsError::List { path: dir.to_path_buf(), source })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.'))
        .filter(|n| [".yaml", ".yml", ".json"].iter().any(|ext| n.ends_with(ext)))
        .map(|n| dir.join(n))
        .filter(|p| fs::metadata(p).is_ok_and(|m| m.is_file()))
        .collect();
    files.sort();
    Ok(files)
}

/// Reads and checks objects from `(origin, text)` inputs (origin names the text in
/// diagnostics, usually its path).
pub fn parse_objects(inputs: &[(&str, &str)]) -> Result<Objects, Diagnostics> {
    let mut r = Reader::default();
    for (input, (origin, text)) in inputs.iter().enumerate() {
        for (offset, doc) in documents(text) {
            r.origin = origin.to_string();
            r.input = input;
            r.offset = offset;
            match parse_tree_with(doc, Limits::POLICY) {
                Err(e) => r.err(e.pos, e.message),
                Ok(tree) => r.document(&tree),
            }
        }
    }
    r.finish()
}

/// The YAML documents of `text`, split at `---` lines, with the number of lines before each
/// (a JSON text is one document). A `---` with content after it on its line starts the
/// document it belongs to; a `...` line ends one.
fn documents(text: &str) -> Vec<(u32, &str)> {
    let body = text.strip_prefix('\u{feff}').unwrap_or(text);
    if body.trim_start().starts_with('{') {
        return vec![(0, body)];
    }
    let mut out = Vec::new();
    let (mut start, mut start_line) = (0usize, 0u32);
    let (mut at, mut line) = (0usize, 0u32);
    let mut ended = false;
    for l in body.split_inclusive('\n') {
        let content = l.trim_end_matches(['\n', '\r']);
        let bare = |marker: &str| {
            content
                .strip_prefix(marker)
                .is_some_and(|rest| rest.trim().is_empty() || rest.trim_start().starts_with('#'))
        };
        let next = at + l.len();
        if content.starts_with("---") && (content.len() == 3 || content[3..].starts_with([' ', '\t'])) {
            if !ended {
                out.push((start_line, &body[start..at]));
            }
            ended = false;
            // A bare marker: the document starts on the next line; with content, on this one.
            (start, start_line) = if bare("---") { (next, line + 1) } else { (at, line) };
        } else if bare("...") {
            if !ended {
                out.push((start_line, &body[start..at]));
            }
            ended = true;
        }
        at = next;
        line += 1;
    }
    if !ended {
        out.push((start_line, &body[start..]));
    }
    out.retain(|(_, d)| d.lines().any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')));
    out
}

fn diag(origin: &str, pos: Pos, message: String) -> Diagnostic {
    let pos = pos.or(Pos::START);
    Diagnostic { origin: origin.to_owned(), line: pos.line as usize, col: pos.col as usize, message }
}

/// Where an object was first defined, to report a second definition.
#[derive(Clone)]
struct Defined {
    origin: String,
    line: usize,
}

#[derive(Default)]
struct Reader {
    origin: String,
    /// The input being read (its index), to sort problems by input, then position.
    input: usize,
    /// Lines of the file before the current document.
    offset: u32,
    errors: Vec<(usize, Diagnostic)>,
    omitted: usize,
    warnings: Vec<(usize, Diagnostic)>,
    cluster: Cluster,
    policies: Vec<NetworkPolicy>,
    defined: HashMap<(&'static str, String, String), Defined>,
}

const NP_SPEC_FIELDS: &[&str] = &["podSelector", "policyTypes", "ingress", "egress"];
const INGRESS_FIELDS: &[&str] = &["from", "ports"];
const EGRESS_FIELDS: &[&str] = &["to", "ports"];
const PEER_FIELDS: &[&str] = &["podSelector", "namespaceSelector", "ipBlock"];
const IPBLOCK_FIELDS: &[&str] = &["cidr", "except"];
const PORT_FIELDS: &[&str] = &["protocol", "port", "endPort"];

impl Reader {
    fn at(&self, pos: Pos) -> Pos {
        let pos = pos.or(Pos::START);
        Pos { line: pos.line.saturating_add(self.offset), col: pos.col }
    }

    fn err(&mut self, pos: Pos, message: impl Into<String>) {
        if self.errors.len() >= MAX_ERRORS {
            self.omitted += 1;
            return;
        }
        let d = diag(&self.origin, self.at(pos), format!("error: {}", message.into()));
        self.errors.push((self.input, d));
    }

    fn warn(&mut self, pos: Pos, message: impl Into<String>) {
        let d = diag(&self.origin, self.at(pos), format!("warning: {}", message.into()));
        self.warnings.push((self.input, d));
    }

    /// A reporter for the selector readers.
    fn report(&mut self) -> impl FnMut(Pos, String) + '_ {
        move |p, m| self.err(p, m)
    }

    fn finish(mut self) -> Result<Objects, Diagnostics> {
        let sorted = |mut v: Vec<(usize, Diagnostic)>| -> Vec<Diagnostic> {
            v.sort_by_key(|(input, d)| (*input, d.line, d.col));
            v.into_iter().map(|(_, d)| d).collect()
        };
        if !self.errors.is_empty() {
            let mut errors = sorted(std::mem::take(&mut self.errors));
            if self.omitted > 0
                && let Some(last) = errors.last().cloned()
            {
                errors.push(Diagnostic {
                    message: format!(
                        "error: {} more problems are not shown; only the first {MAX_ERRORS} are reported",
                        self.omitted
                    ),
                    ..last
                });
            }
            return Err(Diagnostics(errors));
        }
        self.cluster.sort();
        self.policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        Ok(Objects { cluster: self.cluster, policies: self.policies, warnings: sorted(self.warnings) })
    }

    /// One YAML document or JSON text: an object, or a list of them.
    fn document(&mut self, root: &Node) {
        match root.value {
            Value::Null => {}
            Value::Map(_) => self.object(root, 0),
            ref v => self.err(
                root.pos,
                format!("expected a Kubernetes object (a mapping with `apiVersion` and `kind`), not {}", v.kind()),
            ),
        }
    }

    fn object(&mut self, n: &Node, depth: usize) {
        let Value::Map(entries) = &n.value else {
            self.err(
                n.pos,
                format!(
                    "an item of a list must be a Kubernetes object (a mapping with `apiVersion` and `kind`), not {}",
                    n.value.kind()
                ),
            );
            return;
        };
        let get = |name: &str| {
            entries.iter().find(|(k, _)| matches!(&k.value, Value::Str(s) if &**s == name)).map(|(_, v)| v)
        };
        let string = |r: &mut Reader, name: &str| -> Option<String> {
            match get(name) {
                None => {
                    r.err(n.pos, format!("this object has no `{name}`"));
                    None
                }
                Some(Node { value: Value::Str(s), .. }) => Some(String::from(&**s)),
                Some(v) => {
                    r.err(v.pos, format!("`{name}` must be a string, not {}", not_a_string(&v.value)));
                    None
                }
            }
        };
        let (Some(api), Some(kind)) = (string(self, "apiVersion"), string(self, "kind")) else { return };
        let at = get("kind").map_or(n.pos, |k| k.pos);
        match (api.as_str(), kind.as_str()) {
            ("v1", "List") | (_, "PodList" | "NamespaceList" | "NetworkPolicyList") if depth == 0 => {
                match get("items") {
                    Some(Node { value: Value::Seq(items), .. }) => {
                        for item in items.iter() {
                            self.object(item, depth + 1);
                        }
                    }
                    Some(Node { value: Value::Null, .. }) => {}
                    Some(v) => self
                        .err(v.pos, format!("`items` of a {kind} must be a list of objects, not {}", v.value.kind())),
                    None => self.err(n.pos, format!("this {kind} has no `items`")),
                }
            }
            ("v1", "Namespace") => self.namespace(n),
            ("v1", "Pod") => self.pod(n),
            ("networking.k8s.io/v1", "NetworkPolicy") => self.network_policy(n),
            (_, "Namespace" | "Pod" | "NetworkPolicy") => {
                let want = if kind == "NetworkPolicy" { "networking.k8s.io/v1" } else { "v1" };
                self.warn(
                    at,
                    format!("skipped: a {kind} of apiVersion {} (this agent reads {kind} of {want})", quote(&api)),
                );
            }
            _ => self.warn(
                at,
                format!(
                    "skipped: kind {} ({}) is not read (only Namespace, Pod, NetworkPolicy and lists of them)",
                    quote(&kind),
                    quote(&api)
                ),
            ),
        }
    }
}

/// Why `s` is not a valid port name (IANA service name: 1-15 lower-case letters, digits and
/// `-`, with a letter, no `-` at either end or twice in a row), or `None`.
fn port_name_problem(s: &str) -> Option<&'static str> {
    if s.is_empty() || s.len() > 15 {
        return Some("a port name has 1 to 15 characters");
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return Some("write a port number without quotes");
    }
    if !s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return Some("a port name has only lower-case letters, digits and `-`");
    }
    if s.starts_with('-') || s.ends_with('-') || s.contains("--") {
        return Some("a `-` cannot start or end a port name, or follow another");
    }
    None
}

/// The value of key `name` of mapping `n`.
fn map_get<'n, 't>(n: &'n Node<'t>, name: &str) -> Option<&'n Node<'t>> {
    let Value::Map(entries) = &n.value else { return None };
    entries.iter().find(|(k, _)| matches!(&k.value, Value::Str(s) if &**s == name)).map(|(_, v)| v)
}

/// The items of a list (nothing for anything else: fields the translation only browses).
fn seq<'n, 't>(n: &'n Node<'t>) -> &'n [Node<'t>] {
    match &n.value {
        Value::Seq(items) => items,
        _ => &[],
    }
}

/// The items of list field `what`, after reporting that anything else must be `expected`.
fn seq_of<'n, 't>(r: &mut Reader, n: &'n Node<'t>, what: &str, expected: &str) -> &'n [Node<'t>] {
    match &n.value {
        Value::Seq(items) => items,
        Value::Null => &[],
        v => {
            r.err(n.pos, format!("`{what}` must be {expected}, not {}", v.kind()));
            &[]
        }
    }
}

mod netpol;
mod pods;
#[cfg(test)]
mod tests;
