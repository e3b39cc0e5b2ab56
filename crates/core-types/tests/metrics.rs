//! The registry metrics of the shared core, recorded by a recording recorder: names, labels
//! and values exactly as `docs/metrics.md` ("Registries (every backend)") lists them.
#![cfg(feature = "backend")]
#![allow(clippy::unwrap_used)]

use futures_util::StreamExt;
use waypost_core_types::observe::RegistryOp;
use waypost_core_types::{
    Error, Scope, ServiceEvent, ServiceInfo, SnapshotReason, StateCell, WatchEvent, WatchHub,
};

/// A recording recorder (on `metrics-util`'s registry and atomic storage) that can be read
/// without resetting it: `metrics_util::debugging::Snapshotter` swaps gauges to zero when it
/// reads them, so a gauge the code left alone would read 0 at the next snapshot, and "set to
/// 0" could not be told from "not set". [`Recording::take`] gives counters and histograms as
/// what happened since the last take, and gauges as their current value.
#[derive(Clone, Default)]
struct Recording(std::sync::Arc<RecordingInner>);

struct RecordingInner {
    registry: metrics_util::registry::Registry<metrics::Key, metrics_util::registry::AtomicStorage>,
    described: std::sync::Mutex<std::collections::BTreeMap<String, Option<metrics::Unit>>>,
    counted: std::sync::Mutex<std::collections::HashMap<metrics::Key, u64>>,
}

impl Default for RecordingInner {
    fn default() -> Self {
        RecordingInner {
            registry: metrics_util::registry::Registry::atomic(),
            described: Default::default(),
            counted: Default::default(),
        }
    }
}

impl metrics::Recorder for Recording {
    fn describe_counter(
        &self,
        key: metrics::KeyName,
        unit: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
        self.0
            .described
            .lock()
            .unwrap()
            .insert(key.as_str().to_owned(), unit);
    }
    fn describe_gauge(
        &self,
        key: metrics::KeyName,
        unit: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
        self.0
            .described
            .lock()
            .unwrap()
            .insert(key.as_str().to_owned(), unit);
    }
    fn describe_histogram(
        &self,
        key: metrics::KeyName,
        unit: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
        self.0
            .described
            .lock()
            .unwrap()
            .insert(key.as_str().to_owned(), unit);
    }
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        self.0
            .registry
            .get_or_create_counter(key, |c| metrics::Counter::from_arc(c.clone()))
    }
    fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        self.0
            .registry
            .get_or_create_gauge(key, |g| metrics::Gauge::from_arc(g.clone()))
    }
    fn register_histogram(
        &self,
        key: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        self.0
            .registry
            .get_or_create_histogram(key, |h| metrics::Histogram::from_arc(h.clone()))
    }
}

#[derive(Debug)]
enum Value {
    Counter(u64),
    Gauge(f64),
    Histogram(Vec<f64>),
}

/// What a [`Recording`] held at a take, keyed by name and labels (labels in any order).
#[derive(Debug)]
struct Recorded(std::collections::HashMap<(String, Vec<(String, String)>), Value>);

fn key_parts(key: &metrics::Key) -> (String, Vec<(String, String)>) {
    let mut labels: Vec<(String, String)> = key
        .labels()
        .map(|l| (l.key().to_owned(), l.value().to_owned()))
        .collect();
    labels.sort();
    (key.name().to_owned(), labels)
}

// Not every test file reads every kind of metric.
#[allow(dead_code)]
impl Recording {
    /// Counters: their increase since the last take; gauges: their value now; histograms: the
    /// samples recorded since the last take.
    fn take(&self) -> Recorded {
        use std::sync::atomic::Ordering;
        let mut all = std::collections::HashMap::new();
        let mut counted = self.0.counted.lock().unwrap();
        for (key, c) in self.0.registry.get_counter_handles() {
            let now = c.load(Ordering::SeqCst);
            let before = counted.insert(key.clone(), now).unwrap_or(0);
            all.insert(key_parts(&key), Value::Counter(now - before));
        }
        for (key, g) in self.0.registry.get_gauge_handles() {
            let value = f64::from_bits(g.load(Ordering::SeqCst));
            all.insert(key_parts(&key), Value::Gauge(value));
        }
        for (key, h) in self.0.registry.get_histogram_handles() {
            let mut samples = Vec::new();
            h.clear_with(|xs| samples.extend_from_slice(xs));
            all.insert(key_parts(&key), Value::Histogram(samples));
        }
        Recorded(all)
    }

