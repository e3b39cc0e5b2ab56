//! The balancers' hot path as the fleet grows: 10, 1,000, 10,000 and 100,000 instances of one
//! service.
//!
//! - `set_pick/<balancer>/<n>`: on an [`InstanceSet`] prepared once by that balancer
//!   (`prepare(&set)`), one `pick(&set, &ctx)` and `guard.finish(Outcome::Success)` per
//!   iteration: what the discovery cache and the client do per request;
//! - `slice_call/<balancer>/<n>`: the slice API for comparison: `select(&slice, &ctx)`, then
//!   `begin` and finish;
//! - `prepare_one_change/<balancer>/<n>`: one instance leaves or comes back (the writer's change,
//!   a few microseconds, is included), then `prepare(&new_set)`: the work a change costs off the
//!   request path;
//! - `first_pick_after_change/<balancer>/<n>`: the first pick (and finish) on a set changed by
//!   one instance and prepared (the change and `prepare` untimed; 64 changes per sample, the
//!   sum scaled to criterion's iteration count): a pick never waits for a build;
//! - `first_pick_after_change/unprepared/consistent_hash/<n>`: the first pick when nobody
//!   prepared the new set: the latest ring is used, mapped to the set by id (sets of at most
//!   64 instances are prepared by that pick).
#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use waypost_balancer::{
    ConsistentHash, LeastRequest, PeakEwma, Random, RoundRobin, SmoothWeightedRoundRobin,
    WeightedRandom,
};
use waypost_core_types::{
    Health, InstanceSet, InstanceSetWriter, LoadBalancer, Outcome, SelectContext, ServiceInfo,
};

const SIZES: [usize; 4] = [10, 1_000, 10_000, 100_000];

fn instance(i: usize, tag: &str) -> Arc<ServiceInfo> {
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
}

fn instances(n: usize, tag: &str) -> Vec<Arc<ServiceInfo>> {
    (0..n).map(|i| instance(i, tag)).collect()
}

fn balancers() -> Vec<Box<dyn LoadBalancer>> {
    vec![
        Box::new(RoundRobin::new()),
        Box::new(Random::new()),
        Box::new(WeightedRandom::new()),
        Box::new(SmoothWeightedRoundRobin::new()),
        Box::new(LeastRequest::new()),
        Box::new(PeakEwma::new()),
        Box::new(ConsistentHash::new()),
    ]
}

/// 1,024 hash keys the consistent-hash picks cycle through (other balancers ignore them).
fn keys() -> Vec<String> {
    (0..1024).map(|k| format!("user-{k}")).collect()
}

fn set_pick(c: &mut Criterion) {
    let mut g = c.benchmark_group("set_pick");
    g.measurement_time(Duration::from_secs(2));
    g.warm_up_time(Duration::from_millis(500));
    let keys = keys();
    for n in SIZES {
        let shared = InstanceSet::new("bench-service", instances(n, "set"));
        for lb in balancers() {
            // Each balancer gets its own copy of the set (same generation, same instances), as
            // each discovery cache's sets are prepared by its one balancer: a set keeps the
            // state of the first balancer that prepares it, and the others would find theirs
            // by a lookup instead.
            let set = shared.clone();
            lb.prepare(&set);
            let mut k = 0usize;
            g.bench_with_input(BenchmarkId::new(lb.name(), n), &set, |b, set| {
                b.iter(|| {
                    k = (k + 1) & 1023;
                    let ctx = SelectContext::with_hash_key(keys[k].as_bytes());
                    if let Some((s, guard)) = lb.pick(black_box(set), &ctx) {
                        black_box(s);
                        guard.finish(Outcome::Success);
                    }
                })
            });
        }
    }
    g.finish();
}

