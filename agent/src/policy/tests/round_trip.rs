//! Serialization round trips (YAML, JSON) and robustness (no input makes the parser panic).

use super::*;

#[test]
fn round_trip_yaml_and_json() {
    let tricky = r##"
version: 1
defaultAction: allow
segments:
  "yes": { cidrs: [10.0.0.0/8, "fd00::/8", 10.1.2.3/32] }
  "123": { cidrs: ["::ffff:10.3.0.0/112"] }
  "a: b": { cidrs: [] }
  "#hash": { cidrs: ["2001:db8::1/128"] }
rules:
  - name: "null"
    description: "quotes \" and 'single', a\ttab and a\nnewline"
    from: ["*", "yes"]
    to: [world, "123"]
    ports: [tcp, udp, icmp, "1-65535/tcp", "9/udp"]
    action: deny
  - name: "*star"
    from: ["a: b"]
    to: ["#hash"]
    action: allow
  - name: " leading space"
    from: [world]
    to: ["*"]
    action: allow
"##;
    for text in [EXAMPLE, tricky] {
        let p = ok(text);
        let yaml = p.to_yaml();
        assert_eq!(parse(&yaml, "yaml").unwrap_or_else(|d| panic!("{d}\n{yaml}")), p, "{yaml}");
        let json = p.to_json();
        assert_eq!(parse(&json, "json").unwrap_or_else(|d| panic!("{d}\n{json}")), p, "{json}");
    }
    let json: serde_json::Value = serde_json::from_str(&ok(EXAMPLE).to_json()).unwrap();
    assert_eq!(json["version"], 1);
    assert_eq!(json["defaultAction"], "deny");
    assert_eq!(json["segments"]["frontend"]["cidrs"][1], "fd20:1::/64");
    assert_eq!(json["rules"][0]["ports"][1], "8000-8099/tcp");
    assert!(json["rules"][0].get("description").is_none());
}

#[test]
fn never_panics() {
    let json = ok(EXAMPLE).to_json();
    // Every truncation of valid files.
    for text in [EXAMPLE, json.as_str()] {
        for (i, _) in text.char_indices() {
            check_no_panic(&text[..i]);
        }
    }
    // Random mutations with YAML-significant characters, and random bytes.
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let specials: Vec<char> = ":-[]{}\"'*&!|>#,%@`? \n\t\\/0123456789xé\u{feff}".chars().collect();
    for _ in 0..1500 {
        let base = if rng.chance(2) { EXAMPLE } else { json.as_str() };
        let mut chars: Vec<char> = base.chars().collect();
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(chars.len());
            match rng.below(3) {
                0 => chars[i] = *rng.pick(&specials),
                1 => chars.insert(i, *rng.pick(&specials)),
                _ => {
                    chars.remove(i);
                }
            }
        }
        check_no_panic(&chars.iter().collect::<String>());
    }
    for _ in 0..500 {
        let bytes: Vec<u8> = (0..rng.below(200)).map(|_| rng.next() as u8).collect();
        check_no_panic(&String::from_utf8_lossy(&bytes));
    }
    // Deep nesting and alias expansion stay bounded.
    check_no_panic(&"[".repeat(100_000));
    check_no_panic(&format!("version: 1\nrules: {}", "[".repeat(5_000)));
    check_no_panic(&"{\"a\":".repeat(10_000));
    let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 0..12u8 {
        let (prev, cur) = ((b'a' + i) as char, (b'b' + i) as char);
        bomb.push_str(&format!(
            "{cur}: &{cur} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
        ));
    }
    check_no_panic(&bomb);
}
