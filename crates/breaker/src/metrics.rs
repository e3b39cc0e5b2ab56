//! Breaker state transitions as metrics, for breakers that protect a named instance of a service.
//!
//! A breaker does not know what it protects, and its hot path (`try_acquire`, `record`) stays as
//! it is: transitions are rare and already published to `on_state_change` listeners, so a
//! [`TransitionMetrics`] listener records them. The outlier detector of `waypost-client` (and so
//! the gRPC channel of `waypost-grpc`) installs one on every per-instance breaker; install one
//! yourself on a breaker you own:
//!
//! ```
//! use std::time::Duration;
//! use waypost_breaker::{SimpleCircuitBreaker, TransitionMetrics};
//!
//! let cb = SimpleCircuitBreaker::new(3, Duration::from_secs(5));
//! cb.on_state_change(TransitionMetrics::new("user-service", "user-1").into_listener());
//! ```
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `waypost_breaker_transitions_total` | counter | `service`, `instance`, `from`, `to` | state transitions (`closed`, `open`, `half_open`) |
//! | `waypost_breaker_state` | gauge | `service`, `instance` | the current state: 0 closed, 1 half-open, 2 open |
//!
//! Install the recorder before the breakers' listeners are made: handles taken before a recorder
//! exists record nothing.

use metrics::{describe_counter, describe_gauge, Gauge, SharedString, Unit};
use waypost_core_types::CircuitState;

use crate::StateChange;

/// Counter of state transitions.
pub const TRANSITIONS_TOTAL: &str = "waypost_breaker_transitions_total";
/// Gauge of the current state.
pub const STATE: &str = "waypost_breaker_state";

/// Registers the descriptions (HELP and unit) of the breaker metrics with the installed recorder.
pub fn describe_metrics() {
    describe_counter!(
        TRANSITIONS_TOTAL,
        Unit::Count,
        "Circuit breaker state transitions, by service, instance, from and to state (closed, open, half_open)."
    );
    describe_gauge!(
        STATE,
        Unit::Count,
        "Current circuit breaker state by service and instance: 0 closed, 1 half-open, 2 open."
    );
}

/// The label value of a state: `closed`, `open` or `half_open`.
pub fn state_label(state: CircuitState) -> &'static str {
    match state {
        CircuitState::Closed => "closed",
        CircuitState::Open => "open",
        CircuitState::HalfOpen => "half_open",
    }
}

fn state_value(state: CircuitState) -> f64 {
    match state {
        CircuitState::Closed => 0.0,
        CircuitState::HalfOpen => 1.0,
        CircuitState::Open => 2.0,
    }
}

/// Records the transitions of one breaker, named by the service and the instance it protects
/// (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct TransitionMetrics {
    service: SharedString,
    instance: SharedString,
    state: Gauge,
}

impl TransitionMetrics {
    /// Metrics of the breaker of `instance` of `service`. The state gauge is registered (at
    /// 0, closed) with the recorder installed now.
    pub fn new(service: &str, instance: &str) -> Self {
        let service = SharedString::from(service.to_owned());
        let instance = SharedString::from(instance.to_owned());
        let state =
            metrics::gauge!(STATE, "service" => service.clone(), "instance" => instance.clone());
        state.set(0.0);
        TransitionMetrics {
            service,
            instance,
            state,
        }
    }

    /// Records one transition: counts it and sets the state gauge.
    pub fn record(&self, change: StateChange) {
        // Transitions are rare: the counter is looked up by its labels each time instead of
        // keeping up to six handles per breaker.
        metrics::counter!(
            TRANSITIONS_TOTAL,
            "service" => self.service.clone(),
            "instance" => self.instance.clone(),
            "from" => state_label(change.from),
            "to" => state_label(change.to),
        )
        .increment(1);
        self.state.set(state_value(change.to));
    }

    /// This as an `on_state_change` listener.
    pub fn into_listener(self) -> impl Fn(StateChange) + Send + Sync + 'static {
        move |change| self.record(change)
    }
}
