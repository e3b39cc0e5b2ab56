//! The data model: [`ServiceInfo`], [`Health`] and [`Protocol`].

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::time::{go_duration, Timestamp};
use crate::{Error, Metadata};

/// The health of one instance, written in JSON as `"healthy"`, `"unhealthy"` or `"unknown"`.
///
/// # Which instances a balancer picks
///
/// Balancers (and `discover_one`/`select`) pick among the `Healthy` instances of a service. When
/// a service has no `Healthy` instance that can be picked, they pick among its `Unknown` ones
/// instead; they never pick an `Unhealthy` one. This is [`Health::SELECTION_ORDER`].
///
/// So a newly registered instance (health `Unknown` until something checks it) is used as soon
/// as it is registered, yet it takes no traffic away from instances known to be healthy; a
/// health checker that marks it `Healthy` adds it to the rotation, one that marks it `Unhealthy`
/// takes it out. The JSON is unchanged: a new instance is still written `"health":"unknown"`,
/// as the Laravel-Go module writes it.
///
/// ```
/// use waypost_core_types::Health;
///
/// assert_eq!(Health::default(), Health::Unknown);
/// assert_eq!(Health::SELECTION_ORDER, [Health::Healthy, Health::Unknown]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Health {
    /// Passing its checks; balancers pick it first.
    Healthy,
    /// Failing its checks; balancers never pick it.
    Unhealthy,
    /// Not checked yet, or the backend does not say. Balancers pick it only when the service has
    /// no `Healthy` instance to pick.
    #[default]
    Unknown,
}

impl Health {
    /// The health tiers balancers pick from, best first: the `Healthy` instances, and only when
    /// none of them can be picked, the `Unknown` ones. `Unhealthy` is never picked.
    pub const SELECTION_ORDER: [Health; 2] = [Health::Healthy, Health::Unknown];

    /// The tier balancers pick from among `instances` (the first of
    /// [`SELECTION_ORDER`](Self::SELECTION_ORDER) that any of them has), or `None` when none
    /// can be picked (empty, or all `Unhealthy`). Weights are not considered here.
    pub fn selection_tier<'a, I>(instances: I) -> Option<Health>
    where
        I: IntoIterator<Item = &'a ServiceInfo>,
    {
        let mut unknown = false;
        for s in instances {
            match s.health {
                Health::Healthy => return Some(Health::Healthy),
                Health::Unknown => unknown = true,
                Health::Unhealthy => {}
            }
        }
        unknown.then_some(Health::Unknown)
    }

    /// The Go module's string for this state.
    pub fn as_str(&self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
            Health::Unknown => "unknown",
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Health {
    type Err = Error;

    /// Parses the Go strings, case-insensitively; the empty string is `Unknown`.
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().as_str() {
            "healthy" => Ok(Health::Healthy),
            "unhealthy" => Ok(Health::Unhealthy),
            "unknown" | "" => Ok(Health::Unknown),
            other => Err(Error::Codec(format!("unknown health `{other}`"))),
        }
    }
}

impl Serialize for Health {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Health {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s: Option<std::borrow::Cow<'de, str>> = Option::deserialize(deserializer)?;
        // A tolerant reader: a health word we do not know means we do not know the health.
        Ok(s.and_then(|s| s.parse().ok()).unwrap_or(Health::Unknown))
    }
}

/// How an instance is called, written in JSON as `"http"`, `"https"`, `"grpc"` or `"tcp"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Protocol {
    /// Plain HTTP.
    #[default]
    Http,
    /// HTTP over TLS.
    Https,
    /// gRPC.
    Grpc,
    /// Raw TCP.
    Tcp,
}

impl Protocol {
    /// The Go module's string for this protocol.
    pub fn as_str(&self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Https => "https",
            Protocol::Grpc => "grpc",
            Protocol::Tcp => "tcp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protocol {
    type Err = Error;

    /// Parses `http`, `https`, `grpc` or `tcp`, case-insensitively; the empty string is `http`
    /// (the Go module's zero value).
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().as_str() {
            "http" | "" => Ok(Protocol::Http),
            "https" => Ok(Protocol::Https),
            "grpc" => Ok(Protocol::Grpc),
            "tcp" => Ok(Protocol::Tcp),
            other => Err(Error::Codec(format!("unknown protocol `{other}`"))),
        }
    }
}

