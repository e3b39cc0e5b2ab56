//! [`RetryBudget`]: a token budget that caps retries at a share of requests.

use std::fmt;
use std::time::Duration;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;

use parking_lot::Mutex;
use tokio::time::Instant;

const BUCKETS: u64 = 10;

/// One tenth of the window. A deposit is one atomic add on the current bucket's counter of the
/// calling thread's stripe; the mutex is taken only to move a bucket on to a new period and to
/// withdraw.
#[derive(Debug)]
struct Bucket {
    index: AtomicU64,
    /// Requests counted, striped: calls on different threads write different cache lines.
    deposits: Box<[Stripe]>,
    withdrawals: AtomicU64,
}

/// One deposit counter on its own cache-line pair (adjacent-line prefetch pairs lines on x86).
#[repr(align(128))]
#[derive(Debug, Default)]
struct Stripe(AtomicU64);

/// Stripes per bucket, at most.
const MAX_STRIPES: usize = 16;

static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's stripe (modulo the stripe count).
    static STRIPE: usize = NEXT_STRIPE.fetch_add(1, Ordering::Relaxed);
}

impl Bucket {
    fn new() -> Self {
        // Asked once: on Linux the answer reads cgroup files.
        static STRIPES: OnceLock<usize> = OnceLock::new();
        let n = *STRIPES.get_or_init(|| {
            let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
            (cores * 2).next_power_of_two().clamp(2, MAX_STRIPES)
        });
        Bucket {
            index: AtomicU64::new(0),
            deposits: (0..n).map(|_| Stripe::default()).collect(),
            withdrawals: AtomicU64::new(0),
        }
    }

    /// Counts one request on this thread's stripe.
    fn deposit(&self) {
        let i = STRIPE.try_with(|s| *s).unwrap_or(0) & (self.deposits.len() - 1);
        self.deposits[i].0.fetch_add(1, Ordering::Relaxed);
    }

    fn deposits(&self) -> u64 {
        self.deposits
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .sum()
    }

    fn clear(&self) {
        for s in self.deposits.iter() {
            s.0.store(0, Ordering::Relaxed);
        }
        self.withdrawals.store(0, Ordering::Relaxed);
    }
}

/// A retry budget in the manner of Finagle's and Linkerd's: over a sliding `ttl`, retries may
/// reach `percent_can_retry` of requests, plus `min_retries_per_sec` so that low-traffic clients
/// can still retry. When a whole service is down, every request fails, and retries are capped
/// instead of multiplying the load by the retry count.
///
/// ```
/// use std::time::Duration;
/// use waypost_client::RetryBudget;
///
/// let budget = RetryBudget::new(Duration::from_secs(10), 0, 0.2);
/// for _ in 0..10 {
///     budget.deposit(); // ten requests
/// }
/// assert!(budget.try_withdraw()); // 20 % of 10 = two retries
/// assert!(budget.try_withdraw());
/// assert!(!budget.try_withdraw());
/// ```
pub struct RetryBudget {
    ttl: Duration,
    min_retries_per_sec: u32,
    percent_can_retry: f64,
    width: u64,
    epoch: Instant,
    buckets: [Bucket; BUCKETS as usize],
    /// Serializes bucket rotation and withdrawals.
    lock: Mutex<()>,
}

impl Default for RetryBudget {
    /// Finagle's defaults: 10 s window, 10 retries per second, 20 % of requests.
    fn default() -> Self {
        RetryBudget::new(Duration::from_secs(10), 10, 0.2)
    }
}

