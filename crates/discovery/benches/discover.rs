//! `discover_one` on a warm cache with round robin: at 10, 1,000, 10,000 and 100,000 instances,
//! and at 10 instances through `dyn ServiceDiscovery` too (the trait's boxed future) and from
//! two threads (an iteration is one call on every thread, so equal times mean 2× throughput).
//! The `*_recorder` variants run the same calls on a discovery built
//! with a Prometheus recorder installed (`metrics-exporter-prometheus`), so that its cache-hit
//! counter records into it: the cost of the metrics when someone collects them.
#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use futures_util::FutureExt;
use metrics_exporter_prometheus::PrometheusBuilder;
use waypost_balancer::RoundRobin;
use waypost_core_types::{Health, SelectContext, ServiceDiscovery, ServiceInfo, ServiceRegistry};
use waypost_discovery::CachedDiscovery;
use waypost_registry_memory::MemoryRegistry;

fn warm_discovery(rt: &tokio::runtime::Runtime, n: usize) -> CachedDiscovery {
    rt.block_on(async {
        let registry = Arc::new(MemoryRegistry::new());
        for i in 0..n {
            let port = 8000 + (i % 50_000) as u16;
            let svc = ServiceInfo::new(format!("bench-{i}"), "bench-service", "10.0.0.1", port)
                .with_health(Health::Healthy);
            registry.register(&svc).await.expect("register");
        }
        let d = CachedDiscovery::new(registry, Arc::new(RoundRobin::new()));
        d.discover_one("bench-service").await.expect("warm");
        d
    })
}

fn discover_one(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let mut sizes = c.benchmark_group("discover_one");
    for n in [10usize, 1_000, 10_000, 100_000] {
        let d = warm_discovery(&rt, n);
        // The future of a warm lookup is ready at its first poll; poll it in place.
        sizes.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| black_box(d.discover_one(black_box("bench-service")).now_or_never()))
        });
        // The same, timed by the thread's CPU time: on a shared machine, time spent waiting
        // for a core is not counted.
        sizes.bench_function(BenchmarkId::new("cpu", n), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                let before = thread_cpu();
                for _ in 0..iters {
                    black_box(d.discover_one(black_box("bench-service")).now_or_never());
                }
                match (thread_cpu(), before) {
                    (Some(after), Some(before)) => after.saturating_sub(before),
                    _ => start.elapsed(),
                }
            })
        });
        rt.block_on(async { d.close().await.expect("close") });
    }
    sizes.finish();
    let d = warm_discovery(&rt, 10);
    let mut g = c.benchmark_group("discover_one_10");
    // The future of a warm lookup is ready at its first poll; poll it in place.
    g.bench_function("discover_one", |b| {
        b.iter(|| black_box(d.discover_one(black_box("bench-service")).now_or_never()))
    });
    // Through the trait object, as code holding `Arc<dyn ServiceDiscovery>` calls it: the
    // trait method's boxed future, where the call above gets the inherent method's.
    g.bench_function("discover_one_dyn", |b| {
        let dd: &dyn ServiceDiscovery = &d;
        b.iter(|| black_box(dd.discover_one(black_box("bench-service")).now_or_never()))
    });
    g.bench_function("select_cached", |b| {
        b.iter(|| black_box(d.select_cached(black_box("bench-service"), &SelectContext::default())))
    });
    for threads in [1usize, 2] {
        g.bench_function(format!("discover_one_{threads}_threads"), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                std::thread::scope(|sc| {
                    for _ in 0..threads {
                        let d = d.clone();
                        sc.spawn(move || {
                            for _ in 0..iters {
                                black_box(d.discover_one("bench-service").now_or_never());
                            }
                        });
                    }
                });
                start.elapsed()
            })
        });
    }
    // The same, timed by each thread's own CPU time (the slowest thread's): on a shared machine
    // where other processes take the cores, wall time cannot show scaling, but contention between
    // our threads (cache lines bouncing) would still show up as more CPU time per call.
    for threads in [1usize, 2] {
        g.bench_function(format!("discover_one_{threads}_threads_cpu"), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                let cpu = std::thread::scope(|sc| {
                    let hs: Vec<_> = (0..threads)
                        .map(|_| {
                            let d = d.clone();
                            sc.spawn(move || {
                                let before = thread_cpu();
                                for _ in 0..iters {
                                    black_box(d.discover_one("bench-service").now_or_never());
                                }
                                thread_cpu().zip(before).map(|(a, b)| a.saturating_sub(b))
                            })
                        })
                        .collect();
                    hs.into_iter().filter_map(|h| h.join().ok().flatten()).max()
                });
                cpu.unwrap_or_else(|| start.elapsed())
            })
        });
    }
    // With a recorder: the discovery (and its service's cache entry, which takes the metric
    // handles) is built while a Prometheus recorder is this thread's recorder; the handles keep
    // recording into it while the benchmark runs.
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let dr = metrics::with_local_recorder(&recorder, || warm_discovery(&rt, 10));
    g.bench_function("discover_one_recorder", |b| {
        b.iter(|| black_box(dr.discover_one(black_box("bench-service")).now_or_never()))
    });
    g.bench_function("discover_one_recorder_cpu", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            let before = thread_cpu();
            for _ in 0..iters {
                black_box(dr.discover_one(black_box("bench-service")).now_or_never());
            }
            match (thread_cpu(), before) {
                (Some(after), Some(before)) => after.saturating_sub(before),
                _ => start.elapsed(),
            }
        })
    });
    g.bench_function("discover_one_2_threads_recorder_cpu", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            let cpu = std::thread::scope(|sc| {
                let hs: Vec<_> = (0..2)
                    .map(|_| {
                        let d = dr.clone();
                        sc.spawn(move || {
                            let before = thread_cpu();
                            for _ in 0..iters {
                                black_box(d.discover_one("bench-service").now_or_never());
                            }
                            thread_cpu().zip(before).map(|(a, b)| a.saturating_sub(b))
                        })
                    })
                    .collect();
                hs.into_iter().filter_map(|h| h.join().ok().flatten()).max()
            });
            cpu.unwrap_or_else(|| start.elapsed())
        })
    });
    g.finish();
    // The recorder did record the hits (the variant measures what it claims to).
    assert!(
        handle
            .render()
            .contains("waypost_discovery_cache_hits_total{service=\"bench-service\"}"),
        "the recorder saw no cache hits"
    );
    rt.block_on(async { dr.close().await.expect("close") });
    rt.block_on(async { d.close().await.expect("close") });
}

/// This thread's CPU time so far (Linux `schedstat`, nanoseconds), if readable. The kernel
/// brings the figure up to date when the thread passes through the scheduler, hence the yield.
fn thread_cpu() -> Option<Duration> {
    std::thread::yield_now();
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = s.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

criterion_group!(benches, discover_one);
criterion_main!(benches);
