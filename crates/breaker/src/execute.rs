//! [`CircuitBreakerExt`]: run an operation through any breaker, including `dyn CircuitBreaker`.

use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Instant;
use waypost_core_types::{CircuitBreaker, Error, Outcome, Permit};

/// Decides how a result counts for a breaker.
///
/// Implemented for closures `Fn(&Result<T, E>) -> Outcome` and by [`FailOnError`], the default
/// (every `Err` is a failure).
pub trait Classify<T, E> {
    /// The outcome the breaker records for `result`.
    fn classify(&self, result: &Result<T, E>) -> Outcome;
}

impl<T, E, F> Classify<T, E> for F
where
    F: Fn(&Result<T, E>) -> Outcome,
{
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        self(result)
    }
}

/// The default classifier: `Ok` is a success, every `Err` a failure.
#[derive(Debug, Clone, Copy, Default)]
pub struct FailOnError;

impl<T, E> Classify<T, E> for FailOnError {
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }
}

/// Why [`CircuitBreakerExt::execute`] did not return the operation's value.
#[derive(Debug)]
pub enum ExecuteError<E> {
    /// The breaker refused the call; the operation did not run. Holds the breaker's error
    /// (normally [`Error::CircuitOpen`]).
    Rejected(Error),
    /// The operation ran and failed.
    Failed(E),
}

impl<E> ExecuteError<E> {
    /// Whether the breaker refused the call.
    pub fn is_rejected(&self) -> bool {
        matches!(self, ExecuteError::Rejected(_))
    }

    /// The operation's error, if it ran.
    pub fn into_failed(self) -> Option<E> {
        match self {
            ExecuteError::Failed(e) => Some(e),
            ExecuteError::Rejected(_) => None,
        }
    }
}

impl<E: fmt::Display> fmt::Display for ExecuteError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExecuteError::Rejected(e) => e.fmt(f),
            ExecuteError::Failed(e) => e.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for ExecuteError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ExecuteError::Rejected(e) => Some(e),
            ExecuteError::Failed(e) => Some(e),
        }
    }
}

/// Lets `?` turn a breaker result into waypost's [`Error`] when the operation's error is one.
impl From<ExecuteError<Error>> for Error {
    fn from(e: ExecuteError<Error>) -> Self {
        match e {
            ExecuteError::Rejected(e) | ExecuteError::Failed(e) => e,
        }
    }
}

/// Holds a permit while a call runs; records [`Outcome::Ignored`] if dropped unfinished (a
/// cancelled future, a panic), so a probe slot is never leaked.
pub struct PermitGuard<R>
where
    R: Deref,
    R::Target: CircuitBreaker,
{
    breaker: R,
    permit: Option<Permit>,
    start: Option<Instant>,
}

impl<R> PermitGuard<R>
where
    R: Deref,
    R::Target: CircuitBreaker,
{
    /// Asks `breaker` for a permit and starts the clock.
    ///
    /// # Errors
    /// The breaker's refusal (normally [`Error::CircuitOpen`]).
    pub fn acquire(breaker: R) -> Result<Self, Error> {
        Self::acquire_timed(breaker, true)
    }

    /// Asks `breaker` for a permit without starting a clock: the outcome is recorded with a
    /// zero duration. Only for breakers that ignore `elapsed` (it saves two clock reads, which
    /// cost about 50 ns each on some virtual machines).
    ///
    /// # Errors
    /// The breaker's refusal (normally [`Error::CircuitOpen`]).
    pub fn acquire_untimed(breaker: R) -> Result<Self, Error> {
        Self::acquire_timed(breaker, false)
    }

    #[inline]
    fn acquire_timed(breaker: R, timed: bool) -> Result<Self, Error> {
        let permit = breaker.try_acquire()?;
        Ok(PermitGuard {
            breaker,
            permit: Some(permit),
            start: timed.then(Instant::now),
        })
    }

    #[inline]
    fn elapsed(&self) -> Duration {
        self.start.map_or(Duration::ZERO, |s| s.elapsed())
    }

    /// Records `outcome` with the time since [`acquire`](Self::acquire).
    #[inline]
    pub fn finish(mut self, outcome: Outcome) {
        if let Some(p) = self.permit.take() {
            let elapsed = self.elapsed();
            self.breaker.record(p, outcome, elapsed);
        }
    }
}

