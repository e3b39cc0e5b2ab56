//! W3C trace context on outgoing requests (feature `otel`): each attempt is an OpenTelemetry
//! span (`waypost.attempt`, kind client) whose parent is the caller's span, and the request
//! carries that span's context in `traceparent` / `tracestate`, written by the global text-map
//! propagator (`opentelemetry::global::set_text_map_propagator`; the default one writes
//! nothing).
//!
//! The caller's span is the current `tracing` span when it has an OpenTelemetry context (the
//! `tracing-opentelemetry` layer gives it one), else the current OpenTelemetry `Context`. The
//! spans are made by the global tracer provider's tracer `waypost`.
//!
//! Without the feature the same types exist, empty, and do nothing: the call path compiles to
//! what it was. Public (hidden) only so that `waypost-grpc` shares them.

#[cfg(feature = "otel")]
mod imp {
    use http::header::{HeaderName, HeaderValue};
    use http::HeaderMap;
    use opentelemetry::propagation::Injector;
    use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer};
    use opentelemetry::{global, Context, KeyValue};
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    /// The caller's trace context, taken when a call starts.
    #[derive(Debug, Clone, Default)]
    pub struct TraceParent(Option<Context>);

    impl TraceParent {
        /// The current `tracing` span's OpenTelemetry context, or the current `Context`.
        pub fn current() -> Self {
            let cx = tracing::Span::current().context();
            let cx = if cx.span().span_context().is_valid() {
                cx
            } else {
                Context::current()
            };
            TraceParent(Some(cx))
        }
    }

    /// One attempt's span (boxed: it is held across the attempt's wait, whose future is kept
    /// small).
    #[derive(Debug)]
    pub struct AttemptSpan(Option<Box<Context>>);

    impl AttemptSpan {
        /// Starts the span of attempt `attempt` of a call to `service`, sent to `instance`.
        pub fn start(parent: &TraceParent, service: &str, instance: &str, attempt: u32) -> Self {
            let Some(parent) = &parent.0 else {
                return AttemptSpan(None);
            };
            let tracer = global::tracer("waypost");
            let span = tracer
                .span_builder("waypost.attempt")
                .with_kind(SpanKind::Client)
                .with_attributes([
                    KeyValue::new("waypost.service", service.to_owned()),
                    KeyValue::new("waypost.instance", instance.to_owned()),
                    KeyValue::new("waypost.attempt", i64::from(attempt)),
                ])
                .start_with_context(&tracer, parent);
            AttemptSpan(Some(Box::new(parent.with_span(span))))
        }

        /// Writes the span's context into `headers` (`traceparent`, `tracestate`, … as the
        /// global propagator says).
        pub fn inject(&self, headers: &mut HeaderMap) {
            if let Some(cx) = &self.0 {
                global::get_text_map_propagator(|p| {
                    p.inject_context(cx, &mut HeaderInjector(headers));
                });
            }
        }

        /// Ends the span with the attempt's outcome (a metrics outcome label); `failed` sets
        /// its status to error.
        pub fn end(self, outcome: &'static str, failed: bool) {
            if let Some(cx) = self.0 {
                let span = cx.span();
                span.set_attribute(KeyValue::new("waypost.outcome", outcome));
                if failed {
                    span.set_status(Status::error(outcome));
                }
                span.end();
            }
        }
    }

    /// The propagator writes into request headers (values it cannot write as a header are
    /// skipped: the W3C ones are plain ASCII).
    struct HeaderInjector<'a>(&'a mut HeaderMap);

    impl Injector for HeaderInjector<'_> {
        fn set(&mut self, key: &str, value: String) {
            if let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(key.as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                self.0.insert(k, v);
            }
        }
    }
}

#[cfg(not(feature = "otel"))]
mod imp {
    use http::HeaderMap;

    /// Empty without the `otel` feature.
    #[derive(Debug, Clone, Copy, Default)]
    pub struct TraceParent(());

    impl TraceParent {
        /// Nothing to take.
        #[inline]
        pub fn current() -> Self {
            TraceParent(())
        }
    }

    /// Empty without the `otel` feature.
    #[derive(Debug)]
    pub struct AttemptSpan(());

    impl AttemptSpan {
        /// No span.
        #[inline]
        pub fn start(_: &TraceParent, _: &str, _: &str, _: u32) -> Self {
            AttemptSpan(())
        }

        /// Nothing to write.
        #[inline]
        pub fn inject(&self, _: &mut HeaderMap) {}

        /// Nothing to end.
        #[inline]
        pub fn end(self, _: &'static str, _: bool) {}
    }
}

pub use imp::{AttemptSpan, TraceParent};
