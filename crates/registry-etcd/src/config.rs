//! [`EtcdConfig`]: where the etcd cluster is, how to authenticate, and the timings.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use waypost_core_types::quote::quoted;
use waypost_core_types::record::RecordFormat;
use waypost_core_types::secret::RedactedList;
use waypost_core_types::time::config_duration;
use waypost_core_types::validate::{
    check_duration, check_endpoint, check_prefix, DurationBounds, TIMEOUT, TTL,
};
use waypost_core_types::{Error, Result, Secret};

/// The key prefix the Go module uses: instances live at `<prefix>/<name>/<id>`. Other record
/// formats have their own default ([`RecordFormat::default_prefix`]).
pub const DEFAULT_PREFIX: &str = "/laravel-go/services";
/// Default lease TTL.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);
/// Default limit for connecting (and for the first request that proves the connection).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default deadline of one registry call, retries included.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default number of change events buffered for a slow watcher before they are replaced by a
/// snapshot.
pub const DEFAULT_WATCH_BUFFER: usize = 16_384;
/// Default cap of the reconnect / re-register backoff.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Configuration of an [`EtcdRegistry`](crate::EtcdRegistry).
///
/// Built with [`EtcdConfig::new`] and the `with_*` methods, or deserialized (durations are
/// strings such as `"30s"`, `"1m30s"`, `"500ms"`, or integer nanoseconds as Go writes a `time.Duration`). The password never
/// appears in `Debug` output; serializing writes it as `"[redacted]"`. From a URL:
/// `"etcd://user:pass@h1:2379,h2:2379/prefix?ttl=30s".parse()` (the parameters, one per field,
/// are listed at its `FromStr` impl).
///
/// ```
/// use std::time::Duration;
/// use waypost_registry_etcd::EtcdConfig;
///
/// let config = EtcdConfig::new(["http://127.0.0.1:2379"])
///     .with_credentials("app", "secret")
///     .with_ttl(Duration::from_secs(10));
/// assert_eq!(config.prefix, "/laravel-go/services");
/// assert!(!format!("{config:?}").contains("secret"));
/// config.validate()?;
/// # Ok::<(), waypost_core_types::Error>(())
/// ```
///
/// The record format ([`EtcdConfig::format`]) says how instances are written and read: the
/// Laravel-Go module's JSON (the default), go-kratos', go-zero's, or `auto`. A prefix given
/// explicitly is always used; without one, the format's default applies (`/microservices` for
/// kratos, the key space root for go-zero, `/laravel-go/services` otherwise):
///
/// ```
/// use waypost_core_types::record::RecordFormat;
/// use waypost_registry_etcd::EtcdConfig;
///
/// let kratos = EtcdConfig::new(["127.0.0.1:2379"]).with_format(RecordFormat::Kratos);
/// assert_eq!(kratos.prefix, "/microservices");
/// let file: EtcdConfig = serde_json::from_str(r#"{"format":"go-zero"}"#).unwrap();
/// assert_eq!(file.prefix, "");
/// let url: EtcdConfig = "etcd://h/svc?format=kratos".parse()?;
/// assert_eq!((url.prefix.as_str(), url.format), ("/svc", RecordFormat::Kratos));
/// # Ok::<(), waypost_core_types::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "ConfigFile")]
#[non_exhaustive]
pub struct EtcdConfig {
    /// Client URLs of the cluster members (`http://host:port`, `https://host:port`, or
    /// `host:port`). In a config file, a list or one string separated by commas.
    #[serde(deserialize_with = "waypost_core_types::validate::host_list")]
    pub endpoints: Vec<String>,
    /// User name for etcd authentication (with `password`).
    pub username: Option<String>,
    /// Password for etcd authentication. Never shown (see [`Secret`]).
    pub password: Option<Secret>,
    /// Key prefix; instances are stored at `<prefix>/<name>/<id>`. With the go-zero format the
    /// empty prefix means go-zero's keys at the root, `<name>/<id>` (no leading `/`), and a
    /// prefix may be relative (`prod` gives `prod/<name>/<id>`); with any other format it
    /// starts with `/` (the empty prefix gives `/<name>/<id>`).
    pub prefix: String,
    /// How instances are written and read under the prefix (default
    /// [`RecordFormat::LaravelGo`]); see the crate's README for each format's mapping. In a
    /// config file and a URL: `laravel-go`, `kratos`, `go-zero` or `auto`.
    pub format: RecordFormat,
    /// TTL of the registry's default lease: how long after this process dies its instances
    /// vanish (an instance with a [`ServiceInfo::ttl`](waypost_core_types::ServiceInfo::ttl) of
    /// its own gets a lease with that TTL instead, up to
    /// [`MAX_LEASE_TTL`](crate::MAX_LEASE_TTL), etcd's limit). Rounded up to whole seconds; from
    /// 1 s to 365 days.
    #[serde(with = "config_duration")]
    pub ttl: Duration,
    /// Limit for connecting to the cluster at construction.
    #[serde(with = "config_duration")]
    pub connect_timeout: Duration,
    /// Deadline of one registry call, including retries of a dead member.
    #[serde(with = "config_duration")]
    pub request_timeout: Duration,
    /// Cap of the jittered exponential backoff used while reconnecting and re-registering.
    #[serde(with = "config_duration")]
    pub max_backoff: Duration,
    /// Change events buffered for a watcher that does not keep up; beyond that the backlog is
    /// dropped and the watcher gets a `Snapshot { reason: Lagged }` instead (never a gap).
    pub watch_buffer: usize,
    /// TLS settings; required for `https://` endpoints signed by a private CA.
    pub tls: Option<EtcdTlsConfig>,
}

