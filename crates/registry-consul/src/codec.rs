//! Mapping between [`ServiceInfo`] and Consul's service definition, `Meta`, `Weights`, `Tags`
//! and check states.
//!
//! Consul has fields for id, name, address, port, tags and weights. Everything else travels in
//! `Meta` under keys starting with `wp-`; user metadata keys are escaped into Consul's key
//! alphabet (`[A-Za-z0-9_-]`) under `wpm-`. Consul's limits (64 pairs, keys ≤ 128 bytes, values
//! ≤ 512 bytes) are checked before anything is sent, with an [`Error::InvalidInstance`] naming
//! what does not fit.
//!
//! One idea in one file: the mapping both ways and its tests (about 400 lines of code).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use waypost_core_types::{Health, Protocol, ServiceInfo, Timestamp, DEFAULT_WEIGHT};

use crate::config::go_duration_string;
use waypost_core_types::{Error, Result};

/// Meta key holding the prefix: marks the service as waypost's and says whose.
pub const META_PREFIX: &str = "wp-prefix";
/// Meta key of the version.
pub const META_VERSION: &str = "wp-version";
/// Meta key of the protocol.
pub const META_PROTOCOL: &str = "wp-protocol";
/// Meta key of the health the owner declared.
pub const META_HEALTH: &str = "wp-health";
/// Meta key of `created_at`.
pub const META_CREATED: &str = "wp-created-at";
/// Meta key of `updated_at`.
pub const META_UPDATED: &str = "wp-updated-at";
/// Meta key of the TTL in nanoseconds.
pub const META_TTL: &str = "wp-ttl";
/// Meta key of the exact weight.
pub const META_WEIGHT: &str = "wp-weight";
/// Prefix of escaped user metadata keys.
pub const META_USER: &str = "wpm-";

const RESERVED_PAIRS: usize = 8;
/// Consul's limits on service `Meta`.
pub const CONSUL_MAX_META_PAIRS: usize = 64;
/// Longest `Meta` key Consul accepts.
pub const CONSUL_MAX_META_KEY: usize = 128;
/// Longest `Meta` value Consul accepts.
pub const CONSUL_MAX_META_VALUE: usize = 512;
/// Most user metadata pairs an instance can carry in Consul.
pub const MAX_USER_METADATA: usize = CONSUL_MAX_META_PAIRS - RESERVED_PAIRS;

/// The check id of an instance's TTL check.
pub fn check_id(service_id: &str) -> String {
    format!("service:{service_id}")
}

/// Escapes a metadata key into `[A-Za-z0-9_-]`: ASCII letters, digits and `_` stay, every other
/// byte becomes `-XX` (upper-case hex).
pub fn escape_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' {
            out.push(b as char);
        } else {
            out.push_str(&format!("-{b:02X}"));
        }
    }
    out
}

/// Reverses [`escape_key`]; `None` for text that is not an escaped key.
pub fn unescape_key(escaped: &str) -> Option<String> {
    let bytes = escaped.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'-' {
            let hex = escaped.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else if b.is_ascii_alphanumeric() || b == b'_' {
            out.push(b);
            i += 1;
        } else {
            return None;
        }
    }
    String::from_utf8(out).ok()
}

/// Consul's check status words.
pub(crate) fn status_for(health: Health) -> &'static str {
    // Unhealthy is *warning*, not critical: a critical check is reaped by Consul after
    // DeregisterCriticalServiceAfter, and an instance marked unhealthy must stay registered.
    match health {
        Health::Healthy => "passing",
        Health::Unknown | Health::Unhealthy => "warning",
    }
}

/// The TTL endpoint (`pass`/`warn`) that keeps `health`.
pub(crate) fn ttl_endpoint_for(health: Health) -> &'static str {
    match health {
        Health::Healthy => "pass",
        Health::Unknown | Health::Unhealthy => "warn",
    }
}

fn severity(h: Health) -> u8 {
    match h {
        Health::Healthy => 0,
        Health::Unknown => 1,
        Health::Unhealthy => 2,
    }
}

