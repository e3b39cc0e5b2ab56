//! Apache Curator's service-discovery record, as Spring Cloud Zookeeper writes it at
//! `/services/<name>/<id>`.
//!
//! The layout is taken from the sources:
//!
//! - `apache/curator` `curator-x-discovery/src/main/java/org/apache/curator/x/discovery/ServiceInstance.java`
//!   and `.../details/OldServiceInstance.java`: the fields `name`, `id`, `address`, `port`,
//!   `sslPort`, `payload`, `registrationTimeUTC`, `serviceType`, `uriSpec`, in that order.
//!   `JsonInstanceSerializer` (`.../details/JsonInstanceSerializer.java`) writes
//!   `OldServiceInstance` by default (`compatibleSerializationMode`), so there is no `enabled`
//!   field; Jackson writes the fields in declaration order and writes `null` for absent ones
//!   (`"sslPort":null`). It ignores unknown fields when reading, and checks that the payload is
//!   of the configured class (`payloadClass.cast`). The payload getter carries
//!   `@JsonTypeInfo(use = CLASS)`, hence `"@class"` as the payload's first key.
//! - `.../ServiceType.java`: `DYNAMIC`, `STATIC`, `PERMANENT`, `DYNAMIC_SEQUENTIAL`.
//! - `.../UriSpec.java`: a spec such as `{scheme}://{address}:{port}` is stored as its parts,
//!   `{"parts":[{"value":"scheme","variable":true},{"value":"://","variable":false},…]}`;
//!   `{scheme}` builds as `https` when `sslPort` is set, `http` otherwise.
//! - `spring-cloud/spring-cloud-zookeeper`
//!   `spring-cloud-zookeeper-discovery/src/main/java/org/springframework/cloud/zookeeper/discovery/ZookeeperInstance.java`:
//!   the payload `{"@class":"org.springframework.cloud.zookeeper.discovery.ZookeeperInstance",
//!   "id":…,"name":…,"metadata":{…}}`.
//! - `.../discovery/ZookeeperServiceInstance.java`: an instance is secure when `sslPort` is set,
//!   and is then called on `sslPort`; its metadata is the payload's `metadata` map.
//! - `.../discovery/ZookeeperDiscoveryProperties.java`: root `/services`, URI spec
//!   `{scheme}://{address}:{port}`.
//! - `.../support/StatusConstants.java`: the metadata key `instance_status` with `UP` or
//!   `OUT_OF_SERVICE`; `.../discovery/ZookeeperServiceInstanceListSupplier.java` serves an
//!   instance whose status is empty (backwards compatibility) or `UP` (ignoring case), and no
//!   other.
//!
//! Spring Cloud has no version, tags, weight or TTL, and its URI spec says nothing about gRPC or
//! TCP: waypost keeps those in the payload's metadata under `waypost.*` keys and strips every
//! `waypost.*` key when reading, so an instance waypost wrote reads back as it was registered.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::quote::quoted_up_to;
use crate::time::parse_duration;
use crate::validate::MAX_METADATA_ENTRIES;
use crate::{Error, Health, Metadata, Protocol, ServiceInfo, Timestamp, DEFAULT_WEIGHT};

use super::{FORMAT_KEY, SHOWN};

/// The payload class Spring Cloud Zookeeper registers and accepts.
pub(super) const PAYLOAD_CLASS: &str =
    "org.springframework.cloud.zookeeper.discovery.ZookeeperInstance";
/// Spring Cloud Zookeeper's status key in the payload metadata (`StatusConstants`).
pub(super) const STATUS_KEY: &str = "instance_status";
const STATUS_UP: &str = "UP";
const STATUS_OUT_OF_SERVICE: &str = "OUT_OF_SERVICE";

/// Every metadata key starting with this is waypost's own and is stripped when reading.
const RESERVED: &str = "waypost.";
const VERSION_KEY: &str = "waypost.version";
const PROTOCOL_KEY: &str = "waypost.protocol";
const TAGS_KEY: &str = "waypost.tags";
const WEIGHT_KEY: &str = "waypost.weight";
const TTL_KEY: &str = "waypost.ttl";

/// Curator's `ServiceType` names; waypost writes `DYNAMIC` (ephemeral nodes).
const SERVICE_TYPES: [&str; 4] = ["DYNAMIC", "STATIC", "PERMANENT", "DYNAMIC_SEQUENTIAL"];

