//! [`ServiceClientBuilder`]: a client's settings, their defaults, and their validation.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use waypost_core_types::{Error, Result, ServiceDiscovery};

use super::{Inner, ServiceClient};
use crate::body::DEFAULT_BODY_LIMIT;
use crate::budget::RetryBudget;
use crate::http::HttpClient;
use crate::metrics::ClientMetrics;
use crate::outlier::{OutlierConfig, OutlierDetector};
use crate::retry::RetryPolicy;

/// The default per-attempt timeout (the Laravel-Go module's client used 30 s).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Builds a [`ServiceClient`] (the Laravel-Go module's `NewServiceClient(discovery, options...)`).
#[must_use]
pub struct ServiceClientBuilder {
    discovery: Arc<dyn ServiceDiscovery>,
    http: Option<HttpClient>,
    http2_prior_knowledge: Option<bool>,
    timeout: Duration,
    deadline: Option<Duration>,
    retry: RetryPolicy,
    budget: Option<Arc<RetryBudget>>,
    body_limit: usize,
    outlier: Option<OutlierConfig>,
}

impl fmt::Debug for ServiceClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceClientBuilder")
            .field("timeout", &self.timeout)
            .field("deadline", &self.deadline)
            .field("retry", &self.retry)
            .field("budget", &self.budget)
            .field("body_limit", &self.body_limit)
            .field("outlier", &self.outlier)
            .field("http2_prior_knowledge", &self.http2_prior_knowledge)
            .finish_non_exhaustive()
    }
}

impl ServiceClientBuilder {
    /// Per-attempt timeout, covering connect, request and reading the response body (the
    /// Laravel-Go module's `WithTimeout`; default 30 s). `Duration::MAX` means no per-attempt
    /// limit; zero is refused by [`build`](Self::build).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Overall deadline of a call: all attempts and the waits between them (default: none, each
    /// attempt is bounded by [`timeout`](Self::timeout)). `Duration::MAX` means no deadline;
    /// zero is refused by [`build`](Self::build).
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Up to `max_retries` retries with exponential backoff from `base_delay` with full jitter
    /// (the Laravel-Go module's `WithRetry(count, delay)`; default 2 retries from 50 ms). See
    /// [`RetryPolicy::new`] for zero and `Duration::MAX`.
    pub fn retry(mut self, max_retries: u32, base_delay: Duration) -> Self {
        let keep = self.retry.retry_non_idempotent;
        self.retry = RetryPolicy::new(max_retries, base_delay);
        self.retry.retry_non_idempotent = keep;
        self
    }

    /// The whole retry policy.
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Also retry POST and PATCH on 5xx and timeouts (default: only idempotent methods; a
    /// connection that could not be opened is retried for every method).
    pub fn retry_non_idempotent(mut self, yes: bool) -> Self {
        self.retry.retry_non_idempotent = yes;
        self
    }

    /// The retry budget (default [`RetryBudget::default`]: 20 % of requests plus 10 per second
    /// over 10 s).
    pub fn retry_budget(mut self, budget: RetryBudget) -> Self {
        self.budget = Some(Arc::new(budget));
        self
    }

    /// A retry budget shared with other clients (another `ServiceClient`, or a gRPC channel of
    /// `waypost-grpc`): their requests fill it and their retries draw on it together, so an
    /// outage cannot multiply the load through any of them.
    pub fn shared_retry_budget(mut self, budget: Arc<RetryBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// No retry budget: every call may use all its retries.
    pub fn no_retry_budget(mut self) -> Self {
        self.budget = None;
        self
    }

    /// The HTTP client to send with (the Laravel-Go module's `WithHTTPClient`).
    pub fn http_client(mut self, client: HttpClient) -> Self {
        self.http = Some(client);
        self
    }

    /// Plain http over HTTP/2 with prior knowledge (h2c), for every instance whose metadata does
    /// not say otherwise ([`HTTP2_METADATA_KEY`](crate::HTTP2_METADATA_KEY)); `false` keeps
    /// HTTP/1.1, the default. Applies to the [`http_client`](Self::http_client) given too (the
    /// same pools, this setting); without this call, that client's own
    /// [`HttpClientBuilder::http2_prior_knowledge`](crate::HttpClientBuilder::http2_prior_knowledge)
    /// holds. https is not affected: ALPN decides.
    pub fn http2_prior_knowledge(mut self, yes: bool) -> Self {
        self.http2_prior_knowledge = Some(yes);
        self
    }

    /// Largest response body accepted, in bytes (default 10 MiB).
    pub fn body_limit(mut self, limit: usize) -> Self {
        self.body_limit = limit;
        self
    }

    /// Per-instance breakers (default [`OutlierConfig::default`]).
    pub fn outlier_detection(mut self, config: OutlierConfig) -> Self {
        self.outlier = Some(config);
        self
    }

    /// No outlier ejection.
    pub fn no_outlier_detection(mut self) -> Self {
        self.outlier = None;
        self
    }

    /// Builds the client.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a zero timeout or deadline, or when the default HTTP client's
    /// TLS setup fails.
    pub fn build(self) -> Result<ServiceClient> {
        if self.timeout.is_zero() {
            return Err(Error::InvalidConfig(
                "client timeout must be above zero".into(),
            ));
        }
        if self.deadline.is_some_and(|d| d.is_zero()) {
            return Err(Error::InvalidConfig(
                "client deadline must be above zero".into(),
            ));
        }
        let http = match self.http {
            Some(h) => h,
            None => HttpClient::new()?,
        };
        let http = match self.http2_prior_knowledge {
            Some(yes) => http.with_prior_knowledge(yes),
            None => http,
        };
        Ok(ServiceClient {
            inner: Arc::new(Inner {
                discovery: self.discovery,
                http,
                timeout: self.timeout,
                deadline: self.deadline,
                retry: self.retry,
                budget: self.budget,
                body_limit: self.body_limit,
                outliers: self.outlier.map(OutlierDetector::new),
                metrics: ClientMetrics::new(),
            }),
        })
    }
}

impl ServiceClient {
    /// A builder over `discovery`.
    pub fn builder(discovery: Arc<dyn ServiceDiscovery>) -> ServiceClientBuilder {
        ServiceClientBuilder {
            discovery,
            http: None,
            http2_prior_knowledge: None,
            timeout: DEFAULT_TIMEOUT,
            deadline: None,
            retry: RetryPolicy::default(),
            budget: Some(Arc::new(RetryBudget::default())),
            body_limit: DEFAULT_BODY_LIMIT,
            outlier: Some(OutlierConfig::default()),
        }
    }

    /// A client with the default settings.
    ///
    /// # Errors
    /// As [`ServiceClientBuilder::build`].
    pub fn new(discovery: Arc<dyn ServiceDiscovery>) -> Result<Self> {
        ServiceClient::builder(discovery).build()
    }
}
