//! The registry metrics of the shared core, recorded by a recording recorder: names, labels
//! and values exactly as `docs/metrics.md` ("Registries (every backend)") lists them.
#![cfg(feature = "backend")]
#![allow(clippy::unwrap_used)]

use futures_util::StreamExt;
use waypost_core_types::observe::RegistryOp;
use waypost_core_types::{
    Error, Scope, ServiceEvent, ServiceInfo, SnapshotReason, StateCell, WatchEvent, WatchHub,
};
use waypost_test_metrics::{recorded, Recording};

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