/// The worse of two health states (healthy < unknown < unhealthy).
pub fn worst(a: Health, b: Health) -> Health {
    if severity(a) >= severity(b) {
        a
    } else {
        b
    }
}

/// Health from check statuses: any `critical` (or unknown word) → unhealthy, else any `warning` →
/// unknown, else (all passing, or no checks) → healthy.
pub fn health_from_checks<'a>(statuses: impl IntoIterator<Item = &'a str>) -> Health {
    let mut h = Health::Healthy;
    for s in statuses {
        let this = match s {
            "passing" => Health::Healthy,
            "warning" => Health::Unknown,
            _ => Health::Unhealthy,
        };
        h = worst(h, this);
    }
    h
}

/// `Weights` of a service definition.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Weights {
    pub(crate) passing: i64,
    #[serde(default)]
    pub(crate) warning: i64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct CheckDef {
    #[serde(rename = "CheckID")]
    pub(crate) check_id: String,
    pub(crate) name: String,
    pub(crate) status: &'static str,
    pub(crate) notes: String,
    #[serde(rename = "TTL")]
    pub(crate) ttl: String,
    pub(crate) deregister_critical_service_after: String,
}

/// The body of `PUT /v1/agent/service/register`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Registration {
    #[serde(rename = "ID")]
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) tags: Vec<String>,
    pub(crate) address: String,
    pub(crate) port: u16,
    pub(crate) meta: BTreeMap<String, String>,
    pub(crate) weights: Weights,
    pub(crate) check: CheckDef,
}

/// Builds the `Meta` map of an instance.
///
/// # Errors
/// [`Error::InvalidInstance`] when the metadata cannot fit Consul's limits.
pub fn encode_meta(info: &ServiceInfo, prefix: &str) -> Result<BTreeMap<String, String>> {
    let bad = |m: String| Err(Error::InvalidInstance(format!("consul: {m}")));
    if info.metadata.len() > MAX_USER_METADATA {
        return bad(format!(
            "{} metadata pairs; Consul service Meta holds 64 pairs and waypost uses {RESERVED_PAIRS}, \
             so at most {MAX_USER_METADATA} remain",
            info.metadata.len()
        ));
    }
    let mut meta = BTreeMap::new();
    meta.insert(META_PREFIX.to_owned(), prefix.to_owned());
    meta.insert(META_VERSION.to_owned(), info.version.clone());
    meta.insert(META_PROTOCOL.to_owned(), info.protocol.as_str().to_owned());
    meta.insert(META_HEALTH.to_owned(), info.health.as_str().to_owned());
    meta.insert(META_CREATED.to_owned(), info.created_at.to_go_string());
    meta.insert(META_UPDATED.to_owned(), info.updated_at.to_go_string());
    meta.insert(META_TTL.to_owned(), info.ttl.as_nanos().to_string());
    meta.insert(META_WEIGHT.to_owned(), info.weight.to_string());
    for (k, v) in &info.metadata {
        let key = format!("{META_USER}{}", escape_key(k));
        if key.len() > CONSUL_MAX_META_KEY {
            return bad(format!(
                "metadata key `{}` is too long for Consul once escaped ({} bytes, limit \
                 {CONSUL_MAX_META_KEY}); keys of letters, digits and `_` cost one byte each, \
                 others three",
                k.escape_debug(),
                key.len()
            ));
        }
        if v.len() > CONSUL_MAX_META_VALUE {
            return bad(format!(
                "metadata value of `{}` is {} bytes; Consul's limit is {CONSUL_MAX_META_VALUE}",
                k.escape_debug(),
                v.len()
            ));
        }
        meta.insert(key, v.clone());
    }
    Ok(meta)
}

