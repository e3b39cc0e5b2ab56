//! Service names can come from request input: 100,000 distinct unknown names through the client
//! leave no cache entry and no task behind once the discovery's idle time has passed.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use waypost_balancer::RoundRobin;
use waypost_client::ServiceClient;
use waypost_core_types::{Error, Health, ServiceDiscovery, ServiceInfo, ServiceRegistry};
use waypost_discovery::CachedDiscovery;
use waypost_registry_memory::MemoryRegistry;

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn unknown_service_names_do_not_accumulate() {
    const NAMES: usize = 100_000;
    let idle = Duration::from_secs(10);
    let registry = Arc::new(MemoryRegistry::new());
    // A service that exists (no server behind it: only its cache entry matters here).
    registry
        .register(&ServiceInfo::new("a", "real", "127.0.0.1", 9).with_health(Health::Healthy))
        .await
        .unwrap();
    let discovery = Arc::new(
        CachedDiscovery::builder(registry.clone())
            .balancer(Arc::new(RoundRobin::new()))
            .empty_idle_timeout(idle)
            .build()
            .unwrap(),
    );
    let client = ServiceClient::builder(discovery.clone()).build().unwrap();
    assert!(discovery.discover("real").await.is_ok());
    settle().await;
    let (tasks0, entries0, watchers0) = (
        alive_tasks(),
        discovery.cached_services(),
        registry.watcher_count(),
    );

    let wall = Instant::now();
    for i in 0..NAMES {
        let name = format!("from-request-{i}");
        match client.get(&name, "/").await {
            Err(Error::ServiceNotFound(n)) => assert_eq!(n, name),
            other => panic!("{other:?}"),
        }
    }
    let took = wall.elapsed();
    let (tasks1, entries1) = (alive_tasks(), discovery.cached_services());
    println!(
        "after {NAMES} unknown names through the client ({took:?}): {entries1} entries \
         (from {entries0}), {tasks1} tasks (from {tasks0})"
    );
    assert_eq!(entries1, entries0 + NAMES);

    let t0 = tokio::time::Instant::now();
    while t0.elapsed() < idle * 3 / 2 + Duration::from_millis(10) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(discovery.discover("real").await.is_ok());
    }
    settle().await;
    let (tasks2, entries2, watchers2) = (
        alive_tasks(),
        discovery.cached_services(),
        registry.watcher_count(),
    );
    println!(
        "{:?} later: {entries2} entries, {tasks2} tasks, {watchers2} registry watchers",
        t0.elapsed()
    );
    assert_eq!(entries2, entries0);
    assert_eq!(tasks2, tasks0);
    assert_eq!(watchers2, watchers0);
}
