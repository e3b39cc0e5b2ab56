//! Breaker transitions recorded through the `metrics` facade, names and labels as in
//! `docs/metrics.md`.

use std::collections::BTreeMap;
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use waypost_breaker::{CircuitBreaker, Outcome, SimpleCircuitBreaker, TransitionMetrics};

/// `name{label=value,…}` (labels sorted) → value, for every counter and gauge recorded.
fn snapshot(recorder: &DebuggingRecorder) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (key, _, _, value) in recorder.snapshotter().snapshot().into_vec() {
        let key = key.key();
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        let v = match value {
            DebugValue::Counter(c) => c as f64,
            DebugValue::Gauge(g) => g.into_inner(),
            DebugValue::Histogram(h) => h.len() as f64,
        };
        out.insert(name, v);
    }
    out
}

fn fail(cb: &SimpleCircuitBreaker) {
    let p = cb.try_acquire().expect("admitted");
    cb.record(p, Outcome::Failure, Duration::ZERO);
}

#[test]
fn a_breaker_opening_probing_and_closing_is_counted_by_service_and_instance() {
    let recorder = DebuggingRecorder::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let cb = SimpleCircuitBreaker::new(2, Duration::from_secs(5));
            cb.on_state_change(TransitionMetrics::new("orders", "orders-1").into_listener());
            fail(&cb);
            fail(&cb);
            assert!(cb.is_open());
            tokio::time::advance(Duration::from_secs(5)).await;
            // The probe: half-open, then closed by its success.
            let p = cb.try_acquire().expect("probe");
            cb.record(p, Outcome::Success, Duration::ZERO);
            assert!(!cb.is_open());
        });
    });
    let got = snapshot(&recorder);
    let want: BTreeMap<String, f64> = [
        ("waypost_breaker_state{instance=orders-1,service=orders}", 0.0),
        (
            "waypost_breaker_transitions_total{from=closed,instance=orders-1,service=orders,to=open}",
            1.0,
        ),
        (
            "waypost_breaker_transitions_total{from=half_open,instance=orders-1,service=orders,to=closed}",
            1.0,
        ),
        (
            "waypost_breaker_transitions_total{from=open,instance=orders-1,service=orders,to=half_open}",
            1.0,
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(got, want);
}

#[test]
fn the_state_gauge_follows_the_breaker() {
    let recorder = DebuggingRecorder::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let key = "waypost_breaker_state{instance=i,service=s}";
    metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let cb = SimpleCircuitBreaker::new(1, Duration::from_secs(5));
            cb.on_state_change(TransitionMetrics::new("s", "i").into_listener());
            fail(&cb);
            assert_eq!(snapshot(&recorder)[key], 2.0, "open");
            tokio::time::advance(Duration::from_secs(5)).await;
            let p = cb.try_acquire().expect("probe");
            assert_eq!(snapshot(&recorder)[key], 1.0, "half-open");
            cb.record(p, Outcome::Failure, Duration::ZERO);
            assert_eq!(snapshot(&recorder)[key], 2.0, "open again");
        });
    });
}
