//! [`RegistryBuilder`] and [`new_service_registry`]: from config to a running registry.

use std::sync::Arc;
use std::time::Duration;

use waypost_core_types::{Error, Result, ServiceRegistry};

use crate::config::{RegistryConfig, RegistryType, Secret};

/// Builds a registry step by step (the Laravel-Go module's `NewRegistryBuilder()`), with the
/// setters its builder lacked: credentials, token, TTL and timeouts.
///
/// `with_etcd`, `with_consul`, `with_nacos`, `with_zookeeper` choose the backend as well as
/// setting its address; the other setters apply to the chosen backend, and one that does not
/// apply to it (a token for etcd, say) makes [`build`](Self::build) fail with a clear error.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> waypost::Result<()> {
/// use std::time::Duration;
/// use waypost::{RegistryBuilder, RegistryType};
///
/// let registry = RegistryBuilder::new()
///     .with_type(RegistryType::Memory)
///     .with_default_ttl(Duration::from_secs(30))
///     .build()
///     .await?;
/// assert_eq!(registry.backend(), "memory");
///
/// let config = RegistryBuilder::new()
///     .with_etcd(["10.0.0.1:2379", "10.0.0.2:2379"], "/laravel-go/services")
///     .with_credentials("admin", "password")
///     .with_ttl(Duration::from_secs(15))
///     .config()?;
/// assert_eq!(config.etcd.unwrap().endpoints.len(), 2);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct RegistryBuilder {
    config: RegistryConfig,
    error: Option<String>,
}

impl RegistryBuilder {
    /// A builder for the in-memory registry with defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts from an existing config.
    pub fn from_config(config: RegistryConfig) -> Self {
        RegistryBuilder {
            config,
            error: None,
        }
    }

    /// Starts from a registry URL (see [`crate::url`]); a malformed URL fails at `build`.
    pub fn from_url(url: &str) -> Self {
        match RegistryConfig::from_url(url) {
            Ok(config) => Self::from_config(config),
            Err(e) => RegistryBuilder {
                config: RegistryConfig::default(),
                error: Some(e.to_string()),
            },
        }
    }

    /// Chooses the backend (its section starts from defaults unless already set).
    pub fn with_type(mut self, kind: RegistryType) -> Self {
        self.config.kind = kind;
        self.config.ensure_section();
        self
    }