impl<R> Drop for PermitGuard<R>
where
    R: Deref,
    R::Target: CircuitBreaker,
{
    #[inline]
    fn drop(&mut self) {
        if let Some(p) = self.permit.take() {
            let elapsed = self.elapsed();
            self.breaker.record(p, Outcome::Ignored, elapsed);
        }
    }
}

impl<R> fmt::Debug for PermitGuard<R>
where
    R: Deref,
    R::Target: CircuitBreaker,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PermitGuard")
            .field("breaker", &&*self.breaker)
            .field("finished", &self.permit.is_none())
            .finish()
    }
}

/// `execute` helpers for every [`CircuitBreaker`], also behind `dyn` and `Arc`.
///
/// The permit is taken before the operation starts and handed back when it ends; no lock is held
/// in between. A future dropped before it ends records [`Outcome::Ignored`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use waypost_breaker::{CircuitBreakerExt, SimpleCircuitBreaker};
/// use waypost_core_types::{CircuitBreaker, Outcome};
///
/// let cb: Arc<dyn CircuitBreaker> = Arc::new(SimpleCircuitBreaker::new(1, Duration::from_secs(5)));
/// // A 404 is the caller's mistake, not the server's: do not count it.
/// let r = cb
///     .execute_with(
///         |r: &Result<u32, u16>| match r {
///             Err(404) => Outcome::Ignored,
///             Err(_) => Outcome::Failure,
///             Ok(_) => Outcome::Success,
///         },
///         || async { Err::<u32, u16>(404) },
///     )
///     .await;
/// assert!(r.is_err());
/// assert!(!cb.is_open());
/// let r = cb.execute(|| async { Err::<u32, u16>(503) }).await;
/// assert!(cb.is_open());
/// assert!(cb.execute(|| async { Ok::<u32, u16>(1) }).await.unwrap_err().is_rejected());
/// # }
/// ```
pub trait CircuitBreakerExt: CircuitBreaker {
    /// Runs `op` if the breaker admits it; every `Err` counts as a failure.
    ///
    /// # Errors
    /// [`ExecuteError::Rejected`] when the breaker refused (the operation did not run),
    /// [`ExecuteError::Failed`] with the operation's error.
    fn execute<F, Fut, T, E>(&self, op: F) -> Execute<&Self, Fut, FailOnError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.execute_with(FailOnError, op)
    }

    /// Runs `op` if the breaker admits it; `classify` decides how the result counts.
    ///
    /// # Errors
    /// As [`execute`](Self::execute).
    fn execute_with<C, F, Fut, T, E>(&self, classify: C, op: F) -> Execute<&Self, Fut, C>
    where
        C: Classify<T, E>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        execute_impl(self, true, classify, op)
    }

    /// Runs a synchronous `op` if the breaker admits it; every `Err` counts as a failure.
    ///
    /// # Errors
    /// As [`execute`](Self::execute).
    fn execute_sync<T, E>(&self, op: impl FnOnce() -> Result<T, E>) -> Result<T, ExecuteError<E>> {
        self.execute_sync_with(FailOnError, op)
    }

    /// Runs a synchronous `op` if the breaker admits it; `classify` decides how the result
    /// counts.
    ///
    /// # Errors
    /// As [`execute`](Self::execute).
    fn execute_sync_with<T, E>(
        &self,
        classify: impl Classify<T, E>,
        op: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, ExecuteError<E>> {
        execute_sync_impl(self, true, classify, op)
    }
}

impl<B: CircuitBreaker + ?Sized> CircuitBreakerExt for B {}