/// Like a derived `Debug`; the password shows as `[redacted]` (it is a [`Secret`]), and so does
/// anything a user wrote before an `@` in an address.
impl std::fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &RedactedList(&self.endpoints))
            .field("username", &self.username)
            .field("password", &self.password)
            .field("prefix", &self.prefix)
            .field("format", &self.format)
            .field("ttl", &self.ttl)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("max_backoff", &self.max_backoff)
            .field("watch_buffer", &self.watch_buffer)
            .field("tls", &self.tls)
            .finish()
    }
}

/// TLS settings of an [`EtcdConfig`]: PEM files.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct EtcdTlsConfig {
    /// CA certificate(s) that sign the server certificates.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (for `--client-cert-auth` servers), with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// Private key of the client certificate.
    pub key_file: Option<PathBuf>,
    /// Server name to verify instead of the endpoint's host.
    pub domain_name: Option<String>,
}

impl EtcdTlsConfig {
    /// TLS trusting the CA in `ca_file`.
    pub fn new(ca_file: impl Into<PathBuf>) -> Self {
        EtcdTlsConfig {
            ca_file: Some(ca_file.into()),
            ..EtcdTlsConfig::default()
        }
    }

    /// Adds a client certificate and its key.
    #[must_use]
    pub fn with_client_identity(
        mut self,
        cert_file: impl Into<PathBuf>,
        key_file: impl Into<PathBuf>,
    ) -> Self {
        self.cert_file = Some(cert_file.into());
        self.key_file = Some(key_file.into());
        self
    }

    /// Sets the server name to verify.
    #[must_use]
    pub fn with_domain_name(mut self, domain: impl Into<String>) -> Self {
        self.domain_name = Some(domain.into());
        self
    }
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoints: vec!["http://127.0.0.1:2379".to_owned()],
            username: None,
            password: None,
            prefix: DEFAULT_PREFIX.to_owned(),
            format: RecordFormat::LaravelGo,
            ttl: DEFAULT_TTL,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_backoff: DEFAULT_MAX_BACKOFF,
            watch_buffer: DEFAULT_WATCH_BUFFER,
            tls: None,
        }
    }
}

