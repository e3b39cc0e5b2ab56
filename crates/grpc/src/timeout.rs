//! The `grpc-timeout` header: reading the caller's, writing what is left of it for each attempt.
//!
//! The format is gRPC's (`grpc/grpc doc/PROTOCOL-HTTP2.md`, "Timeout"): at most eight ASCII
//! digits and one unit, `H` `M` `S` `m` `u` `n`.

use std::time::Duration;

use http::HeaderValue;

/// The header's name.
pub(crate) const GRPC_TIMEOUT: &str = "grpc-timeout";

/// The largest value the header can carry in one unit.
const MAX_VALUE: u64 = 99_999_999;

/// Reads a `grpc-timeout` value; `None` when it is not one (too many digits, no unit, garbage).
pub(crate) fn parse(value: &HeaderValue) -> Option<Duration> {
    let s = value.to_str().ok()?;
    if s.len() < 2 || s.len() > 9 {
        return None;
    }
    let (digits, unit) = s.split_at(s.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Writes `d` in the finest unit that holds it in eight digits, rounded up (a server never sees
/// less time than is left; zero is written as `1n`, the smallest timeout).
pub(crate) fn encode(d: Duration) -> HeaderValue {
    let nanos = d.as_nanos().max(1);
    let units: [(u128, char); 6] = [
        (1, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ];
    for (per, unit) in units {
        let v = nanos.div_ceil(per);
        if v <= u128::from(MAX_VALUE) {
            return HeaderValue::from_str(&format!("{v}{unit}"))
                .unwrap_or(HeaderValue::from_static("99999999H"));
        }
    }
    HeaderValue::from_static("99999999H")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit_and_refuses_garbage() {
        let p = |s: &str| parse(&HeaderValue::from_str(s).expect("ascii"));
        assert_eq!(p("100m"), Some(Duration::from_millis(100)));
        assert_eq!(p("2S"), Some(Duration::from_secs(2)));
        assert_eq!(p("3M"), Some(Duration::from_secs(180)));
        assert_eq!(p("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(p("7u"), Some(Duration::from_micros(7)));
        assert_eq!(p("9n"), Some(Duration::from_nanos(9)));
        assert_eq!(p("99999999H"), Some(Duration::from_secs(99_999_999 * 3600)));
        for bad in ["", "m", "100", "123456789m", "-1m", "1x", "1.5S", " 1S"] {
            assert_eq!(p(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn encodes_the_finest_unit_that_fits_rounding_up() {
        assert_eq!(encode(Duration::from_millis(100)), "100000u");
        assert_eq!(encode(Duration::from_micros(1500)), "1500000n");
        assert_eq!(encode(Duration::from_millis(250)), "250000u");
        assert_eq!(encode(Duration::from_secs(30)), "30000000u");
        assert_eq!(encode(Duration::from_secs(3600 * 24)), "86400000m");
        assert_eq!(encode(Duration::ZERO), "1n");
        assert_eq!(encode(Duration::new(1, 1)), "1000001u");
        assert_eq!(encode(Duration::MAX), "99999999H");
        for d in [
            Duration::from_nanos(1),
            Duration::from_millis(1234),
            Duration::from_secs(1_000_000),
        ] {
            let back = parse(&encode(d)).expect("valid");
            assert!(back >= d, "{d:?} -> {back:?}");
        }
    }
}
