//! [`HttpClient`]: the pooled hyper client (http and https through rustls) under a
//! [`ServiceClient`](crate::ServiceClient).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use waypost_core_types::{Error, Result};

type Plain = Client<HttpConnector, Full<Bytes>>;

/// Idle timeouts above this mean "keep idle connections without a limit".
const IDLE_FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
type Tls = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A pooled HTTP/1.1 client for http and https (rustls with the ring provider). Cheap to clone;
/// clones share the connection pools.
/// [`ServiceClientBuilder::http_client`](crate::ServiceClientBuilder::http_client) (the Laravel-Go
/// module's `WithHTTPClient`) takes one of these.
///
/// Plain http and https use two hyper clients: the TLS connector's futures are large, and
/// keeping them out of plain-http requests saves copying them on every call.
#[derive(Clone)]
pub struct HttpClient {
    plain: Plain,
    tls: Tls,
}

impl HttpClient {
    /// Sends `req` (absolute URI, `http` or `https`) on the matching pool.
    pub(crate) fn request(
        &self,
        req: http::Request<Full<Bytes>>,
    ) -> hyper_util::client::legacy::ResponseFuture {
        if req.uri().scheme() == Some(&http::uri::Scheme::HTTPS) {
            self.tls.request(req)
        } else {
            self.plain.request(req)
        }
    }
}

impl HttpClient {
    /// A client with the defaults of [`HttpClientBuilder`].
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] if the TLS configuration cannot be built.
    pub fn new() -> Result<Self> {
        HttpClient::builder().build()
    }

    /// A builder.
    pub fn builder() -> HttpClientBuilder {
        HttpClientBuilder::default()
    }
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient").finish_non_exhaustive()
    }
}

/// Builds an [`HttpClient`].
#[derive(Debug, Clone)]
#[must_use]
pub struct HttpClientBuilder {
    connect_timeout: Option<Duration>,
    pool_idle_timeout: Duration,
    pool_max_idle_per_host: usize,
    tls: Option<rustls::ClientConfig>,
    roots: Option<rustls::RootCertStore>,
}

impl Default for HttpClientBuilder {
    fn default() -> Self {
        HttpClientBuilder {
            connect_timeout: Some(Duration::from_secs(5)),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 64,
            tls: None,
            roots: None,
        }
    }
}

impl HttpClientBuilder {
    /// Gives up connecting after `timeout` (default 5 s; `None` or `Some(Duration::MAX)` waits
    /// as long as the call's own timeout allows). `Some(Duration::ZERO)` is refused by
    /// [`build`](Self::build).
    pub fn connect_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Closes pooled connections idle this long (default 90 s). Zero keeps no idle connection
    /// (every request opens a new one); `Duration::MAX` (or anything above 100 years) keeps
    /// them without an idle limit.
    pub fn pool_idle_timeout(mut self, timeout: Duration) -> Self {
        self.pool_idle_timeout = timeout;
        self
    }

    /// Keeps at most this many idle connections per instance (default 64).
    pub fn pool_max_idle_per_host(mut self, max: usize) -> Self {
        self.pool_max_idle_per_host = max;
        self
    }

    /// Trusts these roots instead of the bundled webpki (Mozilla) roots, for example a private
    /// CA.
    pub fn root_certificates(mut self, roots: rustls::RootCertStore) -> Self {
        self.roots = Some(roots);
        self
    }

    /// Uses this rustls configuration as is (overrides [`root_certificates`](Self::root_certificates)).
    pub fn tls_config(mut self, config: rustls::ClientConfig) -> Self {
        self.tls = Some(config);
        self
    }

    /// Builds the client.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a zero connect timeout, or if the TLS configuration cannot
    /// be built.
    pub fn build(self) -> Result<HttpClient> {
        if self.connect_timeout.is_some_and(|t| t.is_zero()) {
            return Err(Error::InvalidConfig(
                "HTTP client: connect_timeout must be above zero (None: no limit of its own)"
                    .into(),
            ));
        }
        // hyper's pool adds the idle timeout to the current time: beyond 100 years it is no
        // limit at all (and could overflow the clock).
        let idle = Some(self.pool_idle_timeout).filter(|t| *t <= IDLE_FOREVER);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls_err = |e: rustls::Error| Error::InvalidConfig(format!("TLS: {e}"));
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(self.connect_timeout);
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = match (self.tls, self.roots) {
            (Some(cfg), _) => builder.with_tls_config(cfg),
            (None, Some(roots)) => builder.with_tls_config(
                rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(tls_err)?
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
            ),
            (None, None) => builder
                .with_provider_and_webpki_roots(provider)
                .map_err(tls_err)?,
        };
        let connector = builder
            .https_only()
            .enable_http1()
            .wrap_connector(http.clone());
        let mut pool = Client::builder(TokioExecutor::new());
        pool.pool_idle_timeout(idle)
            .pool_max_idle_per_host(self.pool_max_idle_per_host)
            .pool_timer(TokioTimer::new());
        Ok(HttpClient {
            plain: pool.build(http),
            tls: pool.build(connector),
        })
    }
}
