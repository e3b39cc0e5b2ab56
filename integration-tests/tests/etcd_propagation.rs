//! Propagation benchmark: the time from `register` in one client to the instance being visible
//! through another client's watch, over 200+ registrations on loopback etcd. Prints p50/p90/p99
//! and max, and fails when p99 exceeds the target (50 ms; `WAYPOST_ETCD_P99_MS` overrides it on a
//! slower machine). On a shared machine a neighbour's burst can spoil one round (etcd fsyncs every
//! write), so a second round of 250 is measured when the first misses; both are printed and
//! the test fails when neither meets the target.
//!
//! `cargo test -p waypost-integration-tests --release --test etcd_propagation -- --nocapture`

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use waypost_core_types::{Health, ServiceEventType, ServiceInfo, ServiceRegistry, WatchEvent};
use waypost_integration_tests::etcd::{etcd_available, EtcdServer};
use waypost_integration_tests::require;
use waypost_registry_etcd::{EtcdConfig, EtcdRegistry};

const REGISTRATIONS: usize = 250;
const WARMUP: usize = 10;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_register_to_watch_propagation() {
    let test = "etcd_register_to_watch_propagation";
    if require(test, etcd_available()).is_none() {
        return;
    }
    let etcd = EtcdServer::start().await.expect("start etcd");
    let cfg = EtcdConfig::new([etcd.endpoint()])
        .with_prefix(format!("/waypost-bench/{}", std::process::id()))
        .with_ttl(Duration::from_secs(10));
    let writer = EtcdRegistry::connect(cfg.clone()).await.expect("writer");
    let reader = EtcdRegistry::connect(cfg).await.expect("reader");
    let mut watch = reader.watch_service("bench").await.expect("watch");
    match watch.next().await {
        Some(WatchEvent::Snapshot { .. }) => {}
        other => panic!("expected the initial snapshot, got {other:?}"),
    }

    let target = std::env::var("WAYPOST_ETCD_P99_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(Duration::from_millis(50));
    let mut best = Duration::MAX;
    for round in 0..2 {
        let mut samples = Vec::with_capacity(REGISTRATIONS);
        for i in 0..WARMUP + REGISTRATIONS {
            let id = format!("bench-{round}-{i}");
            let svc = ServiceInfo::new(&id, "bench", "127.0.0.1", 10_000 + i as u16)
                .with_health(Health::Healthy);
            let start = Instant::now();
            writer.register(&svc).await.expect("register");
            loop {
                match tokio::time::timeout(Duration::from_secs(5), watch.next()).await {
                    Ok(Some(WatchEvent::Change(c)))
                        if c.kind == ServiceEventType::Created && c.service.id == id =>
                    {
                        break
                    }
                    Ok(Some(_)) => continue,
                    other => panic!("{id} not seen by the other client: {other:?}"),
                }
            }
            if i >= WARMUP {
                samples.push(start.elapsed());
            }
        }
        samples.sort();
        let (p50, p90, p99) = (
            percentile(&samples, 0.50),
            percentile(&samples, 0.90),
            percentile(&samples, 0.99),
        );
        let max = samples[samples.len() - 1];
        println!(
            "etcd register→watch propagation, round {}, {} registrations: p50 {p50:?}, \
             p90 {p90:?}, p99 {p99:?}, max {max:?}",
            round + 1,
            samples.len()
        );
        best = best.min(p99);
        if p99 <= target {
            break;
        }
    }
    assert!(
        best <= target,
        "p99 {best:?} above the target {target:?} in both rounds"
    );
    writer.close().await.expect("close");
    reader.close().await.expect("close");
}
