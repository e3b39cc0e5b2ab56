//! Retry policies in the manner of gRPC's service config (`grpc/proposal A6-client-retries.md`):
//! per method or per service, with attempts, an exponential backoff and the status codes that
//! are retried.

use std::time::Duration;

use rand::Rng;
use tonic::Code;
use waypost_core_types::{Error, Result};

/// When and how a method's calls are retried after a status (or a transport failure once the
/// request was sent, which counts as `UNAVAILABLE`).
///
/// The delay before retry `n` (1-based) is drawn uniformly from
/// `[0, min(initial_backoff · multiplierⁿ⁻¹, max_backoff)]`, as gRPC does.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Attempts in all, the first included (2–10; default 3).
    pub max_attempts: u32,
    /// The first backoff's upper bound (default 100 ms).
    pub initial_backoff: Duration,
    /// The largest backoff's upper bound (default 1 s).
    pub max_backoff: Duration,
    /// Growth of the bound per retry (at least 1; default 2).
    pub backoff_multiplier: f64,
    /// The codes that are retried (default `UNAVAILABLE`).
    pub retryable_status_codes: Vec<Code>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            backoff_multiplier: 2.0,
            retryable_status_codes: vec![Code::Unavailable],
        }
    }
}

impl RetryPolicy {
    /// The default policy with `max_attempts` attempts.
    pub fn new(max_attempts: u32) -> Self {
        RetryPolicy {
            max_attempts,
            ..RetryPolicy::default()
        }
    }

    /// The backoff between `initial` and `max`, growing by `multiplier`.
    #[must_use]
    pub fn with_backoff(mut self, initial: Duration, max: Duration, multiplier: f64) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max;
        self.backoff_multiplier = multiplier;
        self
    }

    /// The status codes that are retried.
    #[must_use]
    pub fn with_retryable_status_codes(mut self, codes: impl IntoIterator<Item = Code>) -> Self {
        self.retryable_status_codes = codes.into_iter().collect();
        self
    }

    /// Checks the bounds.
    pub(crate) fn validate(&self) -> Result<()> {
        if !(2..=10).contains(&self.max_attempts) {
            return Err(Error::InvalidConfig(format!(
                "gRPC retry policy: max_attempts must be 2 to 10, not {}",
                self.max_attempts
            )));
        }
        if !self.backoff_multiplier.is_finite() || self.backoff_multiplier < 1.0 {
            return Err(Error::InvalidConfig(
                "gRPC retry policy: backoff_multiplier must be a finite number of at least 1"
                    .into(),
            ));
        }
        if self.initial_backoff.is_zero() || self.max_backoff < self.initial_backoff {
            return Err(Error::InvalidConfig(
                "gRPC retry policy: initial_backoff must be above zero and max_backoff at least as long"
                    .into(),
            ));
        }
        if self.retryable_status_codes.is_empty() || self.retryable_status_codes.contains(&Code::Ok)
        {
            return Err(Error::InvalidConfig(
                "gRPC retry policy: retryable_status_codes must name at least one code, and not OK"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Whether `code` is retried.
    pub(crate) fn retries(&self, code: Code) -> bool {
        self.retryable_status_codes.contains(&code)
    }

    /// The delay before retry `retry` (1-based).
    pub(crate) fn delay(&self, retry: u32) -> Duration {
        let exp = i32::try_from(retry.saturating_sub(1)).unwrap_or(i32::MAX);
        let bound = self.initial_backoff.as_secs_f64() * self.backoff_multiplier.powi(exp);
        let bound = bound.min(self.max_backoff.as_secs_f64());
        let bound = Duration::try_from_secs_f64(bound).unwrap_or(self.max_backoff);
        let nanos = u64::try_from(bound.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rand::rng().random_range(0..=nanos))
    }
}

/// Which methods a policy covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MethodMatch {
    /// One method of one service.
    Method(String, String),
    /// Every method of one service.
    Service(String),
    /// Every method.
    All,
}

/// The policies of a channel, most specific first when looked up.
#[derive(Debug, Clone, Default)]
pub(crate) struct RetryTable(pub(crate) Vec<(MethodMatch, RetryPolicy)>);

impl RetryTable {
    /// The policy for `path` (`/package.Service/Method`): the method's own, else its service's,
    /// else the one for every method, else none (not retried).
    pub(crate) fn lookup(&self, path: &str) -> Option<&RetryPolicy> {
        let (service, method) = path.strip_prefix('/')?.split_once('/')?;
        let by = |want: &dyn Fn(&MethodMatch) -> bool| {
            self.0.iter().find(|(m, _)| want(m)).map(|(_, p)| p)
        };
        by(&|m| matches!(m, MethodMatch::Method(s, n) if s == service && n == method))
            .or_else(|| by(&|m| matches!(m, MethodMatch::Service(s) if s == service)))
            .or_else(|| by(&|m| matches!(m, MethodMatch::All)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_prefers_the_method_then_the_service_then_all() {
        let p = |n| RetryPolicy::new(n);
        let t = RetryTable(vec![
            (MethodMatch::All, p(2)),
            (MethodMatch::Service("a.S".into()), p(3)),
            (MethodMatch::Method("a.S".into(), "M".into()), p(4)),
        ]);
        assert_eq!(t.lookup("/a.S/M").map(|p| p.max_attempts), Some(4));
        assert_eq!(t.lookup("/a.S/N").map(|p| p.max_attempts), Some(3));
        assert_eq!(t.lookup("/b.T/M").map(|p| p.max_attempts), Some(2));
        assert_eq!(t.lookup("garbage").map(|p| p.max_attempts), None);
        assert!(RetryTable::default().lookup("/a.S/M").is_none());
    }

    #[test]
    fn delays_stay_under_the_growing_capped_bound() {
        let p = RetryPolicy::default().with_backoff(
            Duration::from_millis(100),
            Duration::from_millis(300),
            2.0,
        );
        for _ in 0..200 {
            assert!(p.delay(1) <= Duration::from_millis(100));
            assert!(p.delay(2) <= Duration::from_millis(200));
            assert!(p.delay(3) <= Duration::from_millis(300));
            assert!(p.delay(u32::MAX) <= Duration::from_millis(300));
        }
    }

    #[test]
    fn bad_policies_are_refused() {
        assert!(RetryPolicy::new(1).validate().is_err());
        assert!(RetryPolicy::new(11).validate().is_err());
        assert!(RetryPolicy::default()
            .with_backoff(Duration::from_millis(1), Duration::from_secs(1), f64::NAN)
            .validate()
            .is_err());
        assert!(RetryPolicy::default()
            .with_retryable_status_codes([Code::Ok])
            .validate()
            .is_err());
        assert!(RetryPolicy::default().validate().is_ok());
    }
}
