//! [`NacosConfig`]: where the Nacos server is and how to talk to it.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use waypost_core_types::quote::quoted;
use waypost_core_types::secret::redact_userinfo;
use waypost_core_types::time::config_duration;
use waypost_core_types::validate::{check_duration, check_endpoint, COMPAT_TTL, INTERVAL, TIMEOUT};
use waypost_core_types::{Error, Result, Secret};

/// The default server address (Nacos' HTTP port; the gRPC port is this plus 1000).
pub const DEFAULT_SERVER_ADDR: &str = "localhost:8848";
/// The default namespace.
pub const DEFAULT_NAMESPACE: &str = "public";
/// The default group.
pub const DEFAULT_GROUP: &str = "DEFAULT_GROUP";
/// The default cluster of the instances this registry registers.
pub const DEFAULT_CLUSTER: &str = "DEFAULT";

/// Configuration of a [`NacosRegistry`](crate::NacosRegistry).
///
/// Every field has a default, so `NacosConfig::default()` talks to `localhost:8848`, namespace
/// `public`, group `DEFAULT_GROUP`, without authentication. From a config file (serde):
///
/// ```
/// use waypost_registry_nacos::NacosConfig;
/// let cfg: NacosConfig = serde_json::from_str(
///     r#"{"server_addr": "10.0.0.7:8848", "namespace": "dev", "username": "nacos",
///         "password": "s3cret", "connect_timeout": "3s"}"#,
/// ).unwrap();
/// assert_eq!(cfg.group, "DEFAULT_GROUP");
/// // The password never shows up in Debug output (or in logs), nor in a saved config.
/// assert!(!format!("{cfg:?}").contains("s3cret"));
/// assert!(!serde_json::to_string(&cfg).unwrap().contains("s3cret"));
/// ```
///
/// From a URL: `"nacos://user:pass@host:8848?namespace=public&group=DEFAULT_GROUP".parse()` (the
/// parameters, one per field, are listed at its `FromStr` impl).
///
/// The `ttl` is kept for compatibility with the Go module's configuration: Nacos 2.x keeps
/// ephemeral instances alive through the client's gRPC connection, not through a TTL, so an
/// instance disappears when its process (its connection) dies. It is stored with the instance and
/// used as the TTL of instances registered with `ttl == 0`.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct NacosConfig {
    /// `host:port` of the Nacos HTTP endpoint, or several separated by commas. The gRPC port is
    /// the HTTP port + 1000 unless [`grpc_port`](Self::grpc_port) says otherwise.
    pub server_addr: String,
    /// Namespace id (default `public`).
    pub namespace: String,
    /// Group of every service this registry registers, lists and watches (default
    /// `DEFAULT_GROUP`).
    pub group: String,
    /// Nacos cluster of the instances this registry registers (default `DEFAULT`).
    pub cluster: String,
    /// User name, when the server has authentication enabled.
    pub username: Option<String>,
    /// Password (a [`Secret`]: never printed by `Debug` or logged).
    pub password: Option<Secret>,
    /// TTL kept for config compatibility (see the type's docs).
    #[serde(with = "config_duration")]
    pub ttl: Duration,
    /// How long construction may take before it fails, and the limit of every single request.
    #[serde(with = "config_duration")]
    pub connect_timeout: Duration,
    /// How often the connection is probed (to expose [`RegistryState`] and to resync watchers
    /// after a reconnect).
    ///
    /// [`RegistryState`]: waypost_core_types::RegistryState
    #[serde(with = "config_duration")]
    pub probe_interval: Duration,
    /// How often a full [`watch`](waypost_core_types::ServiceRegistry::watch) looks for service
    /// names that appeared since (Nacos pushes changes of subscribed services only).
    #[serde(with = "config_duration")]
    pub service_poll_interval: Duration,
    /// Events buffered per watcher before it is considered lagging (it then gets a resync
    /// snapshot instead of the missed events).
    pub watch_buffer: usize,
    /// gRPC port, when it is not the HTTP port + 1000.
    pub grpc_port: Option<u16>,
    /// Application name reported to the server.
    pub app_name: String,
    /// Directory of the SDK's on-disk naming cache (default: the SDK's `~/nacos`).
    pub cache_dir: Option<PathBuf>,
}

