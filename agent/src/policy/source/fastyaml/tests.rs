//! The fast reader against serde-saphyr: the same trees, or a fallback.

use super::super::tree::{Limits, Node};
use super::super::yaml::parse_yaml;
use super::read;

/// The one property: what the fast reader accepts, serde-saphyr reads to the same tree,
/// positions included. Returns whether the fast reader accepted `doc`.
fn agrees(doc: &str, limits: Limits) -> bool {
    let Some(fast) = read(doc, limits) else {
        return false;
    };
    match parse_yaml(doc, limits) {
        Ok(full) => {
            if let Some(d) = difference(&fast, &full) {
                panic!("the trees differ for:\n{doc}\n{d}");
            }
        }
        Err(e) => panic!("the fast reader accepted what serde-saphyr refuses ({e:?}):\n{doc}\nfast: {fast:#?}"),
    }
    true
}

/// The first place where two trees differ, if any.
fn difference(fast: &Node<'_>, full: &Node<'_>) -> Option<String> {
    use super::super::tree::Value;
    let here = || Some(format!("fast: {:?} {:?}\nfull: {:?} {:?}", fast.pos, fast.value, full.pos, full.value));
    if fast.pos != full.pos {
        return here();
    }
    match (&fast.value, &full.value) {
        (Value::Seq(a), Value::Seq(b)) if a.len() == b.len() => {
            a.iter().zip(b.iter()).find_map(|(x, y)| difference(x, y))
        }
        (Value::Map(a), Value::Map(b)) if a.len() == b.len() => {
            a.iter().zip(b.iter()).find_map(|((k, v), (l, w))| difference(k, l).or_else(|| difference(v, w)))
        }
        (Value::Seq(_) | Value::Map(_), _) => here(),
        (a, b) if a == b => None,
        _ => here(),
    }
}

const POLICY: Limits = Limits::POLICY;

fn accepted(doc: &str) {
    assert!(agrees(doc, POLICY), "the fast reader should read this itself:\n{doc}");
}

fn left_to_serde_saphyr(doc: &str) {
    assert!(read(doc, POLICY).is_none(), "the fast reader should leave this to serde-saphyr:\n{doc}");
}

#[test]
fn reads_the_shapes_policies_use() {
    accepted(include_str!("../../../../../examples/policy.yaml"));
    accepted("version: 1\nsegments:\n  a: { cidrs: [10.0.0.0/8, \"fd00::/8\"] }\nrules: []\n");
    accepted("a:\n- xa\n- yb\nb: 2\n");
    accepted("a:\n  - name: r1\n    from: [x]\n    ports: ['443/tcp', 8000-8099/tcp, icmp]\n  - { name: r2 }\nb: c\n");
    accepted("# comment\n\nversion: 1   # trailing\nsegments:\n\n  # inside\n  s: {cidrs: [fd00::1/128]}\n");
    accepted("a: -5\nb: 0\nc: 123456789012345678\nd: some free text\ne: \"\"\nf: ''\ng: {}\nh: []\n");
    accepted("\"quoted key\": 1\n'other': [ a , b ]\nkey : spaced\n");
    accepted("a:\n    deep:\n        deeper: [x, {w: [z]}]\n    back: 1\nz: end");
}

#[test]
fn leaves_the_rest_to_serde_saphyr() {
    for doc in [
        "",
        "# only a comment\n",
        "- a\n",
        "a: &x 1\nb: *x\n",
        "a: !!str 1\n",
        "a: |\n  text\n",
        "a: >\n  text\n",
        "a: multi\n  line\n",
        "a: [1,\n  2]\n",
        "a:\tb\n",
        "a: b\r\n",
        "a: caf\u{e9}\n",
        "a: \"esc\\n\"\n",
        "a: 'it''s'\n",
        "a: yes\nb: No\nc: null\nd: ~\ne: .inf\n",
        "a: 1.5\n",
        "a: 0x10\n",
        "a: 007\n",
        "a: 1_000\n",
        "a: 10.0.0.1\n",
        "a: 12345678901234567890\n",
        "a:\nb: 1\n",
        "a: 1\na: 2\n",
        "---\na: 1\n",
        "a: 1\n---\nb: 2\n",
        "%YAML 1.2\n---\na: 1\n",
        "? a\n: b\n",
        "a: [b,]\n",
        "a: {b}\n",
        "a: [b: c]\n",
        "a: b: c\n",
        "a: b #c\n  d: e\n",
        "a:\n  - - x\n",
        "a:\n  -\n    x: 1\n",
        "1: x\n",
        "true: x\n",
        "a: b, c\n",
        "a: #x\n",
    ] {
        left_to_serde_saphyr(doc);
    }
}

#[test]
fn agrees_with_serde_saphyr_on_every_test_document() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/bad-policies");
    let mut read_fast = 0;
    let mut all = 0;
    for entry in std::fs::read_dir(root).expect("the bad-policy corpus") {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        let Ok(text) = std::str::from_utf8(&bytes) else { continue };
        all += 1;
        read_fast += usize::from(agrees(text, POLICY));
    }
    // Most broken policies are well-formed YAML with a mistake in their meaning: those the
    // fast reader reads itself.
    assert!(read_fast * 2 > all, "only {read_fast} of {all} corpus files were read by the fast reader");
}

#[test]
fn stops_where_serde_saphyr_stops_at_the_limits() {
    let doc = "a:\n  b:\n    c: [1, {d: [2, 3]}]\n  e: f\ng: [h, i]\n";
    accepted(doc);
    for depth in 1..8 {
        for values in 1..24 {
            agrees(doc, Limits { depth, values });
        }
    }
}