    /// The metrics described so far, with their units.
    fn described(&self) -> std::collections::BTreeMap<String, Option<metrics::Unit>> {
        self.0.described.lock().unwrap().clone()
    }
}

// Not every test file reads every kind of metric.
#[allow(dead_code)]
impl Recorded {
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<&Value> {
        let mut labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        labels.sort();
        self.0.get(&(name.to_owned(), labels))
    }

    /// A counter's increase since the last take (0 when it was never registered).
    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        match self.get(name, labels) {
            Some(Value::Counter(n)) => *n,
            None => 0,
            Some(other) => panic!("{name} {labels:?} is not a counter: {other:?}"),
        }
    }

    /// A gauge's value, `None` when it was never registered.
    fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        match self.get(name, labels) {
            Some(Value::Gauge(v)) => Some(*v),
            None => None,
            Some(other) => panic!("{name} {labels:?} is not a gauge: {other:?}"),
        }
    }

    /// A histogram's samples since the last take.
    fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        match self.get(name, labels) {
            Some(Value::Histogram(v)) => v.clone(),
            None => Vec::new(),
            Some(other) => panic!("{name} {labels:?} is not a histogram: {other:?}"),
        }
    }

    /// The label names every series of metric `name` carries (sorted), one entry per distinct
    /// set: a metric documented with labels `{a,b}` gives exactly `[["a","b"]]`.
    fn label_names(&self, name: &str) -> Vec<Vec<String>> {
        let mut sets: Vec<Vec<String>> = self
            .0
            .keys()
            .filter(|(n, _)| n == name)
            .map(|(_, labels)| labels.iter().map(|(k, _)| k.clone()).collect())
            .collect();
        sets.sort();
        sets.dedup();
        sets
    }
}

/// Runs `f` on a current-thread runtime with `recorder` as this thread's recorder.
fn recorded<T>(recorder: &Recording, f: impl std::future::Future<Output = T>) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(recorder, || rt.block_on(f))
}

const TRANSITIONS: &str = "waypost_registry_state_transitions_total";
const CONNECTED: &str = "waypost_registry_connected";

#[test]
fn state_transitions_connected_gauge_and_reregistrations() {
    let recorder = Recording::default();
    let cell = metrics::with_local_recorder(&recorder, || StateCell::new("etcd"));
    let etcd = [("backend", "etcd")];
    let m = recorder.take();
    assert_eq!(
        m.gauge(CONNECTED, &etcd),
        Some(1.0),
        "a new registry is connected"
    );
    for state in ["connected", "recovering", "closed"] {
        assert_eq!(
            m.counter(TRANSITIONS, &[("backend", "etcd"), ("state", state)]),
            0
        );
    }
    assert_eq!(m.label_names(TRANSITIONS), [["backend", "state"]]);
    assert_eq!(m.label_names(CONNECTED), [["backend"]]);

    cell.failed(&"connection refused");
    cell.failed(&"still refused");
    let m = recorder.take();
    assert_eq!(
        m.counter(TRANSITIONS, &[("backend", "etcd"), ("state", "recovering")]),
        1,
        "two failed attempts are one transition"
    );
    assert_eq!(m.gauge(CONNECTED, &etcd), Some(0.0));

    cell.connected();
    cell.connected();
    cell.metrics().reregistered(3);
    cell.metrics().reregistered(0);
    let m = recorder.take();
    assert_eq!(
        m.counter(TRANSITIONS, &[("backend", "etcd"), ("state", "connected")]),
        1
    );
    assert_eq!(
        m.counter(TRANSITIONS, &[("backend", "etcd"), ("state", "recovering")]),
        0
    );
    assert_eq!(m.gauge(CONNECTED, &etcd), Some(1.0));
    assert_eq!(
        m.counter("waypost_registry_reregistrations_total", &etcd),
        3
    );
    assert_eq!(
        m.label_names("waypost_registry_reregistrations_total"),
        [["backend"]]
    );

    assert!(cell.close());
    assert!(!cell.close());
    cell.failed(&"after close");
    let m = recorder.take();
    assert_eq!(
        m.counter(TRANSITIONS, &[("backend", "etcd"), ("state", "closed")]),
        1
    );
    assert_eq!(
        m.counter(TRANSITIONS, &[("backend", "etcd"), ("state", "recovering")]),
        0
    );
    assert_eq!(m.gauge(CONNECTED, &etcd), Some(0.0));
}