    /// etcd with these endpoints and key prefix.
    pub fn with_etcd<I, S>(self, endpoints: I, prefix: impl Into<String>) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut b = self.with_type(RegistryType::Etcd);
        if let Some(e) = b.config.etcd.as_mut() {
            e.endpoints = endpoints.into_iter().map(Into::into).collect();
            e.prefix = prefix.into();
        }
        b
    }

    /// Consul at this agent address with this prefix.
    pub fn with_consul(self, address: impl Into<String>, prefix: impl Into<String>) -> Self {
        let mut b = self.with_type(RegistryType::Consul);
        if let Some(c) = b.config.consul.as_mut() {
            c.address = address.into();
            c.prefix = prefix.into();
        }
        b
    }

    /// Nacos at this server address, namespace and group.
    pub fn with_nacos(
        self,
        server_addr: impl Into<String>,
        namespace: impl Into<String>,
        group: impl Into<String>,
    ) -> Self {
        let mut b = self.with_type(RegistryType::Nacos);
        if let Some(n) = b.config.nacos.as_mut() {
            n.server_addr = server_addr.into();
            n.namespace = namespace.into();
            n.group = group.into();
        }
        b
    }

    /// ZooKeeper with these servers and path prefix.
    pub fn with_zookeeper<I, S>(self, servers: I, prefix: impl Into<String>) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut b = self.with_type(RegistryType::Zookeeper);
        if let Some(z) = b.config.zookeeper.as_mut() {
            z.servers = servers.into_iter().map(Into::into).collect();
            z.prefix = prefix.into();
        }
        b
    }

    fn not_for(mut self, setter: &str, applies_to: &str) -> Self {
        self.error.get_or_insert_with(|| {
            format!(
                "{setter} applies to {applies_to}, not to the chosen {} backend",
                self.config.kind
            )
        });
        self
    }

    /// User name and password (etcd, Nacos, ZooKeeper digest auth).
    pub fn with_credentials(
        mut self,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        let (u, p) = (username.into(), Secret::new(password.into()));
        match self.config.kind {
            RegistryType::Etcd => {
                let e = self.config.etcd.get_or_insert_with(Default::default);
                (e.username, e.password) = (u, p);
            }
            RegistryType::Nacos => {
                let n = self.config.nacos.get_or_insert_with(Default::default);
                (n.username, n.password) = (u, p);
            }
            RegistryType::Zookeeper => {
                let z = self.config.zookeeper.get_or_insert_with(Default::default);
                (z.username, z.password) = (u, p);
            }
            _ => return self.not_for("with_credentials", "etcd, nacos and zookeeper"),
        }
        self
    }

    /// The Consul ACL token.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        match self.config.kind {
            RegistryType::Consul => {
                self.config
                    .consul
                    .get_or_insert_with(Default::default)
                    .token = Secret::new(token.into());
                self
            }
            _ => self.not_for("with_token", "consul"),
        }
    }

    /// The Consul datacenter.
    pub fn with_datacenter(mut self, datacenter: impl Into<String>) -> Self {
        match self.config.kind {
            RegistryType::Consul => {
                self.config
                    .consul
                    .get_or_insert_with(Default::default)
                    .datacenter = datacenter.into();
                self
            }
            _ => self.not_for("with_datacenter", "consul"),
        }
    }

    /// The TTL of registrations (etcd lease, Consul check; kept for Nacos and ZooKeeper).
    /// For the in-memory registry, use [`with_default_ttl`](Self::with_default_ttl).
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        match self.config.kind {
            RegistryType::Etcd => self.config.etcd.get_or_insert_with(Default::default).ttl = ttl,
            RegistryType::Consul => {
                self.config.consul.get_or_insert_with(Default::default).ttl = ttl
            }
            RegistryType::Nacos => self.config.nacos.get_or_insert_with(Default::default).ttl = ttl,
            RegistryType::Zookeeper => {
                self.config
                    .zookeeper
                    .get_or_insert_with(Default::default)
                    .ttl = ttl
            }
            RegistryType::Memory => {
                return self.not_for("with_ttl", "remote backends (use with_default_ttl)")
            }
        }
        self
    }

    /// How long construction may take to reach a remote backend.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        match self.config.kind {
            RegistryType::Etcd => {
                self.config
                    .etcd
                    .get_or_insert_with(Default::default)
                    .connect_timeout = timeout
            }
            RegistryType::Consul => {
                self.config
                    .consul
                    .get_or_insert_with(Default::default)
                    .connect_timeout = timeout
            }
            RegistryType::Nacos => {
                self.config
                    .nacos
                    .get_or_insert_with(Default::default)
                    .connect_timeout = timeout
            }
            RegistryType::Zookeeper => {
                self.config
                    .zookeeper
                    .get_or_insert_with(Default::default)
                    .connect_timeout = timeout
            }
            RegistryType::Memory => return self.not_for("with_connect_timeout", "remote backends"),
        }
        self
    }

    /// The ZooKeeper session timeout.
    pub fn with_session_timeout(mut self, timeout: Duration) -> Self {
        match self.config.kind {
            RegistryType::Zookeeper => {
                self.config
                    .zookeeper
                    .get_or_insert_with(Default::default)
                    .session_timeout = timeout;
                self
            }
            _ => self.not_for("with_session_timeout", "zookeeper"),
        }
    }

    /// The in-memory registry's TTL for instances registered without one.
    pub fn with_default_ttl(mut self, ttl: Duration) -> Self {
        match self.config.kind {
            RegistryType::Memory => {
                self.config
                    .memory
                    .get_or_insert_with(Default::default)
                    .default_ttl = Some(ttl);
                self
            }
            _ => self.not_for("with_default_ttl", "memory"),
        }
    }

    /// The in-memory registry's cleanup interval.
    pub fn with_cleanup_interval(mut self, interval: Duration) -> Self {
        match self.config.kind {
            RegistryType::Memory => {
                self.config
                    .memory
                    .get_or_insert_with(Default::default)
                    .cleanup_interval = interval;
                self
            }
            _ => self.not_for("with_cleanup_interval", "memory"),
        }
    }

    /// The validated config, without connecting.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a misapplied setter or a bad value.
    pub fn config(&self) -> Result<RegistryConfig> {
        if let Some(e) = &self.error {
            return Err(Error::InvalidConfig(e.clone()));
        }
        let mut config = self.config.clone();
        config.ensure_section();
        config.validate()?;
        Ok(config)
    }

    /// Validates and connects.
    ///
    /// # Errors
    /// As [`config`](Self::config) and [`new_service_registry`].
    pub async fn build(self) -> Result<Arc<dyn ServiceRegistry>> {
        let config = self.config()?;
        new_service_registry(&config).await
    }
}

#[allow(dead_code)] // unused when every backend is compiled in
fn not_compiled(kind: RegistryType) -> Error {
    Error::Unsupported(format!(
        "the {kind} backend is not compiled into this build; enable the `{kind}` feature of the \
         waypost crate"
    ))
}

