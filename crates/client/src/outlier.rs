//! Passive outlier ejection: one [`SimpleCircuitBreaker`] per instance.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use waypost_breaker::{PermitGuard, SimpleCircuitBreaker};
use waypost_core_types::{CircuitState, Result};

/// How instances are ejected.
///
/// An instance that fails `consecutive_failures` calls in a row (transport errors, timeouts,
/// 5xx) is ejected: the client adds it to the balancer's avoid list for `ejection_time`, then
/// sends it one probe call; a success brings it back, a failure ejects it again.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutlierConfig {
    /// Consecutive failures that eject an instance (default 5).
    pub consecutive_failures: u32,
    /// How long an ejected instance gets no traffic before a probe (default 10 s).
    pub ejection_time: Duration,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_failures: 5,
            ejection_time: Duration::from_secs(10),
        }
    }
}

impl OutlierConfig {
    /// Ejects after `consecutive_failures` for `ejection_time`.
    pub fn new(consecutive_failures: u32, ejection_time: Duration) -> Self {
        OutlierConfig {
            consecutive_failures,
            ejection_time,
        }
    }
}

/// Entries kept before closed, failure-free breakers of vanished instances are pruned.
const PRUNE_ABOVE: usize = 4096;

pub(crate) type InstancePermit = PermitGuard<Arc<SimpleCircuitBreaker>>;

/// Per-instance breakers, keyed by instance id.
pub(crate) struct OutlierDetector {
    config: OutlierConfig,
    breakers: RwLock<HashMap<String, Arc<SimpleCircuitBreaker>>>,
}

impl OutlierDetector {
    pub(crate) fn new(config: OutlierConfig) -> Self {
        OutlierDetector {
            config,
            breakers: RwLock::new(HashMap::new()),
        }
    }

    fn breaker(&self, id: &str) -> Arc<SimpleCircuitBreaker> {
        if let Some(b) = self.breakers.read().get(id) {
            return b.clone();
        }
        let mut map = self.breakers.write();
        if map.len() >= PRUNE_ABOVE {
            map.retain(|_, b| b.state() != CircuitState::Closed || b.consecutive_failures() > 0);
        }
        map.entry(id.to_owned())
            .or_insert_with(|| {
                Arc::new(SimpleCircuitBreaker::new(
                    self.config.consecutive_failures,
                    self.config.ejection_time,
                ))
            })
            .clone()
    }

    /// Asks instance `id`'s breaker for a permit.
    pub(crate) fn acquire(&self, id: &str) -> Result<InstancePermit> {
        // SimpleCircuitBreaker ignores `elapsed`: skip the clock.
        PermitGuard::acquire_untimed(self.breaker(id))
    }

    /// Ids of the instances that would refuse a call now.
    pub(crate) fn ejected(&self, out: &mut Vec<String>) {
        for (id, b) in self.breakers.read().iter() {
            if !b.admits() {
                out.push(id.clone());
            }
        }
    }

    /// The state of instance `id`'s breaker (`Closed` when it has none yet).
    pub(crate) fn state(&self, id: &str) -> CircuitState {
        self.breakers
            .read()
            .get(id)
            .map_or(CircuitState::Closed, |b| b.state())
    }
}

impl fmt::Debug for OutlierDetector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutlierDetector")
            .field("config", &self.config)
            .field("instances", &self.breakers.read().len())
            .finish()
    }
}
