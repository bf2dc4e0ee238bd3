//! The tree readers (YAML, JSON): positions, limits, syntax errors.

use super::tree::*;

fn scalar<'a>(n: &Node<'a>) -> (u32, u32, Value<'a>) {
    (n.pos.line, n.pos.col, n.value.clone())
}

fn str_value(s: &str) -> Value<'_> {
    Value::Str(s.into())
}

fn at(e: &SyntaxError) -> (u32, u32) {
    (e.pos.line, e.pos.col)
}

#[test]
fn positions_of_keys_and_values() {
    let t = parse_tree("a: 1\nb:\n  - x\n  - \"y\"\n").unwrap();
    let Value::Map(m) = &t.value else { panic!("not a map") };
    assert_eq!(scalar(&m[0].0), (1, 1, str_value("a")));
    assert_eq!(scalar(&m[0].1), (1, 4, Value::Int(1.into())));
    let Value::Seq(s) = &m[1].1.value else { panic!("not a seq") };
    assert_eq!(scalar(&s[0]), (3, 5, str_value("x")));
    assert_eq!(scalar(&s[1]), (4, 5, str_value("y")));
}

#[test]
fn json_positions_and_errors() {
    let t = parse_tree(" {\"a\": [1, \"x\"]}").unwrap();
    let Value::Map(m) = &t.value else { panic!("not a map") };
    assert_eq!((t.pos.line, t.pos.col), (1, 2));
    assert_eq!((m[0].0.pos.line, m[0].0.pos.col), (1, 3));
    let Value::Seq(s) = &m[0].1.value else { panic!("not a seq") };
    assert_eq!((m[0].1.pos.line, m[0].1.pos.col), (1, 8));
    assert_eq!(scalar(&s[1]), (1, 12, str_value("x")));
    let e = parse_tree("{\"a\": [1, ]}").unwrap_err();
    assert_eq!((at(&e), e.message.as_str()), ((1, 11), "invalid JSON: trailing comma"));
}

