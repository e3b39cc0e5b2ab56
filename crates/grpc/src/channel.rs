//! [`Channel`]: a `tower::Service` for tonic clients that picks an instance of a service per
//! call and runs the failover and retry loop.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderName;
use http::{HeaderValue, Method, Request, Response, Uri, Version};
use parking_lot::Mutex;
use tokio::time::Instant;
use tonic::{Code, Status};
use waypost_client::{InstancePermit, OutlierDetector, RetryBudget};
use waypost_core_types::quote::quoted;
use waypost_core_types::{
    CircuitState, Error, Outcome, SelectContext, Selection, ServiceDiscovery, ServiceInfo,
};

use crate::body::{prepare, Finish, ResponseBody};
use crate::builder::ChannelBuilder;
use crate::connect::uses_tls;
use crate::metrics::{CallOutcome, CallRecord, ChannelMetrics, MethodMetrics};
use crate::pool::{ConnError, Pool, StreamGuard};
use crate::retry::RetryTable;
use crate::status::{counts_as_failure, deadline_exceeded, normalize, service_part, unavailable};
use crate::timeout::{self, GRPC_TIMEOUT};
use waypost_client::otel::{AttemptSpan, TraceParent};

/// A consistent-hash key for one call, as a request extension (it wins over the channel's
/// [`hash_key_header`](ChannelBuilder::hash_key_header)):
/// `request.extensions_mut().insert(HashKey::from("user-42"))`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashKey(pub Bytes);

impl From<&str> for HashKey {
    fn from(s: &str) -> Self {
        HashKey(Bytes::copy_from_slice(s.as_bytes()))
    }
}

/// A gRPC channel to one service, over waypost discovery: give it to any tonic-generated client
/// (`HealthClient::new(channel)`). Cheap to clone; clones share the connections, the outlier
/// detector and the retry budget. See the crate docs for what it does on failures.
#[derive(Clone)]
pub struct Channel {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) discovery: Arc<dyn ServiceDiscovery>,
    pub(crate) service: String,
    pub(crate) hash_key_header: Option<HeaderName>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) replay_limit: usize,
    pub(crate) max_failovers: u32,
    pub(crate) retries: RetryTable,
    pub(crate) budget: Option<Arc<RetryBudget>>,
    pub(crate) outliers: Option<Arc<OutlierDetector>>,
    pub(crate) pool: Pool,
    pub(crate) sweep_interval: Duration,
    pub(crate) sweeper: OnceLock<Sweeper>,
    pub(crate) metrics: ChannelMetrics,
}

/// The task that closes the connections of instances that left; it ends with the channel.
pub(crate) struct Sweeper(tokio::task::JoinHandle<()>);

impl Drop for Sweeper {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("service", &quoted(&self.inner.service))
            .finish_non_exhaustive()
    }
}

impl Channel {
    /// A builder for a channel to `service`.
    pub fn builder(discovery: Arc<dyn ServiceDiscovery>, service: &str) -> ChannelBuilder {
        ChannelBuilder::new(discovery, service)
    }

    /// The service this channel calls.
    pub fn service(&self) -> &str {
        &self.inner.service
    }

    /// The ids of the instances this channel has an open connection to, sorted.
    pub fn connected_instances(&self) -> Vec<String> {
        self.inner.pool.connected()
    }

    /// The ids of the instances that left discovery whose connection is still open because
    /// calls run on it (see [`ChannelBuilder::drain_timeout`]), sorted.
    pub fn draining_instances(&self) -> Vec<String> {
        self.inner.pool.draining()
    }

    /// How many calls run on instance `id` now: sent (or being sent) on its connection, their
    /// response not ended yet.
    pub fn in_flight(&self, id: &str) -> usize {
        self.inner.pool.in_flight(id)
    }

    /// The state of instance `id`'s outlier breaker (`Closed` when it has none).
    pub fn instance_state(&self, id: &str) -> CircuitState {
        self.inner
            .outliers
            .as_ref()
            .map_or(CircuitState::Closed, |o| o.state(id))
    }

    /// Closes the connections of instances no longer in discovery now (the channel also does
    /// it every sweep interval).
    pub async fn sweep(&self) {
        self.inner.sweep().await;
    }
}

