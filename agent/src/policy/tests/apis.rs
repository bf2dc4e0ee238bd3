//! The `apis` section: parsed from YAML and JSON, validated with positions, serialized back,
//! compiled to (segment id, TCP port) pairs, bounded.

use agent_common::http::MAX_API_PORTS;

use super::*;

const APIS: &str = r#"version: 1
segments:
  frontend: { cidrs: [10.20.1.0/24] }
  payments: { cidrs: [10.20.2.10/32] }
  ledger:   { cidrs: [10.20.3.0/24] }
rules:
  - name: web
    from: [frontend]
    to: [payments]
    ports: ["8080/tcp"]
    action: allow
apis:
  - name: payments-api
    segment: payments
    ports: ["8080/tcp", "8443/tcp"]
    protocol: http
  - segment: ledger
    ports: ["9000-9002/tcp", "9001/tcp"]
"#;

/// `APIS` with its `apis` section replaced by `apis` (the lines after `apis:`).
fn with_apis(apis: &str) -> String {
    let head = &APIS[..APIS.find("apis:\n").unwrap() + "apis:\n".len()];
    format!("{head}{apis}")
}

#[test]
fn apis_parse() {
    let p = ok(APIS);
    assert_eq!(
        p.apis,
        vec![
            Api {
                name: Some("payments-api".into()),
                segment: 1,
                ports: vec!["8080/tcp".parse().unwrap(), "8443/tcp".parse().unwrap()],
                protocol: ApiProtocol::Http,
            },
            // `protocol` absent: http.
            Api {
                name: None,
                segment: 2,
                ports: vec!["9000-9002/tcp".parse().unwrap(), "9001/tcp".parse().unwrap()],
                protocol: ApiProtocol::Http,
            },
        ]
    );
    assert_eq!(p.apis[0].key(&p), "payments-api");
    assert_eq!(p.apis[1].key(&p), "ledger:9000-9002/tcp,9001/tcp");
    // The same policy in JSON.
    let json = r#"{"version": 1,
      "segments": {"payments": {"cidrs": ["10.20.2.10/32"]}},
      "rules": [],
      "apis": [{"name": "payments-api", "segment": "payments", "ports": ["8080/tcp"], "protocol": "http"}]}"#;
    let p = ok(json);
    assert_eq!(p.apis.len(), 1);
    assert_eq!(p.apis[0].segment, 0);
    assert_eq!(p.apis[0].tcp_ranges().collect::<Vec<_>>(), vec![(8080, 8080)]);
    // Absent and empty: none.
    assert!(ok(EXAMPLE).apis.is_empty());
    assert!(ok(&with_apis("")).apis.is_empty());
    let empty = format!("{}apis: []\n", &APIS[..APIS.find("apis:\n").unwrap()]);
    assert!(ok(&empty).apis.is_empty());
}

#[test]
fn apis_round_trip() {
    let p = ok(APIS);
    let yaml = p.to_yaml();
    assert_eq!(parse(&yaml, "yaml").unwrap_or_else(|d| panic!("{d}\n{yaml}")), p, "{yaml}");
    let json = p.to_json();
    assert_eq!(parse(&json, "json").unwrap_or_else(|d| panic!("{d}\n{json}")), p, "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["apis"][0]["name"], "payments-api");
    assert_eq!(v["apis"][0]["segment"], "payments");
    assert_eq!(v["apis"][0]["ports"][1], "8443/tcp");
    assert_eq!(v["apis"][0]["protocol"], "http");
    // Unnamed: no `name`; the protocol is always written.
    assert!(v["apis"][1].get("name").is_none());
    assert_eq!(v["apis"][1]["protocol"], "http");
    // No APIs: no `apis` key.
    let v: serde_json::Value = serde_json::from_str(&ok(EXAMPLE).to_json()).unwrap();
    assert!(v.get("apis").is_none());
}

#[test]
fn apis_mistakes_have_positions() {
    let text = with_apis(
        r#"  - name: a
    segment: paymnts
    ports: ["8080/tcp", "53/udp", icmp, tcp, 80, "0/tcp"]
    protocol: htp
  - name: a
    segment: "*"
    ports: []
    color: red
  - segment: world
    ports: ["8080/tcp"]
    protocol: 2
  - segment: [payments]
  - 7
"#,
    );
    let e = errs(&text);
    let got: Vec<(usize, usize, &str)> = e.iter().map(|(l, c, m)| (*l, *c, m.as_str())).collect();
    let expect: Vec<(usize, usize, &str)> = vec![
        (14, 14, "unknown segment `paymnts` in `segment`; did you mean `payments`?"),
        (15, 25, "`53/udp` is not TCP: HTTP/1.x runs over TCP; did you mean `53/tcp`?"),
        (15, 35, "`icmp` is not TCP: an API's ports are TCP ports or ranges, such as \"8080/tcp\""),
        (15, 41, "`tcp` would declare every TCP port; name the ports that speak HTTP, such as \"8080/tcp\""),
        (15, 46, "port 80 needs its protocol: write \"80/tcp\""),
        (15, 50, "invalid port spec `0/tcp`: port 0 is out of range; ports are 1 to 65535"),
        (
            16,
            15,
            "unknown API protocol `htp`; did you mean `http`? (supported: `http`, plaintext HTTP/1.x; TLS and \
             HTTP/2 on such a port are reported as such)",
        ),
        (17, 11, "duplicate API name `a` (first used on line 13)"),
        (
            18,
            14,
            "the `segment` of an API must be a named segment, not `*`: it names the servers whose ports speak HTTP",
        ),
        (19, 12, "`ports` is empty; list the TCP ports that speak HTTP, such as [\"8080/tcp\"]"),
        (20, 5, "unknown field `color` in an API; expected `name`, `segment`, `ports`, `protocol`"),
        (
            21,
            14,
            "the `segment` of an API must be a named segment, not `world`: it names the servers whose ports speak HTTP",
        ),
        (23, 15, "`protocol` must be `http`, not a number"),
        (24, 5, "this API has no `ports`; list its TCP ports, such as [\"8080/tcp\"]"),
        (24, 14, "the `segment` of an API is one segment name, not a list; declare one API per segment"),
        (25, 5, "an API must be a mapping with `segment`, `ports` and `protocol`, not a number"),
    ];
    assert_eq!(got, expect);
    // Not a list; a missing segment.
    let three = format!("{}apis: 3\n", &APIS[..APIS.find("apis:\n").unwrap()]);
    assert_eq!(one_err(&three), (12, 7, "`apis` must be a list of APIs, not a number".to_owned()));
    assert_eq!(
        one_err(&with_apis("  - ports: [\"8080/tcp\"]\n")),
        (13, 5, "this API has no `segment`; name the segment of its servers".to_owned())
    );
    // JSON: positions too.
    let json = r#"{"version": 1, "segments": {"payments": {"cidrs": ["10.20.2.10/32"]}}, "rules": [],
"apis": [{"segment": "paymentz", "ports": ["8080/udp"]}]}"#;
    let e = errs(json);
    assert_eq!(e[0].0, 2);
    assert!(e[0].2.contains("did you mean `payments`"), "{e:?}");
    assert!(e[1].2.contains("did you mean `8080/tcp`"), "{e:?}");
}