/// Most payload metadata entries read before the record is refused (the instance limit plus
/// room for the status and waypost's own keys).
const MAX_ENTRIES_READ: usize = MAX_METADATA_ENTRIES + 16;

/// Decodes a Curator record at `<prefix>/<name>/<id>`.
pub(super) fn decode(name: &str, id: &str, value: &[u8]) -> Result<ServiceInfo, String> {
    let root: Value = serde_json::from_slice(value)
        .map_err(|e| format!("not JSON: {}", quoted_up_to(&e.to_string(), SHOWN * 2)))?;
    let Value::Object(root) = root else {
        return Err(format!(
            "a Curator record is a JSON object, not {}",
            kind(&root)
        ));
    };
    let rec_name = required_str(&root, "name")?;
    let rec_id = required_str(&root, "id")?;
    if rec_name != name || rec_id != id {
        return Err(format!(
            "it names instance `{}` of `{}`, not `{}` of `{}` as its key does",
            quoted_up_to(rec_id, SHOWN),
            quoted_up_to(rec_name, SHOWN),
            quoted_up_to(id, SHOWN),
            quoted_up_to(name, SHOWN),
        ));
    }
    // Every Curator writer writes both (Jackson writes every field, `null` included); the
    // Laravel-Go JSON has neither, so neither format is taken for the other.
    for key in ["registrationTimeUTC", "serviceType"] {
        if !root.contains_key(key) {
            return Err(format!("`{key}` is missing: not a Curator record"));
        }
    }
    let address = optional_str(&root, "address")?.unwrap_or_default();
    let port = optional_port(&root, "port")?;
    let ssl_port = optional_port(&root, "sslPort")?;
    let registered = registration_time(&root)?;
    if let Some(t) = optional_str(&root, "serviceType")? {
        if !SERVICE_TYPES.contains(&t) {
            return Err(format!(
                "serviceType `{}` is none of {}",
                quoted_up_to(t, SHOWN),
                SERVICE_TYPES.join(", ")
            ));
        }
    }
    let literal_scheme = uri_spec_scheme(root.get("uriSpec"))?;
    let mut metadata = payload_metadata(root.get("payload"))?;

    let health = match metadata.remove(STATUS_KEY) {
        None => Health::Unknown,
        Some(s) if s.trim().is_empty() => Health::Unknown,
        Some(s) if s.trim().eq_ignore_ascii_case(STATUS_UP) => Health::Healthy,
        // `DOWN`, `OUT_OF_SERVICE` and any other status: Spring's load balancer skips it.
        Some(_) => Health::Unhealthy,
    };
    let version = match metadata.remove(VERSION_KEY) {
        Some(v) => v,
        None => metadata.get("version").cloned().unwrap_or_default(),
    };
    let protocol = match metadata.remove(PROTOCOL_KEY) {
        Some(p) => p.parse::<Protocol>().map_err(|_| {
            format!(
                "{PROTOCOL_KEY} `{}` is not a protocol",
                quoted_up_to(&p, SHOWN)
            )
        })?,
        None if ssl_port.is_some() => Protocol::Https,
        None => literal_scheme.unwrap_or(Protocol::Http),
    };
    let tags = match metadata.remove(TAGS_KEY) {
        Some(t) => serde_json::from_str::<Vec<String>>(&t).map_err(|_| {
            format!(
                "{TAGS_KEY} `{}` is not a JSON array of strings",
                quoted_up_to(&t, SHOWN)
            )
        })?,
        None => Vec::new(),
    };
    let weight = match metadata.remove(WEIGHT_KEY) {
        Some(w) => w
            .parse::<u32>()
            .map_err(|_| format!("{WEIGHT_KEY} `{}` is not a weight", quoted_up_to(&w, SHOWN)))?,
        None => DEFAULT_WEIGHT,
    };
    let ttl = match metadata.remove(TTL_KEY) {
        Some(t) => parse_duration(&t).map_err(|e| format!("{TTL_KEY}: {e}"))?,
        None => Duration::ZERO,
    };
    metadata.retain(|k, _| !k.starts_with(RESERVED));

    let Some(port) = ssl_port.or(port) else {
        return Err("it has neither a port nor an sslPort".into());
    };
    let mut info = ServiceInfo::new(id, name, address, port);
    info.version = version;
    info.protocol = protocol;
    info.health = health;
    info.metadata = metadata;
    info.tags = tags;
    info.weight = weight;
    info.ttl = ttl;
    info.created_at = registered;
    info.updated_at = registered;
    info.validate().map_err(|e| e.to_string())?;
    Ok(info)
}

