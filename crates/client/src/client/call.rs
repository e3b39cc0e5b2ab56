//! One call: [`CallBuilder`] describes it (headers, body, per-call timeout, deadline and
//! retries), `CallSpec` carries it through the retry loop, [`ServiceResponse`] is what it returns.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::{HeaderMap, Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use waypost_core_types::{Error, Result, ServiceInfo};

use super::ServiceClient;
use crate::metrics::{MethodMetrics, ServiceMetrics};
use crate::otel::TraceParent;

/// A successful response (status below 400).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServiceResponse {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The whole body (at most the body limit).
    pub body: Bytes,
    /// The instance that answered.
    pub instance: Arc<ServiceInfo>,
    /// How many attempts the call took (1 = no retry).
    pub attempts: u32,
}

impl ServiceResponse {
    /// Decodes the body as JSON (an empty body decodes as JSON `null`).
    ///
    /// # Errors
    /// [`Error::Codec`] when the body is not the expected JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        decode(&self.body)
    }

    /// The body as text, lossily decoded.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"null".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| Error::Codec(format!("response body: {e}")))
}

fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Bytes> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| Error::Codec(format!("request body: {e}")))
}

/// One call, as the retry loop needs it. The service name and the path are borrowed when the
/// caller's future borrows them anyway (`get`, `post`, …), and owned otherwise.
#[derive(Debug, Clone)]
pub(crate) struct CallSpec<'a> {
    pub(crate) service: Cow<'a, str>,
    pub(crate) method: Method,
    pub(crate) path: Cow<'a, str>,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(super) hash_key: Option<Vec<u8>>,
    pub(super) timeout: Option<Duration>,
    pub(super) deadline: Option<Duration>,
    pub(super) retry_non_idempotent: Option<bool>,
    pub(super) max_retries: Option<u32>,
    /// The service's metric handles, set when the call starts.
    pub(super) metrics: Option<Arc<ServiceMetrics>>,
    /// The caller's trace context, taken when the call starts (empty without `otel`).
    pub(super) trace: TraceParent,
}

impl CallSpec<'static> {
    /// A call that owns copies of `service` and `path`.
    pub(crate) fn new(service: &str, method: Method, path: &str) -> Self {
        let CallSpec {
            service,
            method,
            path,
            headers,
            body,
            hash_key,
            timeout,
            deadline,
            retry_non_idempotent,
            max_retries,
            metrics,
            trace,
        } = CallSpec::borrowed(service, method, path);
        CallSpec {
            service: Cow::Owned(service.into_owned()),
            method,
            path: Cow::Owned(path.into_owned()),
            headers,
            body,
            hash_key,
            timeout,
            deadline,
            retry_non_idempotent,
            max_retries,
            metrics,
            trace,
        }
    }
}

impl<'a> CallSpec<'a> {
    /// A call that borrows `service` and `path` (a path without its leading `/` gets one, in a
    /// copy).
    pub(crate) fn borrowed(service: &'a str, method: Method, path: &'a str) -> Self {
        let path = if path.starts_with('/') {
            Cow::Borrowed(path)
        } else {
            Cow::Owned(format!("/{path}"))
        };
        CallSpec {
            service: Cow::Borrowed(service),
            method,
            path,
            headers: HeaderMap::new(),
            body: Bytes::new(),
            hash_key: None,
            timeout: None,
            deadline: None,
            retry_non_idempotent: None,
            max_retries: None,
            metrics: None,
            trace: TraceParent::default(),
        }
    }

    /// The handles of this call's service and method.
    pub(super) fn method_metrics(&self) -> Option<&MethodMetrics> {
        self.metrics.as_ref().map(|m| m.method(&self.method))
    }

    /// Counts a call that ran out of its deadline.
    pub(super) fn count_deadline_exceeded(&self) {
        if let Some(m) = &self.metrics {
            m.deadline_exceeded();
        }
    }

