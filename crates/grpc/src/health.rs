//! [`GrpcHealthChecker`]: `grpc.health.v1.Health/Check` against one instance, for discovery's
//! health monitor.

use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use waypost_core_types::quote::{quoted, quoted_up_to};
use waypost_core_types::{Error, HealthChecker, Result, ServiceInfo};

use crate::connect::{tls_config, uses_tls, Connector};

/// Which service name a check asks about.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum HealthService {
    /// The instance's own service name (`ServiceInfo::name`). The default.
    #[default]
    InstanceName,
    /// The server as a whole (the empty name, which gRPC servers answer for overall health).
    Server,
    /// This name.
    Named(String),
}

/// Checks an instance with the gRPC health protocol (`grpc.health.v1`,
/// `grpc/grpc doc/health-checking.md`): healthy when `Check` answers `SERVING` within the
/// timeout; unhealthy when it answers anything else, returns an error status (`NOT_FOUND` for
/// a service the server does not know), or cannot be reached. TLS as for the channel
/// ([`uses_tls`](crate::uses_tls)); one connection per check.
#[derive(Clone)]
pub struct GrpcHealthChecker {
    service: HealthService,
    timeout: Duration,
    connector: Connector,
}

impl std::fmt::Debug for GrpcHealthChecker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcHealthChecker")
            .field("service", &self.service)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl GrpcHealthChecker {
    /// Asks about the instance's own service name, within 2 s, trusting the webpki roots.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] if the TLS configuration cannot be built.
    pub fn new() -> Result<Self> {
        Self::with_tls(None, None)
    }

    /// As [`new`](Self::new), with a rustls configuration or roots for TLS instances.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] if the TLS configuration cannot be built.
    pub fn with_tls(
        config: Option<rustls::ClientConfig>,
        roots: Option<rustls::RootCertStore>,
    ) -> Result<Self> {
        let timeout = Duration::from_secs(2);
        Ok(GrpcHealthChecker {
            service: HealthService::default(),
            timeout,
            connector: Connector {
                connect_timeout: timeout,
                tls: tls_config(config, roots)?,
                keep_alive: None,
            },
        })
    }

    /// Which service name to ask about.
    #[must_use]
    pub fn service(mut self, service: HealthService) -> Self {
        self.service = service;
        self
    }

    /// The time a check may take, connecting included (default 2 s; zero is raised to 1 ms).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        let timeout = timeout.max(Duration::from_millis(1));
        self.timeout = timeout;
        self.connector.connect_timeout = timeout;
        self
    }

    async fn check_once(&self, instance: &ServiceInfo) -> Result<()> {
        let conn = self
            .connector
            .connect::<tonic::body::Body>(instance)
            .await
            .map_err(|e| Error::Unavailable(format!("{}: {}", where_(instance), e.0)))?;
        let scheme = if uses_tls(instance) { "https" } else { "http" };
        let origin = Uri::try_from(format!("{scheme}://{}", instance.endpoint()))
            .map_err(|e| Error::InvalidInstance(format!("{}: {e}", where_(instance))))?;
        let mut client = HealthClient::new(OneConnection {
            send: conn.send.clone(),
            origin,
        });
        let service = match &self.service {
            HealthService::InstanceName => instance.name.clone(),
            HealthService::Server => String::new(),
            HealthService::Named(n) => n.clone(),
        };
        let resp = client
            .check(HealthCheckRequest {
                service: service.clone(),
            })
            .await
            .map_err(|s| {
                Error::Unavailable(format!(
                    "{}: health check of `{}`: {:?}: {}",
                    where_(instance),
                    quoted(&service),
                    s.code(),
                    quoted_up_to(s.message(), 256)
                ))
            })?;
        drop(conn);
        let status = resp.into_inner().status;
        if status == ServingStatus::Serving as i32 {
            Ok(())
        } else {
            let name = ServingStatus::try_from(status).map_or_else(
                |_| format!("unknown status {status}"),
                |s| s.as_str_name().to_owned(),
            );
            Err(Error::Unavailable(format!(
                "{}: health check of `{}`: {name}",
                where_(instance),
                quoted(&service)
            )))
        }
    }
}

fn where_(instance: &ServiceInfo) -> String {
    format!(
        "instance `{}` ({})",
        quoted(&instance.id),
        quoted(&instance.endpoint())
    )
}

#[async_trait]
impl HealthChecker for GrpcHealthChecker {
    async fn check(&self, instance: &ServiceInfo) -> Result<()> {
        match tokio::time::timeout(self.timeout, self.check_once(instance)).await {
            Ok(r) => r,
            Err(_) => Err(Error::timeout(
                format!("gRPC health check of {}", where_(instance)),
                self.timeout,
            )),
        }
    }
}

/// One connection as a tonic transport: requests get the instance's scheme and authority.
#[derive(Clone)]
struct OneConnection {
    send: hyper::client::conn::http2::SendRequest<tonic::body::Body>,
    origin: Uri,
}

impl tower_service::Service<Request<tonic::body::Body>> for OneConnection {
    type Response = Response<Incoming>;
    type Error = hyper::Error;
    type Future = std::pin::Pin<
        Box<
            dyn std::future::Future<Output = std::result::Result<Response<Incoming>, hyper::Error>>
                + Send,
        >,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), hyper::Error>> {
        self.send.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<tonic::body::Body>) -> Self::Future {
        let mut parts = self.origin.clone().into_parts();
        parts.path_and_query = req.uri().path_and_query().cloned();
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
        let fut = self.send.send_request(req);
        Box::pin(fut)
    }
}
