//! [`ConsulConfig`]: where the agent is, how to authenticate, and the timings of the registry.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use waypost_core_types::quote::quoted;
use waypost_core_types::secret::redact_userinfo;
use waypost_core_types::time::config_duration;
use waypost_core_types::validate::{
    check_duration, check_endpoint, check_prefix, DurationBounds, TIMEOUT, TTL,
};
use waypost_core_types::{Error, Result, Secret};

/// The default agent address.
pub const DEFAULT_ADDRESS: &str = "localhost:8500";
/// The default namespace marker of our services.
pub const DEFAULT_PREFIX: &str = "laravel-go/services";
/// The default TTL of the TTL check of each registered instance.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);

/// What to do with catalog entries that waypost did not register (no waypost `Meta`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ForeignServices {
    /// Read them with defaults (version "", protocol http, weight from Consul's `Weights`,
    /// health from their checks), so services registered by other tools can be discovered.
    #[default]
    Include,
    /// Leave them out of lists and watches (logged at debug level).
    Skip,
}

/// Configuration of a [`ConsulRegistry`](crate::ConsulRegistry).
///
/// Durations in serde input are Go duration strings (`"30s"`, `"1m30s"`, `"250ms"`) or integer
/// nanoseconds (as Go's `encoding/json` writes a `time.Duration`). Serializing writes the token as
/// `"[redacted]"`. From a URL: `"consul://:TOKEN@host:8500/prefix?dc=dc1".parse()` (the
/// parameters, one per field, are listed at its `FromStr` impl).
///
/// ```
/// use std::time::Duration;
/// use waypost_registry_consul::ConsulConfig;
/// let cfg = ConsulConfig::default()
///     .with_address("https://consul.internal:8501")
///     .with_token("s3cr3t")
///     .with_datacenter("dc1")
///     .with_ttl(Duration::from_secs(10));
/// assert!(!format!("{cfg:?}").contains("s3cr3t"));
/// ```
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ConsulConfig {
    /// `host:port`, `http://host:port` or `https://host:port` (default `localhost:8500`).
    pub address: String,
    /// ACL token, sent as `X-Consul-Token`; never printed.
    pub token: Option<Secret>,
    /// Datacenter for catalog and health reads (default: the agent's).
    pub datacenter: Option<String>,
    /// Namespace marker of our services, stored in each service's `Meta` (default
    /// `laravel-go/services`). Services with another waypost prefix are not ours and are skipped.
    pub prefix: String,
    /// TTL of the TTL check of instances registered with `ttl == 0` (default 30 s).
    #[serde(with = "config_duration")]
    pub ttl: Duration,
    /// `DeregisterCriticalServiceAfter` of our checks: Consul removes an instance whose check
    /// stayed critical this long (default 1 min, Consul's minimum).
    #[serde(with = "config_duration")]
    pub deregister_critical_after: Duration,
    /// PEM file with the CA certificate(s) to trust for `https` (default: the web PKI roots).
    pub ca_file: Option<PathBuf>,
    /// PEM text with the CA certificate(s) to trust, instead of `ca_file`.
    pub ca_pem: Option<String>,
    /// Bound on establishing a connection, and on `connect` as a whole (default 5 s).
    #[serde(with = "config_duration")]
    pub connect_timeout: Duration,
    /// Bound on one ordinary (non-blocking) request (default 10 s).
    #[serde(with = "config_duration")]
    pub request_timeout: Duration,
    /// `wait` of the blocking queries behind watches (default 60 s, at most 10 min).
    #[serde(with = "config_duration")]
    pub watch_wait: Duration,
    /// Steady-state minimum spacing of blocking queries of one watch loop when the index keeps
    /// moving (a token bucket with a burst of 2; default 1 s).
    #[serde(with = "config_duration")]
    pub watch_min_interval: Duration,
    /// First delay before retrying after a failure (default 200 ms); doubles per failure.
    #[serde(with = "config_duration")]
    pub retry_initial_backoff: Duration,
    /// Cap of the retry delay (default 30 s); jitter is applied below it.
    #[serde(with = "config_duration")]
    pub retry_max_backoff: Duration,
    /// Largest accepted response body (default 16 MiB).
    pub max_response_bytes: usize,
    /// Queue length of each watch stream before it is resynced with a snapshot (default 1024).
    pub watch_buffer: usize,
    /// What to do with services waypost did not register.
    pub foreign_services: ForeignServices,
    /// Whether the `consul` service (each Consul server registers itself under that name, on
    /// port 8300) is listed, watched and discovered like an application service (default
    /// `false`: it is left out).
    pub include_consul_service: bool,
}