/// Builds the registry a config describes (the Laravel-Go module's `NewServiceRegistry`),
/// connecting to a remote backend within its connect timeout.
///
/// # Errors
/// [`Error::InvalidConfig`] for a bad config, [`Error::Unsupported`] when the backend is not
/// compiled in, or the backend's connection error.
pub async fn new_service_registry(config: &RegistryConfig) -> Result<Arc<dyn ServiceRegistry>> {
    config.validate()?;
    let mut config = config.clone();
    config.ensure_section();
    match config.kind {
        RegistryType::Memory => {
            #[cfg(feature = "memory")]
            {
                let s = config.memory.unwrap_or_default();
                let registry = waypost_registry_memory::MemoryRegistry::builder()
                    .cleanup_interval(s.cleanup_interval)
                    .default_ttl(s.default_ttl)
                    .build()?;
                Ok(Arc::new(registry))
            }
            #[cfg(not(feature = "memory"))]
            Err(not_compiled(RegistryType::Memory))
        }
        RegistryType::Etcd => {
            #[cfg(feature = "etcd")]
            {
                let s = config.etcd.unwrap_or_default();
                let mut c = waypost_registry_etcd::EtcdConfig::new(s.endpoints)
                    .with_prefix(s.prefix)
                    .with_ttl(s.ttl)
                    .with_connect_timeout(s.connect_timeout);
                if !s.username.is_empty() {
                    c = c.with_credentials(s.username, s.password.expose());
                }
                if s.ca_file.is_some() || s.cert_file.is_some() {
                    let mut tls = match s.ca_file {
                        Some(ca) => waypost_registry_etcd::EtcdTlsConfig::new(ca),
                        None => waypost_registry_etcd::EtcdTlsConfig::default(),
                    };
                    if let (Some(cert), Some(key)) = (s.cert_file, s.key_file) {
                        tls = tls.with_client_identity(cert, key);
                    }
                    c = c.with_tls(tls);
                }
                Ok(Arc::new(
                    waypost_registry_etcd::EtcdRegistry::connect(c).await?,
                ))
            }
            #[cfg(not(feature = "etcd"))]
            Err(not_compiled(RegistryType::Etcd))
        }
        RegistryType::Consul => {
            #[cfg(feature = "consul")]
            {
                let s = config.consul.unwrap_or_default();
                let mut c = waypost_registry_consul::ConsulConfig::default()
                    .with_address(s.address)
                    .with_prefix(s.prefix)
                    .with_ttl(s.ttl)
                    .with_connect_timeout(s.connect_timeout);
                if !s.token.is_empty() {
                    c = c.with_token(s.token.expose());
                }
                if !s.datacenter.is_empty() {
                    c = c.with_datacenter(s.datacenter);
                }
                if let Some(ca) = s.ca_file {
                    c = c.with_ca_file(ca);
                }
                Ok(Arc::new(
                    waypost_registry_consul::ConsulRegistry::connect(c).await?,
                ))
            }
            #[cfg(not(feature = "consul"))]
            Err(not_compiled(RegistryType::Consul))
        }
        RegistryType::Nacos => {
            #[cfg(feature = "nacos")]
            {
                let s = config.nacos.unwrap_or_default();
                let mut c = waypost_registry_nacos::NacosConfig::new(s.server_addr)
                    .with_namespace(s.namespace)
                    .with_group(s.group)
                    .with_ttl(s.ttl)
                    .with_connect_timeout(s.connect_timeout);
                if !s.username.is_empty() {
                    c = c.with_credentials(s.username, s.password.expose());
                }
                Ok(Arc::new(
                    waypost_registry_nacos::NacosRegistry::connect(c).await?,
                ))
            }
            #[cfg(not(feature = "nacos"))]
            Err(not_compiled(RegistryType::Nacos))
        }
        RegistryType::Zookeeper => {
            #[cfg(feature = "zookeeper")]
            {
                let s = config.zookeeper.unwrap_or_default();
                let mut c = waypost_registry_zookeeper::ZookeeperConfig::new(s.servers)
                    .with_prefix(s.prefix)
                    .with_session_timeout(s.session_timeout)
                    .with_ttl(s.ttl)
                    .with_connect_timeout(s.connect_timeout);
                if !s.username.is_empty() {
                    c = c.with_digest_auth(s.username, s.password.expose());
                }
                if !s.chroot.is_empty() {
                    c = c.with_chroot(s.chroot);
                }
                Ok(Arc::new(
                    waypost_registry_zookeeper::ZookeeperRegistry::connect(c).await?,
                ))
            }
            #[cfg(not(feature = "zookeeper"))]
            Err(not_compiled(RegistryType::Zookeeper))
        }
    }
}
