//! The announcer's phase gauge, recorded by a recording recorder: name, labels and values
//! exactly as `docs/metrics.md` ("Lifecycle (waypost-lifecycle)") lists them.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use waypost_lifecycle::{Announcer, Phase};
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

const PHASE: &str = "waypost_lifecycle_phase";
const ADDR: &str = "10.0.0.5:8080";

/// Every phase's gauge for service `users`, by label (`None`: never set).
fn phases(m: &Recorded) -> Vec<(&'static str, Option<f64>)> {
    [
        "starting",
        "waiting_ready",
        "serving",
        "deregistering",
        "draining",
        "stopping",
        "closing",
        "stopped",
    ]
    .into_iter()
    .map(|p| (p, m.gauge(PHASE, &[("service", "users"), ("phase", p)])))
    .collect()
}

#[test]
fn the_phase_gauge_is_one_for_the_current_phase_and_zero_for_the_ones_left() {
    let recorder = Recording::default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let registry = MemoryRegistry::new();
            let (tx, rx) = oneshot::channel::<()>();
            let a = Announcer::new(Arc::new(registry.clone()), "users")
                .with_shutdown(async move {
                    let _ = rx.await;
                })
                .with_drain_delay(Duration::from_secs(1))
                .with_advertise_addr(ADDR);
            let mut watch = a.phases();
            let run = tokio::spawn(a.serve(ADDR.parse().unwrap(), |stop| async move {
                stop.await;
                Ok::<(), std::io::Error>(())
            }));
            watch.wait_for(|p| *p == Phase::Serving).await.unwrap();
            let m = recorder.take();
            assert_eq!(
                phases(&m),
                [
                    ("starting", Some(0.0)),
                    ("waiting_ready", None),
                    ("serving", Some(1.0)),
                    ("deregistering", None),
                    ("draining", None),
                    ("stopping", None),
                    ("closing", None),
                    ("stopped", None),
                ]
            );
            assert_eq!(m.label_names(PHASE), [["phase", "service"]]);

            tx.send(()).unwrap();
            run.await.unwrap().unwrap();
            assert_eq!(*watch.borrow(), Phase::Stopped);
            let m = recorder.take();
            assert_eq!(
                phases(&m),
                [
                    ("starting", Some(0.0)),
                    ("waiting_ready", None),
                    ("serving", Some(0.0)),
                    ("deregistering", Some(0.0)),
                    ("draining", Some(0.0)),
                    ("stopping", Some(0.0)),
                    ("closing", Some(0.0)),
                    ("stopped", Some(1.0)),
                ]
            );
        })
    });
}

#[test]
fn describe_metrics_describes_the_phase_gauge() {
    let recorder = Recording::default();
    metrics::with_local_recorder(&recorder, || {
        waypost_lifecycle::describe_metrics();
        metrics::gauge!(PHASE, "service" => "x", "phase" => "serving").set(1.0);
    });
    assert_eq!(
        recorder.described(),
        [(PHASE.to_owned(), Some(metrics::Unit::Count))].into()
    );
}