/// Like a derived `Debug`; the password shows as `[redacted]` (it is a [`Secret`]), and so does
/// anything a user wrote before an `@` in an address.
impl std::fmt::Debug for NacosConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NacosConfig")
            .field("server_addr", &redact_userinfo(&self.server_addr))
            .field("namespace", &self.namespace)
            .field("group", &self.group)
            .field("cluster", &self.cluster)
            .field("username", &self.username)
            .field("password", &self.password)
            .field("ttl", &self.ttl)
            .field("connect_timeout", &self.connect_timeout)
            .field("probe_interval", &self.probe_interval)
            .field("service_poll_interval", &self.service_poll_interval)
            .field("watch_buffer", &self.watch_buffer)
            .field("grpc_port", &self.grpc_port)
            .field("app_name", &self.app_name)
            .field("cache_dir", &self.cache_dir)
            .finish()
    }
}

impl Default for NacosConfig {
    fn default() -> Self {
        NacosConfig {
            server_addr: DEFAULT_SERVER_ADDR.to_owned(),
            namespace: DEFAULT_NAMESPACE.to_owned(),
            group: DEFAULT_GROUP.to_owned(),
            cluster: DEFAULT_CLUSTER.to_owned(),
            username: None,
            password: None,
            ttl: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            probe_interval: Duration::from_millis(500),
            service_poll_interval: Duration::from_secs(2),
            watch_buffer: 4096,
            grpc_port: None,
            app_name: "waypost".to_owned(),
            cache_dir: None,
        }
    }
}

impl NacosConfig {
    /// The defaults with another server address.
    pub fn new(server_addr: impl Into<String>) -> Self {
        NacosConfig::default().with_server_addr(server_addr)
    }

    /// Sets [`server_addr`](Self::server_addr).
    #[must_use]
    pub fn with_server_addr(mut self, server_addr: impl Into<String>) -> Self {
        self.server_addr = server_addr.into();
        self
    }

    /// Sets [`namespace`](Self::namespace).
    #[must_use]
    pub fn with_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Sets [`group`](Self::group).
    #[must_use]
    pub fn with_group(mut self, group: impl Into<String>) -> Self {
        self.group = group.into();
        self
    }

    /// Sets [`cluster`](Self::cluster).
    #[must_use]
    pub fn with_cluster(mut self, cluster: impl Into<String>) -> Self {
        self.cluster = cluster.into();
        self
    }

    /// Sets the user name and password.
    #[must_use]
    pub fn with_credentials(
        mut self,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.username = Some(username.into());
        self.password = Some(Secret::new(password));
        self
    }

    /// Sets [`ttl`](Self::ttl).
    #[must_use]
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets [`connect_timeout`](Self::connect_timeout).
    #[must_use]
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`probe_interval`](Self::probe_interval).
    #[must_use]
    pub fn with_probe_interval(mut self, interval: Duration) -> Self {
        self.probe_interval = interval;
        self
    }

    /// Sets [`service_poll_interval`](Self::service_poll_interval).
    #[must_use]
    pub fn with_service_poll_interval(mut self, interval: Duration) -> Self {
        self.service_poll_interval = interval;
        self
    }

    /// Sets [`watch_buffer`](Self::watch_buffer).
    #[must_use]
    pub fn with_watch_buffer(mut self, events: usize) -> Self {
        self.watch_buffer = events;
        self
    }

    /// Sets [`grpc_port`](Self::grpc_port).
    #[must_use]
    pub fn with_grpc_port(mut self, port: u16) -> Self {
        self.grpc_port = Some(port);
        self
    }

    /// Sets [`app_name`](Self::app_name).
    #[must_use]
    pub fn with_app_name(mut self, name: impl Into<String>) -> Self {
        self.app_name = name.into();
        self
    }

    /// Sets [`cache_dir`](Self::cache_dir).
    #[must_use]
    pub fn with_cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// Checks the configuration without touching the network.
    ///
    /// Server addresses and durations follow the rules every backend shares
    /// ([`waypost_core_types::validate`]):
    ///
    /// | setting | accepted |
    /// |---|---|
    /// | `server_addr` | one or more `host[:port]` (optional `http://`), separated by `,` or `;`; the port at most 64535 (gRPC is port + 1000) |
    /// | `namespace`, `group`, `cluster` | 1 to 512 bytes, no whitespace, control character or `@@` |
    /// | `grpc_port` | 1 to 65535 when set |
    /// | `ttl` | 0 to 365 days (kept for compatibility) |
    /// | `connect_timeout` | 1 ms to 24 h |
    /// | `probe_interval`, `service_poll_interval` | 10 ms to 24 h |
    /// | `watch_buffer` | at least 1 |
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the first problem: an empty or malformed server address
    /// (such as the Go module's `localhost:8848:8848`), an empty namespace, group or cluster, a
    /// password without a user name, a duration outside its bounds.
    pub fn validate(&self) -> Result<()> {
        server_list(&self.server_addr)?;
        for (what, value) in [
            ("namespace", &self.namespace),
            ("group", &self.group),
            ("cluster", &self.cluster),
        ] {
            if value.trim().is_empty() {
                return Err(Error::InvalidConfig(format!(
                    "nacos {what} must not be empty"
                )));
            }
            if value.len() > 512
                || value.contains("@@")
                || value.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(Error::InvalidConfig(format!(
                    "nacos {what} `{}` must be at most 512 bytes, without `@@` or whitespace",
                    quoted(value)
                )));
            }
        }
        if self.password.is_some() && self.username.as_deref().is_none_or(str::is_empty) {
            return Err(Error::InvalidConfig(
                "nacos password given without a username".into(),
            ));
        }
        if self.grpc_port == Some(0) {
            return Err(Error::InvalidConfig(
                "nacos grpc_port must be between 1 and 65535".into(),
            ));
        }
        for (what, d, bounds) in [
            ("ttl", self.ttl, COMPAT_TTL),
            ("connect_timeout", self.connect_timeout, TIMEOUT),
            ("probe_interval", self.probe_interval, INTERVAL),
            (
                "service_poll_interval",
                self.service_poll_interval,
                INTERVAL,
            ),
        ] {
            if let Err(m) = check_duration(what, d, bounds) {
                return Err(Error::InvalidConfig(format!("nacos {m}")));
            }
        }
        if self.watch_buffer == 0 {
            return Err(Error::InvalidConfig(
                "nacos watch_buffer must not be zero".into(),
            ));
        }
        Ok(())
    }
}

