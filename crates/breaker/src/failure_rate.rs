//! [`FailureRateBreaker`]: opens when the failure rate or the slow-call rate over a sliding
//! window crosses a threshold.
//!
//! One idea in one file: the failure-rate breaker, its window and its tests.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;
use waypost_core_types::{CircuitBreaker, CircuitState, Error, Outcome, Permit, Result};

use crate::state::{
    circuit_state, count_of, generation_of, nanos, state_of, ticket_of, StateCell, StateChange,
    CLOSED, COUNT_ONE, HALF_OPEN, OPEN,
};
use crate::stripes::{Add, Stripes};

/// The window over which calls are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlidingWindow {
    /// The last `n` calls.
    Count(u32),
    /// The calls of the last period (kept in ten buckets, so a call leaves the window up to a
    /// tenth of the period late).
    Time(Duration),
}

/// Configuration of a [`FailureRateBreaker`]. Start from [`Default`] and change fields, or use
/// [`FailureRateBreaker::builder`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct FailureRateConfig {
    /// The window (default: the last 100 calls).
    pub window: SlidingWindow,
    /// No decision is taken before this many calls are in the window (default 20).
    pub minimum_calls: u32,
    /// Open when failures / calls ≥ this (0 < x ≤ 1, default 0.5).
    pub failure_rate_threshold: f64,
    /// A call that took at least this long is slow (default: none, slow calls are not tracked).
    pub slow_call_duration: Option<Duration>,
    /// Open when slow calls / calls ≥ this (0 < x ≤ 1, default 1.0).
    pub slow_call_rate_threshold: f64,
    /// How long the circuit stays open before probing (default 30 s).
    pub open_timeout: Duration,
    /// How many probe calls run while half-open; once all are back, the circuit closes when
    /// their failure and slow rates are under the thresholds and opens again otherwise
    /// (default 3).
    pub half_open_probes: u32,
}

impl Default for FailureRateConfig {
    fn default() -> Self {
        FailureRateConfig {
            window: SlidingWindow::Count(100),
            minimum_calls: 20,
            failure_rate_threshold: 0.5,
            slow_call_duration: None,
            slow_call_rate_threshold: 1.0,
            open_timeout: Duration::from_secs(30),
            half_open_probes: 3,
        }
    }
}

impl FailureRateConfig {
    /// Checks the values.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a zero-sized window, zero probes, or a rate outside (0, 1].
    pub fn validate(&self) -> Result<()> {
        let rate_ok = |r: f64| r > 0.0 && r <= 1.0;
        match self.window {
            SlidingWindow::Count(0) => {
                return Err(invalid("count window must hold at least 1 call"))
            }
            SlidingWindow::Time(d) if d.is_zero() => {
                return Err(invalid("time window must be longer than zero"))
            }
            _ => {}
        }
        if !rate_ok(self.failure_rate_threshold) {
            return Err(invalid("failure_rate_threshold must be in (0, 1]"));
        }
        if !rate_ok(self.slow_call_rate_threshold) {
            return Err(invalid("slow_call_rate_threshold must be in (0, 1]"));
        }
        if self.half_open_probes == 0 {
            return Err(invalid("half_open_probes must be at least 1"));
        }
        Ok(())
    }
}

fn invalid(msg: &str) -> Error {
    Error::InvalidConfig(format!("failure-rate breaker: {msg}"))
}

/// Builds a [`FailureRateBreaker`].
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct FailureRateBuilder {
    config: FailureRateConfig,
}

impl FailureRateBuilder {
    /// Counts the last `n` calls.
    pub fn count_window(mut self, n: u32) -> Self {
        self.config.window = SlidingWindow::Count(n);
        self
    }

    /// Counts the calls of the last `period` (`Duration::MAX`: every call ever made; zero is
    /// refused by [`build`](Self::build)).
    pub fn time_window(mut self, period: Duration) -> Self {
        self.config.window = SlidingWindow::Time(period);
        self
    }

    /// No decision before `n` calls are in the window.
    pub fn minimum_calls(mut self, n: u32) -> Self {
        self.config.minimum_calls = n;
        self
    }

    /// Opens when the failure rate reaches `rate` (0 < rate ≤ 1).
    pub fn failure_rate_threshold(mut self, rate: f64) -> Self {
        self.config.failure_rate_threshold = rate;
        self
    }

