//! [`RegistryBuilder`] and [`new_service_registry`]: from config to a running registry.

use std::sync::Arc;
use std::time::Duration;

#[cfg(any(
    feature = "etcd",
    feature = "consul",
    feature = "nacos",
    feature = "zookeeper"
))]
use waypost_core_types::Secret;
use waypost_core_types::{Error, Result, ServiceRegistry};

use crate::config::{RegistryConfig, RegistryType};

/// Builds a registry step by step (the Laravel-Go module's `NewRegistryBuilder()`), with the
/// setters its builder lacked: credentials, token, TTL and timeouts.
///
/// It edits a [`RegistryConfig`], so every default and rule is the chosen backend's own.
/// `with_etcd`, `with_consul`, `with_nacos`, `with_zookeeper` choose the backend as well as
/// setting its address; the other setters apply to the chosen backend, and one that does not
/// apply to it (a token for etcd, say) makes [`build`](Self::build) fail with a clear error.
/// For a setting without a setter, start [`from_config`](Self::from_config) or
/// [`from_url`](Self::from_url).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> waypost::Result<()> {
/// use std::time::Duration;
/// use waypost::{RegistryBuilder, RegistryConfig, RegistryType};
///
/// let registry = RegistryBuilder::new()
///     .with_type(RegistryType::Memory)
///     .with_default_ttl(Duration::from_secs(30))
///     .build()
///     .await?;
/// assert_eq!(registry.backend(), "memory");
///
/// # #[cfg(feature = "etcd")] {
/// let config = RegistryBuilder::new()
///     .with_etcd(["10.0.0.1:2379", "10.0.0.2:2379"], "/laravel-go/services")
///     .with_credentials("admin", "password")
///     .with_ttl(Duration::from_secs(15))
///     .config()?;
/// let RegistryConfig::Etcd(etcd) = config else { unreachable!() };
/// assert_eq!(etcd.endpoints.len(), 2);
/// # }
/// # Ok(()) }
/// ```
///
/// Its `Debug` output shows the config with secrets redacted, and a URL that failed to parse only
/// as the parse error (which never quotes the URL's password).
#[derive(Debug, Clone)]
#[must_use]
pub struct RegistryBuilder {
    /// `None` only when no backend was chosen and the in-memory one is not compiled in.
    config: Option<RegistryConfig>,
    /// The first error of a setter or of `from_url`, reported by `config`/`build`.
    error: Option<Pending>,
}

/// An error kept until [`RegistryBuilder::config`].
#[derive(Debug, Clone)]
enum Pending {
    Invalid(String),
    Unsupported(String),
}

impl Pending {
    fn from_error(e: Error) -> Self {
        match e {
            Error::InvalidConfig(m) => Pending::Invalid(m),
            Error::Unsupported(m) => Pending::Unsupported(m),
            other => Pending::Invalid(other.to_string()),
        }
    }

    fn to_error(&self) -> Error {
        match self {
            Pending::Invalid(m) => Error::InvalidConfig(m.clone()),
            Pending::Unsupported(m) => Error::Unsupported(m.clone()),
        }
    }
}

impl Default for RegistryBuilder {
    fn default() -> Self {
        RegistryBuilder {
            config: RegistryConfig::of(RegistryType::Memory).ok(),
            error: None,
        }
    }
}

impl RegistryBuilder {
    /// A builder for the in-memory registry with its defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts from an existing config.
    pub fn from_config(config: RegistryConfig) -> Self {
        RegistryBuilder {
            config: Some(config),
            error: None,
        }
    }

    /// Starts from a registry URL (see [`RegistryConfig::from_url`]); a malformed URL fails at
    /// [`config`](Self::config) / [`build`](Self::build). Only the parse error is kept, not the
    /// URL.
    pub fn from_url(url: &str) -> Self {
        match RegistryConfig::from_url(url) {
            Ok(config) => Self::from_config(config),
            Err(e) => RegistryBuilder {
                config: None,
                error: Some(Pending::from_error(e)),
            },
        }
    }

