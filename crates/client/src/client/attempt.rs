//! One attempt of a call: pick an instance (avoiding failed and ejected ones), send the request
//! within the attempt's timeout, read the response, and report the outcome to the balancer and to
//! the instance's breaker.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, HOST};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Request, StatusCode, Uri};
use http_body_util::Full;
use hyper::body::Body;
use tokio::time::Instant;
use tracing::Instrument;
use waypost_core_types::quote::{quoted, quoted_up_to};
use waypost_core_types::{
    BoxError, Error, Outcome, Protocol, Result, SelectContext, Selection, ServiceInfo,
};

use super::execute::deadline_error;
use super::{CallSpec, ServiceClient};
use crate::body::{read_limited, read_prefix, ReadError, ERROR_BODY_CHARS, ERROR_BODY_PREFIX};
use crate::http::{Route, SendError, Sending, Wire};
use crate::metrics::{CallOutcome, MethodMetrics};
use crate::otel::AttemptSpan;
use crate::outlier::InstancePermit;
use crate::pool::PoolError;
use crate::timer::AttemptTimer;

pub(super) enum Attempt {
    Done(StatusCode, HeaderMap, Bytes),
    Fail {
        /// What went wrong; [`Error::is_retryable`] says whether another attempt may help.
        error: Error,
        outcome: Outcome,
        /// Whether the request may have reached the server and been acted on: then a retry is
        /// safe only for an idempotent method or when the caller opted in.
        sent: bool,
        timed_out: bool,
    },
}

/// `scheme://address:port/path`, written once into a buffer of the right size (the URI takes
/// the buffer over without copying).
fn request_uri(scheme: &str, instance: &ServiceInfo, path: &str) -> String {
    // "[" "]" ":" and five digits at most around the address.
    let mut uri = String::with_capacity(scheme.len() + 3 + instance.address.len() + 8 + path.len());
    uri.push_str(scheme);
    uri.push_str("://");
    let _ = instance.write_endpoint(&mut uri);
    uri.push_str(path);
    uri
}

/// Instances whose scheme and authority a thread keeps parsed.
const ENDPOINTS: usize = 8;

/// Paths a thread keeps parsed.
const PATHS: usize = 8;

/// The longest path a thread keeps parsed. Paths with a query string are not kept: they change
/// from call to call, and may carry a secret (`?access_token=…`).
const PATH_KEPT_MAX: usize = 128;

/// An instance's scheme and authority, parsed once, the `Host` header an HTTP/1.1 request to it
/// carries, and the HTTP its metadata asks for. The `Weak` keeps the instance's allocation (not
/// the instance) alive, so its address names this instance as long as the entry exists.
type Endpoint = (
    Weak<ServiceInfo>,
    Scheme,
    Authority,
    Option<HeaderValue>,
    Wire,
);

/// The last few entries of a kind, the oldest replaced first.
struct Recent<T> {
    items: Vec<T>,
    next: usize,
}

impl<T> Recent<T> {
    const fn new() -> Self {
        Recent {
            items: Vec::new(),
            next: 0,
        }
    }

    fn put(&mut self, item: T, keep: usize) {
        if self.items.len() < keep {
            self.items.push(item);
        } else {
            let i = self.next % keep;
            self.items[i] = item;
            self.next = i + 1;
        }
    }
}

/// What a thread keeps parsed.
struct Parsed {
    endpoints: Recent<Endpoint>,
    paths: Recent<(Box<str>, PathAndQuery)>,
}

thread_local! {
    static PARSED: RefCell<Parsed> = const {
        RefCell::new(Parsed {
            endpoints: Recent::new(),
            paths: Recent::new(),
        })
    };
}

/// The `Host` header hyper writes on an HTTP/1.1 request to `authority`: its host, and its port
/// unless that is the scheme's default.
fn host_header(scheme: &Scheme, authority: &Authority) -> Option<HeaderValue> {
    let default_port = if *scheme == Scheme::HTTPS { 443 } else { 80 };
    match authority.port_u16() {
        Some(port) if port != default_port => {
            HeaderValue::try_from(format!("{}:{port}", authority.host())).ok()
        }
        _ => HeaderValue::from_str(authority.host()).ok(),
    }
}

