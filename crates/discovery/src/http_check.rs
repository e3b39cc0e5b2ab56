//! [`HttpHealthChecker`]: a real HTTP GET against the instance.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use waypost_core_types::{Error, HealthChecker, Protocol, Result, ServiceInfo};

/// How much of a health response body is read (the rest is dropped).
const BODY_LIMIT: usize = 64 * 1024;

/// Checks an instance with `GET http://address:port/health` (path configurable): healthy when a
/// `2xx` answer arrives within the timeout; unhealthy when the connection is refused, the
/// answer is late, or the status is anything else.
///
/// Connections are pooled and reused between rounds. Instances whose protocol is
/// [`Protocol::Https`] are not supported (this checker speaks plain HTTP); check those with
/// [`TcpHealthChecker`](crate::TcpHealthChecker) or a custom [`HealthChecker`].
#[derive(Debug, Clone)]
pub struct HttpHealthChecker {
    client: Client<HttpConnector, Empty<Bytes>>,
    path: String,
    timeout: Duration,
}

impl Default for HttpHealthChecker {
    fn default() -> Self {
        Self::new(Duration::from_secs(5))
    }
}

impl HttpHealthChecker {
    /// A checker of `/health` with `timeout` per check (the seed's `NewHTTPHealthChecker`).
    pub fn new(timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(1)
            .build(connector);
        HttpHealthChecker {
            client,
            path: "/health".into(),
            timeout,
        }
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
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| Error::backend("http", e))?;
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
                body: String::from_utf8_lossy(&body[..body.len().min(256)]).into_owned(),
            })
        }
    }
}

#[async_trait]
impl HealthChecker for HttpHealthChecker {
    async fn check(&self, service: &ServiceInfo) -> Result<()> {
        if service.protocol == Protocol::Https {
            return Err(Error::Unsupported(
                "HttpHealthChecker speaks plain HTTP; check https instances over TCP".into(),
            ));
        }
        let uri: http::Uri = format!("http://{}{}", service.endpoint(), self.path)
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