/// Deterministic pseudo-random numbers (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, v: &[&'a str]) -> &'a str {
        v[self.below(v.len())]
    }
    fn scalar(&mut self) -> &'static str {
        if self.below(200) == 0 { self.pick(OTHER_SCALARS) } else { self.pick(SCALARS) }
    }
}

/// Scalars of the subset, and (picked less often) others.
const SCALARS: &[&str] = &[
    "a",
    "web",
    "s12",
    "10.0.0.0/8",
    "fd00::1/128",
    "443/tcp",
    "8000-8099/tcp",
    "1",
    "0",
    "-7",
    "42",
    "\"q\"",
    "'sq'",
    "\"10.1.2.3/32\"",
    "two words",
    "x:y",
    "a-b_c.d",
    "\"\"",
    "Tcp",
    "icmp",
    "e1",
    "x/",
    "_u",
];
const OTHER_SCALARS: &[&str] = &["yes", "null", "1.5", "007", "1e3", "/x", "-0", "~", "N", "0x1f", "1:30", "@x"];

/// A random document of the shapes above, with random spacing, comments and nesting.
fn random_doc(rng: &mut Rng, depth: usize, indent: usize, out: &mut String) {
    let keys = 1 + rng.below(4);
    for k in 0..keys {
        out.push_str(&" ".repeat(indent));
        let key = if rng.below(8) == 0 {
            rng.pick(&["web", "\"q k\"", "'sq'", "fd00::1/128", "443/tcp", "_u"]).to_owned()
        } else {
            format!("k{}", rng.below(5) + k * 5)
        };
        out.push_str(&key);
        out.push_str(rng.pick(&[":", ":", " :"]));
        match if depth > 3 { rng.below(2) } else { rng.below(5) } {
            0 => out.push_str(&format!("{}{}", rng.pick(&[" ", "  "]), rng.scalar())),
            1 => {
                out.push(' ');
                flow(rng, depth, out);
            }
            2 => {
                out.push('\n');
                let inner = indent + 1 + rng.below(3);
                random_doc(rng, depth + 1, inner, out);
                continue;
            }
            _ => {
                let inner = if rng.below(2) == 0 { indent } else { indent + 2 };
                for _ in 0..1 + rng.below(3) {
                    out.push('\n');
                    out.push_str(&" ".repeat(inner));
                    out.push_str("- ");
                    match rng.below(3) {
                        0 => out.push_str(rng.scalar()),
                        1 => flow(rng, depth, out),
                        _ => {
                            let mut item = String::new();
                            random_doc(rng, depth + 1, inner + 2, &mut item);
                            out.push_str(item.trim_start());
                            out.pop();
                        }
                    }
                }
            }
        }
        if rng.below(6) == 0 {
            out.push_str("  # note");
        }
        out.push('\n');
        if rng.below(8) == 0 {
            out.push_str(rng.pick(&["\n", "# c\n", "   \n", "  # c\n"]));
        }
    }
}

fn flow(rng: &mut Rng, depth: usize, out: &mut String) {
    let n = rng.below(4);
    if rng.below(2) == 0 || depth > 4 {
        out.push('[');
        for i in 0..n {
            if i > 0 {
                out.push_str(rng.pick(&[", ", ",", " , "]));
            }
            if rng.below(5) == 0 { flow(rng, depth + 1, out) } else { out.push_str(rng.scalar()) }
        }
        out.push(']');
    } else {
        out.push_str(rng.pick(&["{", "{ "]));
        for i in 0..n {
            if i > 0 {
                out.push_str(", ");
            }
            out.push_str(&format!("f{}: ", rng.below(4)));
            if rng.below(4) == 0 { flow(rng, depth + 1, out) } else { out.push_str(rng.scalar()) }
        }
        out.push_str(rng.pick(&["}", " }"]));
    }
}

/// One random edit, often making the document invalid or leaving the subset.
fn mutate(rng: &mut Rng, doc: &str) -> String {
    const BITS: &[&str] = &[
        " ", "  ", "\n", ":", ": ", "- ", "#", " #", ",", "[", "]", "{", "}", "\"", "'", "*", "&a ", "!", "|", "?",
        "-", "\t", "0", "x",
    ];
    let mut s = doc.to_owned();
    for _ in 0..1 + rng.below(2) {
        let at = rng.below(s.len() + 1);
        match rng.below(3) {
            0 => s.insert_str(at, rng.pick(BITS)),
            1 if at < s.len() => {
                s.remove(at);
            }
            _ => {
                let end = (at + 1 + rng.below(4)).min(s.len());
                s.replace_range(at..end, rng.pick(BITS));
            }
        }
    }
    s
}

#[test]
fn agrees_with_serde_saphyr_on_random_documents() {
    let mut rng = Rng(0x59a7);
    const DOCS: usize = 4000;
    let (mut fast, mut mutated_fast) = (0, 0);
    for _ in 0..DOCS {
        let mut doc = String::new();
        random_doc(&mut rng, 0, 0, &mut doc);
        fast += usize::from(agrees(&doc, POLICY));
        for _ in 0..3 {
            mutated_fast += usize::from(agrees(&mutate(&mut rng, &doc), POLICY));
        }
    }
    eprintln!("read fast: {fast} of {DOCS} documents, {mutated_fast} of {} mutated ones", 3 * DOCS);
    // The generator must often write what the fast reader reads, or it tests nothing (the
    // others hold a scalar outside the subset, one in 200).
    assert!(
        fast * 3 > DOCS && mutated_fast * 20 > DOCS,
        "the fast reader read only {fast} of {DOCS} random documents, {mutated_fast} mutated ones"
    );
}
