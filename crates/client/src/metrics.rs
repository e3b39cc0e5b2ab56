//! The client's metrics, through the `metrics` facade (the table is in `docs/metrics.md` and in
//! [`describe_metrics`]'s docs).
//!
//! Handles are registered once per service (and per method and outcome, on first use) in a
//! per-client map read without a lock, so a call costs a map lookup and a few atomic adds; with
//! no recorder installed the handles are no-ops.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use http::Method;
use metrics::{
    describe_counter, describe_histogram, Counter, Histogram, Label, SharedString, Unit,
};
use parking_lot::Mutex;
use waypost_core_types::Error;

use crate::outlier::Fnv;

/// Requests (calls), by service, method and outcome.
pub const REQUESTS_TOTAL: &str = "waypost_client_requests_total";
/// Attempts, by service, method and outcome.
pub const ATTEMPTS_TOTAL: &str = "waypost_client_attempts_total";
/// Retries (attempts after the first), by service and method.
pub const RETRIES_TOTAL: &str = "waypost_client_retries_total";
/// Retries refused by the retry budget, by service.
pub const RETRY_BUDGET_EXHAUSTED_TOTAL: &str = "waypost_client_retry_budget_exhausted_total";
/// Calls that ran out of their overall deadline, by service.
pub const DEADLINE_EXCEEDED_TOTAL: &str = "waypost_client_deadline_exceeded_total";
/// Call latency (all attempts and waits), by service, method and outcome.
pub const REQUEST_DURATION_SECONDS: &str = "waypost_client_request_duration_seconds";
/// Attempt latency, by service, method and outcome.
pub const ATTEMPT_DURATION_SECONDS: &str = "waypost_client_attempt_duration_seconds";
/// Request body bytes sent, by service and method.
pub const REQUEST_BYTES_TOTAL: &str = "waypost_client_request_bytes_total";
/// Response body bytes received, by service and method.
pub const RESPONSE_BYTES_TOTAL: &str = "waypost_client_response_bytes_total";
/// Instances ejected by outlier detection, by service and instance.
pub const OUTLIER_EJECTIONS_TOTAL: &str = "waypost_outlier_ejections_total";
/// Probes of ejected instances, by service, instance and outcome (`success`: brought back).
pub const OUTLIER_PROBES_TOTAL: &str = "waypost_outlier_probes_total";

/// Registers the descriptions (HELP and unit) of the client's metrics, and of the breaker
/// metrics its outlier detection emits ([`waypost_breaker::describe_metrics`]), with the
/// installed recorder.
///
/// | name | type | labels |
/// |---|---|---|
/// | `waypost_client_requests_total` | counter | `service`, `method`, `outcome` |
/// | `waypost_client_attempts_total` | counter | `service`, `method`, `outcome` |
/// | `waypost_client_retries_total` | counter | `service`, `method` |
/// | `waypost_client_retry_budget_exhausted_total` | counter | `service` |
/// | `waypost_client_deadline_exceeded_total` | counter | `service` |
/// | `waypost_client_request_duration_seconds` | histogram | `service`, `method`, `outcome` |
/// | `waypost_client_attempt_duration_seconds` | histogram | `service`, `method`, `outcome` |
/// | `waypost_client_request_bytes_total` | counter | `service`, `method` |
/// | `waypost_client_response_bytes_total` | counter | `service`, `method` |
/// | `waypost_outlier_ejections_total` | counter | `service`, `instance` |
/// | `waypost_outlier_probes_total` | counter | `service`, `instance`, `outcome` |
///
/// `method` is the HTTP method (`GET`, `POST`, … ; an extension method is `other`); `outcome`
/// is one of `success`, `client_error` (4xx), `server_error` (5xx), `timeout`,
/// `connect_error`, `transport_error` (the connection failed after the request was sent),
/// `circuit_open` (every instance ejected), `no_instance`, `other`. The metrics of one service
/// are registered when the client first calls it: install the recorder before making calls
/// (handles taken with no recorder installed record nothing).
pub fn describe_metrics() {
    describe_counter!(
        REQUESTS_TOTAL,
        Unit::Count,
        "Calls made by ServiceClient, by service, method and outcome."
    );
    describe_counter!(
        ATTEMPTS_TOTAL,
        Unit::Count,
        "Attempts (requests sent to an instance) made by ServiceClient, by service, method and outcome."
    );
    describe_counter!(
        RETRIES_TOTAL,
        Unit::Count,
        "Attempts after the first of a call, by service and method."
    );
    describe_counter!(
        RETRY_BUDGET_EXHAUSTED_TOTAL,
        Unit::Count,
        "Retries refused because the retry budget was spent, by service."
    );
    describe_counter!(
        DEADLINE_EXCEEDED_TOTAL,
        Unit::Count,
        "Calls that ran out of their overall deadline, by service."
    );
    describe_histogram!(
        REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "Call latency (every attempt and backoff), by service, method and outcome."
    );
    describe_histogram!(
        ATTEMPT_DURATION_SECONDS,
        Unit::Seconds,
        "Attempt latency (request sent to response read), by service, method and outcome."
    );
    describe_counter!(
        REQUEST_BYTES_TOTAL,
        Unit::Bytes,
        "Request body bytes sent (every attempt), by service and method."
    );
    describe_counter!(
        RESPONSE_BYTES_TOTAL,
        Unit::Bytes,
        "Response body bytes received in successful responses, by service and method."
    );
    describe_outlier_metrics();
    waypost_breaker::describe_metrics();
}

