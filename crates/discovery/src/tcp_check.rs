//! [`TcpHealthChecker`]: a TCP connect.

use std::time::Duration;

use async_trait::async_trait;
use waypost_core_types::{Error, HealthChecker, Result, ServiceInfo};

/// Checks an instance by opening (and closing) a TCP connection to `address:port`: healthy when
/// the connection is accepted within the timeout.
#[derive(Debug, Clone)]
pub struct TcpHealthChecker {
    timeout: Duration,
}

impl Default for TcpHealthChecker {
    fn default() -> Self {
        Self::new(Duration::from_secs(3))
    }
}

impl TcpHealthChecker {
    /// A checker with `timeout` per check. `Duration::MAX` means no limit of its own. With a zero
    /// timeout every check fails at once with [`Error::InvalidConfig`], without connecting.
    pub fn new(timeout: Duration) -> Self {
        TcpHealthChecker { timeout }
    }
}

#[async_trait]
impl HealthChecker for TcpHealthChecker {
    async fn check(&self, service: &ServiceInfo) -> Result<()> {
        if self.timeout.is_zero() {
            return Err(crate::http_check::zero_timeout());
        }
        let addr = service
            .address
            .trim_start_matches('[')
            .trim_end_matches(']');
        let connect = tokio::net::TcpStream::connect((addr, service.port));
        match tokio::time::timeout(self.timeout, connect).await {
            Ok(Ok(_stream)) => Ok(()),
            Ok(Err(e)) => Err(Error::backend("tcp", e)),
            Err(_) => Err(Error::timeout(
                format!("TCP check of `{}`", service.id),
                self.timeout,
            )),
        }
    }
}