/// Builds the registration body of an instance (already validated and stamped).
pub(crate) fn registration(
    info: &ServiceInfo,
    prefix: &str,
    ttl: Duration,
    deregister_after: Duration,
) -> Result<Registration> {
    let meta = encode_meta(info, prefix)?;
    Ok(Registration {
        id: info.id.clone(),
        name: info.name.clone(),
        tags: info.tags.clone(),
        address: info.address.clone(),
        port: info.port,
        meta,
        weights: Weights {
            passing: i64::from(info.weight.clamp(1, 65_535)),
            warning: 1,
        },
        check: CheckDef {
            check_id: check_id(&info.id),
            name: format!("waypost TTL check of {}", info.id),
            status: status_for(info.health),
            notes: "renewed by the waypost registry that registered the instance".into(),
            ttl: go_duration_string(ttl),
            deregister_critical_service_after: go_duration_string(deregister_after),
        },
    })
}

/// One entry of `GET /v1/health/service/:name`, decoded tolerantly.
#[derive(Debug, Deserialize)]
pub(crate) struct HealthEntry {
    #[serde(rename = "Node", default)]
    node: Option<NodeJ>,
    #[serde(rename = "Service")]
    service: ServiceJ,
    #[serde(rename = "Checks", default)]
    checks: Option<Vec<CheckJ>>,
}

#[derive(Debug, Deserialize)]
struct NodeJ {
    #[serde(rename = "Address", default)]
    address: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ServiceJ {
    #[serde(rename = "ID", default)]
    id: String,
    #[serde(rename = "Service", default)]
    service: String,
    #[serde(rename = "Tags", default)]
    tags: Option<Vec<String>>,
    #[serde(rename = "Address", default)]
    address: Option<String>,
    #[serde(rename = "Port", default)]
    port: Option<i64>,
    #[serde(rename = "Meta", default)]
    meta: Option<BTreeMap<String, String>>,
    #[serde(rename = "Weights", default)]
    weights: Option<Weights>,
}

#[derive(Debug, Deserialize)]
struct CheckJ {
    #[serde(rename = "Status", default)]
    status: String,
}

/// What a catalog entry turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// Registered by waypost under our prefix.
    Ours(ServiceInfo),
    /// Not registered by waypost: read with defaults.
    Foreign(ServiceInfo),
    /// Registered by waypost under another prefix (another namespace): not ours.
    OtherPrefix,
    /// Unusable; the reason is for a warning.
    Invalid(String),
}

fn parse_ts(meta: &BTreeMap<String, String>, key: &str) -> std::result::Result<Timestamp, String> {
    match meta.get(key) {
        None => Ok(Timestamp::zero()),
        Some(v) if v.is_empty() => Ok(Timestamp::zero()),
        Some(v) => Timestamp::parse(v),
    }
}

/// The node of one health entry: `Node.Node` ("" when absent or not a string) and whether the
/// node runs a Consul agent (its checks include `serfHealth`, which only agents have).
pub(crate) fn entry_node(value: &serde_json::Value) -> (String, bool) {
    let name = value
        .get("Node")
        .and_then(|n| n.get("Node"))
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let agent = value
        .get("Checks")
        .and_then(serde_json::Value::as_array)
        .is_some_and(|checks| {
            checks
                .iter()
                .any(|c| c.get("CheckID").and_then(serde_json::Value::as_str) == Some("serfHealth"))
        });
    (name, agent)
}

