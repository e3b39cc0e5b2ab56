//! The announcer's phase gauge, recorded by a `DebuggingRecorder`: name, labels and values
//! exactly as `docs/metrics.md` ("Lifecycle (waypost-lifecycle)") lists them.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tokio::sync::oneshot;
use waypost_lifecycle::{Announcer, Phase};
use waypost_registry_memory::MemoryRegistry;

/// What a `DebuggingRecorder` holds, keyed by name and labels (labels in any order). Taking it
/// resets the recorder's counters and gauges (`Snapshotter::snapshot` swaps them to zero), so
/// each take holds what happened since the last one.
#[derive(Debug)]
struct Recorded(std::collections::HashMap<(String, Vec<(String, String)>), DebugValue>);

// Not every test file reads every kind of metric.
#[allow(dead_code)]
impl Recorded {
    fn take(snapshotter: &Snapshotter) -> Self {
        let mut all = std::collections::HashMap::new();
        for (key, _unit, _desc, value) in snapshotter.snapshot().into_vec() {
            let (_kind, key) = key.into_parts();
            let mut labels: Vec<(String, String)> = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            labels.sort();
            all.insert((key.name().to_owned(), labels), value);
        }
        Recorded(all)
    }

    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<&DebugValue> {
        let mut labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        labels.sort();
        self.0.get(&(name.to_owned(), labels))
    }

    /// A counter's increase since the last take (0 when it was not registered).
    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        match self.get(name, labels) {
            Some(DebugValue::Counter(n)) => *n,
            None => 0,
            Some(other) => panic!("{name} {labels:?} is not a counter: {other:?}"),
        }
    }

    /// A gauge's value if it was set since the last take (a gauge not set reads 0).
    fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        match self.get(name, labels) {
            Some(DebugValue::Gauge(v)) => Some(v.into_inner()),
            None => None,
            Some(other) => panic!("{name} {labels:?} is not a gauge: {other:?}"),
        }
    }

    /// A histogram's samples since the last take.
    fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        match self.get(name, labels) {
            Some(DebugValue::Histogram(v)) => v.iter().map(|x| x.into_inner()).collect(),
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

/// Every phase's gauge for service `users`, by label, when set since the last take.
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
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
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
            let m = Recorded::take(&snap);
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
            let m = Recorded::take(&snap);
            assert_eq!(
                phases(&m),
                [
                    ("starting", None),
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
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        waypost_lifecycle::describe_metrics();
        metrics::gauge!(PHASE, "service" => "x", "phase" => "serving").set(1.0);
    });
    let described: Vec<(String, Option<metrics::Unit>, bool)> = snap
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, unit, desc, _)| (key.key().name().to_owned(), unit, desc.is_some()))
        .collect();
    assert_eq!(
        described,
        [(PHASE.to_owned(), Some(metrics::Unit::Count), true)]
    );
}