    /// Calls taking at least `duration` are slow; opens when their rate reaches `rate`.
    pub fn slow_calls(mut self, duration: Duration, rate: f64) -> Self {
        self.config.slow_call_duration = Some(duration);
        self.config.slow_call_rate_threshold = rate;
        self
    }

    /// Stays open this long before probing: zero probes at once, `Duration::MAX` never.
    pub fn open_timeout(mut self, timeout: Duration) -> Self {
        self.config.open_timeout = timeout;
        self
    }

    /// Lets `n` probes through while half-open.
    pub fn half_open_probes(mut self, n: u32) -> Self {
        self.config.half_open_probes = n;
        self
    }

    /// Builds the breaker.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] as [`FailureRateConfig::validate`].
    pub fn build(self) -> Result<FailureRateBreaker> {
        FailureRateBreaker::new(self.config)
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    index: u64,
    calls: u32,
    failures: u32,
    slow: u32,
}

#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    calls: u32,
    failures: u32,
    slow: u32,
}

/// The closed-state statistics.
#[derive(Debug)]
enum Window {
    Count {
        ring: Vec<u8>,
        next: usize,
        len: usize,
        totals: Totals,
    },
    Time {
        buckets: Vec<Bucket>,
        width: u64,
    },
}

const FAILED: u8 = 1;
const SLOW: u8 = 2;
const TIME_BUCKETS: u64 = 10;

impl Window {
    fn new(kind: SlidingWindow) -> Self {
        match kind {
            SlidingWindow::Count(n) => Window::Count {
                ring: vec![0; n.max(1) as usize],
                next: 0,
                len: 0,
                totals: Totals::default(),
            },
            SlidingWindow::Time(d) => Window::Time {
                buckets: vec![Bucket::default(); TIME_BUCKETS as usize],
                width: (nanos(d) / TIME_BUCKETS).max(1),
            },
        }
    }

    fn clear(&mut self) {
        match self {
            Window::Count {
                next, len, totals, ..
            } => {
                *next = 0;
                *len = 0;
                *totals = Totals::default();
            }
            Window::Time { buckets, .. } => buckets.fill(Bucket::default()),
        }
    }

    /// The bucket index of `now` (time windows; count windows have one bucket, 0).
    fn bucket_index(&self, now: u64) -> u64 {
        match self {
            Window::Count { .. } => 0,
            Window::Time { width, .. } => now / *width,
        }
    }

    /// Adds `n` plain successes (not failed, not slow) made in bucket `index`, before any call
    /// added after this.
    fn add_successes(&mut self, index: u64, n: u64) {
        if n == 0 {
            return;
        }
        match self {
            Window::Count {
                ring,
                next,
                len,
                totals,
            } => {
                // More than the ring holds leaves only successes in it.
                let n = n.min(ring.len() as u64) as usize;
                for _ in 0..n {
                    if *len == ring.len() {
                        let old = ring[*next];
                        totals.calls -= 1;
                        totals.failures -= u32::from(old & FAILED != 0);
                        totals.slow -= u32::from(old & SLOW != 0);
                    } else {
                        *len += 1;
                    }
                    ring[*next] = 0;
                    *next = (*next + 1) % ring.len();
                    totals.calls += 1;
                }
            }
            Window::Time { buckets, .. } => {
                let slot = &mut buckets[(index % TIME_BUCKETS) as usize];
                if slot.index < index {
                    *slot = Bucket {
                        index,
                        ..Bucket::default()
                    };
                }
                if slot.index == index {
                    let n = u32::try_from(n).unwrap_or(u32::MAX);
                    slot.calls = slot.calls.saturating_add(n);
                }
            }
        }
    }

    /// The totals of the window ending at `now`.
    #[cfg(test)]
    fn totals(&self, now: u64) -> Totals {
        match self {
            Window::Count { totals, .. } => *totals,
            Window::Time { buckets, width } => {
                let index = now / *width;
                let mut t = Totals::default();
                for b in buckets.iter() {
                    if b.index + TIME_BUCKETS > index && b.index <= index {
                        t.calls += b.calls;
                        t.failures += b.failures;
                        t.slow += b.slow;
                    }
                }
                t
            }
        }
    }

