//! Bounded memory: the cache does not keep an entry and a watch task for every service name it
//! was ever asked for. Names come from request input; idle ones are dropped, with their watch.
#![allow(clippy::unwrap_used)] // tests

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::healthy;
use waypost_core_types::{Error, ServiceDiscovery, ServiceRegistry};
use waypost_discovery::{CachedDiscovery, DEFAULT_EMPTY_IDLE_TIMEOUT, DEFAULT_IDLE_TIMEOUT};
use waypost_registry_memory::MemoryRegistry;

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Lets aborted tasks finish and be counted out (paused time: nothing else moves the clock).
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

/// 100,000 distinct unknown names through `discover_one`: every one is answered
/// `ServiceNotFound`; the cache entries, their watch tasks and the registry's watchers then go
/// back to where they were within the configured idle time, while a service in use stays.
#[tokio::test(start_paused = true)]
async fn unknown_names_are_dropped_after_the_idle_time() {
    const NAMES: usize = 100_000;
    let idle = Duration::from_secs(10);
    let registry = Arc::new(MemoryRegistry::new());
    registry
        .register(&healthy("a", "real", 8001))
        .await
        .unwrap();
    let d = CachedDiscovery::builder(registry.clone())
        .empty_idle_timeout(idle)
        .build()
        .unwrap();
    assert_eq!(d.discover_one("real").await.unwrap().id, "a");
    settle().await;
    let (tasks0, entries0, watchers0) =
        (alive_tasks(), d.cached_services(), registry.watcher_count());
    assert_eq!(entries0, 1);

    let wall = Instant::now();
    for i in 0..NAMES {
        let name = format!("unknown-{i}");
        match d.discover_one(&name).await {
            Err(Error::ServiceNotFound(n)) => assert_eq!(n, name),
            other => panic!("{other:?}"),
        }
    }
    let took = wall.elapsed();
    let (tasks1, entries1, watchers1) =
        (alive_tasks(), d.cached_services(), registry.watcher_count());
    println!(
        "after {NAMES} unknown names ({took:?}): {entries1} entries (from {entries0}), \
         {tasks1} tasks (from {tasks0}), {watchers1} registry watchers (from {watchers0})"
    );
    assert_eq!(entries1, entries0 + NAMES);
    assert_eq!(tasks1, tasks0 + NAMES, "one watch task per name until idle");

    // The real service keeps being used; the unknown names are not looked up again.
    let t0 = tokio::time::Instant::now();
    while t0.elapsed() < idle * 3 / 2 + Duration::from_millis(10) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(d.discover_one("real").await.unwrap().id, "a");
    }
    settle().await;
    let (tasks2, entries2, watchers2) =
        (alive_tasks(), d.cached_services(), registry.watcher_count());
    println!(
        "{:?} later: {entries2} entries, {tasks2} tasks, {watchers2} registry watchers",
        t0.elapsed()
    );
    assert_eq!(entries2, entries0, "back to the baseline");
    assert_eq!(tasks2, tasks0, "every watch task stopped");
    assert_eq!(watchers2, watchers0, "every registry watch dropped");
    assert!(d.service_stats("real").is_some(), "a service in use stays");
    assert!(d.service_stats("unknown-7").is_none());

    // A dropped name works again, from the registry.
    registry
        .register(&healthy("u7", "unknown-7", 8002))
        .await
        .unwrap();
    assert_eq!(d.discover_one("unknown-7").await.unwrap().id, "u7");
    d.close().await.unwrap();
}

/// Services with instances are dropped too when nobody looks them up for `idle_timeout`, and a
/// later lookup fills them again; until then they stay, and lookups keep them.
#[tokio::test(start_paused = true)]
async fn idle_services_are_dropped_and_filled_again() {
    assert_eq!(DEFAULT_IDLE_TIMEOUT, Duration::from_secs(300));
    assert_eq!(DEFAULT_EMPTY_IDLE_TIMEOUT, Duration::from_secs(30));
    let registry = Arc::new(MemoryRegistry::new());
    for i in 0..3u16 {
        registry
            .register(&healthy(&format!("s{i}"), &format!("svc-{i}"), 8000 + i))
            .await
            .unwrap();
    }
    let d = CachedDiscovery::builder(registry.clone())
        .idle_timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    for i in 0..3 {
        d.discover(&format!("svc-{i}")).await.unwrap();
    }
    assert_eq!(d.cached_services(), 3);
    // svc-0 is used every 20 s; the others not.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(20)).await;
        d.discover_one("svc-0").await.unwrap();
    }
    settle().await;
    assert_eq!(d.cached_services(), 1);
    assert!(d.service_stats("svc-0").is_some());
    assert_eq!(registry.watcher_count(), 1);
    // A per-thread shortcut to a dropped service is not used: svc-1 is filled again.
    assert_eq!(d.discover_one("svc-1").await.unwrap().id, "s1");
    assert_eq!(d.service_stats("svc-1").unwrap().misses, 1);
    d.close().await.unwrap();
}

/// `Duration::MAX` keeps services for good (no sweep at all); zero is refused.
#[tokio::test(start_paused = true)]
async fn idle_timeouts_zero_and_max() {
    let registry = Arc::new(MemoryRegistry::new());
    for zero in [
        CachedDiscovery::builder(registry.clone()).idle_timeout(Duration::ZERO),
        CachedDiscovery::builder(registry.clone()).empty_idle_timeout(Duration::ZERO),
    ] {
        let err = zero.build().unwrap_err();
        assert!(matches!(err, Error::InvalidConfig(_)), "{err}");
    }
    let d = CachedDiscovery::builder(registry.clone())
        .idle_timeout(Duration::MAX)
        .empty_idle_timeout(Duration::MAX)
        .build()
        .unwrap();
    let tasks0 = alive_tasks();
    assert!(d.discover_one("nobody").await.is_err());
    assert_eq!(alive_tasks(), tasks0 + 1, "a watch task and no sweeper");
    tokio::time::advance(Duration::from_secs(100 * 365 * 24 * 3600)).await;
    settle().await;
    assert_eq!(d.cached_services(), 1);
    d.close().await.unwrap();
    settle().await;
    assert_eq!(alive_tasks(), tasks0);
}