impl EtcdConfig {
    /// Defaults with these endpoints.
    pub fn new<I, S>(endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        EtcdConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            ..EtcdConfig::default()
        }
    }

    /// Replaces the endpoints.
    #[must_use]
    pub fn with_endpoints<I, S>(mut self, endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.endpoints = endpoints.into_iter().map(Into::into).collect();
        self
    }

    /// Sets user name and password.
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

    /// Sets the key prefix (a trailing `/` is ignored).
    #[must_use]
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets the record format. A prefix that is still the previous format's default becomes
    /// the new format's default; any other prefix is kept (so call
    /// [`with_prefix`](Self::with_prefix) after this to use, say, `/laravel-go/services` with
    /// kratos records).
    #[must_use]
    pub fn with_format(mut self, format: RecordFormat) -> Self {
        if self.prefix.trim_end_matches('/') == self.format.default_prefix() {
            self.prefix = format.default_prefix().to_owned();
        }
        self.format = format;
        self
    }

    /// Sets the lease TTL.
    #[must_use]
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets the connect timeout.
    #[must_use]
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the per-call deadline (retries included).
    #[must_use]
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets the cap of the reconnect backoff.
    #[must_use]
    pub fn with_max_backoff(mut self, max: Duration) -> Self {
        self.max_backoff = max;
        self
    }

    /// Sets how many events a slow watcher may fall behind before it gets a snapshot instead.
    #[must_use]
    pub fn with_watch_buffer(mut self, events: usize) -> Self {
        self.watch_buffer = events;
        self
    }

    /// Sets TLS.
    #[must_use]
    pub fn with_tls(mut self, tls: EtcdTlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The prefix without trailing slashes (`""` means the key space root).
    pub fn normalized_prefix(&self) -> String {
        self.prefix.trim_end_matches('/').to_owned()
    }

    /// The lease TTL in whole seconds, rounded up, at least 1, at most etcd's longest lease
    /// ([`MAX_LEASE_TTL`](crate::MAX_LEASE_TTL)), even for a `ttl` that
    /// [`validate`](Self::validate) refuses (above 365 days).
    pub fn ttl_secs(&self) -> i64 {
        crate::lease::lease_secs(self.ttl.min(crate::MAX_LEASE_TTL)).unwrap_or(1)
    }

    /// Checks the configuration.
    ///
    /// Endpoints, the prefix and the durations follow the rules every backend shares
    /// ([`waypost_core_types::validate`]):
    ///
    /// | setting | accepted |
    /// |---|---|
    /// | `endpoints` | at least one; `host[:port]` with an optional `http://` or `https://` |
    /// | `prefix` | empty, or starting with `/` (with the go-zero format also relative, as `prod`); at most 512 bytes, no `.`/`..` or empty segment, no control character |
    /// | `format` | `laravel-go`, `kratos`, `go-zero` or `auto` (the `curator` format is ZooKeeper's) |
    /// | `ttl` | 1 s to 365 days (etcd leases have second granularity) |
    /// | `connect_timeout`, `request_timeout`, `max_backoff` | 1 ms to 24 h |
    /// | `watch_buffer` | at least 1 |
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the bad field (an endpoint by its position: it is never
    /// quoted, as it could hold credentials).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidConfig(format!("etcd: {m}")));
        if self.endpoints.is_empty() {
            return bad("at least one endpoint is required".into());
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            if let Err(why) = check_etcd_endpoint(e) {
                return bad(format!("endpoint #{}: {why}", i + 1));
            }
        }
        if self.username.is_some() != self.password.is_some() {
            return bad("username and password must be given together".into());
        }
        if self.username.as_deref() == Some("") {
            return bad("username must not be empty".into());
        }
        if !FORMATS.contains(&self.format) {
            return bad(format!(
                "format `{}` is not an etcd record format (use laravel-go, kratos, go-zero or \
                 auto)",
                self.format
            ));
        }
        let relative_ok = self.format == RecordFormat::GoZero;
        if !self.prefix.is_empty() && !self.prefix.starts_with('/') && !relative_ok {
            return bad(format!(
                "prefix `{}` must start with `/`",
                quoted(&self.prefix)
            ));
        }
        if let Err(why) = check_prefix(&self.prefix) {
            return bad(format!("prefix `{}` {why}", quoted(&self.prefix)));
        }
        for (what, d, bounds) in [
            ("ttl", self.ttl, LEASE_TTL),
            ("connect_timeout", self.connect_timeout, TIMEOUT),
            ("request_timeout", self.request_timeout, TIMEOUT),
            ("max_backoff", self.max_backoff, TIMEOUT),
        ] {
            if let Err(m) = check_duration(what, d, bounds) {
                return bad(m);
            }
        }
        if self.watch_buffer == 0 {
            return bad("watch_buffer must be at least 1".into());
        }
        if let Some(tls) = &self.tls {
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                return bad("tls.cert_file and tls.key_file must be given together".into());
            }
            if self.endpoints.iter().any(|e| e.starts_with("http://")) {
                return bad("TLS is configured but an endpoint uses http://".into());
            }
        }
        Ok(())
    }
}

