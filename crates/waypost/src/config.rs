//! [`RegistryConfig`]: which backend to use and its settings, from code, a config file (serde)
//! or a registry URL.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use waypost_core_types::time::config_duration;
use waypost_core_types::{Error, Result};

/// The registry backends.
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
    /// The name used in configs and URL schemes.
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
}

impl fmt::Display for RegistryType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RegistryType {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "memory" | "mem" => Ok(RegistryType::Memory),
            "etcd" => Ok(RegistryType::Etcd),
            "consul" => Ok(RegistryType::Consul),
            "nacos" => Ok(RegistryType::Nacos),
            "zookeeper" | "zk" => Ok(RegistryType::Zookeeper),
            other => Err(Error::InvalidConfig(format!(
                "unknown registry type `{other}` (expected memory, etcd, consul, nacos or zookeeper)"
            ))),
        }
    }
}

/// A secret (password, token): never shown by `Debug` or `Display`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for handing to a backend.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether it is empty (not set).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("\"\"")
        } else {
            f.write_str("\"<redacted>\"")
        }
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_owned())
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// The Go module's default key prefix for etcd and ZooKeeper.
pub const DEFAULT_PATH_PREFIX: &str = "/laravel-go/services";
/// The Go module's default Consul prefix.
pub const DEFAULT_CONSUL_PREFIX: &str = "laravel-go/services";

/// In-memory registry settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct MemorySettings {
    /// How often expired instances are removed. Default 1 s.
    #[serde(with = "config_duration")]
    pub cleanup_interval: Duration,
    /// TTL for instances registered without one; unset means they never expire.
    #[serde(with = "config_duration::option")]
    pub default_ttl: Option<Duration>,
}

impl Default for MemorySettings {
    fn default() -> Self {
        MemorySettings {
            cleanup_interval: secs(1),
            default_ttl: None,
        }
    }
}

/// etcd settings (the Laravel-Go module's `EtcdConfig`, plus timeouts and TLS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct EtcdSettings {
    /// `host:port` of each member. Default `localhost:2379`.
    pub endpoints: Vec<String>,
    /// User name, if authentication is on.
    pub username: String,
    /// Password (redacted in `Debug`).
    pub password: Secret,
    /// Key prefix. Default `/laravel-go/services`.
    pub prefix: String,
    /// Lease TTL. Default 30 s.
    #[serde(with = "config_duration")]
    pub ttl: Duration,
    /// How long construction may take to reach the cluster. Default 5 s.
    #[serde(with = "config_duration")]
    pub connect_timeout: Duration,
    /// PEM file of the CA to trust; enables TLS.
    pub ca_file: Option<String>,
    /// PEM client certificate for mutual TLS.
    pub cert_file: Option<String>,
    /// PEM client key for mutual TLS.
    pub key_file: Option<String>,
}

impl Default for EtcdSettings {
    fn default() -> Self {
        EtcdSettings {
            endpoints: vec!["localhost:2379".into()],
            username: String::new(),
            password: Secret::default(),
            prefix: DEFAULT_PATH_PREFIX.into(),
            ttl: secs(30),
            connect_timeout: secs(5),
            ca_file: None,
            cert_file: None,
            key_file: None,
        }
    }
}

/// Consul settings (the Laravel-Go module's `ConsulConfig`, plus timeouts and TLS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ConsulSettings {
    /// Agent address, `host:port` or a URL. Default `localhost:8500`.
    pub address: String,
    /// ACL token (redacted in `Debug`).
    pub token: Secret,
    /// Datacenter; empty means the agent's own.
    pub datacenter: String,
    /// Prefix that marks our services. Default `laravel-go/services`.
    pub prefix: String,
    /// TTL of the health check. Default 30 s.
    #[serde(with = "config_duration")]
    pub ttl: Duration,
    /// How long construction may take to reach the agent. Default 5 s.
    #[serde(with = "config_duration")]
    pub connect_timeout: Duration,
    /// PEM file of the CA to trust for an `https` agent.
    pub ca_file: Option<String>,
}

impl Default for ConsulSettings {
    fn default() -> Self {
        ConsulSettings {
            address: "localhost:8500".into(),
            token: Secret::default(),
            datacenter: String::new(),
            prefix: DEFAULT_CONSUL_PREFIX.into(),
            ttl: secs(30),
            connect_timeout: secs(5),
            ca_file: None,
        }
    }
}

/// Nacos settings (the Laravel-Go module's `NacosConfig`, plus a timeout).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct NacosSettings {
    /// `host:port` of the server (several separated by commas). Default `localhost:8848`.
    pub server_addr: String,
    /// Namespace. Default `public`.
    pub namespace: String,
    /// Group. Default `DEFAULT_GROUP`.
    pub group: String,
    /// User name, if authentication is on.
    pub username: String,
    /// Password (redacted in `Debug`).
    pub password: Secret,
    /// Kept for compatibility with the Go config; Nacos manages liveness itself.
    #[serde(with = "config_duration")]
    pub ttl: Duration,
    /// How long construction may take to reach the server. Default 5 s.
    #[serde(with = "config_duration")]
    pub connect_timeout: Duration,
}

