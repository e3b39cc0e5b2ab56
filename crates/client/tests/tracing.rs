//! A span per call and a span per attempt; what they record.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{instance, Pick, Reply, StaticDiscovery, TestServer};
use parking_lot::Mutex;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};
use waypost_client::ServiceClient;
use waypost_core_types::Error;

/// One test at a time: tracing caches each callsite's interest process-wide, and a test that
/// reaches a callsite without a subscriber while another installs its own can leave that
/// callsite disabled for the other (a race in `tracing-core`'s interest cache).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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
    let _one = ONE_AT_A_TIME.lock().await;
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

/// Writes every field of every span and event, at every level, as `name=value` lines.
#[derive(Default)]
struct Lines {
    next: AtomicU64,
    lines: Mutex<Vec<String>>,
}

struct Capture(Arc<Lines>);

struct Fields<'a>(&'a mut String);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={value:?}", field.name()));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push_str(&format!(" {}={value}", field.name()));
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let mut line = span.metadata().name().to_owned();
        span.record(&mut Fields(&mut line));
        self.0.lines.lock().push(line);
        Id::from_u64(self.0.next.fetch_add(1, Ordering::Relaxed) + 1)
    }
    fn record(&self, _: &Id, values: &Record<'_>) {
        let mut line = "record".to_owned();
        values.record(&mut Fields(&mut line));
        self.0.lines.lock().push(line);
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut line = "event".to_owned();
        event.record(&mut Fields(&mut line));
        self.0.lines.lock().push(line);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

/// A token in the query string (or the fragment) never reaches a span or a log line; the path
/// itself does, so a call can still be told apart.
#[tokio::test(flavor = "current_thread")]
async fn the_query_string_never_reaches_a_log_line() {
    let _one = ONE_AT_A_TIME.lock().await;
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
    let lines = Arc::new(Lines::default());
    let _guard = tracing::subscriber::set_default(Capture(lines.clone()));
    let path = "/users/7?access_token=SECRET-TOKEN-42&x=1#frag-SECRET";
    assert_eq!(client.get("svc", path).await.unwrap(), "ok");
    // The query string still reached the server.
    assert!(b.state.requests.lock()[0]
        .1
        .ends_with("access_token=SECRET-TOKEN-42&x=1"));
    // A call that fails and is logged at debug level, too.
    b.set(Reply::Status(500, "boom"));
    a.set(Reply::Status(500, "boom"));
    assert!(client.get("svc", path).await.is_err());
    let lines = lines.lines.lock().clone();
    let call = lines
        .iter()
        .find(|l| l.starts_with("waypost_client.call"))
        .expect("a call span");
    assert!(call.contains("path=/users/7"), "{call}");
    assert!(lines.iter().any(|l| l.starts_with("event")), "{lines:?}");
    for line in &lines {
        assert!(!line.contains("SECRET"), "{line}");
        assert!(!line.contains("access_token"), "{line}");
    }
}

/// An error body is escaped and bounded: no ESC, CR, LF, BEL or bidi control reaches an error
/// text (and through it a log line or a terminal).
#[tokio::test(flavor = "current_thread")]
async fn error_bodies_are_escaped_and_bounded() {
    let _one = ONE_AT_A_TIME.lock().await;
    let hostile = "denied\u{1b}[31m\r\nINFO forged line\u{7}\u{202e}txt.exe\u{2066}";
    let a = TestServer::start(Reply::Status(403, hostile)).await;
    let d = StaticDiscovery::new(vec![instance("a", a.addr)], Pick::First);
    let client = ServiceClient::builder(d).build().unwrap();
    let err = client.get("svc", "/").await.unwrap_err();
    let Error::Http { status, body } = &err else {
        panic!("{err}")
    };
    assert_eq!(*status, 403);
    let text = err.to_string();
    for bad in ['\u{1b}', '\r', '\n', '\u{7}', '\u{202e}', '\u{2066}'] {
        assert!(!body.contains(bad), "{body:?}");
        assert!(!text.contains(bad), "{text:?}");
    }
    assert_eq!(
        body,
        r"denied\u{1b}[31m\r\nINFO forged line\u{7}\u{202e}txt.exe\u{2066}"
    );

    // A long body: at most 512 characters of it, and its length.
    let long: &'static str = Box::leak("\u{1b}".repeat(5_000).into_boxed_str());
    a.set(Reply::Status(500, long));
    let err = client.get("svc", "/").await.unwrap_err();
    let Error::Http { body, .. } = &err else {
        panic!("{err}")
    };
    assert!(!body.contains('\u{1b}'));
    assert!(body.len() <= 512 * 6 + 32, "{} bytes", body.len());
    assert!(body.ends_with("… (1024 bytes)"), "{body}");
}
