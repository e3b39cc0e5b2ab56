//! [`RegistryConfig`]: which backend to use, holding that backend's own config; from code, a
//! config file (serde) or a registry URL.

use std::fmt;
use std::str::FromStr;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use waypost_core_types::{Error, Result};

#[cfg(feature = "consul")]
use waypost_registry_consul::ConsulConfig;
#[cfg(feature = "etcd")]
use waypost_registry_etcd::EtcdConfig;
#[cfg(feature = "memory")]
use waypost_registry_memory::MemoryConfig;
#[cfg(feature = "nacos")]
use waypost_registry_nacos::NacosConfig;
#[cfg(feature = "zookeeper")]
use waypost_registry_zookeeper::ZookeeperConfig;

/// The registry backends, compiled in or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum RegistryType {
    /// The embedded in-memory registry (feature `memory`, on by default).
    #[default]
    Memory,
    /// etcd v3 (feature `etcd`).
    Etcd,
    /// Consul (feature `consul`).
    Consul,
    /// Nacos 2.x (feature `nacos`).
    Nacos,
    /// ZooKeeper (feature `zookeeper`).
    #[serde(alias = "zk")]
    Zookeeper,
}

const TYPE_NAMES: &[&str] = &["memory", "etcd", "consul", "nacos", "zookeeper"];

impl RegistryType {
    /// The name used in configs, URL schemes and feature names.
    pub fn as_str(&self) -> &'static str {
        match self {
            RegistryType::Memory => "memory",
            RegistryType::Etcd => "etcd",
            RegistryType::Consul => "consul",
            RegistryType::Nacos => "nacos",
            RegistryType::Zookeeper => "zookeeper",
        }
    }

    /// Whether this backend is compiled into this build.
    pub fn is_enabled(&self) -> bool {
        match self {
            RegistryType::Memory => cfg!(feature = "memory"),
            RegistryType::Etcd => cfg!(feature = "etcd"),
            RegistryType::Consul => cfg!(feature = "consul"),
            RegistryType::Nacos => cfg!(feature = "nacos"),
            RegistryType::Zookeeper => cfg!(feature = "zookeeper"),
        }
    }

    /// The names its section may have in a Laravel-Go style config file.
    fn section_names(&self) -> &'static [&'static str] {
        match self {
            RegistryType::Memory => &["memory"],
            RegistryType::Etcd => &["etcd"],
            RegistryType::Consul => &["consul"],
            RegistryType::Nacos => &["nacos"],
            RegistryType::Zookeeper => &["zookeeper", "zk"],
        }
    }

    pub(crate) fn not_compiled(&self) -> Error {
        Error::Unsupported(format!(
            "the {self} backend is not compiled into this build; enable the `{self}` feature of \
             the waypost crate"
        ))
    }
}

impl fmt::Display for RegistryType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RegistryType {
    type Err = Error;

    /// `memory` (or `mem`), `etcd`, `consul`, `nacos`, `zookeeper` (or `zk`), in any case.
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "memory" | "mem" => Ok(RegistryType::Memory),
            "etcd" => Ok(RegistryType::Etcd),
            "consul" => Ok(RegistryType::Consul),
            "nacos" => Ok(RegistryType::Nacos),
            "zookeeper" | "zk" => Ok(RegistryType::Zookeeper),
            other => Err(Error::InvalidConfig(format!(
                "unknown registry type `{}` (expected memory, etcd, consul, nacos or zookeeper)",
                other.escape_debug()
            ))),
        }
    }
}

