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
    assert_eq!(m.gauge(CONNECTED, &etcd_label), Some(1.0));
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
    assert_eq!(m.gauge(CONNECTED, &etcd_label), Some(0.0));
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
    assert_eq!(m.gauge(CONNECTED, &etcd_label), Some(1.0));
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