    fn add(&mut self, now: u64, flags: u8) -> Totals {
        let failed = u32::from(flags & FAILED != 0);
        let slow = u32::from(flags & SLOW != 0);
        match self {
            Window::Count {
                ring,
                next,
                len,
                totals,
            } => {
                if *len == ring.len() {
                    let old = ring[*next];
                    totals.calls -= 1;
                    totals.failures -= u32::from(old & FAILED != 0);
                    totals.slow -= u32::from(old & SLOW != 0);
                } else {
                    *len += 1;
                }
                ring[*next] = flags;
                *next = (*next + 1) % ring.len();
                totals.calls += 1;
                totals.failures += failed;
                totals.slow += slow;
                *totals
            }
            Window::Time { buckets, width } => {
                let index = now / *width;
                let slot = &mut buckets[(index % TIME_BUCKETS) as usize];
                if slot.index != index {
                    *slot = Bucket {
                        index,
                        ..Bucket::default()
                    };
                }
                slot.calls += 1;
                slot.failures += failed;
                slot.slow += slow;
                let mut t = Totals::default();
                for b in buckets.iter() {
                    if b.index + TIME_BUCKETS > index && b.index <= index {
                        t.calls += b.calls;
                        t.failures += b.failures;
                        t.slow += b.slow;
                    }
                }
                t
            }
        }
    }
}

#[derive(Debug)]
struct Stats {
    window: Window,
    /// The epoch the stripes count plain successes in.
    tag: u32,
    /// The window bucket those successes belong to.
    epoch_bucket: u64,
    /// Generation ticket of the half-open period the probe results belong to.
    probe_ticket: u64,
    probe_results: Totals,
}

/// A breaker that opens on the failure rate (or slow-call rate) over a sliding window, after a
/// minimum number of calls, like resilience4j's.
///
/// While closed, every call is admitted with one atomic load. Once the window holds the minimum
/// number of calls, a plain success (not slow) cannot open the circuit, so it is only counted in
/// a counter of the calling thread's own, and joins the window (in its place, before any later
/// call) when the next failure or slow call is added under a short mutex, or when a time window
/// moves to its next bucket. No lock is ever held while the call runs. Open and half-open behave as in
/// [`SimpleCircuitBreaker`](crate::SimpleCircuitBreaker), except that the half-open verdict waits
/// for all `half_open_probes` probes and compares their rates with the thresholds.
///
/// ```
/// use std::time::Duration;
/// use waypost_breaker::{CircuitBreakerExt, FailureRateBreaker};
///
/// let cb = FailureRateBreaker::builder()
///     .count_window(10)
///     .minimum_calls(4)
///     .failure_rate_threshold(0.5)
///     .build()?;
/// for i in 0..4 {
///     let _ = cb.execute_sync(|| if i % 2 == 0 { Ok(()) } else { Err("boom") });
/// }
/// assert!(cb.is_open()); // 2 failures in 4 calls = 50 %
/// # Ok::<(), waypost_core_types::Error>(())
/// ```
pub struct FailureRateBreaker {
    cell: StateCell,
    config: FailureRateConfig,
    timeout_nanos: u64,
    stats: Mutex<Stats>,
    /// `tag << 32 | generation` while plain successes of that closed generation may be counted
    /// in the stripes' epoch `tag`, [`NO_FAST_PATH`] otherwise.
    fast: AtomicU64,
    /// When the time-window bucket the fast path counts into ends, in clock nanoseconds;
    /// written before `fast` is opened.
    fast_until: AtomicU64,
    /// Pending plain successes per slot at most: a count window's size (more change nothing),
    /// or `u32::MAX` for a time window.
    cap: u32,
    /// A time window's bucket width in nanoseconds; 0 for a count window.
    bucket_width: u64,
    stripes: Stripes<1>,
}

const NO_FAST_PATH: u64 = u64::MAX;

impl FailureRateBreaker {
    /// A builder with the default configuration.
    pub fn builder() -> FailureRateBuilder {
        FailureRateBuilder::default()
    }