/// Decodes one health entry (a JSON value, so one odd entry cannot spoil a list).
pub fn decode_entry(value: serde_json::Value, prefix: &str) -> Decoded {
    let entry: HealthEntry = match serde_json::from_value(value) {
        Ok(e) => e,
        Err(e) => {
            return Decoded::Invalid(format!(
                "not a health entry: {}",
                waypost_core_types::quote::quoted_up_to(&e.to_string(), 300)
            ))
        }
    };
    let s = entry.service;
    let checks = entry.checks.unwrap_or_default();
    let check_health = health_from_checks(checks.iter().map(|c| c.status.as_str()));
    let address = match s.address.filter(|a| !a.is_empty()) {
        Some(a) => a,
        None => entry.node.and_then(|n| n.address).unwrap_or_default(),
    };
    let port = match s.port {
        Some(p) if (1..=65_535).contains(&p) => p as u16,
        other => {
            return Decoded::Invalid(format!(
                "service `{}` id `{}` has no usable port ({other:?})",
                waypost_core_types::quote::quoted_up_to(&s.service, 128),
                waypost_core_types::quote::quoted_up_to(&s.id, 256)
            ))
        }
    };
    let meta = s.meta.unwrap_or_default();
    let mut info = ServiceInfo::new(s.id, s.service, address, port);
    info.tags = s.tags.unwrap_or_default();
    let ours = match meta.get(META_PREFIX) {
        None => false,
        Some(p) if p == prefix => true,
        Some(_) => return Decoded::OtherPrefix,
    };
    if !ours {
        info.health = check_health;
        info.weight = s
            .weights
            .map(|w| u32::try_from(w.passing.max(0)).unwrap_or(u32::MAX))
            .map(|p| {
                p.saturating_mul(DEFAULT_WEIGHT)
                    .min(waypost_core_types::validate::MAX_WEIGHT)
            })
            .unwrap_or(DEFAULT_WEIGHT);
        info.metadata = meta.into();
        return match info.validate() {
            Ok(()) => Decoded::Foreign(info),
            Err(e) => Decoded::Invalid(e.to_string()),
        };
    }
    let decoded = (|| -> std::result::Result<ServiceInfo, String> {
        info.version = meta.get(META_VERSION).cloned().unwrap_or_default();
        info.protocol = meta
            .get(META_PROTOCOL)
            .map(|p| p.parse::<Protocol>().map_err(|e| e.to_string()))
            .transpose()?
            .unwrap_or_default();
        let declared = meta
            .get(META_HEALTH)
            .map(|h| h.parse::<Health>().map_err(|e| e.to_string()))
            .transpose()?
            .unwrap_or(Health::Healthy);
        info.health = worst(declared, check_health);
        info.created_at = parse_ts(&meta, META_CREATED)?;
        info.updated_at = parse_ts(&meta, META_UPDATED)?;
        info.last_check = info.updated_at;
        info.ttl = match meta.get(META_TTL) {
            Some(t) => Duration::from_nanos(t.parse::<u64>().map_err(|_| {
                format!(
                    "{META_TTL} `{}` is not a number of nanoseconds",
                    waypost_core_types::quote::quoted_up_to(t, 64)
                )
            })?),
            None => Duration::ZERO,
        };
        info.weight = match meta.get(META_WEIGHT) {
            Some(w) => w.parse().map_err(|_| {
                format!(
                    "{META_WEIGHT} `{}` is not a number",
                    waypost_core_types::quote::quoted_up_to(w, 64)
                )
            })?,
            None => DEFAULT_WEIGHT,
        };
        for (k, v) in &meta {
            if let Some(esc) = k.strip_prefix(META_USER) {
                let key = unescape_key(esc).ok_or_else(|| {
                    format!(
                        "metadata key `{}` is not a waypost-escaped key",
                        waypost_core_types::quote::quoted_up_to(k, 160)
                    )
                })?;
                info.metadata.insert(key, v.clone());
            }
        }
        info.validate().map_err(|e| e.to_string())?;
        Ok(info)
    })();
    match decoded {
        Ok(i) => Decoded::Ours(i),
        Err(e) => Decoded::Invalid(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> ServiceInfo {
        let mut s = ServiceInfo::new("user-1", "user", "10.0.0.5", 8080)
            .with_version("1.2.3")
            .with_protocol(Protocol::Grpc)
            .with_health(Health::Unhealthy)
            .with_tag("api")
            .with_tag("api")
            .with_metadata("region", "us-west-1")
            .with_metadata("odd key/ü-x", "v:al=ue ✓")
            .with_metadata("-", "")
            .with_ttl(Duration::from_millis(1500))
            .with_weight(0);
        s.stamp(
            Timestamp::parse("2024-01-02T03:04:05.123456789+08:00").unwrap(),
            None,
        );
        s
    }

    fn entry(
        meta: &BTreeMap<String, String>,
        status: &str,
        info: &ServiceInfo,
    ) -> serde_json::Value {
        json!({
            "Node": {"Node": "n1", "Address": "10.9.9.9", "Datacenter": "dc1", "Meta": null},
            "Service": {"ID": info.id, "Service": info.name, "Tags": info.tags,
                        "Address": info.address, "Port": info.port, "Meta": meta,
                        "Weights": {"Passing": 1, "Warning": 1}, "Namespace": "x", "Locality": null},
            "Checks": [
                {"CheckID": "serfHealth", "Status": "passing"},
                {"CheckID": format!("service:{}", info.id), "Status": status}
            ]
        })
    }

    #[test]
    fn the_node_of_an_entry_is_read_tolerantly() {
        let s = sample();
        let meta = encode_meta(&s, "p").unwrap();
        assert_eq!(
            entry_node(&entry(&meta, "passing", &s)),
            ("n1".into(), true)
        );
        let external = json!({"Node": {"Node": "ext-1"}, "Service": {}, "Checks": [
            {"CheckID": "service:x", "Status": "passing"}]});
        assert_eq!(entry_node(&external), ("ext-1".into(), false));
        for odd in [
            json!({}),
            json!({"Node": 7}),
            json!({"Node": {"Node": ["x"]}}),
            json!(3),
        ] {
            assert_eq!(entry_node(&odd), (String::new(), false), "{odd}");
        }
    }

    #[test]
    fn key_escaping_round_trips_into_consul_alphabet() {
        for k in [
            "region",
            "odd key/ü-x",
            "-",
            "a_b",
            "consul-reserved",
            "ключ",
        ] {
            let e = escape_key(k);
            assert!(
                e.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
                "{e}"
            );
            assert_eq!(unescape_key(&e).as_deref(), Some(k));
        }
        assert_eq!(escape_key("a-b"), "a-2Db");
        assert_eq!(unescape_key("a-2"), None);
        assert_eq!(unescape_key("a-ZZ"), None);
        assert_eq!(unescape_key("a.b"), None);
    }

    #[test]
    fn round_trip_loses_nothing() {
        let s = sample();
        let meta = encode_meta(&s, "laravel-go/services").unwrap();
        assert!(meta.len() <= CONSUL_MAX_META_PAIRS);
        for (k, v) in &meta {
            assert!(k.len() <= CONSUL_MAX_META_KEY && v.len() <= CONSUL_MAX_META_VALUE);
            assert!(!k.starts_with("consul-"));
        }
        // Unhealthy is kept as a *warning* check, and read back as Unhealthy through Meta.
        let got = decode_entry(entry(&meta, "warning", &s), "laravel-go/services");
        let mut want = s.clone();
        want.last_check = want.updated_at;
        assert_eq!(got, Decoded::Ours(want));
    }

    #[test]
    fn registration_body_has_ttl_check_weights_and_tags() {
        let s = sample().with_weight(250).with_health(Health::Healthy);
        let r = registration(&s, "p", Duration::from_secs(30), Duration::from_secs(60)).unwrap();
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["ID"], "user-1");
        assert_eq!(v["Name"], "user");
        assert_eq!(v["Tags"], json!(["api", "api"]));
        assert_eq!(v["Weights"], json!({"Passing": 250, "Warning": 1}));
        assert_eq!(v["Check"]["CheckID"], "service:user-1");
        assert_eq!(v["Check"]["TTL"], "30s");
        assert_eq!(v["Check"]["Status"], "passing");
        assert_eq!(v["Check"]["DeregisterCriticalServiceAfter"], "60s");
        assert_eq!(v["Meta"]["wp-weight"], "250");
        let r = registration(
            &s.clone().with_weight(10_000_000),
            "p",
            Duration::from_secs(1),
            Duration::from_secs(60),
        );
        assert_eq!(
            r.unwrap().weights.passing,
            65_535,
            "Consul caps Passing at 65535"
        );
    }

    #[test]
    fn what_cannot_fit_is_rejected_clearly() {
        let mut s = sample();
        for i in 0..MAX_USER_METADATA {
            s.metadata.insert(format!("k{i}"), "v".into());
        }
        let e = encode_meta(&s, "p").unwrap_err();
        assert!(
            matches!(&e, Error::InvalidInstance(m) if m.contains("64 pairs")),
            "{e}"
        );
        let s = sample().with_metadata("big", "x".repeat(513));
        let e = encode_meta(&s, "p").unwrap_err();
        assert!(
            matches!(&e, Error::InvalidInstance(m) if m.contains("512")),
            "{e}"
        );
        let s = sample().with_metadata("/".repeat(50), "v");
        let e = encode_meta(&s, "p").unwrap_err();
        assert!(
            matches!(&e, Error::InvalidInstance(m) if m.contains("too long")),
            "{e}"
        );
        let s = sample().with_metadata("k".repeat(124), "v");
        assert!(
            encode_meta(&s, "p").is_ok(),
            "a 124-byte plain key fits in 128 with `wpm-`"
        );
    }

    #[test]
    fn check_states_map_onto_health() {
        assert_eq!(health_from_checks(["passing", "passing"]), Health::Healthy);
        assert_eq!(health_from_checks(["passing", "warning"]), Health::Unknown);
        assert_eq!(
            health_from_checks(["warning", "critical"]),
            Health::Unhealthy
        );
        assert_eq!(health_from_checks(["maintenance"]), Health::Unhealthy);
        assert_eq!(health_from_checks([]), Health::Healthy);
        assert_eq!(status_for(Health::Healthy), "passing");
        assert_eq!(status_for(Health::Unknown), "warning");
        assert_eq!(status_for(Health::Unhealthy), "warning");
        // Our own instance declared healthy whose TTL expired reads as unhealthy.
        let s = sample().with_health(Health::Healthy);
        let meta = encode_meta(&s, "p").unwrap();
        match decode_entry(entry(&meta, "critical", &s), "p") {
            Decoded::Ours(i) => assert_eq!(i.health, Health::Unhealthy),
            other => panic!("{other:?}"),
        }
        match decode_entry(entry(&meta, "passing", &s), "p") {
            Decoded::Ours(i) => assert_eq!(i.health, Health::Healthy),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn foreign_entries_get_defaults_or_are_refused_without_panic() {
        // A service registered by another tool: no Meta, no Address (node address), weights 3.
        let v = json!({"Node": {"Address": "10.1.1.1"},
            "Service": {"ID": "redis-1", "Service": "redis", "Tags": null, "Address": "",
                        "Port": 6379, "Meta": null, "Weights": {"Passing": 3, "Warning": 1}},
            "Checks": [{"Status": "warning"}]});
        match decode_entry(v, "p") {
            Decoded::Foreign(i) => {
                assert_eq!(
                    i.address, "10.1.1.1",
                    "empty Service.Address means the node's"
                );
                assert_eq!(i.port, 6379);
                assert_eq!(i.weight, 300);
                assert_eq!(i.health, Health::Unknown);
                assert!(i.tags.is_empty() && i.version.is_empty());
            }
            other => panic!("{other:?}"),
        }
        let other_prefix = json!({"Service": {"ID": "a", "Service": "a", "Port": 1,
            "Meta": {"wp-prefix": "someone-else"}}});
        assert_eq!(decode_entry(other_prefix, "p"), Decoded::OtherPrefix);
        for bad in [
            json!({"Service": {"ID": "consul", "Service": "consul", "Meta": {}}}),
            json!({"Service": {"ID": "a b", "Service": "x", "Port": 1}}),
            json!({"Service": "nonsense"}),
            json!(42),
            json!({"Service": {"ID": "a", "Service": "a", "Port": 1,
                "Meta": {"wp-prefix": "p", "wp-ttl": "soon"}}}),
            json!({"Service": {"ID": "a", "Service": "a", "Port": 1,
                "Meta": {"wp-prefix": "p", "wpm-a-ZZ": "x"}}}),
            json!({"Service": {"ID": "a", "Service": "a", "Port": 1,
                "Meta": {"wp-prefix": "p", "wp-created-at": "yesterday"}}}),
            json!({"Service": {"ID": "a", "Service": "a", "Port": 70000}}),
        ] {
            assert!(
                matches!(decode_entry(bad.clone(), "p"), Decoded::Invalid(_)),
                "{bad}"
            );
        }
    }
}