impl Serialize for Protocol {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s: Option<std::borrow::Cow<'de, str>> = Option::deserialize(deserializer)?;
        s.as_deref()
            .unwrap_or("")
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// The default weight of an instance (weighted balancers give it one share).
pub const DEFAULT_WEIGHT: u32 = 100;

/// One registered instance of a service.
///
/// The JSON form is byte-compatible with the Go module's `ServiceInfo`: the same snake_case keys
/// in the same order, `ttl` in integer nanoseconds, RFC 3339 times, health as a string. `weight`
/// (which Go lacks) is written only when it differs from [`DEFAULT_WEIGHT`], so records written for
/// Go services stay identical. Unknown keys are ignored when reading.
///
/// ```
/// use waypost_core_types::{Health, ServiceInfo};
/// let svc = ServiceInfo::new("user-service-1", "user-service", "10.0.0.5", 8080)
///     .with_version("1.0.0")
///     .with_tag("api")
///     .with_metadata("region", "us-west-1")
///     .with_health(Health::Healthy);
/// svc.validate()?;
/// assert_eq!(svc.endpoint(), "10.0.0.5:8080");
/// # Ok::<(), waypost_core_types::Error>(())
/// ```
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ServiceInfo {
    /// Unique id of the instance.
    pub id: String,
    /// The service name instances share.
    pub name: String,
    /// Free-form version string.
    #[serde(default, deserialize_with = "null_as_default")]
    pub version: String,
    /// Host name or IP address the instance listens on.
    pub address: String,
    /// TCP port, 1–65535.
    pub port: u16,
    /// How to call the instance.
    #[serde(default)]
    pub protocol: Protocol,
    /// Current health.
    #[serde(default)]
    pub health: Health,
    /// Free-form key/value pairs, sorted by key (as Go writes maps); see [`Metadata`].
    #[serde(default, deserialize_with = "null_as_default")]
    pub metadata: Metadata,
    /// Free-form tags.
    #[serde(default, deserialize_with = "null_as_default")]
    pub tags: Vec<String>,
    /// When the instance was first registered.
    #[serde(default)]
    pub created_at: Timestamp,
    /// When the record last changed.
    #[serde(default)]
    pub updated_at: Timestamp,
    /// When the instance was last checked or renewed.
    #[serde(default)]
    pub last_check: Timestamp,
    /// Time to live; zero means the registry's default.
    #[serde(default, with = "go_duration")]
    pub ttl: Duration,
    /// Relative weight for weighted balancers (0 = never picked by them).
    #[serde(default = "default_weight", skip_serializing_if = "is_default_weight")]
    pub weight: u32,
}

impl Clone for ServiceInfo {
    fn clone(&self) -> Self {
        ServiceInfo {
            id: self.id.clone(),
            name: self.name.clone(),
            version: self.version.clone(),
            address: self.address.clone(),
            port: self.port,
            protocol: self.protocol,
            health: self.health,
            metadata: self.metadata.clone(),
            tags: self.tags.clone(),
            created_at: self.created_at,
            updated_at: self.updated_at,
            last_check: self.last_check,
            ttl: self.ttl,
            weight: self.weight,
        }
    }

