//! `memory://` URLs.

use std::str::FromStr;

use waypost_core_types::url::RegistryUrl;
use waypost_core_types::{Error, Result};

use crate::MemoryConfig;

/// Parses `memory://` (or `mem://`) with the parameters `cleanup_interval`, `default_ttl`
/// (durations such as `500ms`, `30s`) and `watch_buffer` (a number), then validates.
///
/// ```
/// use std::time::Duration;
/// use waypost_registry_memory::MemoryConfig;
///
/// let config: MemoryConfig = "memory://?default_ttl=30s".parse()?;
/// assert_eq!(config.default_ttl, Some(Duration::from_secs(30)));
/// # Ok::<(), waypost_core_types::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidConfig`] for another scheme, a host, path or credentials, an unknown
/// parameter or a bad value.
impl FromStr for MemoryConfig {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let mut url = RegistryUrl::parse(s)?;
        if !matches!(url.scheme(), "memory" | "mem") {
            return Err(waypost_core_types::url::invalid(format!(
                "a memory URL starts with `memory://`, not `{}://`",
                waypost_core_types::quote::quoted(url.scheme())
            )));
        }
        url.no_credentials()?;
        url.no_hosts()?;
        url.no_path("use `memory://?…`")?;
        let mut config = MemoryConfig::default();
        if let Some(d) = url.take_duration("cleanup_interval")? {
            config.cleanup_interval = d;
        }
        config.default_ttl = url.take_duration("default_ttl")?;
        if let Some(n) = url.take_parsed("watch_buffer")? {
            config.watch_buffer = n;
        }
        url.finish()?;
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn every_parameter() {
        let c: MemoryConfig = "memory://?cleanup_interval=250ms&default_ttl=30s&watch_buffer=8"
            .parse()
            .unwrap();
        assert_eq!(c.cleanup_interval, Duration::from_millis(250));
        assert_eq!(c.default_ttl, Some(Duration::from_secs(30)));
        assert_eq!(c.watch_buffer, 8);
        assert_eq!(
            "mem://".parse::<MemoryConfig>().unwrap(),
            MemoryConfig::default()
        );
    }

    #[test]
    fn rejects_what_a_memory_url_cannot_have() {
        for (url, want) in [
            ("memory://host", "no host"),
            ("memory://u:p@", "no user name"),
            ("memory:///x", "no path"),
            ("etcd://h", "memory://"),
            ("memory://?colour=blue", "unknown parameter `colour`"),
            ("memory://?cleanup_interval=0s", "cleanup_interval"),
            ("memory://?cleanup_interval=1ns", "outside 10ms..=24h"),
            (
                "memory://?cleanup_interval=18446744073709551616ns",
                "larger than",
            ),
            ("memory://?default_ttl=1000000h", "outside 1ms..=365d"),
        ] {
            let e = url.parse::<MemoryConfig>().unwrap_err().to_string();
            assert!(e.contains(want), "{url}: {e}");
        }
    }

    #[test]
    fn serializes_to_what_it_reads() {
        let c: MemoryConfig = "memory://?cleanup_interval=250ms&default_ttl=30s"
            .parse()
            .unwrap();
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(
            json,
            r#"{"cleanup_interval":"250ms","default_ttl":"30s","watch_buffer":4096}"#
        );
        assert_eq!(serde_json::from_str::<MemoryConfig>(&json).unwrap(), c);
    }
}