#[test]
fn json_tree_keeps_order_and_types() {
    let t = parse_tree(r#"{"z": 1, "a": [true, null, 1.5, -7, "\u00e9\n"]}"#).unwrap();
    let Value::Map(m) = &t.value else { panic!("not a map") };
    assert_eq!(m[0].0.value, str_value("z"));
    assert_eq!(m[1].0.value, str_value("a"));
    let Value::Seq(s) = &m[1].1.value else { panic!("not a seq") };
    assert_eq!(
        s.iter().map(|n| n.value.clone()).collect::<Vec<_>>(),
        [Value::Bool(true), Value::Null, Value::Float(1.5), Value::Int((-7).into()), str_value("é\n")]
    );
}

#[test]
fn json_columns_count_characters() {
    // `é` is two bytes, one character; a surrogate pair is one character.
    let t = parse_tree("{\"é\": \"\\ud83d\\ude00\", \"b\":\n  [ 18446744073709551616 ]}").unwrap();
    let Value::Map(m) = &t.value else { panic!("not a map") };
    assert_eq!(scalar(&m[0].1), (1, 7, str_value("😀")));
    assert_eq!((m[1].0.pos.line, m[1].0.pos.col), (1, 23));
    let Value::Seq(s) = &m[1].1.value else { panic!("not a seq") };
    assert_eq!(scalar(&s[0]), (2, 5, Value::Int((1i128 << 64).into())));
}

#[test]
fn json_syntax_errors_have_positions() {
    let cases: &[(&str, (u32, u32), &str)] = &[
        // Ends at the start of a line: that line, column 1 (not "column 0").
        ("{\n  \"rules\": [\n", (3, 1), "EOF while parsing a list"),
        ("{\"a\": 1", (1, 8), "EOF while parsing an object"),
        ("{\"a\": \"x", (1, 9), "EOF while parsing a string"),
        ("{\"a\": 1\n \"b\": 2}", (2, 2), "expected `,` or `}`"),
        ("{\"a\": [1 2]}", (1, 10), "expected `,` or `]`"),
        ("{\n  // c\n}", (2, 3), "key must be a string"),
        ("{'a': 1}", (1, 2), "key must be a string"),
        ("{\"a\" 1}", (1, 6), "expected `:`"),
        ("{\"a\": tru}", (1, 10), "expected ident"),
        ("{\"a\": +1}", (1, 7), "expected value"),
        ("{\"a\": 1.}", (1, 9), "invalid number"),
        ("{\"a\": 1e999}", (1, 7), "number out of range"),
        ("{\"a\": \"\\x\"}", (1, 9), "invalid escape"),
        ("{\"a\": \"\\ud800\"}", (1, 10), "lone leading surrogate"),
        ("{\"a\": \"x\u{1}\"}", (1, 9), "control character"),
        ("{}\n}", (2, 1), "trailing characters"),
    ];
    for (text, pos, msg) in cases {
        let e = parse_tree(text).unwrap_err();
        assert_eq!(at(&e), *pos, "{text:?}: {}", e.message);
        assert!(e.message.starts_with("invalid JSON: "), "{text:?}: {}", e.message);
        assert!(e.message.contains(msg), "{text:?}: {}", e.message);
    }
}

#[test]
fn json_duplicate_keys() {
    let e = parse_tree("{\"a\": 1,\n \"b\": {\"x\": 1, \"\\u0078\": 2}}").unwrap_err();
    assert_eq!((at(&e), e.message.as_str()), ((2, 16), "duplicate key `x`"));
    // The same key in different mappings is fine.
    parse_tree("{\"a\": {\"x\": 1}, \"b\": {\"x\": 1}}").unwrap();
}

/// Runs `f` with a large stack: unoptimized, 64 levels of serde-saphyr take more than
/// the 2 MiB of a test thread.
fn big_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new().stack_size(64 << 20).spawn(f).unwrap().join().unwrap();
}

#[test]
fn nesting_limit_is_the_same_everywhere() {
    big_stack(nesting_limits);
}

fn nesting_limits() {
    let limit = Limits::POLICY.depth;
    let ok = |open: &str, close: &str, n: usize| format!("{}1{}", open.repeat(n), close.repeat(n));
    // Flow sequences and mappings, block mappings, JSON: the limit, then one more.
    let block = |n: usize| {
        let mut s = String::new();
        for i in 0..n {
            s.push_str(&" ".repeat(i));
            s.push_str("a:\n");
        }
        s
    };
    let json = |n: usize| format!("{}1{}", "{\"a\": ".repeat(n), "}".repeat(n));
    // A flow mapping at the top would be read as JSON: this one is in a block mapping,
    // which counts as the first level.
    let flow_map = |n: usize| format!("x: {}", ok("{a: ", "}", n - 1));
    for (what, good, bad) in [
        ("flow sequences", ok("[", "]", limit), ok("[", "]", limit + 1)),
        ("flow mappings", flow_map(limit), flow_map(limit + 1)),
        ("block mappings", block(limit), block(limit + 1)),
        ("JSON", json(limit), json(limit + 1)),
    ] {
        assert!(parse_tree(&good).is_ok(), "{what}: {:?}", parse_tree(&good).err());
        let e = parse_tree(&bad).unwrap_err();
        assert_eq!(e.message, "the document nests deeper than 64 levels (the maximum nesting depth)", "{what}");
    }
    // Reported at the first container beyond the limit (in YAML, the flow collections
    // are counted by the scanner, which may stop a few brackets further on).
    let e = parse_tree(&"[".repeat(1000)).unwrap_err();
    assert_eq!(at(&e), (1, 65), "{}", e.message);
    let e = parse_tree(&format!("a:\n {}", "[".repeat(1000))).unwrap_err();
    assert!(e.pos.line == 2 && (65..=66).contains(&e.pos.col), "{e:?}");
    let e = parse_tree(&format!("{{\"a\":\n {}", "[".repeat(1000))).unwrap_err();
    assert_eq!(at(&e), (2, 2 + 63), "{}", e.message);
}