    /// The path as logs show it: without its query string and fragment, which may carry
    /// secrets (`?access_token=…`).
    pub(crate) fn log_path(&self) -> &str {
        path_for_logs(&self.path)
    }
}

/// `path` without its query string and fragment.
pub(crate) fn path_for_logs(path: &str) -> &str {
    let end = path.find(['?', '#']).unwrap_or(path.len());
    &path[..end]
}

/// One request being built; send it with [`send`](Self::send).
#[must_use = "a call does nothing until it is sent"]
pub struct CallBuilder<'a> {
    pub(super) client: &'a ServiceClient,
    pub(super) spec: CallSpec<'static>,
    pub(super) error: Option<Error>,
}

impl fmt::Debug for CallBuilder<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallBuilder")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl<'a> CallBuilder<'a> {
    /// Adds a header.
    pub fn header<K, V>(mut self, name: K, value: V) -> Self
    where
        K: TryInto<HeaderName>,
        V: TryInto<HeaderValue>,
    {
        match (name.try_into(), value.try_into()) {
            (Ok(k), Ok(v)) => {
                self.spec.headers.append(k, v);
            }
            _ => {
                self.error
                    .get_or_insert(Error::InvalidConfig("invalid header name or value".into()));
            }
        }
        self
    }

    /// The request body, sent byte for byte on every attempt.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.spec.body = body.into();
        self
    }

    /// A JSON request body (sets `content-type: application/json`).
    pub fn json<T: Serialize + ?Sized>(mut self, value: &T) -> Self {
        match encode(value) {
            Ok(b) => {
                self.spec.body = b;
                self.spec
                    .headers
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            }
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
        self
    }

    /// A key for consistent-hash balancers (a user or session id).
    pub fn hash_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.spec.hash_key = Some(key.into());
        self
    }

    /// Per-attempt timeout for this call. `Duration::MAX` means no per-attempt limit; zero makes
    /// [`send`](Self::send) fail with [`Error::InvalidConfig`] without sending.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        if timeout.is_zero() {
            self.error.get_or_insert(Error::InvalidConfig(
                "call timeout must be above zero".into(),
            ));
        }
        self.spec.timeout = Some(timeout);
        self
    }

    /// Overall deadline for this call. `Duration::MAX` means no deadline; zero makes
    /// [`send`](Self::send) fail with [`Error::InvalidConfig`] without sending.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        if deadline.is_zero() {
            self.error.get_or_insert(Error::InvalidConfig(
                "call deadline must be above zero".into(),
            ));
        }
        self.spec.deadline = Some(deadline);
        self
    }

    /// Retries for this call.
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.spec.max_retries = Some(retries);
        self
    }

    /// Retry this call on 5xx and timeouts even if its method is not idempotent (the caller
    /// knows the operation is safe to repeat, e.g. it carries an idempotency key).
    pub fn retry_non_idempotent(mut self, yes: bool) -> Self {
        self.spec.retry_non_idempotent = Some(yes);
        self
    }

    /// Sends the call.
    ///
    /// # Errors
    /// [`Error::Http`] for a status ≥ 400 (with the start of the body); [`Error::BodyTooLarge`];
    /// [`Error::Timeout`] when an attempt or the deadline runs out; [`Error::Backend`] for
    /// transport failures; [`Error::CircuitOpen`] when every instance is ejected; discovery's
    /// errors ([`Error::ServiceNotFound`], [`Error::NoHealthyInstance`], …); [`Error::Codec`] or
    /// [`Error::InvalidConfig`] for a request that could not be built (also a zero timeout or
    /// deadline).
    pub fn send(self) -> impl Future<Output = Result<ServiceResponse>> + Send + 'a {
        // Not an `async fn`: its argument would be stored twice in the future (rust-lang/rust
        // #62958); this way the call's state lives once, in the box `execute` makes.
        let call = match self.error {
            Some(e) => Err(e),
            None => Ok(self.client.execute(self.spec)),
        };
        async move { call?.await }
    }
}
