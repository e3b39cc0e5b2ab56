//! Passive outlier ejection: one [`SimpleCircuitBreaker`] per instance.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use waypost_breaker::SimpleCircuitBreaker;
use waypost_core_types::{CircuitBreaker, CircuitState, Outcome, Permit, Result};

use crate::metrics::OutlierMetrics;

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
    /// How long an ejected instance gets no traffic before a probe (default 10 s). Zero probes
    /// it again at once (one call at a time until one succeeds); `Duration::MAX` keeps it
    /// ejected for the life of the client.
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

/// FNV-1a: instance ids are short and not chosen by an attacker who could aim at collisions
/// (they come from the registry), and SipHash costs more than the rest of the lookup.
#[derive(Default)]
pub(crate) struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }
}

type Breakers = HashMap<String, Arc<SimpleCircuitBreaker>, BuildHasherDefault<Fnv>>;

/// Per-instance breakers, keyed by instance id: the outlier ejection of a
/// [`ServiceClient`](crate::ServiceClient), public so that other clients (the gRPC channel of
/// `waypost-grpc`) eject instances by the same rules ([`OutlierConfig`]).
///
/// Per attempt: [`ejected`](Self::ejected) lists the instances to put on the balancer's avoid
/// list, [`acquire`](Self::acquire) asks the picked instance's breaker for a permit (refused while
/// it is ejected, or while its one probe is out), and [`InstancePermit::finish`] records how the
/// attempt ended.
///
/// ```
/// use std::time::Duration;
/// use waypost_client::{OutlierConfig, OutlierDetector};
/// use waypost_core_types::{CircuitState, Outcome};
///
/// let detector = OutlierDetector::new(OutlierConfig::new(2, Duration::from_secs(10)));
/// for _ in 0..2 {
///     let permit = detector.acquire("a").expect("not ejected yet");
///     permit.finish(&detector, "a", Outcome::Failure);
/// }
/// assert_eq!(detector.state("a"), CircuitState::Open);
/// assert!(detector.acquire("a").is_err());
/// let mut ejected = Vec::new();
/// detector.ejected(&mut ejected);
/// assert_eq!(ejected, ["a"]);
/// ```
///
/// The map is a copy-on-write snapshot (`ArcSwap`): the per-call reads take no lock and write no
/// shared counter, so calls on different threads do not contend; a new instance copies the map
/// once.
pub struct OutlierDetector {
    config: OutlierConfig,
    breakers: ArcSwap<Breakers>,
    insert: Mutex<()>,
    /// Breakers not closed: while there are none, nothing is ejected and a pick looks at no
    /// breaker but its own.
    not_closed: Arc<AtomicUsize>,
    /// Failures recorded through this detector's permits, ever.
    failures: AtomicU64,
}

/// A permit from one instance's breaker; records [`Outcome::Ignored`] if dropped unfinished.
///
/// While every breaker is closed (the common case), the permit holds no breaker: the outcome is
/// recorded on the breaker found by id when the attempt ends, a read of the map that writes no
/// shared reference count; and a success after a pick that saw no failure to reset, with no
/// failure recorded by any call since, is not recorded at all (it would change nothing). A
/// permit taken while some breaker is not closed (a probe among them) holds its breaker, so a
/// probe's slot is given back even if the call is dropped. (Pruning only drops closed breakers
/// without failures; an outcome recorded on one pruned meanwhile is not carried over.)
pub struct InstancePermit {
    breaker: Option<Arc<SimpleCircuitBreaker>>,
    permit: Option<Permit>,
    /// The detector's failure count when the permit was given, if the breaker then counted no
    /// failure.
    clean_since: Option<u64>,
}

impl InstancePermit {
    /// Records `outcome` for instance `id` (the one the permit was acquired for).
    pub fn finish(mut self, detector: &OutlierDetector, id: &str, outcome: Outcome) {
        let Some(p) = self.permit.take() else {
            return;
        };
        match outcome {
            Outcome::Failure => {
                // Counted before it is recorded: a pick that reads the count after this sees a
                // breaker that may have a failure to reset.
                detector.failures.fetch_add(1, Ordering::AcqRel);
            }
            Outcome::Success | Outcome::Ignored
                if self.breaker.is_none()
                    && self.clean_since == Some(detector.failures.load(Ordering::Acquire)) =>
            {
                // No failure anywhere since the pick, which saw none on this breaker: nothing
                // to reset. (A failure recorded concurrently is ordered after this success.)
                return;
            }
            _ => {}
        }
        // SimpleCircuitBreaker ignores the duration.
        match &self.breaker {
            Some(b) => b.record(p, outcome, Duration::ZERO),
            None => {
                if let Some(b) = detector.breakers.load().get(id) {
                    b.record(p, outcome, Duration::ZERO);
                }
            }
        }
    }
}

impl Drop for InstancePermit {
    fn drop(&mut self) {
        // A permit of a closed breaker given back unused changes nothing (`Ignored` on a closed
        // circuit is not recorded), so only a held breaker needs it.
        if let (Some(b), Some(p)) = (&self.breaker, self.permit.take()) {
            b.record(p, Outcome::Ignored, Duration::ZERO);
        }
    }
}

impl OutlierDetector {
    /// A detector with no instance yet: each instance gets its breaker on its first
    /// [`acquire`](Self::acquire).
    pub fn new(config: OutlierConfig) -> Self {
        OutlierDetector {
            config,
            breakers: ArcSwap::from_pointee(Breakers::default()),
            insert: Mutex::new(()),
            not_closed: Arc::new(AtomicUsize::new(0)),
            failures: AtomicU64::new(0),
        }
    }

