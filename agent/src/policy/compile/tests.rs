//! Unit tests of the compiler's pieces.

use super::limits::Fnv;
use super::*;

#[test]
fn fnv1a_64_test_vectors() {
    let hash = |data: &[u8]| {
        let mut h = Fnv(Fnv::OFFSET);
        h.bytes(data);
        h.0
    };
    // From the FNV reference test suite.
    assert_eq!(hash(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(hash(b"a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(hash(b"foobar"), 0x8594_4171_f739_67e8);
}

#[test]
fn prefix_decomposition() {
    assert_eq!(prefixes(0, PORT_SPACE - 1), vec![(0, 0)]);
    assert_eq!(prefixes(6 << 16, (6 << 16) | 0xffff), vec![(8, 6 << 16)]);
    assert_eq!(prefixes(5, 5), vec![(24, 5)]);
    // [1, 6] = 1/24, 2-3/23, 4-5/23, 6/24
    assert_eq!(prefixes(1, 6), vec![(24, 1), (23, 2), (23, 4), (24, 6)]);
    // Exhaustive on small ranges: the prefixes tile exactly [lo, hi].
    for lo in 0..70u32 {
        for hi in lo..70 {
            let mut covered = Vec::new();
            for (bits, value) in prefixes(lo, hi) {
                let size = 1u32 << (PORT_KEY_BITS - bits);
                assert_eq!(value % size, 0, "unaligned");
                covered.extend(value..value + size);
            }
            assert_eq!(covered, (lo..=hi).collect::<Vec<_>>());
        }
    }
    // Worst case stays within 2 * 24 prefixes.
    assert!(prefixes(1, PORT_SPACE - 2).len() <= 2 * 24);
}