/// Encodes `info` as Curator's `JsonInstanceSerializer` writes a Spring Cloud Zookeeper
/// registration.
pub(super) fn encode(info: &ServiceInfo) -> Result<Vec<u8>, Error> {
    if let Some(key) = info
        .metadata
        .keys()
        .find(|k| k.starts_with(RESERVED) && k.as_str() != FORMAT_KEY)
    {
        return Err(Error::InvalidInstance(format!(
            "metadata key `{}`: keys starting with `{RESERVED}` are reserved in the curator record \
             format",
            quoted_up_to(key, SHOWN)
        )));
    }
    let mut extra: Vec<(&str, String)> = Vec::new();
    match info.health {
        Health::Healthy => extra.push((STATUS_KEY, STATUS_UP.to_owned())),
        Health::Unhealthy => extra.push((STATUS_KEY, STATUS_OUT_OF_SERVICE.to_owned())),
        Health::Unknown => {}
    }
    // Written whenever a reader could otherwise take the version from a `version` entry.
    if !info.version.is_empty() || info.metadata.contains_key("version") {
        extra.push((VERSION_KEY, info.version.clone()));
    }
    if matches!(info.protocol, Protocol::Grpc | Protocol::Tcp) {
        extra.push((PROTOCOL_KEY, info.protocol.as_str().to_owned()));
    }
    if !info.tags.is_empty() {
        let tags = serde_json::to_string(&info.tags).map_err(|e| Error::Codec(e.to_string()))?;
        extra.push((TAGS_KEY, tags));
    }
    if info.weight != DEFAULT_WEIGHT {
        extra.push((WEIGHT_KEY, info.weight.to_string()));
    }
    if !info.ttl.is_zero() {
        extra.push((TTL_KEY, go_duration(info.ttl)));
    }
    let ssl_port = (info.protocol == Protocol::Https).then_some(info.port);
    let record = Record {
        name: &info.name,
        id: &info.id,
        address: &info.address,
        port: info.port,
        ssl_port,
        payload: Payload {
            class: PAYLOAD_CLASS,
            id: &info.id,
            name: &info.name,
            metadata: PayloadMetadata { info, extra },
        },
        registration_time_utc: millis(info.created_at),
        service_type: "DYNAMIC",
        uri_spec: UriSpec {
            parts: DEFAULT_URI_SPEC,
        },
    };
    serde_json::to_vec(&record).map_err(|e| Error::Codec(e.to_string()))
}

/// Field order as Jackson writes Curator's `OldServiceInstance`.
#[derive(Serialize)]
struct Record<'a> {
    name: &'a str,
    id: &'a str,
    address: &'a str,
    port: u16,
    #[serde(rename = "sslPort")]
    ssl_port: Option<u16>,
    payload: Payload<'a>,
    #[serde(rename = "registrationTimeUTC")]
    registration_time_utc: i64,
    #[serde(rename = "serviceType")]
    service_type: &'static str,
    #[serde(rename = "uriSpec")]
    uri_spec: UriSpec,
}

#[derive(Serialize)]
struct Payload<'a> {
    #[serde(rename = "@class")]
    class: &'static str,
    id: &'a str,
    name: &'a str,
    metadata: PayloadMetadata<'a>,
}

/// The instance's metadata (without waypost's read-side mark) and then waypost's own entries.
struct PayloadMetadata<'a> {
    info: &'a ServiceInfo,
    extra: Vec<(&'static str, String)>,
}

impl Serialize for PayloadMetadata<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let own = self
            .info
            .metadata
            .iter()
            .filter(|(k, _)| k.as_str() != FORMAT_KEY && k.as_str() != STATUS_KEY);
        let mut map = s.serialize_map(None)?;
        for (k, v) in own {
            map.serialize_entry(k, v)?;
        }
        for (k, v) in &self.extra {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

#[derive(Serialize)]
struct UriSpec {
    parts: &'static [Part],
}

#[derive(Serialize)]
struct Part {
    value: &'static str,
    variable: bool,
}

/// Spring Cloud Zookeeper's `DEFAULT_URI_SPEC`, `{scheme}://{address}:{port}`, as `UriSpec`
/// splits it.
const DEFAULT_URI_SPEC: &[Part] = &[
    Part {
        value: "scheme",
        variable: true,
    },
    Part {
        value: "://",
        variable: false,
    },
    Part {
        value: "address",
        variable: true,
    },
    Part {
        value: ":",
        variable: false,
    },
    Part {
        value: "port",
        variable: true,
    },
];

/// Milliseconds since the Unix epoch; 0 (Curator's "unset") for the zero time and earlier.
fn millis(t: Timestamp) -> i64 {
    if t.is_zero() {
        return 0;
    }
    t.as_datetime().timestamp_millis().max(0)
}

/// A duration in the Go form [`parse_duration`] reads back exactly.
fn go_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos % 1_000_000_000 == 0 {
        format!("{}s", nanos / 1_000_000_000)
    } else if nanos % 1_000_000 == 0 {
        format!("{}ms", nanos / 1_000_000)
    } else {
        format!("{nanos}ns")
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn required_str<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<&'a str, String> {
    optional_str(obj, key)?.ok_or_else(|| format!("`{key}` is missing"))
}

fn optional_str<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(format!("`{key}` is {}, not a string", kind(other))),
    }
}

