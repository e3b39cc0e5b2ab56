//! [`AdaptiveThrottle`]: client-side throttling from the Google SRE book.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;
use waypost_core_types::{CircuitBreaker, CircuitState, Error, Outcome, Permit, Result};

use crate::state::{nanos, Clock, Notifier, StateChange};

const BUCKETS: u64 = 10;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    index: u64,
    requests: u64,
    accepts: u64,
}

#[derive(Debug)]
struct Counts {
    buckets: [Bucket; BUCKETS as usize],
    state: CircuitState,
}

/// Adaptive client-side throttling ("Handling Overload", Site Reliability Engineering, ch. 21).
///
/// Over a time window the throttle counts `requests` (every call asked for, including the ones
/// it refused) and `accepts` (calls the backend served: [`Outcome::Success`]). A new call is
/// refused locally with probability
///
/// ```text
/// max(0, (requests − K·accepts) / (requests + 1))
/// ```
///
/// so while the backend accepts at least one call in K nothing is refused, and as it fails more
/// the client sheds load before sending it. K = 2 (the default) is the book's choice; a lower K
/// throttles more aggressively. [`Outcome::Ignored`] removes the request from the counts.
///
/// [`state`](CircuitBreaker::state) is `Closed` while nothing is being refused and `HalfOpen`
/// while some calls are (the probability never reaches 1, so it is never `Open`).
///
/// ```
/// use waypost_breaker::AdaptiveThrottle;
/// use waypost_core_types::{CircuitBreaker, Outcome};
/// use std::time::Duration;
///
/// let t = AdaptiveThrottle::new(2.0, Duration::from_secs(60));
/// for _ in 0..100 {
///     if let Ok(p) = t.try_acquire() {
///         t.record(p, Outcome::Failure, Duration::ZERO);
///     }
/// }
/// assert!(t.rejection_probability() > 0.9);
/// ```
pub struct AdaptiveThrottle {
    k: f64,
    window: Duration,
    width: u64,
    clock: Clock,
    counts: Mutex<Counts>,
    notifier: Notifier,
}

impl AdaptiveThrottle {
    /// A throttle with multiplier `k` (values below 1 are taken as 1) over `window` (counted in
    /// ten buckets). A zero window remembers only the calls of the current nanosecond;
    /// `Duration::MAX` never forgets.
    pub fn new(k: f64, window: Duration) -> Self {
        AdaptiveThrottle {
            k: if k.is_finite() { k.max(1.0) } else { 2.0 },
            window,
            width: (nanos(window) / BUCKETS).max(1),
            clock: Clock::new(),
            counts: Mutex::new(Counts {
                buckets: [Bucket::default(); BUCKETS as usize],
                state: CircuitState::Closed,
            }),
            notifier: Notifier::new(),
        }
    }

    /// The multiplier K.
    pub fn k(&self) -> f64 {
        self.k
    }

    /// The window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Adds a state-change listener, called on the thread that caused the change.
    pub fn on_state_change(&self, listener: impl Fn(StateChange) + Send + Sync + 'static) {
        self.notifier.add_listener(Arc::new(listener));
    }

    /// A `watch` receiver that always holds the latest state.
    pub fn subscribe(&self) -> watch::Receiver<CircuitState> {
        self.notifier.subscribe()
    }

    /// `(requests, accepts)` in the current window.
    pub fn counts(&self) -> (u64, u64) {
        let mut c = self.counts.lock();
        let now = self.index();
        Self::totals(&mut c, now)
    }

    /// The probability that the next call is refused.
    pub fn rejection_probability(&self) -> f64 {
        let (requests, accepts) = self.counts();
        self.probability(requests, accepts)
    }

    fn probability(&self, requests: u64, accepts: u64) -> f64 {
        let r = requests as f64;
        ((r - self.k * accepts as f64) / (r + 1.0)).max(0.0)
    }

    fn index(&self) -> u64 {
        self.clock.now_nanos() / self.width
    }

    fn totals(c: &mut Counts, now: u64) -> (u64, u64) {
        let (mut r, mut a) = (0, 0);
        for b in &c.buckets {
            if b.index + BUCKETS > now && b.index <= now {
                r += b.requests;
                a += b.accepts;
            }
        }
        (r, a)
    }

    fn bucket(c: &mut Counts, now: u64) -> &mut Bucket {
        let b = &mut c.buckets[(now % BUCKETS) as usize];
        if b.index != now {
            *b = Bucket {
                index: now,
                ..Bucket::default()
            };
        }
        b
    }

