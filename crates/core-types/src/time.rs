//! Go-compatible time values: RFC 3339 timestamps and integer-nanosecond durations.

use std::fmt;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, FixedOffset, NaiveDate, Offset, Timelike, Utc};
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// A point in time, encoded in JSON exactly as Go's `time.Time` (`RFC3339Nano`: trailing zeros of
/// the fraction dropped, `Z` for UTC, the original offset kept otherwise).
///
/// The default value is Go's zero time, `0001-01-01T00:00:00Z`, which Go writes for a field that
/// was never set (for example `last_check` before the first health check).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Timestamp(DateTime<FixedOffset>);

impl Timestamp {
    /// Go's zero time, `0001-01-01T00:00:00Z`.
    pub fn zero() -> Self {
        let naive = NaiveDate::from_ymd_opt(1, 1, 1)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .unwrap_or_default();
        Timestamp(naive.and_utc().fixed_offset())
    }

    /// The current time in UTC.
    pub fn now() -> Self {
        Timestamp(Utc::now().fixed_offset())
    }

    /// Whether this is Go's zero time (a field that was never set).
    pub fn is_zero(&self) -> bool {
        *self == Self::zero()
    }

    /// The time as a chrono value with its original offset.
    pub fn as_datetime(&self) -> DateTime<FixedOffset> {
        self.0
    }

    /// The time as a [`SystemTime`]; `None` for instants before the Unix epoch (such as zero).
    pub fn to_system_time(&self) -> Option<SystemTime> {
        let utc = self.0.with_timezone(&Utc);
        let nanos = utc.timestamp_nanos_opt()?;
        let nanos = u64::try_from(nanos).ok()?;
        Some(SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos))
    }

    /// Time passed since this instant, zero if it lies in the future or is the zero time.
    pub fn elapsed(&self) -> Duration {
        if self.is_zero() {
            return Duration::ZERO;
        }
        (Utc::now() - self.0.with_timezone(&Utc))
            .to_std()
            .unwrap_or(Duration::ZERO)
    }

    /// Parses an RFC 3339 timestamp (with or without a fraction, `Z` or an offset).
    ///
    /// # Errors
    /// Returns a message when the text is not RFC 3339.
    pub fn parse(s: &str) -> Result<Self, String> {
        DateTime::parse_from_rfc3339(s)
            .map(Timestamp)
            .map_err(|e| format!("invalid RFC 3339 time `{}`: {e}", crate::quote::quoted(s)))
    }

    /// Formats like Go's `time.RFC3339Nano`.
    pub fn to_go_string(&self) -> String {
        let dt = self.0;
        let mut out = dt.format("%Y-%m-%dT%H:%M:%S").to_string();
        let nanos = dt.nanosecond() % 1_000_000_000;
        if nanos != 0 {
            let frac = format!("{nanos:09}");
            out.push('.');
            out.push_str(frac.trim_end_matches('0'));
        }
        let offset = dt.offset().fix().local_minus_utc();
        if offset == 0 {
            out.push('Z');
        } else {
            let sign = if offset < 0 { '-' } else { '+' };
            let abs = offset.unsigned_abs();
            out.push_str(&format!("{sign}{:02}:{:02}", abs / 3600, (abs % 3600) / 60));
        }
        out
    }
}

impl Default for Timestamp {
    fn default() -> Self {
        Self::zero()
    }
}

impl PartialOrd for Timestamp {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Timestamp {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

impl From<DateTime<Utc>> for Timestamp {
    fn from(value: DateTime<Utc>) -> Self {
        Timestamp(value.fixed_offset())
    }
}

impl From<DateTime<FixedOffset>> for Timestamp {
    fn from(value: DateTime<FixedOffset>) -> Self {
        Timestamp(value)
    }
}

impl From<SystemTime> for Timestamp {
    fn from(value: SystemTime) -> Self {
        Timestamp(DateTime::<Utc>::from(value).fixed_offset())
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_go_string())
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_go_string())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_go_string())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Go writes `null` only for pointer fields, but tolerate it as "unset".
        let s: Option<std::borrow::Cow<'de, str>> = Option::deserialize(deserializer)?;
        match s {
            None => Ok(Timestamp::zero()),
            Some(s) if s.is_empty() => Ok(Timestamp::zero()),
            Some(s) => Timestamp::parse(&s).map_err(de::Error::custom),
        }
    }
}

/// Serde helpers for a [`Duration`] written as Go's `time.Duration`: integer nanoseconds.
///
/// Negative values (legal in Go) read as zero; values beyond `i64` nanoseconds are clamped.
pub mod go_duration {
    use super::*;

    /// Serializes as integer nanoseconds.
    pub fn serialize<S: Serializer>(d: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        let nanos = i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        serializer.serialize_i64(nanos)
    }

