//! The client's metrics as a recorder sees them: names, labels and values exactly as
//! `docs/metrics.md` documents them.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use waypost_client::{OutlierConfig, RetryBudget, ServiceClient};
use waypost_core_types::{CircuitState, Error};

use common::{instance, Pick, Reply, StaticDiscovery, TestServer};

/// What a recorder holds for one series.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Counter(u64),
    Gauge(f64),
    /// The samples.
    Histogram(Vec<f64>),
}

/// Runs `test` on a current-thread runtime (paused time) with a recorder of its own, and returns
/// every series recorded, keyed `name{label=value,…}` with the labels sorted.
fn recorded<F: Future<Output = ()>>(test: impl FnOnce() -> F) -> BTreeMap<String, Value> {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || rt.block_on(test()));
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let key = key.key();
            let mut labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            let value = match value {
                DebugValue::Counter(c) => Value::Counter(c),
                DebugValue::Gauge(g) => Value::Gauge(g.into_inner()),
                DebugValue::Histogram(h) => {
                    Value::Histogram(h.into_iter().map(|v| v.into_inner()).collect())
                }
            };
            (format!("{}{{{}}}", key.name(), labels.join(",")), value)
        })
        .collect()
}

/// The series every client registers for a service it calls with one method.
fn service_series(method: &str) -> BTreeMap<String, Value> {
    let mut m = BTreeMap::new();
    for name in [
        "waypost_client_retry_budget_exhausted_total",
        "waypost_client_deadline_exceeded_total",
    ] {
        m.insert(format!("{name}{{service=svc}}"), Value::Counter(0));
    }
    for name in [
        "waypost_client_retries_total",
        "waypost_client_request_bytes_total",
        "waypost_client_response_bytes_total",
    ] {
        m.insert(
            format!("{name}{{method={method},service=svc}}"),
            Value::Counter(0),
        );
    }
    m
}

/// The series the outlier detection registers for an instance, untouched.
fn instance_series(m: &mut BTreeMap<String, Value>, id: &str) {
    m.insert(
        format!("waypost_breaker_state{{instance={id},service=svc}}"),
        Value::Gauge(0.0),
    );
    m.insert(
        format!("waypost_outlier_ejections_total{{instance={id},service=svc}}"),
        Value::Counter(0),
    );
    for outcome in ["failure", "success"] {
        m.insert(
            format!("waypost_outlier_probes_total{{instance={id},outcome={outcome},service=svc}}"),
            Value::Counter(0),
        );
    }
}

fn set(m: &mut BTreeMap<String, Value>, key: &str, value: Value) {
    m.insert(key.to_owned(), value);
}

/// Replaces every histogram's samples by their count (latencies vary), as `Counter`s under the
/// key with ` samples` appended; returns the samples by key.
fn split_histograms(
    got: BTreeMap<String, Value>,
) -> (BTreeMap<String, Value>, BTreeMap<String, Vec<f64>>) {
    let mut plain = BTreeMap::new();
    let mut samples = BTreeMap::new();
    for (k, v) in got {
        match v {
            Value::Histogram(h) => {
                assert!(h.iter().all(|s| s.is_finite() && *s >= 0.0), "{k}: {h:?}");
                plain.insert(format!("{k} samples"), Value::Counter(h.len() as u64));
                samples.insert(k, h);
            }
            other => {
                plain.insert(k, other);
            }
        }
    }
    (plain, samples)
}

#[test]
fn a_successful_call() {
    let got = recorded(|| async {
        let a = TestServer::start(Reply::Echo).await;
        let d = StaticDiscovery::new(vec![instance("a", a.addr)], Pick::First);
        let client = ServiceClient::builder(d).build().unwrap();
        assert_eq!(client.post("svc", "/echo", "hello").await.unwrap(), "hello");
    });
    let (got, _) = split_histograms(got);
    let mut want = service_series("POST");
    instance_series(&mut want, "a");
    let labels = "method=POST,outcome=success,service=svc";
    for name in [
        "waypost_client_requests_total",
        "waypost_client_attempts_total",
        "waypost_client_request_duration_seconds",
        "waypost_client_attempt_duration_seconds",
    ] {
        let key = if name.ends_with("_seconds") {
            format!("{name}{{{labels}}} samples")
        } else {
            format!("{name}{{{labels}}}")
        };
        set(&mut want, &key, Value::Counter(1));
    }
    set(
        &mut want,
        "waypost_client_request_bytes_total{method=POST,service=svc}",
        Value::Counter(5),
    );
    set(
        &mut want,
        "waypost_client_response_bytes_total{method=POST,service=svc}",
        Value::Counter(5),
    );
    assert_eq!(got, want);
}