/// A port: absent or `null` (Curator's `Integer`), or 1..=65535.
fn optional_port(obj: &Map<String, Value>, key: &str) -> Result<Option<u16>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64().and_then(|p| u16::try_from(p).ok()) {
            Some(p) if p > 0 => Ok(Some(p)),
            _ => Err(format!(
                "`{key}` {} is not between 1 and 65535",
                quoted_up_to(&n.to_string(), SHOWN)
            )),
        },
        Some(other) => Err(format!("`{key}` is {}, not a port number", kind(other))),
    }
}

/// `registrationTimeUTC` (milliseconds since the epoch, Curator's `long`): absent or 0 or less
/// is "unset".
fn registration_time(obj: &Map<String, Value>) -> Result<Timestamp, String> {
    let ms = match obj.get("registrationTimeUTC") {
        None | Some(Value::Null) => return Ok(Timestamp::zero()),
        Some(Value::Number(n)) => n.as_i64().ok_or_else(|| {
            format!(
                "`registrationTimeUTC` {} is not a whole number of milliseconds",
                quoted_up_to(&n.to_string(), SHOWN)
            )
        })?,
        Some(other) => {
            return Err(format!(
                "`registrationTimeUTC` is {}, not a number",
                kind(other)
            ))
        }
    };
    if ms <= 0 {
        return Ok(Timestamp::zero());
    }
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(Timestamp::from)
        .ok_or_else(|| format!("`registrationTimeUTC` {ms} is out of range"))
}

/// The protocol a URI spec names with a literal scheme (`https://{address}:{port}`); `None` for
/// no spec, a `{scheme}` variable, or a scheme waypost has no protocol for.
fn uri_spec_scheme(spec: Option<&Value>) -> Result<Option<Protocol>, String> {
    let spec = match spec {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(spec)) => spec,
        Some(other) => return Err(format!("`uriSpec` is {}, not an object", kind(other))),
    };
    let parts = match spec.get("parts") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(parts)) => parts,
        Some(other) => return Err(format!("`uriSpec.parts` is {}, not an array", kind(other))),
    };
    let mut first = None;
    for part in parts {
        let Value::Object(part) = part else {
            return Err(format!("a `uriSpec` part is {}, not an object", kind(part)));
        };
        let value = optional_str(part, "value")?.unwrap_or_default();
        let variable = match part.get("variable") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(format!(
                    "a `uriSpec` part's `variable` is {}, not a boolean",
                    kind(other)
                ))
            }
        };
        first.get_or_insert((value, variable));
    }
    Ok(match first {
        Some((value, false)) => value
            .split_once("://")
            .and_then(|(scheme, _)| scheme.parse::<Protocol>().ok())
            .filter(|_| !value.starts_with("://")),
        _ => None,
    })
}

