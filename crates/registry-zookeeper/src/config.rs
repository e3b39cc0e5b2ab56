//! Configuration of the ZooKeeper registry.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use waypost_core_types::quote::quoted;
use waypost_core_types::record::RecordFormat;
use waypost_core_types::secret::RedactedList;
use waypost_core_types::validate::{
    check_duration, check_endpoint, check_prefix, DurationBounds, COMPAT_TTL, TIMEOUT,
};
use waypost_core_types::{Error, Result, Secret};

use crate::keys::validate_znode_path;

/// The key prefix the Go module uses: instances live at `<prefix>/<name>/<id>`. Other record
/// formats have their own default ([`RecordFormat::default_prefix`]).
pub const DEFAULT_PREFIX: &str = "/laravel-go/services";
/// Default requested session timeout (the Go module's default).
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(10);
/// Default bound on establishing the first session.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default cap of the reconnect backoff after a session was lost.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Default number of changes buffered per watch before it is resynced.
pub const DEFAULT_WATCH_BUFFER: usize = 1024;

/// Settings of a [`ZookeeperRegistry`](crate::ZookeeperRegistry).
///
/// Field names follow the Go module's `ZookeeperConfig` (`servers`, `prefix`, `ttl`,
/// `session_timeout`); durations are read as Go strings (`"10s"`) or integer nanoseconds.
/// `Debug` never shows the password, and serializing writes it as `"[redacted]"`. From a URL:
/// `"zookeeper://user:pass@h1:2181,h2:2181/prefix?session_timeout=10s".parse()` (the
/// parameters, one per field, are listed at its `FromStr` impl).
///
/// ```
/// use std::time::Duration;
/// use waypost_registry_zookeeper::ZookeeperConfig;
///
/// let config = ZookeeperConfig::new(["127.0.0.1:2181"])
///     .with_prefix("/laravel-go/services")
///     .with_session_timeout(Duration::from_secs(10))
///     .with_digest_auth("svc", "s3cret");
/// config.validate()?;
/// assert!(!format!("{config:?}").contains("s3cret"));
///
/// let from_json: ZookeeperConfig = serde_json::from_str(
///     r#"{"servers":["zk1:2181","zk2:2181"],"session_timeout":"6s"}"#,
/// ).unwrap();
/// assert_eq!(from_json.session_timeout, Duration::from_secs(6));
/// assert_eq!(from_json.prefix, "/laravel-go/services");
/// # Ok::<(), waypost_core_types::Error>(())
/// ```
///
/// The record format ([`ZookeeperConfig::format`]) says how instances are written and read: the
/// Laravel-Go module's JSON (the default), Apache Curator's JSON as Spring Cloud Zookeeper
/// writes it (`curator`), or `auto`. A prefix given explicitly is always used; without one, the
/// format's default applies (`/services` for curator, `/laravel-go/services` otherwise):
///
/// ```
/// use waypost_core_types::record::RecordFormat;
/// use waypost_registry_zookeeper::ZookeeperConfig;
///
/// let spring = ZookeeperConfig::new(["zk1:2181"]).with_format(RecordFormat::Curator);
/// assert_eq!(spring.prefix, "/services");
/// let file: ZookeeperConfig =
///     serde_json::from_str(r#"{"servers":"zk1:2181","format":"curator"}"#).unwrap();
/// assert_eq!(file.prefix, "/services");
/// let url: ZookeeperConfig = "zk://zk1/svc?format=curator".parse()?;
/// assert_eq!((url.prefix.as_str(), url.format), ("/svc", RecordFormat::Curator));
/// # Ok::<(), waypost_core_types::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "ConfigFile")]
#[non_exhaustive]
pub struct ZookeeperConfig {
    /// `host:port` of every server of the ensemble (the port defaults to 2181). In a config
    /// file, a list or one string separated by commas.
    #[serde(deserialize_with = "waypost_core_types::validate::host_list")]
    pub servers: Vec<String>,
    /// Root path of the registry; instances live at `<prefix>/<name>/<id>`. Default
    /// [`DEFAULT_PREFIX`], the default of the `laravel-go` and `auto` formats;
    /// [`with_format`](Self::with_format), and a config file or URL without a prefix, use the
    /// format's default instead (`/services` for `curator`).
    pub prefix: String,
    /// How instance records are read and written under the prefix (default
    /// [`RecordFormat::LaravelGo`], the Go module's `ServiceInfo` JSON): `curator` is Apache
    /// Curator's service-discovery JSON as Spring Cloud Zookeeper writes it, and `auto` reads
    /// both, marking instances read from Curator records with
    /// [`FORMAT_KEY`](waypost_core_types::record::FORMAT_KEY), and writes `laravel-go`; see the
    /// crate's README for the mapping. In a config file and a URL: `laravel-go`, `curator` or
    /// `auto`.
    pub format: RecordFormat,
    /// Session timeout requested from the server (it may clamp it to its
    /// `minSessionTimeout`/`maxSessionTimeout`). Our instances vanish about this long after our
    /// process dies. Default 10 s.
    #[serde(with = "waypost_core_types::time::config_duration")]
    pub session_timeout: Duration,
    /// Kept for compatibility with the Go configuration; ZooKeeper liveness is the session, so
    /// this value is not used for expiry.
    #[serde(with = "waypost_core_types::time::config_duration")]
    pub ttl: Duration,
    /// Digest-auth user name. With credentials, every node this registry creates is readable by
    /// anyone and writable only by the same credentials.
    pub username: Option<String>,
    /// Digest-auth password (a [`Secret`]: never shown by `Debug`, `Display` or logs).
    pub password: Option<Secret>,
    /// A chroot for the whole registry (created if missing), e.g. `/tenant-a`; empty or `/`
    /// means none.
    pub chroot: Option<String>,
    /// How long [`ZookeeperRegistry::connect`](crate::ZookeeperRegistry::connect) may take to
    /// establish the first session before it fails. Default 10 s.
    #[serde(with = "waypost_core_types::time::config_duration")]
    pub connect_timeout: Duration,
    /// Cap of the jittered exponential backoff between attempts to get a new session after one
    /// was lost. Default 5 s.
    #[serde(with = "waypost_core_types::time::config_duration")]
    pub max_backoff: Duration,
    /// Changes buffered per watch stream; a watcher that falls further behind gets a resync
    /// snapshot instead. Default 1024.
    pub watch_buffer: usize,
}

