//! `consul://` URLs.

use std::str::FromStr;

use waypost_core_types::url::{invalid, RegistryUrl};
use waypost_core_types::{Error, Result};

use crate::{ConsulConfig, ForeignServices};

/// Parses `consul://[:token@]host[:port][/prefix][?parameters]`, then validates.
///
/// - host: the agent (one; port 8500 when left out);
/// - the password part of the user info, or `token=`, is the ACL token (give it once);
/// - path: the prefix that marks our services (default `laravel-go/services`; slashes around
///   it are dropped);
/// - parameters: `scheme` (`http` or `https`), `token`, `datacenter` (or `dc`), `ca_file`,
///   `ca_pem`, `max_response_bytes`, `watch_buffer` (numbers), `foreign_services` (`include` or
///   `skip`), `include_consul_service` (`true` or `false`), and the durations (`500ms`, `30s`, `1m`) `ttl`, `deregister_critical_after`,
///   `connect_timeout`, `request_timeout`, `watch_wait`, `watch_min_interval`,
///   `retry_initial_backoff`, `retry_max_backoff`.
///
/// ```
/// use waypost_registry_consul::ConsulConfig;
///
/// let config: ConsulConfig = "consul://:s3cret@10.0.0.5/laravel-go/services?dc=dc1".parse()?;
/// assert_eq!(config.address, "10.0.0.5:8500");
/// assert_eq!(config.datacenter.as_deref(), Some("dc1"));
/// assert!(!format!("{config:?}").contains("s3cret"));
/// # Ok::<(), waypost_core_types::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidConfig`] for another scheme, more than one host, a user name, the token given
/// twice, an unknown parameter or a bad value; the message never contains the token.
impl FromStr for ConsulConfig {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let mut url = RegistryUrl::parse(s)?;
        if url.scheme() != "consul" {
            return Err(invalid(format!(
                "a Consul URL starts with `consul://`, not `{}://`",
                waypost_core_types::quote::quoted(url.scheme())
            )));
        }
        let hosts = url.hosts_with_port(8500)?;
        let [host] = hosts.as_slice() else {
            return Err(invalid("a `consul://` URL names exactly one agent"));
        };
        let address = match url.take("scheme").as_deref() {
            None | Some("http") => host.clone(),
            Some("https") => format!("https://{host}"),
            Some(other) => {
                return Err(invalid(format!(
                    "parameter `scheme`: `{}` must be http or https",
                    waypost_core_types::quote::quoted(other)
                )))
            }
        };
        let mut config = ConsulConfig::default().with_address(address);
        let prefix = url.path().trim_matches('/');
        if !prefix.is_empty() {
            config.prefix = prefix.to_owned();
        }
        let query_token = url.take_secret("token");
        config.token =
            match (url.take_credentials(), query_token) {
                ((None, None), token) => token,
                ((None, Some(token)), None) => Some(token),
                ((Some(_), _), _) => return Err(invalid(
                    "a Consul URL takes no user name; write the token as `consul://:TOKEN@host`",
                )),
                _ => {
                    return Err(invalid(
                        "give the Consul token once, as `consul://:TOKEN@host` or `?token=`",
                    ))
                }
            };
        config.datacenter = match (url.take("datacenter"), url.take("dc")) {
            (Some(_), Some(_)) => {
                return Err(invalid("give `datacenter` or `dc`, not both"));
            }
            (dc, alias) => dc.or(alias),
        };
        config.ca_file = url.take("ca_file").map(Into::into);
        config.ca_pem = url.take("ca_pem");
        for (key, field) in [
            ("ttl", &mut config.ttl),
            (
                "deregister_critical_after",
                &mut config.deregister_critical_after,
            ),
            ("connect_timeout", &mut config.connect_timeout),
            ("request_timeout", &mut config.request_timeout),
            ("watch_wait", &mut config.watch_wait),
            ("watch_min_interval", &mut config.watch_min_interval),
            ("retry_initial_backoff", &mut config.retry_initial_backoff),
            ("retry_max_backoff", &mut config.retry_max_backoff),
        ] {
            if let Some(d) = url.take_duration(key)? {
                *field = d;
            }
        }
        if let Some(n) = url.take_parsed("max_response_bytes")? {
            config.max_response_bytes = n;
        }
        if let Some(n) = url.take_parsed("watch_buffer")? {
            config.watch_buffer = n;
        }
        if let Some(f) = url.take_parsed("foreign_services")? {
            config.foreign_services = f;
        }
        if let Some(b) = url.take_parsed("include_consul_service")? {
            config.include_consul_service = b;
        }
        url.finish()?;
        config.validate()?;
        Ok(config)
    }
}

