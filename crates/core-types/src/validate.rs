//! Validation: of [`ServiceInfo`] before any backend is touched, and of the hosts, ports, key
//! prefixes and durations of every backend's configuration.
//!
//! Ids and names become etcd keys, ZooKeeper paths, Consul ids and Nacos metadata, so they are
//! restricted to a character set that is safe in all of them.
//!
//! Every backend checks its configuration with the same functions, so a host, a port, a prefix
//! or a duration means the same thing whichever registry it is written for:
//!
//! - [`check_endpoint`] / [`check_host`] / [`check_port`]: a host is a DNS name (RFC 1123 labels
//!   of letters, digits and `-`, plus `_` as Docker and SRV names use it; at most 253 bytes, labels
//!   of at most 63), an IPv4 address, or an IPv6 address in brackets (`[::1]`); a port is 1 to
//!   65535 written in plain digits (no sign, no leading zero). Percent-encoding, spaces and control
//!   characters are never part of a host.
//! - [`check_prefix`]: at most [`MAX_PREFIX_LEN`] bytes, no control character, no `.` or `..`
//!   segment and no empty segment (`//`).
//! - [`check_duration`] with a [`DurationBounds`]: each duration setting has a documented minimum
//!   and maximum ([`TIMEOUT`], [`INTERVAL`], [`TTL`], …); a value outside them, `Duration::MAX`
//!   included, is rejected with an error that names the setting and its bounds.
//!
//! These functions return a short reason that never quotes the value: an endpoint or host may be
//! a password cut out of a URL with a typo in it.
//!
//! ```
//! use std::time::Duration;
//! use waypost_core_types::validate::{check_duration, check_endpoint, check_prefix, TIMEOUT};
//!
//! assert_eq!(check_endpoint("[::1]:2379")?, ("[::1]", Some(2379)));
//! assert_eq!(check_endpoint("etcd-0.etcd")?, ("etcd-0.etcd", None));
//! assert!(check_endpoint("h:080").is_err() && check_endpoint("%68:1").is_err());
//! assert!(check_prefix("/a/../b").is_err());
//! assert!(check_duration("connect_timeout", Duration::MAX, TIMEOUT).is_err());
//! # Ok::<(), &'static str>(())
//! ```

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use crate::quote::quoted;
use crate::{Error, ServiceInfo};

/// Longest accepted instance id, in bytes.
pub const MAX_ID_LEN: usize = 256;
/// Longest accepted service name, in bytes.
pub const MAX_NAME_LEN: usize = 128;
/// Longest accepted version, in bytes.
pub const MAX_VERSION_LEN: usize = 128;
/// Longest accepted address (a DNS name is at most 253 bytes), in bytes.
pub const MAX_ADDRESS_LEN: usize = 253;
/// Most metadata pairs per instance.
pub const MAX_METADATA_ENTRIES: usize = 128;
/// Longest metadata key, in bytes.
pub const MAX_METADATA_KEY_LEN: usize = 128;
/// Longest metadata value, in bytes.
pub const MAX_METADATA_VALUE_LEN: usize = 4096;
/// Most tags per instance.
pub const MAX_TAGS: usize = 64;
/// Longest tag, in bytes.
pub const MAX_TAG_LEN: usize = 256;
/// Largest accepted weight.
pub const MAX_WEIGHT: u32 = 1_000_000;

/// Whether `c` may appear in an id or a service name: ASCII letters, digits, `-`, `_`, `.`, `:`
/// and `@`.
pub fn is_safe_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@')
}