/// Like a derived `Debug`; the password shows as `[redacted]` (it is a [`Secret`]), and so does
/// anything a user wrote before an `@` in an address.
impl std::fmt::Debug for ZookeeperConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZookeeperConfig")
            .field("servers", &RedactedList(&self.servers))
            .field("prefix", &self.prefix)
            .field("format", &self.format)
            .field("session_timeout", &self.session_timeout)
            .field("ttl", &self.ttl)
            .field("username", &self.username)
            .field("password", &self.password)
            .field("chroot", &self.chroot)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_backoff", &self.max_backoff)
            .field("watch_buffer", &self.watch_buffer)
            .finish()
    }
}

impl Default for ZookeeperConfig {
    fn default() -> Self {
        ZookeeperConfig {
            servers: vec!["127.0.0.1:2181".to_owned()],
            prefix: DEFAULT_PREFIX.to_owned(),
            format: RecordFormat::LaravelGo,
            session_timeout: DEFAULT_SESSION_TIMEOUT,
            ttl: Duration::from_secs(30),
            username: None,
            password: None,
            chroot: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_backoff: DEFAULT_MAX_BACKOFF,
            watch_buffer: DEFAULT_WATCH_BUFFER,
        }
    }
}

impl ZookeeperConfig {
    /// Defaults with the given servers (`host:port`).
    pub fn new<I, S>(servers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ZookeeperConfig {
            servers: servers.into_iter().map(Into::into).collect(),
            ..ZookeeperConfig::default()
        }
    }

