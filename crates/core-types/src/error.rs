//! The one error type of waypost.

use std::fmt;
use std::time::Duration;

/// A boxed error from a lower layer (a client library, an I/O call).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Shorthand for `Result<T, waypost_core_types::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in waypost.
///
/// Backend crates convert their client libraries' errors into this type; no backend error type
/// appears in a public signature. Use [`Error::is_retryable`] to decide whether trying again can
/// help.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No instance with this id is registered.
    #[error("service instance `{0}` not found")]
    NotFound(String),
    /// No instance of this service name is registered at all.
    #[error("no instance of service `{0}` is registered")]
    ServiceNotFound(String),
    /// The service has instances, but none is healthy (or all were excluded).
    #[error("service `{0}` has no healthy instance")]
    NoHealthyInstance(String),
    /// A [`ServiceInfo`](crate::ServiceInfo) failed validation; nothing was stored.
    #[error("invalid service instance: {0}")]
    InvalidInstance(String),
    /// A configuration value or registry URL is malformed.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The object was closed; no further calls are served.
    #[error("closed")]
    Closed,
    /// An operation did not finish in time.
    #[error("{what} timed out after {after:?}")]
    Timeout {
        /// What timed out.
        what: String,
        /// The limit that was exceeded.
        after: Duration,
    },
    /// The backend (or every instance) cannot be reached right now.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A circuit breaker refused the call without running it.
    #[error("circuit breaker is open")]
    CircuitOpen,
    /// The backend rejected our credentials.
    #[error("{backend}: authentication failed: {message}")]
    Auth {
        /// The backend that refused us (`"etcd"`, `"nacos"`, …).
        backend: &'static str,
        /// What the backend said.
        message: String,
    },
    /// The feature or backend is not compiled in, or not supported by this backend.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Data could not be encoded or decoded.
    #[error("codec error: {0}")]
    Codec(String),
    /// A remote service answered with an error status.
    #[error("HTTP status {status}: {body}")]
    Http {
        /// The HTTP status code (≥ 400).
        status: u16,
        /// The start of the response body, lossily decoded.
        body: String,
    },
    /// A response body was larger than the configured limit.
    #[error("response body exceeds the limit of {limit} bytes")]
    BodyTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// A retry budget or concurrency limit refused the attempt.
    #[error("rejected: {0}")]
    Rejected(String),
    /// An error from a backend's client library or transport.
    #[error("{backend}: {message}")]
    Backend {
        /// The backend (`"etcd"`, `"consul"`, `"http"`, …).
        backend: &'static str,
        /// A readable summary.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
    },
}

impl Error {
    /// Builds [`Error::Backend`] from a lower-level error.
    pub fn backend<E>(backend: &'static str, source: E) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        Error::Backend {
            backend,
            message: source.to_string(),
            source: Some(Box::new(source)),
        }
    }

    /// Builds [`Error::Backend`] from a message only.
    pub fn backend_msg(backend: &'static str, message: impl fmt::Display) -> Self {
        Error::Backend {
            backend,
            message: message.to_string(),
            source: None,
        }
    }

    /// Builds [`Error::Timeout`].
    pub fn timeout(what: impl Into<String>, after: Duration) -> Self {
        Error::Timeout {
            what: what.into(),
            after,
        }
    }

    /// Whether trying the same operation again may succeed (transient failure).
    ///
    /// Input errors, `NotFound`, `Closed`, authentication and `4xx` statuses are not retryable.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Timeout { .. }
            | Error::Unavailable(_)
            | Error::Backend { .. }
            | Error::NoHealthyInstance(_) => true,
            Error::Http { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }

    /// Whether this error says the object was closed.
    pub fn is_closed(&self) -> bool {
        matches!(self, Error::Closed)
    }

    /// Whether this is one of the "not found" errors.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound(_) | Error::ServiceNotFound(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert!(Error::timeout("get", Duration::from_secs(1)).is_retryable());
        assert!(Error::Http {
            status: 503,
            body: String::new()
        }
        .is_retryable());
        assert!(!Error::Http {
            status: 404,
            body: String::new()
        }
        .is_retryable());
        assert!(!Error::InvalidInstance("x".into()).is_retryable());
        assert!(!Error::Closed.is_retryable());
        assert!(Error::Closed.is_closed());
        assert!(Error::NotFound("a".into()).is_not_found());
        assert!(Error::ServiceNotFound("a".into()).is_not_found());
        assert!(!Error::NoHealthyInstance("a".into()).is_not_found());
    }

    #[test]
    fn messages_are_readable() {
        let e = Error::Auth {
            backend: "etcd",
            message: "invalid password".into(),
        };
        assert_eq!(
            e.to_string(),
            "etcd: authentication failed: invalid password"
        );
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = Error::backend("consul", io);
        assert_eq!(e.to_string(), "consul: refused");
        assert!(std::error::Error::source(&e).is_some());
    }
}
