//! The phases an announced service goes through, in order.

use std::fmt;

/// Where an [`Announcer`](crate::Announcer) is. Phases only move forward, in this order; a
/// phase can be skipped (no readiness check: no `WaitingReady`; a server that stopped on its
/// own: no `Draining` and no `Stopping`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Phase {
    /// Working out the address; the server is starting.
    Starting,
    /// Registered as `Unhealthy` (never picked), waiting for the readiness check to pass.
    WaitingReady,
    /// Registered and kept alive; callers can reach the service.
    Serving,
    /// A stop was asked for: removing the instance from the registry.
    Deregistering,
    /// Deregistered; still serving while callers' discovery caches notice (the drain delay).
    Draining,
    /// The server was told to stop accepting; in-flight requests finish (up to a deadline).
    Stopping,
    /// Closing the registry.
    Closing,
    /// Done.
    Stopped,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Starting => "starting",
            Phase::WaitingReady => "waiting-ready",
            Phase::Serving => "serving",
            Phase::Deregistering => "deregistering",
            Phase::Draining => "draining",
            Phase::Stopping => "stopping",
            Phase::Closing => "closing",
            Phase::Stopped => "stopped",
        })
    }
}