/// The record formats an etcd registry reads and writes (`auto` reads the other three).
pub(crate) const FORMATS: &[RecordFormat] = &[
    RecordFormat::LaravelGo,
    RecordFormat::Kratos,
    RecordFormat::GoZero,
    RecordFormat::Auto,
];

/// What a config file holds: an [`EtcdConfig`] whose prefix may be left out, so that the
/// format's default applies.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ConfigFile {
    #[serde(deserialize_with = "waypost_core_types::validate::host_list")]
    endpoints: Vec<String>,
    username: Option<String>,
    password: Option<Secret>,
    prefix: Option<String>,
    format: RecordFormat,
    #[serde(with = "config_duration")]
    ttl: Duration,
    #[serde(with = "config_duration")]
    connect_timeout: Duration,
    #[serde(with = "config_duration")]
    request_timeout: Duration,
    #[serde(with = "config_duration")]
    max_backoff: Duration,
    watch_buffer: usize,
    tls: Option<EtcdTlsConfig>,
}

impl Default for ConfigFile {
    fn default() -> Self {
        let d = EtcdConfig::default();
        ConfigFile {
            endpoints: d.endpoints,
            username: d.username,
            password: d.password,
            prefix: None,
            format: d.format,
            ttl: d.ttl,
            connect_timeout: d.connect_timeout,
            request_timeout: d.request_timeout,
            max_backoff: d.max_backoff,
            watch_buffer: d.watch_buffer,
            tls: d.tls,
        }
    }
}

impl From<ConfigFile> for EtcdConfig {
    fn from(f: ConfigFile) -> Self {
        EtcdConfig {
            endpoints: f.endpoints,
            username: f.username,
            password: f.password,
            prefix: f
                .prefix
                .unwrap_or_else(|| f.format.default_prefix().to_owned()),
            format: f.format,
            ttl: f.ttl,
            connect_timeout: f.connect_timeout,
            request_timeout: f.request_timeout,
            max_backoff: f.max_backoff,
            watch_buffer: f.watch_buffer,
            tls: f.tls,
        }
    }
}

/// The bounds of the lease TTL: etcd leases have second granularity.
const LEASE_TTL: DurationBounds = DurationBounds::new(Duration::from_secs(1), TTL.max);