/// An instance's scheme, authority, `Host` header and wire, parsed and kept by the thread.
fn parse_endpoint(
    scheme: &str,
    instance: &Arc<ServiceInfo>,
) -> Result<(Scheme, Authority, Option<HeaderValue>, Wire), String> {
    // Parsed as a whole, as before there was a cache: the same URIs are accepted.
    let uri = Uri::try_from(request_uri(scheme, instance, "/")).map_err(|e| e.to_string())?;
    let parts = uri.into_parts();
    let (Some(s), Some(a)) = (parts.scheme, parts.authority) else {
        return Err("no scheme or authority".into());
    };
    let wire = if s == Scheme::HTTPS {
        Wire::Tls
    } else {
        Wire::plain_for(instance)
    };
    let host = host_header(&s, &a);
    let entry = (
        Arc::downgrade(instance),
        s.clone(),
        a.clone(),
        host.clone(),
        wire,
    );
    PARSED.with(|p| p.borrow_mut().endpoints.put(entry, ENDPOINTS));
    Ok((s, a, host, wire))
}

/// `path` parsed, and kept by the thread when it is short and has no query string.
fn parse_path(path: &str) -> Result<PathAndQuery, String> {
    let parsed = PathAndQuery::try_from(path).map_err(|e| e.to_string())?;
    if path.len() <= PATH_KEPT_MAX && parsed.query().is_none() {
        let entry = (Box::from(path), parsed.clone());
        PARSED.with(|p| p.borrow_mut().paths.put(entry, PATHS));
    }
    Ok(parsed)
}

/// Where a request to `path` on `instance` goes, parsed.
struct Target {
    scheme: Scheme,
    authority: Authority,
    path: PathAndQuery,
    /// The `Host` header of an HTTP/1.1 request.
    host: Option<HeaderValue>,
    wire: Wire,
}

/// `path` on `instance`. The scheme, authority, `Host` header and wire come from a small
/// per-thread cache keyed by the instance's `Arc` (an instance is immutable), and so does a short
/// path without a query: a request this thread has sent before parses nothing (and reads no
/// metadata).
fn instance_target(
    scheme: &str,
    instance: &Arc<ServiceInfo>,
    path: &str,
) -> Result<Target, String> {
    let (endpoint, kept_path) = PARSED.with(|p| {
        let p = p.borrow();
        let endpoint = p
            .endpoints
            .items
            .iter()
            .find(|(w, ..)| std::ptr::eq(w.as_ptr(), Arc::as_ptr(instance)))
            .map(|(_, s, a, h, wire)| (s.clone(), a.clone(), h.clone(), *wire));
        let kept_path = p
            .paths
            .items
            .iter()
            .find(|(kept, _)| **kept == *path)
            .map(|(_, parsed)| parsed.clone());
        (endpoint, kept_path)
    });
    let (scheme, authority, host, wire) = match endpoint {
        Some(parts) => parts,
        None => parse_endpoint(scheme, instance)?,
    };
    let path = match kept_path {
        Some(parsed) => parsed,
        None => parse_path(path)?,
    };
    Ok(Target {
        scheme,
        authority,
        path,
        host,
        wire,
    })
}

