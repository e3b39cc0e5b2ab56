//! The cost of applying one watch change to a cached service of 10 to 100,000 instances, on the
//! cache's own apply path (what the service's watch task runs for every change), including the
//! balancer's `prepare` of the new set (round robin).
//!
//! `updated`: an instance in the middle is re-registered (two versions, alternately);
//! `updated_cpu` the same, timed by the thread's CPU time.
//! `created`: a new instance joins (timed), then leaves again (not timed), 100 at a time.
//! `deleted`: an instance in the middle leaves (timed), then joins again (not timed), 100 at a
//! time; the set's size stays within 100 of its nominal size throughout.
#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use waypost_balancer::RoundRobin;
use waypost_core_types::{Health, ServiceEventType, ServiceInfo};
use waypost_discovery::EntryHarness;

const SERVICE: &str = "bench-service";
const BATCH: usize = 100;

fn instance(i: usize, port: u16) -> Arc<ServiceInfo> {
    Arc::new(
        ServiceInfo::new(format!("inst-{i:06}"), SERVICE, "10.0.0.1", port)
            .with_health(Health::Healthy)
            .with_metadata("zone", "eu-west-1a")
            .with_metadata("build", "2026.11.3")
            .with_tag("api")
            .with_tag("v2"),
    )
}

fn filled(n: usize) -> EntryHarness {
    let h = EntryHarness::new(SERVICE, Arc::new(RoundRobin::new()));
    h.apply_snapshot((0..n).map(|i| instance(i, 8000)).collect());
    assert_eq!(h.len(), n);
    h
}

fn apply(c: &mut Criterion) {
    let mut g = c.benchmark_group("apply_one_change");
    for n in [10usize, 1_000, 10_000, 100_000] {
        let h = filled(n);
        let versions = [instance(n / 2, 9000), instance(n / 2, 9001)];
        let mut flip = 0;
        g.bench_function(BenchmarkId::new("updated", n), |b| {
            b.iter(|| {
                flip ^= 1;
                h.apply_change(ServiceEventType::Updated, black_box(versions[flip].clone()));
            })
        });
        // The same, timed by the thread's CPU time (on a shared machine, time spent waiting for
        // a core is not counted), in rounds of 1,000 changes.
        g.bench_function(BenchmarkId::new("updated_cpu", n), |b| {
            b.iter_custom(|iters| {
                let mut left = iters;
                let mut total = Duration::ZERO;
                while left > 0 {
                    let k = left.min(1_000);
                    let start = Instant::now();
                    let before = thread_cpu();
                    for _ in 0..k {
                        flip ^= 1;
                        h.apply_change(
                            ServiceEventType::Updated,
                            black_box(versions[flip].clone()),
                        );
                    }
                    total += match (thread_cpu(), before) {
                        (Some(after), Some(before)) => after.saturating_sub(before),
                        _ => start.elapsed(),
                    };
                    left -= k;
                }
                total
            })
        });
        // Ids past the set for `created`, ids in the middle for `deleted`.
        let fresh: Vec<_> = (0..BATCH)
            .map(|j| instance(n + 1_000_000 + j, 8000))
            .collect();
        let middle: Vec<_> = (0..BATCH)
            .map(|j| instance((n / 2 + j) % n, 8000))
            .collect();
        g.bench_function(BenchmarkId::new("created", n), |b| {
            b.iter_custom(|iters| {
                timed_batches(iters, BATCH, |k| {
                    let start = Instant::now();
                    for s in &fresh[..k] {
                        h.apply_change(ServiceEventType::Created, black_box(s.clone()));
                    }
                    let took = start.elapsed();
                    for s in &fresh[..k] {
                        h.apply_change(ServiceEventType::Deleted, s.clone());
                    }
                    took
                })
            })
        });
        g.bench_function(BenchmarkId::new("deleted", n), |b| {
            b.iter_custom(|iters| {
                timed_batches(iters, BATCH.min(n - 1), |k| {
                    let start = Instant::now();
                    for s in &middle[..k] {
                        h.apply_change(ServiceEventType::Deleted, black_box(s.clone()));
                    }
                    let took = start.elapsed();
                    for s in &middle[..k] {
                        h.apply_change(ServiceEventType::Created, s.clone());
                    }
                    took
                })
            })
        });
        assert_eq!(h.len(), n);
    }
    g.finish();
}

/// Runs `iters` timed operations in batches of at most `most`; `batch(k)` returns the time its
/// `k` timed operations took.
fn timed_batches(iters: u64, most: usize, mut batch: impl FnMut(usize) -> Duration) -> Duration {
    let mut left = iters as usize;
    let mut total = Duration::ZERO;
    while left > 0 {
        let k = left.min(most);
        total += batch(k);
        left -= k;
    }
    total
}

/// This thread's CPU time so far (Linux `schedstat`, nanoseconds), if readable. The kernel
/// brings the figure up to date when the thread passes through the scheduler, hence the yield.
fn thread_cpu() -> Option<Duration> {
    std::thread::yield_now();
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = s.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

criterion_group!(benches, apply);
criterion_main!(benches);