impl RetryBudget {
    /// A budget over `ttl` (counted in ten buckets) allowing `percent_can_retry` (0–1000 %,
    /// given as 0.0–10.0) of requests as retries plus `min_retries_per_sec`.
    ///
    /// A `ttl` below 10 ms (zero included) is raised to 10 ms. `Duration::MAX` is accepted: the
    /// window then never slides (it counts every request since the budget was made), and a
    /// `min_retries_per_sec` above zero makes the reserve unbounded, so retries are never
    /// refused.
    pub fn new(ttl: Duration, min_retries_per_sec: u32, percent_can_retry: f64) -> Self {
        let ttl = ttl.max(Duration::from_millis(10));
        RetryBudget {
            ttl,
            min_retries_per_sec,
            percent_can_retry: if percent_can_retry.is_finite() {
                percent_can_retry.clamp(0.0, 10.0)
            } else {
                0.0
            },
            width: (u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX) / BUCKETS).max(1),
            epoch: Instant::now(),
            buckets: std::array::from_fn(|_| Bucket::new()),
            lock: Mutex::new(()),
        }
    }

    fn index(&self) -> u64 {
        self.index_at(Instant::now())
    }

    fn index_at(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
            / self.width
    }

    /// The bucket period `now` maps to, whichever period it holds.
    fn bucket(&self, now: u64) -> &Bucket {
        &self.buckets[(now % BUCKETS) as usize]
    }

    /// The bucket of period `now`, moved on to it if it still holds an older period. Call with
    /// `lock` held.
    fn slot_locked(&self, now: u64) -> &Bucket {
        let s = self.bucket(now);
        if s.index.load(Ordering::Acquire) != now {
            s.clear();
            s.index.store(now, Ordering::Release);
        }
        s
    }

    fn balance_of(&self, now: u64) -> f64 {
        let (mut d, mut w) = (0u64, 0u64);
        for s in &self.buckets {
            let index = s.index.load(Ordering::Acquire);
            if index + BUCKETS > now && index <= now {
                d += s.deposits();
                w += s.withdrawals.load(Ordering::Relaxed);
            }
        }
        let reserve = f64::from(self.min_retries_per_sec) * self.ttl.as_secs_f64();
        reserve + d as f64 * self.percent_can_retry - w as f64
    }

    /// Counts one request (call it once per call, not per attempt).
    pub fn deposit(&self) {
        self.deposit_at(Instant::now());
    }

    /// [`deposit`](Self::deposit) with the time already read by the caller.
    pub(crate) fn deposit_at(&self, at: Instant) {
        let now = self.index_at(at);
        let s = self.bucket(now);
        if s.index.load(Ordering::Acquire) == now {
            s.deposit();
            return;
        }
        let _rotating = self.lock.lock();
        self.slot_locked(now).deposit();
    }

    /// Takes one retry from the budget; `false` when it is spent.
    pub fn try_withdraw(&self) -> bool {
        let now = self.index();
        let _one_at_a_time = self.lock.lock();
        if self.balance_of(now) >= 1.0 {
            self.slot_locked(now)
                .withdrawals
                .fetch_add(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    /// Retries still available now.
    pub fn balance(&self) -> f64 {
        self.balance_of(self.index()).max(0.0)
    }
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("ttl", &self.ttl)
            .field("min_retries_per_sec", &self.min_retries_per_sec)
            .field("percent_can_retry", &self.percent_can_retry)
            .field("balance", &self.balance())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn reserve_and_share_over_a_sliding_window() {
        let b = RetryBudget::new(Duration::from_secs(10), 1, 0.5);
        // Reserve: 1/s over 10 s = 10 retries with no traffic at all.
        assert!((0..10).all(|_| b.try_withdraw()));
        assert!(!b.try_withdraw());
        for _ in 0..4 {
            b.deposit();
        }
        assert!(b.try_withdraw() && b.try_withdraw(), "50 % of 4 requests");
        assert!(!b.try_withdraw());
        // Once the window has slid past, the withdrawals are forgotten.
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!((b.balance() - 10.0).abs() < 1e-9);
    }

    #[test]
    fn concurrent_deposits_are_all_counted() {
        let b = RetryBudget::new(Duration::from_secs(3600), 0, 0.5);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..10_000 {
                        b.deposit();
                    }
                });
            }
        });
        assert!((b.balance() - 20_000.0).abs() < 1e-9, "{}", b.balance());
    }
}
