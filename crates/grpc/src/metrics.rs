//! The channel's metrics, through the `metrics` facade (the table is in `docs/metrics.md` and in
//! [`describe_metrics`]'s docs).
//!
//! A channel calls one service: its handles live in the channel, per method (registered on the
//! method's first call, the outcome-labelled ones on the outcome's first use) in a map read
//! without a lock.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use metrics::{
    describe_counter, describe_histogram, Counter, Histogram, Label, SharedString, Unit,
};
use parking_lot::Mutex;
use tonic::Code;

/// Calls, by service, method and outcome.
pub const REQUESTS_TOTAL: &str = "waypost_grpc_requests_total";
/// Attempts, by service, method and outcome.
pub const ATTEMPTS_TOTAL: &str = "waypost_grpc_attempts_total";
/// Attempts after the first (failovers and retries), by service and method.
pub const RETRIES_TOTAL: &str = "waypost_grpc_retries_total";
/// Retries refused by the retry budget, by service.
pub const RETRY_BUDGET_EXHAUSTED_TOTAL: &str = "waypost_grpc_retry_budget_exhausted_total";
/// Calls that ended with `DEADLINE_EXCEEDED` (the channel's deadline, or the server's), by
/// service.
pub const DEADLINE_EXCEEDED_TOTAL: &str = "waypost_grpc_deadline_exceeded_total";
/// Call latency, by service, method and outcome.
pub const REQUEST_DURATION_SECONDS: &str = "waypost_grpc_request_duration_seconds";
/// Attempt latency, by service, method and outcome.
pub const ATTEMPT_DURATION_SECONDS: &str = "waypost_grpc_attempt_duration_seconds";
/// Request body bytes sent, by service and method.
pub const REQUEST_BYTES_TOTAL: &str = "waypost_grpc_request_bytes_total";
/// Response body bytes received, by service and method.
pub const RESPONSE_BYTES_TOTAL: &str = "waypost_grpc_response_bytes_total";

/// Registers the descriptions (HELP and unit) of the channel's metrics, and of the
/// outlier-detection and breaker metrics it emits
/// ([`waypost_client::describe_metrics`]), with the installed recorder.
///
/// | name | type | labels |
/// |---|---|---|
/// | `waypost_grpc_requests_total` | counter | `service`, `method`, `outcome` |
/// | `waypost_grpc_attempts_total` | counter | `service`, `method`, `outcome` |
/// | `waypost_grpc_retries_total` | counter | `service`, `method` |
/// | `waypost_grpc_retry_budget_exhausted_total` | counter | `service` |
/// | `waypost_grpc_deadline_exceeded_total` | counter | `service` |
/// | `waypost_grpc_request_duration_seconds` | histogram | `service`, `method`, `outcome` |
/// | `waypost_grpc_attempt_duration_seconds` | histogram | `service`, `method`, `outcome` |
/// | `waypost_grpc_request_bytes_total` | counter | `service`, `method` |
/// | `waypost_grpc_response_bytes_total` | counter | `service`, `method` |
///
/// `method` is the full gRPC path (`/pkg.Service/Method`; bounded by the proto; beyond 256
/// distinct paths a channel counts further ones as `other`). `outcome` is the class of the
/// status: `success` (`OK`), `client_error` (`CANCELLED`, `INVALID_ARGUMENT`, `NOT_FOUND`,
/// `ALREADY_EXISTS`, `PERMISSION_DENIED`, `FAILED_PRECONDITION`, `OUT_OF_RANGE`,
/// `UNAUTHENTICATED`), `timeout` (`DEADLINE_EXCEEDED`), `server_error` (every other code), or
/// what the channel saw: `connect_error`, `transport_error`, `circuit_open`, `no_instance`,
/// `cancelled` (the caller dropped the response before its end). Install the recorder before
/// building channels (handles taken with no recorder installed record nothing).
pub fn describe_metrics() {
    describe_counter!(
        REQUESTS_TOTAL,
        Unit::Count,
        "gRPC calls made through waypost channels, by service, method and outcome."
    );
    describe_counter!(
        ATTEMPTS_TOTAL,
        Unit::Count,
        "gRPC attempts (one per instance tried), by service, method and outcome."
    );
    describe_counter!(
        RETRIES_TOTAL,
        Unit::Count,
        "gRPC attempts after the first of a call (failovers and retries), by service and method."
    );
    describe_counter!(
        RETRY_BUDGET_EXHAUSTED_TOTAL,
        Unit::Count,
        "gRPC retries refused because the retry budget was spent, by service."
    );
    describe_counter!(
        DEADLINE_EXCEEDED_TOTAL,
        Unit::Count,
        "gRPC calls that ended with DEADLINE_EXCEEDED (the channel's deadline or the server's), by service."
    );
    describe_histogram!(
        REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "gRPC call latency, to the end of the response, by service, method and outcome."
    );
    describe_histogram!(
        ATTEMPT_DURATION_SECONDS,
        Unit::Seconds,
        "gRPC attempt latency, by service, method and outcome."
    );
    describe_counter!(
        REQUEST_BYTES_TOTAL,
        Unit::Bytes,
        "gRPC request body bytes sent (every attempt of complete bodies), by service and method."
    );
    describe_counter!(
        RESPONSE_BYTES_TOTAL,
        Unit::Bytes,
        "gRPC response body bytes received, by service and method."
    );
    waypost_client::describe_metrics();
}

