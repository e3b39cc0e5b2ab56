//! The one error type of waypost.

use std::fmt;
use std::time::Duration;

use crate::quote::{quoted, quoted_up_to};

/// Most characters of a message (a config error, a backend's answer, a response body) that an
/// [`Error`]'s `Display` and `Debug` show; ids and names are shown up to
/// [`MAX_QUOTED_CHARS`](crate::quote::MAX_QUOTED_CHARS).
pub const MAX_MESSAGE_CHARS: usize = 1024;

/// A message, bounded and with control characters escaped.
fn msg(m: &str) -> crate::quote::Quoted<'_> {
    quoted_up_to(m, MAX_MESSAGE_CHARS)
}

/// A boxed error from a lower layer (a client library, an I/O call).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Shorthand for `Result<T, waypost_core_types::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in waypost.
///
/// Backend crates convert their client libraries' errors into this type; no backend error type
/// appears in a public signature. Use [`Error::is_retryable`] to decide whether trying again can
/// help.
///
/// `Display` and `Debug` never write more than a bounded prefix of what the error carries, with
/// control characters escaped: ids and service names at most 64 characters
/// ([`quoted`](crate::quote::quoted)), messages and response bodies at most
/// [`MAX_MESSAGE_CHARS`]. A 10 MiB id given to `deregister` gives a short error text, and bytes
/// from a peer cannot forge a log line.
///
/// ```
/// use waypost_core_types::Error;
///
/// let e = Error::NotFound("x".repeat(10 << 20));
/// assert!(e.to_string().len() < 200 && format!("{e:?}").len() < 200);
/// let e = Error::Http { status: 500, body: "oops\r\nforged: line\u{1b}[2J".into() };
/// assert_eq!(e.to_string(), r"HTTP status 500: oops\r\nforged: line\u{1b}[2J");
/// ```
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No instance with this id is registered.
    #[error("service instance `{}` not found", quoted(.0))]
    NotFound(String),
    /// No instance of this service name is registered at all.
    #[error("no instance of service `{}` is registered", quoted(.0))]
    ServiceNotFound(String),
    /// The service has instances, but none is healthy (or all were excluded).
    #[error("service `{}` has no healthy instance", quoted(.0))]
    NoHealthyInstance(String),
    /// A [`ServiceInfo`](crate::ServiceInfo) failed validation; nothing was stored.
    #[error("invalid service instance: {}", msg(.0))]
    InvalidInstance(String),
    /// A configuration value or registry URL is malformed.
    #[error("invalid configuration: {}", msg(.0))]
    InvalidConfig(String),
    /// The object was closed; no further calls are served.
    #[error("closed")]
    Closed,
    /// An operation did not finish in time.
    #[error("{} timed out after {after:?}", msg(.what))]
    Timeout {
        /// What timed out.
        what: String,
        /// The limit that was exceeded.
        after: Duration,
    },
    /// The backend (or every instance) cannot be reached right now.
    #[error("unavailable: {}", msg(.0))]
    Unavailable(String),
    /// A circuit breaker refused the call without running it.
    #[error("circuit breaker is open")]
    CircuitOpen,
    /// The backend rejected our credentials.
    #[error("{backend}: authentication failed: {}", msg(.message))]
    Auth {
        /// The backend that refused us (`"etcd"`, `"nacos"`, …).
        backend: &'static str,
        /// What the backend said.
        message: String,
    },
    /// The feature or backend is not compiled in, or not supported by this backend.
    #[error("unsupported: {}", msg(.0))]
    Unsupported(String),
    /// Data could not be encoded or decoded.
    #[error("codec error: {}", msg(.0))]
    Codec(String),
    /// A remote service answered with an error status.
    #[error("HTTP status {status}: {}", msg(.body))]
    Http {
        /// The HTTP status code (≥ 400).
        status: u16,
        /// The start of the response body, lossily decoded; waypost's clients bound it and
        /// escape its control characters ([`quoted_up_to`](crate::quote::quoted_up_to)).
        body: String,
    },
    /// A response body was larger than the configured limit.
    #[error("response body exceeds the limit of {limit} bytes")]
    BodyTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// A retry budget or concurrency limit refused the attempt.
    #[error("rejected: {}", msg(.0))]
    Rejected(String),
    /// An error from a backend's client library or transport.
    #[error("{backend}: {}", msg(.message))]
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

