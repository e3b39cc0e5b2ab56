//! [`ChannelBuilder`]: the options of a [`Channel`].

use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use waypost_client::{OutlierConfig, OutlierDetector, RetryBudget};
use waypost_core_types::{Error, Result, ServiceDiscovery};

use crate::channel::{Channel, Inner};
use crate::connect::{tls_config, Connector};
use crate::metrics::ChannelMetrics;
use crate::pool::Pool;
use crate::retry::{MethodMatch, RetryPolicy, RetryTable};

/// Request bodies up to this size are kept to be sent again (64 KiB).
pub const DEFAULT_REPLAY_LIMIT: usize = 64 * 1024;

/// How long the connection of an instance that left discovery is kept for its running calls
/// when the channel has no timeout (30 s); see [`ChannelBuilder::drain_timeout`].
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Builds a [`Channel`]; see the crate docs for the defaults.
#[must_use]
pub struct ChannelBuilder {
    discovery: Arc<dyn ServiceDiscovery>,
    service: String,
    hash_key_header: Option<HeaderName>,
    bad_header: bool,
    timeout: Option<Duration>,
    connect_timeout: Duration,
    reconnect_backoff: (Duration, Duration),
    keep_alive: Option<Duration>,
    replay_limit: usize,
    max_failovers: u32,
    retries: RetryTable,
    budget: Option<Arc<RetryBudget>>,
    outlier: Option<OutlierConfig>,
    sweep_interval: Duration,
    drain_timeout: Option<Duration>,
    tls: Option<rustls::ClientConfig>,
    roots: Option<rustls::RootCertStore>,
}

impl std::fmt::Debug for ChannelBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelBuilder")
            .field("service", &self.service)
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .field("outlier", &self.outlier)
            .finish_non_exhaustive()
    }
}

impl ChannelBuilder {
    pub(crate) fn new(discovery: Arc<dyn ServiceDiscovery>, service: &str) -> Self {
        ChannelBuilder {
            discovery,
            service: service.to_owned(),
            hash_key_header: None,
            bad_header: false,
            timeout: None,
            connect_timeout: Duration::from_secs(5),
            reconnect_backoff: (Duration::from_millis(100), Duration::from_secs(10)),
            keep_alive: None,
            replay_limit: DEFAULT_REPLAY_LIMIT,
            max_failovers: 8,
            retries: RetryTable::default(),
            budget: Some(Arc::new(RetryBudget::default())),
            outlier: Some(OutlierConfig::default()),
            sweep_interval: Duration::from_secs(5),
            drain_timeout: None,
            tls: None,
            roots: None,
        }
    }

    /// Takes the consistent-hash key from this request metadata header (for example
    /// `x-user-id`); a [`HashKey`](crate::HashKey) request extension wins over it.
    ///
    /// # Errors
    /// Later, from [`build`](Self::build): `InvalidConfig` if `name` is not a header name.
    pub fn hash_key_header(mut self, name: &str) -> Self {
        self.hash_key_header = HeaderName::try_from(name.to_ascii_lowercase()).ok();
        self.bad_header = self.hash_key_header.is_none();
        self
    }