    /// Deserializes integer nanoseconds (negative or `null` read as zero).
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let n: Option<i64> = Option::deserialize(deserializer)?;
        Ok(Duration::from_nanos(n.unwrap_or(0).max(0) as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_formatting() {
        for s in [
            "2024-01-15T10:30:00Z",
            "2024-01-15T10:30:00.5Z",
            "2024-01-15T10:30:00.123456789Z",
            "2024-01-15T10:30:00.1234+08:00",
            "2024-01-15T10:30:00-05:30",
            "0001-01-01T00:00:00Z",
        ] {
            assert_eq!(Timestamp::parse(s).unwrap().to_go_string(), s);
        }
        assert!(Timestamp::zero().is_zero());
        assert!(Timestamp::default().is_zero());
        assert!(!Timestamp::now().is_zero());
        assert_eq!(Timestamp::zero().to_system_time(), None);
        assert!(Timestamp::parse("yesterday").is_err());
    }

    #[test]
    fn ordering_is_by_instant() {
        let a = Timestamp::parse("2024-01-15T10:30:00+08:00").unwrap();
        let b = Timestamp::parse("2024-01-15T03:00:00Z").unwrap();
        assert!(a < b);
    }
}

/// Parses a duration written as in Go (`"300ms"`, `"1.5s"`, `"2m"`, `"1h30m"`; units `ns`, `us`,
/// `µs`, `ms`, `s`, `m`, `h`), exactly: no rounding through floating point, and a value beyond
/// `u64::MAX` nanoseconds (about 584 years), such as `18446744073709551616ns`, is an error rather
/// than a silently saturated value. Digits after the point that are finer than a nanosecond are
/// dropped, as Go does.
///
/// # Errors
/// A message quoting at most the first 64 characters of the text (control characters escaped).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let err = |why: &str| {
        format!(
            "invalid duration `{}`: {why} (expected e.g. `500ms`, `30s`, `1m30s`)",
            crate::quote::quoted(text)
        )
    };
    let s = text.trim();
    if s.is_empty() {
        return Err(err("empty"));
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let too_large = || err("larger than 18446744073709551615ns");
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| err("a number without a unit"))?;
        let number = &rest[..num_len];
        rest = &rest[num_len..];
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && frac.is_empty()) || frac.contains('.') {
            return Err(err("a unit without a number"));
        }
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per: u128 = match &rest[..unit_len] {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(err("unknown unit")),
        };
        rest = &rest[unit_len..];
        let mut value: u128 = 0;
        for d in whole.bytes() {
            value = value
                .checked_mul(10)
                .and_then(|v| v.checked_add(u128::from(d - b'0')))
                .filter(|v| *v <= u128::from(u64::MAX))
                .ok_or_else(too_large)?;
        }
        let mut part = value * nanos_per;
        // The fraction, digit by digit: `scale` is what one unit of this digit is worth.
        let mut scale = nanos_per;
        for d in frac.bytes() {
            scale /= 10;
            if scale == 0 {
                break;
            }
            part += u128::from(d - b'0') * scale;
        }
        total = total
            .checked_add(part)
            .filter(|t| *t <= u128::from(u64::MAX))
            .ok_or_else(too_large)?;
    }
    let nanos = u64::try_from(total).map_err(|_| too_large())?;
    Ok(Duration::from_nanos(nanos))
}

/// Serde helpers for durations in configuration files: a Go duration string (`"30s"`) or an
/// integer number of nanoseconds (what Go's `encoding/json` writes for `time.Duration`).
pub mod config_duration {
    use super::*;

    /// A duration as written in a config file: text or integer nanoseconds.
    enum Raw {
        Nanos(u64),
        Text(Result<Duration, String>),
    }

    struct RawVisitor;

    impl de::Visitor<'_> for RawVisitor {
        type Value = Raw;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration such as \"30s\" or \"500ms\", or integer nanoseconds")
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Raw, E> {
            Ok(Raw::Nanos(v))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Raw, E> {
            u64::try_from(v)
                .map(Raw::Nanos)
                .map_err(|_| E::custom("a duration must not be negative"))
        }

        fn visit_u128<E: de::Error>(self, v: u128) -> Result<Raw, E> {
            u64::try_from(v)
                .map(Raw::Nanos)
                .map_err(|_| E::custom("a duration larger than 18446744073709551615ns"))
        }

        fn visit_i128<E: de::Error>(self, v: i128) -> Result<Raw, E> {
            u64::try_from(v)
                .map(Raw::Nanos)
                .map_err(|_| E::custom("a duration out of range (0 to 18446744073709551615ns)"))
        }

        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Raw, E> {
            Err(E::custom(
                "a duration in nanoseconds must be an integer (or write e.g. \"1.5s\")",
            ))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Raw, E> {
            Ok(Raw::Text(parse_duration(v)))
        }
    }

    impl<'de> Deserialize<'de> for Raw {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserializer.deserialize_any(RawVisitor)
        }
    }

    fn convert<E: de::Error>(raw: Raw) -> Result<Duration, E> {
        match raw {
            Raw::Nanos(n) => Ok(Duration::from_nanos(n)),
            Raw::Text(parsed) => parsed.map_err(E::custom),
        }
    }

    /// Deserializes a required duration.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        convert(Raw::deserialize(deserializer)?)
    }

    /// Serializes as a Go duration string, exactly: whole seconds (`"30s"`), else milliseconds
    /// (`"1500ms"`), else nanoseconds (`"1500ns"`), so that reading it back gives the same value.
    pub fn serialize<S: Serializer>(d: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        let text = if d.subsec_nanos() == 0 {
            format!("{}s", d.as_secs())
        } else if d.subsec_nanos() % 1_000_000 == 0 {
            format!("{}ms", d.as_millis())
        } else {
            format!("{}ns", d.as_nanos())
        };
        serializer.serialize_str(&text)
    }

    /// The same for `Option<Duration>` (`null` or absent = `None`).
    pub mod option {
        use super::*;

        /// Deserializes an optional duration.
        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<Duration>, D::Error> {
            Option::<Raw>::deserialize(deserializer)?
                .map(convert)
                .transpose()
        }

        /// Serializes an optional duration.
        pub fn serialize<S: Serializer>(
            d: &Option<Duration>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, serializer),
                None => serializer.serialize_none(),
            }
        }
    }
}