/// `host[:port]`, `http://host[:port]` or `https://host[:port]` (a trailing `/` allowed).
fn check_etcd_endpoint(endpoint: &str) -> std::result::Result<(), &'static str> {
    let authority = match endpoint.split_once("://") {
        Some(("http" | "https", rest)) => rest.strip_suffix('/').unwrap_or(rest),
        Some(_) => return Err("the scheme must be http or https"),
        None => endpoint,
    };
    if authority.contains(['/', '?', '#', '@']) {
        return Err("expected `host:port` without a path, query or credentials");
    }
    check_endpoint(authority).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = EtcdConfig::default();
        assert_eq!(c.prefix, "/laravel-go/services");
        assert_eq!(c.ttl, Duration::from_secs(30));
        assert_eq!(c.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(c.endpoints, vec!["http://127.0.0.1:2379".to_owned()]);
        assert!(c.username.is_none() && c.password.is_none() && c.tls.is_none());
        c.validate().unwrap();
    }

    #[test]
    fn deserializes_with_defaults_and_durations() {
        let c: EtcdConfig = serde_json::from_str(
            r#"{"endpoints":["http://10.0.0.1:2379","10.0.0.2:2379"],
                "username":"app","password":"pw","ttl":"1m30s","connect_timeout":2000000000,
                "request_timeout":"1500ms",
                "tls":{"ca_file":"/etc/ca.pem","cert_file":"c.pem","key_file":"k.pem"}}"#,
        )
        .unwrap();
        assert_eq!(c.endpoints.len(), 2);
        assert_eq!(c.ttl, Duration::from_secs(90));
        assert_eq!(c.connect_timeout, Duration::from_secs(2));
        assert_eq!(c.request_timeout, Duration::from_millis(1500));
        assert_eq!(c.prefix, DEFAULT_PREFIX, "missing fields take defaults");
        assert_eq!(c.max_backoff, DEFAULT_MAX_BACKOFF);
        assert_eq!(c.watch_buffer, DEFAULT_WATCH_BUFFER);
        let tls = c.tls.as_ref().unwrap();
        assert_eq!(
            tls.ca_file.as_deref(),
            Some(std::path::Path::new("/etc/ca.pem"))
        );
        assert!(serde_json::from_str::<EtcdConfig>(r#"{"passwd":"x"}"#).is_err());
        assert!(serde_json::from_str::<EtcdConfig>(r#"{"ttl":"10 parsecs"}"#).is_err());
        let empty: EtcdConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(empty.prefix, DEFAULT_PREFIX);
    }

    #[test]
    fn password_is_redacted() {
        let c = EtcdConfig::new(["http://h:1"]).with_credentials("root", "hunter2-secret");
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2-secret"), "{dbg}");
        assert!(dbg.contains("[redacted]") && dbg.contains("root"), "{dbg}");
        let alt = format!("{c:#?}");
        assert!(!alt.contains("hunter2-secret"));
        // Credentials written into an endpoint do not show either.
        let c = EtcdConfig::new(["http://root:hunter2-secret@h:1", "h:2"]);
        let dbg = format!("{c:?}");
        assert!(
            !dbg.contains("hunter2-secret") && dbg.contains("h:2"),
            "{dbg}"
        );
    }

    #[test]
    fn validation() {
        let ok = EtcdConfig::new(["http://127.0.0.1:2379"]);
        ok.validate().unwrap();
        let cases = [
            EtcdConfig::new(Vec::<String>::new()),
            EtcdConfig::new(["ftp://h:1"]),
            EtcdConfig::new(["http://"]),
            EtcdConfig::new(["h :1"]),
            EtcdConfig::new(["h:0"]),
            EtcdConfig::new(["http://h:99999"]),
            EtcdConfig::new(["h:port"]),
            EtcdConfig::new([":2379"]),
            EtcdConfig::new(["[]:2379"]),
            EtcdConfig::new(["[zz]:2379"]),
            EtcdConfig::new(["h\0st:2379"]),
            EtcdConfig::new(["h\tst:2379"]),
            EtcdConfig::new(["%68:2379"]),
            EtcdConfig::new(["!ocalhost:2379"]),
            EtcdConfig::new(["h:+80"]),
            EtcdConfig::new(["h:080"]),
            EtcdConfig::new(["h:"]),
            EtcdConfig::new(["http://user:pw@h:2379"]),
            ok.clone().with_prefix("/a/../b"),
            ok.clone().with_prefix("/a/\0"),
            ok.clone().with_prefix(format!("/{}", "a".repeat(600))),
            ok.clone().with_ttl(Duration::MAX),
            ok.clone().with_connect_timeout(Duration::MAX),
            ok.clone().with_request_timeout(Duration::MAX),
            ok.clone().with_max_backoff(Duration::MAX),
            ok.clone().with_request_timeout(Duration::ZERO),
            ok.clone().with_prefix("no-slash"),
            ok.clone().with_prefix("/a//b"),
            ok.clone().with_ttl(Duration::from_millis(500)),
            ok.clone().with_connect_timeout(Duration::ZERO),
            ok.clone().with_watch_buffer(0),
            ok.clone().with_tls(EtcdTlsConfig::new("ca.pem")),
            {
                let mut c = ok.clone();
                c.username = Some("u".into());
                c
            },
            EtcdConfig::new(["https://h:1"]).with_tls(EtcdTlsConfig {
                cert_file: Some("c".into()),
                ..EtcdTlsConfig::default()
            }),
        ];
        for c in cases {
            assert!(
                matches!(c.validate(), Err(Error::InvalidConfig(_))),
                "accepted {c:?}"
            );
        }
        EtcdConfig::new(["https://h:1"])
            .with_tls(EtcdTlsConfig::new("ca.pem").with_client_identity("c", "k"))
            .validate()
            .unwrap();
        ok.clone().with_prefix("").validate().unwrap();
        for good in [
            "http://[::1]:2379",
            "https://etcd-0.etcd:2379/",
            "10.0.0.1",
            "e_1:1",
        ] {
            EtcdConfig::new([good]).validate().unwrap();
        }
        // An endpoint is named by its position, never quoted.
        let e = EtcdConfig::new(["h:1", "http://admin:SECRET@h:2379"])
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("endpoint #2") && !e.contains("SECRET"), "{e}");
        let e = ok
            .clone()
            .with_ttl(Duration::MAX)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ttl 18446744073709551615.999999999s is outside 1s..=365d"),
            "{e}"
        );
        ok.with_prefix("/x/").validate().unwrap();
    }

    #[test]
    fn prefix_and_ttl_normalization() {
        let c = EtcdConfig::default().with_prefix("/svc/");
        assert_eq!(c.normalized_prefix(), "/svc");
        assert_eq!(
            c.clone().with_ttl(Duration::from_millis(1500)).ttl_secs(),
            2
        );
        assert_eq!(c.clone().with_ttl(Duration::from_secs(3)).ttl_secs(), 3);
        assert_eq!(c.clone().with_ttl(Duration::MAX).ttl_secs(), 9_000_000_000);
        assert_eq!(c.with_ttl(Duration::ZERO).ttl_secs(), 1);
    }

    #[test]
    fn format_and_its_default_prefix() {
        let read = |json: &str| serde_json::from_str::<EtcdConfig>(json).unwrap();
        // Existing configs keep their meaning.
        assert_eq!(read("{}").format, RecordFormat::LaravelGo);
        assert_eq!(read("{}").prefix, DEFAULT_PREFIX);
        let c = read(r#"{"format":"kratos"}"#);
        assert_eq!(
            (c.format, c.prefix.as_str()),
            (RecordFormat::Kratos, "/microservices")
        );
        let c = read(r#"{"format":"go-zero"}"#);
        assert_eq!((c.format, c.prefix.as_str()), (RecordFormat::GoZero, ""));
        c.validate().unwrap();
        let c = read(r#"{"format":"auto"}"#);
        assert_eq!(c.prefix, DEFAULT_PREFIX);
        // An explicit prefix wins, even one equal to another format's default.
        let c = read(r#"{"format":"kratos","prefix":"/laravel-go/services"}"#);
        assert_eq!(c.prefix, DEFAULT_PREFIX);
        let c = read(r#"{"prefix":"/svc","format":"go-zero"}"#);
        assert_eq!(c.prefix, "/svc");
        assert!(serde_json::from_str::<EtcdConfig>(r#"{"format":"yaml"}"#).is_err());
        // Serialized and read back: the same config.
        let c = EtcdConfig::default().with_format(RecordFormat::GoZero);
        let back: EtcdConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);

        // Builders: a default prefix follows the format, a chosen one stays.
        let c = EtcdConfig::default().with_format(RecordFormat::Kratos);
        assert_eq!(c.prefix, "/microservices");
        let c = c.with_format(RecordFormat::GoZero);
        assert_eq!(c.prefix, "");
        let c = EtcdConfig::default()
            .with_prefix("/mine")
            .with_format(RecordFormat::Kratos);
        assert_eq!(c.prefix, "/mine");
        let c = EtcdConfig::default()
            .with_format(RecordFormat::Kratos)
            .with_prefix(DEFAULT_PREFIX);
        assert_eq!(c.prefix, DEFAULT_PREFIX);

        // ZooKeeper's format is refused, with the formats etcd takes.
        let err = EtcdConfig::default()
            .with_format(RecordFormat::Curator)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`curator` is not an etcd record format"),
            "{err}"
        );

        // Relative prefixes are go-zero's only.
        let relative = EtcdConfig::default().with_prefix("prod");
        assert!(relative.validate().is_err());
        relative
            .clone()
            .with_format(RecordFormat::GoZero)
            .validate()
            .unwrap();
        assert!(EtcdConfig::default()
            .with_format(RecordFormat::GoZero)
            .with_prefix("prod/../x")
            .validate()
            .is_err());
    }

    #[test]
    fn numbers_are_go_nanoseconds() {
        // Go's encoding/json writes a time.Duration as integer nanoseconds.
        let c: EtcdConfig = serde_json::from_str(r#"{"ttl":30000000000}"#).unwrap();
        assert_eq!(c.ttl, Duration::from_secs(30));
    }
}
