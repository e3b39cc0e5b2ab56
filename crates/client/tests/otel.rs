//! W3C trace context (feature `otel`): the request a local server receives carries a
//! `traceparent` (W3C Trace Context, https://www.w3.org/TR/trace-context/ §3.2) naming the
//! caller's trace and the attempt's span, and every attempt is a child span of the caller's span
//! in OpenTelemetry's in-memory exporter.
#![allow(clippy::unwrap_used)]

mod common;

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::{SpanId, TraceContextExt, TraceId, Tracer, TracerProvider as _};
use opentelemetry::{global, Context, Value};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use waypost_client::ServiceClient;

use common::{instance, Pick, StaticDiscovery};

/// One provider for the test binary (the propagator and the provider are global): spans are
/// told apart by their trace id.
fn provider() -> &'static (SdkTracerProvider, InMemorySpanExporter) {
    static P: OnceLock<(SdkTracerProvider, InMemorySpanExporter)> = OnceLock::new();
    P.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        global::set_tracer_provider(provider.clone());
        global::set_text_map_propagator(TraceContextPropagator::new());
        (provider, exporter)
    })
}

/// A server that answers 503 to the first `fail_first` requests and 200 after, and keeps every
/// request's `traceparent` (or `-` when there is none).
async fn server(fail_first: usize) -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((io, _)) = listener.accept().await else {
                return;
            };
            let s = s.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let s = s.clone();
                    async move {
                        let tp = req
                            .headers()
                            .get("traceparent")
                            .map_or("-".to_owned(), |v| v.to_str().unwrap().to_owned());
                        let n = {
                            let mut s = s.lock();
                            s.push(tp);
                            s.len()
                        };
                        let status = if n <= fail_first { 503 } else { 200 };
                        let mut resp = hyper::Response::new(Full::new(Bytes::from_static(b"ok")));
                        *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(io), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// `traceparent` = `00-<trace id>-<parent id>-<flags>`.
fn parse(traceparent: &str) -> (TraceId, SpanId) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(parts[0], "00", "{traceparent}");
    (
        TraceId::from_hex(parts[1]).unwrap(),
        SpanId::from_hex(parts[2]).unwrap(),
    )
}

fn attribute(span: &SpanData, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.clone())
}

/// The attempt spans of `trace`, by attempt number.
fn attempt_spans(trace: TraceId) -> Vec<SpanData> {
    let mut spans: Vec<SpanData> = provider()
        .1
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .filter(|s| s.name == "waypost.attempt" && s.span_context.trace_id() == trace)
        .collect();
    spans.sort_by_key(|s| match attribute(s, "waypost.attempt") {
        Some(Value::I64(n)) => n,
        other => panic!("attempt number: {other:?}"),
    });
    spans
}

/// A call retried once (503, then 200), under the caller's context `parent`: checks what the
/// server saw against the exported spans.
fn check_retried_call(parent: SpanId, trace: TraceId, seen: &[String], instance_id: &str) {
    assert_eq!(seen.len(), 2, "two attempts: {seen:?}");
    let spans = attempt_spans(trace);
    assert_eq!(spans.len(), 2, "one span per attempt: {spans:#?}");
    for (i, (span, tp)) in spans.iter().zip(seen).enumerate() {
        let (tp_trace, tp_span) = parse(tp);
        assert_eq!(tp_trace, trace, "the caller's trace id");
        assert_eq!(
            tp_span,
            span.span_context.span_id(),
            "the attempt's own span id"
        );
        assert_eq!(span.parent_span_id, parent, "a child of the caller's span");
        assert_eq!(
            attribute(span, "waypost.attempt"),
            Some(Value::I64(i as i64 + 1))
        );
        assert_eq!(attribute(span, "waypost.service"), Some(Value::from("svc")));
        assert_eq!(
            attribute(span, "waypost.instance"),
            Some(Value::from(instance_id.to_owned()))
        );
    }
    assert_eq!(
        attribute(&spans[0], "waypost.outcome"),
        Some(Value::from("server_error"))
    );
    assert_eq!(
        attribute(&spans[1], "waypost.outcome"),
        Some(Value::from("success"))
    );
    assert_ne!(
        spans[0].span_context.span_id(),
        spans[1].span_context.span_id()
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn the_callers_tracing_span_is_the_parent_of_every_attempt() {
    let (provider, _) = provider();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _default = tracing::subscriber::set_default(subscriber);
    let rt = runtime();
    let (caller, seen) = rt.block_on(async {
        let (addr, seen) = server(1).await;
        let d = StaticDiscovery::new(vec![instance("a", addr)], Pick::First);
        let client = ServiceClient::builder(d)
            .retry(1, Duration::ZERO)
            .no_retry_budget()
            .build()
            .unwrap();
        let caller = tracing::info_span!("caller");
        let body = client
            .get("svc", "/users/1")
            .instrument(caller.clone())
            .await
            .unwrap();
        assert_eq!(body, "ok");
        let caller = caller.context().span().span_context().clone();
        let seen = seen.lock().clone();
        (caller, seen)
    });
    assert!(caller.is_valid());
    check_retried_call(caller.span_id(), caller.trace_id(), &seen, "a");
}

#[test]
fn an_opentelemetry_context_alone_is_the_parent_too() {
    let (provider, _) = provider();
    let rt = runtime();
    let (caller, seen) = rt.block_on(async {
        let (addr, seen) = server(1).await;
        let d = StaticDiscovery::new(vec![instance("b", addr)], Pick::First);
        let client = ServiceClient::builder(d)
            .retry(1, Duration::ZERO)
            .no_retry_budget()
            .build()
            .unwrap();
        let span = provider.tracer("test").start("caller");
        let cx = Context::current_with_span(span);
        let caller = cx.span().span_context().clone();
        let body = client
            .get("svc", "/users/2")
            .with_context(cx)
            .await
            .unwrap();
        assert_eq!(body, "ok");
        let seen = seen.lock().clone();
        (caller, seen)
    });
    assert!(caller.is_valid());
    check_retried_call(caller.span_id(), caller.trace_id(), &seen, "b");
}

#[test]
fn without_a_caller_span_each_attempt_starts_a_trace_of_its_own() {
    provider();
    let rt = runtime();
    let seen = rt.block_on(async {
        let (addr, seen) = server(0).await;
        let d = StaticDiscovery::new(vec![instance("c", addr)], Pick::First);
        let client = ServiceClient::builder(d).build().unwrap();
        assert_eq!(client.get("svc", "/").await.unwrap(), "ok");
        let seen = seen.lock().clone();
        seen
    });
    assert_eq!(seen.len(), 1);
    let (trace, span_id) = parse(&seen[0]);
    let spans = attempt_spans(trace);
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].span_context.span_id(), span_id);
    assert_eq!(spans[0].parent_span_id, SpanId::INVALID, "a root span");
}
