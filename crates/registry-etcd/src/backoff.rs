//! Capped exponential backoff with jitter.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff: each delay doubles up to `max`, and is drawn uniformly from the upper
/// half of the current step (`[step/2, step]`), so many clients retrying together spread out
/// while every wait still grows.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    step: Duration,
    attempts: u32,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        let max = max.max(initial);
        Backoff {
            initial,
            max,
            step: initial,
            attempts: 0,
        }
    }

    /// The next delay.
    pub(crate) fn next_delay(&mut self) -> Duration {
        self.attempts = self.attempts.saturating_add(1);
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        let low = step / 2;
        let spread = step - low;
        low + spread.mul_f64(rand::rng().random::<f64>())
    }

    /// Starts over from the initial delay.
    pub(crate) fn reset(&mut self) {
        self.step = self.initial;
        self.attempts = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_caps_with_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut steps = Vec::new();
        for _ in 0..12 {
            steps.push(b.next_delay());
        }
        let expected_caps = [100u64, 200, 400, 800, 1600, 2000, 2000, 2000];
        for (d, cap) in steps.iter().zip(expected_caps) {
            let cap = Duration::from_millis(cap);
            assert!(
                *d <= cap && *d >= cap / 2,
                "{d:?} not in [{:?}, {cap:?}]",
                cap / 2
            );
        }
        assert!(steps.iter().all(|d| *d <= Duration::from_secs(2)), "capped");
        b.reset();
        assert_eq!(b.attempts, 0);
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn jitter_spreads_delays() {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..50 {
            let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
            seen.insert(b.next_delay());
        }
        assert!(
            seen.len() > 10,
            "delays must differ between clients: {seen:?}"
        );
    }

    #[test]
    fn max_below_initial_is_raised() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_millis(10));
        assert!(b.next_delay() <= Duration::from_millis(500));
    }
}