/// Checks an instance id or a service name (`what` names it in the message).
///
/// # Errors
/// [`Error::InvalidInstance`] when empty, too long, `.` or `..`, or with a character outside
/// [`is_safe_name_char`].
pub fn validate_key_part(what: &str, value: &str, max: usize) -> Result<(), Error> {
    if value.is_empty() {
        return Err(Error::InvalidInstance(format!("{what} must not be empty")));
    }
    if value.len() > max {
        return Err(Error::InvalidInstance(format!(
            "{what} is {} bytes long; the limit is {max}",
            value.len()
        )));
    }
    if value == "." || value == ".." {
        return Err(Error::InvalidInstance(format!(
            "{what} must not be `{value}`"
        )));
    }
    if let Some(c) = value.chars().find(|c| !is_safe_name_char(*c)) {
        return Err(Error::InvalidInstance(format!(
            "{what} `{}` contains {:?}; allowed are ASCII letters, digits and - _ . : @",
            quoted(value),
            quoted(c.encode_utf8(&mut [0; 4]))
        )));
    }
    Ok(())
}

fn validate_text(what: &str, value: &str, max: usize, allow_empty: bool) -> Result<(), Error> {
    if !allow_empty && value.is_empty() {
        return Err(Error::InvalidInstance(format!("{what} must not be empty")));
    }
    if value.len() > max {
        return Err(Error::InvalidInstance(format!(
            "{what} is {} bytes long; the limit is {max}",
            value.len()
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::InvalidInstance(format!(
            "{what} `{}` contains a control character",
            quoted(value)
        )));
    }
    Ok(())
}

impl ServiceInfo {
    /// Checks the instance as every registry does before touching its backend.
    ///
    /// # Errors
    /// [`Error::InvalidInstance`] naming the first problem: an empty or unsafe id or name, port 0,
    /// an empty address or one with spaces, `/` or control characters, or a field beyond its
    /// bound (see the `MAX_*` constants).
    pub fn validate(&self) -> Result<(), Error> {
        validate_key_part("id", &self.id, MAX_ID_LEN)?;
        validate_key_part("name", &self.name, MAX_NAME_LEN)?;
        validate_text("version", &self.version, MAX_VERSION_LEN, true)?;
        validate_text("address", &self.address, MAX_ADDRESS_LEN, false)?;
        if self
            .address
            .chars()
            .any(|c| c.is_whitespace() || c == '/' || c == '?' || c == '#')
        {
            return Err(Error::InvalidInstance(format!(
                "address `{}` must be a host name or IP address",
                quoted(&self.address)
            )));
        }
        if self.port == 0 {
            return Err(Error::InvalidInstance(
                "port must be between 1 and 65535".into(),
            ));
        }
        if self.metadata.len() > MAX_METADATA_ENTRIES {
            return Err(Error::InvalidInstance(format!(
                "{} metadata entries; the limit is {MAX_METADATA_ENTRIES}",
                self.metadata.len()
            )));
        }
        for (k, v) in &self.metadata {
            validate_text("metadata key", k, MAX_METADATA_KEY_LEN, false)?;
            if v.len() > MAX_METADATA_VALUE_LEN {
                return Err(Error::InvalidInstance(format!(
                    "metadata value of `{}` is {} bytes long; the limit is {MAX_METADATA_VALUE_LEN}",
                    quoted(k),
                    v.len()
                )));
            }
        }
        if self.tags.len() > MAX_TAGS {
            return Err(Error::InvalidInstance(format!(
                "{} tags; the limit is {MAX_TAGS}",
                self.tags.len()
            )));
        }
        for tag in &self.tags {
            validate_text("tag", tag, MAX_TAG_LEN, false)?;
        }
        if self.weight > MAX_WEIGHT {
            return Err(Error::InvalidInstance(format!(
                "weight {} exceeds {MAX_WEIGHT}",
                self.weight
            )));
        }
        Ok(())
    }
}

/// Longest accepted key prefix (etcd, Consul, ZooKeeper), in bytes.
pub const MAX_PREFIX_LEN: usize = 512;
/// Longest accepted host name, in bytes (RFC 1123).
pub const MAX_HOST_LEN: usize = 253;

/// Splits `host[:port]` or `[v6][:port]` and checks both parts with [`check_host`] and
/// [`check_port`]. The host is returned as written (IPv6 with its brackets).
///
/// # Errors
/// A short reason that does not quote the input.
pub fn check_endpoint(endpoint: &str) -> Result<(&str, Option<u16>), &'static str> {
    let (host, port) = if endpoint.starts_with('[') {
        let end = endpoint.find(']').ok_or("unclosed `[`")? + 1;
        match &endpoint[end..] {
            "" => (&endpoint[..end], None),
            rest => (
                &endpoint[..end],
                Some(rest.strip_prefix(':').ok_or("junk after `]`")?),
            ),
        }
    } else {
        match endpoint.split_once(':') {
            None => (endpoint, None),
            Some((host, port)) if !port.contains(':') => (host, Some(port)),
            Some(_) => return Err("more than one `:` (write IPv6 addresses in brackets)"),
        }
    };
    check_host(host)?;
    Ok((host, port.map(check_port).transpose()?))
}

/// Checks a host: a DNS name (RFC 1123, plus `_`), an IPv4 address or a bracketed IPv6 address.
///
/// # Errors
/// A short reason that does not quote the input.
pub fn check_host(host: &str) -> Result<(), &'static str> {
    if host.is_empty() {
        return Err("empty host");
    }
    if let Some(inner) = host.strip_prefix('[') {
        let v6 = inner.strip_suffix(']').ok_or("unclosed `[`")?;
        return match v6.parse::<Ipv6Addr>() {
            Ok(_) => Ok(()),
            Err(_) => Err("not an IPv6 address inside `[…]`"),
        };
    }
    if host.contains(':') {
        return Err("an IPv6 address must be written in brackets (`[::1]`)");
    }
    if host.len() > MAX_HOST_LEN {
        return Err("host name longer than 253 bytes");
    }
    if host.contains('%') {
        return Err("percent-encoding is not allowed in a host");
    }
    if host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("a space or control character in the host");
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label in the host name (`..` or a leading `.`)");
        }
        if label.len() > 63 {
            return Err("a label of the host name is longer than 63 bytes");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("invalid character in the host name (letters, digits, `-`, `_`, `.`)");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label of the host name starts or ends with `-`");
        }
    }
    // A name whose last label is all digits is meant as an IPv4 address: it must be one.
    let last = name.rsplit('.').next().unwrap_or(name);
    if last.bytes().all(|b| b.is_ascii_digit()) && name.parse::<Ipv4Addr>().is_err() {
        return Err("not a valid IPv4 address");
    }
    Ok(())
}