    /// A breaker with `config`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] as [`FailureRateConfig::validate`].
    pub fn new(config: FailureRateConfig) -> Result<Self> {
        config.validate()?;
        Ok(FailureRateBreaker {
            cell: StateCell::new(),
            timeout_nanos: nanos(config.open_timeout),
            stats: Mutex::new(Stats {
                window: Window::new(config.window),
                tag: 0,
                epoch_bucket: 0,
                probe_ticket: u64::MAX,
                probe_results: Totals::default(),
            }),
            fast: AtomicU64::new(NO_FAST_PATH),
            fast_until: AtomicU64::new(0),
            cap: match config.window {
                SlidingWindow::Count(n) => n,
                SlidingWindow::Time(_) => u32::MAX,
            },
            bucket_width: match config.window {
                SlidingWindow::Count(_) => 0,
                SlidingWindow::Time(d) => (nanos(d) / TIME_BUCKETS).max(1),
            },
            stripes: Stripes::new(),
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &FailureRateConfig {
        &self.config
    }

    /// Adds a state-change listener, called on the thread that caused the change.
    pub fn on_state_change(&self, listener: impl Fn(StateChange) + Send + Sync + 'static) {
        self.cell.notifier.add_listener(Arc::new(listener));
    }

    /// A `watch` receiver that always holds the latest state.
    pub fn subscribe(&self) -> watch::Receiver<CircuitState> {
        self.cell.notifier.subscribe()
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

    fn flags(&self, outcome: Outcome, elapsed: Duration) -> u8 {
        let mut flags = 0;
        if outcome == Outcome::Failure {
            flags |= FAILED;
        }
        if self
            .config
            .slow_call_duration
            .is_some_and(|slow| elapsed >= slow)
        {
            flags |= SLOW;
        }
        flags
    }

    /// Counts a plain success of closed generation `ticket` without the mutex, if the fast path
    /// is open for it.
    #[inline]
    fn record_fast(&self, ticket: u64) -> bool {
        loop {
            let fast = self.fast.load(Ordering::Acquire);
            if fast == NO_FAST_PATH || fast as u32 != generation_of(ticket) as u32 {
                return false;
            }
            if self.bucket_width != 0
                && self.cell.clock.now_nanos() >= self.fast_until.load(Ordering::Acquire)
            {
                return false;
            }
            match self.stripes.add(0, (fast >> 32) as u32, self.cap) {
                Add::Added => return true,
                // A slot holding a whole count window of successes needs no more.
                Add::Full => return matches!(self.config.window, SlidingWindow::Count(_)),
                Add::Stale => {}
            }
        }
    }

    /// Closes the fast path and ends its epoch; returns the plain successes it counted.
    fn end_epoch(&self, stats: &mut Stats) -> u64 {
        self.fast.store(NO_FAST_PATH, Ordering::Release);
        let next = stats.tag.wrapping_add(1);
        let [n] = self.stripes.retag(stats.tag, next);
        stats.tag = next;
        n
    }

    /// Moves the fast path's successes into the window, in their place before any call added
    /// after this.
    fn drain(&self, stats: &mut Stats) {
        let n = self.end_epoch(stats);
        let at = stats.epoch_bucket;
        stats.window.add_successes(at, n);
    }

    /// Clears the window and closes the fast path (its pending successes are dropped).
    fn clear(&self, stats: &mut Stats) {
        self.end_epoch(stats);
        stats.window.clear();
    }

    fn over_threshold(&self, t: Totals) -> bool {
        let calls = f64::from(t.calls.max(1));
        f64::from(t.failures) / calls >= self.config.failure_rate_threshold
            || (self.config.slow_call_duration.is_some()
                && f64::from(t.slow) / calls >= self.config.slow_call_rate_threshold)
    }
}

impl CircuitBreaker for FailureRateBreaker {
    fn try_acquire(&self) -> Result<Permit> {
        let probes = u64::from(self.config.half_open_probes);
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
                    if count_of(w) >= probes {
                        return Err(Error::CircuitOpen);
                    }
                    if self.cell.cas(w, w + COUNT_ONE) {
                        return Ok(Permit::new(ticket_of(w)));
                    }
                }
            }
        }
    }

    fn record(&self, permit: Permit, outcome: Outcome, elapsed: Duration) {
        let ticket = permit.token();
        if outcome == Outcome::Ignored {
            if state_of(ticket) == HALF_OPEN {
                loop {
                    let w = self.cell.load();
                    if ticket_of(w) != ticket || count_of(w) == 0 {
                        return;
                    }
                    if self.cell.cas(w, w - COUNT_ONE) {
                        return;
                    }
                }
            }
            return;
        }
        let flags = self.flags(outcome, elapsed);
        if flags == 0 && state_of(ticket) == CLOSED && self.record_fast(ticket) {
            return;
        }
        let mut stats = self.stats.lock();
        if ticket_of(self.cell.load()) != ticket {
            return; // a permit from an earlier generation
        }
        match state_of(ticket) {
            CLOSED => {
                let now = self.cell.clock.now_nanos();
                self.drain(&mut stats);
                let totals = stats.window.add(now, flags);
                if totals.calls >= self.config.minimum_calls.max(1) {
                    if self.over_threshold(totals) {
                        self.clear(&mut stats);
                        drop(stats);
                        self.cell.transition(ticket, OPEN);
                        return;
                    }
                    // From here until the bucket ends, a plain success cannot open the circuit.
                    let bucket = stats.window.bucket_index(now);
                    stats.epoch_bucket = bucket;
                    if self.bucket_width != 0 {
                        self.fast_until.store(
                            bucket.saturating_add(1).saturating_mul(self.bucket_width),
                            Ordering::Release,
                        );
                    }
                    let fast = u64::from(stats.tag) << 32 | (generation_of(ticket) as u32 as u64);
                    self.fast.store(fast, Ordering::Release);
                }
            }
            HALF_OPEN => {
                if stats.probe_ticket != ticket {
                    stats.probe_ticket = ticket;
                    stats.probe_results = Totals::default();
                }
                let r = &mut stats.probe_results;
                r.calls += 1;
                r.failures += u32::from(flags & FAILED != 0);
                r.slow += u32::from(flags & SLOW != 0);
                if r.calls >= self.config.half_open_probes {
                    let reopen = self.over_threshold(*r);
                    self.clear(&mut stats);
                    drop(stats);
                    self.cell
                        .transition(ticket, if reopen { OPEN } else { CLOSED });
                }
            }
            _ => {}
        }
    }

    /// The state; an open circuit whose timeout has passed reports `HalfOpen`.
    fn state(&self) -> CircuitState {
        let w = self.cell.load();
        if state_of(w) == OPEN && self.cell.open_elapsed(self.timeout_nanos) {
            return CircuitState::HalfOpen;
        }
        circuit_state(state_of(w))
    }

    fn reset(&self) {
        let mut stats = self.stats.lock();
        self.clear(&mut stats);
        stats.probe_ticket = u64::MAX;
        drop(stats);
        self.cell.reset();
    }
}

impl fmt::Debug for FailureRateBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailureRateBreaker")
            .field("state", &self.state())
            .field("config", &self.config)
            .finish()
    }
}

