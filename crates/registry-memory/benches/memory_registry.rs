#![allow(missing_docs)] // criterion_group! generates undocumented items
//! Throughput of the in-memory registry's hot operations, through the `ServiceRegistry` trait.
//!
//! `cargo bench -p waypost-registry-memory --bench memory_registry`

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use futures_util::StreamExt;
use waypost_core_types::{Health, ServiceInfo, ServiceRegistry};
use waypost_registry_memory::MemoryRegistry;

/// Runs a future that completes without waiting (every memory registry call does).
fn now<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the memory registry never waits"),
    }
}

fn instance(name: &str, i: usize) -> ServiceInfo {
    ServiceInfo::new(
        format!("{name}-{i}"),
        name,
        "10.0.0.1",
        8000 + (i % 1000) as u16,
    )
    .with_version("1.0.0")
    .with_health(Health::Healthy)
    .with_metadata("region", "us-west-1")
    .with_tag("api")
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let _guard = rt.enter();

    let mut group = c.benchmark_group("memory_registry");
    group.throughput(Throughput::Elements(1));

    let registry = MemoryRegistry::new();
    let services: Vec<ServiceInfo> = (0..10_000)
        .map(|i| instance(&format!("svc{}", i % 100), i))
        .collect();
    let mut i = 0;
    group.bench_function("upsert_10k_ids", |b| {
        b.iter(|| {
            i = (i + 1) % services.len();
            now(registry.register(black_box(&services[i]))).expect("register");
        })
    });

    let small = MemoryRegistry::new();
    for i in 0..10 {
        now(small.register(&instance("orders", i))).expect("register");
    }
    // Other services in the registry, so listing one is not listing everything.
    for i in 0..1_000 {
        now(small.register(&instance(&format!("other{}", i % 50), i))).expect("register");
    }
    group.bench_function("list_instances_10", |b| {
        b.iter(|| {
            let v = now(small.list_instances(black_box("orders"))).expect("list");
            assert_eq!(v.len(), 10);
            v
        })
    });
    group.bench_function("instances_shared_10", |b| {
        b.iter(|| {
            let v = small.instances_shared(black_box("orders")).expect("list");
            assert_eq!(v.len(), 10);
            v
        })
    });
    group.bench_function("get_service", |b| {
        b.iter(|| now(small.get_service(black_box("orders-3"))).expect("get"))
    });
    group.finish();
}

/// Registration throughput with 0 and with 100 watchers of services that are not registered
/// to, each drained by a task on a worker thread: what unrelated watchers (every service a
/// discovery cache holds is one) cost a registration.
fn unrelated_watchers(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_time()
        .build()
        .expect("runtime");
    let _guard = rt.enter();

    let mut group = c.benchmark_group("memory_registry_watchers");
    group.throughput(Throughput::Elements(1));
    let services: Vec<ServiceInfo> = (0..10_000)
        .map(|i| instance(&format!("svc{}", i % 100), i))
        .collect();
    for watchers in [0, 100] {
        let registry = MemoryRegistry::new();
        let drains: Vec<_> = (0..watchers)
            .map(|w| {
                let mut stream =
                    now(registry.watch_service(&format!("watched{w}"))).expect("watch");
                rt.spawn(async move { while stream.next().await.is_some() {} })
            })
            .collect();
        let mut i = 0;
        group.bench_function(format!("register_{watchers}_unrelated_watchers"), |b| {
            b.iter(|| {
                i = (i + 1) % services.len();
                now(registry.register(black_box(&services[i]))).expect("register");
            })
        });
        rt.block_on(registry.close()).expect("close");
        for d in drains {
            rt.block_on(d).expect("drain task");
        }
    }
    group.finish();
}

criterion_group!(benches_group, benches, unrelated_watchers);
criterion_main!(benches_group);
