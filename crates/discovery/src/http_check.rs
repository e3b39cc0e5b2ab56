//! [`HttpHealthChecker`]: a real HTTP GET against the instance.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use waypost_core_types::quote::quoted_up_to;
use waypost_core_types::{Error, HealthChecker, Protocol, Result, ServiceInfo};

type Pool = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// A pooled client for `http://` and `https://` (rustls; `tls` or the webpki roots).
fn pool(timeout: Duration, tls: Option<rustls::ClientConfig>) -> Result<Pool> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(timeout));
    http.set_nodelay(true);
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match tls {
        Some(cfg) => builder.with_tls_config(cfg),
        None => builder
            .with_provider_and_webpki_roots(Arc::new(rustls::crypto::ring::default_provider()))
            .map_err(|e| Error::InvalidConfig(format!("TLS: {e}")))?,
    };
    let connector = builder.https_or_http().enable_http1().wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(1)
        .build(connector))
}

/// How much of a health response body is read (the rest is dropped).
const BODY_LIMIT: usize = 64 * 1024;

/// Checks an instance with `GET http://address:port/health` (path configurable): healthy when a
/// `2xx` answer arrives within the timeout; unhealthy when the connection is refused, the
/// answer is late, or the status is anything else.
///
/// Instances whose protocol is [`Protocol::Https`] are checked over TLS (rustls), trusting the
/// webpki (Mozilla) roots unless [`with_root_certificates`](Self::with_root_certificates) or
/// [`with_tls_config`](Self::with_tls_config) says otherwise; an untrusted certificate makes the
/// instance unhealthy. Connections are pooled and reused between rounds.
#[derive(Debug, Clone)]
pub struct HttpHealthChecker {
    client: std::result::Result<Pool, String>,
    path: String,
    timeout: Duration,
}

impl Default for HttpHealthChecker {
    fn default() -> Self {
        Self::new(Duration::from_secs(5))
    }
}

impl HttpHealthChecker {
    /// A checker of `/health` with `timeout` per check (the Laravel-Go module's
    /// `NewHTTPHealthChecker`). `Duration::MAX` means no limit of its own (a
    /// [`HealthMonitor`](crate::HealthMonitor)'s check timeout still applies). With a zero
    /// timeout every check fails at once with [`Error::InvalidConfig`], without a request.
    pub fn new(timeout: Duration) -> Self {
        HttpHealthChecker {
            client: pool(timeout, None).map_err(|e| e.to_string()),
            path: "/health".into(),
            timeout,
        }
    }

    /// Uses this rustls configuration for https instances.
    #[must_use]
    pub fn with_tls_config(mut self, config: rustls::ClientConfig) -> Self {
        self.client = pool(self.timeout, Some(config)).map_err(|e| e.to_string());
        self
    }

    /// Trusts these roots (a private CA, say) instead of the webpki roots for https instances.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] if the TLS configuration cannot be built.
    pub fn with_root_certificates(self, roots: rustls::RootCertStore) -> Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::InvalidConfig(format!("TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(self.with_tls_config(config))
    }

    /// Checks `path` instead of `/health` (a leading `/` is added if missing).
    #[must_use]
    pub fn with_path(mut self, path: impl Into<String>) -> Self {
        let path = path.into();
        self.path = if path.starts_with('/') {
            path
        } else {
            format!("/{path}")
        };
        self
    }

    /// The path checked.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The time limit of one check.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    async fn get(&self, uri: http::Uri) -> Result<()> {
        let req = http::Request::get(uri)
            .header(http::header::USER_AGENT, "waypost-health-check")
            .body(Empty::<Bytes>::new())
            .map_err(|e| Error::InvalidConfig(format!("health check request: {e}")))?;
        let client = self
            .client
            .as_ref()
            .map_err(|e| Error::InvalidConfig(e.clone()))?;
        let resp = client.request(req).await.map_err(|e| Error::Backend {
            backend: "http",
            message: chain(&e),
            source: Some(Box::new(e)),
        })?;
        let status = resp.status();
        // Read (a bounded part of) the body, so the connection can be reused.
        let body = Limited::new(resp.into_body(), BODY_LIMIT)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        if status.is_success() {
            Ok(())
        } else {
            Err(Error::Http {
                status: status.as_u16(),
                // Peer bytes: escaped and bounded.
                body: quoted_up_to(&String::from_utf8_lossy(&body[..body.len().min(1024)]), 256)
                    .to_string(),
            })
        }
    }
}

/// The error of a check with a zero timeout.
pub(crate) fn zero_timeout() -> Error {
    Error::InvalidConfig("health check timeout must be above zero".into())
}

/// An error and its sources, as one line (hyper's own message is only "client error (Connect)").
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

#[async_trait]
impl HealthChecker for HttpHealthChecker {
    async fn check(&self, service: &ServiceInfo) -> Result<()> {
        if self.timeout.is_zero() {
            return Err(zero_timeout());
        }
        let scheme = if service.protocol == Protocol::Https {
            "https"
        } else {
            "http"
        };
        let uri: http::Uri = format!("{scheme}://{}{}", service.endpoint(), self.path)
            .parse()
            .map_err(|e| {
                Error::InvalidConfig(format!("health check URL of `{}`: {e}", service.id))
            })?;
        match tokio::time::timeout(self.timeout, self.get(uri)).await {
            Ok(r) => r,
            Err(_) => Err(Error::timeout(
                format!("health check of `{}`", service.id),
                self.timeout,
            )),
        }
    }
}