pub(crate) fn execute_impl<R, C, F, Fut, T, E>(
    breaker: R,
    timed: bool,
    classify: C,
    op: F,
) -> Execute<R, Fut, C>
where
    R: Deref,
    R::Target: CircuitBreaker,
    C: Classify<T, E>,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    match PermitGuard::acquire_timed(breaker, timed) {
        Ok(guard) => Execute {
            fut: Some(op()),
            guard: Some(guard),
            classify,
            rejected: None,
        },
        Err(e) => Execute {
            fut: None,
            guard: None,
            classify,
            rejected: Some(e),
        },
    }
}

#[inline]
pub(crate) fn execute_sync_impl<R, T, E>(
    breaker: R,
    timed: bool,
    classify: impl Classify<T, E>,
    op: impl FnOnce() -> Result<T, E>,
) -> Result<T, ExecuteError<E>>
where
    R: Deref,
    R::Target: CircuitBreaker,
{
    let guard = PermitGuard::acquire_timed(breaker, timed).map_err(ExecuteError::Rejected)?;
    let result = op();
    guard.finish(classify.classify(&result));
    result.map_err(ExecuteError::Failed)
}

/// Inherent `execute` methods for a breaker of this crate, shadowing [`CircuitBreakerExt`]'s so
/// that calls on the concrete type skip the clock when the breaker ignores `elapsed`.
macro_rules! inherent_execute {
    ($ty:ty, |$b:ident| $timed:expr) => {
        impl $ty {
            /// Runs `op` if the breaker admits it; every `Err` counts as a failure (see
            /// [`CircuitBreakerExt::execute`](crate::CircuitBreakerExt::execute)).
            ///
            /// # Errors
            /// [`ExecuteError::Rejected`](crate::ExecuteError::Rejected) when refused (the
            /// operation did not run), [`ExecuteError::Failed`](crate::ExecuteError::Failed) with
            /// the operation's error.
            pub fn execute<F, Fut, T, E>(
                &self,
                op: F,
            ) -> crate::Execute<&Self, Fut, crate::FailOnError>
            where
                F: FnOnce() -> Fut,
                Fut: std::future::Future<Output = Result<T, E>>,
            {
                self.execute_with(crate::FailOnError, op)
            }

            /// Runs `op` if the breaker admits it; `classify` decides how the result counts.
            ///
            /// # Errors
            /// As [`execute`](Self::execute).
            pub fn execute_with<C, F, Fut, T, E>(
                &self,
                classify: C,
                op: F,
            ) -> crate::Execute<&Self, Fut, C>
            where
                C: crate::Classify<T, E>,
                F: FnOnce() -> Fut,
                Fut: std::future::Future<Output = Result<T, E>>,
            {
                let $b = self;
                crate::execute::execute_impl(self, $timed, classify, op)
            }

            /// Runs a synchronous `op` if the breaker admits it; every `Err` is a failure.
            ///
            /// # Errors
            /// As [`execute`](Self::execute).
            pub fn execute_sync<T, E>(
                &self,
                op: impl FnOnce() -> Result<T, E>,
            ) -> Result<T, crate::ExecuteError<E>> {
                self.execute_sync_with(crate::FailOnError, op)
            }

            /// Runs a synchronous `op` if the breaker admits it; `classify` decides how the
            /// result counts.
            ///
            /// # Errors
            /// As [`execute`](Self::execute).
            pub fn execute_sync_with<T, E>(
                &self,
                classify: impl crate::Classify<T, E>,
                op: impl FnOnce() -> Result<T, E>,
            ) -> Result<T, crate::ExecuteError<E>> {
                let $b = self;
                crate::execute::execute_sync_impl(self, $timed, classify, op)
            }
        }
    };
}
pub(crate) use inherent_execute;

pin_project! {
    /// The future of [`CircuitBreakerExt::execute`].
    #[must_use = "futures do nothing unless polled"]
    pub struct Execute<R, Fut, C>
    where
        R: Deref,
        R::Target: CircuitBreaker,
    {
        #[pin]
        fut: Option<Fut>,
        guard: Option<PermitGuard<R>>,
        classify: C,
        rejected: Option<Error>,
    }
}