    /// Sets [`ZookeeperConfig::servers`].
    #[must_use]
    pub fn with_servers<I, S>(mut self, servers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.servers = servers.into_iter().map(Into::into).collect();
        self
    }

    /// Sets [`ZookeeperConfig::prefix`] (a trailing `/` is ignored).
    #[must_use]
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets the record format. A prefix that is still the previous format's default becomes
    /// the new format's default; any other prefix is kept (so call
    /// [`with_prefix`](Self::with_prefix) after this to use, say, `/laravel-go/services` with
    /// curator records).
    #[must_use]
    pub fn with_format(mut self, format: RecordFormat) -> Self {
        if self.prefix.trim_end_matches('/') == self.format.default_prefix() {
            self.prefix = format.default_prefix().to_owned();
        }
        self.format = format;
        self
    }

    /// Sets [`ZookeeperConfig::session_timeout`].
    #[must_use]
    pub fn with_session_timeout(mut self, timeout: Duration) -> Self {
        self.session_timeout = timeout;
        self
    }

    /// Sets [`ZookeeperConfig::ttl`] (kept for Go compatibility, not used for expiry).
    #[must_use]
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets digest credentials ([`username`](Self::username), [`password`](Self::password)).
    #[must_use]
    pub fn with_digest_auth(
        mut self,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.username = Some(username.into());
        self.password = Some(Secret::new(password));
        self
    }

    /// Sets [`ZookeeperConfig::chroot`].
    #[must_use]
    pub fn with_chroot(mut self, chroot: impl Into<String>) -> Self {
        self.chroot = Some(chroot.into());
        self
    }

    /// Sets [`ZookeeperConfig::connect_timeout`].
    #[must_use]
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`ZookeeperConfig::max_backoff`].
    #[must_use]
    pub fn with_max_backoff(mut self, max: Duration) -> Self {
        self.max_backoff = max;
        self
    }

    /// Sets [`ZookeeperConfig::watch_buffer`].
    #[must_use]
    pub fn with_watch_buffer(mut self, buffer: usize) -> Self {
        self.watch_buffer = buffer;
        self
    }

    /// Checks every value.
    ///
    /// Servers, the prefix and the durations follow the rules every backend shares
    /// ([`waypost_core_types::validate`]):
    ///
    /// | setting | accepted |
    /// |---|---|
    /// | `servers` | at least one `host[:port]` |
    /// | `prefix`, `chroot` | an absolute path (`/…`), at most 512 bytes, no `.`/`..` or empty segment, no control character, not in `/zookeeper`; the prefix not `/` |
    /// | `format` | `laravel-go`, `curator` or `auto` (formats of other registries are refused) |
    /// | `session_timeout` | 100 ms to 24 h (the server may narrow it further to its `minSessionTimeout`..`maxSessionTimeout`) |
    /// | `ttl` | 0 to 365 days (kept for compatibility) |
    /// | `connect_timeout`, `max_backoff` | 1 ms to 24 h |
    /// | `watch_buffer` | at least 1 |
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the bad field (a server by its position: it is never
    /// quoted).
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::InvalidConfig(format!("zookeeper: {msg}")));
        if self.servers.is_empty() {
            return bad("servers must name at least one `host:port`".into());
        }
        for (i, server) in self.servers.iter().enumerate() {
            if let Err(why) = validate_server(server) {
                return bad(format!("server #{}: {why}", i + 1));
            }
        }
        let path = |what: &str, value: &str| {
            check_prefix(value)
                .map_err(|why| format!("{what} `{}` {why}", quoted(value)))
                .and_then(|()| validate_znode_path(what, value))
                .map_err(|e| Error::InvalidConfig(format!("zookeeper: {e}")))
        };
        path("prefix", &self.prefix)?;
        if self.prefix == "/" {
            return bad("prefix must not be the root `/`".into());
        }
        if let Some(chroot) = self.chroot.as_deref().filter(|c| !c.is_empty()) {
            path("chroot", chroot)?;
        }
        for (what, d, bounds) in [
            ("session_timeout", self.session_timeout, SESSION_TIMEOUT),
            ("ttl", self.ttl, COMPAT_TTL),
            ("connect_timeout", self.connect_timeout, TIMEOUT),
            ("max_backoff", self.max_backoff, TIMEOUT),
        ] {
            if let Err(m) = check_duration(what, d, bounds) {
                return bad(m);
            }
        }
        match self.format {
            RecordFormat::LaravelGo | RecordFormat::Curator | RecordFormat::Auto => {}
            other => {
                return bad(format!(
                    "format `{other}` is not a ZooKeeper record format (use laravel-go, curator \
                     or auto)"
                ))
            }
        }
        if self.watch_buffer == 0 {
            return bad("watch_buffer must be greater than zero".into());
        }
        match (&self.username, &self.password) {
            (None, None) => {}
            (Some(user), Some(_)) => {
                if user.is_empty() || user.contains(':') || user.chars().any(char::is_control) {
                    return bad(format!(
                        "username `{}` must be non-empty, without `:` or control characters",
                        quoted(user)
                    ));
                }
            }
            (Some(_), None) => return bad("username is set but password is missing".into()),
            (None, Some(_)) => return bad("password is set but username is missing".into()),
        }
        Ok(())
    }

    /// The connect string for the client: the servers joined by commas (no chroot; the chroot is
    /// applied after it has been created).
    pub(crate) fn connect_string(&self) -> String {
        self.servers
            .iter()
            .map(|s| s.trim())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The digest-auth payload `user:password`, if credentials are set.
    pub(crate) fn digest(&self) -> Option<Vec<u8>> {
        match (&self.username, &self.password) {
            (Some(u), Some(p)) => Some(format!("{u}:{}", p.expose()).into_bytes()),
            _ => None,
        }
    }

    /// The chroot, with an empty or `/` value meaning none.
    pub(crate) fn effective_chroot(&self) -> Option<&str> {
        self.chroot
            .as_deref()
            .map(|c| c.trim_end_matches('/'))
            .filter(|c| !c.is_empty())
    }
}