/// Like a derived `Debug`; the password shows as `[redacted]` (it is a [`Secret`]), and so does
/// anything a user wrote before an `@` in an address.
impl std::fmt::Debug for ConsulConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulConfig")
            .field("address", &redact_userinfo(&self.address))
            .field("token", &self.token)
            .field("datacenter", &self.datacenter)
            .field("prefix", &self.prefix)
            .field("ttl", &self.ttl)
            .field("deregister_critical_after", &self.deregister_critical_after)
            .field("ca_file", &self.ca_file)
            .field("ca_pem", &self.ca_pem)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("watch_wait", &self.watch_wait)
            .field("watch_min_interval", &self.watch_min_interval)
            .field("retry_initial_backoff", &self.retry_initial_backoff)
            .field("retry_max_backoff", &self.retry_max_backoff)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("watch_buffer", &self.watch_buffer)
            .field("foreign_services", &self.foreign_services)
            .field("include_consul_service", &self.include_consul_service)
            .finish()
    }
}

impl Default for ConsulConfig {
    fn default() -> Self {
        ConsulConfig {
            address: DEFAULT_ADDRESS.to_owned(),
            token: None,
            datacenter: None,
            prefix: DEFAULT_PREFIX.to_owned(),
            ttl: DEFAULT_TTL,
            deregister_critical_after: Duration::from_secs(60),
            ca_file: None,
            ca_pem: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            watch_wait: Duration::from_secs(60),
            watch_min_interval: Duration::from_secs(1),
            retry_initial_backoff: Duration::from_millis(200),
            retry_max_backoff: Duration::from_secs(30),
            max_response_bytes: 16 * 1024 * 1024,
            watch_buffer: 1024,
            foreign_services: ForeignServices::Include,
            include_consul_service: false,
        }
    }
}