/// Splits and checks `server_addr`: each entry is `host` or `host:port` (IPv6 in brackets),
/// optionally with an `http://` prefix. Entries are named by position, never quoted (an entry
/// could hold credentials).
///
/// # Errors
/// [`Error::InvalidConfig`] for an empty list or a malformed entry.
pub(crate) fn server_list(server_addr: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (i, raw) in server_addr.split([',', ';']).enumerate() {
        let entry = raw.trim();
        if entry.is_empty() {
            continue;
        }
        let entry = entry.strip_prefix("http://").unwrap_or(entry);
        let entry = entry.strip_suffix('/').unwrap_or(entry);
        let bad = |why: &str| {
            Error::InvalidConfig(format!(
                "nacos server address #{}: {why} (expected `host:port`, e.g. `localhost:8848`)",
                i + 1
            ))
        };
        if entry.contains(['/', '?', '#', '@']) {
            return Err(bad("not a host:port"));
        }
        let (host, port) = check_endpoint(entry).map_err(bad)?;
        let port = port.unwrap_or(8848);
        if port > u16::MAX - 1000 {
            return Err(bad("the gRPC port (HTTP port + 1000) would exceed 65535"));
        }
        out.push(format!("{host}:{port}"));
    }
    if out.is_empty() {
        return Err(Error::InvalidConfig(
            "nacos server_addr must not be empty".into(),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_laravel_go_module() {
        let c = NacosConfig::default();
        assert_eq!(c.server_addr, "localhost:8848");
        assert_eq!(c.namespace, "public");
        assert_eq!(c.group, "DEFAULT_GROUP");
        assert_eq!(c.cluster, "DEFAULT");
        assert!(c.username.is_none() && c.password.is_none());
        c.validate().unwrap();
        assert_eq!(server_list(&c.server_addr).unwrap(), vec!["localhost:8848"]);
    }

    #[test]
    fn builders_set_fields() {
        let c = NacosConfig::new("10.0.0.1:9848")
            .with_namespace("dev")
            .with_group("G")
            .with_cluster("C1")
            .with_credentials("u", "p")
            .with_ttl(Duration::from_secs(7))
            .with_connect_timeout(Duration::from_millis(300))
            .with_grpc_port(9999)
            .with_watch_buffer(8);
        assert_eq!(c.server_addr, "10.0.0.1:9848");
        assert_eq!((c.namespace.as_str(), c.group.as_str()), ("dev", "G"));
        assert_eq!(c.cluster, "C1");
        assert_eq!(c.username.as_deref(), Some("u"));
        assert_eq!(c.password.as_ref().map(Secret::expose), Some("p"));
        assert_eq!(c.ttl, Duration::from_secs(7));
        assert_eq!(c.connect_timeout, Duration::from_millis(300));
        assert_eq!(c.grpc_port, Some(9999));
        assert_eq!(c.watch_buffer, 8);
        c.validate().unwrap();
    }

    #[test]
    fn debug_redacts_the_password() {
        let c = NacosConfig::default().with_credentials("alice", "hunter2-secret");
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2-secret"), "{dbg}");
        assert!(dbg.contains("alice"));
        assert!(dbg.contains("[redacted]"));
        let c = NacosConfig::new("http://alice:hunter2-secret@h:8848");
        assert!(!format!("{c:?}").contains("hunter2-secret"));
        let none = format!("{:?}", NacosConfig::default());
        assert!(none.contains("password: None"));
    }

    #[test]
    fn deserializes_with_defaults_and_go_durations() {
        let c: NacosConfig = serde_json::from_str(
            r#"{"server_addr":"n1:8848,n2:8848","namespace":"ns","ttl":"45s",
                "connect_timeout":"1500ms","password":"pw","username":"u"}"#,
        )
        .unwrap();
        assert_eq!(c.ttl, Duration::from_secs(45));
        assert_eq!(c.connect_timeout, Duration::from_millis(1500));
        assert_eq!(c.group, DEFAULT_GROUP);
        assert_eq!(
            server_list(&c.server_addr).unwrap(),
            vec!["n1:8848", "n2:8848"]
        );
        // Nanoseconds, as Go's encoding/json writes a time.Duration.
        let c: NacosConfig = serde_json::from_str(r#"{"ttl":30000000000}"#).unwrap();
        assert_eq!(c.ttl, Duration::from_secs(30));
        assert!(serde_json::from_str::<NacosConfig>(r#"{"nope":1}"#).is_err());
    }

    #[test]
    fn rejects_the_go_modules_malformed_address_and_other_bad_values() {
        for bad in [
            "localhost:8848:8848",
            "",
            " , ",
            "host:abc",
            "host:0",
            "host:65000",
            "http://h/path",
            ":8848",
            "[::1",
            "[]:8848",
            "[zz]:8848",
            "h\0st:8848",
            "h\tst",
            "%68:8848",
            "!ocalhost",
            "h:+80",
            "h:080",
            "h:",
        ] {
            let err = NacosConfig::new(bad).validate().unwrap_err();
            assert!(matches!(err, Error::InvalidConfig(_)), "{bad}: {err:?}");
        }
        assert_eq!(server_list("[::1]:8848").unwrap(), vec!["[::1]:8848"]);
        assert_eq!(server_list("http://h:1").unwrap(), vec!["h:1"]);
        assert_eq!(server_list("h").unwrap(), vec!["h:8848"]);
        assert!(NacosConfig::default()
            .with_group("a@@b")
            .validate()
            .is_err());
        assert!(NacosConfig::default()
            .with_namespace("")
            .validate()
            .is_err());
        assert!(NacosConfig::default()
            .with_cluster("a b")
            .validate()
            .is_err());
        let c = NacosConfig {
            password: Some("p".into()),
            ..NacosConfig::default()
        };
        assert!(c.validate().is_err(), "password without user");
        assert!(NacosConfig::default()
            .with_connect_timeout(Duration::ZERO)
            .validate()
            .is_err());
        let e = NacosConfig::new("h:1,admin:SECRET@h:8848")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("address #2") && !e.contains("SECRET"), "{e}");
        assert!(NacosConfig::default()
            .with_namespace("n".repeat(513))
            .validate()
            .is_err());
        assert!(NacosConfig::default().with_grpc_port(0).validate().is_err());
    }

    #[test]
    fn every_duration_has_bounds() {
        type Set = fn(NacosConfig, Duration) -> NacosConfig;
        let setters: [(&str, Set); 4] = [
            ("ttl", NacosConfig::with_ttl),
            ("connect_timeout", NacosConfig::with_connect_timeout),
            ("probe_interval", NacosConfig::with_probe_interval),
            (
                "service_poll_interval",
                NacosConfig::with_service_poll_interval,
            ),
        ];
        for (name, set) in setters {
            let e = set(NacosConfig::default(), Duration::MAX)
                .validate()
                .unwrap_err()
                .to_string();
            assert!(e.contains(name) && e.contains("is outside"), "{e}");
            let zero = set(NacosConfig::default(), Duration::ZERO).validate();
            assert_eq!(zero.is_ok(), name == "ttl", "{name}: {zero:?}");
        }
        let e = NacosConfig::default()
            .with_probe_interval(Duration::from_millis(1))
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("probe_interval 1ms is outside 10ms..=24h"),
            "{e}"
        );
    }
}