#[test]
fn the_connected_gauge_counts_the_connected_registries_of_a_backend() {
    let recorder = Recording::default();
    let nacos = [("backend", "nacos")];
    let (a, b) = metrics::with_local_recorder(&recorder, || {
        (StateCell::new("nacos"), StateCell::new("nacos"))
    });
    assert_eq!(recorder.take().gauge(CONNECTED, &nacos), Some(2.0));
    a.failed(&"connection refused");
    assert_eq!(recorder.take().gauge(CONNECTED, &nacos), Some(1.0));
    // Closing a recovering registry leaves the count; closing a connected one lowers it.
    assert!(a.close());
    assert_eq!(recorder.take().gauge(CONNECTED, &nacos), Some(1.0));
    let c = metrics::with_local_recorder(&recorder, || StateCell::new("nacos"));
    assert_eq!(recorder.take().gauge(CONNECTED, &nacos), Some(2.0));
    assert!(b.close());
    assert_eq!(recorder.take().gauge(CONNECTED, &nacos), Some(1.0));
    // Dropped without close while connected.
    drop(c);
    assert_eq!(recorder.take().gauge(CONNECTED, &nacos), Some(0.0));
    drop(a);
    drop(b);
    assert_eq!(recorder.take().gauge(CONNECTED, &nacos), Some(0.0));
}

#[test]
fn calls_are_timed_by_op_and_errors_counted() {
    let recorder = Recording::default();
    recorded(&recorder, async {
        let cell = StateCell::new("consul");
        let m = cell.metrics();
        m.observe(RegistryOp::Register, async { Ok(()) })
            .await
            .unwrap();
        let slow = m
            .observe(RegistryOp::Get, async {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                Err::<(), _>(Error::NotFound("x".into()))
            })
            .await;
        assert!(matches!(slow, Err(Error::NotFound(_))));
        m.observe(RegistryOp::Get, async { Ok(()) }).await.unwrap();
    });
    let m = recorder.take();
    let op = |op: &'static str| [("backend", "consul"), ("op", op)];
    const DURATION: &str = "waypost_registry_call_duration_seconds";
    const ERRORS: &str = "waypost_registry_call_errors_total";
    assert_eq!(m.histogram(DURATION, &op("register")).len(), 1);
    let gets = m.histogram(DURATION, &op("get"));
    assert_eq!(gets.len(), 2);
    assert!(
        gets.iter().any(|s| *s >= 0.020),
        "the slow call is in seconds: {gets:?}"
    );
    assert_eq!(m.counter(ERRORS, &op("get")), 1);
    assert_eq!(m.counter(ERRORS, &op("register")), 0);
    // Every op has its series from the start, with exactly these labels.
    for op in [
        "register",
        "deregister",
        "update",
        "renew",
        "get",
        "list",
        "watch",
    ] {
        assert_eq!(
            m.counter(ERRORS, &[("backend", "consul"), ("op", op)]),
            u64::from(op == "get")
        );
    }
    assert_eq!(m.label_names(DURATION), [["backend", "op"]]);
    assert_eq!(m.label_names(ERRORS), [["backend", "op"]]);
}

fn svc(id: &str) -> ServiceInfo {
    ServiceInfo::new(id, "web", "10.0.0.1", 80)
}

