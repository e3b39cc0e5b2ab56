//! Latency from the start of `register` to the change arriving at a live watcher task: p50,
//! p99, p99.9 and max over 20,000 registrations, one at a time, in two set-ups:
//!
//! * `same thread`: a current-thread runtime; the registering task yields until the watcher task
//!   has seen the change (the registry's own delivery cost: broadcast, wake-up, snapshot-aware
//!   filtering, the copy handed to the watcher);
//! * `cross thread`: a two-worker runtime, the watcher on the other worker, which the OS must
//!   wake (on a VM this adds the hypervisor's idle wake-up).
//!
//! `cargo bench -p waypost-registry-memory --bench watch_latency`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use waypost_core_types::{ServiceInfo, ServiceRegistry, WatchEvent};
use waypost_registry_memory::MemoryRegistry;

const N: usize = 20_000;
const WARMUP: usize = 1_000;

async fn measure(label: &str, spin: bool) {
    let registry = MemoryRegistry::new();
    let mut watch = registry.watch_service("lat").await.expect("watch");
    assert!(matches!(
        watch.next().await,
        Some(WatchEvent::Snapshot { .. })
    ));
    let origin = Instant::now();
    // Nanoseconds since `origin` at which the watcher saw change number `i`.
    let seen = Arc::new((0..N).map(|_| AtomicU64::new(0)).collect::<Vec<_>>());
    let seen_w = Arc::clone(&seen);
    let watcher = tokio::spawn(async move {
        let mut n = 0;
        while let Some(ev) = watch.next().await {
            if let WatchEvent::Change(_) = ev {
                let at = origin.elapsed().as_nanos() as u64;
                seen_w[n].store(at.max(1), Ordering::Release);
                n += 1;
                if n == N {
                    return;
                }
            }
        }
    });
    let mut lat = Vec::with_capacity(N);
    for i in 0..N {
        let svc = ServiceInfo::new(format!("lat-{i}"), "lat", "127.0.0.1", 8080);
        let sent = origin.elapsed().as_nanos() as u64;
        registry.register(&svc).await.expect("register");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let at = seen[i].load(Ordering::Acquire);
            if at != 0 {
                if i >= WARMUP {
                    lat.push(Duration::from_nanos(at.saturating_sub(sent)));
                }
                break;
            }
            assert!(Instant::now() < deadline, "change {i} never arrived");
            if spin {
                std::hint::spin_loop();
            } else {
                tokio::task::yield_now().await;
            }
        }
    }
    watcher.await.expect("watcher");
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "memory registry register -> watcher ({label}): n={} p50={:?} p99={:?} p99.9={:?} max={:?}",
        lat.len(),
        pct(0.50),
        pct(0.99),
        pct(0.999),
        lat[lat.len() - 1]
    );
}

fn main() {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(measure("same thread", false));
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(measure("cross thread", true));
}