impl Default for NacosSettings {
    fn default() -> Self {
        NacosSettings {
            server_addr: "localhost:8848".into(),
            namespace: "public".into(),
            group: "DEFAULT_GROUP".into(),
            username: String::new(),
            password: Secret::default(),
            ttl: secs(30),
            connect_timeout: secs(5),
        }
    }
}

/// ZooKeeper settings (the Laravel-Go module's `ZookeeperConfig`, plus auth and a timeout).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ZookeeperSettings {
    /// `host:port` of each server. Default `localhost:2181`.
    pub servers: Vec<String>,
    /// Path prefix. Default `/laravel-go/services`.
    pub prefix: String,
    /// Kept for compatibility with the Go config; the session provides liveness.
    #[serde(with = "config_duration")]
    pub ttl: Duration,
    /// Session timeout. Default 10 s.
    #[serde(with = "config_duration")]
    pub session_timeout: Duration,
    /// Digest auth user, if any.
    pub username: String,
    /// Digest auth password (redacted in `Debug`).
    pub password: Secret,
    /// Chroot applied to every path, if any.
    pub chroot: String,
    /// How long construction may take to reach the ensemble. Default 5 s.
    #[serde(with = "config_duration")]
    pub connect_timeout: Duration,
}

impl Default for ZookeeperSettings {
    fn default() -> Self {
        ZookeeperSettings {
            servers: vec!["localhost:2181".into()],
            prefix: DEFAULT_PATH_PREFIX.into(),
            ttl: secs(30),
            session_timeout: secs(10),
            username: String::new(),
            password: Secret::default(),
            chroot: String::new(),
            connect_timeout: secs(5),
        }
    }
}

/// Which registry to build and how (the Laravel-Go module's `RegistryConfig`).
///
/// Only the section of the chosen `type` is used; a missing section means its defaults. From a
/// config file:
///
/// ```
/// let config: waypost::RegistryConfig = serde_json::from_str(r#"{
///     "type": "etcd",
///     "etcd": { "endpoints": ["10.0.0.1:2379"], "ttl": "15s", "username": "app", "password": "s3cret" }
/// }"#)?;
/// config.validate()?;
/// assert!(!format!("{config:?}").contains("s3cret"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RegistryConfig {
    /// The backend.
    #[serde(rename = "type")]
    pub kind: RegistryType,
    /// In-memory settings.
    pub memory: Option<MemorySettings>,
    /// etcd settings.
    pub etcd: Option<EtcdSettings>,
    /// Consul settings.
    pub consul: Option<ConsulSettings>,
    /// Nacos settings.
    pub nacos: Option<NacosSettings>,
    /// ZooKeeper settings.
    pub zookeeper: Option<ZookeeperSettings>,
}

fn invalid(backend: &str, msg: impl fmt::Display) -> Error {
    Error::InvalidConfig(format!("{backend}: {msg}"))
}

/// Checks a `host:port` (or `[v6]:port`) address.
pub(crate) fn check_host_port(backend: &str, what: &str, addr: &str) -> Result<()> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| invalid(backend, format!("{what} `{addr}` must be host:port")))?;
    let host_ok = !host.is_empty()
        && !host.contains(['/', ' ', '@', '?', '#', ','])
        && (!host.contains(':') || (host.starts_with('[') && host.ends_with(']')));
    if !host_ok {
        return Err(invalid(
            backend,
            format!("{what} `{addr}` has an invalid host"),
        ));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(invalid(
            backend,
            format!("{what} `{addr}` has an invalid port `{port}` (1-65535)"),
        )),
    }
}

fn check_path_prefix(backend: &str, prefix: &str) -> Result<()> {
    if !prefix.starts_with('/') {
        return Err(invalid(
            backend,
            format!("prefix `{prefix}` must start with `/`"),
        ));
    }
    if prefix.len() > 1 && prefix.ends_with('/') {
        return Err(invalid(
            backend,
            format!("prefix `{prefix}` must not end with `/`"),
        ));
    }
    if prefix.contains("//") || prefix.split('/').any(|p| p == "." || p == "..") {
        return Err(invalid(
            backend,
            format!("prefix `{prefix}` is not a clean path"),
        ));
    }
    if prefix.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(invalid(
            backend,
            format!("prefix `{}` has invalid characters", prefix.escape_debug()),
        ));
    }
    Ok(())
}

fn check_positive(backend: &str, what: &str, d: Duration) -> Result<()> {
    if d.is_zero() {
        return Err(invalid(
            backend,
            format!("{what} must be greater than zero"),
        ));
    }
    Ok(())
}

impl MemorySettings {
    /// Checks the values.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the bad value.
    pub fn validate(&self) -> Result<()> {
        check_positive("memory", "cleanup_interval", self.cleanup_interval)?;
        if self.default_ttl.is_some_and(|t| t.is_zero()) {
            return Err(invalid("memory", "default_ttl must be greater than zero"));
        }
        Ok(())
    }
}