    pub(crate) fn fail(mut self, error: Error) -> Self {
        self.error.get_or_insert_with(|| Pending::from_error(error));
        self
    }

    /// Chooses the backend; its config starts from the backend's defaults unless that backend
    /// is already the chosen one.
    pub fn with_type(mut self, kind: RegistryType) -> Self {
        if self.config.as_ref().map(RegistryConfig::kind) == Some(kind) {
            return self;
        }
        match RegistryConfig::of(kind) {
            Ok(config) => {
                self.config = Some(config);
                self
            }
            Err(e) => self.fail(e),
        }
    }

    /// Applies `f` to the chosen backend's config; `f` returns `false` when the setting does not
    /// apply to that backend.
    fn set(
        mut self,
        setter: &str,
        applies_to: &str,
        f: impl FnOnce(&mut RegistryConfig) -> bool,
    ) -> Self {
        if self.error.is_some() {
            return self;
        }
        let (applied, kind) = match self.config.as_mut() {
            Some(config) => (f(config), Some(config.kind())),
            None => (false, None),
        };
        if applied {
            return self;
        }
        let msg = match kind {
            Some(kind) => {
                format!("{setter} applies to {applies_to}, not to the chosen {kind} backend")
            }
            None => format!("{setter} applies to {applies_to}, but no backend is chosen"),
        };
        self.fail(Error::InvalidConfig(msg))
    }