#[test]
fn a_retried_call_counts_two_attempts_and_one_retry() {
    let got = recorded(|| async {
        let a = TestServer::start(Reply::Status(503, "down")).await;
        let b = TestServer::start(Reply::Status(200, "ok")).await;
        let d = StaticDiscovery::new(
            vec![instance("a", a.addr), instance("b", b.addr)],
            Pick::First,
        );
        let client = ServiceClient::builder(d)
            .retry(1, Duration::ZERO)
            .no_retry_budget()
            .build()
            .unwrap();
        let resp = client
            .request(http::Method::GET, "svc", "/")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.attempts, 2);
    });
    let (got, _) = split_histograms(got);
    let mut want = service_series("GET");
    instance_series(&mut want, "a");
    instance_series(&mut want, "b");
    for (key, n) in [
        (
            "waypost_client_requests_total{method=GET,outcome=success,service=svc}",
            1,
        ),
        (
            "waypost_client_request_duration_seconds{method=GET,outcome=success,service=svc} samples",
            1,
        ),
        (
            "waypost_client_attempts_total{method=GET,outcome=server_error,service=svc}",
            1,
        ),
        (
            "waypost_client_attempt_duration_seconds{method=GET,outcome=server_error,service=svc} samples",
            1,
        ),
        (
            "waypost_client_attempts_total{method=GET,outcome=success,service=svc}",
            1,
        ),
        (
            "waypost_client_attempt_duration_seconds{method=GET,outcome=success,service=svc} samples",
            1,
        ),
        ("waypost_client_retries_total{method=GET,service=svc}", 1),
        (
            "waypost_client_response_bytes_total{method=GET,service=svc}",
            2,
        ),
    ] {
        set(&mut want, key, Value::Counter(n));
    }
    assert_eq!(got, want);
}

#[test]
fn an_exhausted_retry_budget_is_counted_and_the_call_fails_with_its_attempt() {
    let got = recorded(|| async {
        let a = TestServer::start(Reply::Status(503, "down")).await;
        let d = StaticDiscovery::new(vec![instance("a", a.addr)], Pick::First);
        let client = ServiceClient::builder(d)
            .retry(3, Duration::ZERO)
            // No reserve, no share of requests: not one retry.
            .retry_budget(RetryBudget::new(Duration::from_secs(10), 0, 0.0))
            .no_outlier_detection()
            .build()
            .unwrap();
        let err = client.get("svc", "/").await.unwrap_err();
        assert!(matches!(err, Error::Http { status: 503, .. }), "{err}");
        assert_eq!(a.hits(), 1);
    });
    let (got, _) = split_histograms(got);
    let mut want = service_series("GET");
    for (key, n) in [
        (
            "waypost_client_requests_total{method=GET,outcome=server_error,service=svc}",
            1,
        ),
        (
            "waypost_client_request_duration_seconds{method=GET,outcome=server_error,service=svc} samples",
            1,
        ),
        (
            "waypost_client_attempts_total{method=GET,outcome=server_error,service=svc}",
            1,
        ),
        (
            "waypost_client_attempt_duration_seconds{method=GET,outcome=server_error,service=svc} samples",
            1,
        ),
        ("waypost_client_retry_budget_exhausted_total{service=svc}", 1),
    ] {
        set(&mut want, key, Value::Counter(n));
    }
    assert_eq!(got, want);
}

