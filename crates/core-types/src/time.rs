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
            .map_err(|e| format!("invalid RFC 3339 time `{s}`: {e}"))
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