/// The descriptions of the outlier-detection metrics (also emitted by `waypost-grpc`).
pub(crate) fn describe_outlier_metrics() {
    describe_counter!(
        OUTLIER_EJECTIONS_TOTAL,
        Unit::Count,
        "Instances ejected by outlier detection (after consecutive failures, or a failed probe), by service and instance."
    );
    describe_counter!(
        OUTLIER_PROBES_TOTAL,
        Unit::Count,
        "Probe calls to ejected instances, by service, instance and outcome (success brings the instance back)."
    );
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
    Other,
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
            CallOutcome::Other => "other",
        }
    }

    /// The outcome a call or an attempt that failed with `error` is counted under.
    pub(crate) fn of(error: &Error) -> CallOutcome {
        match error {
            Error::Http { status, .. } if *status >= 500 => CallOutcome::ServerError,
            Error::Http { .. } => CallOutcome::ClientError,
            Error::Timeout { .. } => CallOutcome::Timeout,
            Error::CircuitOpen => CallOutcome::CircuitOpen,
            Error::ServiceNotFound(_) | Error::NoHealthyInstance(_) | Error::NotFound(_) => {
                CallOutcome::NoInstance
            }
            Error::Backend {
                backend: "http",
                source,
                ..
            } => {
                let connect = source.as_deref().is_some_and(|s| {
                    s.is::<crate::pool::ConnectFailed>()
                        || s.downcast_ref::<hyper_util::client::legacy::Error>()
                            .is_some_and(|e| e.is_connect())
                });
                if connect {
                    CallOutcome::ConnectError
                } else {
                    CallOutcome::TransportError
                }
            }
            _ => CallOutcome::Other,
        }
    }
}

/// The HTTP methods with a label of their own; any other is `other`.
const METHODS: [Method; 9] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::PATCH,
    Method::HEAD,
    Method::OPTIONS,
    Method::TRACE,
    Method::CONNECT,
];

fn method_index(method: &Method) -> usize {
    METHODS
        .iter()
        .position(|m| m == method)
        .unwrap_or(METHODS.len())
}

fn method_label(index: usize) -> &'static str {
    METHODS.get(index).map_or("other", Method::as_str)
}

/// Services with handles of their own; calls to further services are counted under the
/// service `other`, so that a client called with ever new names keeps a bounded map.
const MAX_SERVICES: usize = 1024;

type Services = HashMap<String, Arc<ServiceMetrics>, BuildHasherDefault<Fnv>>;

/// The handles of every service a client has called.
pub(crate) struct ClientMetrics {
    services: ArcSwap<Services>,
    insert: Mutex<()>,
    other: OnceLock<Arc<ServiceMetrics>>,
}

impl ClientMetrics {
    pub(crate) fn new() -> Self {
        ClientMetrics {
            services: ArcSwap::from_pointee(Services::default()),
            insert: Mutex::new(()),
            other: OnceLock::new(),
        }
    }

    /// The handles of `service`, registered on its first call.
    pub(crate) fn service(&self, service: &str) -> Arc<ServiceMetrics> {
        if let Some(m) = self.services.load().get(service) {
            return m.clone();
        }
        let _one_writer = self.insert.lock();
        let current = self.services.load();
        if let Some(m) = current.get(service) {
            return m.clone();
        }
        if current.len() >= MAX_SERVICES {
            return self
                .other
                .get_or_init(|| Arc::new(ServiceMetrics::new("other")))
                .clone();
        }
        let m = Arc::new(ServiceMetrics::new(service));
        let mut map: Services = (**current).clone();
        map.insert(service.to_owned(), m.clone());
        self.services.store(Arc::new(map));
        m
    }
}

/// One service's handles.
pub(crate) struct ServiceMetrics {
    service: SharedString,
    methods: [OnceLock<Box<MethodMetrics>>; METHODS.len() + 1],
    budget_exhausted: Counter,
    deadline_exceeded: Counter,
}

impl std::fmt::Debug for ServiceMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceMetrics")
            .field("service", &&*self.service)
            .finish_non_exhaustive()
    }
}

impl ServiceMetrics {
    fn new(service: &str) -> Self {
        let service = SharedString::from(service.to_owned());
        let labels = [Label::new("service", service.clone())];
        ServiceMetrics {
            budget_exhausted: metrics::counter!(RETRY_BUDGET_EXHAUSTED_TOTAL, labels.iter()),
            deadline_exceeded: metrics::counter!(DEADLINE_EXCEEDED_TOTAL, labels.iter()),
            service,
            methods: Default::default(),
        }
    }