/// Which registry to build, holding that backend's own config (the Laravel-Go module's
/// `RegistryConfig`, without its invalid states: one backend, one config).
///
/// Each variant exists when its feature is on. The configs, their defaults and their validation
/// are the backends' own: [`MemoryConfig`](crate::MemoryConfig),
/// `EtcdConfig`, `ConsulConfig`, `NacosConfig`, `ZookeeperConfig` (re-exported at the crate
/// root with their features).
///
/// # Config files
///
/// Any self-describing serde format (JSON, YAML, TOML, …). The backend's fields sit next to
/// `type`, or, as the Laravel-Go module writes them, in a section named after the backend; a
/// missing section means that backend's defaults, a missing `type` means `memory`. Sections of
/// other backends (the Go module's config has one per backend) are ignored. `zk` is accepted for
/// `zookeeper`, as the type and as the section name.
///
/// ```
/// use waypost::RegistryConfig;
///
/// // The Laravel-Go module's shape:
/// let go: RegistryConfig = serde_json::from_str(r#"{
///     "type": "memory",
///     "memory": { "default_ttl": "30s" }
/// }"#)?;
/// // The tagged shape, which is also what serializing writes:
/// let tagged: RegistryConfig =
///     serde_json::from_str(r#"{ "type": "memory", "default_ttl": "30s" }"#)?;
/// assert_eq!(go, tagged);
/// assert_eq!(
///     serde_json::to_string(&tagged)?,
///     r#"{"type":"memory","cleanup_interval":"1s","default_ttl":"30s","watch_buffer":4096}"#
/// );
/// tagged.validate()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// Serializing writes passwords and tokens as `"[redacted]"`: a saved config never carries a
/// secret (give it again, from the environment or a secret store, before building).
///
/// # Registry URLs
///
/// [`from_url`](Self::from_url) (or `parse()`) looks at the scheme and hands the URL to that
/// backend's own parser; see each config's `FromStr` for its parameters (every field of the
/// config is one).
///
/// | URL | backend |
/// |---|---|
/// | `memory://?cleanup_interval=1s&default_ttl=30s&watch_buffer=4096` (or `mem://`) | in-memory |
/// | `etcd://user:pass@h1:2379,h2:2379/laravel-go/services?ttl=30s&request_timeout=10s` | etcd |
/// | `consul://:TOKEN@localhost:8500/laravel-go/services?datacenter=dc1&scheme=https` | Consul |
/// | `nacos://user:pass@h1:8848,h2:8848?namespace=public&group=DEFAULT_GROUP` | Nacos |
/// | `zookeeper://user:pass@h1:2181,h2:2181/laravel-go/services?session_timeout=10s` (or `zk://`) | ZooKeeper |
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type")]
#[non_exhaustive]
pub enum RegistryConfig {
    /// The in-memory registry.
    #[cfg(feature = "memory")]
    #[serde(rename = "memory")]
    Memory(MemoryConfig),
    /// etcd.
    #[cfg(feature = "etcd")]
    #[serde(rename = "etcd")]
    Etcd(EtcdConfig),
    /// Consul.
    #[cfg(feature = "consul")]
    #[serde(rename = "consul")]
    Consul(ConsulConfig),
    /// Nacos.
    #[cfg(feature = "nacos")]
    #[serde(rename = "nacos")]
    Nacos(NacosConfig),
    /// ZooKeeper.
    #[cfg(feature = "zookeeper")]
    #[serde(rename = "zookeeper")]
    Zookeeper(ZookeeperConfig),
}

/// Runs `$body` with `$c` bound to the backend config inside the place `$config` (`*self`), so
/// that the match compiles with any set of features, none included.
macro_rules! each_backend {
    ($config:expr, |ref $c:ident| $body:expr) => {
        match $config {
            #[cfg(feature = "memory")]
            RegistryConfig::Memory(ref $c) => $body,
            #[cfg(feature = "etcd")]
            RegistryConfig::Etcd(ref $c) => $body,
            #[cfg(feature = "consul")]
            RegistryConfig::Consul(ref $c) => $body,
            #[cfg(feature = "nacos")]
            RegistryConfig::Nacos(ref $c) => $body,
            #[cfg(feature = "zookeeper")]
            RegistryConfig::Zookeeper(ref $c) => $body,
        }
    };
}

impl RegistryConfig {
    /// The in-memory registry with its defaults.
    #[cfg(feature = "memory")]
    pub fn memory() -> Self {
        RegistryConfig::Memory(MemoryConfig::default())
    }

