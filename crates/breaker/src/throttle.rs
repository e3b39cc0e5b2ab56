//! [`AdaptiveThrottle`]: client-side throttling from the Google SRE book.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};
use tokio::sync::watch;
use waypost_core_types::{CircuitBreaker, CircuitState, Error, Outcome, Permit, Result};

use crate::state::{nanos, Clock, Notifier, StateChange};
use crate::stripes::{Add, Stripes};

const BUCKETS: u64 = 10;

/// Stripe counters.
const REQUESTS: usize = 0;
const ACCEPTS: usize = 1;

/// `fast` when calls must take the mutex.
const SLOW: u64 = u64::MAX;

/// One tenth of the window. The counts of the epochs whose tags run from `first_tag` to
/// `last_tag` (wrapping) are in it, or in the stripes while the last of them is current.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    index: u64,
    requests: u64,
    accepts: u64,
    first_tag: u32,
    last_tag: u32,
}

impl Bucket {
    fn holds(&self, tag: u32) -> bool {
        tag.wrapping_sub(self.first_tag) <= self.last_tag.wrapping_sub(self.first_tag)
    }
}

#[derive(Debug)]
struct Counts {
    buckets: [Bucket; BUCKETS as usize],
    state: CircuitState,
    /// The current epoch: what permits carry and what the stripes count in.
    tag: u32,
    /// The bucket the current epoch counts into.
    epoch_bucket: u64,
}

impl Counts {
    fn new() -> Self {
        Counts {
            buckets: Self::fresh(0, 0),
            state: CircuitState::Closed,
            tag: 0,
            epoch_bucket: 0,
        }
    }

    /// Empty buckets, where bucket `now` holds epoch `tag` and the others hold none (each gets
    /// an index that cannot be its own).
    fn fresh(now: u64, tag: u32) -> [Bucket; BUCKETS as usize] {
        std::array::from_fn(|i| {
            if i as u64 == now % BUCKETS {
                Bucket {
                    index: now,
                    first_tag: tag,
                    last_tag: tag,
                    ..Bucket::default()
                }
            } else {
                Bucket {
                    // (u64::MAX − i) % 10 = (5 − i) mod 10, never i.
                    index: u64::MAX - i as u64,
                    ..Bucket::default()
                }
            }
        })
    }

    /// The bucket that counted epoch `tag`, if it is still kept.
    fn bucket_of(&mut self, tag: u32) -> Option<&mut Bucket> {
        self.buckets
            .iter_mut()
            .enumerate()
            .find(|(i, b)| b.index % BUCKETS == *i as u64 && b.holds(tag))
            .map(|(_, b)| b)
    }

    fn in_window(b: &Bucket, now: u64) -> bool {
        b.index <= now && b.index.saturating_add(BUCKETS) > now
    }
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
/// throttles more aggressively. [`Outcome::Ignored`] removes the request from the counts, and an
/// accept is counted in the ten-bucket window where its request was, so the two leave the window
/// together.
///
/// While nothing could be refused (`requests` stays at most `K·accepts` even if every call in
/// flight fails), a call costs one clock read and two increments of counters of the calling
/// thread's own: no lock and no write shared with other threads. Throttling, the start of a new
/// bucket, and a thread that has used up its share of that headroom take a short mutex.
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
    /// `tag << 32 | share` while calls may skip the mutex (each slot may admit `share` requests
    /// in epoch `tag`), [`SLOW`] otherwise.
    fast: AtomicU64,
    /// When the bucket the fast path counts into ends, in [`Clock`] nanoseconds; written before
    /// `fast` is opened.
    fast_until: AtomicU64,
    stripes: Stripes<2>,
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
            counts: Mutex::new(Counts::new()),
            fast: AtomicU64::new(SLOW),
            fast_until: AtomicU64::new(0),
            stripes: Stripes::new(),
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
        let c = self.counts.lock();
        self.totals(&c, self.index().max(c.epoch_bucket))
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

    /// The counts of the buckets in the window that ends with bucket `now`, the current epoch's
    /// stripes included.
    fn totals(&self, c: &Counts, now: u64) -> (u64, u64) {
        let (mut r, mut a) = (0, 0);
        for b in &c.buckets {
            if Counts::in_window(b, now) {
                r += b.requests;
                a += b.accepts;
            }
        }
        if c.epoch_bucket <= now && c.epoch_bucket.saturating_add(BUCKETS) > now {
            let [sr, sa] = self.stripes.sum(c.tag);
            r += sr;
            a += sa;
        }
        (r, a)
    }

