//! A span per call and a span per attempt.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{instance, Pick, Reply, StaticDiscovery, TestServer};
use parking_lot::Mutex;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};
use waypost_client::ServiceClient;

/// Records the name of every span created.
#[derive(Default)]
struct SpanNames {
    next: AtomicU64,
    names: Mutex<Vec<&'static str>>,
}

struct Recorder(Arc<SpanNames>);

impl Subscriber for Recorder {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        self.0.names.lock().push(span.metadata().name());
        Id::from_u64(self.0.next.fetch_add(1, Ordering::Relaxed) + 1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, _: &Event<'_>) {}
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

#[tokio::test(flavor = "current_thread")]
async fn one_span_per_call_and_one_per_attempt() {
    let a = TestServer::start(Reply::Status(503, "down")).await;
    let b = TestServer::start(Reply::Status(200, "ok")).await;
    let d = StaticDiscovery::new(
        vec![instance("a", a.addr), instance("b", b.addr)],
        Pick::First,
    );
    let client = ServiceClient::builder(d)
        .retry(2, Duration::from_millis(1))
        .build()
        .unwrap();
    let names = Arc::new(SpanNames::default());
    let _guard = tracing::subscriber::set_default(Recorder(names.clone()));
    assert_eq!(client.get("svc", "/").await.unwrap(), "ok");
    let names = names.names.lock().clone();
    let count = |n: &str| names.iter().filter(|x| **x == n).count();
    assert_eq!(count("waypost_client.call"), 1, "{names:?}");
    assert_eq!(count("attempt"), 2, "{names:?}");
}