macro_rules! with {
    ($(#[$doc:meta])* $name:ident, $field:ident: $ty:ty) => {
        $(#[$doc])*
        #[must_use]
        pub fn $name(mut self, value: $ty) -> Self {
            self.$field = value;
            self
        }
    };
}

impl ConsulConfig {
    /// The defaults with `CONSUL_HTTP_ADDR`, `CONSUL_HTTP_TOKEN`, `CONSUL_CACERT` and
    /// `CONSUL_DATACENTER` applied when set (the variables Consul's own tools read).
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let mut cfg = ConsulConfig::default();
        if let Some(a) = var("CONSUL_HTTP_ADDR") {
            cfg.address = a;
        }
        cfg.token = var("CONSUL_HTTP_TOKEN").map(Secret::from);
        cfg.ca_file = var("CONSUL_CACERT").map(PathBuf::from);
        cfg.datacenter = var("CONSUL_DATACENTER");
        cfg
    }

    /// Sets the agent address.
    #[must_use]
    pub fn with_address(mut self, address: impl Into<String>) -> Self {
        self.address = address.into();
        self
    }

    /// Sets the ACL token.
    #[must_use]
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(Secret::new(token));
        self
    }

    /// Sets the datacenter.
    #[must_use]
    pub fn with_datacenter(mut self, dc: impl Into<String>) -> Self {
        self.datacenter = Some(dc.into());
        self
    }

    /// Sets the prefix (namespace marker).
    #[must_use]
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets the PEM file of the CA to trust.
    #[must_use]
    pub fn with_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// Sets the PEM text of the CA to trust.
    #[must_use]
    pub fn with_ca_pem(mut self, pem: impl Into<String>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    with!(
        /// Sets the default TTL.
        with_ttl, ttl: Duration
    );
    with!(
        /// Sets `DeregisterCriticalServiceAfter`.
        with_deregister_critical_after, deregister_critical_after: Duration
    );
    with!(
        /// Sets the connect timeout.
        with_connect_timeout, connect_timeout: Duration
    );
    with!(
        /// Sets the timeout of ordinary requests.
        with_request_timeout, request_timeout: Duration
    );
    with!(
        /// Sets the `wait` of blocking queries.
        with_watch_wait, watch_wait: Duration
    );
    with!(
        /// Sets the steady-state spacing of blocking queries.
        with_watch_min_interval, watch_min_interval: Duration
    );
    with!(
        /// Sets the first retry delay.
        with_retry_initial_backoff, retry_initial_backoff: Duration
    );
    with!(
        /// Sets the cap of the retry delay.
        with_retry_max_backoff, retry_max_backoff: Duration
    );
    with!(
        /// Sets the response size limit.
        with_max_response_bytes, max_response_bytes: usize
    );
    with!(
        /// Sets the queue length of watch streams.
        with_watch_buffer, watch_buffer: usize
    );
    with!(
        /// Sets what to do with services waypost did not register.
        with_foreign_services, foreign_services: ForeignServices
    );
    with!(
        /// Sets whether the `consul` service of the Consul servers is listed, watched and
        /// discovered (default `false`).
        with_include_consul_service, include_consul_service: bool
    );

    /// Checks the configuration.
    ///
    /// The address, the prefix and the durations follow the rules every backend shares
    /// ([`waypost_core_types::validate`]):
    ///
    /// | setting | accepted |
    /// |---|---|
    /// | `address` | `host[:port]` with an optional `http://` or `https://` |
    /// | `prefix` | 1 to 512 bytes (Consul's limit for a `Meta` value), no `.`/`..` or empty segment, no control character |
    /// | `ttl` | 100 ms to 365 days |
    /// | `deregister_critical_after` | 1 ms to 365 days (Consul itself raises values below 1 min to 1 min) |
    /// | `connect_timeout`, `request_timeout`, `retry_initial_backoff`, `retry_max_backoff` | 1 ms to 24 h |
    /// | `watch_wait` | 1 ms to 10 min (Consul's `max_query_time`) |
    /// | `watch_min_interval` | 0 (no spacing) to 24 h |
    /// | `max_response_bytes` | at least 1024 |
    /// | `watch_buffer` | at least 1 |
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the bad value (never quoting the address, which could
    /// hold credentials).
    pub fn validate(&self) -> Result<()> {
        Endpoint::parse(
            &self.address,
            self.ca_file.is_some() || self.ca_pem.is_some(),
        )?;
        let bad = |m: String| Err(Error::InvalidConfig(format!("consul: {m}")));
        if self.prefix.is_empty() {
            return bad("prefix must not be empty (it is stored in Consul service Meta)".into());
        }
        if let Err(why) = check_prefix(&self.prefix) {
            return bad(format!("prefix `{}` {why}", quoted(&self.prefix)));
        }
        for (what, d, bounds) in [
            ("ttl", self.ttl, CHECK_TTL),
            (
                "deregister_critical_after",
                self.deregister_critical_after,
                TTL,
            ),
            ("connect_timeout", self.connect_timeout, TIMEOUT),
            ("request_timeout", self.request_timeout, TIMEOUT),
            ("watch_wait", self.watch_wait, WATCH_WAIT),
            ("watch_min_interval", self.watch_min_interval, MIN_SPACING),
            ("retry_initial_backoff", self.retry_initial_backoff, TIMEOUT),
            ("retry_max_backoff", self.retry_max_backoff, TIMEOUT),
        ] {
            if let Err(m) = check_duration(what, d, bounds) {
                return bad(m);
            }
        }
        if self.max_response_bytes < 1024 {
            return bad("max_response_bytes must be at least 1024".into());
        }
        if self.watch_buffer == 0 {
            return bad("watch_buffer must be at least 1".into());
        }
        if let Some(dc) = &self.datacenter {
            if dc.is_empty()
                || dc.len() > 128
                || !dc
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return bad(format!("datacenter `{}` is not a valid name", quoted(dc)));
            }
        }
        Ok(())
    }
}

/// The TTL of our TTL checks.
const CHECK_TTL: DurationBounds = DurationBounds::new(Duration::from_millis(100), TTL.max);
/// `wait` of blocking queries: Consul caps it at 10 min.
const WATCH_WAIT: DurationBounds =
    DurationBounds::new(Duration::from_millis(1), Duration::from_secs(600));
/// The spacing of blocking queries (zero: none).
const MIN_SPACING: DurationBounds = DurationBounds::new(Duration::ZERO, TIMEOUT.max);

/// Where the agent is: scheme and authority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub(crate) https: bool,
    /// `host:port` (IPv6 in brackets).
    pub(crate) authority: String,
}