#[test]
fn value_limit_is_the_same_in_yaml_and_json() {
    let limits = Limits { depth: MAX_DEPTH, values: 100 };
    // A mapping, its key and a list of 97 values: 100 values.
    let yaml = |n: usize| format!("a: [{}]\n", vec!["1"; n].join(", "));
    let json = |n: usize| format!("{{\"a\": [{}]}}", vec!["1"; n].join(", "));
    assert!(parse_tree_with(&yaml(97), limits).is_ok());
    assert!(parse_tree_with(&json(97), limits).is_ok());
    for text in [yaml(98), json(98)] {
        let e = parse_tree_with(&text, limits).unwrap_err();
        assert_eq!(e.message, "the document is too large: it holds more than 100 values (the maximum)");
        assert_eq!(e.pos.line, 1);
    }
    assert_eq!(thousands(4_000_000), "4,000,000");
    assert_eq!(thousands(100), "100");
}

#[test]
fn syntax_errors() {
    let e = parse_tree("a: [1, 2\n").unwrap_err();
    assert_eq!(at(&e), (1, 4));
    let e = parse_tree("a: 1\na: 2\n").unwrap_err();
    assert_eq!((e.pos.line, e.pos.col, e.message.as_str()), (2, 1, "duplicate key `a`"));
    let e = parse_tree("a: 1\n---\nb: 2\n").unwrap_err();
    assert!(e.message.contains("several YAML documents"));
}

#[test]
fn yaml_messages_are_plain_sentences() {
    // A tab is reported where it is.
    let e = parse_tree("a:\n\tb: 1\n").unwrap_err();
    assert_eq!(at(&e), (2, 1), "{}", e.message);
    assert!(e.message.contains("tab"), "{}", e.message);
    // A NUL byte, quoted like any user text.
    let e = parse_tree("a: 1\nb\0c: 2\n").unwrap_err();
    assert_eq!(e.message, "unexpected character `\\u{0}`");
    // An unknown alias is named.
    let e = parse_tree("a: 1\nb: *nowhere\n").unwrap_err();
    assert_eq!(at(&e), (2, 4));
    assert_eq!(e.message, "unknown alias `*nowhere`: no anchor `&nowhere` is defined before it");
    // A lone `*` is the usual mistake for "any address".
    let e = parse_tree("from: [*]\n").unwrap_err();
    assert!(e.message.ends_with("write \"*\" in quotes"), "{}", e.message);
}

#[test]
fn alias_bombs_are_too_large() {
    // 10^9 strings if expanded: refused in a sentence, inside the bomb.
    let mut bomb = format!("a0: &a0 [{}]\n", ["\"lol\""; 10].join(", "));
    for i in 1..10 {
        let refs = vec![format!("*a{}", i - 1); 10].join(", ");
        bomb.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
    }
    let e = parse_tree(&bomb).unwrap_err();
    assert!((2..=10).contains(&e.pos.line), "{e:?}");
    assert!(e.message.starts_with("the document is too large"), "{e:?}");
    assert!(!e.message.contains('{'), "{e:?}");
}

#[test]
fn many_values_are_fine() {
    // Beyond serde-saphyr's default budget of 250,000 values.
    let mut s = String::from("rules:\n");
    for i in 0..50_000 {
        s.push_str(&format!("  - {{ name: r{i}, from: [a], to: [b] }}\n"));
    }
    let t = parse_tree(&s).unwrap();
    let Value::Map(m) = &t.value else { panic!("not a map") };
    let Value::Seq(rules) = &m[0].1.value else { panic!("not a seq") };
    assert_eq!(rules.len(), 50_000);
    assert_eq!((rules[49_999].pos.line, rules[49_999].pos.col), (50_001, 5));
}
