//! The [`CircuitBreaker`] trait.

use std::fmt;
use std::time::Duration;

use crate::{Outcome, Result};

/// The state of a circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CircuitState {
    /// Calls run normally.
    Closed,
    /// Calls are refused without running.
    Open,
    /// A bounded number of probe calls run to test recovery.
    HalfOpen,
}

impl fmt::Display for CircuitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half-open",
        })
    }
}

/// Permission to run one call through a breaker; hand it back with
/// [`CircuitBreaker::record`].
#[derive(Debug)]
#[must_use = "a permit must be handed back with CircuitBreaker::record"]
pub struct Permit {
    token: u64,
}

impl Permit {
    /// A permit carrying a breaker-defined token (a generation, a probe flag).
    pub fn new(token: u64) -> Self {
        Permit { token }
    }

    /// The breaker-defined token.
    pub fn token(&self) -> u64 {
        self.token
    }
}

/// A circuit breaker, in the permit form that works as a trait object: ask for a permit, run the
/// call *without any lock held*, record the outcome. The breaker crate adds `execute`-style
/// helpers on top.
pub trait CircuitBreaker: Send + Sync + fmt::Debug {
    /// Asks to run one call.
    ///
    /// # Errors
    /// [`Error::CircuitOpen`](crate::Error::CircuitOpen) when the call must not run (open, or
    /// half-open with every probe slot taken, or throttled).
    fn try_acquire(&self) -> Result<Permit>;

    /// Reports how the call admitted by `permit` ended and how long it took.
    fn record(&self, permit: Permit, outcome: Outcome, elapsed: Duration);

    /// The current state.
    fn state(&self) -> CircuitState;

    /// Whether calls are being refused.
    fn is_open(&self) -> bool {
        self.state() == CircuitState::Open
    }

    /// Closes the breaker and forgets its history.
    fn reset(&self);
}