fn slice_call(c: &mut Criterion) {
    let mut g = c.benchmark_group("slice_call");
    g.measurement_time(Duration::from_secs(2));
    g.warm_up_time(Duration::from_millis(500));
    let keys = keys();
    for n in SIZES {
        let all = instances(n, "slice");
        for lb in balancers() {
            let mut k = 0usize;
            g.bench_with_input(BenchmarkId::new(lb.name(), n), &all, |b, all| {
                b.iter(|| {
                    k = (k + 1) & 1023;
                    let ctx = SelectContext::with_hash_key(keys[k].as_bytes());
                    if let Some(s) = lb.select(black_box(all), &ctx) {
                        lb.begin(s).finish(Outcome::Success);
                    }
                })
            });
        }
    }
    g.finish();
}

/// A writer holding `n` instances, and the id of one of them to remove and add back.
fn writer(n: usize) -> (InstanceSetWriter, Arc<ServiceInfo>) {
    let mut w = InstanceSetWriter::new("bench-service");
    w.replace(instances(n, "chg"));
    (w, instance(n / 2, "chg"))
}

/// Removes `moving` if it is in the set, else adds it back: one change either way.
fn toggle(w: &mut InstanceSetWriter, moving: &Arc<ServiceInfo>) -> Arc<InstanceSet> {
    if w.remove(&moving.id).is_none() {
        w.upsert(Arc::clone(moving));
    }
    Arc::clone(w.current())
}

fn prepare_one_change(c: &mut Criterion) {
    let mut g = c.benchmark_group("prepare_one_change");
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(2));
    g.warm_up_time(Duration::from_millis(500));
    for n in SIZES {
        for lb in balancers() {
            let (mut w, moving) = writer(n);
            lb.prepare(w.current());
            g.bench_function(BenchmarkId::new(lb.name(), n), |b| {
                b.iter(|| {
                    let set = toggle(&mut w, &moving);
                    lb.prepare(&set);
                })
            });
        }
    }
    g.finish();
}

/// Changes made per sample of the `first_pick_after_change` group: each change needs a
/// `prepare` (milliseconds for a large ring) before the timed pick, so a sample times this many
/// picks and scales the sum to the iteration count criterion asked for.
const CHANGES_PER_SAMPLE: u64 = 64;

/// Times `pick` on `CHANGES_PER_SAMPLE` fresh sets made by `change` (untimed), scaled to `iters`.
fn timed_after_changes(
    iters: u64,
    mut change: impl FnMut() -> Arc<InstanceSet>,
    mut pick: impl FnMut(&InstanceSet),
) -> Duration {
    let n = iters.clamp(1, CHANGES_PER_SAMPLE);
    let mut total = Duration::ZERO;
    for _ in 0..n {
        let set = change();
        let start = Instant::now();
        pick(&set);
        total += start.elapsed();
    }
    total.mul_f64(iters as f64 / n as f64)
}

fn first_pick_after_change(c: &mut Criterion) {
    let mut g = c.benchmark_group("first_pick_after_change");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(1));
    g.warm_up_time(Duration::from_millis(200));
    let ctx = SelectContext::with_hash_key(b"user-1");
    for n in SIZES {
        for lb in balancers() {
            let (mut w, moving) = writer(n);
            lb.prepare(w.current());
            g.bench_function(BenchmarkId::new(lb.name(), n), |b| {
                b.iter_custom(|iters| {
                    timed_after_changes(
                        iters,
                        || {
                            let set = toggle(&mut w, &moving);
                            lb.prepare(&set);
                            set
                        },
                        |set| {
                            if let Some((s, guard)) = lb.pick(set, &ctx) {
                                black_box(s);
                                guard.finish(Outcome::Success);
                            }
                        },
                    )
                })
            });
        }
    }
    for n in SIZES {
        let lb = ConsistentHash::new();
        let (mut w, moving) = writer(n);
        lb.prepare(w.current());
        g.bench_function(BenchmarkId::new("unprepared/consistent_hash", n), |b| {
            b.iter_custom(|iters| {
                timed_after_changes(
                    iters,
                    || toggle(&mut w, &moving),
                    |set| {
                        black_box(lb.select_set(set, &ctx));
                    },
                )
            })
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    set_pick,
    slice_call,
    prepare_one_change,
    first_pick_after_change
);
criterion_main!(benches);