impl Endpoint {
    /// Parses `host[:port]`, `http://host[:port]` or `https://host[:port]` (default port 8500,
    /// https when only a CA is given for a bare address).
    pub(crate) fn parse(address: &str, tls_hint: bool) -> Result<Endpoint> {
        // The address is never quoted: `http://user:token@host` must not print the token.
        let bad = |m: &str| Err(Error::InvalidConfig(format!("consul: address: {m}")));
        let trimmed = address.trim();
        let (https, rest) = if let Some(r) = strip_prefix_ci(trimmed, "https://") {
            (true, r)
        } else if let Some(r) = strip_prefix_ci(trimmed, "http://") {
            (false, r)
        } else if trimmed.contains("://") {
            return bad("scheme must be http or https");
        } else {
            (tls_hint, trimmed)
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() {
            return bad("host is empty");
        }
        if rest.contains(['/', '?', '#', '@']) {
            return bad("expected host:port without path, query or credentials");
        }
        let (host, port) = match check_endpoint(rest) {
            Ok(parts) => parts,
            Err(why) => return bad(why),
        };
        Ok(Endpoint {
            https,
            authority: format!("{host}:{}", port.unwrap_or(8500)),
        })
    }

    pub(crate) fn base_url(&self) -> String {
        format!(
            "{}://{}",
            if self.https { "https" } else { "http" },
            self.authority
        )
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    if s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix) {
        Some(&s[prefix.len()..])
    } else {
        None
    }
}

/// Formats a duration as Go does for our requests (`"30s"`, `"1500ms"`).
pub(crate) fn go_duration_string(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_go_module() {
        let c = ConsulConfig::default();
        assert_eq!(c.address, "localhost:8500");
        assert_eq!(c.prefix, "laravel-go/services");
        assert_eq!(c.ttl, Duration::from_secs(30));
        assert!(c.token.is_none());
        c.validate().unwrap();
    }

    #[test]
    fn addresses_with_and_without_scheme() {
        let e = Endpoint::parse("localhost:8500", false).unwrap();
        assert_eq!(
            (e.https, e.base_url().as_str()),
            (false, "http://localhost:8500")
        );
        let e = Endpoint::parse("https://consul:8501/", false).unwrap();
        assert_eq!(e.base_url(), "https://consul:8501");
        let e = Endpoint::parse("HTTP://10.0.0.1", false).unwrap();
        assert_eq!(e.base_url(), "http://10.0.0.1:8500");
        let e = Endpoint::parse("[::1]:8500", false).unwrap();
        assert_eq!(e.authority, "[::1]:8500");
        let e = Endpoint::parse("consul:8501", true).unwrap();
        assert!(e.https, "a CA with a bare address means https");
        for bad in [
            "",
            "ftp://x:1",
            "x:0",
            "http://",
            "x:port",
            "http://u:p@x:1",
            "x:1/path",
            "x:",
            "[]:8500",
            "[zz]:8500",
            "h\0st:8500",
            "h\tst",
            "%68:8500",
            "!ocalhost",
            "h:+80",
            "h:080",
            "x :1",
        ] {
            assert!(
                matches!(Endpoint::parse(bad, false), Err(Error::InvalidConfig(_))),
                "{bad:?} must be rejected"
            );
        }
    }

    #[test]
    fn token_is_never_printed() {
        let c = ConsulConfig::default().with_token("top-secret-token");
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("top-secret-token"), "{dbg}");
        assert!(dbg.contains("[redacted]"), "{dbg}");
        let in_address = ConsulConfig::default().with_address("http://u:top-secret-token@h:8500");
        assert!(!format!("{in_address:?}").contains("top-secret-token"));
        assert_eq!(
            c.token.as_ref().map(Secret::expose),
            Some("top-secret-token")
        );
    }

