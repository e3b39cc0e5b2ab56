//! The token bucket that paces the blocking queries of watch loops, so a loop whose index
//! keeps moving never spins (retry delays come from `waypost_core_types::backoff`).

use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

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
