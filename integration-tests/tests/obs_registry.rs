//! The registry metrics through a real outage: an etcd registry cut off from its server for
//! longer than its lease TTL goes connected → recovering → connected, registers its instances
//! again on a new lease, and says so in `waypost_registry_state_transitions_total`,
//! `waypost_registry_connected` and `waypost_registry_reregistrations_total`; its calls are in
//! `waypost_registry_call_duration_seconds`, the watch of another registry counts the deletions
//! and re-creations in `waypost_registry_watch_events_total` (names and labels as
//! `docs/metrics.md` lists them).
//!
//! The test starts its own etcd on free loopback ports and cuts the registry off with a TCP
//! proxy, as `etcd.rs` does. Without etcd installed it prints `SKIPPED` (or fails with
//! `CI=true`).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use futures_util::StreamExt;
use waypost_core_types::{Health, RegistryState, ServiceInfo, ServiceRegistry, WatchEvent};
use waypost_integration_tests::etcd::{etcd_available, EtcdServer, TcpProxy};
use waypost_integration_tests::{require, wait_until};
use waypost_registry_etcd::{EtcdConfig, EtcdRegistry};
use waypost_test_metrics::Recording;

const TRANSITIONS: &str = "waypost_registry_state_transitions_total";
const CONNECTED: &str = "waypost_registry_connected";
const REREGISTRATIONS: &str = "waypost_registry_reregistrations_total";
const EVENTS: &str = "waypost_registry_watch_events_total";
const DURATION: &str = "waypost_registry_call_duration_seconds";
const ERRORS: &str = "waypost_registry_call_errors_total";

fn svc(id: &str, port: u16) -> ServiceInfo {
    ServiceInfo::new(id, "obs", "127.0.0.1", port).with_health(Health::Healthy)
}

/// Applies watch items to a count of instances until `done` says so (or `limit` passes).
async fn follow(
    watch: &mut waypost_core_types::WatchStream,
    count: &mut usize,
    limit: Duration,
    done: impl Fn(usize) -> bool,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + limit;
    while !done(*count) {
        match tokio::time::timeout_at(deadline, watch.next()).await {
            Ok(Some(WatchEvent::Snapshot { services, .. })) => *count = services.len(),
            Ok(Some(WatchEvent::Change(c))) => match c.kind {
                waypost_core_types::ServiceEventType::Created => *count += 1,
                waypost_core_types::ServiceEventType::Deleted => *count -= 1,
                waypost_core_types::ServiceEventType::Updated => {}
            },
            Ok(Some(_)) => {}
            Ok(None) => return Err("the watch ended".into()),
            Err(_) => return Err(format!("not reached within {limit:?}; {} seen", *count)),
        }
    }
    Ok(())
}

#[test]
fn etcd_outage_and_recovery_are_counted() {
    let test = "etcd_outage_and_recovery_are_counted";
    let recorder = Recording::default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || rt.block_on(outage(test, &recorder)));
}

