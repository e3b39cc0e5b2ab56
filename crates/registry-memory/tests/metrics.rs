//! The memory registry's calls, watch and state through the shared core's metrics, recorded by
//! a recording recorder: names, labels and values as `docs/metrics.md` ("Registries (every
//! backend)") lists them, with `backend="memory"`.
#![allow(clippy::unwrap_used)]

use futures_util::StreamExt;
use waypost_core_types::{Error, ServiceInfo, ServiceRegistry, SnapshotReason, WatchEvent};
use waypost_registry_memory::MemoryRegistry;

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

const DURATION: &str = "waypost_registry_call_duration_seconds";
const ERRORS: &str = "waypost_registry_call_errors_total";
const EVENTS: &str = "waypost_registry_watch_events_total";
const RESYNCS: &str = "waypost_registry_watch_resyncs_total";
const TRANSITIONS: &str = "waypost_registry_state_transitions_total";

fn op(op: &'static str) -> [(&'static str, &'static str); 2] {
    [("backend", "memory"), ("op", op)]
}

#[test]
fn every_call_is_timed_by_op_and_failures_counted() {
    let recorder = Recording::default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            // A watcher may fall 1 item behind.
            let r = MemoryRegistry::builder().watch_buffer(1).build().unwrap();
            let svc = ServiceInfo::new("m-1", "mem", "10.0.0.1", 80);
            let mut watch = r.watch_service("mem").await.unwrap();
            assert!(matches!(
                watch.next().await,
                Some(WatchEvent::Snapshot { .. })
            ));
            r.register(&svc).await.unwrap();
            r.update(&svc.clone().with_version("2")).await.unwrap();
            r.renew("m-1").await.unwrap();
            r.get_service("m-1").await.unwrap();
            assert!(matches!(
                r.get_service("nope").await,
                Err(Error::NotFound(_))
            ));
            r.list_services().await.unwrap();
            r.list_instances("mem").await.unwrap();
            r.list_instances_shared("mem").await.unwrap();
            assert!(matches!(
                r.list_instances("bad/name").await,
                Err(Error::InvalidInstance(_))
            ));
            r.deregister("m-1").await.unwrap();
            assert!(matches!(r.deregister("m-1").await, Err(Error::NotFound(_))));
            // Three changes for a watcher one item behind: one lagged resync.
            match watch.next().await {
                Some(WatchEvent::Snapshot {
                    reason: SnapshotReason::Lagged,
                    ..
                }) => {}
                other => panic!("expected a lagged snapshot, got {other:?}"),
            }
            r.close().await.unwrap();
            assert!(matches!(r.renew("m-1").await, Err(Error::Closed)));
        })
    });
    let m = recorder.take();
    let calls = |name: &'static str| m.histogram(DURATION, &op(name)).len();
    assert_eq!(
        [
            calls("register"),
            calls("deregister"),
            calls("update"),
            calls("renew"),
            calls("get"),
            calls("list"),
            calls("watch")
        ],
        [1, 2, 1, 2, 2, 4, 1]
    );
    let errors = |name: &'static str| m.counter(ERRORS, &op(name));
    assert_eq!(
        [
            errors("register"),
            errors("deregister"),
            errors("update"),
            errors("renew"),
            errors("get"),
            errors("list"),
            errors("watch")
        ],
        [0, 1, 0, 1, 1, 1, 0]
    );
    let memory = |event: &'static str| [("backend", "memory"), ("event", event)];
    assert_eq!(m.counter(EVENTS, &memory("created")), 1);
    assert_eq!(m.counter(EVENTS, &memory("updated")), 1);
    assert_eq!(m.counter(EVENTS, &memory("deleted")), 1);
    // The initial snapshot and the lagged one.
    assert_eq!(m.counter(EVENTS, &memory("snapshot")), 2);
    assert_eq!(
        m.counter(RESYNCS, &[("backend", "memory"), ("reason", "lagged")]),
        1
    );
    // The memory registry never loses its server: only `closed`.
    let state =
        |state: &'static str| m.counter(TRANSITIONS, &[("backend", "memory"), ("state", state)]);
    assert_eq!(
        [state("connected"), state("recovering"), state("closed")],
        [0, 0, 1]
    );
    assert_eq!(
        m.gauge("waypost_registry_connected", &[("backend", "memory")]),
        Some(0.0)
    );
}
