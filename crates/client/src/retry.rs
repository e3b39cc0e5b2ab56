//! Retry policy: which failures are retried, and the backoff between attempts.

use std::time::Duration;

use http::Method;
use rand::Rng;

/// How a [`ServiceClient`](crate::ServiceClient) retries.
///
/// Every attempt picks an instance again and avoids the ones that failed in this call. Whether
/// another attempt may help is [`Error::is_retryable`]'s call: refused or lost connections,
/// timeouts and 5xx statuses are retried; 4xx statuses, responses that are not HTTP, refused TLS
/// certificates and bodies over the limit are not. Whether it is safe depends on the method: a
/// request that never left (the connection could not be opened) is retried for every method; one
/// that may have reached the server (a 5xx, a timeout, a connection lost after sending) only for
/// idempotent methods (GET, HEAD, PUT, DELETE, OPTIONS, TRACE), unless
/// [`retry_non_idempotent`](Self::retry_non_idempotent) is set. The wait before retry *n* (1-based)
/// is drawn uniformly from `[0, min(max_backoff, base_delay · 2^(n−1))]` ("full jitter").
///
/// The first retry goes out at once when it goes to another instance than the one that failed
/// ([`immediate_failover`](Self::immediate_failover), on by default): the backoff gives a
/// struggling instance time to recover, and a different instance does not need it. With 30 % of
/// 503s from one instance among several, retries then hide the errors without adding the backoff
/// to the call's latency. The first retry waits its backoff when the only instance to pick is
/// one that already failed in this call, and every later retry waits its backoff. The
/// [`RetryBudget`](crate::RetryBudget) still bounds how many retries there are, so an outage
/// cannot turn into a retry storm.
///
/// [`Error::is_retryable`]: waypost_core_types::Error::is_retryable
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Retries after the first attempt (0 = no retry).
    pub max_retries: u32,
    /// The backoff base.
    pub base_delay: Duration,
    /// The largest backoff.
    pub max_backoff: Duration,
    /// Also retry non-idempotent methods (POST, PATCH) on 5xx and timeouts.
    pub retry_non_idempotent: bool,
    /// Send the first retry without waiting when it goes to another instance than the ones that
    /// failed in this call (default `true`); `false` waits the backoff before every retry.
    pub immediate_failover: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 2,
            base_delay: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            retry_non_idempotent: false,
            immediate_failover: true,
        }
    }
}

impl RetryPolicy {
    /// `max_retries` retries with backoff base `base_delay` (the Laravel-Go module's
    /// `WithRetry(count, delay)`); the largest backoff is 16 × `base_delay`, at least 2 s.
    ///
    /// A zero `base_delay` retries at once. `Duration::MAX` is accepted and means waits without
    /// a bound of their own (drawn up to about 584 years): set a
    /// [`deadline`](crate::ServiceClientBuilder::deadline), which gives up as soon as a wait
    /// would end past it.
    pub fn new(max_retries: u32, base_delay: Duration) -> Self {
        RetryPolicy {
            max_retries,
            base_delay,
            max_backoff: base_delay.saturating_mul(16).max(Duration::from_secs(2)),
            retry_non_idempotent: false,
            immediate_failover: true,
        }
    }

    /// No retries.
    pub fn none() -> Self {
        RetryPolicy {
            max_retries: 0,
            ..RetryPolicy::default()
        }
    }

    /// The backoff before retry number `retry` (1-based), with full jitter. Never panics: the
    /// exponential growth saturates, and a cap above `u64::MAX` nanoseconds (about 584 years) is
    /// drawn up to that.
    pub fn backoff(&self, retry: u32) -> Duration {
        let exp = retry.saturating_sub(1).min(31);
        let cap = self
            .base_delay
            .saturating_mul(1u32 << exp)
            .min(self.max_backoff);
        let cap_nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
        if cap_nanos == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(rand::rng().random_range(0..=cap_nanos))
    }
}

/// Whether `method` is idempotent (RFC 9110 §9.2.2).
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS | Method::TRACE
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotent_methods() {
        for m in [
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ] {
            assert!(is_idempotent(&m), "{m}");
        }
        assert!(!is_idempotent(&Method::POST));
        assert!(!is_idempotent(&Method::PATCH));
    }

    #[test]
    fn full_jitter_stays_under_the_exponential_cap() {
        let p = RetryPolicy {
            max_retries: 5,
            base_delay: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            retry_non_idempotent: false,
            immediate_failover: true,
        };
        let mut max_seen = [Duration::ZERO; 5];
        for _ in 0..2_000 {
            for (i, seen) in max_seen.iter_mut().enumerate() {
                let d = p.backoff(i as u32 + 1);
                let cap = Duration::from_millis((10u64 << i).min(50));
                assert!(d <= cap, "retry {}: {d:?} > {cap:?}", i + 1);
                *seen = (*seen).max(d);
            }
        }
        // Jitter really spreads: the largest draw comes close to each cap.
        assert!(max_seen[0] > Duration::from_millis(9));
        assert!(max_seen[3] > Duration::from_millis(45));
    }
}