    /// Ends the current epoch: closes the fast path, moves the stripes' counts into the epoch's
    /// bucket, and starts a new epoch counting into bucket `now`.
    fn new_epoch(&self, c: &mut Counts, now: u64) {
        self.fast.store(SLOW, Ordering::Release);
        let next = c.tag.wrapping_add(1);
        let [r, a] = self.stripes.retag(c.tag, next);
        if let Some(b) = c.bucket_of(c.tag) {
            b.requests += r;
            b.accepts += a;
        }
        c.tag = next;
        let i = (now % BUCKETS) as usize;
        let b = &mut c.buckets[i];
        if c.epoch_bucket == now && b.index == now {
            b.last_tag = next;
        } else {
            *b = Bucket {
                index: now,
                requests: 0,
                accepts: 0,
                first_tag: next,
                last_tag: next,
            };
        }
        c.epoch_bucket = now;
        self.fast_until.store(
            now.saturating_add(1).saturating_mul(self.width),
            Ordering::Release,
        );
    }

    /// Opens the fast path when the slots can admit requests that could not be refused: a
    /// request is refused only while `requests > K·accepts`, so `K·accepts − requests` more
    /// requests (accepted or not) keep the probability at zero.
    fn open_fast_path(&self, c: &Counts, requests: u64, accepts: u64) {
        let headroom = self.k * accepts as f64 - requests as f64;
        let share = (headroom / self.stripes.len() as f64).min(f64::from(u32::MAX - 1));
        if share >= 1.0 {
            self.fast
                .store(u64::from(c.tag) << 32 | share as u64, Ordering::Release);
        }
    }

    /// Updates the reported state; runs listeners after the lock is released.
    fn set_state(&self, mut c: MutexGuard<'_, Counts>, p: f64) {
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

    #[cold]
    fn acquire_slow(&self, now: u64) -> Result<Permit> {
        let mut c = self.counts.lock();
        // Another thread may have started a later bucket since `now` was read.
        let now = now.max(c.epoch_bucket);
        // Roll over, or refill the slots' shares.
        self.new_epoch(&mut c, now);
        let (requests, accepts) = self.totals(&c, now);
        let p = self.probability(requests, accepts);
        c.buckets[(now % BUCKETS) as usize].requests += 1;
        let tag = c.tag;
        if p == 0.0 {
            self.open_fast_path(&c, requests + 1, accepts);
        }
        self.set_state(c, p);
        if p > 0.0 && rand::random::<f64>() < p {
            return Err(Error::CircuitOpen);
        }
        Ok(Permit::new(u64::from(tag)))
    }

    #[cold]
    fn record_slow(&self, tag: u32, outcome: Outcome) {
        let mut c = self.counts.lock();
        let now = self.index().max(c.epoch_bucket);
        match outcome {
            Outcome::Success => {
                if let Some(b) = c.bucket_of(tag) {
                    b.accepts += 1;
                }
            }
            Outcome::Failure => {}
            Outcome::Ignored => {
                // The request may still be in the stripes: move it into its bucket first.
                if tag == c.tag {
                    let at = c.epoch_bucket;
                    self.new_epoch(&mut c, at);
                }
                if let Some(b) = c.bucket_of(tag) {
                    b.requests = b.requests.saturating_sub(1);
                }
            }
        }
        let (requests, accepts) = self.totals(&c, now);
        let p = self.probability(requests, accepts);
        self.set_state(c, p);
    }
}

impl CircuitBreaker for AdaptiveThrottle {
    /// While the backend accepts enough calls that none could be refused, a permit costs one
    /// clock read and one increment of this thread's own counter; otherwise (throttling, a new
    /// bucket, a thread that used up its share of the headroom) it is decided under a mutex.
    #[inline]
    fn try_acquire(&self) -> Result<Permit> {
        let nanos = self.clock.now_nanos();
        loop {
            let fast = self.fast.load(Ordering::Acquire);
            // A reading from just before the bucket began (another thread rolled over since)
            // counts in it: the two moments are as good as one.
            if fast == SLOW || nanos >= self.fast_until.load(Ordering::Acquire) {
                break;
            }
            let tag = (fast >> 32) as u32;
            match self.stripes.add(REQUESTS, tag, fast as u32) {
                Add::Added => return Ok(Permit::new(u64::from(tag))),
                Add::Full => break,
                Add::Stale => {}
            }
        }
        self.acquire_slow(nanos / self.width)
    }