/// `include` or `skip`.
impl FromStr for ForeignServices {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "include" => Ok(ForeignServices::Include),
            "skip" => Ok(ForeignServices::Skip),
            other => Err(Error::InvalidConfig(format!(
                "consul: foreign_services `{}` must be include or skip",
                waypost_core_types::quote::quoted(other)
            ))),
        }
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
        let c: ConsulConfig = "consul://agent:8501/team/services/?scheme=https&token=t%2Fk\
             &datacenter=dc2&ca_file=/ca.pem&ca_pem=PEM&max_response_bytes=4096&watch_buffer=8\
             &foreign_services=skip&include_consul_service=true&ttl=10s&deregister_critical_after=2m&connect_timeout=1s\
             &request_timeout=2s&watch_wait=30s&watch_min_interval=250ms\
             &retry_initial_backoff=100ms&retry_max_backoff=5s"
            .parse()
            .unwrap();
        assert_eq!(c.address, "https://agent:8501");
        assert_eq!(c.prefix, "team/services");
        assert_eq!(c.token.as_ref().map(Secret::expose), Some("t/k"));
        assert_eq!(c.datacenter.as_deref(), Some("dc2"));
        assert_eq!(c.ca_file, Some(PathBuf::from("/ca.pem")));
        assert_eq!(c.ca_pem.as_deref(), Some("PEM"));
        assert_eq!(c.max_response_bytes, 4096);
        assert_eq!(c.watch_buffer, 8);
        assert_eq!(c.foreign_services, ForeignServices::Skip);
        assert!(c.include_consul_service);
        assert_eq!(c.ttl, Duration::from_secs(10));
        assert_eq!(c.deregister_critical_after, Duration::from_secs(120));
        assert_eq!(c.connect_timeout, Duration::from_secs(1));
        assert_eq!(c.request_timeout, Duration::from_secs(2));
        assert_eq!(c.watch_wait, Duration::from_secs(30));
        assert_eq!(c.watch_min_interval, Duration::from_millis(250));
        assert_eq!(c.retry_initial_backoff, Duration::from_millis(100));
        assert_eq!(c.retry_max_backoff, Duration::from_secs(5));
    }

    #[test]
    fn token_in_the_user_info_and_defaults() {
        let c: ConsulConfig = "consul://:tok%2Fen@agent?dc=dc1".parse().unwrap();
        assert_eq!(c.address, "agent:8500");
        assert_eq!(c.token.as_ref().map(Secret::expose), Some("tok/en"));
        assert_eq!(c.datacenter.as_deref(), Some("dc1"));
        assert_eq!(c.prefix, crate::DEFAULT_PREFIX);
        assert_eq!(c.foreign_services, ForeignServices::Include);
        assert!(!c.include_consul_service);
    }

    #[test]
    fn bad_urls() {
        for (url, want) in [
            ("consul://:SeCrEt1@h?token=SeCrEt2", "once"),
            ("consul://h1,h2", "exactly one"),
            ("consul://user:SeCrEt@h", "no user name"),
            ("consul://h?scheme=ftp", "http or https"),
            ("consul://h?dc=a&datacenter=b", "not both"),
            ("consul://h?foreign_services=maybe", "`foreign_services`"),
            (
                "consul://h?include_consul_service=yes",
                "`include_consul_service`",
            ),
            ("consul://h?watch_wait=1h", "watch_wait"),
            ("consul://h?colour=blue", "unknown parameter `colour`"),
            ("consul://:SeCrEt@h/a/../b", "`.` or `..` segment"),
            ("consul://:SeCrEt@h/a%00b", "control character"),
            (
                "consul://:SeCrEt@h?ttl=18446744073709551616ns",
                "larger than",
            ),
            (
                "consul://:SeCrEt@h?request_timeout=48h",
                "outside 1ms..=24h",
            ),
        ] {
            let e = url.parse::<ConsulConfig>().unwrap_err().to_string();
            assert!(e.contains(want), "{url}: {e}");
            assert!(!e.contains("SeCrEt"), "{url}: {e}");
        }
    }

    #[test]
    fn serializes_without_the_token_and_reads_back() {
        let c: ConsulConfig = "consul://:s3cret@agent/svc?ttl=10s&foreign_services=skip"
            .parse()
            .unwrap();
        let json = serde_json::to_string(&c).unwrap();
        assert!(!json.contains("s3cret"), "{json}");
        assert!(json.contains(r#""foreign_services":"skip""#), "{json}");
        let mut back: ConsulConfig = serde_json::from_str(&json).unwrap();
        back.token = c.token.clone();
        assert_eq!(back, c);
    }
}
