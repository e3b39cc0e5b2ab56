//! Retry delays (capped, jittered exponential backoff) and the token bucket that keeps
//! blocking-query loops from spinning.

use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

/// The delay before retry number `attempt` (1-based): `initial · 2^(attempt-1)` capped at `max`,
/// then jittered into `[d/2, d]`.
pub(crate) fn backoff(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    let d = initial.saturating_mul(1u32 << exp).min(max);
    let half = d / 2;
    let jitter = rand::rng().random_range(0..=half.as_nanos().min(u128::from(u64::MAX)) as u64);
    half + Duration::from_nanos(jitter)
}

/// A token bucket: `burst` requests at once, then one per `period` (plus up to 10% jitter).
#[derive(Debug)]
pub(crate) struct TokenBucket {
    tokens: f64,
    burst: f64,
    period: Duration,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn new(burst: u32, period: Duration) -> Self {
        TokenBucket {
            tokens: f64::from(burst),
            burst: f64::from(burst),
            period,
            last: Instant::now(),
        }
    }

    /// Waits until a token is available and takes it.
    pub(crate) async fn acquire(&mut self) {
        let now = Instant::now();
        if !self.period.is_zero() {
            let refill = now.duration_since(self.last).as_secs_f64() / self.period.as_secs_f64();
            self.tokens = (self.tokens + refill).min(self.burst);
        } else {
            self.tokens = self.burst;
        }
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return;
        }
        // Jitter (up to +10%) keeps many loops from waking in step.
        let missing = 1.0 - self.tokens;
        let jitter = 1.0 + rand::rng().random_range(0.0..0.1);
        let wait = self.period.mul_f64(missing * jitter);
        tokio::time::sleep(wait).await;
        self.tokens = 0.0;
        self.last = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let i = Duration::from_millis(100);
        let m = Duration::from_secs(5);
        for _ in 0..200 {
            let d1 = backoff(1, i, m);
            assert!(d1 >= Duration::from_millis(50) && d1 <= i, "{d1:?}");
            let d4 = backoff(4, i, m);
            assert!(d4 >= Duration::from_millis(400) && d4 <= Duration::from_millis(800));
            let d = backoff(u32::MAX, i, m);
            assert!(d >= m / 2 && d <= m, "{d:?}");
        }
        let spread: std::collections::HashSet<_> = (0..50).map(|_| backoff(10, i, m)).collect();
        assert!(spread.len() > 10, "delays must be jittered");
    }

    #[tokio::test(start_paused = true)]
    async fn bucket_allows_a_burst_then_one_per_period() {
        let period = Duration::from_secs(10);
        let mut b = TokenBucket::new(2, period);
        let start = Instant::now();
        b.acquire().await;
        b.acquire().await;
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "a burst of 2 passes at once"
        );
        b.acquire().await;
        assert!(start.elapsed() >= period, "the third waits a period");
        for _ in 0..5 {
            b.acquire().await;
        }
        let e = start.elapsed();
        assert!(
            e >= period * 6 && e < period * 7,
            "{e:?}: steady state one per period"
        );
    }
}