    /// The defaults of the backend `kind`.
    ///
    /// # Errors
    /// [`Error::Unsupported`] when that backend is not compiled in.
    pub fn of(kind: RegistryType) -> Result<Self> {
        match kind {
            #[cfg(feature = "memory")]
            RegistryType::Memory => Ok(RegistryConfig::Memory(MemoryConfig::default())),
            #[cfg(feature = "etcd")]
            RegistryType::Etcd => Ok(RegistryConfig::Etcd(EtcdConfig::default())),
            #[cfg(feature = "consul")]
            RegistryType::Consul => Ok(RegistryConfig::Consul(ConsulConfig::default())),
            #[cfg(feature = "nacos")]
            RegistryType::Nacos => Ok(RegistryConfig::Nacos(NacosConfig::default())),
            #[cfg(feature = "zookeeper")]
            RegistryType::Zookeeper => Ok(RegistryConfig::Zookeeper(ZookeeperConfig::default())),
            #[allow(unreachable_patterns)] // with every backend compiled in
            other => Err(other.not_compiled()),
        }
    }

    /// The backend this config is for.
    pub fn kind(&self) -> RegistryType {
        match *self {
            #[cfg(feature = "memory")]
            RegistryConfig::Memory(_) => RegistryType::Memory,
            #[cfg(feature = "etcd")]
            RegistryConfig::Etcd(_) => RegistryType::Etcd,
            #[cfg(feature = "consul")]
            RegistryConfig::Consul(_) => RegistryType::Consul,
            #[cfg(feature = "nacos")]
            RegistryConfig::Nacos(_) => RegistryType::Nacos,
            #[cfg(feature = "zookeeper")]
            RegistryConfig::Zookeeper(_) => RegistryType::Zookeeper,
        }
    }

    /// Parses a registry URL: the scheme picks the backend, whose own parser reads the rest
    /// (see the table in the type's docs).
    ///
    /// ```
    /// let config = waypost::RegistryConfig::from_url("memory://?default_ttl=30s")?;
    /// assert_eq!(config.kind(), waypost::RegistryType::Memory);
    /// let err = waypost::RegistryConfig::from_url("etdc://admin:pw@h:2379").unwrap_err();
    /// assert_eq!(
    ///     err.to_string(),
    ///     "invalid configuration: registry URL: unknown scheme `etdc` \
    ///      (expected memory, etcd, consul, nacos or zookeeper)"
    /// );
    /// # Ok::<(), waypost::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] saying what is wrong with the URL (never quoting its password);
    /// [`Error::Unsupported`] when the scheme's backend is not compiled in.
    pub fn from_url(url: &str) -> Result<Self> {
        let scheme = waypost_core_types::url::scheme(url)?;
        let kind: RegistryType = scheme.parse().map_err(|_| {
            waypost_core_types::url::invalid(format!(
                "unknown scheme `{}` (expected memory, etcd, consul, nacos or zookeeper)",
                scheme.escape_debug()
            ))
        })?;
        match kind {
            #[cfg(feature = "memory")]
            RegistryType::Memory => url.parse().map(RegistryConfig::Memory),
            #[cfg(feature = "etcd")]
            RegistryType::Etcd => url.parse().map(RegistryConfig::Etcd),
            #[cfg(feature = "consul")]
            RegistryType::Consul => url.parse().map(RegistryConfig::Consul),
            #[cfg(feature = "nacos")]
            RegistryType::Nacos => url.parse().map(RegistryConfig::Nacos),
            #[cfg(feature = "zookeeper")]
            RegistryType::Zookeeper => url.parse().map(RegistryConfig::Zookeeper),
            #[allow(unreachable_patterns)] // with every backend compiled in
            other => Err(other.not_compiled()),
        }
    }

    /// Checks the backend's config with the backend's own rules.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the bad value.
    pub fn validate(&self) -> Result<()> {
        each_backend!(*self, |ref c| c.validate())
    }
}

