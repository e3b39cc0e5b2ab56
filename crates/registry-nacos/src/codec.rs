//! [`ServiceInfo`] ↔ Nacos instance.
//!
//! Nacos has fields for the address (`ip`, `port`), `weight` (a float, 1.0 by default),
//! `healthy`, `enabled`, `ephemeral`, `clusterName` and string `metadata`. Everything else of a
//! `ServiceInfo` travels in metadata under the reserved prefix `waypost.`, so a round trip through
//! Nacos loses nothing:
//!
//! | `ServiceInfo` | Nacos |
//! |---|---|
//! | `id` | metadata `waypost.id` (Nacos itself keys instances by ip/port/cluster) |
//! | `name` | the service name |
//! | `address`, `port` | `ip`, `port` |
//! | `weight` (100 = one share) | `weight` = weight / 100, and metadata `waypost.weight` (exact) |
//! | `health` | metadata `waypost.health`; `healthy` and `enabled` are registered `true` (the instance is alive while its connection is: some Nacos-compatible servers drop `healthy = false` registrations from their answers). Reading, Nacos' `enabled = false` or `healthy = false` (set by the server or an operator) wins, else the stored word |
//! | `version`, `protocol`, `ttl` (ns) | metadata `waypost.version`, `waypost.protocol`, `waypost.ttl` |
//! | `tags` | metadata `waypost.tags` (a JSON array) |
//! | `created_at`, `updated_at`, `last_check` | metadata `waypost.created_at`, … (RFC 3339) |
//! | `metadata` | metadata; a user key that itself starts with `waypost.` is stored as `waypost.user.<key>` |
//!
//! Next to these, a waypost instance carries the plain keys other Nacos clients read (`version`,
//! `secure` for https, `tags`), listed in `waypost.plain` so that they are not read back as
//! metadata; see the [`conventions` module](crate::conventions) for those keys, who writes
//! them, and the rules for reading them.
//!
//! Instances registered by other Nacos clients (no `waypost.id`) get the id `ip:port` (plus
//! `@cluster` outside the default cluster); their version, protocol and tags come from the plain
//! keys (`version`; `protocol`, `kind`, `secure`; `tags`), they keep every metadata key, and they
//! are `Healthy` when Nacos says healthy and enabled.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use nacos_sdk::api::naming::ServiceInstance;
use waypost_core_types::quote::quoted;
use waypost_core_types::{Health, Protocol, ServiceInfo, Timestamp, DEFAULT_WEIGHT};

use crate::config::DEFAULT_CLUSTER;
use crate::conventions;

/// Prefix of every metadata key this crate owns.
pub const META_PREFIX: &str = "waypost.";
/// Metadata key of the instance id.
pub const META_ID: &str = "waypost.id";
const META_VERSION: &str = "waypost.version";
const META_PROTOCOL: &str = "waypost.protocol";
const META_HEALTH: &str = "waypost.health";
const META_TAGS: &str = "waypost.tags";
const META_CREATED: &str = "waypost.created_at";
const META_UPDATED: &str = "waypost.updated_at";
const META_CHECKED: &str = "waypost.last_check";
const META_TTL: &str = "waypost.ttl";
const META_WEIGHT: &str = "waypost.weight";
const META_USER: &str = "waypost.user.";