impl<R, Fut, C, T, E> Future for Execute<R, Fut, C>
where
    R: Deref,
    R::Target: CircuitBreaker,
    Fut: Future<Output = Result<T, E>>,
    C: Classify<T, E>,
{
    type Output = Result<T, ExecuteError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(fut) = this.fut.as_pin_mut() else {
            let e = this.rejected.take().unwrap_or(Error::CircuitOpen);
            return Poll::Ready(Err(ExecuteError::Rejected(e)));
        };
        let result = std::task::ready!(fut.poll(cx));
        if let Some(guard) = this.guard.take() {
            guard.finish(this.classify.classify(&result));
        }
        Poll::Ready(result.map_err(ExecuteError::Failed))
    }
}

impl<R, Fut, C> fmt::Debug for Execute<R, Fut, C>
where
    R: Deref,
    R::Target: CircuitBreaker,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Execute")
            .field("admitted", &self.guard.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SimpleCircuitBreaker;
    use std::sync::Arc;
    use std::time::Duration;
    use waypost_core_types::CircuitState;

    #[tokio::test]
    async fn works_through_arc_dyn_and_converts_into_error() {
        let cb: Arc<dyn CircuitBreaker> =
            Arc::new(SimpleCircuitBreaker::new(1, Duration::from_secs(60)));
        async fn op(cb: &dyn CircuitBreaker) -> Result<u8, Error> {
            Ok(cb
                .execute(|| async { Err::<u8, _>(Error::Unavailable("x".into())) })
                .await?)
        }
        assert!(matches!(op(&*cb).await, Err(Error::Unavailable(_))));
        assert!(matches!(op(&*cb).await, Err(Error::CircuitOpen)));
    }

    #[tokio::test]
    async fn classifier_decides_what_counts() {
        let cb = SimpleCircuitBreaker::new(1, Duration::from_secs(60));
        let not_found_is_fine = |r: &Result<(), u16>| match r {
            Err(404) | Ok(()) => Outcome::Success,
            Err(_) => Outcome::Failure,
        };
        for _ in 0..5 {
            let r = cb
                .execute_with(not_found_is_fine, || async { Err::<(), u16>(404) })
                .await;
            assert!(matches!(r, Err(ExecuteError::Failed(404))));
        }
        assert_eq!(cb.state(), CircuitState::Closed);
        let _ = cb
            .execute_with(not_found_is_fine, || async { Err::<(), u16>(500) })
            .await;
        assert!(cb.is_open());
    }

    #[tokio::test]
    async fn refused_operation_is_not_even_created() {
        let cb = SimpleCircuitBreaker::new(1, Duration::from_secs(60));
        let _ = cb.execute_sync(|| Err::<(), _>(()));
        let mut created = false;
        let r = cb
            .execute(|| {
                created = true;
                async { Ok::<(), ()>(()) }
            })
            .await;
        assert!(r.unwrap_err().is_rejected());
        assert!(!created);
    }

    #[tokio::test]
    async fn no_lock_is_held_while_the_operation_runs() {
        // The operation itself uses the same breaker: any lock held around it would deadlock
        // (parking_lot locks are not re-entrant).
        let simple = SimpleCircuitBreaker::new(3, Duration::from_secs(60));
        let rate = crate::FailureRateBreaker::builder()
            .count_window(10)
            .minimum_calls(100)
            .build()
            .expect("valid");
        let throttle = crate::AdaptiveThrottle::new(2.0, Duration::from_secs(60));
        let breakers: [&dyn CircuitBreaker; 3] = [&simple, &rate, &throttle];
        for cb in breakers {
            let r = cb
                .execute(|| async {
                    if let Ok(inner) = cb.try_acquire() {
                        cb.record(inner, Outcome::Failure, Duration::ZERO);
                    }
                    let _ = cb.state();
                    tokio::task::yield_now().await;
                    Ok::<_, Error>(cb.state())
                })
                .await;
            assert!(r.is_ok(), "{cb:?}");
        }
    }
}
