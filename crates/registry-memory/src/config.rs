//! Configuration of the in-memory registry.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use waypost_core_types::validate::{check_duration, INTERVAL, TTL};
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
    /// How often expired instances are removed (and their `Deleted` events sent). Default 1 s;
    /// 10 ms to 24 h.
    #[serde(with = "waypost_core_types::time::config_duration")]
    pub cleanup_interval: Duration,
    /// TTL for instances registered with `ttl == 0`; `None` (the default) means such instances
    /// never expire. 1 ms to 365 days.
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
    /// | setting | accepted |
    /// |---|---|
    /// | `cleanup_interval` | 10 ms to 24 h ([`INTERVAL`]); below 10 ms the sweep would keep a core busy |
    /// | `default_ttl` | unset (no expiry), or 1 ms to 365 days ([`TTL`]) |
    /// | `watch_buffer` | at least 1 |
    ///
    /// Values outside, `Duration::MAX` included, are rejected, never clamped.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the setting and its bounds.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidConfig(format!("memory: {m}")));
        if let Err(m) = check_duration("cleanup_interval", self.cleanup_interval, INTERVAL) {
            return bad(m);
        }
        if let Some(ttl) = self.default_ttl {
            if let Err(m) = check_duration("default_ttl", ttl, TTL) {
                return bad(format!("{m} (leave it unset for no expiry)"));
            }
        }
        if self.watch_buffer == 0 {
            return bad("watch_buffer must be greater than zero".into());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_bounds() {
        let with = |cleanup: Duration, ttl: Option<Duration>| MemoryConfig {
            cleanup_interval: cleanup,
            default_ttl: ttl,
            ..MemoryConfig::default()
        };
        with(Duration::from_millis(10), Some(Duration::from_millis(1)))
            .validate()
            .unwrap();
        with(
            Duration::from_secs(86_400),
            Some(Duration::from_secs(365 * 86_400)),
        )
        .validate()
        .unwrap();
        for (config, want) in [
            (
                with(Duration::ZERO, None),
                "cleanup_interval 0ns is outside 10ms..=24h",
            ),
            (with(Duration::from_nanos(1), None), "cleanup_interval 1ns"),
            (with(Duration::from_millis(9), None), "cleanup_interval 9ms"),
            (
                with(Duration::MAX, None),
                "cleanup_interval 18446744073709551615.999999999s",
            ),
            (
                with(Duration::from_secs(1), Some(Duration::ZERO)),
                "default_ttl 0ns",
            ),
            (
                with(Duration::from_secs(1), Some(Duration::MAX)),
                "default_ttl",
            ),
        ] {
            let e = config.validate().unwrap_err().to_string();
            assert!(e.starts_with("invalid configuration: memory: "), "{e}");
            assert!(e.contains(want), "{e}");
        }
    }
}