/// The Nacos instance for `s`, in `cluster`.
pub(crate) fn to_instance(s: &ServiceInfo, cluster: &str) -> ServiceInstance {
    let mut md: HashMap<String, String> = HashMap::with_capacity(s.metadata.len() + 15);
    for (k, v) in &s.metadata {
        let key = if k.starts_with(META_PREFIX) {
            format!("{META_USER}{k}")
        } else {
            k.clone()
        };
        md.insert(key, v.clone());
    }
    md.insert(META_ID.into(), s.id.clone());
    md.insert(META_VERSION.into(), s.version.clone());
    md.insert(META_PROTOCOL.into(), s.protocol.as_str().into());
    md.insert(META_HEALTH.into(), s.health.as_str().into());
    md.insert(
        META_TAGS.into(),
        serde_json::to_string(&s.tags).unwrap_or_else(|_| "[]".into()),
    );
    md.insert(META_CREATED.into(), s.created_at.to_go_string());
    md.insert(META_UPDATED.into(), s.updated_at.to_go_string());
    md.insert(META_CHECKED.into(), s.last_check.to_go_string());
    md.insert(META_TTL.into(), s.ttl.as_nanos().to_string());
    md.insert(META_WEIGHT.into(), s.weight.to_string());
    conventions::write_plain(s, &mut md);
    ServiceInstance {
        instance_id: None,
        ip: s.address.clone(),
        port: i32::from(s.port),
        weight: f64::from(s.weight) / f64::from(DEFAULT_WEIGHT),
        // Always `true`: the instance is alive while its connection is. Nacos-compatible servers
        // treat `healthy = false` registrations inconsistently (rnacos may drop them from query
        // answers), so our own health travels in `waypost.health`.
        healthy: true,
        enabled: true,
        ephemeral: true,
        cluster_name: Some(cluster.to_owned()),
        service_name: Some(s.name.clone()),
        metadata: md,
    }
}

/// The `ServiceInfo` for a Nacos instance of service `name`.
///
/// # Errors
/// A message when the instance cannot be represented (a bad port, an invalid id, …); the caller
/// skips it with a warning.
pub(crate) fn from_instance(inst: &ServiceInstance, name: &str) -> Result<ServiceInfo, String> {
    let md = &inst.metadata;
    let port = u16::try_from(inst.port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("port {} out of range", inst.port))?;
    let cluster = inst
        .cluster_name
        .as_deref()
        .filter(|c| !c.is_empty())
        .unwrap_or(DEFAULT_CLUSTER);
    let ours = md.get(META_ID).filter(|id| !id.is_empty());
    let id = match ours {
        Some(id) => id.clone(),
        None => foreign_id(&inst.ip, port, cluster),
    };
    let mut s = ServiceInfo::new(id, name, inst.ip.clone(), port);
    // Our own keys win; the plain keys of other clients fill what they do not say.
    match md.get(META_VERSION) {
        Some(v) => s.version.clone_from(v),
        None => s.version = conventions::plain_version(md).unwrap_or_default(),
    }
    s.protocol = match md.get(META_PROTOCOL) {
        Some(p) => p.parse().unwrap_or(Protocol::Http),
        None => conventions::plain_protocol(md),
    };
    let stored: Option<Health> = md.get(META_HEALTH).and_then(|h| h.parse().ok());
    s.health = decode_health(inst.healthy, inst.enabled, stored);
    match md.get(META_TAGS) {
        Some(tags) => {
            s.tags = serde_json::from_str(tags).map_err(|e| format!("bad {META_TAGS}: {e}"))?;
        }
        None => {
            if let Some(tags) = md.get(conventions::TAGS) {
                s.tags = conventions::parse_tags(tags);
            }
        }
    }
    let time = |key: &str| -> Result<Timestamp, String> {
        md.get(key)
            .map(|t| Timestamp::parse(t))
            .transpose()
            .map(Option::unwrap_or_default)
    };
    s.created_at = time(META_CREATED)?;
    s.updated_at = time(META_UPDATED)?;
    s.last_check = time(META_CHECKED)?;
    if let Some(ttl) = md.get(META_TTL) {
        let nanos: u64 = ttl
            .parse()
            .map_err(|_| format!("bad {META_TTL} `{}`", quoted(ttl)))?;
        s.ttl = Duration::from_nanos(nanos);
    }
    s.weight = decode_weight(
        inst.weight,
        md.get(META_WEIGHT).and_then(|w| w.parse().ok()),
    );
    let mut user = BTreeMap::new();
    for (k, v) in md {
        if let Some(orig) = k.strip_prefix(META_USER) {
            user.insert(orig.to_owned(), v.clone());
        } else if !k.starts_with(META_PREFIX)
            && (ours.is_none() || !conventions::added_by_us(md, k))
        {
            user.insert(k.clone(), v.clone());
        }
    }
    s.metadata = user.into();
    s.validate().map_err(|e| e.to_string())?;
    Ok(s)
}

