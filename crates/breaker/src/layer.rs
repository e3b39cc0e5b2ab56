//! The tower form: [`CircuitBreakerLayer`] wraps any service in a breaker.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;
use waypost_core_types::{BoxError, CircuitBreaker};

use crate::execute::{Classify, FailOnError, PermitGuard};

/// A tower [`Layer`] that puts a shared breaker in front of a service.
///
/// Refused calls fail at once with [`Error::CircuitOpen`](waypost_core_types::Error::CircuitOpen)
/// (boxed) without reaching the inner service; `poll_ready` only asks the inner service. The
/// classifier decides how each result counts (default: every `Err` is a failure).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use tower::{service_fn, Layer, ServiceExt};
/// use waypost_breaker::{CircuitBreakerLayer, SimpleCircuitBreaker};
///
/// let breaker = Arc::new(SimpleCircuitBreaker::new(1, Duration::from_secs(5)));
/// let svc = CircuitBreakerLayer::new(breaker.clone())
///     .layer(service_fn(|x: u32| async move { if x == 0 { Err("zero") } else { Ok(x) } }));
/// assert_eq!(svc.clone().oneshot(1).await.unwrap(), 1);
/// assert!(svc.clone().oneshot(0).await.is_err());
/// let refused = svc.oneshot(2).await.unwrap_err();
/// assert_eq!(refused.to_string(), "circuit breaker is open");
/// # }
/// ```
pub struct CircuitBreakerLayer<B: ?Sized, C = FailOnError> {
    breaker: Arc<B>,
    classify: C,
}

impl<B: ?Sized> CircuitBreakerLayer<B, FailOnError> {
    /// A layer over `breaker` that counts every `Err` as a failure.
    pub fn new(breaker: Arc<B>) -> Self {
        CircuitBreakerLayer {
            breaker,
            classify: FailOnError,
        }
    }
}

impl<B: ?Sized, C> CircuitBreakerLayer<B, C> {
    /// Uses `classify` to decide how results count.
    pub fn with_classifier<C2>(self, classify: C2) -> CircuitBreakerLayer<B, C2> {
        CircuitBreakerLayer {
            breaker: self.breaker,
            classify,
        }
    }
}

impl<B: ?Sized, C: Clone> Clone for CircuitBreakerLayer<B, C> {
    fn clone(&self) -> Self {
        CircuitBreakerLayer {
            breaker: self.breaker.clone(),
            classify: self.classify.clone(),
        }
    }
}

impl<B: fmt::Debug + ?Sized, C> fmt::Debug for CircuitBreakerLayer<B, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("breaker", &self.breaker)
            .finish()
    }
}

impl<S, B: ?Sized, C: Clone> Layer<S> for CircuitBreakerLayer<B, C> {
    type Service = CircuitBreakerService<S, B, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreakerService {
            inner,
            breaker: self.breaker.clone(),
            classify: self.classify.clone(),
        }
    }
}

/// A service behind a breaker; see [`CircuitBreakerLayer`].
pub struct CircuitBreakerService<S, B: ?Sized, C = FailOnError> {
    inner: S,
    breaker: Arc<B>,
    classify: C,
}

impl<S, B: ?Sized> CircuitBreakerService<S, B, FailOnError> {
    /// Wraps `inner` in `breaker`.
    pub fn new(inner: S, breaker: Arc<B>) -> Self {
        CircuitBreakerService {
            inner,
            breaker,
            classify: FailOnError,
        }
    }
}

impl<S, B: ?Sized, C> CircuitBreakerService<S, B, C> {
    /// The breaker.
    pub fn breaker(&self) -> &Arc<B> {
        &self.breaker
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, by value.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, B: ?Sized, C: Clone> Clone for CircuitBreakerService<S, B, C> {
    fn clone(&self) -> Self {
        CircuitBreakerService {
            inner: self.inner.clone(),
            breaker: self.breaker.clone(),
            classify: self.classify.clone(),
        }
    }
}

impl<S: fmt::Debug, B: fmt::Debug + ?Sized, C> fmt::Debug for CircuitBreakerService<S, B, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerService")
            .field("inner", &self.inner)
            .field("breaker", &self.breaker)
            .finish()
    }
}