impl tower_service::Service<Request<tonic::body::Body>> for Channel {
    type Response = Response<ResponseBody>;
    type Error = Status;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Status>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<tonic::body::Body>) -> Self::Future {
        let inner = self.inner.clone();
        // The caller's trace context (feature `otel`), the parent of every attempt's span.
        let trace = TraceParent::current();
        Box::pin(async move { inner.call(req, trace).await })
    }
}

/// One call's state that outlives its retry loop (which a deadline may cut short).
struct Call<'a> {
    start: Instant,
    deadline: Option<Instant>,
    last_instance: &'a Mutex<Option<Arc<ServiceInfo>>>,
    metrics: &'a Arc<MethodMetrics>,
    seen: &'a Mutex<Option<CallOutcome>>,
    trace: &'a TraceParent,
}

/// What the previous attempt of a call left.
enum Last {
    /// Nothing yet.
    None,
    /// It failed before the request left: the next may go to another instance for any method.
    Unsent(Status),
    /// It was sent and failed with a retryable status.
    Retried(Status),
}

impl Inner {
    fn ensure_sweeper(self: &Arc<Self>) {
        if self.sweeper.get().is_some() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = Arc::downgrade(self);
        let every = self.sweep_interval;
        let _ = self.sweeper.set(Sweeper(rt.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                inner.sweep().await;
            }
        })));
    }

    async fn sweep(&self) {
        match self.discovery.discover(&self.service).await {
            Ok(live) => self.pool.retain(&live),
            Err(e) if e.is_not_found() => self.pool.retain(&[]),
            Err(e) => tracing::debug!(error = %e, "sweep: discovery failed; connections kept"),
        }
    }

    /// Picks an instance avoiding `failed`, the ejected ones and those waiting to reconnect,
    /// falling back on the failed and waiting ones, never on an ejected one. Returns whether
    /// the pick is one of the avoided (the only ones left).
    async fn pick(
        &self,
        hash_key: Option<&[u8]>,
        failed: &[String],
    ) -> Result<(Selection, Option<InstancePermit>, bool), Error> {
        let mut avoid: Vec<String> = failed.to_vec();
        self.pool.waiting(&mut avoid);
        let Some(outliers) = &self.outliers else {
            let ctx = SelectContext {
                hash_key,
                avoid: &avoid,
            };
            let sel = self.discovery.select(&self.service, &ctx).await?;
            let fallback = avoid.contains(&sel.instance.id);
            return Ok((sel, None, fallback));
        };
        let soft = avoid.len();
        outliers.ejected(&mut avoid);
        for _ in 0..8 {
            let ctx = SelectContext {
                hash_key,
                avoid: &avoid,
            };
            let sel = self.discovery.select(&self.service, &ctx).await?;
            let id = sel.instance.id.clone();
            match outliers.acquire_for(&self.service, &id) {
                Ok(permit) => {
                    let fallback = avoid.contains(&id);
                    return Ok((sel, Some(permit), fallback));
                }
                Err(_) => {
                    drop(sel);
                    if !avoid.contains(&id) {
                        avoid.push(id);
                    } else if soft > 0 && avoid.len() > soft {
                        // The balancer fell back on an avoided instance: let the soft-avoided
                        // ones (failed in this call, reconnecting) in again, keep the ejected
                        // ones out.
                        avoid.drain(..soft);
                    } else {
                        break;
                    }
                }
            }
        }
        Err(Error::CircuitOpen)
    }

    async fn call(
        self: &Arc<Self>,
        req: Request<tonic::body::Body>,
        trace: TraceParent,
    ) -> Result<Response<ResponseBody>, Status> {
        self.ensure_sweeper();
        let start = Instant::now();
        let (parts, body) = req.into_parts();
        let caller = parts.headers.get(GRPC_TIMEOUT).and_then(timeout::parse);
        let timeout = match (caller, self.timeout) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let deadline = timeout.and_then(|t| start.checked_add(t));
        let last_instance: Mutex<Option<Arc<ServiceInfo>>> = Mutex::new(None);
        let metrics = self.metrics.method(parts.uri.path());
        // What the channel saw, when the status alone does not say it (a connection that
        // failed, every instance ejected, …).
        let seen: Mutex<Option<CallOutcome>> = Mutex::new(None);
        let call = Call {
            start,
            deadline,
            last_instance: &last_instance,
            metrics: &metrics,
            seen: &seen,
            trace: &trace,
        };
        let run = self.run(parts, body, call);
        let result = match (deadline, timeout) {
            (Some(at), Some(t)) => match tokio::time::timeout_at(at, run).await {
                Ok(r) => r,
                Err(_) => Err(deadline_exceeded(
                    &self.service,
                    last_instance.lock().as_deref(),
                    t,
                )),
            },
            _ => run.await,
        };
        if let Err(status) = &result {
            let outcome = seen
                .lock()
                .take()
                .unwrap_or_else(|| CallOutcome::of(status.code()));
            metrics.request(outcome, start.elapsed().as_secs_f64());
            if outcome == CallOutcome::Timeout {
                metrics.deadline_exceeded();
            }
        }
        result
    }

    async fn run(
        self: &Arc<Self>,
        parts: http::request::Parts,
        body: tonic::body::Body,
        call: Call<'_>,
    ) -> Result<Response<ResponseBody>, Status> {
        let Call {
            start,
            deadline,
            last_instance,
            metrics,
            seen,
            trace,
        } = call;
        // The outcome of a call that ends in the channel: recorded by `call`.
        let saw = |outcome: CallOutcome| *seen.lock() = Some(outcome);
        let service = self.service.as_str();
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let method_path = path.split('?').next().unwrap_or("/");
        let policy = self.retries.lookup(method_path).cloned();
        let hash_key: Option<Bytes> = parts
            .extensions
            .get::<HashKey>()
            .map(|k| k.0.clone())
            .or_else(|| {
                let name = self.hash_key_header.as_ref()?;
                parts
                    .headers
                    .get(name)
                    .map(|v| Bytes::copy_from_slice(v.as_bytes()))
            });
        let mut body = prepare(body, self.replay_limit);
        if let Some(b) = &self.budget {
            b.deposit();
        }
        let mut failed: Vec<String> = Vec::new();
        let mut failovers = 0u32;
        let mut sent_attempts = 0u32;
        let mut last = Last::None;
        // The outcome of the last attempt that failed in the channel (not with a server's
        // status).
        let mut last_outcome: Option<CallOutcome> = None;
        let mut attempts = 0u32;
        loop {
            let (selection, permit, fallback) = match self.pick(hash_key.as_deref(), &failed).await
            {
                Ok(p) => p,
                Err(e) => {
                    match (&last, last_outcome) {
                        (Last::None, _) if matches!(e, Error::CircuitOpen) => {
                            saw(CallOutcome::CircuitOpen)
                        }
                        (Last::None, _) => saw(CallOutcome::NoInstance),
                        (_, Some(o)) => saw(o),
                        (_, None) => {}
                    }
                    return Err(match last {
                        Last::Unsent(s) | Last::Retried(s) => s,
                        Last::None if matches!(e, Error::CircuitOpen) => Status::unavailable(
                            format!("{}: every instance is ejected", service_part(service)),
                        ),
                        Last::None => Status::unavailable(format!(
                            "no instance of {}: {}",
                            service_part(service),
                            quoted(&e.to_string())
                        )),
                    });
                }
            };
            let Selection { instance, guard } = selection;
            *last_instance.lock() = Some(instance.clone());
            let attempt_start = Instant::now();
            let took = || attempt_start.elapsed().as_secs_f64();
            let mut finish = Finish {
                guard,
                permit: permit.zip(self.outliers.clone()),
                instance: instance.id.clone(),
                stream: None,
            };
            if let Last::Unsent(s) = &last {
                if failed.contains(&instance.id) {
                    // Every instance was tried: the last failure is the answer.
                    finish.report(Outcome::Ignored);
                    if let Some(o) = last_outcome {
                        saw(o);
                    }
                    return Err(s.clone());
                }
            }
            if !matches!(last, Last::None) {
                // Another attempt after a failed one: a failover or a retry.
                metrics.retry();
            }
            attempts += 1;
            let span = AttemptSpan::start(trace, service, &instance.id, attempts);
            let (send, slot) = match self.pool.connection(&instance, fallback).await {
                Ok((send, slot)) => {
                    finish.stream = Some(StreamGuard::new(slot.clone()));
                    (send, slot)
                }
                Err(e) => {
                    let (why, outcome) = match e {
                        ConnError::Failed(why) => (why, Outcome::Failure),
                        ConnError::Waiting(why) => (
                            format!("not reconnecting yet after: {why}"),
                            Outcome::Ignored,
                        ),
                    };
                    finish.report(outcome);
                    tracing::debug!(instance = %quoted(&instance.id), reason = %why, "connection failed: failing over");
                    metrics.attempt(CallOutcome::ConnectError, took());
                    span.end(CallOutcome::ConnectError.label(), true);
                    last_outcome = Some(CallOutcome::ConnectError);
                    let status = unavailable(service, &instance, &why);
                    failovers += 1;
                    if failovers > self.max_failovers {
                        saw(CallOutcome::ConnectError);
                        return Err(status);
                    }
                    if !failed.contains(&instance.id) {
                        failed.push(instance.id.clone());
                    }
                    last = Last::Unsent(status);
                    continue;
                }
            };
            let Some(req_body) = body.take() else {
                finish.report(Outcome::Ignored);
                return Err(match last {
                    Last::Unsent(s) | Last::Retried(s) => s,
                    Last::None => {
                        unavailable(service, &instance, "the request body was already sent")
                    }
                });
            };
            let scheme = if uses_tls(&instance) { "https" } else { "http" };
            let uri = match Uri::try_from(format!("{scheme}://{}{path}", instance.endpoint())) {
                Ok(u) => u,
                Err(e) => {
                    finish.report(Outcome::Ignored);
                    return Err(Status::internal(format!(
                        "{}: invalid request URI: {}",
                        crate::status::instance_part(service, &instance),
                        quoted(&e.to_string())
                    )));
                }
            };
            let mut req = Request::new(req_body);
            *req.method_mut() = Method::POST;
            *req.uri_mut() = uri;
            *req.version_mut() = Version::HTTP_2;
            *req.headers_mut() = parts.headers.clone();
            span.inject(req.headers_mut());
            if let Some(at) = deadline {
                let left = at.saturating_duration_since(Instant::now());
                req.headers_mut()
                    .insert(GRPC_TIMEOUT, timeout::encode(left));
            }
            let mut send = send;
            let body_len = body.replayable_len();
            match send.try_send_request(req).await {
                Err(mut e) => {
                    if let Some(req) = e.take_message() {
                        // Never sent: the connection closed before it could be.
                        body.give_back(req.into_body());
                        finish.report(Outcome::Ignored);
                        let why =
                            format!("connection lost: {}", crate::status::error_text(e.error()));
                        slot.lost(&why);
                        metrics.attempt(CallOutcome::TransportError, took());
                        span.end(CallOutcome::TransportError.label(), true);
                        last_outcome = Some(CallOutcome::TransportError);
                        let status = unavailable(service, &instance, &why);
                        failovers += 1;
                        if failovers > self.max_failovers {
                            saw(CallOutcome::TransportError);
                            return Err(status);
                        }
                        if !failed.contains(&instance.id) {
                            failed.push(instance.id.clone());
                        }
                        last = Last::Unsent(status);
                        continue;
                    }
                    finish.report(Outcome::Failure);
                    metrics.sent(body_len);
                    metrics.attempt(CallOutcome::TransportError, took());
                    span.end(CallOutcome::TransportError.label(), true);
                    last_outcome = Some(CallOutcome::TransportError);
                    let why = crate::status::error_text(e.error());
                    slot.lost(&why);
                    let status = unavailable(service, &instance, &why);
                    sent_attempts += 1;
                    match self.retry_delay(
                        policy.as_ref(),
                        Code::Unavailable,
                        None,
                        &body,
                        sent_attempts,
                        deadline,
                    ) {
                        Some(wait) => {
                            tokio::time::sleep(wait).await;
                            if !failed.contains(&instance.id) {
                                failed.push(instance.id.clone());
                            }
                            last = Last::Retried(status);
                            continue;
                        }
                        None => {
                            saw(CallOutcome::TransportError);
                            return Err(status);
                        }
                    }
                }
                Ok(resp) => {
                    slot.answered();
                    metrics.sent(body_len);
                    let (mut head, incoming) = resp.into_parts();
                    let code = normalize(&mut head.headers, Some(head.status), service, &instance);
                    let Some(code) = code.filter(|c| *c != Code::Ok) else {
                        let at = crate::status::instance_part(service, &instance);
                        let deadline = deadline.map(|at_| {
                            (
                                at_,
                                format!(
                                    "deadline of {:?} exceeded ({at})",
                                    at_.saturating_duration_since(Instant::now())
                                ),
                            )
                        });
                        // A status in the headers (trailers-only OK) ends the call; else the
                        // trailers must bring one.
                        let status_seen = code.is_some();
                        let origin = (self.service.clone(), instance.clone());
                        let record = CallRecord {
                            metrics: metrics.clone(),
                            call_start: start,
                            attempt_start,
                            received: 0,
                            span,
                        };
                        let body = ResponseBody::new(
                            incoming,
                            finish,
                            deadline,
                            status_seen,
                            origin,
                            record,
                        );
                        return Ok(Response::from_parts(head, body));
                    };
                    // Trailers-only: the status is in the headers, no message came.
                    metrics.attempt(CallOutcome::of(code), took());
                    span.end(CallOutcome::of(code).label(), true);
                    last_outcome = None;
                    finish.report(if counts_as_failure(code) {
                        Outcome::Failure
                    } else {
                        Outcome::Success
                    });
                    sent_attempts += 1;
                    let pushback = head.headers.get("grpc-retry-pushback-ms").cloned();
                    match self.retry_delay(
                        policy.as_ref(),
                        code,
                        pushback.as_ref(),
                        &body,
                        sent_attempts,
                        deadline,
                    ) {
                        Some(wait) => {
                            tracing::debug!(instance = %quoted(&instance.id), ?code, ?wait, "retrying");
                            tokio::time::sleep(wait).await;
                            if !failed.contains(&instance.id) {
                                failed.push(instance.id.clone());
                            }
                            last = Last::Retried(
                                crate::status::from_server(&head.headers)
                                    .unwrap_or_else(|| unavailable(service, &instance, "retried")),
                            );
                            continue;
                        }
                        None => {
                            // The status, named after its instance, goes to the caller; the
                            // body (empty, or a non-gRPC page) is not read.
                            return Err(crate::status::from_server(&head.headers)
                                .unwrap_or_else(|| unavailable(service, &instance, "no status")));
                        }
                    }
                }
            }
        }
    }

    /// The wait before another attempt after a sent one ended with `code`, or `None` when it is
    /// not retried: the method has no policy, the code is not retryable, the body cannot be
    /// sent again, the attempts are spent, the server's pushback says no, the deadline leaves no
    /// time, or the budget is spent (checked last, so that a refusal for another reason draws
    /// nothing from it).
    fn retry_delay(
        &self,
        policy: Option<&crate::RetryPolicy>,
        code: Code,
        pushback: Option<&HeaderValue>,
        body: &crate::body::Prepared,
        sent_attempts: u32,
        deadline: Option<Instant>,
    ) -> Option<Duration> {
        let policy = policy?;
        if !policy.retries(code) || !body.replayable() || sent_attempts >= policy.max_attempts {
            return None;
        }
        let wait = match pushback {
            // gRPC: a pushback that is not a non-negative integer means "do not retry".
            Some(v) => Duration::from_millis(v.to_str().ok()?.parse::<u64>().ok()?),
            None => policy.delay(sent_attempts),
        };
        if let Some(at) = deadline {
            if Instant::now().checked_add(wait).is_none_or(|t| t >= at) {
                return None;
            }
        }
        if let Some(b) = &self.budget {
            if !b.try_withdraw() {
                self.metrics.budget_exhausted();
                tracing::debug!("retry budget exhausted");
                return None;
            }
        }
        Some(wait)
    }
}
