//! The demo's metrics: a Prometheus recorder installed as the global `metrics` recorder, rendered
//! by the demo's own HTTP server at `GET /metrics` (`metrics-exporter-prometheus` without its
//! HTTP listener).
//!
//! The waypost crates emit through the `metrics` facade, and they take their metric handles when
//! a registry, a discovery cache or a client is built: a handle taken before a recorder exists
//! stays a no-op. So [`install`] runs first in `main`, before anything else is built.

use std::time::Duration;

use metrics::{describe_counter, describe_histogram, Unit};
use metrics_exporter_prometheus::{BuildError, PrometheusBuilder, PrometheusHandle};

/// Histogram bucket upper bounds, in seconds: 0.5 ms to 10 s, about ×2 to ×2.5 apart, so request
/// latencies of a loopback call and of a slow remote registry both fall inside. Setting buckets
/// makes every histogram render as a Prometheus histogram (`_bucket`, `_sum`, `_count`) rather
/// than as a summary.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The content type of the Prometheus text exposition format, version 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How often the recorder's histograms are drained into their buckets when nobody scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Requests the demo's HTTP servers answered: counter, labels `method`, `route`, `outcome`
/// (`success`, `client_error`, `server_error`).
pub const REQUESTS_TOTAL: &str = "waypost_demo_requests_total";
/// Time the demo's HTTP servers took to answer: histogram in seconds, labels `method`, `route`.
pub const REQUEST_DURATION_SECONDS: &str = "waypost_demo_request_duration_seconds";

/// Installs the Prometheus recorder as the global recorder and describes the demo's metrics.
///
/// # Errors
/// When a global recorder is already installed.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets(LATENCY_BUCKETS)?
        .install_recorder()?;
    // HELP and TYPE lines for every metric of the waypost crates.
    waypost::describe_metrics();
    describe_counter!(
        REQUESTS_TOTAL,
        Unit::Count,
        "Requests the demo's HTTP servers answered, by method, route (a fixed set; `other` for \
         any unknown path) and outcome (success, client_error, server_error)"
    );
    describe_histogram!(
        REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "Time the demo's HTTP servers took to answer a request, by method and route"
    );
    Ok(handle)
}

/// Drains the histograms into their buckets every few seconds, so that samples do not pile up
/// between scrapes; runs until the returned task is aborted.
pub fn spawn_upkeep(handle: PrometheusHandle) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(UPKEEP_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            handle.run_upkeep();
        }
    })
}
