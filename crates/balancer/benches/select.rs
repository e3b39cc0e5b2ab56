//! `select` over 100 healthy instances, per balancer, and round robin from two threads.
#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use waypost_balancer::{
    ConsistentHash, LeastRequest, PeakEwma, Random, RoundRobin, SmoothWeightedRoundRobin,
    WeightedRandom,
};
use waypost_core_types::{Health, LoadBalancer, SelectContext, ServiceInfo};

fn instances(n: usize) -> Vec<Arc<ServiceInfo>> {
    (0..n)
        .map(|i| {
            Arc::new(
                ServiceInfo::new(
                    format!("bench-{i}"),
                    "bench-service",
                    "10.0.0.1",
                    8000 + i as u16,
                )
                .with_health(Health::Healthy)
                .with_weight(50 + (i as u32 % 4) * 50),
            )
        })
        .collect()
}

fn select_100(c: &mut Criterion) {
    let set = instances(100);
    let mut g = c.benchmark_group("select_100");
    let balancers: Vec<Box<dyn LoadBalancer>> = vec![
        Box::new(RoundRobin::new()),
        Box::new(Random::new()),
        Box::new(LeastRequest::new()),
        Box::new(PeakEwma::new()),
        Box::new(WeightedRandom::new()),
        Box::new(SmoothWeightedRoundRobin::new()),
    ];
    for lb in &balancers {
        // Some calls in flight, so the load-aware ones read real counters.
        let _open: Vec<_> = set.iter().step_by(3).map(|s| lb.begin(s)).collect();
        g.bench_function(lb.name(), |b| {
            b.iter(|| black_box(lb.select(black_box(&set), &SelectContext::default())))
        });
    }
    let ch = ConsistentHash::new();
    let keys: Vec<String> = (0..1024).map(|k| format!("user-{k}")).collect();
    let mut k = 0usize;
    g.bench_function("consistent_hash", |b| {
        b.iter(|| {
            k = (k + 1) & 1023;
            let ctx = SelectContext::with_hash_key(keys[k].as_bytes());
            black_box(ch.select(black_box(&set), &ctx))
        })
    });
    g.finish();
}

/// Round robin on one service from 1 and 2 threads: time per call per thread. With no shared
/// lock, the per-thread time stays about the same, so two threads do about twice the work.
fn round_robin_threads(c: &mut Criterion) {
    let set = Arc::new(instances(100));
    let lb = Arc::new(RoundRobin::new());
    let mut g = c.benchmark_group("round_robin_threads");
    for threads in [1usize, 2] {
        g.bench_function(format!("{threads}_threads"), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                std::thread::scope(|sc| {
                    for _ in 0..threads {
                        let (set, lb) = (set.clone(), lb.clone());
                        sc.spawn(move || {
                            for _ in 0..iters {
                                black_box(lb.select(&set, &SelectContext::default()));
                            }
                        });
                    }
                });
                // One iteration is one call on every thread, so with perfect scaling the time
                // stays that of one thread; throughput ratio = threads × t(1) / t(threads).
                start.elapsed()
            })
        });
    }
    // The same, timed by each thread's own CPU time (the slowest thread's): on a shared machine
    // where other processes take the cores, wall time cannot show scaling, but contention between
    // our threads (cache lines bouncing) would still show up as more CPU time per call.
    for threads in [1usize, 2] {
        g.bench_function(format!("{threads}_threads_cpu"), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                let cpu = std::thread::scope(|sc| {
                    let hs: Vec<_> = (0..threads)
                        .map(|_| {
                            let (set, lb) = (set.clone(), lb.clone());
                            sc.spawn(move || {
                                let before = thread_cpu();
                                for _ in 0..iters {
                                    black_box(lb.select(&set, &SelectContext::default()));
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
    g.finish();
}

/// This thread's CPU time so far (Linux `schedstat`, nanoseconds), if readable. The kernel
/// brings the figure up to date when the thread passes through the scheduler, hence the yield.
fn thread_cpu() -> Option<Duration> {
    std::thread::yield_now();
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = s.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

criterion_group!(benches, select_100, round_robin_threads);
criterion_main!(benches);