/// The outcome label of a call or an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallOutcome {
    Success,
    ClientError,
    ServerError,
    Timeout,
    ConnectError,
    TransportError,
    CircuitOpen,
    NoInstance,
    Cancelled,
}

const OUTCOMES: usize = 9;

impl CallOutcome {
    pub(crate) fn label(self) -> &'static str {
        match self {
            CallOutcome::Success => "success",
            CallOutcome::ClientError => "client_error",
            CallOutcome::ServerError => "server_error",
            CallOutcome::Timeout => "timeout",
            CallOutcome::ConnectError => "connect_error",
            CallOutcome::TransportError => "transport_error",
            CallOutcome::CircuitOpen => "circuit_open",
            CallOutcome::NoInstance => "no_instance",
            CallOutcome::Cancelled => "cancelled",
        }
    }

    /// The class of a status code.
    pub(crate) fn of(code: Code) -> CallOutcome {
        match code {
            Code::Ok => CallOutcome::Success,
            Code::Cancelled
            | Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::Unauthenticated => CallOutcome::ClientError,
            Code::DeadlineExceeded => CallOutcome::Timeout,
            _ => CallOutcome::ServerError,
        }
    }
}

/// Methods with handles of their own, per channel.
const MAX_METHODS: usize = 256;

type Methods = HashMap<String, Arc<MethodMetrics>>;

/// A channel's handles.
pub(crate) struct ChannelMetrics {
    service: SharedString,
    methods: ArcSwap<Methods>,
    insert: Mutex<()>,
    other: OnceLock<Arc<MethodMetrics>>,
    budget_exhausted: Counter,
    deadline_exceeded: Counter,
}

impl ChannelMetrics {
    pub(crate) fn new(service: &str) -> Self {
        let service = SharedString::from(service.to_owned());
        let labels = [Label::new("service", service.clone())];
        ChannelMetrics {
            budget_exhausted: metrics::counter!(RETRY_BUDGET_EXHAUSTED_TOTAL, labels.iter()),
            deadline_exceeded: metrics::counter!(DEADLINE_EXCEEDED_TOTAL, labels.iter()),
            service,
            methods: ArcSwap::from_pointee(Methods::new()),
            insert: Mutex::new(()),
            other: OnceLock::new(),
        }
    }

    /// The handles of calls to `path` (`/pkg.Service/Method`).
    pub(crate) fn method(&self, path: &str) -> Arc<MethodMetrics> {
        if let Some(m) = self.methods.load().get(path) {
            return m.clone();
        }
        let _one_writer = self.insert.lock();
        let current = self.methods.load();
        if let Some(m) = current.get(path) {
            return m.clone();
        }
        if current.len() >= MAX_METHODS {
            return self
                .other
                .get_or_init(|| Arc::new(MethodMetrics::new(self, "other".to_owned())))
                .clone();
        }
        let m = Arc::new(MethodMetrics::new(self, path.to_owned()));
        let mut map = (**current).clone();
        map.insert(path.to_owned(), m.clone());
        self.methods.store(Arc::new(map));
        m
    }

    pub(crate) fn budget_exhausted(&self) {
        self.budget_exhausted.increment(1);
    }
}

/// The handles of one method's calls.
pub(crate) struct MethodMetrics {
    service: SharedString,
    method: SharedString,
    requests: [OnceLock<(Counter, Histogram)>; OUTCOMES],
    attempts: [OnceLock<(Counter, Histogram)>; OUTCOMES],
    retries: Counter,
    request_bytes: Counter,
    response_bytes: Counter,
    deadline_exceeded: Counter,
}

