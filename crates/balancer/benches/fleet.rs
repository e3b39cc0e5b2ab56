//! The balancers' hot path as the fleet grows: 10, 1,000 and 10,000 instances of one service.
//!
//! - `full_call/<balancer>/<n>`: `select` then `begin` then finish (what a client does per
//!   request), so the load-aware balancers' bookkeeping is measured with the pick;
//! - `pick/<balancer>/<n>`: `select` alone on an unchanged set;
//! - `after_change/consistent_hash/<n>`: the first pick after the set changed by one instance
//!   (today the ring is rebuilt on the request path).
#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use waypost_balancer::{
    ConsistentHash, LeastRequest, PeakEwma, RoundRobin, SmoothWeightedRoundRobin, WeightedRandom,
};
use waypost_core_types::{Health, LoadBalancer, Outcome, SelectContext, ServiceInfo};

const SIZES: [usize; 3] = [10, 1_000, 10_000];

fn instances(n: usize, tag: &str) -> Vec<Arc<ServiceInfo>> {
    (0..n)
        .map(|i| {
            Arc::new(
                ServiceInfo::new(
                    format!("{tag}-{i}"),
                    "bench-service",
                    format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255),
                    8080,
                )
                .with_health(Health::Healthy)
                .with_weight(50 + (i as u32 % 4) * 50),
            )
        })
        .collect()
}

fn full_call(c: &mut Criterion) {
    let mut g = c.benchmark_group("full_call");
    g.measurement_time(Duration::from_secs(3));
    for n in SIZES {
        let set = instances(n, "full");
        let balancers: Vec<Box<dyn LoadBalancer>> = vec![
            Box::new(RoundRobin::new()),
            Box::new(LeastRequest::new()),
            Box::new(PeakEwma::new()),
        ];
        for lb in &balancers {
            g.bench_with_input(BenchmarkId::new(lb.name(), n), &set, |b, set| {
                b.iter(|| {
                    let picked = lb.select(black_box(set), &SelectContext::default());
                    if let Some(s) = picked {
                        lb.begin(s).finish(Outcome::Success);
                    }
                })
            });
        }
    }
    g.finish();
}

fn pick(c: &mut Criterion) {
    let mut g = c.benchmark_group("pick");
    g.measurement_time(Duration::from_secs(3));
    let keys: Vec<String> = (0..1024).map(|k| format!("user-{k}")).collect();
    for n in SIZES {
        let set = instances(n, "pick");
        let balancers: Vec<Box<dyn LoadBalancer>> = vec![
            Box::new(WeightedRandom::new()),
            Box::new(SmoothWeightedRoundRobin::new()),
        ];
        for lb in &balancers {
            g.bench_with_input(BenchmarkId::new(lb.name(), n), &set, |b, set| {
                b.iter(|| black_box(lb.select(black_box(set), &SelectContext::default())))
            });
        }
        let ch = ConsistentHash::new();
        let mut k = 0usize;
        g.bench_with_input(BenchmarkId::new("consistent_hash", n), &set, |b, set| {
            b.iter(|| {
                k = (k + 1) & 1023;
                let ctx = SelectContext::with_hash_key(keys[k].as_bytes());
                black_box(ch.select(black_box(set), &ctx))
            })
        });
    }
    g.finish();
}

fn after_change(c: &mut Criterion) {
    let mut g = c.benchmark_group("after_change");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(5));
    for n in SIZES {
        let a = instances(n, "a");
        let mut b_set = a.clone();
        b_set[0] = instances(1, "b").remove(0);
        let ch = ConsistentHash::new();
        let mut flip = false;
        g.bench_with_input(BenchmarkId::new("consistent_hash", n), &n, |b, _| {
            b.iter(|| {
                flip = !flip;
                let set = if flip { &a } else { &b_set };
                black_box(ch.select(set, &SelectContext::with_hash_key(b"user-1")))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, full_call, pick, after_change);
criterion_main!(benches);