impl fmt::Debug for Error {
    /// Like a derived `Debug`, with every text bounded and escaped as in `Display`; the source of
    /// a [`Backend`](Error::Backend) error is shown by its (bounded) `Display`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotFound(id) => f.debug_tuple("NotFound").field(&quoted(id)).finish(),
            Error::ServiceNotFound(n) => {
                f.debug_tuple("ServiceNotFound").field(&quoted(n)).finish()
            }
            Error::NoHealthyInstance(n) => f
                .debug_tuple("NoHealthyInstance")
                .field(&quoted(n))
                .finish(),
            Error::InvalidInstance(m) => f.debug_tuple("InvalidInstance").field(&msg(m)).finish(),
            Error::InvalidConfig(m) => f.debug_tuple("InvalidConfig").field(&msg(m)).finish(),
            Error::Closed => f.write_str("Closed"),
            Error::Timeout { what, after } => f
                .debug_struct("Timeout")
                .field("what", &msg(what))
                .field("after", after)
                .finish(),
            Error::Unavailable(m) => f.debug_tuple("Unavailable").field(&msg(m)).finish(),
            Error::CircuitOpen => f.write_str("CircuitOpen"),
            Error::Auth { backend, message } => f
                .debug_struct("Auth")
                .field("backend", backend)
                .field("message", &msg(message))
                .finish(),
            Error::Unsupported(m) => f.debug_tuple("Unsupported").field(&msg(m)).finish(),
            Error::Codec(m) => f.debug_tuple("Codec").field(&msg(m)).finish(),
            Error::Http { status, body } => f
                .debug_struct("Http")
                .field("status", status)
                .field("body", &msg(body))
                .finish(),
            Error::BodyTooLarge { limit } => f
                .debug_struct("BodyTooLarge")
                .field("limit", limit)
                .finish(),
            Error::Rejected(m) => f.debug_tuple("Rejected").field(&msg(m)).finish(),
            Error::Backend {
                backend,
                message,
                source,
            } => {
                let source = source.as_ref().map(|s| s.to_string());
                f.debug_struct("Backend")
                    .field("backend", backend)
                    .field("message", &msg(message))
                    .field("source", &source.as_deref().map(msg))
                    .finish()
            }
        }
    }
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

    /// Whether trying the same operation again may succeed: the failure is transient.
    ///
    /// The service client retries a failed attempt only when this says so; a backend that
    /// classifies its client library's errors itself (etcd retries the gRPC statuses it knows to
    /// be transient) converts them so that this agrees. Use it to decide whether to retry a
    /// waypost call yourself.
    ///
    /// Retryable:
    /// - [`Timeout`](Error::Timeout) and [`Unavailable`](Error::Unavailable): backends report as
    ///   one of these the failures of their client library that they know to be transient (a
    ///   refused connection, a dead or leaderless member, a lost session, an overloaded server);
    /// - [`NoHealthyInstance`](Error::NoHealthyInstance): health changes with time;
    /// - [`Http`](Error::Http) with a 5xx status;
    /// - [`Backend`](Error::Backend) when its chain of sources shows a transient cause: the first
    ///   waypost `Error` in the chain decides by these same rules; failing that, the first
    ///   [`std::io::Error`] does, and is transient unless its kind says the data or the request is
    ///   wrong (`InvalidData`, `InvalidInput`, `NotFound`, `PermissionDenied`, `AlreadyExists`,
    ///   `Unsupported`).
    ///
    /// Everything else is not retryable, in particular:
    /// - a response or a record that cannot be decoded: [`Codec`](Error::Codec), or a `Backend`
    ///   error whose sources hold no transient I/O error (a `serde_json` syntax error, a body that
    ///   is not what the protocol says);
    /// - a `Backend` error the backend did not recognise as transient (a request the server
    ///   rejects, a node that is not empty, …);
    /// - 4xx statuses, 429 included (the server asks for less traffic; an immediate retry adds
    ///   to it), and a body over the limit ([`BodyTooLarge`](Error::BodyTooLarge));
    /// - invalid input or configuration, [`NotFound`](Error::NotFound),
    ///   [`ServiceNotFound`](Error::ServiceNotFound), [`Closed`](Error::Closed),
    ///   [`Auth`](Error::Auth), [`CircuitOpen`](Error::CircuitOpen),
    ///   [`Rejected`](Error::Rejected), [`Unsupported`](Error::Unsupported).
    ///
    /// Whether a retry is *safe* is another question: the service client retries a request that
    /// may have reached the server (a 5xx, a timeout, a connection lost after sending) only when
    /// its method is idempotent or the caller opted in.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Timeout { .. } | Error::Unavailable(_) | Error::NoHealthyInstance(_) => true,
            Error::Http { status, .. } => *status >= 500,
            Error::Backend { source, .. } => source
                .as_deref()
                .and_then(|s| transient_cause(s))
                .unwrap_or(false),
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

