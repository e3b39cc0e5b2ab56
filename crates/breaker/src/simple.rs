//! [`SimpleCircuitBreaker`]: opens after a number of consecutive failures.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use waypost_core_types::{CircuitBreaker, CircuitState, Error, Outcome, Permit, Result};

use crate::state::{
    circuit_state, count_of, nanos, state_of, ticket_of, StateCell, StateChange, CLOSED, COUNT_ONE,
    HALF_OPEN, OPEN,
};

/// The Laravel-Go module's consecutive-failure breaker, with a real half-open state.
///
/// * **Closed**: calls run; `threshold` failures in a row open the circuit (a success resets the
///   count).
/// * **Open**: calls are refused with [`Error::CircuitOpen`] without running.
/// * **Half-open**, once `timeout` has passed: up to `probes` calls (default 1) run at the same
///   time; the first probe that succeeds closes the circuit, a probe that fails opens it again
///   for another `timeout`. Further callers are refused while the probe slots are taken.
///
/// The state lives in one atomic word: the closed-state path is two atomic loads, and no lock is
/// held while the protected call runs. Time is tokio time, so tests can use paused time.
///
/// ```
/// use std::time::Duration;
/// use waypost_breaker::{CircuitBreakerExt, SimpleCircuitBreaker};
///
/// let cb = SimpleCircuitBreaker::new(3, Duration::from_secs(5));
/// let mut runs = 0;
/// for _ in 0..4 {
///     let _ = cb.execute_sync(|| {
///         runs += 1;
///         Err::<(), _>("boom")
///     });
/// }
/// assert_eq!(runs, 3); // the 4th call was refused without running
/// assert!(cb.is_open());
/// cb.reset();
/// assert!(!cb.is_open());
/// ```
pub struct SimpleCircuitBreaker {
    cell: StateCell,
    threshold: u64,
    timeout: Duration,
    timeout_nanos: u64,
    probes: u64,
}

impl SimpleCircuitBreaker {
    /// A breaker that opens after `threshold` consecutive failures (0 is taken as 1) and probes
    /// again after `timeout`, one probe at a time. A zero `timeout` probes at once;
    /// `Duration::MAX` never probes (the breaker stays open until [`reset`](CircuitBreaker::reset)).
    pub fn new(threshold: u32, timeout: Duration) -> Self {
        SimpleCircuitBreaker {
            cell: StateCell::new(),
            threshold: u64::from(threshold.max(1)),
            timeout,
            timeout_nanos: nanos(timeout),
            probes: 1,
        }
    }

    /// How many probe calls may run at once while half-open (0 is taken as 1).
    #[must_use]
    pub fn with_half_open_probes(mut self, probes: u32) -> Self {
        self.probes = u64::from(probes.max(1));
        self
    }

    /// Calls `listener` on every state change, on the thread that caused it. Keep it short; it
    /// may call back into the breaker.
    #[must_use]
    pub fn with_listener(self, listener: impl Fn(StateChange) + Send + Sync + 'static) -> Self {
        self.on_state_change(listener);
        self
    }

    /// Adds a state-change listener (see [`with_listener`](Self::with_listener)).
    pub fn on_state_change(&self, listener: impl Fn(StateChange) + Send + Sync + 'static) {
        self.cell.notifier.add_listener(Arc::new(listener));
    }

    /// A `watch` receiver that always holds the latest state; `changed().await` wakes on every
    /// transition.
    pub fn subscribe(&self) -> watch::Receiver<CircuitState> {
        self.cell.notifier.subscribe()
    }

    /// The consecutive-failure threshold.
    pub fn threshold(&self) -> u32 {
        u32::try_from(self.threshold).unwrap_or(u32::MAX)
    }

    /// How long the circuit stays open before probing.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Consecutive failures counted so far while closed.
    pub fn consecutive_failures(&self) -> u32 {
        let w = self.cell.load();
        if state_of(w) == CLOSED {
            u32::try_from(count_of(w)).unwrap_or(u32::MAX)
        } else {
            0
        }
    }

    /// The current state (also available through [`CircuitBreaker::state`]).
    pub fn state(&self) -> CircuitState {
        CircuitBreaker::state(self)
    }

    /// Whether calls are being refused right now.
    pub fn is_open(&self) -> bool {
        CircuitBreaker::is_open(self)
    }

    /// Closes the breaker and forgets its history.
    pub fn reset(&self) {
        CircuitBreaker::reset(self)
    }

    /// Whether a call asked for now would be admitted (a snapshot; another caller may take the
    /// last probe slot first). Used for outlier ejection.
    pub fn admits(&self) -> bool {
        let w = self.cell.load();
        match state_of(w) {
            CLOSED => true,
            OPEN => self.cell.open_elapsed(self.timeout_nanos),
            _ => count_of(w) < self.probes,
        }
    }
}