/// Checks a port written in a URL or an address: 1 to 65535, plain digits, no leading zero.
///
/// # Errors
/// A short reason that does not quote the input.
pub fn check_port(port: &str) -> Result<u16, &'static str> {
    const WHY: &str = "invalid port (1-65535, plain digits)";
    if port.is_empty()
        || port.len() > 5
        || port.starts_with('0')
        || !port.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(WHY);
    }
    port.parse::<u16>().map_err(|_| WHY)
}

/// Checks a key prefix (etcd key prefix, ZooKeeper path, Consul prefix) after the backend's own
/// rule about a leading `/`: at most [`MAX_PREFIX_LEN`] bytes, no control or bidirectional
/// character, no `.` or `..` segment, no empty segment between two `/`. A trailing `/` is
/// allowed (backends drop it).
///
/// # Errors
/// A short reason (the prefix is not quoted; the caller may quote it with
/// [`quoted`]).
pub fn check_prefix(prefix: &str) -> Result<(), &'static str> {
    if prefix.len() > MAX_PREFIX_LEN {
        return Err("longer than 512 bytes");
    }
    if prefix
        .chars()
        .any(|c| c.is_control() || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'))
    {
        return Err("contains a control character");
    }
    let inner = prefix.strip_prefix('/').unwrap_or(prefix);
    let inner = inner.strip_suffix('/').unwrap_or(inner);
    if inner.is_empty() {
        return Ok(());
    }
    for segment in inner.split('/') {
        match segment {
            "" => return Err("contains an empty segment (`//`)"),
            "." | ".." => return Err("contains a `.` or `..` segment"),
            _ => {}
        }
    }
    Ok(())
}