#[cfg(feature = "memory")]
impl Default for RegistryConfig {
    /// The in-memory registry with its defaults.
    fn default() -> Self {
        RegistryConfig::memory()
    }
}

impl FromStr for RegistryConfig {
    type Err = Error;

    /// See [`RegistryConfig::from_url`].
    fn from_str(s: &str) -> Result<Self> {
        Self::from_url(s)
    }
}

macro_rules! from_backend {
    ($feature:literal, $variant:ident, $ty:ty) => {
        #[cfg(feature = $feature)]
        impl From<$ty> for RegistryConfig {
            fn from(config: $ty) -> Self {
                RegistryConfig::$variant(config)
            }
        }
    };
}
from_backend!("memory", Memory, MemoryConfig);
from_backend!("etcd", Etcd, EtcdConfig);
from_backend!("consul", Consul, ConsulConfig);
from_backend!("nacos", Nacos, NacosConfig);
from_backend!("zookeeper", Zookeeper, ZookeeperConfig);

/// Every section name a Laravel-Go style config may carry.
const SECTION_NAMES: &[&str] = &["memory", "etcd", "consul", "nacos", "zookeeper", "zk"];

impl<'de> Deserialize<'de> for RegistryConfig {
    /// Reads the tagged shape (`{"type":"etcd","endpoints":[…]}`) and the Laravel-Go module's
    /// (`{"type":"etcd","etcd":{"endpoints":[…]}}`) from any self-describing format: the input
    /// is first read as a map of values, then the chosen backend's config is read from them.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let mut fields = Map::<String, Value>::deserialize(deserializer)?;
        let kind = match fields.remove("type") {
            None | Some(Value::Null) => RegistryType::Memory,
            Some(Value::String(name)) => name
                .parse()
                .map_err(|_| D::Error::unknown_variant(&name, TYPE_NAMES))?,
            Some(_) => {
                return Err(D::Error::custom(
                    "`type` must be a string: memory, etcd, consul, nacos or zookeeper",
                ))
            }
        };
        let mut section = None;
        for name in SECTION_NAMES {
            let Some(value) = fields.remove(*name) else {
                continue;
            };
            // Sections of other backends are ignored, as the Laravel-Go module ignores them.
            if !kind.section_names().contains(name) || value.is_null() {
                continue;
            }
            if section.replace(value).is_some() {
                return Err(D::Error::custom(
                    "give the zookeeper section once, as `zookeeper` or as `zk`",
                ));
            }
        }
        let body = match section {
            None => fields,
            Some(Value::Object(inner)) => {
                if let Some(key) = fields.keys().next() {
                    return Err(D::Error::custom(format!(
                        "`{key}` is next to a `{kind}` section: give the {kind} settings either \
                         beside `type` or inside the section, not both"
                    )));
                }
                inner
            }
            Some(_) => {
                return Err(D::Error::custom(format!(
                    "the `{kind}` section must be a map of settings"
                )))
            }
        };
        let body = Value::Object(body);
        let config: std::result::Result<Self, serde_json::Error> = match kind {
            #[cfg(feature = "memory")]
            RegistryType::Memory => MemoryConfig::deserialize(body).map(RegistryConfig::Memory),
            #[cfg(feature = "etcd")]
            RegistryType::Etcd => EtcdConfig::deserialize(body).map(RegistryConfig::Etcd),
            #[cfg(feature = "consul")]
            RegistryType::Consul => ConsulConfig::deserialize(body).map(RegistryConfig::Consul),
            #[cfg(feature = "nacos")]
            RegistryType::Nacos => NacosConfig::deserialize(body).map(RegistryConfig::Nacos),
            #[cfg(feature = "zookeeper")]
            RegistryType::Zookeeper => {
                ZookeeperConfig::deserialize(body).map(RegistryConfig::Zookeeper)
            }
            #[allow(unreachable_patterns)] // with every backend compiled in
            other => return Err(D::Error::custom(other.not_compiled())),
        };
        config.map_err(|e| D::Error::custom(format!("{kind}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(json: &str) -> RegistryConfig {
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{json}: {e}"))
    }

    fn read_err(json: &str) -> String {
        match serde_json::from_str::<RegistryConfig>(json) {
            Err(e) => e.to_string(),
            Ok(c) => panic!("{json}: accepted as {c:?}"),
        }
    }

    /// Serializes, checks the tagged shape, reads back and compares.
    fn round_trip(config: RegistryConfig, kind: &str) -> String {
        let json = serde_json::to_string(&config).unwrap();
        assert!(
            json.starts_with(&format!(r#"{{"type":"{kind}","#)),
            "{json}"
        );
        assert_eq!(read(&json), config, "{json}");
        json
    }

    #[cfg(feature = "memory")]
    #[test]
    fn memory_round_trip_and_defaults() {
        let c: RegistryConfig = "memory://?cleanup_interval=250ms&default_ttl=30s&watch_buffer=8"
            .parse()
            .unwrap();
        round_trip(c, "memory");
        assert_eq!(
            read("{}"),
            RegistryConfig::default(),
            "no type means memory"
        );
        assert_eq!(
            read(r#"{"type":"memory","memory":null}"#),
            RegistryConfig::default()
        );
        assert_eq!(read(r#"{"type":"MEM"}"#).kind(), RegistryType::Memory);
    }

    #[cfg(feature = "etcd")]
    #[test]
    fn etcd_round_trip_and_laravel_go_shape() {
        let c: RegistryConfig = "etcd://h1:2379,h2/svc?ttl=15s&connect_timeout=2s\
             &request_timeout=1500ms&max_backoff=3s&watch_buffer=64&ca_file=/ca.pem\
             &cert_file=/c.pem&key_file=/k.pem&domain_name=etcd.local"
            .parse()
            .unwrap();
        round_trip(c, "etcd");
        // The Laravel-Go module's EtcdConfig: Endpoints, Username, Password, Prefix, TTL.
        let go = read(
            r#"{"type":"etcd","etcd":{"endpoints":["localhost:2379","localhost:2380"],
                "username":"admin","password":"password","prefix":"/laravel-go/services",
                "ttl":30000000000}}"#,
        );
        let RegistryConfig::Etcd(e) = &go else {
            panic!("{go:?}")
        };
        assert_eq!(e.endpoints, ["localhost:2379", "localhost:2380"]);
        assert_eq!(e.username.as_deref(), Some("admin"));
        assert_eq!(e.password.as_ref().map(|p| p.expose()), Some("password"));
        assert_eq!(e.ttl, std::time::Duration::from_secs(30));
        go.validate().unwrap();
        let defaults = read(r#"{"type":"etcd"}"#);
        assert_eq!(defaults, RegistryConfig::Etcd(EtcdConfig::default()));
        assert_eq!(read(r#"{"type":"etcd","etcd":{}}"#), defaults);
    }

    #[cfg(feature = "consul")]
    #[test]
    fn consul_round_trip_and_laravel_go_shape() {
        let c: RegistryConfig = "consul://agent:8501/team?scheme=https&datacenter=dc2\
             &ca_file=/ca.pem&ca_pem=PEM&max_response_bytes=4096&watch_buffer=8\
             &foreign_services=skip&ttl=10s&deregister_critical_after=2m&connect_timeout=1s\
             &request_timeout=2s&watch_wait=30s&watch_min_interval=250ms\
             &retry_initial_backoff=100ms&retry_max_backoff=5s"
            .parse()
            .unwrap();
        round_trip(c, "consul");
        // Address, Token, Datacenter, Prefix, TTL.
        let go = read(
            r#"{"type":"consul","consul":{"address":"localhost:8500","token":"consul-token",
                "datacenter":"dc1","prefix":"laravel-go/services","ttl":"30s"}}"#,
        );
        let RegistryConfig::Consul(c) = &go else {
            panic!("{go:?}")
        };
        assert_eq!(c.token.as_ref().map(|t| t.expose()), Some("consul-token"));
        assert_eq!(c.datacenter.as_deref(), Some("dc1"));
        go.validate().unwrap();
    }

    #[cfg(feature = "nacos")]
    #[test]
    fn nacos_round_trip_and_laravel_go_shape() {
        let c: RegistryConfig = "nacos://n1,n2:9848?namespace=dev&group=G&cluster=C1\
             &app_name=orders&cache_dir=/tmp/nacos&grpc_port=9999&watch_buffer=8&ttl=45s\
             &connect_timeout=2s&probe_interval=250ms&service_poll_interval=3s"
            .parse()
            .unwrap();
        round_trip(c, "nacos");
        // ServerAddr, Namespace, Group, Username, Password, TTL.
        let go = read(
            r#"{"type":"nacos","nacos":{"server_addr":"localhost:8848","namespace":"public",
                "group":"DEFAULT_GROUP","username":"nacos","password":"nacos","ttl":"30s"}}"#,
        );
        let RegistryConfig::Nacos(n) = &go else {
            panic!("{go:?}")
        };
        assert_eq!(n.server_addr, "localhost:8848");
        assert_eq!(n.password.as_ref().map(|p| p.expose()), Some("nacos"));
        go.validate().unwrap();
    }

    #[cfg(feature = "zookeeper")]
    #[test]
    fn zookeeper_round_trip_and_laravel_go_shape() {
        let c: RegistryConfig = "zk://z1,z2:2182/svc?session_timeout=4s&ttl=20s\
             &connect_timeout=3s&max_backoff=2s&chroot=/app&watch_buffer=32"
            .parse()
            .unwrap();
        round_trip(c, "zookeeper");
        // Servers, Prefix, TTL, SessionTimeout; `zk` as the type and as the section name.
        let body = r#"{"servers":["localhost:2181","localhost:2182"],
            "prefix":"/laravel-go/services","ttl":"30s","session_timeout":"10s"}"#;
        let go = read(&format!(r#"{{"type":"zookeeper","zookeeper":{body}}}"#));
        assert_eq!(read(&format!(r#"{{"type":"zk","zookeeper":{body}}}"#)), go);
        assert_eq!(read(&format!(r#"{{"type":"zk","zk":{body}}}"#)), go);
        let RegistryConfig::Zookeeper(z) = &go else {
            panic!("{go:?}")
        };
        assert_eq!(z.session_timeout, std::time::Duration::from_secs(10));
        assert_eq!(z.servers.len(), 2);
        go.validate().unwrap();
        let both = format!(r#"{{"type":"zk","zk":{body},"zookeeper":{body}}}"#);
        assert!(read_err(&both).contains("once"));
    }

    #[cfg(feature = "full")]
    #[test]
    fn the_laravel_go_config_with_every_section_uses_the_chosen_one() {
        let c = read(
            r#"{"type":"memory","memory":{"cleanup_interval":"200ms"},
                "etcd":{"endpoints":["localhost:2379"],"password":"etcd-pw"},
                "consul":{"token":"consul-token"},"nacos":null,
                "zookeeper":{"servers":["localhost:2181"]}}"#,
        );
        let RegistryConfig::Memory(m) = &c else {
            panic!("{c:?}")
        };
        assert_eq!(m.cleanup_interval, std::time::Duration::from_millis(200));
        let saved = serde_json::to_string(&c).unwrap();
        assert!(
            !saved.contains("etcd") && !saved.contains("consul"),
            "{saved}"
        );
    }

    #[cfg(feature = "full")]
    #[test]
    fn a_saved_config_never_contains_a_secret() {
        for url in [
            "etcd://admin:SeCrEt-1@h:2379",
            "consul://:SeCrEt-1@h:8500",
            "consul://h:8500?token=SeCrEt-1",
            "nacos://nacos:SeCrEt-1@h:8848",
            "zk://alice:SeCrEt-1@h:2181",
        ] {
            let c = RegistryConfig::from_url(url).unwrap();
            let saved = serde_json::to_string(&c).unwrap();
            assert!(!saved.contains("SeCrEt"), "{url}: {saved}");
            assert!(saved.contains(r#""[redacted]""#), "{url}: {saved}");
            assert!(!format!("{c:?}").contains("SeCrEt"), "{url}");
            // Read back, the secret is the placeholder, not the value: give it again.
            let back = read(&saved);
            assert!(!format!("{:?}", serde_json::to_value(&back)).contains("SeCrEt"));
        }
    }

    #[cfg(feature = "full")]
    #[test]
    fn urls_dispatch_on_the_scheme() {
        for (url, kind) in [
            ("memory://", RegistryType::Memory),
            ("mem://", RegistryType::Memory),
            ("etcd://h", RegistryType::Etcd),
            ("consul://h", RegistryType::Consul),
            ("nacos://h", RegistryType::Nacos),
            ("zookeeper://h", RegistryType::Zookeeper),
            ("ZK://h", RegistryType::Zookeeper),
        ] {
            assert_eq!(url.parse::<RegistryConfig>().unwrap().kind(), kind, "{url}");
        }
    }

    #[test]
    fn url_errors_never_show_the_password_or_the_url() {
        let unknown = RegistryConfig::from_url("etdc://admin:PASSWORD@h:2379").unwrap_err();
        assert_eq!(
            unknown.to_string(),
            "invalid configuration: registry URL: unknown scheme `etdc` (expected memory, \
             etcd, consul, nacos or zookeeper)"
        );
        #[cfg(feature = "etcd")]
        for url in [
            "etcd:/admin:PASSWORD@h:2379",
            "etcd//admin:PASSWORD@h",
            "admin:PASSWORD@h:2379",
            "etcd://admin:PASSWORD/x@h:2379",
            "etcd://admin:Qz7k/x@h:2379",
            "memory://admin:PASSWORD@",
        ] {
            let e = RegistryConfig::from_url(url).unwrap_err().to_string();
            assert!(
                !e.contains("PASSWORD") && !e.contains("Qz7k") && !e.contains("admin"),
                "{url}: {e}"
            );
            assert!(e.contains("registry URL: "), "{url}: {e}");
        }
        let e = RegistryConfig::from_url("etcd:/admin:PASSWORD@h:2379").unwrap_err();
        assert!(e.to_string().contains("no `scheme://`"), "{e}");
    }

    #[cfg(feature = "memory")]
    #[test]
    fn invalid_shapes_are_errors() {
        for (json, want) in [
            (r#"{"type":"redis"}"#, "unknown variant `redis`"),
            (r#"{"type":7}"#, "`type` must be a string"),
            (
                r#"{"type":"memory","colour":"blue"}"#,
                "unknown field `colour`",
            ),
            (
                r#"{"type":"memory","default_ttl":"1s","memory":{"cleanup_interval":"1s"}}"#,
                "not both",
            ),
            (r#"{"type":"memory","memory":[1]}"#, "must be a map"),
            (
                r#"{"type":"memory","cleanup_interval":"soon"}"#,
                "invalid duration",
            ),
        ] {
            let e = read_err(json);
            assert!(e.contains(want), "{json}: {e}");
        }
    }

    /// The Deserialize is not tied to JSON: here a plain map of strings, as serde's own
    /// `MapDeserializer` gives it (the shape of an environment or a flat key-value store).
    #[cfg(feature = "memory")]
    #[test]
    fn reads_from_a_non_json_format() {
        use serde::de::value::{Error as ValueError, MapDeserializer};
        let entries = [("type", "memory"), ("default_ttl", "30s")];
        let de = MapDeserializer::<_, ValueError>::new(entries.into_iter());
        let c = RegistryConfig::deserialize(de).unwrap();
        assert_eq!(c, "memory://?default_ttl=30s".parse().unwrap());
    }
}
