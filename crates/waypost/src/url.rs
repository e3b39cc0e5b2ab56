//! Registry URLs: one string that says which backend to use and how.
//!
//! | URL | meaning |
//! |---|---|
//! | `memory://` | the in-memory registry (`?cleanup_interval=1s&default_ttl=30s`) |
//! | `etcd://user:pass@h1:2379,h2:2379/prefix?ttl=30s` | etcd; path = key prefix (default `/laravel-go/services`); `connect_timeout`, `ca_file`, `cert_file`, `key_file` |
//! | `consul://:token@host:8500/laravel-go/services?datacenter=dc1` | Consul; the password part (or `?token=`) is the ACL token; `ttl`, `connect_timeout`, `ca_file`, `scheme=https` |
//! | `nacos://user:pass@host:8848?namespace=public&group=DEFAULT_GROUP` | Nacos; several hosts separated by commas; `ttl`, `connect_timeout` |
//! | `zookeeper://user:pass@h1:2181,h2:2181/prefix?session_timeout=10s` | ZooKeeper (`zk://` too); user:pass = digest auth; `chroot`, `ttl`, `connect_timeout` |
//!
//! Ports default to each backend's usual one. User names, passwords and query values are
//! percent-decoded. Anything unexpected (an unknown scheme or parameter, a bad port or duration)
//! is an [`Error::InvalidConfig`] that says what is wrong; nothing is guessed.

use std::collections::BTreeMap;
use std::time::Duration;

use percent_encoding::percent_decode_str;
use waypost_core_types::time::parse_duration;
use waypost_core_types::{Error, Result};

use crate::config::{
    check_host_port, ConsulSettings, EtcdSettings, MemorySettings, NacosSettings, RegistryConfig,
    RegistryType, Secret, ZookeeperSettings, DEFAULT_CONSUL_PREFIX, DEFAULT_PATH_PREFIX,
};

fn bad(msg: impl std::fmt::Display) -> Error {
    Error::InvalidConfig(format!("registry URL: {msg}"))
}

fn decode(what: &str, s: &str) -> Result<String> {
    percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| bad(format!("{what} is not valid UTF-8 after percent-decoding")))
}

struct Parts {
    kind: RegistryType,
    user: Option<String>,
    password: Option<String>,
    hosts: Vec<String>,
    path: String,
    query: BTreeMap<String, String>,
}

impl Parts {
    fn take(&mut self, key: &str) -> Option<String> {
        self.query.remove(key)
    }

    fn take_duration(&mut self, key: &str) -> Result<Option<Duration>> {
        self.take(key)
            .map(|v| parse_duration(&v).map_err(|e| bad(format!("`{key}`: {e}"))))
            .transpose()
    }

    fn finish(self) -> Result<()> {
        if let Some(key) = self.query.keys().next() {
            return Err(bad(format!(
                "unknown parameter `{key}` for a {} URL",
                self.kind
            )));
        }
        Ok(())
    }

    fn no_credentials(&self) -> Result<()> {
        if self.user.is_some() || self.password.is_some() {
            return Err(bad(format!("a {} URL takes no credentials", self.kind)));
        }
        Ok(())
    }

    fn hosts_with_port(&self, default_port: u16) -> Result<Vec<String>> {
        if self.hosts.is_empty() {
            return Err(bad(format!("a {} URL needs at least one host", self.kind)));
        }
        self.hosts
            .iter()
            .map(|h| {
                let with_port = if has_port(h) {
                    h.clone()
                } else {
                    format!("{h}:{default_port}")
                };
                check_host_port(self.kind.as_str(), "host", &with_port)?;
                Ok(with_port)
            })
            .collect()
    }
}

fn has_port(host: &str) -> bool {
    match host.rfind(':') {
        None => false,
        // `[::1]` has colons but no port; `[::1]:80` has one.
        Some(i) => !host.starts_with('[') || host[..i].ends_with(']'),
    }
}