    #[test]
    fn deserializes_with_go_durations() {
        let c: ConsulConfig = serde_json::from_str(
            r#"{"address":"http://c:8500","token":"t","datacenter":"dc2","ttl":"10s",
                "connect_timeout":1500000000,"watch_wait":"1m30s","foreign_services":"skip"}"#,
        )
        .unwrap();
        assert_eq!(c.ttl, Duration::from_secs(10));
        assert_eq!(c.connect_timeout, Duration::from_millis(1500));
        assert_eq!(c.watch_wait, Duration::from_secs(90));
        assert_eq!(c.datacenter.as_deref(), Some("dc2"));
        assert_eq!(c.token.as_ref().map(Secret::expose), Some("t"));
        assert_eq!(c.foreign_services, ForeignServices::Skip);
        assert_eq!(c.prefix, DEFAULT_PREFIX, "unset fields keep defaults");
        assert!(
            !c.include_consul_service,
            "the consul service is left out by default"
        );
        let c: ConsulConfig = serde_json::from_str(r#"{"include_consul_service":true}"#).unwrap();
        assert!(c.include_consul_service);
        assert!(serde_json::from_str::<ConsulConfig>(r#"{"ttl":"10"}"#).is_err());
        assert!(serde_json::from_str::<ConsulConfig>(r#"{"adress":"x"}"#).is_err());
    }

    #[test]
    fn validation_names_the_problem() {
        let e = ConsulConfig::default()
            .with_prefix("")
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("prefix"), "{e}");
        let e = ConsulConfig::default()
            .with_ttl(Duration::from_millis(1))
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("ttl"), "{e}");
        let e = ConsulConfig::default()
            .with_watch_wait(Duration::from_secs(3600))
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("watch_wait"), "{e}");
        let e = ConsulConfig::default()
            .with_datacenter("dc 1")
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("datacenter"), "{e}");
        for prefix in ["a/../b", "..", "a//b", "a\0b", "a\u{1b}b"] {
            let e = ConsulConfig::default()
                .with_prefix(prefix)
                .validate()
                .unwrap_err();
            assert!(e.to_string().contains("prefix"), "{prefix:?}: {e}");
        }
        let e = ConsulConfig::default()
            .with_prefix("p".repeat(513))
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("longer than 512"), "{e}");
        let e = ConsulConfig::default()
            .with_address("http://admin:SECRET@h:8500")
            .validate()
            .unwrap_err();
        assert!(!e.to_string().contains("SECRET"), "{e}");
    }

    #[test]
    fn every_duration_has_bounds() {
        type Set = fn(ConsulConfig, Duration) -> ConsulConfig;
        let setters: [(&str, Set); 8] = [
            ("ttl", ConsulConfig::with_ttl),
            (
                "deregister_critical_after",
                ConsulConfig::with_deregister_critical_after,
            ),
            ("connect_timeout", ConsulConfig::with_connect_timeout),
            ("request_timeout", ConsulConfig::with_request_timeout),
            ("watch_wait", ConsulConfig::with_watch_wait),
            ("watch_min_interval", ConsulConfig::with_watch_min_interval),
            (
                "retry_initial_backoff",
                ConsulConfig::with_retry_initial_backoff,
            ),
            ("retry_max_backoff", ConsulConfig::with_retry_max_backoff),
        ];
        for (name, set) in setters {
            let e = set(ConsulConfig::default(), Duration::MAX)
                .validate()
                .unwrap_err()
                .to_string();
            assert!(e.contains(name) && e.contains("is outside"), "{e}");
            let zero = set(ConsulConfig::default(), Duration::ZERO).validate();
            assert_eq!(
                zero.is_ok(),
                name == "watch_min_interval",
                "{name}: {zero:?}"
            );
        }
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration_string(Duration::from_secs(30)), "30s");
        assert_eq!(go_duration_string(Duration::from_millis(1500)), "1500ms");
    }
}