    fn insert(&self, service: &str, id: &str) {
        let _one_writer = self.insert.lock();
        let current = self.breakers.load();
        if current.contains_key(id) {
            return;
        }
        let mut map: Breakers = (**current).clone();
        if map.len() >= PRUNE_ABOVE {
            map.retain(|_, b| b.state() != CircuitState::Closed || b.consecutive_failures() > 0);
        }
        let breaker =
            SimpleCircuitBreaker::new(self.config.consecutive_failures, self.config.ejection_time);
        let not_closed = self.not_closed.clone();
        let metrics = OutlierMetrics::new(service, id);
        breaker.on_state_change(move |change| {
            metrics.record(change);
            match (change.from, change.to) {
                (CircuitState::Closed, to) if to != CircuitState::Closed => {
                    not_closed.fetch_add(1, Ordering::AcqRel);
                }
                (from, CircuitState::Closed) if from != CircuitState::Closed => {
                    not_closed.fetch_sub(1, Ordering::AcqRel);
                }
                _ => {}
            };
        });
        map.insert(id.to_owned(), Arc::new(breaker));
        self.breakers.store(Arc::new(map));
    }

    /// Asks instance `id`'s breaker for a permit.
    ///
    /// # Errors
    /// [`Error::CircuitOpen`](waypost_core_types::Error::CircuitOpen) while the instance is
    /// ejected, or while its one probe call is out.
    pub fn acquire(&self, id: &str) -> Result<InstancePermit> {
        self.acquire_for("", id)
    }

    /// [`acquire`](Self::acquire) for instance `id` of `service`: an instance's breaker made by
    /// this call labels its metrics (`waypost_outlier_*`, `waypost_breaker_*`) with `service`
    /// and `id`; one made by [`acquire`](Self::acquire) has an empty `service` label.
    ///
    /// # Errors
    /// As [`acquire`](Self::acquire).
    pub fn acquire_for(&self, service: &str, id: &str) -> Result<InstancePermit> {
        loop {
            if let Some(b) = self.breakers.load().get(id) {
                // Read before the breaker's count (see `InstancePermit::finish`).
                let failures = self.failures.load(Ordering::Acquire);
                let permit = b.try_acquire()?;
                // Read after the permit: zero means the breaker was closed when the permit was
                // given (a probe's permit would have made it at least one until recorded).
                let all_closed = self.not_closed.load(Ordering::Acquire) == 0;
                return Ok(InstancePermit {
                    breaker: (!all_closed).then(|| b.clone()),
                    permit: Some(permit),
                    clean_since: (b.consecutive_failures() == 0).then_some(failures),
                });
            }
            self.insert(service, id);
        }
    }

    /// Adds the ids of the instances that would refuse a call now.
    pub fn ejected(&self, out: &mut Vec<String>) {
        if self.not_closed.load(Ordering::Acquire) == 0 {
            return;
        }
        for (id, b) in self.breakers.load().iter() {
            if !b.admits() {
                out.push(id.clone());
            }
        }
    }

    /// The state of instance `id`'s breaker (`Closed` when it has none yet).
    pub fn state(&self, id: &str) -> CircuitState {
        self.breakers
            .load()
            .get(id)
            .map_or(CircuitState::Closed, |b| b.state())
    }
}

impl fmt::Debug for InstancePermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstancePermit")
            .field("holds_breaker", &self.breaker.is_some())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for OutlierDetector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutlierDetector")
            .field("config", &self.config)
            .field("instances", &self.breakers.load().len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail(d: &OutlierDetector, id: &str) {
        if let Ok(p) = d.acquire(id) {
            p.finish(d, id, Outcome::Failure);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ejected_instances_are_listed_until_they_close_again() {
        let d = OutlierDetector::new(OutlierConfig::new(2, Duration::from_secs(10)));
        let mut out = Vec::new();
        d.acquire("a")
            .expect("closed")
            .finish(&d, "a", Outcome::Success);
        fail(&d, "b");
        d.ejected(&mut out);
        assert!(out.is_empty(), "one failure of two: nothing ejected");
        assert_eq!(d.not_closed.load(Ordering::Acquire), 0);

        fail(&d, "b");
        d.ejected(&mut out);
        assert_eq!(out, ["b"]);
        assert_eq!(d.not_closed.load(Ordering::Acquire), 1);

        // After the ejection time a probe is let through, and its success closes the breaker.
        tokio::time::advance(Duration::from_secs(10)).await;
        out.clear();
        d.ejected(&mut out);
        assert!(out.is_empty(), "b may be probed");
        d.acquire("b")
            .expect("probe")
            .finish(&d, "b", Outcome::Success);
        assert_eq!(d.state("b"), CircuitState::Closed);
        assert_eq!(d.not_closed.load(Ordering::Acquire), 0);

        // And it is listed again when it fails again.
        fail(&d, "b");
        fail(&d, "b");
        d.ejected(&mut out);
        assert_eq!(out, ["b"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_failures_counted_since_its_pick() {
        let d = OutlierDetector::new(OutlierConfig::new(2, Duration::from_secs(10)));
        // Picked while the instance had no failure; a failure is recorded before it ends.
        let early = d.acquire("a").expect("closed");
        fail(&d, "a");
        early.finish(&d, "a", Outcome::Success);
        fail(&d, "a");
        assert_eq!(
            d.state("a"),
            CircuitState::Closed,
            "the success between the two failures reset the count"
        );
        // Picked after a failure.
        let after = d.acquire("a").expect("closed");
        after.finish(&d, "a", Outcome::Success);
        fail(&d, "a");
        assert_eq!(d.state("a"), CircuitState::Closed);
        fail(&d, "a");
        assert_eq!(d.state("a"), CircuitState::Open, "two in a row eject");
    }
}