fn split(url: &str) -> Result<Parts> {
    let url = url.trim();
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        bad(format!(
            "`{url}` has no scheme (expected e.g. etcd://host:2379)"
        ))
    })?;
    let kind: RegistryType = match scheme.to_ascii_lowercase().as_str() {
        "memory" | "mem" => RegistryType::Memory,
        "etcd" => RegistryType::Etcd,
        "consul" => RegistryType::Consul,
        "nacos" => RegistryType::Nacos,
        "zookeeper" | "zk" => RegistryType::Zookeeper,
        other => {
            return Err(bad(format!(
                "unknown scheme `{other}` (expected memory, etcd, consul, nacos, zookeeper)"
            )))
        }
    };
    if rest.contains('#') {
        return Err(bad("fragments (`#`) are not allowed"));
    }
    let (before_query, query_text) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = match before_query.find('/') {
        Some(i) => (&before_query[..i], &before_query[i..]),
        None => (before_query, ""),
    };
    let (userinfo, hostlist) = match authority.rfind('@') {
        Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
        None => (None, authority),
    };
    let (user, password) = match userinfo {
        None => (None, None),
        Some(ui) => match ui.split_once(':') {
            Some((u, p)) => (
                Some(decode("user name", u)?).filter(|u| !u.is_empty()),
                Some(decode("password", p)?),
            ),
            None => (Some(decode("user name", ui)?), None),
        },
    };
    let hosts: Vec<String> = if hostlist.is_empty() {
        Vec::new()
    } else {
        hostlist
            .split(',')
            .map(|h| {
                if h.is_empty() {
                    Err(bad(format!("empty host in `{hostlist}`")))
                } else {
                    Ok(h.to_owned())
                }
            })
            .collect::<Result<_>>()?
    };
    let mut query = BTreeMap::new();
    for pair in query_text.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| bad(format!("parameter `{pair}` has no value")))?;
        let k = decode("parameter name", k)?;
        let v = decode("parameter value", v)?;
        if query.insert(k.clone(), v).is_some() {
            return Err(bad(format!("parameter `{k}` given twice")));
        }
    }
    Ok(Parts {
        kind,
        user,
        password,
        hosts,
        path: decode("path", path)?,
        query,
    })
}

