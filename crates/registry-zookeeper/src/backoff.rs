//! Capped exponential backoff with jitter for session recovery.

use std::time::Duration;

use rand::Rng;

/// The first delay.
pub(crate) const INITIAL: Duration = Duration::from_millis(100);

/// The delay before attempt `attempt` (1-based): `INITIAL · 2^(attempt-1)`, capped at `max`, then
/// drawn uniformly from its upper half so that many clients do not retry in lockstep.
pub(crate) fn delay(attempt: u32, max: Duration) -> Duration {
    let exp = INITIAL
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(max);
    let low = exp / 2;
    let span = exp.saturating_sub(low).as_micros() as u64;
    let jitter = if span == 0 {
        0
    } else {
        rand::rng().random_range(0..=span)
    };
    low + Duration::from_micros(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_is_capped_with_jitter() {
        let max = Duration::from_secs(2);
        for attempt in 1..40 {
            let exp = INITIAL
                .saturating_mul(1u32 << (attempt - 1).min(16))
                .min(max);
            for _ in 0..20 {
                let d = delay(attempt, max);
                assert!(
                    d >= exp / 2 && d <= exp,
                    "attempt {attempt}: {d:?} vs {exp:?}"
                );
                assert!(d <= max);
            }
        }
        // Jitter: not always the same value.
        let samples: std::collections::HashSet<_> = (0..50).map(|_| delay(10, max)).collect();
        assert!(samples.len() > 1);
        assert!(delay(1, max) <= INITIAL);
    }
}