/// What a config file holds: a [`ZookeeperConfig`] whose prefix may be left out, so that the
/// format's default applies.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ConfigFile {
    #[serde(deserialize_with = "waypost_core_types::validate::host_list")]
    servers: Vec<String>,
    prefix: Option<String>,
    format: RecordFormat,
    #[serde(with = "waypost_core_types::time::config_duration")]
    session_timeout: Duration,
    #[serde(with = "waypost_core_types::time::config_duration")]
    ttl: Duration,
    username: Option<String>,
    password: Option<Secret>,
    chroot: Option<String>,
    #[serde(with = "waypost_core_types::time::config_duration")]
    connect_timeout: Duration,
    #[serde(with = "waypost_core_types::time::config_duration")]
    max_backoff: Duration,
    watch_buffer: usize,
}

impl Default for ConfigFile {
    fn default() -> Self {
        let d = ZookeeperConfig::default();
        ConfigFile {
            servers: d.servers,
            prefix: None,
            format: d.format,
            session_timeout: d.session_timeout,
            ttl: d.ttl,
            username: d.username,
            password: d.password,
            chroot: d.chroot,
            connect_timeout: d.connect_timeout,
            max_backoff: d.max_backoff,
            watch_buffer: d.watch_buffer,
        }
    }
}

impl From<ConfigFile> for ZookeeperConfig {
    fn from(f: ConfigFile) -> Self {
        ZookeeperConfig {
            servers: f.servers,
            prefix: f
                .prefix
                .unwrap_or_else(|| f.format.default_prefix().to_owned()),
            format: f.format,
            session_timeout: f.session_timeout,
            ttl: f.ttl,
            username: f.username,
            password: f.password,
            chroot: f.chroot,
            connect_timeout: f.connect_timeout,
            max_backoff: f.max_backoff,
            watch_buffer: f.watch_buffer,
        }
    }
}