// Only slow-call tracking needs the call's duration.
crate::execute::inherent_execute!(FailureRateBreaker, |b| b
    .config
    .slow_call_duration
    .is_some());

#[cfg(test)]
mod tests {
    use super::*;

    /// `(calls, failures)` in the window now, the fast path's successes included.
    fn window(cb: &FailureRateBreaker) -> (u32, u32) {
        let mut stats = cb.stats.lock();
        cb.drain(&mut stats);
        let t = stats.window.totals(cb.cell.clock.now_nanos());
        (t.calls, t.failures)
    }

    fn fast_path_open(cb: &FailureRateBreaker) -> bool {
        cb.fast.load(Ordering::Relaxed) != NO_FAST_PATH
    }

    fn call(cb: &FailureRateBreaker, outcome: Outcome, elapsed: Duration) -> bool {
        match cb.try_acquire() {
            Ok(p) => {
                cb.record(p, outcome, elapsed);
                true
            }
            Err(_) => false,
        }
    }

    fn cb(window: SlidingWindow, min: u32, rate: f64) -> FailureRateBreaker {
        FailureRateBreaker::new(FailureRateConfig {
            window,
            minimum_calls: min,
            failure_rate_threshold: rate,
            open_timeout: Duration::from_secs(10),
            ..FailureRateConfig::default()
        })
        .expect("valid")
    }

    #[test]
    fn invalid_config_is_refused() {
        assert!(FailureRateBreaker::builder()
            .count_window(0)
            .build()
            .is_err());
        assert!(FailureRateBreaker::builder()
            .failure_rate_threshold(1.5)
            .build()
            .is_err());
        assert!(FailureRateBreaker::builder()
            .half_open_probes(0)
            .build()
            .is_err());
    }

    #[test]
    fn waits_for_minimum_calls_then_opens_at_the_rate() {
        let cb = cb(SlidingWindow::Count(10), 5, 0.6);
        for _ in 0..4 {
            call(&cb, Outcome::Failure, Duration::ZERO);
        }
        assert_eq!(cb.state(), CircuitState::Closed, "4 calls < minimum 5");
        call(&cb, Outcome::Success, Duration::ZERO); // 4/5 = 80 %
        assert!(cb.is_open());
        assert!(
            !call(&cb, Outcome::Success, Duration::ZERO),
            "refused while open"
        );
    }

