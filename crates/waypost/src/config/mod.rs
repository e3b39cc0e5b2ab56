//! [`RegistryConfig`]: which backend to use, holding that backend's own config; from code, a
//! config file (serde) or a registry URL.

use std::fmt;
use std::str::FromStr;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use waypost_core_types::quote::{quoted, quoted_up_to};
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
            _ => Err(Error::InvalidConfig(format!(
                "unknown registry type `{}` (expected memory, etcd, consul, nacos or zookeeper)",
                quoted(s)
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
///
/// etcd and ZooKeeper take a record format (`?format=`): go-kratos' (`kratos`) and go-zero's
/// (`go-zero`) records in etcd, Spring Cloud Zookeeper's (`curator`) in ZooKeeper, or `auto` to
/// read every format of the backend under the prefix; without a path, the prefix is the format's
/// default (`etcd://h:2379?format=kratos` reads `/microservices`). See the README's "Mixed
/// fleets".
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
                quoted(&scheme)
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

/// How much of a nested error a config error shows.
const MAX_NESTED_ERROR_CHARS: usize = 512;

/// The top level of a config: a map, read into values; anything else is an error that does not
/// echo it (serde's own "invalid type" message would repeat a string in full).
struct TopLevel;

impl<'de> serde::de::Visitor<'de> for TopLevel {
    type Value = Map<String, Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map of registry settings")
    }

    fn visit_str<E: serde::de::Error>(self, _: &str) -> std::result::Result<Self::Value, E> {
        Err(E::custom(
            "expected a map of registry settings, found a string",
        ))
    }

    fn visit_bytes<E: serde::de::Error>(self, _: &[u8]) -> std::result::Result<Self::Value, E> {
        Err(E::custom(
            "expected a map of registry settings, found bytes",
        ))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut access: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let mut map = Map::new();
        while let Some((key, value)) = access.next_entry::<String, Value>()? {
            map.insert(key, value);
        }
        Ok(map)
    }
}

impl<'de> Deserialize<'de> for RegistryConfig {
    /// Reads the tagged shape (`{"type":"etcd","endpoints":[…]}`) and the Laravel-Go module's
    /// (`{"type":"etcd","etcd":{"endpoints":[…]}}`) from any self-describing format: the input
    /// is first read as a map of values, then the chosen backend's config is read from them and
    /// validated.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let mut fields = deserializer.deserialize_any(TopLevel)?;
        let kind = match fields.remove("type") {
            None | Some(Value::Null) => RegistryType::Memory,
            Some(Value::String(name)) => name.parse().map_err(|_| {
                D::Error::custom(format_args!(
                    "unknown variant `{}`, expected one of `memory`, `etcd`, `consul`, `nacos`, \
                     `zookeeper`",
                    quoted(&name)
                ))
            })?,
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
                    return Err(D::Error::custom(format_args!(
                        "`{}` is next to a `{kind}` section: give the {kind} settings either \
                         beside `type` or inside the section, not both",
                        quoted(key)
                    )));
                }
                inner
            }
            Some(_) => {
                return Err(D::Error::custom(format_args!(
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
        // serde's messages may repeat a value in full (`invalid type: string "…"`): bound them.
        let config = config.map_err(|e| {
            D::Error::custom(format_args!(
                "{kind}: {}",
                quoted_up_to(&e.to_string(), MAX_NESTED_ERROR_CHARS)
            ))
        })?;
        config.validate().map_err(|e| match e {
            Error::InvalidConfig(m) => D::Error::custom(quoted_up_to(&m, MAX_NESTED_ERROR_CHARS)),
            other => D::Error::custom(other),
        })?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests;