/// Serde helper for a list of hosts (`endpoints`, `servers`): a sequence of strings, or one
/// string with the hosts separated by commas. A value of another shape is an error that does not
/// repeat it (an endpoint written as `http://user:password@host` must not end up in the error).
///
/// ```
/// #[derive(serde::Deserialize)]
/// struct C {
///     #[serde(deserialize_with = "waypost_core_types::validate::host_list")]
///     servers: Vec<String>,
/// }
/// let c: C = serde_json::from_str(r#"{"servers":"z1:2181, z2:2181"}"#).unwrap();
/// assert_eq!(c.servers, ["z1:2181", "z2:2181"]);
/// let c: C = serde_json::from_str(r#"{"servers":["z1:2181"]}"#).unwrap();
/// assert_eq!(c.servers, ["z1:2181"]);
/// let e = serde_json::from_str::<C>(r#"{"servers":{"u":"p4ss"}}"#).err().unwrap().to_string();
/// assert!(!e.contains("p4ss"));
/// ```
///
/// # Errors
/// When the value is neither a string nor a sequence of strings.
pub fn host_list<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<String>, D::Error> {
    use serde::de::{self, SeqAccess, Visitor};

    struct Hosts;

    impl<'de> Visitor<'de> for Hosts {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of `host:port` strings, or one string of them separated by `,`")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<String>, E> {
            if v.contains('@') {
                // Credentials written into an address may hold a `,`: keep it whole (it is
                // rejected by validation, and redacted in `Debug`).
                return Ok(vec![v.to_owned()]);
            }
            Ok(v.split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(str::to_owned)
                .collect())
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
            let mut out = Vec::new();
            while let Some(host) = seq.next_element::<HostText>()? {
                out.push(host.0);
            }
            Ok(out)
        }
    }

    /// One host of a sequence: a string, else an error without the value.
    struct HostText(String);

    impl<'de> serde::Deserialize<'de> for HostText {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct One;
            impl Visitor<'_> for One {
                type Value = HostText;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a `host:port` string")
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<HostText, E> {
                    Ok(HostText(v.to_owned()))
                }
            }
            d.deserialize_str(One)
        }
    }

    deserializer.deserialize_any(Hosts)
}

/// The accepted range of one kind of duration setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationBounds {
    /// The smallest accepted value.
    pub min: Duration,
    /// The largest accepted value.
    pub max: Duration,
}

impl DurationBounds {
    /// Bounds from `min` to `max`, both included.
    pub const fn new(min: Duration, max: Duration) -> Self {
        DurationBounds { min, max }
    }
}

/// Timeouts and backoff caps: 1 ms to 24 h.
pub const TIMEOUT: DurationBounds =
    DurationBounds::new(Duration::from_millis(1), Duration::from_secs(24 * 3600));
/// Periodic background work (cleanup, probes, polls): 10 ms to 24 h. Below 10 ms the work would
/// keep a core busy for nothing.
pub const INTERVAL: DurationBounds =
    DurationBounds::new(Duration::from_millis(10), Duration::from_secs(24 * 3600));
/// Time-to-live values: 1 ms to 365 days.
pub const TTL: DurationBounds = DurationBounds::new(
    Duration::from_millis(1),
    Duration::from_secs(365 * 24 * 3600),
);
/// A TTL kept for compatibility only (zero allowed): 0 to 365 days.
pub const COMPAT_TTL: DurationBounds =
    DurationBounds::new(Duration::ZERO, Duration::from_secs(365 * 24 * 3600));