#[test]
fn an_ejection_and_its_recovery() {
    let got = recorded(|| async {
        let a = TestServer::start(Reply::Status(503, "sick")).await;
        let d = StaticDiscovery::new(vec![instance("a", a.addr)], Pick::First);
        let client = ServiceClient::builder(d)
            .retry(0, Duration::ZERO)
            .outlier_detection(OutlierConfig::new(2, Duration::from_secs(10)))
            .build()
            .unwrap();
        for _ in 0..2 {
            assert!(client.get("svc", "/").await.is_err());
        }
        assert_eq!(client.instance_state("a"), CircuitState::Open);
        assert!(matches!(
            client.get("svc", "/").await,
            Err(Error::CircuitOpen)
        ));
        a.set(Reply::Status(200, "ok"));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(client.get("svc", "/").await.unwrap(), "ok");
        assert_eq!(client.instance_state("a"), CircuitState::Closed);
    });
    let (got, _) = split_histograms(got);
    let mut want = service_series("GET");
    instance_series(&mut want, "a");
    for (key, n) in [
        (
            "waypost_client_requests_total{method=GET,outcome=server_error,service=svc}",
            2,
        ),
        (
            "waypost_client_request_duration_seconds{method=GET,outcome=server_error,service=svc} samples",
            2,
        ),
        (
            "waypost_client_requests_total{method=GET,outcome=circuit_open,service=svc}",
            1,
        ),
        (
            "waypost_client_request_duration_seconds{method=GET,outcome=circuit_open,service=svc} samples",
            1,
        ),
        (
            "waypost_client_requests_total{method=GET,outcome=success,service=svc}",
            1,
        ),
        (
            "waypost_client_request_duration_seconds{method=GET,outcome=success,service=svc} samples",
            1,
        ),
        (
            "waypost_client_attempts_total{method=GET,outcome=server_error,service=svc}",
            2,
        ),
        (
            "waypost_client_attempt_duration_seconds{method=GET,outcome=server_error,service=svc} samples",
            2,
        ),
        (
            "waypost_client_attempts_total{method=GET,outcome=success,service=svc}",
            1,
        ),
        (
            "waypost_client_attempt_duration_seconds{method=GET,outcome=success,service=svc} samples",
            1,
        ),
        (
            "waypost_client_response_bytes_total{method=GET,service=svc}",
            2,
        ),
        ("waypost_outlier_ejections_total{instance=a,service=svc}", 1),
        (
            "waypost_outlier_probes_total{instance=a,outcome=success,service=svc}",
            1,
        ),
        (
            "waypost_breaker_transitions_total{from=closed,instance=a,service=svc,to=open}",
            1,
        ),
        (
            "waypost_breaker_transitions_total{from=open,instance=a,service=svc,to=half_open}",
            1,
        ),
        (
            "waypost_breaker_transitions_total{from=half_open,instance=a,service=svc,to=closed}",
            1,
        ),
    ] {
        set(&mut want, key, Value::Counter(n));
    }
    assert_eq!(got, want);
}

#[test]
fn a_failed_probe_ejects_again() {
    let got = recorded(|| async {
        let a = TestServer::start(Reply::Status(503, "sick")).await;
        let d = StaticDiscovery::new(vec![instance("a", a.addr)], Pick::First);
        let client = ServiceClient::builder(d)
            .retry(0, Duration::ZERO)
            .outlier_detection(OutlierConfig::new(1, Duration::from_secs(10)))
            .build()
            .unwrap();
        assert!(client.get("svc", "/").await.is_err());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(client.get("svc", "/").await.is_err(), "the probe fails");
        assert_eq!(client.instance_state("a"), CircuitState::Open);
    });
    for (key, want) in [
        ("waypost_outlier_ejections_total{instance=a,service=svc}", 2),
        (
            "waypost_outlier_probes_total{instance=a,outcome=failure,service=svc}",
            1,
        ),
        (
            "waypost_outlier_probes_total{instance=a,outcome=success,service=svc}",
            0,
        ),
        (
            "waypost_breaker_transitions_total{from=half_open,instance=a,service=svc,to=open}",
            1,
        ),
    ] {
        assert_eq!(got.get(key), Some(&Value::Counter(want)), "{key}");
    }
    assert_eq!(
        got.get("waypost_breaker_state{instance=a,service=svc}"),
        Some(&Value::Gauge(2.0))
    );
}