/// Whether the chain of errors from `cause` on shows a transient failure: the first waypost
/// [`Error`] in it decides, else the first [`std::io::Error`]; `None` when neither is there.
fn transient_cause(cause: &(dyn std::error::Error + 'static)) -> Option<bool> {
    let mut next = Some(cause);
    while let Some(e) = next {
        if let Some(e) = e.downcast_ref::<Error>() {
            return Some(e.is_retryable());
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            // `Other` is a wrapper's kind: what it wraps may say more (hyper-rustls reports a
            // refused certificate as `InvalidData` inside `Other`). `source()` would skip it.
            if io.kind() == std::io::ErrorKind::Other {
                if let Some(found) = io.get_ref().and_then(|inner| transient_cause(inner)) {
                    return Some(found);
                }
            }
            return Some(io_is_transient(io.kind()));
        }
        next = e.source();
    }
    None
}

/// Whether an I/O error of this kind may go away on another try (a refused, reset or timed-out
/// connection, an unreachable host) rather than say that the data or the request is wrong.
fn io_is_transient(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind as K;
    !matches!(
        kind,
        K::InvalidData
            | K::InvalidInput
            | K::NotFound
            | K::PermissionDenied
            | K::AlreadyExists
            | K::Unsupported
    )
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
        for status in [400, 404, 409, 429] {
            assert!(!Error::Http {
                status,
                body: String::new()
            }
            .is_retryable());
        }
        assert!(Error::Unavailable("etcd: leader changed".into()).is_retryable());
        assert!(Error::NoHealthyInstance("a".into()).is_retryable());
        assert!(!Error::BodyTooLarge { limit: 1 }.is_retryable());
        assert!(!Error::CircuitOpen.is_retryable());
        assert!(!Error::InvalidInstance("x".into()).is_retryable());
        assert!(!Error::Closed.is_retryable());
        assert!(Error::Closed.is_closed());
        assert!(Error::NotFound("a".into()).is_not_found());
        assert!(Error::ServiceNotFound("a".into()).is_not_found());
        assert!(!Error::NoHealthyInstance("a".into()).is_not_found());
    }

    #[test]
    fn undecodable_data_is_not_retryable() {
        // The client's JSON helpers and the JSON codec say `Codec`.
        assert!(
            !Error::Codec("response body: expected value at line 1 column 1".into()).is_retryable()
        );
        // A backend that keeps the decoder's error as the source.
        let garbage = serde_json::from_slice::<serde_json::Value>(b"<html>").unwrap_err();
        assert!(!Error::backend("consul", garbage).is_retryable());
        // A backend that keeps only the message (Consul's "undecodable response").
        assert!(
            !Error::backend_msg("consul", "GET /v1/health: undecodable response: EOF")
                .is_retryable()
        );
        // Bytes that are not the protocol, reported as I/O `InvalidData` (TLS, framing).
        let invalid = std::io::Error::new(std::io::ErrorKind::InvalidData, "bad frame");
        assert!(!Error::backend("http", invalid).is_retryable());
        // … also inside a generic `Other` (how hyper-rustls reports a refused certificate).
        let invalid = std::io::Error::new(std::io::ErrorKind::InvalidData, "unknown issuer");
        assert!(!Error::backend("http", std::io::Error::other(invalid)).is_retryable());
    }

    #[test]
    fn backend_errors_are_retryable_by_their_cause() {
        use std::io::{Error as IoError, ErrorKind};

        #[derive(Debug, thiserror::Error)]
        #[error("client error")]
        struct Wrapper(#[source] IoError);

        for kind in [
            ErrorKind::ConnectionRefused,
            ErrorKind::ConnectionReset,
            ErrorKind::ConnectionAborted,
            ErrorKind::TimedOut,
            ErrorKind::UnexpectedEof,
        ] {
            let e = Error::backend("http", Wrapper(IoError::new(kind, "x")));
            assert!(e.is_retryable(), "{kind:?}");
        }
        let e = Error::backend("http", Wrapper(IoError::new(ErrorKind::InvalidInput, "x")));
        assert!(!e.is_retryable());
        // A waypost error as the source decides by its own rules.
        let status = |status| Error::Backend {
            backend: "consul",
            message: format!("PUT /v1/agent: HTTP {status}"),
            source: Some(Box::new(Error::Http {
                status,
                body: String::new(),
            })),
        };
        assert!(status(503).is_retryable());
        assert!(!status(400).is_retryable());
        // No cause that says "transient": a failure the backend did not recognise as such.
        assert!(!Error::backend_msg("zookeeper", "node has not empty children").is_retryable());
    }

    #[test]
    fn texts_are_bounded_and_escaped() {
        let huge = "x".repeat(10 << 20);
        let errors = [
            Error::NotFound(huge.clone()),
            Error::ServiceNotFound(huge.clone()),
            Error::NoHealthyInstance(huge.clone()),
            Error::InvalidInstance(huge.clone()),
            Error::InvalidConfig(huge.clone()),
            Error::timeout(huge.clone(), Duration::MAX),
            Error::Unavailable(huge.clone()),
            Error::Auth {
                backend: "etcd",
                message: huge.clone(),
            },
            Error::Unsupported(huge.clone()),
            Error::Codec(huge.clone()),
            Error::Http {
                status: 500,
                body: huge.clone(),
            },
            Error::Rejected(huge.clone()),
            Error::backend_msg("etcd", &huge),
            Error::backend("etcd", std::io::Error::other(huge.clone())),
        ];
        for e in &errors {
            let (shown, debug) = (e.to_string(), format!("{e:?}"));
            assert!(shown.len() < MAX_MESSAGE_CHARS + 100, "{}", &shown[..100]);
            assert!(
                debug.len() < 2 * MAX_MESSAGE_CHARS + 200,
                "{}",
                &debug[..100]
            );
            assert!(shown.contains("(10485760 bytes)"), "{}", &shown[..100]);
        }
        let e = Error::NotFound("a\nb\u{1b}[31m".into());
        assert_eq!(
            e.to_string(),
            r"service instance `a\nb\u{1b}[31m` not found"
        );
        assert_eq!(format!("{e:?}"), r#"NotFound("a\nb\u{1b}[31m")"#);
        assert_eq!(
            format!("{:?}", Error::InvalidConfig("x".into())),
            r#"InvalidConfig("x")"#
        );
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