    /// An accept is counted in the bucket of its request (so the two leave the window
    /// together); without throttling it is one increment of this thread's own counter.
    #[inline]
    fn record(&self, permit: Permit, outcome: Outcome, _elapsed: Duration) {
        let tag = permit.token() as u32;
        let fast = self.fast.load(Ordering::Acquire);
        if fast != SLOW && (fast >> 32) as u32 == tag {
            match outcome {
                // The fast path admits only requests that, even if they all fail, leave the
                // probability at zero: within its bucket a failure changes nothing.
                Outcome::Failure => {
                    if self.clock.now_nanos() < self.fast_until.load(Ordering::Acquire) {
                        return;
                    }
                }
                Outcome::Success => {
                    if self.stripes.add(ACCEPTS, tag, u32::MAX) == Add::Added {
                        return;
                    }
                }
                Outcome::Ignored => {}
            }
        }
        self.record_slow(tag, outcome);
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
        let now = self.index().max(c.epoch_bucket);
        self.new_epoch(&mut c, now);
        // Forget every epoch: permits issued before the reset find no bucket.
        c.buckets = Counts::fresh(now, c.tag);
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
                let p = {
                    let mut c = t.counts.lock();
                    let i = (c.epoch_bucket % BUCKETS) as usize;
                    c.buckets[i].requests += 1;
                    Permit::new(u64::from(c.tag))
                };
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

    #[test]
    fn counts_are_exact_across_threads() {
        let t = Arc::new(AdaptiveThrottle::new(2.0, Duration::from_secs(3600)));
        // A history first: with none, a request in flight on one thread (counted, not yet
        // accepted) is enough for another thread's request to be refused at random.
        for _ in 0..100 {
            assert!(attempt(&t, Outcome::Success));
        }
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for n in 0..5_000 {
                        // One call in ten fails: far from throttling at K = 2.
                        let o = if (n + i) % 10 == 0 {
                            Outcome::Failure
                        } else {
                            Outcome::Success
                        };
                        assert!(attempt(&t, o), "nothing is refused");
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().expect("thread");
        }
        assert_eq!(t.counts(), (20_100, 18_100));
        assert!(
            t.fast.load(Ordering::Relaxed) != SLOW,
            "a healthy backend is served without the mutex"
        );
    }

    #[test]
    fn the_fast_path_never_admits_past_the_formula() {
        // After 40 accepted calls at K = 2 the headroom is 80 − 41: every request up to the
        // 80th is admitted without a draw, then failures push the probability above zero.
        let t = AdaptiveThrottle::new(2.0, Duration::from_secs(3600));
        for _ in 0..40 {
            assert!(attempt(&t, Outcome::Success));
        }
        for _ in 0..40 {
            assert!(attempt(&t, Outcome::Failure), "requests ≤ 2 · accepts");
        }
        assert_eq!(t.counts(), (80, 40));
        assert_eq!(t.rejection_probability(), 0.0);
        assert_eq!(t.state(), CircuitState::Closed);
        attempt(&t, Outcome::Failure);
        assert!(t.rejection_probability() > 0.0);
        assert_eq!(*t.subscribe().borrow(), CircuitState::HalfOpen);
    }

    #[tokio::test(start_paused = true)]
    async fn buckets_roll_over_exactly() {
        // Ten buckets of one second.
        let t = AdaptiveThrottle::new(2.0, Duration::from_secs(10));
        for _ in 0..100 {
            attempt(&t, Outcome::Success);
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        for _ in 0..50 {
            attempt(&t, Outcome::Success);
        }
        attempt(&t, Outcome::Failure);
        assert_eq!(t.counts(), (151, 150));
        tokio::time::advance(Duration::from_millis(5_500)).await; // t = 10.5 s
        assert_eq!(t.counts(), (51, 50), "the first second has left the window");
        tokio::time::advance(Duration::from_secs(5)).await; // t = 15.5 s
        assert_eq!(t.counts(), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn an_accept_counts_in_the_bucket_of_its_request() {
        let t = AdaptiveThrottle::new(2.0, Duration::from_secs(10));
        for _ in 0..100 {
            attempt(&t, Outcome::Success);
        }
        let slow_call = t.try_acquire().expect("admitted");
        tokio::time::advance(Duration::from_secs(3)).await;
        t.record(slow_call, Outcome::Success, Duration::ZERO);
        assert_eq!(t.counts(), (101, 101));
        tokio::time::advance(Duration::from_millis(7_500)).await; // t = 10.5 s
        assert_eq!(t.counts(), (0, 0), "request and accept leave together");
        let late = t.try_acquire().expect("admitted");
        tokio::time::advance(Duration::from_secs(11)).await;
        t.record(late, Outcome::Success, Duration::ZERO);
        assert_eq!(
            t.counts(),
            (0, 0),
            "an accept after its request expired is dropped"
        );
    }

    #[test]
    fn ignored_after_the_fast_path_removes_its_request() {
        let t = AdaptiveThrottle::new(2.0, Duration::from_secs(60));
        for _ in 0..100 {
            attempt(&t, Outcome::Success);
        }
        let p = t.try_acquire().expect("admitted");
        assert_eq!(t.counts(), (101, 100));
        t.record(p, Outcome::Ignored, Duration::ZERO);
        assert_eq!(t.counts(), (100, 100));
        assert!(attempt(&t, Outcome::Success));
        assert_eq!(t.counts(), (101, 101));
    }

    #[test]
    fn permits_from_before_a_reset_count_nothing() {
        let t = AdaptiveThrottle::new(2.0, Duration::from_secs(60));
        for _ in 0..100 {
            attempt(&t, Outcome::Failure);
        }
        let p = t.try_acquire();
        t.reset();
        assert_eq!(t.counts(), (0, 0));
        assert_eq!(t.state(), CircuitState::Closed);
        if let Ok(p) = p {
            t.record(p, Outcome::Success, Duration::ZERO);
        }
        assert_eq!(t.counts(), (0, 0));
    }
}