/// Checks a duration setting against its bounds.
///
/// # Errors
/// A message naming the setting and its bounds, such as
/// `connect_timeout 0ns is outside 1ms..=24h`.
pub fn check_duration(what: &str, value: Duration, bounds: DurationBounds) -> Result<(), String> {
    if value < bounds.min || value > bounds.max {
        return Err(format!(
            "{what} {} is outside {}..={}",
            ShortDuration(value),
            ShortDuration(bounds.min),
            ShortDuration(bounds.max)
        ));
    }
    Ok(())
}

/// Writes a duration as a config file would (`24h`, `500ms`, `1.5s`), `Duration::MAX` included.
pub struct ShortDuration(pub Duration);

impl fmt::Display for ShortDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        let nanos = d.subsec_nanos();
        let secs = d.as_secs();
        if nanos == 0 && secs > 0 {
            if secs % 86_400 == 0 && secs >= 86_400 * 365 {
                return write!(f, "{}d", secs / 86_400);
            }
            if secs % 3600 == 0 {
                return write!(f, "{}h", secs / 3600);
            }
            if secs % 60 == 0 {
                return write!(f, "{}m", secs / 60);
            }
            return write!(f, "{secs}s");
        }
        if secs == 0 && nanos % 1_000_000 == 0 && nanos > 0 {
            return write!(f, "{}ms", nanos / 1_000_000);
        }
        write!(f, "{d:?}")
    }
}

#[cfg(test)]
mod config_tests {
    use super::*;

