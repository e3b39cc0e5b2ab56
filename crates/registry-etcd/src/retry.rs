//! The per-call retry loop: a dead member, an election or a lost lease is retried with backoff
//! until the call's deadline, so callers see a short delay instead of an error.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use waypost_core_types::tasks::StopSignal;
use waypost_core_types::{Error, Result};

use crate::error::{self, BACKEND};
use waypost_core_types::backoff::Backoff;

/// Why one attempt failed.
#[derive(Debug)]
pub(crate) enum AttemptError {
    /// An error from etcd: retried when transient (or a lost lease), returned otherwise.
    Etcd(etcd_client::Error),
    /// A compare-and-swap lost a race; try again at once.
    Conflict,
    /// A final answer (NotFound, Codec, …).
    Final(Error),
}

impl From<etcd_client::Error> for AttemptError {
    fn from(e: etcd_client::Error) -> Self {
        AttemptError::Etcd(e)
    }
}

impl From<Error> for AttemptError {
    fn from(e: Error) -> Self {
        AttemptError::Final(e)
    }
}

/// Limits of one call.
#[derive(Debug, Clone)]
pub(crate) struct RetryPolicy {
    /// The whole call, retries included.
    pub(crate) deadline: Duration,
    /// One attempt.
    pub(crate) attempt_timeout: Duration,
}

impl RetryPolicy {
    pub(crate) fn new(request_timeout: Duration) -> Self {
        RetryPolicy {
            deadline: request_timeout,
            attempt_timeout: (request_timeout / 3).max(Duration::from_millis(500)),
        }
    }
}

/// Runs `op` until it succeeds, fails for good, the deadline passes, or the registry stops.
/// `on_lease_lost` runs when an attempt names a lease that no longer exists.
pub(crate) async fn retry<T, F, Fut>(
    what: &str,
    policy: &RetryPolicy,
    closed: &StopSignal,
    on_lease_lost: &(dyn Fn() + Send + Sync),
    mut op: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, AttemptError>>,
{
    let start = Instant::now();
    let deadline = start + policy.deadline;
    let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(500));
    let mut closed = closed.clone();
    let mut last = String::from("no attempt finished");
    let mut timed_out = false;
    loop {
        if closed.is_stopped() {
            return Err(Error::Closed);
        }
        let now = Instant::now();
        if now >= deadline {
            let after = now - start;
            return Err(if timed_out {
                Error::timeout(format!("{BACKEND} {what} ({last})"), after)
            } else {
                Error::Unavailable(format!(
                    "{BACKEND}: {what} failed for {after:?} of retries: {last}"
                ))
            });
        }
        let limit = (deadline - now).min(policy.attempt_timeout);
        let pause = match tokio::time::timeout(limit, op()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(AttemptError::Final(e))) => return Err(e),
            Ok(Err(AttemptError::Conflict)) => {
                last = "concurrent modification".into();
                Duration::ZERO
            }
            Ok(Err(AttemptError::Etcd(e))) if error::is_lease_not_found(&e) => {
                on_lease_lost();
                last = e.to_string();
                timed_out = false;
                backoff.next_delay()
            }
            Ok(Err(AttemptError::Etcd(e))) if error::is_transient(&e) => {
                tracing::debug!(target: "waypost::etcd", what, error = %e, "retrying");
                last = e.to_string();
                timed_out = false;
                backoff.next_delay()
            }
            Ok(Err(AttemptError::Etcd(e))) => return Err(error::convert(e)),
            Err(_) => {
                tracing::debug!(target: "waypost::etcd", what, ?limit, "attempt timed out");
                last = format!("an attempt took longer than {limit:?}");
                timed_out = true;
                Duration::ZERO
            }
        };
        if !pause.is_zero() {
            let pause = pause.min(deadline.saturating_duration_since(Instant::now()));
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = closed.stopped() => return Err(Error::Closed),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use waypost_core_types::Tasks;

    fn unavailable() -> etcd_client::Error {
        etcd_client::Error::IoError(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_until_success() {
        let tasks = Tasks::new();
        let rx = tasks.signal();
        let calls = AtomicU32::new(0);
        let policy = RetryPolicy::new(Duration::from_secs(5));
        let got = retry("get", &policy, &rx, &|| {}, || async {
            if calls.fetch_add(1, Ordering::SeqCst) < 3 {
                Err(AttemptError::Etcd(unavailable()))
            } else {
                Ok(7)
            }
        })
        .await
        .unwrap();
        assert_eq!((got, calls.load(Ordering::SeqCst)), (7, 4));
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_bounds_the_call() {
        let tasks = Tasks::new();
        let rx = tasks.signal();
        let policy = RetryPolicy::new(Duration::from_secs(2));
        let start = Instant::now();
        let r: Result<()> = retry("put", &policy, &rx, &|| {}, || async {
            Err(AttemptError::Etcd(unavailable()))
        })
        .await;
        let took = start.elapsed();
        assert!(
            matches!(r, Err(Error::Unavailable(ref m)) if m.contains("refused")),
            "{r:?}"
        );
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_millis(2600),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn hanging_attempts_time_out() {
        let tasks = Tasks::new();
        let rx = tasks.signal();
        let policy = RetryPolicy::new(Duration::from_secs(3));
        let r: Result<()> = retry("get", &policy, &rx, &|| {}, || async {
            std::future::pending::<()>().await;
            Ok(())
        })
        .await;
        assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn final_errors_and_close_stop_at_once() {
        let tasks = Tasks::new();
        let rx = tasks.signal();
        let policy = RetryPolicy::new(Duration::from_secs(5));
        let calls = AtomicU32::new(0);
        let r: Result<()> = retry("get", &policy, &rx, &|| {}, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(AttemptError::Final(Error::NotFound("x".into())))
        })
        .await;
        assert!(matches!(r, Err(Error::NotFound(_))));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tasks.shutdown().await;
        let r: Result<()> = retry("get", &policy, &rx, &|| {}, || async { Ok(()) }).await;
        assert!(matches!(r, Err(Error::Closed)));
    }

    #[tokio::test(start_paused = true)]
    async fn lost_lease_is_reported_and_retried() {
        let tasks = Tasks::new();
        let rx = tasks.signal();
        let policy = RetryPolicy::new(Duration::from_secs(5));
        let lost = AtomicU32::new(0);
        let calls = AtomicU32::new(0);
        let on_lost = || {
            lost.fetch_add(1, Ordering::SeqCst);
        };
        retry("put", &policy, &rx, &on_lost, || async {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                Err(AttemptError::Etcd(etcd_client::Error::LeaseKeepAliveError(
                    "lease not found".into(),
                )))
            } else {
                Ok(())
            }
        })
        .await
        .unwrap();
        assert_eq!(lost.load(Ordering::SeqCst), 1);
    }
}
