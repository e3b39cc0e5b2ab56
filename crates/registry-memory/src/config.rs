//! Configuration of the in-memory registry.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use waypost_core_types::{Error, Result};

use crate::MemoryRegistry;

/// Settings of a [`MemoryRegistry`].
///
/// From a config file (serde; durations as `"30s"`, `"500ms"` or integer nanoseconds) or a URL
/// (`"memory://?cleanup_interval=500ms&default_ttl=30s".parse()`; the parameters are listed at
/// its `FromStr` impl).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> waypost_core_types::Result<()> {
/// use std::time::Duration;
/// use waypost_registry_memory::MemoryRegistry;
/// let registry = MemoryRegistry::builder()
///     .cleanup_interval(Duration::from_millis(500))
///     .default_ttl(Some(Duration::from_secs(30)))
///     .build()?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct MemoryConfig {
    /// How often expired instances are removed (and their `Deleted` events sent). Default 1 s.
    #[serde(with = "waypost_core_types::time::config_duration")]
    pub cleanup_interval: Duration,
    /// TTL for instances registered with `ttl == 0`; `None` (the default) means such instances
    /// never expire.
    #[serde(with = "waypost_core_types::time::config_duration::option")]
    pub default_ttl: Option<Duration>,
    /// Changes buffered per watcher before it is considered lagging and resynced. Default 4096.
    pub watch_buffer: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            cleanup_interval: Duration::from_secs(1),
            default_ttl: None,
            watch_buffer: 4096,
        }
    }
}

impl MemoryConfig {
    /// Checks the values.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a zero cleanup interval or watch buffer.
    pub fn validate(&self) -> Result<()> {
        if self.cleanup_interval.is_zero() {
            return Err(Error::InvalidConfig(
                "memory: cleanup_interval must be greater than zero".into(),
            ));
        }
        if self.watch_buffer == 0 {
            return Err(Error::InvalidConfig(
                "memory: watch_buffer must be greater than zero".into(),
            ));
        }
        if self.default_ttl.is_some_and(|t| t.is_zero()) {
            return Err(Error::InvalidConfig(
                "memory: default_ttl must be greater than zero (or unset for no expiry)".into(),
            ));
        }
        Ok(())
    }
}

/// Builds a [`MemoryRegistry`].
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct MemoryRegistryBuilder {
    config: MemoryConfig,
}

impl MemoryRegistryBuilder {
    /// Starts from a config.
    pub fn from_config(config: MemoryConfig) -> Self {
        MemoryRegistryBuilder { config }
    }

    /// See [`MemoryConfig::cleanup_interval`].
    pub fn cleanup_interval(mut self, interval: Duration) -> Self {
        self.config.cleanup_interval = interval;
        self
    }

    /// See [`MemoryConfig::default_ttl`].
    pub fn default_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.config.default_ttl = ttl;
        self
    }

    /// See [`MemoryConfig::watch_buffer`].
    pub fn watch_buffer(mut self, buffer: usize) -> Self {
        self.config.watch_buffer = buffer;
        self
    }

    /// Validates the config and starts the registry (and its cleanup worker).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for invalid values, or when called outside a tokio runtime.
    pub fn build(self) -> Result<MemoryRegistry> {
        self.config.validate()?;
        MemoryRegistry::start(self.config)
    }
}
