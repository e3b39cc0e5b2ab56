//! The channel's metrics as a recorder sees them: names, labels and values exactly as
//! `docs/metrics.md` documents them.

mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::{check, dead_port, instance, responder, setup, Mode};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use waypost_balancer::RoundRobin;
use waypost_client::OutlierConfig;
use waypost_core_types::CircuitState;
use waypost_grpc::{Channel, RetryPolicy};

const CHECK: &str = "/grpc.health.v1.Health/Check";

/// Runs `test` on a current-thread runtime with a recorder of its own, and returns every
/// counter and gauge recorded but the discovery's and the registry's (histograms: their sample
/// count, under the key with ` samples` appended), keyed `name{label=value,…}` with the labels
/// sorted.
fn recorded<F: Future<Output = ()>>(test: impl FnOnce() -> F) -> BTreeMap<String, f64> {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    metrics::with_local_recorder(&recorder, || rt.block_on(test()));
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        // The discovery and the memory registry under the channel record too; their metrics
        // are asserted in their own crates.
        .filter(|(key, _, _, _)| {
            let name = key.key().name();
            !name.starts_with("waypost_discovery_") && !name.starts_with("waypost_registry_")
        })
        .map(|(key, _, _, value)| {
            let key = key.key();
            let mut labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            let name = format!("{}{{{}}}", key.name(), labels.join(","));
            match value {
                DebugValue::Counter(c) => (name, c as f64),
                DebugValue::Gauge(g) => (name, g.into_inner()),
                DebugValue::Histogram(h) => {
                    assert!(h.iter().all(|s| s.into_inner() >= 0.0), "{name}");
                    (format!("{name} samples"), h.len() as f64)
                }
            }
        })
        .collect()
}

