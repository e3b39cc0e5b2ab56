//! `etcd://` URLs.

use std::str::FromStr;

use waypost_core_types::record::RecordFormat;
use waypost_core_types::url::{invalid, RegistryUrl};
use waypost_core_types::{Error, Result};

use crate::{EtcdConfig, EtcdTlsConfig};

/// Parses `etcd://[user:password@]host[:port][,host[:port]…][/prefix][?parameters]`, then
/// validates.
///
/// - hosts: the cluster members (port 2379 when left out);
/// - user and password: etcd authentication (percent-encode `/`, `@`, `:` as `%2F`, `%40`, `%3A`);
/// - path: the key prefix (default: the format's, `/laravel-go/services` for `laravel-go` and
///   `auto`, `/microservices` for `kratos`, the key space root for `go-zero`);
/// - parameters: `format` (`laravel-go`, `kratos`, `go-zero`, `auto`: the record format), `ttl`, `connect_timeout`, `request_timeout`, `max_backoff` (durations such as
///   `500ms`, `30s`, `1m30s`), `watch_buffer` (a number), and TLS: `ca_file`, `cert_file`,
///   `key_file`, `domain_name` (any of them turns TLS on), or `tls=true` to use TLS with the
///   system's roots only.
///
/// ```
/// use std::time::Duration;
/// use waypost_registry_etcd::EtcdConfig;
///
/// let config: EtcdConfig = "etcd://app:s3cret@10.0.0.1:2379,10.0.0.2/svc?ttl=15s".parse()?;
/// assert_eq!(config.endpoints, ["10.0.0.1:2379", "10.0.0.2:2379"]);
/// assert_eq!((config.prefix.as_str(), config.ttl), ("/svc", Duration::from_secs(15)));
/// # Ok::<(), waypost_core_types::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidConfig`] for another scheme, an unknown parameter or a bad value; the
/// message never contains the password.
impl FromStr for EtcdConfig {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let mut url = RegistryUrl::parse(s)?;
        if url.scheme() != "etcd" {
            return Err(invalid(format!(
                "an etcd URL starts with `etcd://`, not `{}://`",
                waypost_core_types::quote::quoted(url.scheme())
            )));
        }
        let mut config = EtcdConfig::new(url.hosts_with_port(2379)?);
        if let Some(format) = url.take("format") {
            config.format = format.parse::<RecordFormat>()?;
        }
        config.prefix = match url.path_prefix() {
            Some(prefix) => prefix,
            None => config.format.default_prefix().to_owned(),
        };
        (config.username, config.password) = url.take_credentials();
        if let Some(d) = url.take_duration("ttl")? {
            config.ttl = d;
        }
        if let Some(d) = url.take_duration("connect_timeout")? {
            config.connect_timeout = d;
        }
        if let Some(d) = url.take_duration("request_timeout")? {
            config.request_timeout = d;
        }
        if let Some(d) = url.take_duration("max_backoff")? {
            config.max_backoff = d;
        }
        if let Some(n) = url.take_parsed("watch_buffer")? {
            config.watch_buffer = n;
        }
        let tls_on = url.take_parsed::<bool>("tls")?;
        let tls = EtcdTlsConfig {
            ca_file: url.take("ca_file").map(Into::into),
            cert_file: url.take("cert_file").map(Into::into),
            key_file: url.take("key_file").map(Into::into),
            domain_name: url.take("domain_name"),
        };
        let tls_files = tls != EtcdTlsConfig::default();
        match tls_on {
            Some(false) if tls_files => {
                return Err(invalid(
                    "`tls=false` contradicts `ca_file`/`cert_file`/`key_file`/`domain_name`",
                ))
            }
            Some(true) => config.tls = Some(tls),
            _ if tls_files => config.tls = Some(tls),
            _ => {}
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
    use waypost_core_types::Secret;

    #[test]
    fn every_parameter() {
        let c: EtcdConfig = "etcd://app:p%2Fw@h1:2379,h2,[::1]:2380/my/prefix/?ttl=15s\
             &connect_timeout=2s&request_timeout=3s&max_backoff=4s&watch_buffer=64\
             &ca_file=/ca.pem&cert_file=/c.pem&key_file=/k.pem&domain_name=etcd.local&tls=true"
            .parse()
            .unwrap();
        assert_eq!(c.endpoints, ["h1:2379", "h2:2379", "[::1]:2380"]);
        assert_eq!(c.username.as_deref(), Some("app"));
        assert_eq!(c.password.as_ref().map(Secret::expose), Some("p/w"));
        assert_eq!(c.prefix, "/my/prefix");
        assert_eq!(c.ttl, Duration::from_secs(15));
        assert_eq!(c.connect_timeout, Duration::from_secs(2));
        assert_eq!(c.request_timeout, Duration::from_secs(3));
        assert_eq!(c.max_backoff, Duration::from_secs(4));
        assert_eq!(c.watch_buffer, 64);
        let tls = c.tls.unwrap();
        assert_eq!(tls.ca_file, Some(PathBuf::from("/ca.pem")));
        assert_eq!(tls.cert_file, Some(PathBuf::from("/c.pem")));
        assert_eq!(tls.key_file, Some(PathBuf::from("/k.pem")));
        assert_eq!(tls.domain_name.as_deref(), Some("etcd.local"));
    }

    #[test]
    fn defaults_and_tls_switch() {
        let c: EtcdConfig = "etcd://localhost".parse().unwrap();
        assert_eq!(c.endpoints, ["localhost:2379"]);
        assert_eq!(c.prefix, crate::DEFAULT_PREFIX);
        assert!(c.username.is_none() && c.password.is_none() && c.tls.is_none());
        let c: EtcdConfig = "etcd://h?tls=true".parse().unwrap();
        assert_eq!(c.tls, Some(EtcdTlsConfig::default()));
        let c: EtcdConfig = "etcd://h?ca_file=ca.pem".parse().unwrap();
        assert!(c.tls.is_some());
    }

    #[test]
    fn format_parameter() {
        let c: EtcdConfig = "etcd://h?format=kratos".parse().unwrap();
        assert_eq!(
            (c.format, c.prefix.as_str()),
            (RecordFormat::Kratos, "/microservices")
        );
        let c: EtcdConfig = "etcd://h?format=go-zero".parse().unwrap();
        assert_eq!((c.format, c.prefix.as_str()), (RecordFormat::GoZero, ""));
        let c: EtcdConfig = "etcd://h/laravel-go/services?format=kratos"
            .parse()
            .unwrap();
        assert_eq!(
            (c.format, c.prefix.as_str()),
            (RecordFormat::Kratos, "/laravel-go/services")
        );
        let c: EtcdConfig = "etcd://h?format=auto".parse().unwrap();
        assert_eq!(
            (c.format, c.prefix.as_str()),
            (RecordFormat::Auto, crate::DEFAULT_PREFIX)
        );
        let c: EtcdConfig = "etcd://h?format=laravel-go".parse().unwrap();
        assert_eq!(c, "etcd://h".parse::<EtcdConfig>().unwrap());
        let e = "etcd://h?format=protobuf"
            .parse::<EtcdConfig>()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown record format") && e.contains("kratos"),
            "{e}"
        );
    }