    #[test]
    fn count_window_slides() {
        let cb = cb(SlidingWindow::Count(4), 4, 0.5);
        call(&cb, Outcome::Failure, Duration::ZERO);
        for _ in 0..4 {
            call(&cb, Outcome::Success, Duration::ZERO);
        }
        // The failure has left the window: F S S S S -> last four are S S S S.
        call(&cb, Outcome::Failure, Duration::ZERO); // S S S F = 25 %
        assert_eq!(cb.state(), CircuitState::Closed);
        call(&cb, Outcome::Failure, Duration::ZERO); // S S F F = 50 %
        assert!(cb.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn time_window_forgets_old_calls() {
        let cb = cb(SlidingWindow::Time(Duration::from_secs(10)), 4, 0.5);
        for _ in 0..3 {
            call(&cb, Outcome::Failure, Duration::ZERO);
        }
        tokio::time::advance(Duration::from_secs(11)).await;
        call(&cb, Outcome::Failure, Duration::ZERO);
        for _ in 0..3 {
            call(&cb, Outcome::Success, Duration::ZERO);
        }
        // Inside the window: 1 failure in 4 calls.
        assert_eq!(cb.state(), CircuitState::Closed);
        call(&cb, Outcome::Failure, Duration::ZERO);
        call(&cb, Outcome::Failure, Duration::ZERO); // 3 / 6
        assert!(cb.is_open());
    }

    #[test]
    fn slow_calls_open_the_circuit() {
        let cb = FailureRateBreaker::builder()
            .count_window(10)
            .minimum_calls(4)
            .slow_calls(Duration::from_millis(100), 0.75)
            .build()
            .expect("valid");
        for _ in 0..2 {
            call(&cb, Outcome::Success, Duration::from_millis(150));
        }
        call(&cb, Outcome::Success, Duration::from_millis(10));
        assert_eq!(cb.state(), CircuitState::Closed, "3 calls < minimum 4");
        // Exactly the slow threshold counts as slow: 3 slow in 4 = 75 %.
        call(&cb, Outcome::Success, Duration::from_millis(100));
        assert!(cb.is_open(), "slow calls open it even though all succeeded");
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_verdict_waits_for_all_probes() {
        let cb = FailureRateBreaker::builder()
            .count_window(4)
            .minimum_calls(2)
            .failure_rate_threshold(0.5)
            .open_timeout(Duration::from_secs(5))
            .half_open_probes(3)
            .build()
            .expect("valid");
        call(&cb, Outcome::Failure, Duration::ZERO);
        call(&cb, Outcome::Failure, Duration::ZERO);
        assert!(cb.is_open());
        tokio::time::advance(Duration::from_secs(5)).await;
        let probes: Vec<_> = (0..3).map(|_| cb.try_acquire().expect("probe")).collect();
        assert!(cb.try_acquire().is_err(), "only 3 probes");
        let mut it = probes.into_iter();
        cb.record(it.next().unwrap(), Outcome::Failure, Duration::ZERO);
        assert_eq!(
            cb.state(),
            CircuitState::HalfOpen,
            "one failure does not decide"
        );
        cb.record(it.next().unwrap(), Outcome::Success, Duration::ZERO);
        cb.record(it.next().unwrap(), Outcome::Success, Duration::ZERO);
        assert_eq!(cb.state(), CircuitState::Closed, "1 failure in 3 < 50 %");

        call(&cb, Outcome::Failure, Duration::ZERO);
        call(&cb, Outcome::Failure, Duration::ZERO);
        assert!(cb.is_open());
        tokio::time::advance(Duration::from_secs(5)).await;
        for o in [Outcome::Failure, Outcome::Failure, Outcome::Success] {
            let p = cb.try_acquire().expect("probe");
            cb.record(p, o, Duration::ZERO);
        }
        assert!(cb.is_open(), "2 failures in 3 probes reopen");
    }

    #[tokio::test(start_paused = true)]
    async fn execute_times_calls_on_tokio_time() {
        let cb = FailureRateBreaker::builder()
            .count_window(4)
            .minimum_calls(2)
            .slow_calls(Duration::from_millis(100), 1.0)
            .build()
            .expect("valid");
        for _ in 0..2 {
            let r = cb
                .execute(|| async {
                    tokio::time::sleep(Duration::from_millis(150)).await;
                    Ok::<_, ()>(())
                })
                .await;
            assert!(r.is_ok());
        }
        assert!(cb.is_open(), "two slow successes in two calls");
    }

    #[test]
    fn counts_are_exact_across_threads() {
        let cb = Arc::new(cb(SlidingWindow::Count(100_000), 10, 0.5));
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let cb = cb.clone();
                std::thread::spawn(move || {
                    for n in 0..5_000 {
                        let o = if (n + i) % 10 == 0 {
                            Outcome::Failure
                        } else {
                            Outcome::Success
                        };
                        assert!(call(&cb, o, Duration::ZERO));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!(window(&cb), (20_000, 2_000));
        assert_eq!(cb.state(), CircuitState::Closed);
    }

    #[test]
    fn successes_off_the_mutex_keep_their_place_in_a_count_window() {
        let cb = cb(SlidingWindow::Count(4), 4, 0.5);
        for o in [
            Outcome::Failure,
            Outcome::Success,
            Outcome::Success,
            Outcome::Success,
        ] {
            call(&cb, o, Duration::ZERO);
        }
        assert!(fast_path_open(&cb), "warm and under the threshold");
        for _ in 0..1_000 {
            call(&cb, Outcome::Success, Duration::ZERO);
        }
        assert_eq!(window(&cb), (4, 0), "the successes pushed the failure out");
        call(&cb, Outcome::Failure, Duration::ZERO); // S S S F = 25 %
        assert_eq!(cb.state(), CircuitState::Closed);
        call(&cb, Outcome::Success, Duration::ZERO); // S S F S
        call(&cb, Outcome::Failure, Duration::ZERO); // S F S F = 50 %
        assert!(cb.is_open());
    }

    #[test]
    fn below_the_minimum_every_success_is_counted_under_the_mutex() {
        // A success can open the circuit while the window is short of its minimum.
        let cb = cb(SlidingWindow::Count(10), 5, 0.6);
        for _ in 0..4 {
            call(&cb, Outcome::Failure, Duration::ZERO);
        }
        assert!(!fast_path_open(&cb));
        call(&cb, Outcome::Success, Duration::ZERO); // 4 / 5
        assert!(cb.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn time_window_rolls_over_exactly() {
        // Ten buckets of one second.
        let cb = cb(SlidingWindow::Time(Duration::from_secs(10)), 4, 0.5);
        for _ in 0..10 {
            call(&cb, Outcome::Success, Duration::ZERO);
        }
        assert!(fast_path_open(&cb));
        tokio::time::advance(Duration::from_secs(5)).await;
        for _ in 0..9 {
            call(&cb, Outcome::Failure, Duration::ZERO);
        }
        assert_eq!(window(&cb), (19, 9));
        assert_eq!(cb.state(), CircuitState::Closed, "9 / 19");
        tokio::time::advance(Duration::from_millis(5_500)).await; // t = 10.5 s
        assert_eq!(
            window(&cb),
            (9, 9),
            "the first second's successes have left"
        );
        call(&cb, Outcome::Success, Duration::ZERO); // 9 / 10
        assert!(cb.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn fast_successes_in_a_new_bucket_count_in_it() {
        let cb = cb(SlidingWindow::Time(Duration::from_secs(10)), 4, 0.5);
        for _ in 0..10 {
            call(&cb, Outcome::Success, Duration::ZERO);
        }
        tokio::time::advance(Duration::from_secs(9)).await;
        for _ in 0..10 {
            call(&cb, Outcome::Success, Duration::ZERO);
        }
        tokio::time::advance(Duration::from_millis(1_500)).await; // t = 10.5 s
        assert_eq!(
            window(&cb),
            (10, 0),
            "only the successes of second 9 remain"
        );
    }

    #[test]
    fn a_permit_from_an_earlier_generation_never_counts() {
        let cb = cb(SlidingWindow::Count(100), 4, 0.5);
        for _ in 0..4 {
            call(&cb, Outcome::Success, Duration::ZERO);
        }
        let old = cb.try_acquire().expect("closed");
        cb.reset();
        for _ in 0..4 {
            call(&cb, Outcome::Success, Duration::ZERO);
        }
        assert!(fast_path_open(&cb));
        cb.record(old, Outcome::Success, Duration::ZERO);
        assert_eq!(window(&cb), (4, 0));
    }
}