    /// Updates the reported state; runs listeners after the lock is released.
    fn set_state(&self, mut c: parking_lot::MutexGuard<'_, Counts>, p: f64) {
        let to = if p > 0.0 {
            CircuitState::HalfOpen
        } else {
            CircuitState::Closed
        };
        let from = c.state;
        if from == to {
            return;
        }
        c.state = to;
        self.notifier.publish(to);
        drop(c);
        self.notifier.call_listeners(StateChange {
            from,
            to,
            at: tokio::time::Instant::now(),
        });
    }
}

impl CircuitBreaker for AdaptiveThrottle {
    fn try_acquire(&self) -> Result<Permit> {
        let now = self.index();
        let mut c = self.counts.lock();
        let (requests, accepts) = Self::totals(&mut c, now);
        let p = self.probability(requests, accepts);
        Self::bucket(&mut c, now).requests += 1;
        self.set_state(c, p);
        if p > 0.0 && rand::random::<f64>() < p {
            return Err(Error::CircuitOpen);
        }
        Ok(Permit::new(now))
    }

    fn record(&self, permit: Permit, outcome: Outcome, _elapsed: Duration) {
        let now = self.index();
        let mut c = self.counts.lock();
        match outcome {
            Outcome::Success => Self::bucket(&mut c, now).accepts += 1,
            Outcome::Failure => {}
            Outcome::Ignored => {
                let at = permit.token();
                let b = &mut c.buckets[(at % BUCKETS) as usize];
                if b.index == at {
                    b.requests = b.requests.saturating_sub(1);
                }
            }
        }
        let (requests, accepts) = Self::totals(&mut c, now);
        let p = self.probability(requests, accepts);
        self.set_state(c, p);
    }

    fn state(&self) -> CircuitState {
        if self.rejection_probability() > 0.0 {
            CircuitState::HalfOpen
        } else {
            CircuitState::Closed
        }
    }

    fn reset(&self) {
        let mut c = self.counts.lock();
        c.buckets = [Bucket::default(); BUCKETS as usize];
        self.set_state(c, 0.0);
    }
}

impl fmt::Debug for AdaptiveThrottle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (requests, accepts) = self.counts();
        f.debug_struct("AdaptiveThrottle")
            .field("k", &self.k)
            .field("window", &self.window)
            .field("requests", &requests)
            .field("accepts", &accepts)
            .finish()
    }
}

crate::execute::inherent_execute!(AdaptiveThrottle, |_b| false);

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(t: &AdaptiveThrottle, outcome: Outcome) -> bool {
        match t.try_acquire() {
            Ok(p) => {
                t.record(p, outcome, Duration::ZERO);
                true
            }
            Err(_) => false,
        }
    }

    #[test]
    fn healthy_backend_is_never_throttled() {
        let t = AdaptiveThrottle::new(2.0, Duration::from_secs(60));
        assert!((0..1000).all(|_| attempt(&t, Outcome::Success)));
        assert_eq!(t.rejection_probability(), 0.0);
        assert_eq!(t.state(), CircuitState::Closed);
    }

    #[test]
    fn failing_backend_is_throttled_locally() {
        let t = AdaptiveThrottle::new(2.0, Duration::from_secs(60));
        for _ in 0..100 {
            attempt(&t, Outcome::Failure);
        }
        let sent = (0..1000).filter(|_| attempt(&t, Outcome::Failure)).count();
        assert!(sent < 100, "{sent} of 1000 reached a dead backend");
        assert_eq!(t.state(), CircuitState::HalfOpen);
        assert!(!t.is_open(), "throttling never refuses everything");
    }

    #[test]
    fn formula_uses_k() {
        for (k, expected) in [(2.0, 0.0), (1.0, 50.0 / 101.0), (1.5, 25.0 / 101.0)] {
            let t = AdaptiveThrottle::new(k, Duration::from_secs(60));
            // 100 requests, 50 accepted, driven through the counts directly.
            for i in 0..100 {
                let p = Permit::new(t.index());
                t.counts.lock().buckets[0].requests += 1;
                t.record(
                    p,
                    if i % 2 == 0 {
                        Outcome::Success
                    } else {
                        Outcome::Failure
                    },
                    Duration::ZERO,
                );
            }
            assert_eq!(t.counts(), (100, 50));
            assert!(
                (t.rejection_probability() - expected).abs() < 1e-9,
                "k = {k}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn window_expires() {
        let t = AdaptiveThrottle::new(2.0, Duration::from_secs(10));
        for _ in 0..50 {
            attempt(&t, Outcome::Failure);
        }
        assert!(t.rejection_probability() > 0.9);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(t.rejection_probability(), 0.0);
        assert_eq!(t.state(), CircuitState::Closed);
    }

    #[test]
    fn ignored_calls_do_not_count() {
        let t = AdaptiveThrottle::new(2.0, Duration::from_secs(60));
        for _ in 0..10 {
            attempt(&t, Outcome::Ignored);
        }
        assert_eq!(t.counts(), (0, 0));
    }
}
