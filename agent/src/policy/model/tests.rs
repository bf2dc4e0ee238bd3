//! The model's own behaviour: port specs, names, serialization.

use super::*;

#[test]
fn port_specs() {
    let ok = |s: &str| s.parse::<PortSpec>().unwrap();
    assert_eq!(ok("443/tcp"), PortSpec::Range { proto: Proto::Tcp, lo: 443, hi: 443 });
    assert_eq!(ok("8000-8099/udp"), PortSpec::Range { proto: Proto::Udp, lo: 8000, hi: 8099 });
    assert_eq!(ok("tcp"), PortSpec::All(Proto::Tcp));
    assert_eq!(ok("icmp"), PortSpec::Icmp);
    assert_eq!(ok("65535/tcp").key_range(), (6 << 16 | 65535, 6 << 16 | 65535));
    assert_eq!(ok("udp").key_range(), (17 << 16, 17 << 16 | 65535));
    assert_eq!(ok("icmp").key_range(), (1 << 16 | 8, 1 << 16 | 8));
    let err = |s: &str| s.parse::<PortSpec>().unwrap_err();
    let out_of_range = |n: &str| PortSpecError::OutOfRange(n.to_owned());
    assert_eq!(err("0/tcp"), out_of_range("0"));
    assert_eq!(err("000/tcp"), out_of_range("0"));
    assert_eq!(err("65536/tcp"), out_of_range("65536"));
    assert_eq!(err("065536/tcp"), out_of_range("65536"));
    assert_eq!(ok("00443/tcp"), ok("443/tcp"));
    // A number too big for any integer type is still a number: out of range.
    assert_eq!(err("99999999999999999999/tcp"), out_of_range("99999999999999999999"));
    assert_eq!(
        err("1-1234567890123456789012345/udp").to_string(),
        "port 12345678901234567890… is out of range; ports are 1 to 65535"
    );
    assert_eq!(err("20-10/tcp"), PortSpecError::Reversed { lo: 10, hi: 20, proto: "tcp" });
    assert_eq!(err("53/sctp"), PortSpecError::UnknownProto("sctp".into()));
    for bad in ["", "/tcp", "443", "443/", "-1/tcp", "+1/tcp", "1-/tcp", "1-2-3/tcp", " 1/tcp", "icmp/8"] {
        assert!(bad.parse::<PortSpec>().is_err(), "{bad:?}");
    }
    for s in ["443/tcp", "1-1024/udp", "tcp", "udp", "icmp"] {
        assert_eq!(ok(s).to_string(), s);
    }
}