#[test]
fn a_call_out_of_its_deadline() {
    let got = recorded(|| async {
        let a = TestServer::start(Reply::Stall).await;
        let d = StaticDiscovery::new(vec![instance("a", a.addr)], Pick::First);
        let client = ServiceClient::builder(d)
            .deadline(Duration::from_secs(2))
            .no_outlier_detection()
            .build()
            .unwrap();
        let err = client.get("svc", "/").await.unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
    });
    let (got, samples) = split_histograms(got);
    let mut want = service_series("GET");
    for (key, n) in [
        (
            "waypost_client_requests_total{method=GET,outcome=timeout,service=svc}",
            1,
        ),
        (
            "waypost_client_request_duration_seconds{method=GET,outcome=timeout,service=svc} samples",
            1,
        ),
        (
            "waypost_client_attempts_total{method=GET,outcome=timeout,service=svc}",
            1,
        ),
        (
            "waypost_client_attempt_duration_seconds{method=GET,outcome=timeout,service=svc} samples",
            1,
        ),
        ("waypost_client_deadline_exceeded_total{service=svc}", 1),
    ] {
        set(&mut want, key, Value::Counter(n));
    }
    assert_eq!(got, want);
    // Paused time: the call and its one attempt took the deadline, to the millisecond.
    for key in [
        "waypost_client_request_duration_seconds{method=GET,outcome=timeout,service=svc}",
        "waypost_client_attempt_duration_seconds{method=GET,outcome=timeout,service=svc}",
    ] {
        let s = samples[key][0];
        assert!((s - 2.0).abs() < 0.001, "{key}: {s}");
    }
}

#[test]
fn no_instance_and_connect_errors_have_their_outcomes() {
    let got = recorded(|| async {
        let dead = common::dead_addr().await;
        let d = StaticDiscovery::new(vec![instance("a", dead)], Pick::First);
        let client = ServiceClient::builder(d)
            .retry(0, Duration::ZERO)
            .no_outlier_detection()
            .build()
            .unwrap();
        assert!(client.get("svc", "/").await.is_err());
        assert!(client.get("nowhere", "/").await.unwrap_err().is_not_found());
    });
    for (key, want) in [
        (
            "waypost_client_requests_total{method=GET,outcome=connect_error,service=svc}",
            1,
        ),
        (
            "waypost_client_attempts_total{method=GET,outcome=connect_error,service=svc}",
            1,
        ),
        (
            "waypost_client_requests_total{method=GET,outcome=no_instance,service=nowhere}",
            1,
        ),
    ] {
        assert_eq!(got.get(key), Some(&Value::Counter(want)), "{key}");
    }
    assert!(
        !got.keys()
            .any(|k| k.starts_with("waypost_client_attempts_total") && k.contains("nowhere")),
        "no attempt without an instance"
    );
}

#[test]
fn the_descriptions_are_registered() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        waypost_client::describe_metrics();
        metrics::counter!("waypost_client_requests_total").increment(1);
        metrics::histogram!("waypost_client_request_duration_seconds").record(1.0);
        metrics::counter!("waypost_breaker_transitions_total").increment(1);
    });
    let described: BTreeMap<String, (Option<metrics::Unit>, Option<String>)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(k, unit, help, _)| {
            (
                k.key().name().to_owned(),
                (unit, help.map(|h| h.to_string())),
            )
        })
        .collect();
    assert_eq!(
        described["waypost_client_request_duration_seconds"].0,
        Some(metrics::Unit::Seconds)
    );
    for name in [
        "waypost_client_requests_total",
        "waypost_client_request_duration_seconds",
        "waypost_breaker_transitions_total",
    ] {
        assert!(
            described[name].1.as_deref().is_some_and(|h| !h.is_empty()),
            "{name}: {described:?}"
        );
    }
}
