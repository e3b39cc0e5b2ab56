//! Origin marks: who a mirrored instance came from, and which source instances a syncer must not
//! mirror.
//!
//! Every mirrored instance carries three metadata keys:
//!
//! | key | value |
//! |---|---|
//! | `waypost.sync.origin` | the registry where the instance was first registered (kept when a mirror is mirrored again, so a chain or ring of syncers never brings it home) |
//! | `waypost.sync.source` | the registry this syncer copied it from: a syncer owns (updates and removes) exactly the target instances whose `source` is its source |
//! | `waypost.sync.hash` | a fingerprint of the mirrored content, so that a restart can tell which target instances are already up to date whatever the target does to other fields |
//!
//! A registry's identity is derived from its URL without credentials: the scheme, the sorted
//! hosts and what selects the data inside the server (etcd/ZooKeeper prefix and chroot, Consul
//! datacenter and prefix, Nacos namespace and group), e.g.
//! `etcd://127.0.0.1:2379/laravel-go/services`. `--source-id`/`--target-id` override it.

use std::time::Duration;

use waypost::core::ServiceInfo;
use waypost::RegistryConfig;

use super::args::PrefixMap;

/// Metadata key: the registry where a mirrored instance was first registered.
pub const META_ORIGIN: &str = "waypost.sync.origin";
/// Metadata key: the registry a syncer copied the instance from (the owner of the mirror).
pub const META_SOURCE: &str = "waypost.sync.source";
/// Metadata key: the fingerprint of the mirrored content.
pub const META_HASH: &str = "waypost.sync.hash";

/// Longest identity kept as is; longer ones are shortened with a fingerprint of the whole (a
/// Consul metadata value holds at most 512 bytes).
pub const MAX_IDENTITY_LEN: usize = 200;

/// The credential-free identity of the registry `config` points at.
#[must_use]
pub fn identity(config: &RegistryConfig) -> String {
    let id = match config {
        RegistryConfig::Etcd(c) => {
            format!("etcd://{}{}", hosts(&c.endpoints), c.normalized_prefix())
        }
        RegistryConfig::Zookeeper(c) => format!(
            "zookeeper://{}{}{}",
            hosts(&c.servers),
            c.chroot.as_deref().map(slash).unwrap_or_default(),
            slash(&c.prefix)
        ),
        RegistryConfig::Consul(c) => format!(
            "consul://{}/{}{}",
            hosts(std::slice::from_ref(&c.address)),
            c.datacenter.as_deref().unwrap_or("-"),
            slash(&c.prefix)
        ),
        RegistryConfig::Nacos(c) => format!(
            "nacos://{}/{}/{}",
            hosts(
                &c.server_addr
                    .split(',')
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            ),
            if c.namespace.is_empty() {
                "public"
            } else {
                c.namespace.as_str()
            },
            c.group
        ),
        // The in-memory registry lives in this process only.
        RegistryConfig::Memory(_) => format!("memory://pid-{}", std::process::id()),
        #[allow(unreachable_patterns)] // every backend is compiled in
        _ => format!("{}://", config.kind()),
    };
    bounded(id)
}

fn slash(path: &str) -> String {
    let trimmed = path.trim_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("/{trimmed}")
    }
}

/// `h1:p1,h2:p2`: schemes and trailing slashes dropped, lowercased, sorted, without duplicates.
fn hosts(list: &[String]) -> String {
    let mut out: Vec<String> = list
        .iter()
        .map(|h| {
            let h = h.trim();
            let h = h.split_once("://").map_or(h, |(_, rest)| rest);
            // Anything before `@` would be credentials.
            let h = h.rsplit_once('@').map_or(h, |(_, host)| host);
            h.trim_end_matches('/').to_ascii_lowercase()
        })
        .filter(|h| !h.is_empty())
        .collect();
    out.sort();
    out.dedup();
    out.join(",")
}

