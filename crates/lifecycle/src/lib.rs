//! The service lifecycle of waypost: one call joins a service to the fleet and takes it out
//! again without losing a request.
//!
//! An [`Announcer`] registers the service once its listener is bound (the port comes from the
//! listener, the address is worked out as [`address`] says, never `0.0.0.0`), keeps the
//! registration alive on every backend, optionally holds it `Unhealthy` until a readiness
//! check passes, and on SIGTERM or Ctrl-C stops in the order that loses no request:
//!
//! 1. **deregister**, so that callers stop picking this instance;
//! 2. **drain**: keep serving for the drain delay, while callers' discovery caches notice
//!    ([`default_drain_delay`] per backend);
//! 3. **stop accepting** (the [`Stop`] future given to the server completes) and wait for
//!    in-flight requests, up to a deadline;
//! 4. **close** the registry.
//!
//! A second signal stops at once. Each step is logged through `tracing`, can be followed
//! as a [`Phase`], and is shown by the gauge `waypost_lifecycle_phase{service,phase}` (see
//! [`observe`]).
//!
//! Most users want the `waypost` facade, which re-exports this crate as `waypost::lifecycle`
//! (feature `lifecycle`).

pub mod address;
mod announcer;
pub mod observe;
mod phase;
mod run;
#[cfg(feature = "signal")]
mod signal;

pub use address::{AddressSource, Advertised, ADVERTISE_ADDR_ENV};
pub use announcer::{
    default_drain_delay, Announcer, DEFAULT_READINESS_INTERVAL, DEFAULT_RENEW_INTERVAL,
    DEFAULT_STOP_DEADLINE, REGISTRY_CALL_BOUND,
};
pub use observe::describe_metrics;
pub use phase::Phase;
pub use run::Stop;