fn path_prefix(path: &str, default: &str) -> String {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        default.to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// Parses a registry URL into a [`RegistryConfig`] and validates it.
///
/// # Errors
/// [`Error::InvalidConfig`] saying what is wrong.
pub fn parse(url: &str) -> Result<RegistryConfig> {
    let mut p = split(url)?;
    let mut config = RegistryConfig {
        kind: p.kind,
        ..RegistryConfig::default()
    };
    match p.kind {
        RegistryType::Memory => {
            p.no_credentials()?;
            if !p.hosts.is_empty() || !p.path.trim_matches('/').is_empty() {
                return Err(bad("a memory URL takes no host or path (use `memory://`)"));
            }
            let mut s = MemorySettings::default();
            if let Some(d) = p.take_duration("cleanup_interval")? {
                s.cleanup_interval = d;
            }
            s.default_ttl = p.take_duration("default_ttl")?;
            config.memory = Some(s);
        }
        RegistryType::Etcd => {
            let mut s = EtcdSettings {
                endpoints: p.hosts_with_port(2379)?,
                prefix: path_prefix(&p.path, DEFAULT_PATH_PREFIX),
                ..EtcdSettings::default()
            };
            if let Some(u) = p.user.take() {
                s.username = u;
            }
            if let Some(pw) = p.password.take() {
                s.password = Secret::new(pw);
            }
            if let Some(d) = p.take_duration("ttl")? {
                s.ttl = d;
            }
            if let Some(d) = p.take_duration("connect_timeout")? {
                s.connect_timeout = d;
            }
            s.ca_file = p.take("ca_file");
            s.cert_file = p.take("cert_file");
            s.key_file = p.take("key_file");
            config.etcd = Some(s);
        }
        RegistryType::Consul => {
            let hosts = p.hosts_with_port(8500)?;
            if hosts.len() != 1 {
                return Err(bad("a consul URL names exactly one agent"));
            }
            let scheme = p.take("scheme").unwrap_or_else(|| "http".into());
            if scheme != "http" && scheme != "https" {
                return Err(bad(format!("scheme `{scheme}` must be http or https")));
            }
            let prefix = p.path.trim_matches('/');
            let mut s = ConsulSettings {
                address: if scheme == "https" {
                    format!("https://{}", hosts[0])
                } else {
                    hosts[0].clone()
                },
                prefix: if prefix.is_empty() {
                    DEFAULT_CONSUL_PREFIX.into()
                } else {
                    prefix.into()
                },
                ..ConsulSettings::default()
            };
            let query_token = p.take("token");
            match (p.user.take(), p.password.take(), query_token) {
                (None, None, None) => {}
                (None, Some(t), None) | (None, None, Some(t)) => s.token = Secret::new(t),
                _ => {
                    return Err(bad(
                        "give the consul token once, as `consul://:TOKEN@host` or `?token=`",
                    ))
                }
            }
            if let Some(dc) = p.take("datacenter").or_else(|| p.take("dc")) {
                s.datacenter = dc;
            }
            if let Some(d) = p.take_duration("ttl")? {
                s.ttl = d;
            }
            if let Some(d) = p.take_duration("connect_timeout")? {
                s.connect_timeout = d;
            }
            s.ca_file = p.take("ca_file");
            config.consul = Some(s);
        }
        RegistryType::Nacos => {
            if !p.path.trim_matches('/').is_empty() {
                return Err(bad(
                    "a nacos URL has no path; use ?namespace=…&group=… instead",
                ));
            }
            let mut s = NacosSettings {
                server_addr: p.hosts_with_port(8848)?.join(","),
                ..NacosSettings::default()
            };
            if let Some(u) = p.user.take() {
                s.username = u;
            }
            if let Some(pw) = p.password.take() {
                s.password = Secret::new(pw);
            }
            if let Some(ns) = p.take("namespace") {
                s.namespace = ns;
            }
            if let Some(g) = p.take("group") {
                s.group = g;
            }
            if let Some(d) = p.take_duration("ttl")? {
                s.ttl = d;
            }
            if let Some(d) = p.take_duration("connect_timeout")? {
                s.connect_timeout = d;
            }
            config.nacos = Some(s);
        }
        RegistryType::Zookeeper => {
            let mut s = ZookeeperSettings {
                servers: p.hosts_with_port(2181)?,
                prefix: path_prefix(&p.path, DEFAULT_PATH_PREFIX),
                ..ZookeeperSettings::default()
            };
            if let Some(u) = p.user.take() {
                s.username = u;
            }
            if let Some(pw) = p.password.take() {
                s.password = Secret::new(pw);
            }
            if let Some(d) = p.take_duration("session_timeout")? {
                s.session_timeout = d;
            }
            if let Some(d) = p.take_duration("ttl")? {
                s.ttl = d;
            }
            if let Some(d) = p.take_duration("connect_timeout")? {
                s.connect_timeout = d;
            }
            if let Some(c) = p.take("chroot") {
                s.chroot = c;
            }
            config.zookeeper = Some(s);
        }
    }
    p.finish()?;
    config.validate()?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(url: &str) -> String {
        match parse(url) {
            Err(Error::InvalidConfig(m)) => m,
            other => panic!("{url}: expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn memory() {
        let c = parse("memory://").unwrap();
        assert_eq!(c.kind, RegistryType::Memory);
        let c = parse("memory://?cleanup_interval=250ms&default_ttl=30s").unwrap();
        let m = c.memory.unwrap();
        assert_eq!(m.cleanup_interval, Duration::from_millis(250));
        assert_eq!(m.default_ttl, Some(Duration::from_secs(30)));
    }

    #[test]
    fn etcd_with_credentials_and_several_hosts() {
        let c = parse("etcd://admin:p%40ss@h1:2379,h2,[::1]:2380/my/prefix/?ttl=15s").unwrap();
        let e = c.etcd.unwrap();
        assert_eq!(e.endpoints, vec!["h1:2379", "h2:2379", "[::1]:2380"]);
        assert_eq!(e.username, "admin");
        assert_eq!(e.password.expose(), "p@ss");
        assert_eq!(e.prefix, "/my/prefix");
        assert_eq!(e.ttl, Duration::from_secs(15));
        let d = parse("etcd://localhost").unwrap().etcd.unwrap();
        assert_eq!(d.prefix, "/laravel-go/services");
        assert_eq!(d.endpoints, vec!["localhost:2379"]);
    }

    #[test]
    fn consul_token_and_datacenter() {
        let c = parse("consul://:tok%2Fen@agent/laravel-go/services?dc=dc2&scheme=https").unwrap();
        let s = c.consul.unwrap();
        assert_eq!(s.address, "https://agent:8500");
        assert_eq!(s.token.expose(), "tok/en");
        assert_eq!(s.datacenter, "dc2");
        assert_eq!(s.prefix, "laravel-go/services");
        let s = parse("consul://localhost:8500?token=abc")
            .unwrap()
            .consul
            .unwrap();
        assert_eq!(s.token.expose(), "abc");
        assert!(err("consul://:a@h?token=b").contains("once"));
        assert!(err("consul://h1,h2").contains("exactly one"));
    }

    #[test]
    fn nacos_seed_config() {
        let c = parse("nacos://nacos:nacos@localhost:8848?namespace=public&group=DEFAULT_GROUP")
            .unwrap();
        let n = c.nacos.unwrap();
        // One port, never `localhost:8848:8848`.
        assert_eq!(n.server_addr, "localhost:8848");
        assert_eq!(
            (n.namespace.as_str(), n.group.as_str()),
            ("public", "DEFAULT_GROUP")
        );
        assert_eq!(n.username, "nacos");
        assert_eq!(
            parse("nacos://a,b:9000")
                .unwrap()
                .nacos
                .unwrap()
                .server_addr,
            "a:8848,b:9000"
        );
    }

    #[test]
    fn zookeeper() {
        let c = parse("zk://u:p@z1:2181,z2:2182/svc?session_timeout=4s&chroot=/app").unwrap();
        let z = c.zookeeper.unwrap();
        assert_eq!(z.servers, vec!["z1:2181", "z2:2182"]);
        assert_eq!(z.prefix, "/svc");
        assert_eq!(z.session_timeout, Duration::from_secs(4));
        assert_eq!(z.chroot, "/app");
        assert_eq!(z.username, "u");
    }

    #[test]
    fn malformed_urls_are_clear_errors() {
        assert!(err("localhost:2379").contains("no scheme"));
        assert!(err("redis://localhost").contains("unknown scheme `redis`"));
        assert!(err("etcd://").contains("at least one host"));
        assert!(err("etcd://h:99999").contains("invalid port"));
        assert!(err("etcd://h:0").contains("invalid port"));
        assert!(err("etcd://h:abc").contains("invalid port"));
        assert!(err("etcd://h1,,h2").contains("empty host"));
        assert!(err("etcd://h?ttl=soon").contains("invalid duration"));
        assert!(err("etcd://h?ttl=500ms").contains("at least 1s"));
        assert!(err("etcd://h?colour=blue").contains("unknown parameter `colour`"));
        assert!(err("etcd://h?ttl=1s&ttl=2s").contains("twice"));
        assert!(err("etcd://h?ttl").contains("no value"));
        assert!(err("etcd://h/a/../b").contains("clean path"));
        assert!(err("memory://host").contains("no host"));
        assert!(err("memory://u:p@").contains("no credentials"));
        assert!(err("nacos://h/ns").contains("no path"));
        assert!(err("etcd://h#frag").contains("fragments"));
        assert!(err("etcd://%ff@h").contains("UTF-8"));
    }
}
