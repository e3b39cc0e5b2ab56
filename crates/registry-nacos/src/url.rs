//! `nacos://` URLs.

use std::str::FromStr;

use waypost_core_types::url::{invalid, RegistryUrl};
use waypost_core_types::{Error, Result};

use crate::NacosConfig;

/// Parses `nacos://[user:password@]host[:port][,host[:port]…][?parameters]`, then validates.
///
/// - hosts: the servers' HTTP endpoints (port 8848 when left out; gRPC is that + 1000);
/// - user and password: Nacos authentication (percent-encode `/`, `@`, `:`);
/// - no path;
/// - parameters: `namespace`, `group`, `cluster`, `app_name`, `cache_dir` (text), `grpc_port`,
///   `watch_buffer` (numbers), and the durations (`500ms`, `30s`) `ttl`, `connect_timeout`,
///   `probe_interval`, `service_poll_interval`.
///
/// ```
/// use waypost_registry_nacos::NacosConfig;
///
/// let config: NacosConfig =
///     "nacos://nacos:s3cret@localhost:8848?namespace=public&group=DEFAULT_GROUP".parse()?;
/// // One port, never the Laravel-Go module's `localhost:8848:8848`.
/// assert_eq!(config.server_addr, "localhost:8848");
/// assert!(!format!("{config:?}").contains("s3cret"));
/// # Ok::<(), waypost_core_types::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidConfig`] for another scheme, a path, an unknown parameter or a bad value; the
/// message never contains the password.
impl FromStr for NacosConfig {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let mut url = RegistryUrl::parse(s)?;
        if url.scheme() != "nacos" {
            return Err(invalid(format!(
                "a Nacos URL starts with `nacos://`, not `{}://`",
                waypost_core_types::quote::quoted(url.scheme())
            )));
        }
        url.no_path("use `?namespace=…&group=…`")?;
        let mut config = NacosConfig::new(url.hosts_with_port(8848)?.join(","));
        (config.username, config.password) = url.take_credentials();
        for (key, field) in [
            ("namespace", &mut config.namespace),
            ("group", &mut config.group),
            ("cluster", &mut config.cluster),
            ("app_name", &mut config.app_name),
        ] {
            if let Some(v) = url.take(key) {
                *field = v;
            }
        }
        config.cache_dir = url.take("cache_dir").map(Into::into);
        config.grpc_port = url.take_port("grpc_port")?;
        if let Some(n) = url.take_parsed("watch_buffer")? {
            config.watch_buffer = n;
        }
        for (key, field) in [
            ("ttl", &mut config.ttl),
            ("connect_timeout", &mut config.connect_timeout),
            ("probe_interval", &mut config.probe_interval),
            ("service_poll_interval", &mut config.service_poll_interval),
        ] {
            if let Some(d) = url.take_duration(key)? {
                *field = d;
            }
        }
        url.finish()?;
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;

    #[test]
    fn every_parameter() {
        let c: NacosConfig = "nacos://u:p%2Fw@n1,n2:9848/?namespace=dev&group=G&cluster=C1\
             &app_name=orders&cache_dir=/tmp/nacos&grpc_port=9999&watch_buffer=8&ttl=45s\
             &connect_timeout=2s&probe_interval=250ms&service_poll_interval=3s"
            .parse()
            .unwrap();
        assert_eq!(c.server_addr, "n1:8848,n2:9848");
        assert_eq!(c.username.as_deref(), Some("u"));
        assert!(c.password.is_some());
        assert!(!format!("{c:?}").contains("p/w"));
        assert_eq!(
            (c.namespace.as_str(), c.group.as_str(), c.cluster.as_str()),
            ("dev", "G", "C1")
        );
        assert_eq!(c.app_name, "orders");
        assert_eq!(c.cache_dir, Some(PathBuf::from("/tmp/nacos")));
        assert_eq!(c.grpc_port, Some(9999));
        assert_eq!(c.watch_buffer, 8);
        assert_eq!(c.ttl, Duration::from_secs(45));
        assert_eq!(c.connect_timeout, Duration::from_secs(2));
        assert_eq!(c.probe_interval, Duration::from_millis(250));
        assert_eq!(c.service_poll_interval, Duration::from_secs(3));
        let d: NacosConfig = "nacos://localhost".parse().unwrap();
        assert_eq!(d, NacosConfig::default());
    }

    #[test]
    fn bad_urls() {
        for (url, want) in [
            ("nacos://h/ns", "no path"),
            ("nacso://h", "not `nacso://`"),
            ("nacos://h?grpc_port=70000", "`grpc_port`"),
            ("nacos://h?group=", "group must not be empty"),
            ("nacos://:pw@h", "without a username"),
            ("nacos://h?colour=blue", "unknown parameter `colour`"),
            ("nacos://h?grpc_port=+80", "`grpc_port`"),
            ("nacos://h?grpc_port=080", "`grpc_port`"),
            (
                "nacos://h?connect_timeout=18446744073709551616ns",
                "larger than",
            ),
            ("nacos://h?connect_timeout=1000h", "outside 1ms..=24h"),
        ] {
            let e = url.parse::<NacosConfig>().unwrap_err().to_string();
            assert!(e.contains(want), "{url}: {e}");
            assert!(!e.contains("pw"), "{url}: {e}");
        }
    }

    #[test]
    fn serializes_without_the_password_and_reads_back() {
        let c: NacosConfig = "nacos://nacos:hunter2@n1:8848?group=G&ttl=45s&probe_interval=250ms"
            .parse()
            .unwrap();
        let json = serde_json::to_string(&c).unwrap();
        assert!(!json.contains("hunter2"), "{json}");
        assert!(json.contains(r#""password":"[redacted]""#), "{json}");
        let mut back: NacosConfig = serde_json::from_str(&json).unwrap();
        back.password = c.password.clone();
        assert_eq!(back, c);
    }
}