    #[test]
    fn hosts() {
        for ok in [
            "localhost",
            "etcd-0.etcd.svc.cluster.local",
            "etcd-0.etcd.svc.cluster.local.",
            "compose_etcd_1",
            "10.0.0.1",
            "[::1]",
            "[fe80::1]",
            "[2001:db8::8a2e:370:7334]",
            "1host",
            "a.b-c.d",
        ] {
            assert_eq!(check_host(ok), Ok(()), "{ok}");
        }
        let long_label = "a".repeat(64);
        let long_name = [
            "a".repeat(60),
            "b".repeat(60),
            "c".repeat(60),
            "d".repeat(60),
            "e".repeat(20),
        ]
        .join(".");
        for bad in [
            "",
            "[]",
            "[zz]",
            "[::1",
            "[10.0.0.1]",
            "local\0host",
            "local\thost",
            "local host",
            "%68ost",
            "!ocalhost",
            "::1",
            "-leading",
            "trailing-",
            "a..b",
            ".a",
            "256.1.1.1",
            "1.2.3",
            "999",
            "h\u{e9}llo",
            "a/b",
            "a@b",
            long_label.as_str(),
            long_name.as_str(),
        ] {
            assert!(check_host(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn ports() {
        assert_eq!(check_port("1"), Ok(1));
        assert_eq!(check_port("2379"), Ok(2379));
        assert_eq!(check_port("65535"), Ok(65535));
        for bad in [
            "", "0", "080", "+80", "-1", "65536", "99999", "8O", " 80", "1e3", "0x50",
        ] {
            assert!(check_port(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn endpoints() {
        assert_eq!(check_endpoint("h:1"), Ok(("h", Some(1))));
        assert_eq!(check_endpoint("[::1]:2181"), Ok(("[::1]", Some(2181))));
        assert_eq!(check_endpoint("[::1]"), Ok(("[::1]", None)));
        assert_eq!(check_endpoint("10.0.0.1"), Ok(("10.0.0.1", None)));
        for bad in [
            "h:", ":1", "h:+80", "h:080", "[::1]x", "[::1]:", "::1:80", "[]:1", "[zz]:1", "h:1:2",
        ] {
            assert!(check_endpoint(bad).is_err(), "{bad:?} accepted");
        }
        // The reason never repeats the input.
        let e = check_endpoint("admin:PASSWORD").unwrap_err();
        assert!(!e.contains("PASSWORD"));
    }

    #[test]
    fn prefixes() {
        for ok in [
            "",
            "/",
            "/laravel-go/services",
            "/svc/",
            "laravel-go/services",
            "a.b/c..d",
        ] {
            assert_eq!(check_prefix(ok), Ok(()), "{ok}");
        }
        let long = format!("/{}", "a".repeat(MAX_PREFIX_LEN));
        for bad in [
            "/a/../b",
            "..",
            "a/.",
            "/a//b",
            "/a\0b",
            "a\nb",
            "a\u{202e}b",
            long.as_str(),
        ] {
            assert!(check_prefix(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn durations() {
        check_duration("t", Duration::from_millis(1), TIMEOUT).unwrap();
        check_duration("t", Duration::from_secs(86_400), TIMEOUT).unwrap();
        let e = check_duration("connect_timeout", Duration::MAX, TIMEOUT).unwrap_err();
        assert_eq!(
            e,
            "connect_timeout 18446744073709551615.999999999s is outside 1ms..=24h"
        );
        let e = check_duration("cleanup_interval", Duration::from_nanos(1), INTERVAL).unwrap_err();
        assert_eq!(e, "cleanup_interval 1ns is outside 10ms..=24h");
        let e = check_duration("ttl", Duration::ZERO, TTL).unwrap_err();
        assert_eq!(e, "ttl 0ns is outside 1ms..=365d");
        check_duration("ttl", Duration::ZERO, COMPAT_TTL).unwrap();
        assert_eq!(
            ShortDuration(Duration::from_millis(1500)).to_string(),
            "1.5s"
        );
        assert_eq!(ShortDuration(Duration::from_secs(90)).to_string(), "90s");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> ServiceInfo {
        ServiceInfo::new("user-service-1", "user-service", "localhost", 8080)
    }

    fn err_of(s: ServiceInfo) -> String {
        match s.validate() {
            Err(Error::InvalidInstance(m)) => m,
            other => panic!("expected InvalidInstance, got {other:?}"),
        }
    }

    #[test]
    fn accepts_ordinary_instances() {
        ok().validate().unwrap();
        ServiceInfo::new("10.0.0.1:8080@blue", "svc.v2_x", "::1", 1)
            .validate()
            .unwrap();
        ServiceInfo::new("a", "b", "[fe80::1]", 65535)
            .validate()
            .unwrap();
    }

    #[test]
    fn rejects_each_kind_of_bad_input() {
        let mut s = ok();
        s.id.clear();
        assert!(err_of(s).contains("id must not be empty"));
        let mut s = ok();
        s.name = "a/b".into();
        assert!(err_of(s).contains("name `a/b`"));
        let mut s = ok();
        s.name = "..".into();
        assert!(err_of(s).contains("must not be `..`"));
        let mut s = ok();
        s.id = "a\nb".into();
        assert!(err_of(s).contains("id"));
        let mut s = ok();
        s.id = "x".repeat(MAX_ID_LEN + 1);
        assert!(err_of(s).contains("limit is 256"));
        let mut s = ok();
        s.port = 0;
        assert!(err_of(s).contains("port"));
        let mut s = ok();
        s.address.clear();
        assert!(err_of(s).contains("address must not be empty"));
        let mut s = ok();
        s.address = "http://x".into();
        assert!(err_of(s).contains("host name or IP"));
        let mut s = ok();
        s.name = "user service".into();
        assert!(err_of(s).contains("name"));
        let mut s = ok();
        s.tags = vec![String::new()];
        assert!(err_of(s).contains("tag must not be empty"));
        let mut s = ok();
        s.metadata.insert(String::new(), "v".into());
        assert!(err_of(s).contains("metadata key"));
        let mut s = ok();
        s.weight = MAX_WEIGHT + 1;
        assert!(err_of(s).contains("weight"));
        let mut s = ok();
        s.name = "über".into();
        assert!(err_of(s).contains("name"));
    }
}