    /// Copies `source` into `self` reusing `self`'s allocations where the values fit (a
    /// registry overwriting a stored instance with a new registration of it).
    fn clone_from(&mut self, source: &Self) {
        let ServiceInfo {
            id,
            name,
            version,
            address,
            port,
            protocol,
            health,
            metadata,
            tags,
            created_at,
            updated_at,
            last_check,
            ttl,
            weight,
        } = source;
        self.id.clone_from(id);
        self.name.clone_from(name);
        self.version.clone_from(version);
        self.address.clone_from(address);
        self.port = *port;
        self.protocol = *protocol;
        self.health = *health;
        self.metadata.clone_from(metadata);
        self.tags.clone_from(tags);
        self.created_at = *created_at;
        self.updated_at = *updated_at;
        self.last_check = *last_check;
        self.ttl = *ttl;
        self.weight = *weight;
    }
}

fn default_weight() -> u32 {
    DEFAULT_WEIGHT
}

fn is_default_weight(w: &u32) -> bool {
    *w == DEFAULT_WEIGHT
}

fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

impl ServiceInfo {
    /// A new instance with protocol `http`, health `unknown` (picked by balancers while its
    /// service has no healthy instance, see [`Health`]), no TTL (registry default) and the
    /// default weight.
    pub fn new(
        id: impl Into<String>,
        name: impl Into<String>,
        address: impl Into<String>,
        port: u16,
    ) -> Self {
        ServiceInfo {
            id: id.into(),
            name: name.into(),
            version: String::new(),
            address: address.into(),
            port,
            protocol: Protocol::Http,
            health: Health::Unknown,
            metadata: Metadata::new(),
            tags: Vec::new(),
            created_at: Timestamp::zero(),
            updated_at: Timestamp::zero(),
            last_check: Timestamp::zero(),
            ttl: Duration::ZERO,
            weight: DEFAULT_WEIGHT,
        }
    }

    /// Sets the version.
    #[must_use]
    pub fn with_version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// Sets the protocol.
    #[must_use]
    pub fn with_protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// Sets the health.
    #[must_use]
    pub fn with_health(mut self, health: Health) -> Self {
        self.health = health;
        self
    }

