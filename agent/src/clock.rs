//! Time, shared by every layer: the kernel's clock (CLOCK_MONOTONIC, what `bpf_ktime_get_ns`
//! reads) and wall-clock formatting (RFC 3339, UTC).

/// CLOCK_MONOTONIC now, in nanoseconds: the clock of the kernel's timestamps.
pub fn monotonic_ns() -> u64 {
    // SAFETY: clock_gettime into a zeroed timespec.
    unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }
}

/// RFC 3339 in UTC with milliseconds, from nanoseconds since the epoch (truncated to the
/// millisecond): `2026-11-28T03:54:56.000Z`.
pub fn rfc3339(unix_ns: u64) -> String {
    // u64 nanoseconds end in 2554, well inside jiff's range: the conversion cannot fail.
    let ms = i64::try_from(unix_ns / 1_000_000).unwrap_or(i64::MAX);
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(t) => format!("{t:.3}"),
        Err(_) => String::from("9999-12-31T23:59:59.999Z"),
    }
}

/// Nanoseconds since the epoch of an RFC 3339 time (any offset, any fraction); `None` for
/// anything else or a time before 1970.
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    let t: jiff::Timestamp = text.parse().ok()?;
    u64::try_from(t.as_nanosecond()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123_000_000), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_795_838_096_000_000_000), "2026-11-28T03:54:56.000Z");
        assert_eq!(rfc3339(1_795_838_096_999_999_999), "2026-11-28T03:54:56.999Z");
        assert_eq!(rfc3339(u64::MAX), "2554-07-21T23:34:33.709Z");
    }

    #[test]
    fn rfc3339_round_trip() {
        for ns in [0, 951_782_400_123_000_000, 1_795_838_096_000_000_000] {
            assert_eq!(parse_rfc3339(&rfc3339(ns)), Some(ns));
        }
        assert_eq!(parse_rfc3339("2026-11-28T04:54:56+01:00"), Some(1_795_838_096_000_000_000));
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59Z"), None);
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn rfc3339_parsed() {
        for ns in [0, 951_782_400_123_000_000, 1_795_838_096_000_000_000] {
            assert_eq!(parse_rfc3339(&rfc3339(ns)), Some(ns));
        }
        assert_eq!(parse_rfc3339("2026-11-28T04:54:56+01:00"), Some(1_795_838_096_000_000_000));
        assert_eq!(parse_rfc3339("2026-11-28 03:54:56.5z"), Some(1_795_838_096_500_000_000));
        for bad in ["", "2026-11-28", "2026-11-28T03:54:56", "2026-13-28T03:54:56Z", "x026-11-28T03:54:56Z"] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