impl EtcdSettings {
    /// Checks the values.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the bad value.
    pub fn validate(&self) -> Result<()> {
        if self.endpoints.is_empty() {
            return Err(invalid("etcd", "at least one endpoint is required"));
        }
        for e in &self.endpoints {
            let hostport = e
                .strip_prefix("http://")
                .or_else(|| e.strip_prefix("https://"))
                .unwrap_or(e);
            check_host_port("etcd", "endpoint", hostport)?;
        }
        check_path_prefix("etcd", &self.prefix)?;
        if self.ttl < secs(1) {
            return Err(invalid(
                "etcd",
                "ttl must be at least 1s (etcd leases count whole seconds)",
            ));
        }
        check_positive("etcd", "connect_timeout", self.connect_timeout)?;
        if !self.password.is_empty() && self.username.is_empty() {
            return Err(invalid("etcd", "a password needs a username"));
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(invalid("etcd", "cert_file and key_file go together"));
        }
        Ok(())
    }
}

impl ConsulSettings {
    /// Checks the values.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the bad value.
    pub fn validate(&self) -> Result<()> {
        let hostport = self
            .address
            .strip_prefix("http://")
            .or_else(|| self.address.strip_prefix("https://"))
            .unwrap_or(&self.address);
        check_host_port("consul", "address", hostport.trim_end_matches('/'))?;
        if self.prefix.starts_with('/') || self.prefix.contains(char::is_whitespace) {
            return Err(invalid(
                "consul",
                format!(
                    "prefix `{}` must not start with `/` or contain spaces",
                    self.prefix
                ),
            ));
        }
        if self.ttl < secs(1) {
            return Err(invalid("consul", "ttl must be at least 1s"));
        }
        check_positive("consul", "connect_timeout", self.connect_timeout)
    }
}

impl NacosSettings {
    /// Checks the values.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the bad value.
    pub fn validate(&self) -> Result<()> {
        if self.server_addr.trim().is_empty() {
            return Err(invalid("nacos", "server_addr is required"));
        }
        for addr in self.server_addr.split(',') {
            check_host_port("nacos", "server_addr", addr.trim())?;
        }
        if self.group.is_empty() {
            return Err(invalid("nacos", "group must not be empty"));
        }
        if !self.password.is_empty() && self.username.is_empty() {
            return Err(invalid("nacos", "a password needs a username"));
        }
        check_positive("nacos", "connect_timeout", self.connect_timeout)
    }
}

impl ZookeeperSettings {
    /// Checks the values.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the bad value.
    pub fn validate(&self) -> Result<()> {
        if self.servers.is_empty() {
            return Err(invalid("zookeeper", "at least one server is required"));
        }
        for s in &self.servers {
            check_host_port("zookeeper", "server", s)?;
        }
        check_path_prefix("zookeeper", &self.prefix)?;
        if !self.chroot.is_empty() {
            check_path_prefix("zookeeper", &self.chroot).map_err(|_| {
                invalid(
                    "zookeeper",
                    format!("chroot `{}` is not a clean absolute path", self.chroot),
                )
            })?;
        }
        check_positive("zookeeper", "session_timeout", self.session_timeout)?;
        check_positive("zookeeper", "connect_timeout", self.connect_timeout)?;
        if !self.password.is_empty() && self.username.is_empty() {
            return Err(invalid("zookeeper", "a password needs a username"));
        }
        Ok(())
    }
}

impl RegistryConfig {
    /// An in-memory registry config.
    pub fn memory() -> Self {
        RegistryConfig::default()
    }

    /// A config for `kind` with that backend's default section.
    pub fn of(kind: RegistryType) -> Self {
        let mut c = RegistryConfig {
            kind,
            ..RegistryConfig::default()
        };
        c.ensure_section();
        c
    }

    /// Makes sure the section of `kind` exists (filled with defaults).
    pub(crate) fn ensure_section(&mut self) {
        match self.kind {
            RegistryType::Memory => {
                self.memory.get_or_insert_with(Default::default);
            }
            RegistryType::Etcd => {
                self.etcd.get_or_insert_with(Default::default);
            }
            RegistryType::Consul => {
                self.consul.get_or_insert_with(Default::default);
            }
            RegistryType::Nacos => {
                self.nacos.get_or_insert_with(Default::default);
            }
            RegistryType::Zookeeper => {
                self.zookeeper.get_or_insert_with(Default::default);
            }
        }
    }

    /// Parses a registry URL (see [`crate::url`]).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] saying what is wrong with the URL.
    pub fn from_url(url: &str) -> Result<Self> {
        crate::url::parse(url)
    }

    /// Checks the section of the chosen backend (a missing section is checked as its defaults).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the bad value.
    pub fn validate(&self) -> Result<()> {
        let mut c = self.clone();
        c.ensure_section();
        match c.kind {
            RegistryType::Memory => c.memory.unwrap_or_default().validate(),
            RegistryType::Etcd => c.etcd.unwrap_or_default().validate(),
            RegistryType::Consul => c.consul.unwrap_or_default().validate(),
            RegistryType::Nacos => c.nacos.unwrap_or_default().validate(),
            RegistryType::Zookeeper => c.zookeeper.unwrap_or_default().validate(),
        }
    }
}

impl FromStr for RegistryConfig {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::from_url(s)
    }
}