/// The session timeouts we ask for.
pub const SESSION_TIMEOUT: DurationBounds =
    DurationBounds::new(Duration::from_millis(100), Duration::from_secs(24 * 3600));

fn validate_server(server: &str) -> std::result::Result<(), &'static str> {
    let s = server.trim();
    if s.is_empty() {
        return Err("empty entry");
    }
    if s.contains([',', '/', '?', '#', '@']) {
        return Err("must be `host:port` (no `,`, `/` or credentials; list servers separately)");
    }
    check_endpoint(s).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_go_module() {
        let c = ZookeeperConfig::default();
        assert_eq!(c.prefix, "/laravel-go/services");
        assert_eq!(c.format, RecordFormat::LaravelGo);
        assert_eq!(c.session_timeout, Duration::from_secs(10));
        assert_eq!(c.servers, vec!["127.0.0.1:2181".to_string()]);
        c.validate().unwrap();
    }

    #[test]
    fn builders_set_fields() {
        let c = ZookeeperConfig::new(["a:1", "b:2"])
            .with_prefix("/x/y")
            .with_session_timeout(Duration::from_secs(2))
            .with_ttl(Duration::from_secs(3))
            .with_digest_auth("u", "p")
            .with_chroot("/root")
            .with_connect_timeout(Duration::from_secs(4))
            .with_max_backoff(Duration::from_secs(1))
            .with_watch_buffer(7);
        assert_eq!(c.connect_string(), "a:1,b:2");
        assert_eq!(c.prefix, "/x/y");
        assert_eq!(c.session_timeout, Duration::from_secs(2));
        assert_eq!(c.ttl, Duration::from_secs(3));
        assert_eq!(c.digest().unwrap(), b"u:p");
        assert_eq!(c.effective_chroot(), Some("/root"));
        assert_eq!(c.connect_timeout, Duration::from_secs(4));
        assert_eq!(c.max_backoff, Duration::from_secs(1));
        assert_eq!(c.watch_buffer, 7);
        c.validate().unwrap();
        let c = c.with_servers(["z:3"]);
        assert_eq!(c.connect_string(), "z:3");
    }

    #[test]
    fn debug_redacts_the_password() {
        let c = ZookeeperConfig::default().with_digest_auth("alice", "hunter2-secret");
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2-secret"), "{shown}");
        assert!(shown.contains(waypost_core_types::REDACTED), "{shown}");
        assert!(shown.contains("alice"), "{shown}");
        let pretty = format!("{c:#?}");
        assert!(!pretty.contains("hunter2-secret"));
        let c = ZookeeperConfig::new(["alice:hunter2-secret@z:2181"]);
        assert!(!format!("{c:?}").contains("hunter2-secret"));
    }

    #[test]
    fn the_format_picks_the_default_prefix_and_an_explicit_one_wins() {
        // Builders: a default prefix follows the format, a chosen one stays.
        assert_eq!(ZookeeperConfig::default().prefix, DEFAULT_PREFIX);
        let curator = ZookeeperConfig::default().with_format(RecordFormat::Curator);
        assert_eq!(curator.prefix, "/services");
        curator.validate().unwrap();
        let auto = curator.clone().with_format(RecordFormat::Auto);
        assert_eq!(auto.prefix, DEFAULT_PREFIX);
        let c = ZookeeperConfig::default()
            .with_prefix("/laravel-go/services/")
            .with_format(RecordFormat::Curator);
        assert_eq!(c.prefix, "/services", "a trailing `/` is ignored");
        for format in [
            RecordFormat::LaravelGo,
            RecordFormat::Curator,
            RecordFormat::Auto,
        ] {
            let c = ZookeeperConfig::default()
                .with_prefix("/mine")
                .with_format(format);
            assert_eq!(c.prefix, "/mine", "{format}");
            let c = ZookeeperConfig::default()
                .with_format(format)
                .with_prefix("/mine");
            assert_eq!(c.prefix, "/mine", "{format}");
        }
        // Also the Laravel-Go prefix with curator records, when set after the format.
        let c = ZookeeperConfig::default()
            .with_format(RecordFormat::Curator)
            .with_prefix(DEFAULT_PREFIX);
        assert_eq!(c.prefix, DEFAULT_PREFIX);

        // Config files: without a prefix the format's default, an explicit prefix wins, even
        // one equal to another format's default.
        let read = |json: &str| serde_json::from_str::<ZookeeperConfig>(json).unwrap();
        assert_eq!(read("{}"), ZookeeperConfig::default());
        let c = read(r#"{"format":"curator"}"#);
        assert_eq!(
            (c.format, c.prefix.as_str()),
            (RecordFormat::Curator, "/services")
        );
        let c = read(r#"{"format":"curator","prefix":"/spring"}"#);
        assert_eq!(
            (c.format, c.prefix.as_str()),
            (RecordFormat::Curator, "/spring")
        );
        let c = read(r#"{"prefix":"/laravel-go/services","format":"curator"}"#);
        assert_eq!(
            (c.format, c.prefix.as_str()),
            (RecordFormat::Curator, DEFAULT_PREFIX)
        );
        let c = read(r#"{"format":"auto"}"#);
        assert_eq!(
            (c.format, c.prefix.as_str()),
            (RecordFormat::Auto, DEFAULT_PREFIX)
        );
        let e = serde_json::from_str::<ZookeeperConfig>(r#"{"format":"yaml"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown record format"), "{e}");

        // Serialized and read back: the same config, the prefix written out.
        for c in [
            curator.clone(),
            auto,
            ZookeeperConfig::default(),
            ZookeeperConfig::default()
                .with_format(RecordFormat::Curator)
                .with_prefix(DEFAULT_PREFIX),
        ] {
            let json = serde_json::to_string(&c).unwrap();
            assert!(json.contains(r#""prefix":""#), "{json}");
            let back: ZookeeperConfig = serde_json::from_str(&json).unwrap();
            assert_eq!(back, c, "{json}");
        }

        // An invalid explicit prefix is still refused with the curator format.
        assert!(curator.with_prefix("services").validate().is_err());
        // Formats of other registries are refused.
        for format in [RecordFormat::Kratos, RecordFormat::GoZero] {
            let e = ZookeeperConfig::default()
                .with_format(format)
                .with_prefix(DEFAULT_PREFIX)
                .validate()
                .unwrap_err()
                .to_string();
            assert!(e.contains("not a ZooKeeper record format"), "{e}");
        }
    }

    #[test]
    fn deserializes_go_style_config() {
        let c: ZookeeperConfig = serde_json::from_str(
            r#"{"servers":["localhost:2181","localhost:2182"],"prefix":"/laravel-go/services",
                "ttl":30000000000,"session_timeout":"10s","username":"u","password":"p",
                "chroot":"/app","connect_timeout":"1500ms"}"#,
        )
        .unwrap();
        assert_eq!(c.servers.len(), 2);
        assert_eq!(c.ttl, Duration::from_secs(30));
        assert_eq!(c.session_timeout, Duration::from_secs(10));
        assert_eq!(c.connect_timeout, Duration::from_millis(1500));
        assert_eq!(c.effective_chroot(), Some("/app"));
        // The password is read as a plain string and kept as a `Secret`.
        assert_eq!(c.digest().unwrap(), b"u:p");
        assert!(!format!("{c:?}").contains("\"p\""));
        c.validate().unwrap();
        let empty: ZookeeperConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, ZookeeperConfig::default());
        assert!(serde_json::from_str::<ZookeeperConfig>(r#"{"unknown":1}"#).is_err());
        assert!(serde_json::from_str::<ZookeeperConfig>(r#"{"session_timeout":"soon"}"#).is_err());
    }

    #[test]
    fn rejects_bad_values() {
        let bad = [
            ZookeeperConfig::new(Vec::<String>::new()),
            ZookeeperConfig::new([""]),
            ZookeeperConfig::new(["a:1,b:2"]),
            ZookeeperConfig::new(["a:0"]),
            ZookeeperConfig::new(["a:99999"]),
            ZookeeperConfig::new([":2181"]),
            ZookeeperConfig::new(["::1:2181"]),
            ZookeeperConfig::new(["a/chroot"]),
            ZookeeperConfig::new(["[]:2181"]),
            ZookeeperConfig::new(["[zz]:2181"]),
            ZookeeperConfig::new(["h\0st:2181"]),
            ZookeeperConfig::new(["h\tst"]),
            ZookeeperConfig::new(["%68:2181"]),
            ZookeeperConfig::new(["!ocalhost"]),
            ZookeeperConfig::new(["h:+80"]),
            ZookeeperConfig::new(["h:080"]),
            ZookeeperConfig::default().with_prefix(format!("/{}", "a".repeat(600))),
            ZookeeperConfig::default().with_session_timeout(Duration::from_millis(99)),
            ZookeeperConfig::default().with_session_timeout(Duration::MAX),
            ZookeeperConfig::default().with_session_timeout(Duration::from_secs(25 * 3600)),
            ZookeeperConfig::default().with_ttl(Duration::MAX),
            ZookeeperConfig::default().with_connect_timeout(Duration::MAX),
            ZookeeperConfig::default().with_max_backoff(Duration::MAX),
            ZookeeperConfig::default().with_prefix(""),
            ZookeeperConfig::default().with_prefix("relative"),
            ZookeeperConfig::default().with_prefix("/"),
            ZookeeperConfig::default().with_prefix("/a//b"),
            ZookeeperConfig::default().with_prefix("/a/../b"),
            ZookeeperConfig::default().with_prefix("/zookeeper/x"),
            ZookeeperConfig::default().with_chroot("nochroot"),
            ZookeeperConfig::default().with_session_timeout(Duration::ZERO),
            ZookeeperConfig::default().with_connect_timeout(Duration::ZERO),
            ZookeeperConfig::default().with_max_backoff(Duration::ZERO),
            ZookeeperConfig::default().with_watch_buffer(0),
            ZookeeperConfig::default().with_digest_auth("a:b", "p"),
            ZookeeperConfig::default().with_digest_auth("", "p"),
            ZookeeperConfig {
                username: Some("u".into()),
                ..ZookeeperConfig::default()
            },
            ZookeeperConfig {
                password: Some("p".into()),
                ..ZookeeperConfig::default()
            },
        ];
        for c in bad {
            match c.validate() {
                Err(Error::InvalidConfig(msg)) => assert!(msg.starts_with("zookeeper: "), "{msg}"),
                other => panic!("{c:?} must be rejected, got {other:?}"),
            }
        }
    }

    #[test]
    fn errors_never_quote_a_server() {
        let e = ZookeeperConfig::new(["z:1", "admin:SECRET"])
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("server #2") && !e.contains("SECRET"), "{e}");
        let e = ZookeeperConfig::default()
            .with_session_timeout(Duration::from_millis(50))
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("session_timeout 50ms is outside 100ms..=24h"),
            "{e}"
        );
    }

    #[test]
    fn accepts_server_forms() {
        for ok in [
            "zk",
            "zk:2181",
            "10.0.0.1:2181",
            "[::1]:2181",
            "[::1]",
            " zk:1 ",
        ] {
            ZookeeperConfig::new([ok]).validate().unwrap();
        }
        assert_eq!(
            ZookeeperConfig::default()
                .with_chroot("/")
                .effective_chroot(),
            None
        );
        assert_eq!(
            ZookeeperConfig::default()
                .with_chroot("/a/")
                .effective_chroot(),
            Some("/a")
        );
        let empty = ZookeeperConfig::default().with_chroot("");
        empty.validate().unwrap();
        assert_eq!(empty.effective_chroot(), None);
    }
}