impl<S, B, C, Req> Service<Req> for CircuitBreakerService<S, B, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    B: CircuitBreaker + ?Sized,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, B, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match PermitGuard::acquire(self.breaker.clone()) {
            Ok(guard) => ResponseFuture {
                fut: Some(self.inner.call(req)),
                guard: Some(guard),
                classify: self.classify.clone(),
                rejected: None,
            },
            Err(e) => ResponseFuture {
                fut: None,
                guard: None,
                classify: self.classify.clone(),
                rejected: Some(e),
            },
        }
    }
}

pin_project! {
    /// The response future of [`CircuitBreakerService`].
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<F, B, C>
    where
        B: CircuitBreaker,
        B: ?Sized,
    {
        #[pin]
        fut: Option<F>,
        guard: Option<PermitGuard<Arc<B>>>,
        classify: C,
        rejected: Option<waypost_core_types::Error>,
    }
}

impl<F, B, C, T, E> Future for ResponseFuture<F, B, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    B: CircuitBreaker + ?Sized,
    C: Classify<T, E>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(fut) = this.fut.as_pin_mut() else {
            let e = this
                .rejected
                .take()
                .unwrap_or(waypost_core_types::Error::CircuitOpen);
            return Poll::Ready(Err(Box::new(e)));
        };
        let result = std::task::ready!(fut.poll(cx));
        if let Some(guard) = this.guard.take() {
            guard.finish(this.classify.classify(&result));
        }
        Poll::Ready(result.map_err(Into::into))
    }
}

impl<F, B: CircuitBreaker + ?Sized, C> fmt::Debug for ResponseFuture<F, B, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("admitted", &self.fut.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SimpleCircuitBreaker;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;
    use tower::{service_fn, ServiceExt};
    use waypost_core_types::{CircuitState, Outcome};

    #[tokio::test]
    async fn refused_calls_never_reach_the_inner_service() {
        let hits = Arc::new(AtomicU32::new(0));
        let h = hits.clone();
        let inner = service_fn(move |fail: bool| {
            h.fetch_add(1, Ordering::SeqCst);
            async move {
                if fail {
                    Err::<u8, _>(std::io::Error::other("down"))
                } else {
                    Ok(1)
                }
            }
        });
        let breaker = Arc::new(SimpleCircuitBreaker::new(2, Duration::from_secs(60)));
        let svc = CircuitBreakerLayer::new(breaker.clone()).layer(inner);
        for _ in 0..2 {
            assert!(svc.clone().oneshot(true).await.is_err());
        }
        assert_eq!(breaker.state(), CircuitState::Open);
        let err = svc.clone().oneshot(false).await.unwrap_err();
        assert!(matches!(
            err.downcast_ref::<waypost_core_types::Error>(),
            Some(waypost_core_types::Error::CircuitOpen)
        ));
        assert_eq!(hits.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn classifier_and_dyn_breaker() {
        let breaker: Arc<dyn CircuitBreaker> =
            Arc::new(SimpleCircuitBreaker::new(1, Duration::from_secs(60)));
        // A response value can count as a failure (say, a 503 returned as Ok).
        let svc = CircuitBreakerLayer::new(breaker.clone())
            .with_classifier(|r: &Result<u16, BoxError>| match r {
                Ok(s) if *s >= 500 => Outcome::Failure,
                Ok(_) => Outcome::Success,
                Err(_) => Outcome::Ignored,
            })
            .layer(service_fn(|s: u16| async move {
                if s == 0 {
                    Err::<u16, BoxError>("ignored".into())
                } else {
                    Ok(s)
                }
            }));
        assert!(svc.clone().oneshot(0).await.is_err());
        assert_eq!(svc.clone().oneshot(200).await.unwrap(), 200);
        assert!(!breaker.is_open());
        assert_eq!(svc.clone().oneshot(503).await.unwrap(), 503);
        assert!(breaker.is_open());
    }
}