    /// The handles of `method` calls.
    pub(crate) fn method(&self, method: &Method) -> &MethodMetrics {
        let i = method_index(method);
        self.methods[i].get_or_init(|| Box::new(MethodMetrics::new(&self.service, i)))
    }

    pub(crate) fn budget_exhausted(&self) {
        self.budget_exhausted.increment(1);
    }

    pub(crate) fn deadline_exceeded(&self) {
        self.deadline_exceeded.increment(1);
    }
}

/// The handles of one service's calls with one method; the ones with an outcome label are
/// registered on the outcome's first use, so that a recorder lists only outcomes that happened.
pub(crate) struct MethodMetrics {
    service: SharedString,
    method: &'static str,
    requests: [OnceLock<(Counter, Histogram)>; OUTCOMES],
    attempts: [OnceLock<(Counter, Histogram)>; OUTCOMES],
    retries: Counter,
    request_bytes: Counter,
    response_bytes: Counter,
}

impl MethodMetrics {
    fn new(service: &SharedString, index: usize) -> Self {
        let method = method_label(index);
        let labels = [
            Label::new("service", service.clone()),
            Label::from_static_parts("method", method),
        ];
        MethodMetrics {
            service: service.clone(),
            method,
            requests: Default::default(),
            attempts: Default::default(),
            retries: metrics::counter!(RETRIES_TOTAL, labels.iter()),
            request_bytes: metrics::counter!(REQUEST_BYTES_TOTAL, labels.iter()),
            response_bytes: metrics::counter!(RESPONSE_BYTES_TOTAL, labels.iter()),
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
            Label::from_static_parts("method", self.method),
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

    pub(crate) fn sent(&self, bytes: usize) {
        if bytes > 0 {
            self.request_bytes.increment(bytes as u64);
        }
    }

    pub(crate) fn received(&self, bytes: usize) {
        if bytes > 0 {
            self.response_bytes.increment(bytes as u64);
        }
    }
}

/// The outlier-detection handles of one instance's breaker, and its transition metrics.
pub(crate) struct OutlierMetrics {
    transitions: waypost_breaker::TransitionMetrics,
    ejections: Counter,
    probe_success: Counter,
    probe_failure: Counter,
}

impl OutlierMetrics {
    pub(crate) fn new(service: &str, instance: &str) -> Self {
        let labels = [
            Label::new("service", service.to_owned()),
            Label::new("instance", instance.to_owned()),
        ];
        let probe = |outcome: &'static str| {
            let mut l = labels.to_vec();
            l.push(Label::from_static_parts("outcome", outcome));
            metrics::counter!(OUTLIER_PROBES_TOTAL, l)
        };
        OutlierMetrics {
            transitions: waypost_breaker::TransitionMetrics::new(service, instance),
            ejections: metrics::counter!(OUTLIER_EJECTIONS_TOTAL, labels.iter()),
            probe_success: probe("success"),
            probe_failure: probe("failure"),
        }
    }

    pub(crate) fn record(&self, change: waypost_breaker::StateChange) {
        use waypost_core_types::CircuitState::{Closed, HalfOpen, Open};
        self.transitions.record(change);
        match (change.from, change.to) {
            (HalfOpen, Closed) => self.probe_success.increment(1),
            (HalfOpen, Open) => {
                self.probe_failure.increment(1);
                self.ejections.increment(1);
            }
            (_, Open) => self.ejections.increment(1),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_labelled_and_extension_methods_are_other() {
        assert_eq!(method_label(method_index(&Method::GET)), "GET");
        assert_eq!(method_label(method_index(&Method::CONNECT)), "CONNECT");
        let ext = Method::from_bytes(b"PURGE").unwrap();
        assert_eq!(method_label(method_index(&ext)), "other");
    }

    #[test]
    fn errors_map_to_their_outcome() {
        let http = |status| Error::Http {
            status,
            body: String::new(),
        };
        assert_eq!(CallOutcome::of(&http(404)), CallOutcome::ClientError);
        assert_eq!(CallOutcome::of(&http(503)), CallOutcome::ServerError);
        assert_eq!(
            CallOutcome::of(&Error::NoHealthyInstance("s".into())),
            CallOutcome::NoInstance
        );
        assert_eq!(
            CallOutcome::of(&Error::CircuitOpen),
            CallOutcome::CircuitOpen
        );
        assert_eq!(
            CallOutcome::of(&Error::timeout("x", std::time::Duration::from_secs(1))),
            CallOutcome::Timeout
        );
        assert_eq!(
            CallOutcome::of(&Error::Codec("x".into())),
            CallOutcome::Other
        );
    }

    #[test]
    fn services_beyond_the_bound_share_one_entry() {
        let m = ClientMetrics::new();
        for i in 0..MAX_SERVICES {
            m.service(&format!("s{i}"));
        }
        let a = m.service("one-too-many");
        let b = m.service("and-another");
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(&*a.service, "other");
        assert_eq!(m.services.load().len(), MAX_SERVICES);
    }
}
