//! W3C trace context (feature `otel`): the gRPC requests a local server receives carry a
//! `traceparent` (W3C Trace Context, https://www.w3.org/TR/trace-context/ §3.2) naming the
//! caller's trace and the attempt's span, and every attempt is a child span of the caller's span
//! in OpenTelemetry's in-memory exporter.

mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use common::{check, grpc_head, instance, ok_trailers, serving_message, setup, Reply};
use hyper::body::{Frame, Incoming};
use opentelemetry::trace::{SpanId, TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry::{global, Value};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tonic_health::pb::health_client::HealthClient;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use waypost_balancer::RoundRobin;
use waypost_grpc::{Channel, RetryPolicy};

/// An HTTP/2 gRPC responder: `UNAVAILABLE` to the first `fail_first` requests, `SERVING` after;
/// keeps every request's `traceparent` (`-` when there is none).
async fn responder(fail_first: usize) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((io, _)) = listener.accept().await else {
                return;
            };
            let s = s.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                    let s = s.clone();
                    async move {
                        let tp = req
                            .headers()
                            .get("traceparent")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-")
                            .to_owned();
                        let n = {
                            let mut s = s.lock();
                            s.push(tp);
                            s.len()
                        };
                        let (head, body) = if n <= fail_first {
                            (
                                grpc_head()
                                    .header("grpc-status", "14")
                                    .header("grpc-message", "down"),
                                Reply(None, None),
                            )
                        } else {
                            (
                                grpc_head(),
                                Reply(
                                    Some(Frame::data(serving_message())),
                                    Some(Frame::trailers(ok_trailers())),
                                ),
                            )
                        };
                        Ok::<_, Infallible>(head.body(body).expect("response"))
                    }
                });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
                        .await;
            });
        }
    });
    (port, seen)
}

fn parse(traceparent: &str) -> (TraceId, SpanId) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(parts[0], "00", "{traceparent}");
    (
        TraceId::from_hex(parts[1]).expect("trace id"),
        SpanId::from_hex(parts[2]).expect("span id"),
    )
}

fn attribute(span: &SpanData, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.clone())
}

#[test]
fn a_retried_call_carries_each_attempts_traceparent_under_the_callers_span() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    global::set_tracer_provider(provider.clone());
    global::set_text_map_propagator(TraceContextPropagator::new());
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _default = tracing::subscriber::set_default(subscriber);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (caller, seen) = rt.block_on(async {
        let (port, seen) = responder(1).await;
        let (_r, d) = setup(&[instance("g-1", port)], Arc::new(RoundRobin::new())).await;
        let policy = RetryPolicy::new(2).with_backoff(
            Duration::from_millis(1),
            Duration::from_millis(1),
            1.0,
        );
        let channel = Channel::builder(d, "greeter")
            .retry_method("grpc.health.v1.Health", "Check", policy)
            .no_outlier_detection()
            .build()
            .expect("channel");
        let caller = tracing::info_span!("caller");
        let reply = HealthClient::new(channel)
            .check(check())
            .instrument(caller.clone())
            .await
            .expect("retried")
            .into_inner();
        assert_eq!(reply.status, 1);
        let caller = caller.context().span().span_context().clone();
        let seen = seen.lock().clone();
        (caller, seen)
    });
    assert!(caller.is_valid());
    assert_eq!(seen.len(), 2, "two attempts: {seen:?}");
    let mut spans: Vec<SpanData> = exporter
        .get_finished_spans()
        .expect("spans")
        .into_iter()
        .filter(|s| s.name == "waypost.attempt")
        .collect();
    spans.sort_by_key(|s| match attribute(s, "waypost.attempt") {
        Some(Value::I64(n)) => n,
        other => panic!("attempt number: {other:?}"),
    });
    assert_eq!(spans.len(), 2, "one span per attempt: {spans:#?}");
    for (span, tp) in spans.iter().zip(&seen) {
        let (trace, span_id) = parse(tp);
        assert_eq!(trace, caller.trace_id(), "the caller's trace id");
        assert_eq!(
            span_id,
            span.span_context.span_id(),
            "the attempt's own span"
        );
        assert_eq!(span.span_context.trace_id(), caller.trace_id());
        assert_eq!(
            span.parent_span_id,
            caller.span_id(),
            "a child of the caller"
        );
        assert_eq!(
            attribute(span, "waypost.service"),
            Some(Value::from("greeter"))
        );
        assert_eq!(
            attribute(span, "waypost.instance"),
            Some(Value::from("g-1"))
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
}
