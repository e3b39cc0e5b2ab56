//! Running a call: the retry loop, under the overall deadline and the retry budget.

use std::time::Duration;

use tokio::time::Instant;
use tracing::Instrument;
use waypost_core_types::quote::quoted;
use waypost_core_types::{Error, Result};

use super::attempt::Attempt;
use super::{BoxFuture, CallSpec, ServiceClient, ServiceResponse};
use crate::metrics::CallOutcome;
use crate::otel::TraceParent;
use crate::retry::is_idempotent;

pub(super) fn deadline_error(service: &str, overall: Option<Duration>) -> Error {
    Error::timeout(
        format!("call to `{}`", quoted(service)),
        overall.unwrap_or_default(),
    )
}

impl ServiceClient {
    pub(crate) fn execute<'a>(
        &'a self,
        mut spec: CallSpec<'a>,
    ) -> BoxFuture<'a, Result<ServiceResponse>> {
        spec.metrics = Some(self.inner.metrics.service(&spec.service));
        // Taken before the call's span is entered: the caller's span is the attempts' parent.
        spec.trace = TraceParent::current();
        // The path without its query string (it may carry a token), both bounded and escaped:
        // they can come from request input.
        let span = tracing::info_span!(
            "waypost_client.call",
            service = %quoted(&spec.service),
            method = %spec.method,
            path = %quoted(spec.log_path()),
            attempts = 1u32,
        );
        // Boxed once here, so the futures of `get`, `call`, `send`, … stay a pointer wide
        // instead of carrying (and copying) the whole request state machine at every layer.
        // The spec lives in this block; the loop below borrows it.
        Box::pin(async move { self.execute_in_span(&spec).await }.instrument(span))
    }

    pub(super) async fn execute_in_span(&self, spec: &CallSpec<'_>) -> Result<ServiceResponse> {
        // One clock read per call: it starts the call's latency, the deadline, the retry
        // budget's window and the first attempt's clock.
        let start = Instant::now();
        let result = self.run(spec, start).await;
        if let Some(m) = spec.method_metrics() {
            let outcome = match &result {
                Ok(_) => CallOutcome::Success,
                Err(e) => CallOutcome::of(e),
            };
            m.request(outcome, start.elapsed().as_secs_f64());
        }
        result
    }

    /// The retry loop of a call that started at `start`.
    async fn run(&self, spec: &CallSpec<'_>, start: Instant) -> Result<ServiceResponse> {
        let inner = &*self.inner;
        let overall = spec.deadline.or(inner.deadline);
        // A deadline too far to represent (`Duration::MAX`) is no deadline.
        let deadline = overall.and_then(|d| start.checked_add(d));
        let start = Some(start);
        let per_attempt = spec.timeout.unwrap_or(inner.timeout);
        let max_retries = spec.max_retries.unwrap_or(inner.retry.max_retries);
        let retry_unsafe = spec
            .retry_non_idempotent
            .unwrap_or(inner.retry.retry_non_idempotent);
        let idempotent = is_idempotent(&spec.method);
        let deadline_error = || {
            spec.count_deadline_exceeded();
            deadline_error(&spec.service, overall)
        };
        if let (Some(b), Some(start)) = (&inner.budget, start) {
            b.deposit_at(start);
        }
        let mut failed: Vec<String> = Vec::new();
        let mut attempt: u32 = 0;
        // The first retry's backoff, waited only if that retry picks an instance that failed.
        let mut backoff_if_again: Option<Duration> = None;
        loop {
            attempt += 1;
            if attempt > 1 {
                tracing::Span::current().record("attempts", attempt);
            }
            let remaining = match deadline {
                // Nothing of the deadline is spent before the first attempt.
                Some(_) if attempt == 1 => overall,
                Some(d) => {
                    let r = d.saturating_duration_since(Instant::now());
                    if r.is_zero() {
                        return Err(deadline_error());
                    }
                    Some(r)
                }
                None => None,
            };
            // One attempt, boxed: the retry loop's own state stays small, and so does every
            // allocation (within glibc's per-thread cache, 1032 bytes; see the size test in
            // `mod.rs`).
            let (instance, result, capped_by_deadline) = Box::pin(self.try_once(
                spec,
                &failed,
                attempt,
                remaining,
                per_attempt,
                overall,
                backoff_if_again.take(),
                if attempt == 1 { start } else { None },
            ))
            .await?;
            match result {
                Attempt::Done(status, headers, body) => {
                    return Ok(ServiceResponse {
                        status,
                        headers,
                        body,
                        instance,
                        attempts: attempt,
                    });
                }
                Attempt::Fail {
                    error,
                    outcome: _,
                    sent,
                    timed_out,
                } => {
                    tracing::debug!(attempt, instance = %instance.id, error = %error, "attempt failed");
                    if timed_out && capped_by_deadline {
                        return Err(deadline_error());
                    }
                    // Whether another attempt may help is the error's to say; whether it is safe,
                    // the method's (or the caller's) once the request may have been acted on.
                    let allowed = error.is_retryable() && (!sent || idempotent || retry_unsafe);
                    if !allowed || attempt > max_retries {
                        return Err(error);
                    }
                    if let Some(b) = &inner.budget {
                        if !b.try_withdraw() {
                            if let Some(m) = &spec.metrics {
                                m.budget_exhausted();
                            }
                            tracing::debug!("retry budget exhausted");
                            return Err(error);
                        }
                    }
                    if !failed.contains(&instance.id) {
                        failed.push(instance.id.clone());
                    }
                    let wait = inner.retry.backoff(attempt);
                    if let Some(d) = deadline {
                        // The deadline caps the backoff: no point sleeping past it.
                        if Instant::now().checked_add(wait).is_none_or(|end| end >= d) {
                            return Err(error);
                        }
                    }
                    if let Some(m) = spec.method_metrics() {
                        m.retry();
                    }
                    if attempt == 1 && inner.retry.immediate_failover {
                        // Another instance needs no time to recover: `try_once` waits only if
                        // the pick is one that already failed.
                        backoff_if_again = Some(wait);
                    } else {
                        // Boxed: a timer takes room, and most calls never wait.
                        Box::pin(tokio::time::sleep(wait)).await;
                    }
                }
            }
        }
    }
}