fn bounded(id: String) -> String {
    if id.len() <= MAX_IDENTITY_LEN {
        return id;
    }
    let mut cut = MAX_IDENTITY_LEN - 17;
    while !id.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}~{:016x}", &id[..cut], fnv1a(id.as_bytes(), FNV_OFFSET))
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv1a(bytes: &[u8], mut hash: u64) -> u64 {
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The fingerprint of what a mirror says: every field a user sets (not the timestamps, which
/// the target may rewrite) and the metadata without [`META_HASH`]. 16 hex digits.
#[must_use]
pub fn fingerprint(s: &ServiceInfo) -> String {
    // 0xff never occurs in UTF-8, so it separates fields unambiguously.
    let mut h = FNV_OFFSET;
    let mut field = |bytes: &[u8]| {
        h = fnv1a(bytes, h);
        h = fnv1a(&[0xff], h);
    };
    field(s.id.as_bytes());
    field(s.name.as_bytes());
    field(s.version.as_bytes());
    field(s.address.as_bytes());
    field(&s.port.to_be_bytes());
    field(s.protocol.as_str().as_bytes());
    field(s.health.as_str().as_bytes());
    field(&s.weight.to_be_bytes());
    field(&s.ttl.as_nanos().to_be_bytes());
    for (k, v) in &s.metadata {
        if k != META_HASH {
            field(k.as_bytes());
            field(v.as_bytes());
        }
    }
    field(b"tags");
    for t in &s.tags {
        field(t.as_bytes());
    }
    format!("{h:016x}")
}

/// What a syncer does with one source instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Mirror it as this instance (marks and fingerprint set).
    Mirror(ServiceInfo),
    /// It is a mirror of the target's own instance (or was copied from the target): mirroring
    /// it back would loop.
    FromTarget,
    /// The mirrored form is not a valid instance (e.g. a renamed service name is too long).
    Invalid(String),
}

/// How a syncer turns source instances into mirrors.
#[derive(Debug, Clone)]
pub struct Marks {
    /// The source's identity.
    pub source_id: String,
    /// The target's identity.
    pub target_id: String,
    /// `--prefix-map`.
    pub prefix_map: PrefixMap,
    /// `--ttl`.
    pub ttl: Duration,
}

impl Marks {
    /// The verdict on the source instance `s`.
    #[must_use]
    pub fn judge(&self, s: &ServiceInfo) -> Verdict {
        let origin = s.metadata.get(META_ORIGIN);
        if origin.is_some_and(|o| *o == self.target_id)
            || s.metadata
                .get(META_SOURCE)
                .is_some_and(|o| *o == self.target_id)
        {
            return Verdict::FromTarget;
        }
        let mut m = s.clone();
        m.name = self.prefix_map.map(&s.name);
        m.ttl = self.ttl;
        let origin = origin.cloned().unwrap_or_else(|| self.source_id.clone());
        m.metadata.insert(META_ORIGIN.to_owned(), origin);
        m.metadata
            .insert(META_SOURCE.to_owned(), self.source_id.clone());
        m.metadata.remove(META_HASH);
        let hash = fingerprint(&m);
        m.metadata.insert(META_HASH.to_owned(), hash);
        match m.validate() {
            Ok(()) => Verdict::Mirror(m),
            Err(e) => Verdict::Invalid(e.to_string()),
        }
    }

    /// Whether the target instance `t` is a mirror this syncer owns.
    #[must_use]
    pub fn owns(&self, t: &ServiceInfo) -> bool {
        t.metadata
            .get(META_SOURCE)
            .is_some_and(|s| *s == self.source_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::args::PrefixRule;

    fn marks() -> Marks {
        Marks {
            source_id: "etcd://127.0.0.1:2379/services".into(),
            target_id: "zookeeper://127.0.0.1:2181/services".into(),
            prefix_map: PrefixMap::new(vec![PrefixRule::parse("legacy.=").unwrap()]),
            ttl: Duration::from_secs(15),
        }
    }

    #[test]
    fn identities_carry_no_credentials_and_ignore_host_order() {
        let a = identity(
            &RegistryConfig::from_url("etcd://root:s3cret@h2:2379,h1:2379/apps?format=kratos")
                .unwrap(),
        );
        let b = identity(&RegistryConfig::from_url("etcd://h1:2379,h2:2379/apps").unwrap());
        assert_eq!(a, "etcd://h1:2379,h2:2379/apps");
        assert_eq!(a, b);
        let zk = identity(
            &RegistryConfig::from_url("zookeeper://u:pw@127.0.0.1:2181/laravel-go/services")
                .unwrap(),
        );
        assert_eq!(zk, "zookeeper://127.0.0.1:2181/laravel-go/services");
        let nacos = identity(
            &RegistryConfig::from_url("nacos://nacos:pw@127.0.0.1:8848?namespace=dev&group=G")
                .unwrap(),
        );
        assert_eq!(nacos, "nacos://127.0.0.1:8848/dev/G");
        let consul = identity(&RegistryConfig::from_url("consul://:tok3n@127.0.0.1:8500").unwrap());
        assert!(consul.starts_with("consul://127.0.0.1:8500/-"), "{consul}");
        for id in [&a, &zk, &nacos, &consul] {
            assert!(!id.contains("s3cret") && !id.contains("pw") && !id.contains("tok3n"));
        }
    }

    #[test]
    fn long_identities_are_bounded_and_distinct() {
        let long = |h: &str| format!("etcd://{}/x", h.repeat(100));
        let (a, b) = (bounded(long("a")), bounded(long("b")));
        assert!(a.len() <= MAX_IDENTITY_LEN && b.len() <= MAX_IDENTITY_LEN);
        assert_ne!(a, b);
    }

    #[test]
    fn mirrors_carry_marks_and_keep_the_first_origin() {
        let m = marks();
        let s = ServiceInfo::new("o-1", "legacy.orders", "10.0.0.1", 80).with_metadata("k", "v");
        let Verdict::Mirror(mirror) = m.judge(&s) else {
            panic!("not mirrored")
        };
        assert_eq!(mirror.id, "o-1");
        assert_eq!(mirror.name, "orders");
        assert_eq!(mirror.ttl, Duration::from_secs(15));
        assert_eq!(mirror.metadata[META_ORIGIN], m.source_id);
        assert_eq!(mirror.metadata[META_SOURCE], m.source_id);
        assert_eq!(mirror.metadata[META_HASH], fingerprint(&mirror));
        assert_eq!(mirror.metadata["k"], "v");
        assert!(m.owns(&mirror));

        // A mirror from a third registry keeps its origin when mirrored again.
        let third = s.clone().with_metadata(META_ORIGIN, "consul://c:8500/-");
        let Verdict::Mirror(again) = m.judge(&third) else {
            panic!("not mirrored")
        };
        assert_eq!(again.metadata[META_ORIGIN], "consul://c:8500/-");
        assert_eq!(again.metadata[META_SOURCE], m.source_id);
    }

    #[test]
    fn mirrors_of_the_target_are_refused() {
        let m = marks();
        let back = ServiceInfo::new("x", "s", "h", 1).with_metadata(META_ORIGIN, &m.target_id);
        assert_eq!(m.judge(&back), Verdict::FromTarget);
        let via = ServiceInfo::new("x", "s", "h", 1)
            .with_metadata(META_ORIGIN, "nacos://n:8848/public/DEFAULT_GROUP")
            .with_metadata(META_SOURCE, &m.target_id);
        assert_eq!(m.judge(&via), Verdict::FromTarget);
    }

    #[test]
    fn fingerprints_follow_content_not_timestamps() {
        let a = ServiceInfo::new("i", "s", "h", 1);
        let mut b = a.clone();
        b.updated_at = waypost::core::Timestamp::now();
        assert_eq!(fingerprint(&a), fingerprint(&b));
        for changed in [
            a.clone().with_weight(3),
            a.clone().with_tag("t"),
            a.clone().with_metadata("k", "v"),
            a.clone().with_version("2"),
            a.clone().with_health(waypost::core::Health::Unhealthy),
        ] {
            assert_ne!(fingerprint(&a), fingerprint(&changed));
        }
        // Field boundaries count: ("ab","c") differs from ("a","bc").
        let x = ServiceInfo::new("i", "s", "h", 1).with_metadata("ab", "c");
        let y = ServiceInfo::new("i", "s", "h", 1).with_metadata("a", "bc");
        assert_ne!(fingerprint(&x), fingerprint(&y));
    }

    #[test]
    fn an_invalid_renamed_name_is_refused_not_mirrored() {
        let mut m = marks();
        m.prefix_map = PrefixMap::new(vec![
            PrefixRule::parse(&format!("={}", "x".repeat(120))).unwrap()
        ]);
        let s = ServiceInfo::new("i", "long-service-name", "h", 1);
        assert!(matches!(m.judge(&s), Verdict::Invalid(_)));
    }
}
