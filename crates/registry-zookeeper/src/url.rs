//! `zookeeper://` URLs.

use std::str::FromStr;

use waypost_core_types::url::{invalid, RegistryUrl};
use waypost_core_types::{Error, Result};

use crate::ZookeeperConfig;

/// Parses `zookeeper://[user:password@]host[:port][,host[:port]…][/prefix][?parameters]` (or
/// `zk://`), then validates.
///
/// - hosts: the ensemble (port 2181 when left out);
/// - user and password: digest authentication (percent-encode `/`, `@`, `:`);
/// - path: the prefix (default: the format's, `/laravel-go/services` for `laravel-go` and
///   `auto`, `/services` for `curator`);
/// - parameters: `format` (`laravel-go`, `curator`, `auto`: the record format),
///   `session_timeout`, `ttl`, `connect_timeout`, `max_backoff` (durations such as `500ms`,
///   `10s`), `chroot` (a path), `watch_buffer` (a number).
///
/// ```
/// use std::time::Duration;
/// use waypost_registry_zookeeper::ZookeeperConfig;
///
/// let config: ZookeeperConfig = "zk://z1,z2:2182/svc?session_timeout=4s".parse()?;
/// assert_eq!(config.servers, ["z1:2181", "z2:2182"]);
/// assert_eq!(config.session_timeout, Duration::from_secs(4));
///
/// // Spring Cloud Zookeeper services, under Curator's default `/services`:
/// let spring: ZookeeperConfig = "zk://z1?format=curator".parse()?;
/// assert_eq!(spring.prefix, "/services");
/// # Ok::<(), waypost_core_types::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidConfig`] for another scheme, an unknown parameter or a bad value; the
/// message never contains the password.
impl FromStr for ZookeeperConfig {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let mut url = RegistryUrl::parse(s)?;
        if !matches!(url.scheme(), "zookeeper" | "zk") {
            return Err(invalid(format!(
                "a ZooKeeper URL starts with `zookeeper://` or `zk://`, not `{}://`",
                waypost_core_types::quote::quoted(url.scheme())
            )));
        }
        let mut config = ZookeeperConfig::new(url.hosts_with_port(2181)?);
        if let Some(format) = url.take("format") {
            config.format = format.parse().map_err(|e| match e {
                Error::InvalidConfig(why) => invalid(format!("parameter `format`: {why}")),
                other => other,
            })?;
        }
        config.prefix = match url.path_prefix() {
            Some(prefix) => prefix,
            None => config.format.default_prefix().to_owned(),
        };
        (config.username, config.password) = url.take_credentials();
        for (key, field) in [
            ("session_timeout", &mut config.session_timeout),
            ("ttl", &mut config.ttl),
            ("connect_timeout", &mut config.connect_timeout),
            ("max_backoff", &mut config.max_backoff),
        ] {
            if let Some(d) = url.take_duration(key)? {
                *field = d;
            }
        }
        config.chroot = url.take("chroot");
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
    use waypost_core_types::record::RecordFormat;
    use waypost_core_types::Secret;

    #[test]
    fn every_parameter() {
        let c: ZookeeperConfig = "zookeeper://u:p%40w@z1:2181,z2/svc/?session_timeout=4s&ttl=20s\
             &connect_timeout=3s&max_backoff=2s&chroot=/app&watch_buffer=32&format=curator"
            .parse()
            .unwrap();
        assert_eq!(c.servers, ["z1:2181", "z2:2181"]);
        assert_eq!(c.prefix, "/svc");
        assert_eq!(c.format, RecordFormat::Curator);
        assert_eq!(c.username.as_deref(), Some("u"));
        assert_eq!(c.password.as_ref().map(Secret::expose), Some("p@w"));
        assert_eq!(c.session_timeout, Duration::from_secs(4));
        assert_eq!(c.ttl, Duration::from_secs(20));
        assert_eq!(c.connect_timeout, Duration::from_secs(3));
        assert_eq!(c.max_backoff, Duration::from_secs(2));
        assert_eq!(c.chroot.as_deref(), Some("/app"));
        assert_eq!(c.watch_buffer, 32);
        let d: ZookeeperConfig = "zk://localhost".parse().unwrap();
        assert_eq!(d.prefix, crate::DEFAULT_PREFIX);
        assert_eq!(d.format, RecordFormat::LaravelGo);
        for (url, format, prefix) in [
            ("zk://h?format=curator", RecordFormat::Curator, "/services"),
            ("zk://h/svc?format=curator", RecordFormat::Curator, "/svc"),
            ("zk://h/?format=curator", RecordFormat::Curator, "/services"),
            (
                "zk://h/laravel-go/services?format=curator",
                RecordFormat::Curator,
                crate::DEFAULT_PREFIX,
            ),
            (
                "zk://h/spring?format=CURATOR",
                RecordFormat::Curator,
                "/spring",
            ),
            (
                "zk://h?format=auto",
                RecordFormat::Auto,
                crate::DEFAULT_PREFIX,
            ),
            (
                "zk://h?format=laravel-go",
                RecordFormat::LaravelGo,
                crate::DEFAULT_PREFIX,
            ),
        ] {
            let c: ZookeeperConfig = url.parse().unwrap();
            assert_eq!((c.format, c.prefix.as_str()), (format, prefix), "{url}");
        }
        assert_eq!(d.servers, ["localhost:2181"]);
    }

    #[test]
    fn bad_urls() {
        for (url, want) in [
            ("zk://", "at least one host"),
            ("zoo://h", "not `zoo://`"),
            ("zk://h?session_timeout=0s", "session_timeout"),
            ("zk://h?colour=blue", "unknown parameter `colour`"),
            ("zk://h?session_timeout=10ms", "outside 100ms..=24h"),
            (
                "zk://h?session_timeout=18446744073709551616ns",
                "larger than",
            ),
            ("zk://h/a/../b", "`.` or `..` segment"),
            ("zk://u@h", "password is missing"),
            (
                "zk://h?format=yaml",
                "parameter `format`: unknown record format yaml",
            ),
            ("zk://h?format=", "unknown record format"),
        ] {
            let e = url.parse::<ZookeeperConfig>().unwrap_err().to_string();
            assert!(e.contains(want), "{url}: {e}");
        }
    }

    #[test]
    fn serializes_without_the_password_and_reads_back() {
        let c: ZookeeperConfig = "zk://alice:hunter2@z1/svc?session_timeout=4s"
            .parse()
            .unwrap();
        let json = serde_json::to_string(&c).unwrap();
        assert!(!json.contains("hunter2"), "{json}");
        let mut back: ZookeeperConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(
            back.password.as_ref().map(Secret::expose),
            Some("[redacted]")
        );
        back.password = c.password.clone();
        assert_eq!(back, c);
        // Without a path: the format's default prefix, written out and read back as such.
        let c: ZookeeperConfig = "zk://z1?format=curator".parse().unwrap();
        let json = serde_json::to_string(&c).unwrap();
        assert!(json.contains(r#""prefix":"/services""#), "{json}");
        let back: ZookeeperConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
    }
}