impl CircuitBreaker for SimpleCircuitBreaker {
    fn try_acquire(&self) -> Result<Permit> {
        loop {
            let w = self.cell.load();
            match state_of(w) {
                CLOSED => return Ok(Permit::new(ticket_of(w))),
                OPEN => {
                    if !self.cell.open_elapsed(self.timeout_nanos) {
                        return Err(Error::CircuitOpen);
                    }
                    self.cell.transition(ticket_of(w), HALF_OPEN);
                }
                _ => {
                    if count_of(w) >= self.probes {
                        return Err(Error::CircuitOpen);
                    }
                    if self.cell.cas(w, w + COUNT_ONE) {
                        return Ok(Permit::new(ticket_of(w)));
                    }
                }
            }
        }
    }

    fn record(&self, permit: Permit, outcome: Outcome, _elapsed: Duration) {
        let ticket = permit.token();
        match (state_of(ticket), outcome) {
            (CLOSED, Outcome::Success) => loop {
                let w = self.cell.load();
                // Read-only when there is nothing to reset: no shared cache-line writes on the
                // common path.
                if ticket_of(w) != ticket || count_of(w) == 0 {
                    return;
                }
                if self.cell.cas(w, ticket) {
                    return;
                }
            },
            (CLOSED, Outcome::Failure) => loop {
                let w = self.cell.load();
                if ticket_of(w) != ticket {
                    return;
                }
                if count_of(w) + 1 >= self.threshold {
                    self.cell.transition(ticket, OPEN);
                    return;
                }
                if self.cell.cas(w, w + COUNT_ONE) {
                    return;
                }
            },
            (HALF_OPEN, Outcome::Success) => {
                self.cell.transition(ticket, CLOSED);
            }
            (HALF_OPEN, Outcome::Failure) => {
                self.cell.transition(ticket, OPEN);
            }
            (HALF_OPEN, Outcome::Ignored) => loop {
                // The probe told nothing: give its slot back.
                let w = self.cell.load();
                if ticket_of(w) != ticket || count_of(w) == 0 {
                    return;
                }
                if self.cell.cas(w, w - COUNT_ONE) {
                    return;
                }
            },
            _ => {}
        }
    }

    /// The state; an open circuit whose timeout has passed reports `HalfOpen` (the next call is
    /// a probe).
    fn state(&self) -> CircuitState {
        let w = self.cell.load();
        if state_of(w) == OPEN && self.cell.open_elapsed(self.timeout_nanos) {
            return CircuitState::HalfOpen;
        }
        circuit_state(state_of(w))
    }

    fn reset(&self) {
        self.cell.reset();
    }
}

impl fmt::Debug for SimpleCircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimpleCircuitBreaker")
            .field("state", &self.state())
            .field("threshold", &self.threshold)
            .field("timeout", &self.timeout)
            .field("probes", &self.probes)
            .finish()
    }
}