/// The payload's metadata: a `ZookeeperInstance` (or no payload, which Curator accepts).
fn payload_metadata(payload: Option<&Value>) -> Result<Metadata, String> {
    let payload = match payload {
        None | Some(Value::Null) => return Ok(Metadata::new()),
        Some(Value::Object(p)) => p,
        Some(other) => return Err(format!("`payload` is {}, not an object", kind(other))),
    };
    match optional_str(payload, "@class")? {
        Some(PAYLOAD_CLASS) => {}
        Some(other) => {
            return Err(format!(
                "the payload is a `{}`, not Spring Cloud Zookeeper's `{PAYLOAD_CLASS}`",
                quoted_up_to(other, SHOWN)
            ))
        }
        None => return Err("the payload has no `@class`".into()),
    }
    let entries = match payload.get("metadata") {
        None | Some(Value::Null) => return Ok(Metadata::new()),
        Some(Value::Object(m)) => m,
        Some(other) => {
            return Err(format!(
                "`payload.metadata` is {}, not an object",
                kind(other)
            ))
        }
    };
    if entries.len() > MAX_ENTRIES_READ {
        return Err(format!(
            "`payload.metadata` has {} entries; at most {MAX_ENTRIES_READ} are read",
            entries.len()
        ));
    }
    let mut metadata = Metadata::new();
    for (k, v) in entries {
        match v {
            Value::String(s) => {
                metadata.insert(k.clone(), s.clone());
            }
            // A Java map may hold a null value: no entry.
            Value::Null => {}
            other => {
                return Err(format!(
                    "`payload.metadata` value of `{}` is {}, not a string",
                    quoted_up_to(k, SHOWN),
                    kind(other)
                ))
            }
        }
    }
    Ok(metadata)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record exactly as Spring Cloud Zookeeper registers it through Curator's
    /// `JsonInstanceSerializer` (field order and the `{scheme}://{address}:{port}` spec as in
    /// `spring-cloud/spring-cloud-zookeeper`
    /// `spring-cloud-zookeeper-discovery/src/main/java/org/springframework/cloud/zookeeper/serviceregistry/ZookeeperAutoServiceRegistrationAutoConfiguration.java`
    /// and `apache/curator`
    /// `curator-x-discovery/src/main/java/org/apache/curator/x/discovery/details/OldServiceInstance.java`),
    /// with `instance_status` from `StatusConstants` and one user metadata entry.
    pub(crate) const SPRING_JSON: &str = r#"{"name":"cloud-provider-payment","id":"b780fc19-2823-4420-9937-3959de87720b","address":"10.0.0.7","port":8004,"sslPort":null,"payload":{"@class":"org.springframework.cloud.zookeeper.discovery.ZookeeperInstance","id":"application-1","name":"cloud-provider-payment","metadata":{"instance_status":"UP","zone":"eu-1"}},"registrationTimeUTC":1605873188009,"serviceType":"DYNAMIC","uriSpec":{"parts":[{"value":"scheme","variable":true},{"value":"://","variable":false},{"value":"address","variable":true},{"value":":","variable":false},{"value":"port","variable":true}]}}"#;
    const NAME: &str = "cloud-provider-payment";
    const ID: &str = "b780fc19-2823-4420-9937-3959de87720b";

    fn spring(edit: impl FnOnce(&mut Map<String, Value>)) -> Vec<u8> {
        let mut v: Value = serde_json::from_str(SPRING_JSON).unwrap();
        edit(v.as_object_mut().unwrap());
        serde_json::to_vec(&v).unwrap()
    }

    fn payload_meta(root: &mut Map<String, Value>) -> &mut Map<String, Value> {
        root["payload"]["metadata"].as_object_mut().unwrap()
    }

    #[test]
    fn decodes_spring_cloud_zookeeper_json() {
        let info = decode(NAME, ID, SPRING_JSON.as_bytes()).unwrap();
        assert_eq!(info.address, "10.0.0.7");
        assert_eq!(info.port, 8004);
        assert_eq!(info.protocol, Protocol::Http);
        assert_eq!(info.health, Health::Healthy);
        assert_eq!(info.version, "");
        assert_eq!(info.tags, Vec::<String>::new());
        assert_eq!(info.weight, DEFAULT_WEIGHT);
        assert_eq!(info.ttl, Duration::ZERO);
        let meta: Vec<(&str, &str)> = info
            .metadata
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            meta,
            [("zone", "eu-1")],
            "instance_status became the health"
        );
        assert_eq!(info.created_at.to_go_string(), "2020-11-20T11:53:08.009Z");
        assert_eq!(info.updated_at, info.created_at);
    }

    #[test]
    fn spring_rules_for_https_status_and_version() {
        // sslPort set: https on the sslPort (ZookeeperServiceInstance).
        let ssl = spring(|r| {
            r.insert("sslPort".into(), 8443.into());
        });
        let info = decode(NAME, ID, &ssl).unwrap();
        assert_eq!((info.protocol, info.port), (Protocol::Https, 8443));
        // No port at all but an sslPort.
        let only_ssl = spring(|r| {
            r.insert("sslPort".into(), 8443.into());
            r.insert("port".into(), Value::Null);
        });
        assert_eq!(decode(NAME, ID, &only_ssl).unwrap().port, 8443);
        // A literal `https://` scheme in the URI spec.
        let literal = spring(|r| {
            r["uriSpec"]["parts"][0] = serde_json::json!({"value":"https://","variable":false});
        });
        assert_eq!(
            decode(NAME, ID, &literal).unwrap().protocol,
            Protocol::Https
        );
        for (status, health) in [
            (Some("UP"), Health::Healthy),
            (Some("up"), Health::Healthy),
            (Some("DOWN"), Health::Unhealthy),
            (Some("OUT_OF_SERVICE"), Health::Unhealthy),
            (Some("STARTING"), Health::Unhealthy),
            (Some(""), Health::Unknown),
            (None, Health::Unknown),
        ] {
            let bytes = spring(|r| {
                let m = payload_meta(r);
                match status {
                    Some(s) => m.insert(STATUS_KEY.into(), s.into()),
                    None => m.remove(STATUS_KEY),
                };
            });
            let info = decode(NAME, ID, &bytes).unwrap();
            assert_eq!(info.health, health, "{status:?}");
            assert!(!info.metadata.contains_key(STATUS_KEY));
        }
        // A `version` entry (Spring has no version field) is the version, and stays metadata.
        let versioned = spring(|r| {
            payload_meta(r).insert("version".into(), "2.1.0".into());
        });
        let info = decode(NAME, ID, &versioned).unwrap();
        assert_eq!(info.version, "2.1.0");
        assert_eq!(
            info.metadata.get("version").map(String::as_str),
            Some("2.1.0")
        );
        // No payload at all: Curator accepts it (metadata empty, status unknown).
        let bare = spring(|r| {
            r.remove("payload");
        });
        let info = decode(NAME, ID, &bare).unwrap();
        assert!(info.metadata.is_empty());
        assert_eq!(info.health, Health::Unknown);
        // Fields Curator's newer serializer adds, and unknown ones, are ignored.
        let newer = spring(|r| {
            r.insert("enabled".into(), true.into());
            r.insert("somethingElse".into(), serde_json::json!({"x": [1]}));
        });
        assert!(decode(NAME, ID, &newer).is_ok());
    }

    #[test]
    fn encodes_exactly_as_curator_writes() {
        let mut info = ServiceInfo::new("pay-1", "payment", "10.0.0.9", 8080)
            .with_health(Health::Healthy)
            .with_metadata("zone", "eu-1");
        info.created_at = Timestamp::parse("2020-11-20T11:53:08.009Z").unwrap();
        let json = String::from_utf8(encode(&info).unwrap()).unwrap();
        assert_eq!(
            json,
            r#"{"name":"payment","id":"pay-1","address":"10.0.0.9","port":8080,"sslPort":null,"payload":{"@class":"org.springframework.cloud.zookeeper.discovery.ZookeeperInstance","id":"pay-1","name":"payment","metadata":{"zone":"eu-1","instance_status":"UP"}},"registrationTimeUTC":1605873188009,"serviceType":"DYNAMIC","uriSpec":{"parts":[{"value":"scheme","variable":true},{"value":"://","variable":false},{"value":"address","variable":true},{"value":":","variable":false},{"value":"port","variable":true}]}}"#
        );

        // Everything Curator has no field for, under `waypost.*`; https as sslPort.
        let full = info
            .clone()
            .with_version("1.2.0")
            .with_protocol(Protocol::Https)
            .with_health(Health::Unhealthy)
            .with_tag("api")
            .with_tag("a,b")
            .with_weight(7)
            .with_ttl(Duration::from_millis(1500));
        let json = String::from_utf8(encode(&full).unwrap()).unwrap();
        assert_eq!(
            json,
            r#"{"name":"payment","id":"pay-1","address":"10.0.0.9","port":8080,"sslPort":8080,"payload":{"@class":"org.springframework.cloud.zookeeper.discovery.ZookeeperInstance","id":"pay-1","name":"payment","metadata":{"zone":"eu-1","instance_status":"OUT_OF_SERVICE","waypost.version":"1.2.0","waypost.tags":"[\"api\",\"a,b\"]","waypost.weight":"7","waypost.ttl":"1500ms"}},"registrationTimeUTC":1605873188009,"serviceType":"DYNAMIC","uriSpec":{"parts":[{"value":"scheme","variable":true},{"value":"://","variable":false},{"value":"address","variable":true},{"value":":","variable":false},{"value":"port","variable":true}]}}"#
        );
        let grpc = info.clone().with_protocol(Protocol::Grpc);
        let json = String::from_utf8(encode(&grpc).unwrap()).unwrap();
        assert!(
            json.contains(r#""sslPort":null"#) && json.contains(r#""waypost.protocol":"grpc""#),
            "{json}"
        );
    }

    #[test]
    fn round_trips_every_waypost_field() {
        let mut cases = vec![ServiceInfo::new("a-1", "a", "127.0.0.1", 1)];
        for protocol in [
            Protocol::Http,
            Protocol::Https,
            Protocol::Grpc,
            Protocol::Tcp,
        ] {
            for health in [Health::Healthy, Health::Unhealthy, Health::Unknown] {
                cases.push(
                    ServiceInfo::new("a-2", "a", "::1", 65535)
                        .with_version("3.0.0-rc.1")
                        .with_protocol(protocol)
                        .with_health(health)
                        .with_metadata("env", "prod")
                        .with_metadata("empty", "")
                        .with_tag("x")
                        .with_tag("y z")
                        .with_weight(0)
                        .with_ttl(Duration::from_nanos(1_000_000_001)),
                );
            }
        }
        // A `version` entry with no version, and one beside a different version.
        cases.push(ServiceInfo::new("a-3", "a", "h", 80).with_metadata("version", "9"));
        cases.push(
            ServiceInfo::new("a-4", "a", "h", 80)
                .with_version("1")
                .with_metadata("version", "9"),
        );
        for mut info in cases {
            info.created_at = Timestamp::parse("2024-05-01T10:00:00.123Z").unwrap();
            info.updated_at = info.created_at;
            let bytes = encode(&info).unwrap();
            let back = decode(&info.name, &info.id, &bytes).unwrap();
            assert_eq!(back, info, "{}", String::from_utf8_lossy(&bytes));
        }
    }

    #[test]
    fn encode_refuses_reserved_keys_and_drops_the_read_mark() {
        let info = ServiceInfo::new("a-1", "a", "h", 80).with_metadata("waypost.weight", "1");
        assert!(matches!(encode(&info), Err(Error::InvalidInstance(_))));
        let marked = ServiceInfo::new("a-1", "a", "h", 80)
            .with_metadata(FORMAT_KEY, "curator")
            .with_metadata(STATUS_KEY, "UP");
        let json = String::from_utf8(encode(&marked).unwrap()).unwrap();
        assert!(json.contains(r#""metadata":{}"#), "{json}");
    }

    #[test]
    fn rejects_garbage_with_bounded_reasons() {
        let long = "x".repeat(100_000);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"".to_vec(), "not JSON"),
            (b"\x00\xff".to_vec(), "not JSON"),
            (b"[1,2]".to_vec(), "not an array"),
            (b"{}".to_vec(), "`name` is missing"),
            (
                spring(|r| {
                    r.remove("id");
                }),
                "`id` is missing",
            ),
            (
                spring(|r| {
                    r.remove("serviceType");
                }),
                "`serviceType` is missing",
            ),
            (
                spring(|r| {
                    r.remove("registrationTimeUTC");
                }),
                "`registrationTimeUTC` is missing",
            ),
            (
                spring(|r| {
                    r.insert("name".into(), 5.into());
                }),
                "`name` is a number",
            ),
            (
                spring(|r| {
                    r.insert("id".into(), "other".into());
                }),
                "not `b780fc19",
            ),
            (
                spring(|r| {
                    r.insert("port".into(), 0.into());
                }),
                "`port` 0 is not between",
            ),
            (
                spring(|r| {
                    r.insert("port".into(), (-1).into());
                }),
                "`port` -1",
            ),
            (
                spring(|r| {
                    r.insert("port".into(), 65536.into());
                }),
                "`port` 65536",
            ),
            (
                spring(|r| {
                    r.insert("port".into(), 1.5.into());
                }),
                "`port` 1.5",
            ),
            (
                spring(|r| {
                    r.insert("port".into(), "8080".into());
                }),
                "not a port number",
            ),
            (
                spring(|r| {
                    r.insert("port".into(), Value::Null);
                }),
                "neither a port",
            ),
            (
                spring(|r| {
                    r.insert("sslPort".into(), u64::MAX.into());
                }),
                "`sslPort` 18446744073709551615",
            ),
            (
                SPRING_JSON
                    .replace(r#""port":8004"#, r#""port":123456789012345678901234567890"#)
                    .into_bytes(),
                "`port` 1.2345678901234568e+29",
            ),
            (
                SPRING_JSON
                    .replace(r#""port":8004"#, r#""port":1e400"#)
                    .into_bytes(),
                "not JSON",
            ),
            (
                spring(|r| {
                    r.insert("address".into(), Value::Null);
                }),
                "address",
            ),
            (
                spring(|r| {
                    r.insert("address".into(), long.clone().into());
                }),
                "address",
            ),
            (
                spring(|r| {
                    r.insert("registrationTimeUTC".into(), "yesterday".into());
                }),
                "not a number",
            ),
            (
                spring(|r| {
                    r.insert("registrationTimeUTC".into(), i64::MAX.into());
                }),
                "out of range",
            ),
            (
                spring(|r| {
                    r.insert("registrationTimeUTC".into(), 1e300.into());
                }),
                "not a whole number",
            ),
            (
                spring(|r| {
                    r.insert("serviceType".into(), "EPHEMERAL".into());
                }),
                "serviceType `EPHEMERAL`",
            ),
            (
                spring(|r| {
                    r.insert("uriSpec".into(), "{scheme}".into());
                }),
                "`uriSpec` is a string",
            ),
            (
                spring(|r| {
                    r["uriSpec"]["parts"][0]["variable"] = "yes".into();
                }),
                "`variable` is a string",
            ),
            (
                spring(|r| {
                    r.insert("payload".into(), "x".into());
                }),
                "`payload` is a string",
            ),
            (
                spring(|r| {
                    r["payload"]["@class"] = "com.example.Other".into();
                }),
                "payload is a `com.example.Other`",
            ),
            (
                spring(|r| {
                    r["payload"].as_object_mut().unwrap().remove("@class");
                }),
                "no `@class`",
            ),
            (
                spring(|r| {
                    r["payload"]["metadata"] = serde_json::json!([1]);
                }),
                "`payload.metadata` is an array",
            ),
            (
                spring(|r| {
                    payload_meta(r).insert("n".into(), 1.into());
                }),
                "value of `n` is a number",
            ),
            (
                spring(|r| {
                    payload_meta(r).insert(TAGS_KEY.into(), "api".into());
                }),
                "waypost.tags",
            ),
            (
                spring(|r| {
                    payload_meta(r).insert(WEIGHT_KEY.into(), "-1".into());
                }),
                "waypost.weight",
            ),
            (
                spring(|r| {
                    payload_meta(r).insert(WEIGHT_KEY.into(), "99999999999".into());
                }),
                "waypost.weight",
            ),
            (
                spring(|r| {
                    payload_meta(r).insert(TTL_KEY.into(), "forever".into());
                }),
                "waypost.ttl",
            ),
            (
                spring(|r| {
                    payload_meta(r).insert(PROTOCOL_KEY.into(), "ftp".into());
                }),
                "waypost.protocol",
            ),
            (
                spring(|r| {
                    let m = payload_meta(r);
                    for i in 0..MAX_ENTRIES_READ + 1 {
                        m.insert(format!("k{i}"), "v".into());
                    }
                }),
                "entries",
            ),
            (
                spring(|r| {
                    payload_meta(r).insert(long.clone(), "v".into());
                }),
                "metadata key",
            ),
        ];
        for (bytes, want) in cases {
            let err = decode(NAME, ID, &bytes)
                .expect_err(&String::from_utf8_lossy(&bytes[..bytes.len().min(300)]));
            assert!(err.contains(want), "want {want:?} in {err}");
            assert!(err.len() < 600, "bounded: {} bytes", err.len());
        }
        // Hostile text in a reason is escaped.
        let evil = spring(|r| {
            r["payload"]["@class"] = "a\u{1b}[2J\u{202e}".into();
        });
        let err = decode(NAME, ID, &evil).unwrap_err();
        assert!(
            !err.contains('\u{1b}') && !err.contains('\u{202e}'),
            "{err}"
        );
        // A deeply nested document is refused by the parser, not a stack overflow.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(decode(NAME, ID, deep.as_bytes()).is_err());
    }

    #[test]
    fn waypost_keys_are_stripped_when_reading() {
        let bytes = spring(|r| {
            payload_meta(r).insert("waypost.unknown".into(), "x".into());
            payload_meta(r).insert(FORMAT_KEY.into(), "forged".into());
        });
        let info = decode(NAME, ID, &bytes).unwrap();
        assert!(info.metadata.keys().all(|k| !k.starts_with(RESERVED)));
    }
}