impl MethodMetrics {
    fn new(channel: &ChannelMetrics, method: String) -> Self {
        let method = SharedString::from(method);
        let labels = [
            Label::new("service", channel.service.clone()),
            Label::new("method", method.clone()),
        ];
        MethodMetrics {
            service: channel.service.clone(),
            method,
            requests: Default::default(),
            attempts: Default::default(),
            retries: metrics::counter!(RETRIES_TOTAL, labels.iter()),
            request_bytes: metrics::counter!(REQUEST_BYTES_TOTAL, labels.iter()),
            response_bytes: metrics::counter!(RESPONSE_BYTES_TOTAL, labels.iter()),
            deadline_exceeded: channel.deadline_exceeded.clone(),
        }
    }

    fn handles(
        &self,
        counter: &'static str,
        histogram: &'static str,
        o: CallOutcome,
    ) -> (Counter, Histogram) {
        let labels = [
            Label::new("service", self.service.clone()),
            Label::new("method", self.method.clone()),
            Label::from_static_parts("outcome", o.label()),
        ];
        (
            metrics::counter!(counter, labels.iter()),
            metrics::histogram!(histogram, labels.iter()),
        )
    }

    /// One call ended with `outcome` after `seconds`.
    pub(crate) fn request(&self, outcome: CallOutcome, seconds: f64) {
        let (c, h) = self.requests[outcome as usize]
            .get_or_init(|| self.handles(REQUESTS_TOTAL, REQUEST_DURATION_SECONDS, outcome));
        c.increment(1);
        h.record(seconds);
    }

    /// One attempt ended with `outcome` after `seconds`.
    pub(crate) fn attempt(&self, outcome: CallOutcome, seconds: f64) {
        let (c, h) = self.attempts[outcome as usize]
            .get_or_init(|| self.handles(ATTEMPTS_TOTAL, ATTEMPT_DURATION_SECONDS, outcome));
        c.increment(1);
        h.record(seconds);
    }

    pub(crate) fn retry(&self) {
        self.retries.increment(1);
    }

    pub(crate) fn deadline_exceeded(&self) {
        self.deadline_exceeded.increment(1);
    }

    pub(crate) fn sent(&self, bytes: u64) {
        if bytes > 0 {
            self.request_bytes.increment(bytes);
        }
    }

    pub(crate) fn received(&self, bytes: u64) {
        if bytes > 0 {
            self.response_bytes.increment(bytes);
        }
    }
}

/// The end of a call whose response was handed to the caller: recorded when the response
/// body ends (or is dropped before).
pub(crate) struct CallRecord {
    pub(crate) metrics: Arc<MethodMetrics>,
    pub(crate) call_start: tokio::time::Instant,
    pub(crate) attempt_start: tokio::time::Instant,
    /// Response body bytes so far.
    pub(crate) received: u64,
    /// The attempt's span (feature `otel`).
    pub(crate) span: waypost_client::otel::AttemptSpan,
}

impl CallRecord {
    /// Records the attempt and the call, both ended with `outcome`.
    pub(crate) fn end(self, outcome: CallOutcome) {
        let now = tokio::time::Instant::now();
        let m = &self.metrics;
        m.received(self.received);
        m.attempt(
            outcome,
            now.saturating_duration_since(self.attempt_start)
                .as_secs_f64(),
        );
        m.request(
            outcome,
            now.saturating_duration_since(self.call_start).as_secs_f64(),
        );
        if outcome == CallOutcome::Timeout {
            m.deadline_exceeded();
        }
        self.span
            .end(outcome.label(), outcome != CallOutcome::Success);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_their_class() {
        assert_eq!(CallOutcome::of(Code::Ok), CallOutcome::Success);
        assert_eq!(CallOutcome::of(Code::NotFound), CallOutcome::ClientError);
        assert_eq!(CallOutcome::of(Code::Unavailable), CallOutcome::ServerError);
        assert_eq!(CallOutcome::of(Code::Unknown), CallOutcome::ServerError);
        assert_eq!(
            CallOutcome::of(Code::DeadlineExceeded),
            CallOutcome::Timeout
        );
    }

    #[test]
    fn methods_beyond_the_bound_share_one_entry() {
        let m = ChannelMetrics::new("svc");
        for i in 0..MAX_METHODS {
            m.method(&format!("/p.S/M{i}"));
        }
        let a = m.method("/p.S/Late");
        let b = m.method("/p.S/Later");
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(&*a.method, "other");
        assert_eq!(m.methods.load().len(), MAX_METHODS);
    }
}