#[test]
fn apis_cap() {
    // Exactly the cap: accepted, across segments and overlapping declarations.
    let half = MAX_API_PORTS / 2;
    let ok_text = with_apis(&format!(
        "  - segment: payments\n    ports: [\"1-{half}/tcp\"]\n  - segment: ledger\n    ports: [\"1-{half}/tcp\"]\n  \
         - segment: payments\n    ports: [\"1-{half}/tcp\", \"{half}/tcp\"]\n"
    ));
    let p = ok(&ok_text);
    assert_eq!(compile(&p).api_ports.len(), MAX_API_PORTS as usize);
    // One more: refused where the total crosses it; a repeated range does not count twice.
    let text = with_apis(&format!(
        "  - segment: payments\n    ports: [\"1-{half}/tcp\"]\n  - segment: payments\n    ports: [\"1-{half}/tcp\"]\n  \
         - segment: ledger\n    ports: [\"1-{}/tcp\"]\n",
        half + 1
    ));
    let (line, col, msg) = one_err(&text);
    assert_eq!((line, col), (18, 12));
    assert!(msg.contains(&format!("declares more than {MAX_API_PORTS} (segment, port) pairs")), "{msg}");
    // Every port of a segment, many times over: one error, found fast.
    let many: String = (0..2000).map(|_| "  - segment: payments\n    ports: [\"1-65535/tcp\"]\n").collect();
    let e = errs(&with_apis(&many));
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!((e[0].0, e[0].1), (14, 12));
}

#[test]
fn apis_compile() {
    let c = compile(&ok(APIS));
    // payments is segment 2, ledger 3; 9001 declared twice, once in the map.
    assert_eq!(c.api_ports, vec![(2, 8080), (2, 8443), (3, 9000), (3, 9001), (3, 9002)]);
    assert_eq!(c.summary().api_ports, 5);
    assert!(c.summary().to_string().ends_with(", 5 API ports"), "{}", c.summary());
    assert!(compile(&ok(EXAMPLE)).api_ports.is_empty());
    // Adjacent and overlapping ranges merge exactly.
    let p =
        ok(&with_apis("  - segment: payments\n    ports: [\"10-12/tcp\", \"13-14/tcp\", \"11-20/tcp\", \"30/tcp\"]\n"));
    let ports: Vec<u16> = compile(&p).api_ports.iter().map(|&(_, port)| port).collect();
    assert_eq!(ports, (10..=20).chain([30]).collect::<Vec<u16>>());
}

#[test]
fn insert_range_counts_new_ports() {
    use crate::policy::compile::insert_range;
    let mut set = Vec::new();
    assert_eq!(insert_range(&mut set, 10, 20), 11);
    assert_eq!(insert_range(&mut set, 15, 25), 5);
    assert_eq!(insert_range(&mut set, 30, 30), 1);
    assert_eq!(insert_range(&mut set, 26, 29), 4);
    assert_eq!(set, vec![(10, 30)]);
    assert_eq!(insert_range(&mut set, 1, 40), 19);
    assert_eq!(insert_range(&mut set, 1, 40), 0);
    assert_eq!(insert_range(&mut set, 50, 50), 1);
    assert_eq!(insert_range(&mut set, 45, 45), 1);
    assert_eq!(set, vec![(1, 40), (45, 45), (50, 50)]);
    // Brute force against a set of values.
    let mut rng = Rng(7);
    let (mut set, mut values) = (Vec::new(), BTreeSet::new());
    for _ in 0..2000 {
        let lo = rng.below(200) as u32;
        let hi = lo + rng.below(20) as u32;
        let fresh = (lo..=hi).filter(|v| values.insert(*v)).count();
        assert_eq!(insert_range(&mut set, lo, hi), fresh);
        assert!(set.windows(2).all(|w| w[0].1 + 1 < w[1].0), "{set:?}");
        assert_eq!(set.iter().map(|(l, h)| (h - l + 1) as usize).sum::<usize>(), values.len());
    }
}