crate::execute::inherent_execute!(SimpleCircuitBreaker, |_b| false);

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Barrier, Mutex};

    /// Port of the Go module's TestCircuitBreaker.
    #[test]
    fn go_test_circuit_breaker() {
        let cb = SimpleCircuitBreaker::new(3, Duration::from_secs(5));
        let runs = AtomicU32::new(0);
        let mut results = Vec::new();
        for _ in 0..4 {
            results.push(cb.execute_sync(|| {
                runs.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>("failure")
            }));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 3, "the 4th call must not run");
        assert!(results[..3]
            .iter()
            .all(|r| matches!(r, Err(ExecuteError::Failed(_)))));
        assert!(matches!(
            results[3],
            Err(ExecuteError::Rejected(Error::CircuitOpen))
        ));
        assert!(cb.is_open());
        assert_eq!(cb.state(), CircuitState::Open);

        cb.reset();
        assert!(!cb.is_open());
        assert_eq!(cb.state(), CircuitState::Closed);
        assert!(cb.execute_sync(|| Ok::<_, ()>(7)).is_ok());
    }

    use crate::ExecuteError;

    #[test]
    fn a_success_resets_the_consecutive_count() {
        let cb = SimpleCircuitBreaker::new(3, Duration::from_secs(5));
        for ok in [false, false, true, false, false] {
            let _ = cb.execute_sync(|| if ok { Ok(()) } else { Err(()) });
        }
        assert_eq!(cb.state(), CircuitState::Closed);
        assert_eq!(cb.consecutive_failures(), 2);
        let _ = cb.execute_sync(|| Err::<(), _>(()));
        assert!(cb.is_open());
    }

    fn open(cb: &SimpleCircuitBreaker) {
        for _ in 0..cb.threshold() {
            let _ = cb.execute_sync(|| Err::<(), _>(()));
        }
        assert!(cb.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_after_timeout_admits_one_probe_and_success_closes() {
        let cb = SimpleCircuitBreaker::new(2, Duration::from_secs(5));
        open(&cb);
        tokio::time::advance(Duration::from_millis(4_999)).await;
        assert!(cb.try_acquire().is_err(), "still open before the timeout");
        assert_eq!(cb.state(), CircuitState::Open);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(cb.state(), CircuitState::HalfOpen);

        let probe = cb.try_acquire().expect("one probe after the timeout");
        assert!(
            matches!(cb.try_acquire(), Err(Error::CircuitOpen)),
            "a second caller is refused while the probe runs"
        );
        cb.record(probe, Outcome::Success, Duration::ZERO);
        assert_eq!(cb.state(), CircuitState::Closed);
        assert!(cb.try_acquire().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn probe_failure_reopens_for_another_timeout() {
        let cb = SimpleCircuitBreaker::new(1, Duration::from_secs(5));
        open(&cb);
        tokio::time::advance(Duration::from_secs(5)).await;
        let probe = cb.try_acquire().expect("probe");
        cb.record(probe, Outcome::Failure, Duration::ZERO);
        assert_eq!(cb.state(), CircuitState::Open);
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(cb.try_acquire().is_err(), "the timeout starts again");
        tokio::time::advance(Duration::from_secs(1)).await;
        let probe = cb.try_acquire().expect("second probe");
        cb.record(probe, Outcome::Success, Duration::ZERO);
        assert!(!cb.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_probe_gives_its_slot_back() {
        let cb = SimpleCircuitBreaker::new(1, Duration::from_secs(1));
        open(&cb);
        tokio::time::advance(Duration::from_secs(1)).await;
        let stalled = cb.execute(|| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<(), ()>(())
        });
        let r = tokio::time::timeout(Duration::from_millis(10), stalled).await;
        assert!(r.is_err(), "the probe was cancelled");
        assert_eq!(cb.state(), CircuitState::HalfOpen);
        let probe = cb.try_acquire().expect("the slot was released");
        cb.record(probe, Outcome::Success, Duration::ZERO);
        assert_eq!(cb.state(), CircuitState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn bounded_probes() {
        let cb = SimpleCircuitBreaker::new(1, Duration::from_secs(1)).with_half_open_probes(2);
        open(&cb);
        tokio::time::advance(Duration::from_secs(1)).await;
        let a = cb.try_acquire().expect("probe 1");
        let b = cb.try_acquire().expect("probe 2");
        assert!(cb.try_acquire().is_err());
        assert!(!cb.admits());
        cb.record(a, Outcome::Ignored, Duration::ZERO);
        assert!(cb.admits());
        let c = cb.try_acquire().expect("slot freed by the ignored probe");
        cb.record(b, Outcome::Success, Duration::ZERO);
        // `c` belongs to the half-open generation that just ended: it changes nothing.
        cb.record(c, Outcome::Failure, Duration::ZERO);
        assert_eq!(cb.state(), CircuitState::Closed);
        assert_eq!(cb.consecutive_failures(), 0);
    }

    #[test]
    fn stale_permit_after_reset_is_ignored() {
        let cb = SimpleCircuitBreaker::new(2, Duration::from_secs(1));
        let old = cb.try_acquire().expect("closed");
        let _ = cb.execute_sync(|| Err::<(), _>(()));
        cb.reset();
        cb.record(old, Outcome::Failure, Duration::ZERO);
        assert_eq!(cb.consecutive_failures(), 0);
    }

    #[test]
    fn concurrent_callers_get_exactly_n_probes() {
        const THREADS: usize = 8;
        for probes in [1_u32, 3] {
            let cb = SimpleCircuitBreaker::new(1, Duration::from_millis(20))
                .with_half_open_probes(probes);
            for _round in 0..10 {
                cb.reset();
                open(&cb);
                std::thread::sleep(Duration::from_millis(25));
                let barrier = Barrier::new(THREADS);
                let admitted = Mutex::new(Vec::new());
                std::thread::scope(|s| {
                    for _ in 0..THREADS {
                        s.spawn(|| {
                            barrier.wait();
                            if let Ok(p) = cb.try_acquire() {
                                admitted.lock().unwrap().push(p);
                            }
                        });
                    }
                });
                let admitted = admitted.into_inner().unwrap();
                assert_eq!(admitted.len(), probes as usize);
                for p in admitted {
                    cb.record(p, Outcome::Ignored, Duration::ZERO);
                }
            }
        }
    }

    #[test]
    fn concurrent_failures_are_all_counted() {
        let cb = SimpleCircuitBreaker::new(1_000, Duration::from_secs(60));
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..200 {
                        let _ = cb.execute_sync(|| Err::<(), _>(()));
                    }
                });
            }
        });
        assert_eq!(cb.consecutive_failures(), 800);
        assert!(!cb.is_open());
        for _ in 0..200 {
            let _ = cb.execute_sync(|| Err::<(), _>(()));
        }
        assert!(cb.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn state_changes_are_observable() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let cb = SimpleCircuitBreaker::new(1, Duration::from_secs(1))
            .with_listener(move |c| log.lock().unwrap().push((c.from, c.to)));
        let mut rx = cb.subscribe();
        assert_eq!(*rx.borrow_and_update(), CircuitState::Closed);
        open(&cb);
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), CircuitState::Open);
        tokio::time::advance(Duration::from_secs(1)).await;
        let p = cb.try_acquire().expect("probe");
        assert_eq!(*rx.borrow_and_update(), CircuitState::HalfOpen);
        cb.record(p, Outcome::Success, Duration::ZERO);
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow_and_update(), CircuitState::Closed);
        use CircuitState::*;
        assert_eq!(
            *seen.lock().unwrap(),
            vec![(Closed, Open), (Open, HalfOpen), (HalfOpen, Closed)]
        );
    }
}