    /// Adds one metadata pair.
    #[must_use]
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Adds one tag.
    #[must_use]
    pub fn with_tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// Sets the time to live.
    #[must_use]
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets the weight.
    #[must_use]
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Whether the instance is `Healthy` (balancers pick healthy instances first, and `Unknown`
    /// ones only when the service has no healthy instance; see [`Health`]).
    pub fn is_healthy(&self) -> bool {
        self.health == Health::Healthy
    }

    /// `address:port`, with IPv6 addresses in brackets.
    pub fn endpoint(&self) -> String {
        let mut out = String::with_capacity(self.address.len() + 8);
        let _ = self.write_endpoint(&mut out);
        out
    }

    /// Writes [`endpoint`](Self::endpoint) into `out`, for callers that build a larger string
    /// (a URI) and want no separate allocation.
    pub fn write_endpoint<W: fmt::Write + ?Sized>(&self, out: &mut W) -> fmt::Result {
        // Plain pushes, not `write!`: this runs once per request attempt of the service client.
        let bracket = self.address.contains(':') && !self.address.starts_with('[');
        if bracket {
            out.write_char('[')?;
        }
        out.write_str(&self.address)?;
        if bracket {
            out.write_char(']')?;
        }
        out.write_char(':')?;
        let mut digits = [0u8; 5];
        let mut start = digits.len();
        let mut port = self.port;
        loop {
            start -= 1;
            digits[start] = b'0' + (port % 10) as u8;
            port /= 10;
            if port == 0 {
                break;
            }
        }
        digits[start..]
            .iter()
            .try_for_each(|&d| out.write_char(char::from(d)))
    }

    /// Whether every tag in `tags` is present.
    pub fn has_all_tags<S: AsRef<str>>(&self, tags: &[S]) -> bool {
        tags.iter()
            .all(|t| self.tags.iter().any(|own| own == t.as_ref()))
    }

    /// Whether at least one tag in `tags` is present (false for an empty list).
    pub fn has_any_tag<S: AsRef<str>>(&self, tags: &[S]) -> bool {
        tags.iter()
            .any(|t| self.tags.iter().any(|own| own == t.as_ref()))
    }

    /// The Go-compatible JSON encoding.
    ///
    /// # Errors
    /// Only if serialization itself fails, which the types here rule out in practice.
    pub fn to_json(&self) -> Result<String, Error> {
        serde_json::to_string(self).map_err(|e| Error::Codec(e.to_string()))
    }

    /// The Go-compatible JSON encoding, as bytes.
    ///
    /// # Errors
    /// As [`ServiceInfo::to_json`].
    pub fn to_json_vec(&self) -> Result<Vec<u8>, Error> {
        serde_json::to_vec(self).map_err(|e| Error::Codec(e.to_string()))
    }

    /// Decodes the Go-compatible JSON form and validates the result, so that corrupt or foreign
    /// data in a registry never enters a cache.
    ///
    /// # Errors
    /// [`Error::Codec`] for bytes that are not a `ServiceInfo`, [`Error::InvalidInstance`] for one
    /// that fails [`ServiceInfo::validate`].
    pub fn from_json(bytes: &[u8]) -> Result<Self, Error> {
        let info: ServiceInfo =
            serde_json::from_slice(bytes).map_err(|e| Error::Codec(e.to_string()))?;
        info.validate()?;
        Ok(info)
    }

    /// Sets the registry-managed times for a register call at `now`: `created_at` is kept from
    /// `previous` (an upsert keeps the original creation time) or set to `now`; `updated_at` and
    /// `last_check` become `now`.
    pub fn stamp(&mut self, now: Timestamp, previous: Option<&ServiceInfo>) {
        self.created_at = match previous {
            Some(prev) if !prev.created_at.is_zero() => prev.created_at,
            _ if !self.created_at.is_zero() && previous.is_none() => self.created_at,
            _ => now,
        };
        self.updated_at = now;
        self.last_check = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_and_protocol_strings() {
        assert_eq!("HEALTHY".parse::<Health>().unwrap(), Health::Healthy);
        assert_eq!("".parse::<Health>().unwrap(), Health::Unknown);
        assert!("sick".parse::<Health>().is_err());
        assert_eq!("grpc".parse::<Protocol>().unwrap(), Protocol::Grpc);
        assert_eq!("".parse::<Protocol>().unwrap(), Protocol::Http);
        assert!("ftp".parse::<Protocol>().is_err());
    }

    #[test]
    fn endpoint_brackets_ipv6() {
        assert_eq!(ServiceInfo::new("a", "b", "::1", 80).endpoint(), "[::1]:80");
        assert_eq!(ServiceInfo::new("a", "b", "h", 80).endpoint(), "h:80");
        assert_eq!(ServiceInfo::new("a", "b", "h", 0).endpoint(), "h:0");
        assert_eq!(ServiceInfo::new("a", "b", "h", 65535).endpoint(), "h:65535");
        assert_eq!(ServiceInfo::new("a", "b", "h", 1000).endpoint(), "h:1000");
        assert_eq!(
            ServiceInfo::new("a", "b", "[::1]", 8).endpoint(),
            "[::1]:8",
            "already bracketed"
        );
    }

    #[test]
    fn tags() {
        let s = ServiceInfo::new("a", "b", "h", 80)
            .with_tag("api")
            .with_tag("user");
        assert!(s.has_all_tags(&["api", "user"]));
        assert!(!s.has_all_tags(&["api", "admin"]));
        assert!(s.has_any_tag(&["admin", "user"]));
        assert!(!s.has_any_tag::<&str>(&[]));
    }

    #[test]
    fn clone_from_copies_every_field() {
        let a = ServiceInfo::new("a", "s", "h1", 1)
            .with_version("1")
            .with_tag("x")
            .with_metadata("k", "v")
            .with_weight(7)
            .with_ttl(Duration::from_secs(3))
            .with_health(Health::Healthy)
            .with_protocol(Protocol::Grpc);
        let mut b = ServiceInfo::new("bb", "ss", "h2", 2)
            .with_tag("y")
            .with_tag("z");
        b.clone_from(&a);
        assert_eq!(b, a);
        assert_eq!(a.clone(), a);
    }

    #[test]
    fn stamp_keeps_creation_time() {
        let t1 = Timestamp::parse("2024-01-01T00:00:00Z").unwrap();
        let t2 = Timestamp::parse("2024-01-02T00:00:00Z").unwrap();
        let mut a = ServiceInfo::new("a", "b", "h", 80);
        a.stamp(t1, None);
        assert_eq!((a.created_at, a.updated_at, a.last_check), (t1, t1, t1));
        let mut b = ServiceInfo::new("a", "b", "h", 80);
        b.stamp(t2, Some(&a));
        assert_eq!((b.created_at, b.updated_at), (t1, t2));
    }
}