fn series(entries: &[(&str, f64)]) -> BTreeMap<String, f64> {
    entries.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

/// The series a channel registers for a method it called.
fn method_series(m: &mut BTreeMap<String, f64>) {
    for name in [
        "waypost_grpc_retries_total",
        "waypost_grpc_request_bytes_total",
        "waypost_grpc_response_bytes_total",
    ] {
        m.insert(format!("{name}{{method={CHECK},service=greeter}}"), 0.0);
    }
    for name in [
        "waypost_grpc_retry_budget_exhausted_total",
        "waypost_grpc_deadline_exceeded_total",
    ] {
        m.insert(format!("{name}{{service=greeter}}"), 0.0);
    }
}

fn outcome(m: &mut BTreeMap<String, f64>, what: &str, outcome: &str, n: f64) {
    let labels = format!("method={CHECK},outcome={outcome},service=greeter");
    m.insert(format!("waypost_grpc_{what}_total{{{labels}}}"), n);
    let histogram = if what == "requests" {
        "request"
    } else {
        "attempt"
    };
    m.insert(
        format!("waypost_grpc_{histogram}_duration_seconds{{{labels}}} samples"),
        n,
    );
}

#[test]
fn a_successful_call() {
    let got = recorded(|| async {
        let up = responder(Mode::Serving).await;
        let (_r, d) = setup(
            &[instance("up", up.addr.port())],
            Arc::new(RoundRobin::new()),
        )
        .await;
        let channel = Channel::builder(d, "greeter")
            .no_outlier_detection()
            .build()
            .expect("channel");
        let reply = HealthClient::new(channel)
            .check(check())
            .await
            .expect("check")
            .into_inner();
        assert_eq!(reply.status, 1);
    });
    let mut want = BTreeMap::new();
    method_series(&mut want);
    outcome(&mut want, "requests", "success", 1.0);
    outcome(&mut want, "attempts", "success", 1.0);
    // The gRPC frames: a 5-byte prefix, then the message (empty request, 2-byte reply).
    want.insert(
        format!("waypost_grpc_request_bytes_total{{method={CHECK},service=greeter}}"),
        5.0,
    );
    want.insert(
        format!("waypost_grpc_response_bytes_total{{method={CHECK},service=greeter}}"),
        7.0,
    );
    assert_eq!(got, want);
}

#[test]
fn a_failed_call_and_retried_calls() {
    let mut down_calls = 0;
    let got = recorded(|| async {
        let down = responder(Mode::Unavailable).await;
        let up = responder(Mode::Serving).await;
        let instances = [
            instance("down", down.addr.port()),
            instance("up", up.addr.port()),
        ];
        // Only `down`, no retry: the call fails with its status.
        let (_r, d) = setup(&instances[..1], Arc::new(RoundRobin::new())).await;
        let channel = Channel::builder(d, "greeter")
            .no_outlier_detection()
            .build()
            .expect("channel");
        let err = HealthClient::new(channel)
            .check(check())
            .await
            .expect_err("unavailable");
        assert_eq!(err.code(), Code::Unavailable);
        assert_eq!(down.calls.load(Ordering::SeqCst), 1);

        // Both, retried: every call succeeds; those that went to `down` first were retried.
        let (_r, d) = setup(&instances, Arc::new(RoundRobin::new())).await;
        let policy = RetryPolicy::new(2).with_backoff(
            Duration::from_millis(1),
            Duration::from_millis(1),
            1.0,
        );
        let channel = Channel::builder(d, "greeter")
            .retry_method("grpc.health.v1.Health", "Check", policy)
            .no_outlier_detection()
            .build()
            .expect("channel");
        let mut client = HealthClient::new(channel);
        for _ in 0..4 {
            client.check(check()).await.expect("retried on `up`");
        }
        assert_eq!(up.calls.load(Ordering::SeqCst), 4);
        down_calls = down.calls.load(Ordering::SeqCst) - 1;
        assert!(down_calls >= 1, "round robin sent some to `down`");
    });
    let retried = down_calls as f64;
    // Two channels to the same service and method: the recorder adds up their series.
    let mut want = BTreeMap::new();
    method_series(&mut want);
    outcome(&mut want, "requests", "server_error", 1.0);
    outcome(&mut want, "requests", "success", 4.0);
    outcome(&mut want, "attempts", "server_error", 1.0 + retried);
    outcome(&mut want, "attempts", "success", 4.0);
    want.insert(
        format!("waypost_grpc_retries_total{{method={CHECK},service=greeter}}"),
        retried,
    );
    want.insert(
        format!("waypost_grpc_request_bytes_total{{method={CHECK},service=greeter}}"),
        5.0 * (1.0 + retried + 4.0),
    );
    want.insert(
        format!("waypost_grpc_response_bytes_total{{method={CHECK},service=greeter}}"),
        7.0 * 4.0,
    );
    assert_eq!(got, want);
}

#[test]
fn a_failover_from_a_dead_instance_and_its_ejection() {
    let got = recorded(|| async {
        let live = responder(Mode::Serving).await;
        let dead = dead_port().await;
        let (_r, d) = setup(
            &[instance("live", live.addr.port()), instance("dead", dead)],
            Arc::new(RoundRobin::new()),
        )
        .await;
        let channel = Channel::builder(d, "greeter")
            .outlier_detection(OutlierConfig::new(2, Duration::from_secs(60)))
            .reconnect_backoff(Duration::from_millis(1), Duration::from_millis(1))
            .build()
            .expect("channel");
        let mut client = HealthClient::new(channel.clone());
        for _ in 0..10 {
            client.check(check()).await.expect("failed over");
        }
        assert_eq!(live.calls.load(Ordering::SeqCst), 10);
        assert_eq!(channel.instance_state("dead"), CircuitState::Open);
    });
    let key = |k: &str| k.replace("CHECK", CHECK);
    for (k, v) in [
        (
            "waypost_grpc_requests_total{method=CHECK,outcome=success,service=greeter}",
            10.0,
        ),
        (
            "waypost_grpc_attempts_total{method=CHECK,outcome=success,service=greeter}",
            10.0,
        ),
        (
            "waypost_outlier_ejections_total{instance=dead,service=greeter}",
            1.0,
        ),
        (
            "waypost_outlier_ejections_total{instance=live,service=greeter}",
            0.0,
        ),
        (
            "waypost_breaker_transitions_total{from=closed,instance=dead,service=greeter,to=open}",
            1.0,
        ),
        ("waypost_breaker_state{instance=dead,service=greeter}", 2.0),
        ("waypost_breaker_state{instance=live,service=greeter}", 0.0),
    ] {
        assert_eq!(got.get(&key(k)), Some(&v), "{k}: {got:#?}");
    }
    let failovers = got[&key("waypost_grpc_retries_total{method=CHECK,service=greeter}")];
    assert!(
        failovers >= 2.0,
        "two failures of `dead` ejected it: {got:#?}"
    );
    assert_eq!(
        got[&key(
            "waypost_grpc_attempts_total{method=CHECK,outcome=connect_error,service=greeter}"
        )],
        failovers,
        "one failover per failed connection"
    );
    assert_eq!(
        got.get(&key(
            "waypost_grpc_requests_total{method=CHECK,outcome=connect_error,service=greeter}"
        )),
        None,
        "no call failed"
    );
}

#[test]
fn a_service_without_instances_is_counted_as_no_instance() {
    let got = recorded(|| async {
        let (_r, d) = setup(&[], Arc::new(RoundRobin::new())).await;
        let channel = Channel::builder(d, "greeter").build().expect("channel");
        let err = HealthClient::new(channel)
            .check(check())
            .await
            .expect_err("nothing to call");
        assert_eq!(err.code(), Code::Unavailable);
    });
    let mut want = series(&[]);
    method_series(&mut want);
    want.insert(
        format!(
            "waypost_grpc_requests_total{{method={CHECK},outcome=no_instance,service=greeter}}"
        ),
        1.0,
    );
    want.insert(
        format!(
            "waypost_grpc_request_duration_seconds{{method={CHECK},outcome=no_instance,service=greeter}} samples"
        ),
        1.0,
    );
    assert_eq!(got, want);
}