/// The id given to an instance registered by another Nacos client.
pub(crate) fn foreign_id(ip: &str, port: u16, cluster: &str) -> String {
    if cluster == DEFAULT_CLUSTER {
        format!("{ip}:{port}")
    } else {
        format!("{ip}:{port}@{cluster}")
    }
}

/// Nacos `healthy`/`enabled` (and the health word the registering client stored) → [`Health`].
pub(crate) fn decode_health(healthy: bool, enabled: bool, stored: Option<Health>) -> Health {
    match (enabled, healthy, stored) {
        // Nacos took it out of service, or its health check failed: Nacos wins.
        (false, _, _) => Health::Unhealthy,
        (true, false, Some(Health::Unknown)) => Health::Unknown,
        (true, false, _) => Health::Unhealthy,
        // Nacos says healthy (some servers keep every ephemeral instance healthy): the
        // registering client's word, when it left one.
        (true, true, Some(h)) => h,
        (true, true, None) => Health::Healthy,
    }
}

/// Nacos' float weight (and our exact copy) → our integer weight. The exact copy wins when it
/// agrees with the float (servers may keep the float as `f32`); otherwise someone changed the
/// weight in Nacos and the float wins.
pub(crate) fn decode_weight(nacos: f64, exact: Option<u32>) -> u32 {
    let from_float = || {
        let w = (nacos * f64::from(DEFAULT_WEIGHT)).round();
        if w.is_finite() && w >= 0.0 {
            w.min(f64::from(u32::MAX)) as u32
        } else {
            DEFAULT_WEIGHT
        }
    };
    match exact {
        Some(w)
            if (f64::from(w) / f64::from(DEFAULT_WEIGHT) - nacos).abs()
                <= 1e-3_f64.max(nacos.abs() * 1e-6) =>
        {
            w
        }
        _ => from_float(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> ServiceInfo {
        let mut s = ServiceInfo::new("user-1", "user-service", "10.0.0.5", 8080)
            .with_version("1.2.3")
            .with_protocol(Protocol::Grpc)
            .with_health(Health::Healthy)
            .with_metadata("region", "eu")
            .with_metadata("waypost.id", "user-key-that-looks-reserved")
            .with_tag("api")
            .with_tag("v1")
            .with_ttl(Duration::from_millis(1500))
            .with_weight(123_457);
        s.stamp(
            Timestamp::parse("2024-01-15T10:30:00.123456789Z").unwrap(),
            None,
        );
        s.last_check = Timestamp::parse("2024-01-15T10:31:00+08:00").unwrap();
        s
    }

    #[test]
    fn round_trip_loses_nothing() {
        let s = full();
        let inst = to_instance(&s, "DEFAULT");
        assert_eq!(inst.ip, "10.0.0.5");
        assert_eq!(inst.port, 8080);
        assert!(inst.healthy && inst.enabled && inst.ephemeral);
        assert_eq!(inst.metadata["waypost.health"], "healthy");
        assert_eq!(inst.cluster_name.as_deref(), Some("DEFAULT"));
        assert!((inst.weight - 1234.57).abs() < 1e-9);
        assert_eq!(inst.metadata["region"], "eu");
        assert_eq!(inst.metadata[META_ID], "user-1");
        assert_eq!(
            inst.metadata["waypost.user.waypost.id"],
            "user-key-that-looks-reserved"
        );
        let back = from_instance(&inst, "user-service").unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn weight_survives_a_server_that_keeps_f32() {
        let s = full();
        let mut inst = to_instance(&s, "DEFAULT");
        inst.weight = f64::from(inst.weight as f32);
        assert_eq!(
            from_instance(&inst, "user-service").unwrap().weight,
            123_457
        );
        // Changed in the Nacos console: the float wins.
        inst.weight = 2.5;
        assert_eq!(from_instance(&inst, "user-service").unwrap().weight, 250);
        assert_eq!(decode_weight(1.0, None), 100);
        assert_eq!(decode_weight(0.0, Some(0)), 0);
        assert_eq!(decode_weight(f64::NAN, None), 100);
    }

    #[test]
    fn health_mapping() {
        for h in [Health::Healthy, Health::Unhealthy, Health::Unknown] {
            let s = full().with_health(h);
            let inst = to_instance(&s, "DEFAULT");
            assert!(inst.healthy && inst.enabled, "{h}: registered alive");
            assert_eq!(inst.metadata[META_HEALTH], h.as_str());
            assert_eq!(from_instance(&inst, "user-service").unwrap().health, h);
        }
        // Nacos disabled the instance: unhealthy whatever we stored.
        assert_eq!(
            decode_health(true, false, Some(Health::Healthy)),
            Health::Unhealthy
        );
        // Nacos marked it unhealthy.
        assert_eq!(
            decode_health(false, true, Some(Health::Healthy)),
            Health::Unhealthy
        );
        // A server that keeps every ephemeral instance healthy: the stored word wins.
        assert_eq!(
            decode_health(true, true, Some(Health::Unknown)),
            Health::Unknown
        );
        assert_eq!(
            decode_health(true, true, Some(Health::Unhealthy)),
            Health::Unhealthy
        );
        // Foreign instances.
        assert_eq!(decode_health(true, true, None), Health::Healthy);
        assert_eq!(decode_health(false, true, None), Health::Unhealthy);
    }

    #[test]
    fn foreign_instances_get_an_address_id() {
        let mut md = HashMap::new();
        md.insert("version".to_owned(), "3.0".to_owned());
        md.insert("protocol".to_owned(), "grpc".to_owned());
        md.insert("k".to_owned(), "v".to_owned());
        let inst = ServiceInstance {
            ip: "192.168.1.9".into(),
            port: 9000,
            weight: 2.0,
            metadata: md,
            ..Default::default()
        };
        let s = from_instance(&inst, "java-svc").unwrap();
        assert_eq!(s.id, "192.168.1.9:9000");
        assert_eq!(s.name, "java-svc");
        assert_eq!(s.version, "3.0");
        assert_eq!(s.protocol, Protocol::Grpc);
        assert_eq!(s.health, Health::Healthy);
        assert_eq!(s.weight, 200);
        assert_eq!(s.metadata.get("k").map(String::as_str), Some("v"));
        assert!(s.created_at.is_zero());
        let other_cluster = ServiceInstance {
            cluster_name: Some("BLUE".into()),
            ..inst
        };
        assert_eq!(
            from_instance(&other_cluster, "java-svc").unwrap().id,
            "192.168.1.9:9000@BLUE"
        );
    }

    #[test]
    fn our_instances_carry_the_plain_keys_and_read_back_without_them() {
        let s = full().with_protocol(Protocol::Https);
        let inst = to_instance(&s, "DEFAULT");
        assert_eq!(inst.metadata["version"], "1.2.3");
        assert_eq!(inst.metadata["secure"], "true");
        assert_eq!(inst.metadata["tags"], "api,v1");
        assert_eq!(inst.metadata["waypost.plain"], "version,secure,tags");
        let back = from_instance(&inst, "user-service").unwrap();
        assert_eq!(back, s);
        assert!(back.metadata.get("version").is_none());

        // Plain http writes no `secure`, and nothing else the user did not have.
        let inst = to_instance(&full(), "DEFAULT");
        assert!(!inst.metadata.contains_key("secure"));
        assert_eq!(inst.metadata["waypost.plain"], "version,tags");
        assert_eq!(from_instance(&inst, "user-service").unwrap(), full());
    }

    #[test]
    fn user_metadata_under_a_plain_key_is_kept_as_is() {
        let s = full()
            .with_metadata("version", "the-users-own")
            .with_metadata("secure", "false")
            .with_metadata("tags", "x,y")
            .with_protocol(Protocol::Https);
        let inst = to_instance(&s, "DEFAULT");
        assert_eq!(inst.metadata["version"], "the-users-own");
        assert_eq!(inst.metadata["secure"], "false");
        assert_eq!(inst.metadata["tags"], "x,y");
        assert!(!inst.metadata.contains_key("waypost.plain"));
        let back = from_instance(&inst, "user-service").unwrap();
        assert_eq!(back, s);
        assert_eq!(
            (back.version.as_str(), back.protocol),
            ("1.2.3", Protocol::Https)
        );
    }

    #[test]
    fn our_keys_win_over_plain_keys_on_our_instances() {
        let s = full().with_protocol(Protocol::Grpc);
        let mut inst = to_instance(&s, "DEFAULT");
        // Edited in the Nacos console after registration.
        inst.metadata.insert("version".into(), "9.9.9".into());
        inst.metadata.insert("secure".into(), "true".into());
        inst.metadata.insert("tags".into(), "other".into());
        let back = from_instance(&inst, "user-service").unwrap();
        assert_eq!(
            (back.version.as_str(), back.protocol, &back.tags),
            ("1.2.3", Protocol::Grpc, &s.tags)
        );
        // `version` and `tags` were ours (listed in `waypost.plain`): not metadata. `secure`
        // was not (a gRPC instance writes none): whoever added it, it is metadata now.
        assert_eq!(back, s.with_metadata("secure", "true"));
    }

    fn foreign(pairs: &[(&str, &str)]) -> ServiceInstance {
        ServiceInstance {
            ip: "10.1.2.3".into(),
            port: 8443,
            metadata: pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn spring_cloud_alibaba_secure_instances_are_https() {
        // The keys NacosDiscoveryProperties#init writes (alibaba/spring-cloud-alibaba,
        // spring-cloud-alibaba-starters/spring-cloud-starter-alibaba-nacos-discovery/src/main/
        // java/com/alibaba/cloud/nacos/NacosDiscoveryProperties.java), plus a user's version.
        let inst = foreign(&[
            ("preserved.register.source", "SPRING_CLOUD"),
            ("secure", "true"),
            ("version", "2.1.0"),
            ("tags", "blue, canary"),
        ]);
        let s = from_instance(&inst, "orders").unwrap();
        assert_eq!(s.protocol, Protocol::Https);
        assert_eq!(s.version, "2.1.0");
        assert_eq!(s.tags, ["blue", "canary"]);
        assert_eq!(
            s.metadata.len(),
            4,
            "every foreign key stays: {:?}",
            s.metadata
        );
        assert_eq!(s.metadata.get("secure").map(String::as_str), Some("true"));
    }

    #[test]
    fn garbage_in_plain_keys_never_rejects_a_foreign_instance() {
        // Over the version limit, within the metadata value limit.
        let long = "v".repeat(1000);
        for pairs in [
            vec![("secure", "maybe")],
            vec![("tags", "[1,2,3]")],
            vec![("tags", "{\"not\":\"a list\"}")],
            vec![("tags", "[\"unterminated")],
            vec![("version", long.as_str())],
            vec![("version", "1\u{1b}[31m")],
            vec![("kind", "carrier-pigeon"), ("protocol", "\u{0}")],
        ] {
            let keys: Vec<&str> = pairs.iter().map(|(k, _)| *k).collect();
            let s = from_instance(&foreign(&pairs), "svc")
                .unwrap_or_else(|e| panic!("{keys:?} rejected: {e}"));
            assert_eq!(s.protocol, Protocol::Http, "{keys:?}");
            assert!(s.tags.is_empty(), "{keys:?}");
            assert!(s.version.is_empty(), "{keys:?}");
            assert_eq!(s.metadata.len(), pairs.len(), "{keys:?}: raw values stay");
        }
    }

    #[test]
    fn corrupt_instances_are_rejected_not_panicking() {
        let mut inst = to_instance(&full(), "DEFAULT");
        inst.metadata.insert(META_TAGS.into(), "not json".into());
        assert!(from_instance(&inst, "user-service").is_err());
        let mut inst = to_instance(&full(), "DEFAULT");
        inst.metadata
            .insert(META_CREATED.into(), "yesterday".into());
        assert!(from_instance(&inst, "user-service").is_err());
        let mut inst = to_instance(&full(), "DEFAULT");
        inst.port = 70_000;
        assert!(from_instance(&inst, "user-service").is_err());
        let mut inst = to_instance(&full(), "DEFAULT");
        inst.metadata.insert(META_ID.into(), "bad/id".into());
        assert!(from_instance(&inst, "user-service").is_err());
        let mut inst = to_instance(&full(), "DEFAULT");
        inst.metadata.insert(META_TTL.into(), "-1".into());
        assert!(from_instance(&inst, "user-service").is_err());
    }
}