#[test]
fn watch_events_by_type_and_resyncs_by_reason() {
    const EVENTS: &str = "waypost_registry_watch_events_total";
    const RESYNCS: &str = "waypost_registry_watch_resyncs_total";
    let ev = |event: &'static str| [("backend", "memory"), ("event", event)];
    let why = |reason: &'static str| [("backend", "memory"), ("reason", reason)];
    let recorder = Recording::default();
    recorded(&recorder, async {
        // Streams may fall 2 items behind.
        let hub = WatchHub::new("memory", 2);
        let mut stream = hub.subscribe(Scope::Service("web".into())).unwrap();
        assert!(matches!(
            stream.next().await,
            Some(WatchEvent::Snapshot {
                reason: SnapshotReason::Initial,
                ..
            })
        ));
        let m = recorder.take();
        assert_eq!(
            m.counter(EVENTS, &ev("snapshot")),
            1,
            "the initial snapshot"
        );
        assert_eq!(m.label_names(EVENTS), [["backend", "event"]]);
        assert_eq!(m.label_names(RESYNCS), [["backend", "reason"]]);

        hub.apply(ServiceEvent::created(svc("a")));
        hub.apply(ServiceEvent::created(svc("b")));
        hub.apply(ServiceEvent::updated(svc("a").with_version("2")));
        hub.apply(ServiceEvent::deleted(svc("b")));
        // Deleting what is not there changes nothing: not an event.
        hub.apply(ServiceEvent::deleted(svc("zz")));
        // The stream fell behind: its next item is a `Lagged` snapshot.
        match stream.next().await {
            Some(WatchEvent::Snapshot {
                services,
                reason: SnapshotReason::Lagged,
            }) => assert_eq!(services.len(), 1),
            other => panic!("expected a lagged snapshot, got {other:?}"),
        }
        let m = recorder.take();
        assert_eq!(m.counter(EVENTS, &ev("created")), 2);
        assert_eq!(m.counter(EVENTS, &ev("updated")), 1);
        assert_eq!(m.counter(EVENTS, &ev("deleted")), 1);
        assert_eq!(m.counter(EVENTS, &ev("snapshot")), 1);
        assert_eq!(m.counter(RESYNCS, &why("lagged")), 1);
        assert_eq!(m.counter(RESYNCS, &why("reconnected")), 0);

        // A backend that reconnected replaces the scope with a reason: one resync, a snapshot
        // for the stream, and the changes the view saw.
        hub.replace(
            &Scope::Service("web".into()),
            vec![svc("c")],
            Some(SnapshotReason::Reconnected),
        );
        assert!(matches!(
            stream.next().await,
            Some(WatchEvent::Snapshot {
                reason: SnapshotReason::Reconnected,
                ..
            })
        ));
        let m = recorder.take();
        assert_eq!(m.counter(RESYNCS, &why("reconnected")), 1);
        assert_eq!(m.counter(RESYNCS, &why("lagged")), 0);
        assert_eq!(m.counter(EVENTS, &ev("snapshot")), 1);
        assert_eq!(m.counter(EVENTS, &ev("created")), 1);
        assert_eq!(m.counter(EVENTS, &ev("deleted")), 1);

        // An initial fill (a backend's first list) is not a resync.
        hub.replace(&Scope::All, vec![svc("c")], Some(SnapshotReason::Initial));
        let m = recorder.take();
        assert_eq!(m.counter(RESYNCS, &why("reconnected")), 0);
        assert_eq!(m.counter(RESYNCS, &why("lagged")), 0);
    });
}

#[test]
fn describe_metrics_describes_every_registry_metric() {
    let recorder = Recording::default();
    metrics::with_local_recorder(&recorder, || {
        waypost_core_types::describe_metrics();
        let _cell = StateCell::new("memory");
        let _hub = WatchHub::new("memory", 4);
    });
    let described = recorder.described();
    let expected = [
        (
            "waypost_registry_call_duration_seconds",
            metrics::Unit::Seconds,
        ),
        ("waypost_registry_call_errors_total", metrics::Unit::Count),
        ("waypost_registry_connected", metrics::Unit::Count),
        (
            "waypost_registry_reregistrations_total",
            metrics::Unit::Count,
        ),
        (
            "waypost_registry_state_transitions_total",
            metrics::Unit::Count,
        ),
        ("waypost_registry_watch_events_total", metrics::Unit::Count),
        ("waypost_registry_watch_resyncs_total", metrics::Unit::Count),
    ];
    assert_eq!(
        described,
        expected
            .into_iter()
            .map(|(n, u)| (n.to_owned(), Some(u)))
            .collect()
    );
}
