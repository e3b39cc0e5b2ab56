//! Capped exponential backoff with jitter, for every retry loop that waits on a backend.

use std::time::Duration;

use rand::Rng;

/// The longest delay [`delay`] returns, whatever `initial` and `max` say: one day. With it a
/// retry time is always representable (`Instant::now() + delay` cannot overflow), and
/// `Duration::MAX` as `max` means "no cap of its own".
pub const MAX_DELAY: Duration = Duration::from_secs(24 * 3600);

/// The delay before retry number `attempt` (1-based): `initial · 2^(attempt-1)`, capped at
/// `max` (and at [`MAX_DELAY`]), then drawn uniformly from its upper half `[d/2, d]`, so that
/// many clients retrying together spread out while every wait still grows. A zero `initial`
/// and `max` mean "retry at once".
pub fn delay(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    let d = initial
        .saturating_mul(1u32 << exp)
        .min(max.max(initial))
        .min(MAX_DELAY);
    let half = d / 2;
    let span = u64::try_from((d - half).as_nanos()).unwrap_or(u64::MAX);
    let jitter = if span == 0 {
        0
    } else {
        rand::rng().random_range(0..=span)
    };
    half + Duration::from_nanos(jitter)
}

/// [`delay`] with the attempt count kept: `next_delay` for each failure, `reset` after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempts: u32,
}

impl Backoff {
    /// Starts at `initial`, never waits longer than `max` (raised to `initial` if below it) nor
    /// than [`MAX_DELAY`].
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            attempts: 0,
        }
    }

    /// The delay before the next retry.
    pub fn next_delay(&mut self) -> Duration {
        self.attempts = self.attempts.saturating_add(1);
        delay(self.attempts, self.initial, self.max)
    }

    /// Failures since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Starts over from the initial delay.
    pub fn reset(&mut self) {
        self.attempts = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_is_capped_and_jittered_into_the_upper_half() {
        let (initial, max) = (Duration::from_millis(100), Duration::from_secs(2));
        for attempt in 1..=40 {
            let d = delay(attempt, initial, max);
            let step = initial
                .saturating_mul(1 << attempt.saturating_sub(1).min(30))
                .min(max);
            assert!(
                d >= step / 2 && d <= step,
                "attempt {attempt}: {d:?} vs {step:?}"
            );
        }
        let spread: std::collections::BTreeSet<_> =
            (0..50).map(|_| delay(5, initial, max)).collect();
        assert!(spread.len() > 10, "jitter spreads delays");
    }

    #[test]
    fn backoff_counts_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(1));
        assert!(
            b.next_delay() <= Duration::from_millis(10),
            "max below initial is raised"
        );
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
        for _ in 0..20 {
            assert!(b.next_delay() <= Duration::from_secs(1));
        }
        assert_eq!(b.attempts(), 20);
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(10));
    }

    #[test]
    fn extreme_durations_are_bounded_and_never_panic() {
        for (initial, max) in [
            (Duration::MAX, Duration::MAX),
            (Duration::from_secs(1), Duration::MAX),
            (Duration::MAX, Duration::ZERO),
        ] {
            let mut b = Backoff::new(initial, max);
            for _ in 0..64 {
                let d = b.next_delay();
                assert!(d <= MAX_DELAY, "{d:?}");
                let _ = tokio::time::Instant::now() + d;
            }
        }
        assert_eq!(
            delay(1, Duration::MAX, Duration::MAX).max(MAX_DELAY),
            MAX_DELAY
        );
        assert!(delay(1, Duration::MAX, Duration::MAX) >= MAX_DELAY / 2);
        assert_eq!(delay(7, Duration::ZERO, Duration::ZERO), Duration::ZERO);
    }
}