    /// A deadline for every call that has none of its own (a caller's shorter `grpc-timeout`
    /// wins). Default: none.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// How long opening a connection (TCP, TLS, HTTP/2 handshake) may take (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The backoff between failed connection attempts to one instance (default 100 ms growing
    /// to 10 s, with jitter); the instance is tried again after it, never dropped for good.
    pub fn reconnect_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.reconnect_backoff = (initial, max);
        self
    }

    /// HTTP/2 keep-alive pings at this interval, also while idle (default: none).
    pub fn keep_alive(mut self, interval: Duration) -> Self {
        self.keep_alive = Some(interval);
        self
    }

    /// Request bodies complete at the start of the call and at most this long are kept to be
    /// sent again (default [`DEFAULT_REPLAY_LIMIT`]).
    pub fn replay_limit(mut self, bytes: usize) -> Self {
        self.replay_limit = bytes;
        self
    }

    /// How many other instances a request that was never sent may go to (default 8).
    pub fn max_failovers(mut self, n: u32) -> Self {
        self.max_failovers = n;
        self
    }

    /// Retries `method` of `service` (`package.Service`, `Method`) with `policy`.
    pub fn retry_method(mut self, service: &str, method: &str, policy: RetryPolicy) -> Self {
        self.retries.0.push((
            MethodMatch::Method(service.to_owned(), method.to_owned()),
            policy,
        ));
        self
    }

    /// Retries every method of `service` (`package.Service`) with `policy`.
    pub fn retry_service(mut self, service: &str, policy: RetryPolicy) -> Self {
        self.retries
            .0
            .push((MethodMatch::Service(service.to_owned()), policy));
        self
    }

    /// Retries every method with `policy` (methods and services with their own policy use
    /// theirs).
    pub fn retry_all(mut self, policy: RetryPolicy) -> Self {
        self.retries.0.push((MethodMatch::All, policy));
        self
    }

    /// The retry budget, shared (with a `ServiceClient` too, through
    /// `ServiceClientBuilder::shared_retry_budget`). Default: a budget of its own,
    /// [`RetryBudget::default`].
    pub fn retry_budget(mut self, budget: Arc<RetryBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// No retry budget: every call may use all its policy's attempts.
    pub fn no_retry_budget(mut self) -> Self {
        self.budget = None;
        self
    }

    /// Outlier ejection (default [`OutlierConfig::default`]: 5 failures in a row eject an
    /// instance for 10 s).
    pub fn outlier_detection(mut self, config: OutlierConfig) -> Self {
        self.outlier = Some(config);
        self
    }

    /// No outlier ejection.
    pub fn no_outlier_detection(mut self) -> Self {
        self.outlier = None;
        self
    }

    /// How often connections to instances that left discovery are closed, besides on picks
    /// (default 5 s).
    pub fn sweep_interval(mut self, interval: Duration) -> Self {
        self.sweep_interval = interval;
        self
    }

    /// How long the connection of an instance that left discovery stays open for the calls
    /// still running on it (a removed instance is usually draining). It is closed when its
    /// last call ends, or at the first sweep after this bound (the calls still running then
    /// fail with `UNAVAILABLE`). Default: the channel's [`timeout`](Self::timeout) if set,
    /// else [`DEFAULT_DRAIN_TIMEOUT`] (30 s).
    pub fn drain_timeout(mut self, bound: Duration) -> Self {
        self.drain_timeout = Some(bound);
        self
    }

    /// Trusts these roots for TLS instances instead of the bundled webpki (Mozilla) roots.
    pub fn root_certificates(mut self, roots: rustls::RootCertStore) -> Self {
        self.roots = Some(roots);
        self
    }

    /// Uses this rustls configuration for TLS instances (its ALPN list is replaced by `h2`).
    pub fn tls_config(mut self, config: rustls::ClientConfig) -> Self {
        self.tls = Some(config);
        self
    }

    /// Builds the channel. Needs no runtime; connections open on first use.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for an invalid hash-key header name, a zero connect timeout or
    /// sweep interval, an invalid retry policy, or a TLS configuration that cannot be built.
    pub fn build(self) -> Result<Channel> {
        if self.bad_header {
            return Err(Error::InvalidConfig(
                "gRPC channel: the hash key header is not a valid header name".into(),
            ));
        }
        if self.connect_timeout.is_zero() || self.sweep_interval.is_zero() {
            return Err(Error::InvalidConfig(
                "gRPC channel: connect_timeout and sweep_interval must be above zero".into(),
            ));
        }
        for (_, p) in &self.retries.0 {
            p.validate()?;
        }
        let connector = Connector {
            connect_timeout: self.connect_timeout,
            tls: tls_config(self.tls, self.roots)?,
            keep_alive: self.keep_alive,
        };
        let metrics = ChannelMetrics::new(&self.service);
        Ok(Channel {
            inner: Arc::new(Inner {
                metrics,
                discovery: self.discovery,
                service: self.service,
                hash_key_header: self.hash_key_header,
                timeout: self.timeout,
                replay_limit: self.replay_limit,
                max_failovers: self.max_failovers,
                retries: self.retries,
                budget: self.budget,
                outliers: self.outlier.map(|c| Arc::new(OutlierDetector::new(c))),
                pool: Pool::new(
                    connector,
                    self.reconnect_backoff.0,
                    self.reconnect_backoff.1,
                    self.drain_timeout
                        .or(self.timeout)
                        .unwrap_or(DEFAULT_DRAIN_TIMEOUT),
                ),
                sweep_interval: self.sweep_interval,
                sweeper: std::sync::OnceLock::new(),
            }),
        })
    }
}
