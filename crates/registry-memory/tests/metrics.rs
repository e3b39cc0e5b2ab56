//! The memory registry's calls, watch and state through the shared core's metrics, recorded by
//! a recording recorder: names, labels and values as `docs/metrics.md` ("Registries (every
//! backend)") lists them, with `backend="memory"`.
#![allow(clippy::unwrap_used)]

use futures_util::StreamExt;
use waypost_core_types::{Error, ServiceInfo, ServiceRegistry, SnapshotReason, WatchEvent};
use waypost_registry_memory::MemoryRegistry;
use waypost_test_metrics::Recording;

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