fn transport_error(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

/// The error for a request that failed in transport: [`Error::Backend`] with `e` as its source,
/// which [`Error::is_retryable`] reads (a refused, reset or timed-out connection is an I/O error
/// of that kind; a TLS failure is `InvalidData`; a response that is not HTTP has no I/O cause).
///
/// hyper reports a connection that closed before the response was complete (a server closing an
/// idle keep-alive connection as the request arrived, or going down) with no I/O error under
/// it: that one is given the I/O kind `ConnectionAborted`, the transient failure it is. So is an
/// HTTP/2 stream or connection the server ended ([`h2_ended_by_server`]).
fn transport_failure<E>(e: E) -> Error
where
    E: std::error::Error + Send + Sync + 'static,
{
    let message = transport_error(&e);
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    let mut closed = false;
    while let Some(c) = cause {
        if c.is::<io::Error>() {
            break;
        }
        if let Some(h) = c.downcast_ref::<hyper::Error>() {
            closed = h.is_incomplete_message() || h.is_closed() || h.is_canceled();
            if closed {
                break;
            }
        }
        if let Some(h2) = c.downcast_ref::<h2::Error>() {
            closed = h2_ended_by_server(h2);
            break;
        }
        cause = c.source();
    }
    let source: BoxError = if closed {
        Box::new(io::Error::new(io::ErrorKind::ConnectionAborted, e))
    } else {
        Box::new(e)
    };
    Error::Backend {
        backend: "http",
        message,
        source: Some(source),
    }
}

/// Whether the server ended an HTTP/2 stream (RST_STREAM) or the connection (GOAWAY) for a
/// reason another attempt may not meet: shutting down (`NO_ERROR`), refusing the stream
/// (`REFUSED_STREAM`), cancelling it, failing inside (`INTERNAL_ERROR`) or shedding load
/// (`ENHANCE_YOUR_CALM`). Protocol errors, either side's, are not transient: like an answer that
/// is not HTTP/1, they say the two ends do not understand each other (an h2c request answered
/// in HTTP/1.1 fails that way).
fn h2_ended_by_server(e: &h2::Error) -> bool {
    use h2::Reason;
    (e.is_reset() || e.is_go_away())
        && e.is_remote()
        && e.reason().is_some_and(|r| {
            [
                Reason::NO_ERROR,
                Reason::REFUSED_STREAM,
                Reason::CANCEL,
                Reason::INTERNAL_ERROR,
                Reason::ENHANCE_YOUR_CALM,
            ]
            .contains(&r)
        })
}

/// Whether the server refused the request's HTTP/2 stream (RST_STREAM with `REFUSED_STREAM`):
/// RFC 9113 §8.7 says such a request was not processed at all, so it is retried as a connection
/// that could not be opened is, for every method. (A stream above a GOAWAY's last stream id was
/// not processed either, but hyper reports it as it reports streams the same GOAWAY cut while
/// they were processed: that one counts as sent, like a dropped HTTP/1 connection.)
fn refused_stream(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(h2) = c.downcast_ref::<h2::Error>() {
            return h2.is_reset()
                && h2.is_remote()
                && h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        cause = c.source();
    }
    false
}

/// Counts an attempt that took `took`, and the body bytes it sent and received.
fn record_attempt(m: &MethodMetrics, spec: &CallSpec<'_>, result: &Attempt, took: Duration) {
    let outcome = match result {
        Attempt::Done(_, _, body) => {
            m.sent(spec.body.len());
            m.received(body.len());
            CallOutcome::Success
        }
        Attempt::Fail { error, sent, .. } => {
            if *sent {
                m.sent(spec.body.len());
            }
            CallOutcome::of(error)
        }
    };
    m.attempt(outcome, took.as_secs_f64());
}

impl ServiceClient {
    /// One attempt: picks an instance, sends, and reports the outcome to the balancer's guard
    /// and to the instance's breaker. Returns the instance, what happened, and whether the
    /// attempt's timeout was the call's deadline.
    ///
    /// With `backoff_if_again`, the pick is made first: an instance that has not failed in this
    /// call gets the request at once; one that has (the only candidate left) gets it after the
    /// backoff, and a new pick. `started`: a clock reading taken just before, which starts the
    /// attempt's clock instead of a new one.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn try_once(
        &self,
        spec: &CallSpec<'_>,
        failed: &[String],
        attempt: u32,
        mut remaining: Option<Duration>,
        per_attempt: Duration,
        overall: Option<Duration>,
        backoff_if_again: Option<Duration>,
        mut started: Option<Instant>,
    ) -> Result<(Arc<ServiceInfo>, Attempt, bool)> {
        let mut picked = self.pick_within(spec, failed, remaining, overall).await?;
        if let Some(wait) = backoff_if_again {
            if failed.contains(&picked.0.instance.id) {
                // Given back unused (the guard and the permit report `Ignored`).
                drop(picked);
                tracing::debug!(
                    ?wait,
                    "the retry goes to an instance that failed: backing off"
                );
                Box::pin(tokio::time::sleep(wait)).await;
                started = None;
                if let Some(r) = &mut remaining {
                    *r = r.saturating_sub(wait);
                    if r.is_zero() {
                        spec.count_deadline_exceeded();
                        return Err(deadline_error(&spec.service, overall));
                    }
                }
                picked = self.pick_within(spec, failed, remaining, overall).await?;
            }
        }
        let (selection, permit) = picked;
        let attempt_timeout = remaining.map_or(per_attempt, |r| r.min(per_attempt));
        let capped_by_deadline = remaining.is_some_and(|r| r <= per_attempt);
        let span = tracing::debug_span!(
            "attempt",
            attempt,
            instance = %selection.instance.id,
            endpoint = %selection.instance.endpoint(),
        );
        let t0 = started.unwrap_or_else(Instant::now);
        let trace = AttemptSpan::start(&spec.trace, &spec.service, &selection.instance.id, attempt);
        let (result, took) = self
            .send_once(spec, &selection.instance, trace, t0, attempt_timeout)
            .instrument(span)
            .await;
        let outcome = match &result {
            Attempt::Done(..) => Outcome::Success,
            Attempt::Fail { outcome, .. } => *outcome,
        };
        if let Some(m) = spec.method_metrics() {
            record_attempt(m, spec, &result, took);
        }
        let Selection { instance, guard } = selection;
        // The guard measures its own latency (from the pick), and a guard that reports to
        // nobody reads no clock.
        guard.finish(outcome);
        if let (Some(p), Some(o)) = (permit, &self.inner.outliers) {
            p.finish(o, &instance.id, outcome);
        }
        Ok((instance, result, capped_by_deadline))
    }

    /// [`pick`](Self::pick), within what is left of the call's deadline.
    async fn pick_within(
        &self,
        spec: &CallSpec<'_>,
        failed: &[String],
        remaining: Option<Duration>,
        overall: Option<Duration>,
    ) -> Result<(Selection, Option<InstancePermit>)> {
        match remaining {
            Some(r) => tokio::time::timeout(r, self.pick(spec, failed))
                .await
                .unwrap_or_else(|_| {
                    spec.count_deadline_exceeded();
                    Err(deadline_error(&spec.service, overall))
                }),
            None => self.pick(spec, failed).await,
        }
    }

    /// Picks an instance that neither failed in this call nor is ejected, falling back to the
    /// ones that failed in this call, never to an ejected one.
    async fn pick(
        &self,
        spec: &CallSpec<'_>,
        failed: &[String],
    ) -> Result<(Selection, Option<InstancePermit>)> {
        let discovery = &self.inner.discovery;
        let hash_key = spec.hash_key.as_deref();
        let Some(outliers) = &self.inner.outliers else {
            let ctx = SelectContext {
                hash_key,
                avoid: failed,
            };
            return Ok((discovery.select(&spec.service, &ctx).await?, None));
        };
        let mut ejected = Vec::new();
        outliers.ejected(&mut ejected);
        let mut avoid: Vec<String> = failed.to_vec();
        avoid.extend(ejected.iter().cloned());
        for _ in 0..8 {
            let ctx = SelectContext {
                hash_key,
                avoid: &avoid,
            };
            let selection = discovery.select(&spec.service, &ctx).await?;
            match outliers.acquire_for(&spec.service, &selection.instance.id) {
                Ok(permit) => return Ok((selection, Some(permit))),
                Err(_) => {
                    let id = selection.instance.id.clone();
                    drop(selection);
                    if !avoid.contains(&id) {
                        // Ejected since we looked.
                        ejected.push(id.clone());
                        avoid.push(id);
                    } else if avoid.len() > ejected.len() {
                        // The balancer fell back on an avoided instance: allow the ones that
                        // merely failed in this call, keep the ejected ones out.
                        avoid.clone_from(&ejected);
                    } else {
                        break;
                    }
                }
            }
        }
        tracing::debug!(service = %quoted(&spec.service), "every instance is ejected");
        Err(Error::CircuitOpen)
    }

    /// Builds the request for `instance`, with the attempt's trace context in its headers, and
    /// says where it goes: in origin form with its `Host` header to the client's own HTTP/1.1
    /// pool, or with an absolute URI to hyper's. (Written here, not in the async caller: a
    /// request borrowed there would be kept in its future across the wait.)
    fn request_for(
        &self,
        spec: &CallSpec<'_>,
        instance: &Arc<ServiceInfo>,
        trace: &AttemptSpan,
    ) -> Result<(Request<Full<Bytes>>, Route)> {
        let scheme = match instance.protocol {
            Protocol::Http => "http",
            Protocol::Https => "https",
            other => {
                return Err(Error::Unsupported(format!(
                    "instance `{}` speaks {other}; the service client speaks http and https",
                    instance.id
                )))
            }
        };
        let invalid = |e: String| {
            Error::InvalidConfig(format!("request to `{}`: {e}", quoted(&spec.service)))
        };
        let target = instance_target(scheme, instance, &spec.path).map_err(invalid)?;
        let route = self
            .inner
            .http
            .route(target.wire, &spec.method, &target.authority);
        let uri = match route {
            Route::Http1(_) => Uri::from(target.path),
            Route::Hyper(_) => {
                let mut parts = http::uri::Parts::default();
                parts.scheme = Some(target.scheme);
                parts.authority = Some(target.authority);
                parts.path_and_query = Some(target.path);
                Uri::from_parts(parts).map_err(|e| invalid(e.to_string()))?
            }
        };
        let mut req = Request::new(Full::new(spec.body.clone()));
        *req.method_mut() = spec.method.clone();
        *req.uri_mut() = uri;
        if !spec.headers.is_empty() {
            *req.headers_mut() = spec.headers.clone();
        }
        // HTTP/1.1 needs a `Host` header: the caller's, or the one hyper's pool would write.
        if let (Route::Http1(_), Some(host)) = (&route, target.host) {
            req.headers_mut().entry(HOST).or_insert(host);
        }
        trace.inject(req.headers_mut());
        Ok((req, route))
    }

    /// Waits for the response to a request `sent` and reads it. A connection of the client's
    /// own pool goes back to it only when the response was read whole.
    async fn exchange(&self, sent: Sending<'_>) -> Attempt {
        let (resp, lease) = match sent.await {
            Ok(r) => r,
            Err(e) => {
                // A connection that could not be opened carried no request; nor did an
                // HTTP/2 stream the server refused.
                let sent =
                    !e.is_connect() && !matches!(&e, SendError::Hyper(h) if refused_stream(h));
                let error = match e {
                    SendError::Pool(PoolError::Connect(e)) => transport_failure(e),
                    SendError::Pool(PoolError::Send(e)) => transport_failure(e),
                    SendError::Hyper(e) => transport_failure(e),
                };
                return Attempt::Fail {
                    error,
                    outcome: Outcome::Failure,
                    sent,
                    timed_out: false,
                };
            }
        };
        // Only what the answer keeps lives on across the reads below.
        let (
            http::response::Parts {
                status, headers, ..
            },
            mut body,
        ) = resp.into_parts();
        if status.as_u16() >= 400 {
            let text = read_prefix(&mut body, ERROR_BODY_PREFIX).await;
            if let Some(lease) = lease.filter(|_| body.is_end_stream()) {
                lease.release();
            }
            // Peer bytes in an error text: escaped and bounded, so a body cannot forge a
            // log line or drive a terminal.
            let text = quoted_up_to(&text, ERROR_BODY_CHARS).to_string();
            let server_error = status.is_server_error();
            return Attempt::Fail {
                error: Error::Http {
                    status: status.as_u16(),
                    body: text,
                },
                outcome: if server_error {
                    Outcome::Failure
                } else {
                    Outcome::Success
                },
                sent: true,
                timed_out: false,
            };
        }
        // The limit is read from the client again after the read, not kept in this future.
        match read_limited(body, self.inner.body_limit).await {
            Ok(body) => {
                if let Some(lease) = lease {
                    lease.release();
                }
                Attempt::Done(status, headers, body)
            }
            Err(ReadError::TooLarge) => Attempt::Fail {
                error: Error::BodyTooLarge {
                    limit: self.inner.body_limit,
                },
                outcome: Outcome::Success,
                sent: true,
                timed_out: false,
            },
            Err(ReadError::Body(e)) => Attempt::Fail {
                error: transport_failure(e),
                outcome: Outcome::Failure,
                sent: true,
                timed_out: false,
            },
        }
    }

    async fn send_once(
        &self,
        spec: &CallSpec<'_>,
        instance: &Arc<ServiceInfo>,
        trace: AttemptSpan,
        start: Instant,
        timeout: Duration,
    ) -> (Attempt, Duration) {
        // The request is built outside the exchange's future, so it is not held twice.
        let (req, route) = match self.request_for(spec, instance, &trace) {
            Ok(found) => found,
            Err(error) => {
                let failed = Attempt::Fail {
                    error,
                    outcome: Outcome::Ignored,
                    sent: false,
                    timed_out: false,
                };
                end_span(trace, &failed);
                return (failed, start.elapsed());
            }
        };
        // A timeout too far to represent (`Duration::MAX`) is no timeout.
        let mut exchange = std::pin::pin!(self.exchange(self.inner.http.send(req, route)));
        let Some(at) = start.checked_add(timeout) else {
            let done = exchange.await;
            end_span(trace, &done);
            return (done, start.elapsed());
        };
        // The exchange first, as `tokio::time::timeout` does: a response that is ready wins.
        let mut timer = AttemptTimer::until(at);
        let timed = std::future::poll_fn(|cx| match exchange.as_mut().poll(cx) {
            Poll::Ready(a) => Poll::Ready(Some(a)),
            Poll::Pending => Pin::new(&mut timer).poll(cx).map(|()| None),
        })
        .await;
        // The time taken, from the timer's deadline (`start` is not kept across the wait: the
        // attempt's future stays as small as it was).
        let took = timeout.saturating_sub(timer.deadline().map_or(Duration::ZERO, |d| {
            d.saturating_duration_since(Instant::now())
        }));
        let done = match timed {
            Some(a) => a,
            None => Attempt::Fail {
                error: Error::timeout(
                    format!(
                        "attempt to `{}` at {}",
                        quoted(&spec.service),
                        instance.endpoint()
                    ),
                    timeout,
                ),
                outcome: Outcome::Failure,
                sent: true,
                timed_out: true,
            },
        };
        end_span(trace, &done);
        (done, took)
    }
}