async fn outage(test: &str, recorder: &Recording) {
    if require(test, etcd_available()).is_none() {
        return;
    }
    let etcd = EtcdServer::start().await.expect("start etcd");
    let proxy = TcpProxy::start(etcd.client_port()).await.expect("proxy");
    let ttl = 2u64;
    let cfg = EtcdConfig::new([proxy.endpoint()])
        .with_prefix(format!("/waypost-test/{test}-{}", std::process::id()))
        .with_ttl(Duration::from_secs(ttl))
        .with_connect_timeout(Duration::from_secs(3))
        .with_request_timeout(Duration::from_secs(3))
        .with_max_backoff(Duration::from_millis(500));
    let registry = EtcdRegistry::connect(cfg.clone()).await.expect("connect");
    let direct = EtcdRegistry::connect(cfg.clone().with_endpoints([etcd.endpoint()]))
        .await
        .expect("direct client");
    let mut watch = direct.watch_service("obs").await.expect("watch");
    let mut seen = 0usize;
    registry
        .register(&svc("obs-1", 9001))
        .await
        .expect("register");
    registry
        .register(&svc("obs-2", 9002))
        .await
        .expect("register");
    follow(&mut watch, &mut seen, Duration::from_secs(5), |n| n == 2)
        .await
        .expect("both visible");

    let etcd_label = [("backend", "etcd")];
    let m = recorder.take();
    // Two etcd registries are connected: the one behind the proxy and the direct one.
    assert_eq!(m.gauge(CONNECTED, &etcd_label), Some(2.0));
    assert_eq!(m.label_names(CONNECTED), [["backend"]]);
    assert_eq!(m.label_names(TRANSITIONS), [["backend", "state"]]);
    assert_eq!(
        m.histogram(DURATION, &[("backend", "etcd"), ("op", "register")])
            .len(),
        2
    );
    assert_eq!(
        m.histogram(DURATION, &[("backend", "etcd"), ("op", "watch")])
            .len(),
        1
    );
    assert_eq!(
        m.counter(ERRORS, &[("backend", "etcd"), ("op", "register")]),
        0
    );
    assert_eq!(m.label_names(DURATION), [["backend", "op"]]);
    assert_eq!(m.label_names(ERRORS), [["backend", "op"]]);
    assert_eq!(
        m.counter(EVENTS, &[("backend", "etcd"), ("event", "created")]),
        2
    );
    assert_eq!(m.label_names(EVENTS), [["backend", "event"]]);
    assert_eq!(
        m.counter(TRANSITIONS, &[("backend", "etcd"), ("state", "recovering")]),
        0
    );

    // Cut off for longer than the TTL: the registry recovers, the server expires the lease.
    proxy.set_open(false);
    wait_until("recovering", Duration::from_secs(10), || async {
        matches!(registry.state(), RegistryState::Recovering { .. })
    })
    .await
    .expect("the registry notices the outage");
    follow(&mut watch, &mut seen, Duration::from_secs(ttl + 5), |n| {
        n == 0
    })
    .await
    .expect("the lease expires while the registry is cut off");
    let m = recorder.take();
    let recovering = m.counter(TRANSITIONS, &[("backend", "etcd"), ("state", "recovering")]);
    assert!(recovering >= 1, "connected -> recovering counted: {m:?}");
    // Only the direct one still is.
    assert_eq!(m.gauge(CONNECTED, &etcd_label), Some(1.0));
    assert_eq!(m.counter(REREGISTRATIONS, &etcd_label), 0);
    assert_eq!(
        m.counter(EVENTS, &[("backend", "etcd"), ("event", "deleted")]),
        2
    );

    // Back: a new lease, both instances put again, connected.
    proxy.set_open(true);
    follow(&mut watch, &mut seen, Duration::from_secs(10), |n| n == 2)
        .await
        .expect("instances registered again on a new lease");
    wait_until("connected", Duration::from_secs(10), || async {
        registry.state().is_connected()
    })
    .await
    .expect("state back to Connected");
    let m = recorder.take();
    assert_eq!(
        m.counter(REREGISTRATIONS, &etcd_label),
        2,
        "both instances registered again: {m:?}"
    );
    assert_eq!(m.label_names(REREGISTRATIONS), [["backend"]]);
    let connected = m.counter(TRANSITIONS, &[("backend", "etcd"), ("state", "connected")]);
    let recovering_again = m.counter(TRANSITIONS, &[("backend", "etcd"), ("state", "recovering")]);
    assert!(connected >= 1, "recovering -> connected counted: {m:?}");
    assert_eq!(
        connected,
        recovering + recovering_again,
        "every recovery ended: {m:?}"
    );
    assert_eq!(m.gauge(CONNECTED, &etcd_label), Some(2.0));
    assert_eq!(
        m.counter(EVENTS, &[("backend", "etcd"), ("event", "created")]),
        2
    );

    registry.close().await.expect("close");
    direct.close().await.expect("close");
    let m = recorder.take();
    assert_eq!(
        m.counter(TRANSITIONS, &[("backend", "etcd"), ("state", "closed")]),
        2
    );
    assert_eq!(m.gauge(CONNECTED, &etcd_label), Some(0.0));
}