#[cfg(test)]
mod duration_tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        for bad in [
            "", "s", "10", "10x", "-1s", "1s2", ".s", "1..2s", "+1s", "1e3s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_exactly_and_rejects_overflow() {
        assert_eq!(parse_duration("1.000000001s").unwrap(), Duration::new(1, 1));
        assert_eq!(parse_duration("0.1s").unwrap(), Duration::from_millis(100));
        assert_eq!(parse_duration(".5s").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5ns").unwrap(), Duration::from_nanos(1));
        assert_eq!(
            parse_duration("18446744073709551615ns").unwrap(),
            Duration::from_nanos(u64::MAX)
        );
        for overflow in [
            "18446744073709551616ns",
            "99999999999999999999999999999999h",
            "5124096h",
            "18446744073709551615ns1ns",
            "307445734561825861m",
        ] {
            let e = parse_duration(overflow).unwrap_err();
            assert!(e.contains("larger than"), "{overflow}: {e}");
        }
    }

    #[test]
    fn errors_quote_a_bounded_prefix() {
        let huge = format!("{}x", "1".repeat(100_000));
        let e = parse_duration(&huge).unwrap_err();
        assert!(e.len() < 300, "{} bytes", e.len());
        assert!(e.contains("(100001 bytes)"), "{e}");
        let e = parse_duration("1s\u{1b}[2J").unwrap_err();
        assert!(!e.contains('\u{1b}') && e.contains(r"\u{1b}"), "{e}");
    }

    #[test]
    fn config_duration_accepts_text_and_nanos() {
        #[derive(Deserialize)]
        struct C {
            #[serde(with = "config_duration")]
            d: Duration,
            #[serde(with = "config_duration::option", default)]
            o: Option<Duration>,
        }
        let c: C = serde_json::from_str(r#"{"d":"10s","o":30000000000}"#).unwrap();
        assert_eq!(
            (c.d, c.o),
            (Duration::from_secs(10), Some(Duration::from_secs(30)))
        );
        let c: C = serde_json::from_str(r#"{"d":1000}"#).unwrap();
        assert_eq!((c.d, c.o), (Duration::from_micros(1), None));
        assert!(serde_json::from_str::<C>(r#"{"d":"soon"}"#).is_err());
        for (bad, why) in [
            (r#"{"d":-1}"#, "negative"),
            (r#"{"d":1.5}"#, "integer"),
            (r#"{"d":18446744073709551616}"#, "nanoseconds"),
            (r#"{"d":"18446744073709551616ns"}"#, "larger than"),
            (r#"{"d":true}"#, "a duration such as"),
        ] {
            let e = serde_json::from_str::<C>(bad).err().map(|e| e.to_string());
            assert!(
                e.as_deref().is_some_and(|e| e.contains(why)),
                "{bad}: {e:?}"
            );
        }
        let c: C = serde_json::from_str(r#"{"d":18446744073709551615}"#).unwrap();
        assert_eq!(c.d, Duration::from_nanos(u64::MAX));
    }

    #[test]
    fn config_duration_round_trips_exactly() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct C {
            #[serde(with = "config_duration")]
            d: Duration,
        }
        for (d, text) in [
            (Duration::from_secs(30), r#"{"d":"30s"}"#),
            (Duration::from_millis(1500), r#"{"d":"1500ms"}"#),
            (Duration::from_nanos(1_500_001), r#"{"d":"1500001ns"}"#),
        ] {
            let json = serde_json::to_string(&C { d }).unwrap();
            assert_eq!(json, text);
            assert_eq!(serde_json::from_str::<C>(&json).unwrap(), C { d });
        }
    }
}