    #[test]
    fn bad_urls() {
        for (url, want) in [
            ("etcd://", "at least one host"),
            ("etdc://h", "not `etdc://`"),
            ("etcd://h?ttl=500ms", "ttl 500ms is outside 1s..=365d"),
            ("etcd://h/a/../b", "`.` or `..` segment"),
            (
                "etcd://h?request_timeout=18446744073709551616ns",
                "larger than",
            ),
            ("etcd://h?connect_timeout=25h", "outside 1ms..=24h"),
            ("etcd://h?watch_buffer=many", "`watch_buffer`"),
            ("etcd://h?tls=false&ca_file=x", "contradicts"),
            ("etcd://h?colour=blue", "unknown parameter `colour`"),
            ("etcd://u@h", "username and password"),
        ] {
            let e = url.parse::<EtcdConfig>().unwrap_err().to_string();
            assert!(e.contains(want), "{url}: {e}");
        }
    }

    #[test]
    fn serializes_without_the_password_and_reads_back() {
        let c: EtcdConfig = "etcd://app:hunter2@h1:2379/svc?ttl=15s&request_timeout=1500ms"
            .parse()
            .unwrap();
        let json = serde_json::to_string(&c).unwrap();
        assert!(!json.contains("hunter2"), "{json}");
        assert!(json.contains(r#""password":"[redacted]""#), "{json}");
        let back: EtcdConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(
            back.password.as_ref().map(Secret::expose),
            Some("[redacted]")
        );
        let mut expected = c.clone();
        expected.password = back.password.clone();
        assert_eq!(back, expected);
    }
}
