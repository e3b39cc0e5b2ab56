//! Circuit breakers for waypost.
//!
//! Every breaker implements waypost's [`CircuitBreaker`] trait in its permit form (ask, run with
//! no lock held, record), so it works as `Arc<dyn CircuitBreaker>`:
//!
//! * [`SimpleCircuitBreaker`] — the Laravel-Go module's breaker: opens after N consecutive
//!   failures, refuses calls while open, probes with a bounded number of calls when half-open;
//! * [`FailureRateBreaker`] — failure rate and slow-call rate over a sliding window (by count or
//!   by time), after a minimum number of calls;
//! * [`AdaptiveThrottle`] — client-side adaptive throttling from the Google SRE book.
//!
//! [`CircuitBreakerExt`] adds `execute` helpers (with a caller-chosen classifier) to every breaker,
//! and [`CircuitBreakerLayer`] wraps any tower service. State changes can be watched with
//! `subscribe()` (a `tokio::sync::watch` receiver) or `on_state_change` callbacks. All time is tokio
//! time, so `tokio::time::pause()` drives the open timeout in tests.
//!
//! Metrics: a [`TransitionMetrics`] listener records a breaker's state transitions through the
//! `metrics` facade, named by service and instance ([`metrics`] lists them;
//! [`describe_metrics`] registers their descriptions).
//!
//! Most users want the `waypost` facade crate, which re-exports this one.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use std::time::Duration;
//! use waypost_breaker::{CircuitBreakerExt, SimpleCircuitBreaker};
//! use waypost_core_types::CircuitState;
//!
//! let cb = SimpleCircuitBreaker::new(3, Duration::from_secs(5));
//! for _ in 0..3 {
//!     let r = cb.execute(|| async { Err::<(), _>("backend down") }).await;
//!     assert!(!r.unwrap_err().is_rejected()); // it ran, and failed
//! }
//! assert!(cb.is_open());
//! let r = cb.execute(|| async { Ok::<_, &str>("never runs") }).await;
//! assert!(r.unwrap_err().is_rejected());
//!
//! let mut states = cb.subscribe();
//! cb.reset();
//! assert_eq!(*states.borrow_and_update(), CircuitState::Closed);
//! # }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

mod execute;
mod failure_rate;
mod layer;
pub mod metrics;
mod simple;
mod state;
mod stripes;
mod throttle;

pub use execute::{CircuitBreakerExt, Classify, Execute, ExecuteError, FailOnError, PermitGuard};
pub use failure_rate::{FailureRateBreaker, FailureRateBuilder, FailureRateConfig, SlidingWindow};
pub use layer::{CircuitBreakerLayer, CircuitBreakerService, ResponseFuture};
pub use metrics::{describe_metrics, TransitionMetrics};
pub use simple::SimpleCircuitBreaker;
pub use state::StateChange;
pub use throttle::AdaptiveThrottle;
pub use waypost_core_types::{CircuitBreaker, CircuitState, Outcome, Permit};