/// Ends an attempt's span with its outcome.
fn end_span(span: AttemptSpan, attempt: &Attempt) {
    match attempt {
        Attempt::Done(..) => span.end(CallOutcome::Success.label(), false),
        Attempt::Fail { error, .. } => span.end(CallOutcome::of(error).label(), true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(uri: &str) -> Option<HeaderValue> {
        let parts = Uri::try_from(uri).unwrap().into_parts();
        host_header(&parts.scheme.unwrap(), &parts.authority.unwrap())
    }

    #[test]
    fn host_header_omits_only_the_schemes_default_port() {
        assert_eq!(host("http://10.0.0.1:8080/").unwrap(), "10.0.0.1:8080");
        assert_eq!(host("http://10.0.0.1:80/").unwrap(), "10.0.0.1");
        assert_eq!(host("http://10.0.0.1:443/").unwrap(), "10.0.0.1:443");
        assert_eq!(
            host("https://api.example.test:443/").unwrap(),
            "api.example.test"
        );
        assert_eq!(
            host("https://api.example.test:80/").unwrap(),
            "api.example.test:80"
        );
        assert_eq!(host("http://[::1]:8080/").unwrap(), "[::1]:8080");
        assert_eq!(host("http://[::1]:80/").unwrap(), "[::1]");
        assert_eq!(host("http://svc.local/").unwrap(), "svc.local");
    }
}
