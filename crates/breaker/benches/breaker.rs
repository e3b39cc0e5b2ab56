//! Breaker overhead in the closed state, and how it scales across threads.
//!
//! `cargo bench -p waypost-breaker --bench breaker -- --warm-up-time 1 --measurement-time 3`
//! prints criterion's figures, then the thread-scaling figures (best of several trials), then
//! the CPU time per call. `WAYPOST_SCALING_ONLY=1` skips criterion's part.
//!
//! On a machine shared with other work, wall-clock figures include the time the benchmark waits
//! for a core. The CPU figures do not: they divide the threads' own CPU time (Linux
//! `/proc/thread-self/schedstat`) by the calls made. Their ratio shows what sharing costs (cache
//! lines moving between cores, a contended lock) only when the two threads really ran at the
//! same time: on a busy machine they are often time-sliced, and then nothing is shared.
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use waypost_breaker::{
    AdaptiveThrottle, CircuitBreakerExt, FailureRateBreaker, SimpleCircuitBreaker,
};
use waypost_core_types::CircuitBreaker;

#[inline(never)]
fn op(x: u64) -> Result<u64, ()> {
    Ok(black_box(x).wrapping_mul(31).wrapping_add(7))
}

fn closed_overhead(c: &mut Criterion) {
    let mut g = c.benchmark_group("closed");
    let simple = SimpleCircuitBreaker::new(5, Duration::from_secs(5));
    let dyn_simple: Arc<dyn CircuitBreaker> =
        Arc::new(SimpleCircuitBreaker::new(5, Duration::from_secs(5)));
    let rate = FailureRateBreaker::builder().build().unwrap();
    let throttle = AdaptiveThrottle::new(2.0, Duration::from_secs(60));
    g.bench_function("direct", |b| b.iter(|| op(black_box(1))));
    g.bench_function("std_instant_now", |b| b.iter(std::time::Instant::now));
    g.bench_function("tokio_instant_now", |b| b.iter(tokio::time::Instant::now));
    g.bench_function("simple_execute_sync", |b| {
        b.iter(|| simple.execute_sync(|| op(black_box(1))))
    });
    g.bench_function("simple_dyn_execute_sync", |b| {
        b.iter(|| dyn_simple.execute_sync(|| op(black_box(1))))
    });
    g.bench_function("simple_permit_only", |b| {
        b.iter(|| {
            let p = simple.try_acquire().unwrap();
            let r = op(black_box(1));
            simple.record(p, waypost_core_types::Outcome::Success, Duration::ZERO);
            r
        })
    });
    g.bench_function("failure_rate_execute_sync", |b| {
        b.iter(|| rate.execute_sync(|| op(black_box(1))))
    });
    let rate_time = FailureRateBreaker::builder()
        .time_window(Duration::from_secs(60))
        .build()
        .unwrap();
    g.bench_function("failure_rate_time_execute_sync", |b| {
        b.iter(|| rate_time.execute_sync(|| op(black_box(1))))
    });
    g.bench_function("throttle_execute_sync", |b| {
        b.iter(|| throttle.execute_sync(|| op(black_box(1))))
    });
    g.finish();
}

criterion_group!(benches, closed_overhead);

/// Nanoseconds this thread has run on a CPU (Linux; 0 elsewhere).
fn thread_cpu_nanos() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Calls per second of `call` with `threads` threads (wall clock), and calls per CPU-second
/// (the threads' calls over the threads' CPU time).
fn throughput<F>(call: &F, threads: usize, per_thread: u64) -> (f64, f64)
where
    F: Fn(u64) + Sync + ?Sized,
{
    let barrier = Barrier::new(threads + 1);
    let (slowest, cpu) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    let c0 = thread_cpu_nanos();
                    let t0 = Instant::now();
                    for i in 0..per_thread {
                        call(i);
                    }
                    (t0.elapsed(), thread_cpu_nanos().saturating_sub(c0))
                })
            })
            .collect();
        barrier.wait();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let slowest = results.iter().map(|r| r.0).max().unwrap();
        let cpu: u64 = results.iter().map(|r| r.1).sum();
        (slowest, cpu)
    });
    let per_cpu_second = if cpu == 0 {
        0.0
    } else {
        (threads as u64 * per_thread) as f64 / (cpu as f64 / 1e9)
    };
    (
        (threads as u64 * per_thread) as f64 / slowest.as_secs_f64(),
        per_cpu_second,
    )
}

type Call<'a> = (&'a str, Box<dyn Fn(u64) + Sync + 'a>);

/// Runs every variant in turn within each trial (so a busy moment on a shared machine hits all
/// of them alike) and keeps each one's best.
fn report(calls: &[Call<'_>]) {
    const PER_THREAD: u64 = 2_000_000;
    const TRIALS: usize = 15;
    // (wall 1 thread, wall 2 threads, per CPU-second 1 thread, per CPU-second 2 threads)
    let mut best = vec![[0f64; 4]; calls.len()];
    for _ in 0..TRIALS {
        for ((_, call), best) in calls.iter().zip(best.iter_mut()) {
            let one = throughput(call, 1, PER_THREAD);
            let two = throughput(call, 2, PER_THREAD);
            for (b, v) in best.iter_mut().zip([one.0, two.0, one.1, two.1]) {
                *b = b.max(v);
            }
        }
    }
    for ((name, _), [one, two, cpu_one, cpu_two]) in calls.iter().zip(best) {
        println!(
            "scaling/{name}: 1 thread {:.1} M calls/s, 2 threads {:.1} M calls/s, ratio {:.2}x (best of {TRIALS}); CPU per call {:.1} ns (1 thread), {:.1} ns (2 threads)",
            one / 1e6,
            two / 1e6,
            two / one,
            1e9 / cpu_one,
            1e9 / cpu_two,
        );
    }
}

static CONTROL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn scaling() {
    let simple = SimpleCircuitBreaker::new(5, Duration::from_secs(5));
    let rate = FailureRateBreaker::builder().build().unwrap();
    let rate_time = FailureRateBreaker::builder()
        .time_window(Duration::from_secs(60))
        .build()
        .unwrap();
    let throttle = AdaptiveThrottle::new(2.0, Duration::from_secs(60));
    report(&[
        (
            "direct",
            Box::new(|i| {
                black_box(op(i).ok());
            }),
        ),
        (
            "control_two_atomic_loads",
            Box::new(|i| {
                black_box(CONTROL.load(std::sync::atomic::Ordering::Acquire));
                black_box(op(i).ok());
                black_box(CONTROL.load(std::sync::atomic::Ordering::Acquire));
            }),
        ),
        (
            "simple_execute_sync",
            Box::new(|i| {
                black_box(simple.execute_sync(|| op(i)).ok());
            }),
        ),
        (
            "simple_permit_only",
            Box::new(|i| {
                let p = simple.try_acquire().unwrap();
                black_box(op(i).ok());
                simple.record(p, waypost_core_types::Outcome::Success, Duration::ZERO);
            }),
        ),
        (
            "failure_rate_execute_sync",
            Box::new(|i| {
                black_box(rate.execute_sync(|| op(i)).ok());
            }),
        ),
        (
            "failure_rate_time_execute_sync",
            Box::new(|i| {
                black_box(rate_time.execute_sync(|| op(i)).ok());
            }),
        ),
        (
            "throttle_execute_sync",
            Box::new(|i| {
                black_box(throttle.execute_sync(|| op(i)).ok());
            }),
        ),
    ]);
}

fn main() {
    if std::env::var_os("WAYPOST_SCALING_ONLY").is_none() {
        benches();
        Criterion::default().configure_from_args().final_summary();
    }
    scaling();
}