    /// etcd with these endpoints and key prefix.
    pub fn with_etcd<I, S>(self, endpoints: I, prefix: impl Into<String>) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let endpoints: Vec<String> = endpoints.into_iter().map(Into::into).collect();
        let prefix = prefix.into();
        self.with_type(RegistryType::Etcd)
            .set("with_etcd", "etcd", |config| match config {
                #[cfg(feature = "etcd")]
                RegistryConfig::Etcd(c) => {
                    (c.endpoints, c.prefix) = (endpoints, prefix);
                    true
                }
                #[allow(unreachable_patterns)] // when only this backend is compiled in
                _ => {
                    let _ = (endpoints, prefix);
                    false
                }
            })
    }

    /// Consul at this agent address with this prefix.
    pub fn with_consul(self, address: impl Into<String>, prefix: impl Into<String>) -> Self {
        let (address, prefix) = (address.into(), prefix.into());
        self.with_type(RegistryType::Consul)
            .set("with_consul", "consul", |config| match config {
                #[cfg(feature = "consul")]
                RegistryConfig::Consul(c) => {
                    (c.address, c.prefix) = (address, prefix);
                    true
                }
                #[allow(unreachable_patterns)] // when only this backend is compiled in
                _ => {
                    let _ = (address, prefix);
                    false
                }
            })
    }

    /// Nacos at this server address, namespace and group.
    pub fn with_nacos(
        self,
        server_addr: impl Into<String>,
        namespace: impl Into<String>,
        group: impl Into<String>,
    ) -> Self {
        let (server_addr, namespace, group) = (server_addr.into(), namespace.into(), group.into());
        self.with_type(RegistryType::Nacos)
            .set("with_nacos", "nacos", |config| match config {
                #[cfg(feature = "nacos")]
                RegistryConfig::Nacos(c) => {
                    (c.server_addr, c.namespace, c.group) = (server_addr, namespace, group);
                    true
                }
                #[allow(unreachable_patterns)] // when only this backend is compiled in
                _ => {
                    let _ = (server_addr, namespace, group);
                    false
                }
            })
    }

    /// ZooKeeper with these servers and path prefix.
    pub fn with_zookeeper<I, S>(self, servers: I, prefix: impl Into<String>) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let servers: Vec<String> = servers.into_iter().map(Into::into).collect();
        let prefix = prefix.into();
        self.with_type(RegistryType::Zookeeper)
            .set("with_zookeeper", "zookeeper", |config| match config {
                #[cfg(feature = "zookeeper")]
                RegistryConfig::Zookeeper(c) => {
                    (c.servers, c.prefix) = (servers, prefix);
                    true
                }
                #[allow(unreachable_patterns)] // when only this backend is compiled in
                _ => {
                    let _ = (servers, prefix);
                    false
                }
            })
    }

    /// User name and password (etcd, Nacos, ZooKeeper digest auth).
    pub fn with_credentials(
        self,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        let (username, password) = (username.into(), password.into());
        self.set(
            "with_credentials",
            "etcd, nacos and zookeeper",
            |config| match config {
                #[cfg(feature = "etcd")]
                RegistryConfig::Etcd(c) => {
                    c.username = Some(username);
                    c.password = Some(Secret::new(password));
                    true
                }
                #[cfg(feature = "nacos")]
                RegistryConfig::Nacos(c) => {
                    c.username = Some(username);
                    c.password = Some(Secret::new(password));
                    true
                }
                #[cfg(feature = "zookeeper")]
                RegistryConfig::Zookeeper(c) => {
                    c.username = Some(username);
                    c.password = Some(Secret::new(password));
                    true
                }
                #[allow(unreachable_patterns)] // when only this backend is compiled in
                _ => {
                    let _ = (username, password);
                    false
                }
            },
        )
    }

    /// The Consul ACL token.
    pub fn with_token(self, token: impl Into<String>) -> Self {
        let token = token.into();
        self.set("with_token", "consul", |config| match config {
            #[cfg(feature = "consul")]
            RegistryConfig::Consul(c) => {
                c.token = Some(Secret::new(token));
                true
            }
            #[allow(unreachable_patterns)] // when only this backend is compiled in
            _ => {
                let _ = token;
                false
            }
        })
    }

    /// The Consul datacenter.
    pub fn with_datacenter(self, datacenter: impl Into<String>) -> Self {
        let datacenter = datacenter.into();
        self.set("with_datacenter", "consul", |config| match config {
            #[cfg(feature = "consul")]
            RegistryConfig::Consul(c) => {
                c.datacenter = Some(datacenter);
                true
            }
            #[allow(unreachable_patterns)] // when only this backend is compiled in
            _ => {
                let _ = datacenter;
                false
            }
        })
    }

    /// The TTL of registrations (etcd lease, Consul check; kept for Nacos and ZooKeeper).
    /// For the in-memory registry, use [`with_default_ttl`](Self::with_default_ttl).
    pub fn with_ttl(self, ttl: Duration) -> Self {
        self.set(
            "with_ttl",
            "remote backends (use with_default_ttl for memory)",
            |config| match config {
                #[cfg(feature = "etcd")]
                RegistryConfig::Etcd(c) => {
                    c.ttl = ttl;
                    true
                }
                #[cfg(feature = "consul")]
                RegistryConfig::Consul(c) => {
                    c.ttl = ttl;
                    true
                }
                #[cfg(feature = "nacos")]
                RegistryConfig::Nacos(c) => {
                    c.ttl = ttl;
                    true
                }
                #[cfg(feature = "zookeeper")]
                RegistryConfig::Zookeeper(c) => {
                    c.ttl = ttl;
                    true
                }
                #[allow(unreachable_patterns)] // when only this backend is compiled in
                _ => {
                    let _ = ttl;
                    false
                }
            },
        )
    }

    /// How long construction may take to reach a remote backend.
    pub fn with_connect_timeout(self, timeout: Duration) -> Self {
        self.set(
            "with_connect_timeout",
            "remote backends",
            |config| match config {
                #[cfg(feature = "etcd")]
                RegistryConfig::Etcd(c) => {
                    c.connect_timeout = timeout;
                    true
                }
                #[cfg(feature = "consul")]
                RegistryConfig::Consul(c) => {
                    c.connect_timeout = timeout;
                    true
                }
                #[cfg(feature = "nacos")]
                RegistryConfig::Nacos(c) => {
                    c.connect_timeout = timeout;
                    true
                }
                #[cfg(feature = "zookeeper")]
                RegistryConfig::Zookeeper(c) => {
                    c.connect_timeout = timeout;
                    true
                }
                #[allow(unreachable_patterns)] // when only this backend is compiled in
                _ => {
                    let _ = timeout;
                    false
                }
            },
        )
    }

    /// The ZooKeeper session timeout.
    pub fn with_session_timeout(self, timeout: Duration) -> Self {
        self.set("with_session_timeout", "zookeeper", |config| match config {
            #[cfg(feature = "zookeeper")]
            RegistryConfig::Zookeeper(c) => {
                c.session_timeout = timeout;
                true
            }
            #[allow(unreachable_patterns)] // when only this backend is compiled in
            _ => {
                let _ = timeout;
                false
            }
        })
    }

    /// The in-memory registry's TTL for instances registered without one.
    pub fn with_default_ttl(self, ttl: Duration) -> Self {
        self.set("with_default_ttl", "memory", |config| match config {
            #[cfg(feature = "memory")]
            RegistryConfig::Memory(c) => {
                c.default_ttl = Some(ttl);
                true
            }
            #[allow(unreachable_patterns)] // when only this backend is compiled in
            _ => {
                let _ = ttl;
                false
            }
        })
    }

    /// The in-memory registry's cleanup interval.
    pub fn with_cleanup_interval(self, interval: Duration) -> Self {
        self.set("with_cleanup_interval", "memory", |config| match config {
            #[cfg(feature = "memory")]
            RegistryConfig::Memory(c) => {
                c.cleanup_interval = interval;
                true
            }
            #[allow(unreachable_patterns)] // when only this backend is compiled in
            _ => {
                let _ = interval;
                false
            }
        })
    }

    /// The validated config, without connecting.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a malformed URL, a misapplied setter or a bad value;
    /// [`Error::Unsupported`] for a backend that is not compiled in.
    pub fn config(&self) -> Result<RegistryConfig> {
        if let Some(e) = &self.error {
            return Err(e.to_error());
        }
        let config = self.config.clone().ok_or_else(|| {
            Error::InvalidConfig(
                "no registry backend chosen (the in-memory one is not compiled in)".into(),
            )
        })?;
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

/// Builds the registry a config describes (the Laravel-Go module's `NewServiceRegistry`),
/// connecting to a remote backend within its connect timeout.
///
/// # Errors
/// [`Error::InvalidConfig`] for a bad config, or the backend's connection error.
pub async fn new_service_registry(config: &RegistryConfig) -> Result<Arc<dyn ServiceRegistry>> {
    config.validate()?;
    let registry: Arc<dyn ServiceRegistry> = match *config {
        #[cfg(feature = "memory")]
        RegistryConfig::Memory(ref c) => Arc::new(
            waypost_registry_memory::MemoryRegistryBuilder::from_config(c.clone()).build()?,
        ),
        #[cfg(feature = "etcd")]
        RegistryConfig::Etcd(ref c) => {
            Arc::new(waypost_registry_etcd::EtcdRegistry::connect(c.clone()).await?)
        }
        #[cfg(feature = "consul")]
        RegistryConfig::Consul(ref c) => {
            Arc::new(waypost_registry_consul::ConsulRegistry::connect(c.clone()).await?)
        }
        #[cfg(feature = "nacos")]
        RegistryConfig::Nacos(ref c) => {
            Arc::new(waypost_registry_nacos::NacosRegistry::connect(c.clone()).await?)
        }
        #[cfg(feature = "zookeeper")]
        RegistryConfig::Zookeeper(ref c) => {
            Arc::new(waypost_registry_zookeeper::ZookeeperRegistry::connect(c.clone()).await?)
        }
    };
    Ok(registry)
}
