//! The announcer's phase gauge, recorded by a recording recorder: name, labels and values
//! exactly as `docs/metrics.md` ("Lifecycle (waypost-lifecycle)") lists them.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use waypost_lifecycle::{Announcer, Phase};
use waypost_registry_memory::MemoryRegistry;
use waypost_test_metrics::{Recorded, Recording};

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
