//! Discovery over the in-memory registry: ports of the Go tests, cache behaviour, failures.
//!
//! One idea in one file: `CachedDiscovery` as a user sees it.
#![allow(clippy::unwrap_used)] // tests

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{healthy, unhealthy, wait_until, Flaky};
use futures_util::StreamExt;
use waypost_balancer::{Random, RoundRobin};
use waypost_core_types::{
    Error, Health, SelectContext, ServiceDiscovery, ServiceEventType, ServiceRegistry,
    SnapshotReason, WatchEvent,
};
use waypost_discovery::{CachedDiscovery, Filter};
use waypost_registry_memory::MemoryRegistry;

fn rr(registry: Arc<dyn ServiceRegistry>) -> CachedDiscovery {
    CachedDiscovery::new(registry, Arc::new(RoundRobin::new()))
}

/// Port of Go's TestMemoryServiceDiscovery.
#[tokio::test]
async fn memory_service_discovery() {
    let registry = Arc::new(MemoryRegistry::new());
    registry
        .register(&healthy("user-service-1", "user-service", 8080))
        .await
        .unwrap();
    registry
        .register(&healthy("user-service-2", "user-service", 8081))
        .await
        .unwrap();
    let d = rr(registry.clone());

    let all = d.discover("user-service").await.unwrap();
    assert_eq!(all.len(), 2);
    let one = d.discover_one("user-service").await.unwrap();
    assert!(one.id == "user-service-1" || one.id == "user-service-2");
    assert!(matches!(
        d.discover("nonexistent-service").await,
        Err(Error::ServiceNotFound(n)) if n == "nonexistent-service"
    ));
    assert!(matches!(
        d.discover_one("nonexistent-service").await,
        Err(Error::ServiceNotFound(_))
    ));
    d.close().await.unwrap();
}

/// Port of Go's TestLoadBalancers, through discovery.
#[tokio::test]
async fn load_balancers() {
    let registry = Arc::new(MemoryRegistry::new());
    for i in 1..=3 {
        registry
            .register(&healthy(&format!("svc-{i}"), "lb-service", 8080 + i))
            .await
            .unwrap();
    }
    let d = rr(registry.clone());
    let picks: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..6 {
            v.push(d.discover_one("lb-service").await.unwrap().id.clone());
        }
        v
    };
    assert_eq!(
        picks,
        ["svc-1", "svc-2", "svc-3", "svc-1", "svc-2", "svc-3"]
    );

    let d = CachedDiscovery::new(registry.clone(), Arc::new(Random::new()));
    let mut seen = std::collections::HashSet::new();
    for _ in 0..300 {
        seen.insert(d.discover_one("lb-service").await.unwrap().id.clone());
    }
    assert_eq!(seen.len(), 3, "random reached every instance: {seen:?}");
}

/// The Laravel-Go module's demo: [1 healthy, 2 healthy, 3 unhealthy, 4 healthy] gives 1, 2, 4,
/// 1, 2, 4.
#[tokio::test]
async fn laravel_go_demo_round_robin_through_discovery() {
    let registry = Arc::new(MemoryRegistry::new());
    registry
        .register(&healthy("1", "demo", 8001))
        .await
        .unwrap();
    registry
        .register(&healthy("2", "demo", 8002))
        .await
        .unwrap();
    registry
        .register(&unhealthy("3", "demo", 8003))
        .await
        .unwrap();
    registry
        .register(&healthy("4", "demo", 8004))
        .await
        .unwrap();
    let d = rr(registry);
    let mut picks = Vec::new();
    for _ in 0..6 {
        picks.push(d.discover_one("demo").await.unwrap().id.clone());
    }
    assert_eq!(picks, ["1", "2", "4", "1", "2", "4"]);
}

/// Port of Go's TestServiceDiscoveryWithUnhealthyServices.
#[tokio::test]
async fn service_discovery_with_unhealthy_services() {
    let registry = Arc::new(MemoryRegistry::new());
    registry
        .register(&healthy("healthy-1", "mixed", 8080))
        .await
        .unwrap();
    registry
        .register(&unhealthy("unhealthy-1", "mixed", 8081))
        .await
        .unwrap();
    registry
        .register(&unhealthy("unhealthy-2", "mixed", 8082))
        .await
        .unwrap();
    let d = rr(registry.clone());
    assert_eq!(
        d.discover("mixed").await.unwrap().len(),
        3,
        "discover returns every instance"
    );
    for _ in 0..10 {
        assert_eq!(d.discover_one("mixed").await.unwrap().id, "healthy-1");
    }
    registry
        .register(&unhealthy("sick-1", "sick", 9000))
        .await
        .unwrap();
    assert!(
        matches!(d.discover_one("sick").await, Err(Error::NoHealthyInstance(n)) if n == "sick")
    );
    assert_eq!(d.discover("sick").await.unwrap().len(), 1);
    // Making the last healthy one unhealthy switches the error kind, it does not hide the service.
    registry
        .update(&unhealthy("healthy-1", "mixed", 8080))
        .await
        .unwrap();
    wait_until(Duration::from_secs(2), || async {
        matches!(
            d.discover_one("mixed").await,
            Err(Error::NoHealthyInstance(_))
        )
    })
    .await
    .expect("the cache saw the update");
}

/// Register, deregister and TTL expiry reach the cache within milliseconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_follows_register_deregister_and_expiry() {
    let registry = Arc::new(
        MemoryRegistry::builder()
            .cleanup_interval(Duration::from_millis(10))
            .build()
            .unwrap(),
    );
    registry
        .register(&healthy("a", "follow", 8001))
        .await
        .unwrap();
    let d = rr(registry.clone());
    assert_eq!(d.discover("follow").await.unwrap().len(), 1);

    let count = |n: usize| {
        let d = d.clone();
        move || {
            let d = d.clone();
            async move { d.discover("follow").await.map(|v| v.len()).unwrap_or(0) == n }
        }
    };
    registry
        .register(&healthy("b", "follow", 8002))
        .await
        .unwrap();
    let took = wait_until(Duration::from_secs(1), count(2))
        .await
        .expect("register seen");
    assert!(took < Duration::from_millis(50), "register took {took:?}");

    registry.deregister("a").await.unwrap();
    let took = wait_until(Duration::from_secs(1), count(1))
        .await
        .expect("deregister seen");
    assert!(took < Duration::from_millis(50), "deregister took {took:?}");
    assert_eq!(d.discover_one("follow").await.unwrap().id, "b");

    // An instance with a 50 ms TTL that nobody renews expires (cleanup every 10 ms).
    registry
        .register(&healthy("c", "follow", 8003).with_ttl(Duration::from_millis(50)))
        .await
        .unwrap();
    wait_until(Duration::from_secs(1), count(2))
        .await
        .expect("c seen");
    let took = wait_until(Duration::from_secs(1), count(1))
        .await
        .expect("expiry seen");
    assert!(took < Duration::from_millis(150), "expiry took {took:?}");
    let stats = d.service_stats("follow").unwrap();
    assert!(stats.watching && stats.stale_for.is_none());
}

/// When the registry becomes unreachable the cache keeps serving its last set and says how stale
/// it is; when the registry is back, the watch is re-established and the cache catches up.
#[tokio::test(start_paused = true)]
async fn registry_error_leaves_cache_serving() {
    let flaky = Flaky::new(MemoryRegistry::new());
    flaky
        .inner
        .register(&healthy("a", "svc", 8001))
        .await
        .unwrap();
    flaky
        .inner
        .register(&healthy("b", "svc", 8002))
        .await
        .unwrap();
    let d = CachedDiscovery::builder(flaky.clone())
        .refresh_interval(Duration::from_secs(1))
        .build()
        .unwrap();
    assert_eq!(d.discover("svc").await.unwrap().len(), 2);

    flaky.set_down(true);
    flaky.inner.deregister("a").await.unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    // Still serving the last known good set.
    assert_eq!(d.discover("svc").await.unwrap().len(), 2);
    assert!(d.discover_one("svc").await.is_ok());
    let stats = d.service_stats("svc").unwrap();
    assert!(!stats.watching);
    let stale = stats.stale_for.expect("stale");
    assert!(stale >= Duration::from_secs(9), "{stale:?}");
    assert!(stats.last_error.unwrap().contains("unreachable"));
    // It kept polling while down.
    assert!(flaky.list_calls.load(std::sync::atomic::Ordering::SeqCst) >= 5);

    flaky.set_down(false);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let stats = d.service_stats("svc").unwrap();
    assert!(stats.watching, "{stats:?}");
    assert_eq!(stats.stale_for, None);
    assert_eq!(stats.last_error, None);
    // The first snapshot of the new watch follows a gap: what it leaves out is held for the
    // reconnect grace (it might be registering again), then dropped.
    assert_eq!(stats.stale_instances, 1);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        d.discover("svc").await.unwrap().len(),
        1,
        "caught up with the deregistration"
    );
    // And follows changes live again.
    flaky
        .inner
        .register(&healthy("c", "svc", 8003))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(d.discover("svc").await.unwrap().len(), 2);
}

/// A first lookup while the registry is unreachable fails with the registry's error and leaves
/// nothing behind; the next lookup after it is back succeeds.
#[tokio::test(start_paused = true)]
async fn first_lookup_with_registry_down_errors() {
    let flaky = Flaky::new(MemoryRegistry::new());
    flaky
        .inner
        .register(&healthy("a", "svc", 8001))
        .await
        .unwrap();
    let d = CachedDiscovery::new(flaky.clone(), Arc::new(RoundRobin::new()));
    flaky.set_down(true);
    assert!(matches!(
        d.discover("svc").await,
        Err(Error::Unavailable(_))
    ));
    assert!(d.service_stats("svc").is_none());
    flaky.set_down(false);
    assert_eq!(d.discover("svc").await.unwrap().len(), 1);
}

/// With the watch refused, the cache is filled by polling and follows changes every refresh
/// interval; once a watch can start again, it switches back to it.
#[tokio::test(start_paused = true)]
async fn watch_failure_falls_back_to_polling() {
    let flaky = Flaky::new(MemoryRegistry::new());
    flaky
        .inner
        .register(&healthy("a", "poll", 8001))
        .await
        .unwrap();
    flaky.set_no_watch(true);
    let d = CachedDiscovery::builder(flaky.clone())
        .refresh_interval(Duration::from_secs(2))
        .build()
        .unwrap();
    assert_eq!(d.discover("poll").await.unwrap().len(), 1);
    let stats = d.service_stats("poll").unwrap();
    assert!(!stats.watching);
    assert!(stats.last_error.unwrap().contains("watch refused"));

    flaky
        .inner
        .register(&healthy("b", "poll", 8002))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(d.discover("poll").await.unwrap().len(), 1, "not yet polled");
    tokio::time::sleep(Duration::from_millis(4100)).await;
    assert_eq!(
        d.discover("poll").await.unwrap().len(),
        2,
        "picked up by polling"
    );

    flaky.set_no_watch(false);
    tokio::time::sleep(Duration::from_millis(4100)).await;
    assert!(d.service_stats("poll").unwrap().watching);
    flaky
        .inner
        .register(&healthy("c", "poll", 8003))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(d.discover("poll").await.unwrap().len(), 3, "live again");
}

/// A watch that ends (a backend reconnecting) is replaced: polling bridges the gap.
#[tokio::test(start_paused = true)]
async fn broken_watch_is_reestablished() {
    let flaky = Flaky::new(MemoryRegistry::new());
    flaky
        .inner
        .register(&healthy("a", "w", 8001))
        .await
        .unwrap();
    let d = CachedDiscovery::builder(flaky.clone())
        .refresh_interval(Duration::from_secs(1))
        .build()
        .unwrap();
    d.discover("w").await.unwrap();
    let calls = flaky.watch_calls.load(std::sync::atomic::Ordering::SeqCst);
    flaky.cut_watches();
    flaky
        .inner
        .register(&healthy("b", "w", 8002))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    // The immediate poll after the break saw `b`.
    assert_eq!(d.discover("w").await.unwrap().len(), 2);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(flaky.watch_calls.load(std::sync::atomic::Ordering::SeqCst) > calls);
    assert!(d.service_stats("w").unwrap().watching);
}

/// The shrink guard refuses an update that would empty the set, or shrink it below the
/// fraction; without the guard the same updates apply.
#[tokio::test(start_paused = true)]
async fn shrink_guard_refuses_emptying_and_large_shrinks() {
    let registry = Arc::new(MemoryRegistry::new());
    registry
        .register(&healthy("only", "guarded", 8001))
        .await
        .unwrap();
    let d = CachedDiscovery::builder(registry.clone())
        .refuse_empty_updates(true)
        .build()
        .unwrap();
    d.discover("guarded").await.unwrap();
    registry.deregister("only").await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        d.discover("guarded").await.unwrap().len(),
        1,
        "kept the last instance"
    );
    assert_eq!(d.service_stats("guarded").unwrap().refused_updates, 1);

    // Polling mode, fraction 0.5: 4 → 1 is refused, 4 → 3 is applied.
    let flaky = Flaky::new(MemoryRegistry::new());
    for i in 0..4 {
        flaky
            .inner
            .register(&healthy(&format!("i{i}"), "frac", 8000 + i))
            .await
            .unwrap();
    }
    flaky.set_no_watch(true);
    let d = CachedDiscovery::builder(flaky.clone())
        .refresh_interval(Duration::from_secs(1))
        .min_shrink_fraction(0.5)
        .build()
        .unwrap();
    assert_eq!(d.discover("frac").await.unwrap().len(), 4);
    for i in 0..3 {
        flaky.inner.deregister(&format!("i{i}")).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(d.discover("frac").await.unwrap().len(), 4, "refused 4 → 1");
    assert!(d.service_stats("frac").unwrap().refused_updates >= 1);
    flaky
        .inner
        .register(&healthy("i0", "frac", 8000))
        .await
        .unwrap();
    flaky
        .inner
        .register(&healthy("i1", "frac", 8001))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // A poll while the watch is down follows a gap: the instance it leaves out is held for the
    // reconnect grace first.
    assert_eq!(d.service_stats("frac").unwrap().stale_instances, 1);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(d.discover("frac").await.unwrap().len(), 3, "applied 4 → 3");

    // Control: without a guard the cache empties.
    let registry = Arc::new(MemoryRegistry::new());
    registry
        .register(&healthy("only", "open", 8001))
        .await
        .unwrap();
    let d = rr(registry.clone());
    d.discover("open").await.unwrap();
    registry.deregister("only").await.unwrap();
    // The last instance's deletion waits 250 ms (the reconnect grace's hold), then applies.
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(d.discover("open").await.is_ok());
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(matches!(
        d.discover("open").await,
        Err(Error::ServiceNotFound(_))
    ));
}

/// A watcher that falls behind gets a resync snapshot from the registry; the cache replaces its
/// set with it and ends up exact.
#[tokio::test]
async fn resync_snapshot_refills_the_cache() {
    let registry = Arc::new(MemoryRegistry::builder().watch_buffer(4).build().unwrap());
    registry
        .register(&healthy("seed", "burst", 7000))
        .await
        .unwrap();
    let d = rr(registry.clone());
    d.discover("burst").await.unwrap();
    // A watcher in the same position as the discovery's task, to show the burst makes it lag.
    let mut probe = registry.watch_service("burst").await.unwrap();
    assert!(matches!(
        probe.next().await,
        Some(WatchEvent::Snapshot {
            reason: SnapshotReason::Initial,
            ..
        })
    ));
    // On this current-thread runtime the watch task cannot run during the loop: it lags.
    for i in 0..100u16 {
        registry
            .register(&healthy(&format!("b{i}"), "burst", 8000 + i))
            .await
            .unwrap();
    }
    registry.deregister("seed").await.unwrap();
    wait_until(Duration::from_secs(2), || async {
        d.discover("burst").await.map(|v| v.len()).unwrap_or(0) == 100
    })
    .await
    .expect("resynced");
    let ids: Vec<String> = d
        .discover("burst")
        .await
        .unwrap()
        .iter()
        .map(|s| s.id.clone())
        .collect();
    assert!(!ids.contains(&"seed".to_string()));
    let mut lagged = false;
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(50), probe.next()).await {
        if let WatchEvent::Snapshot {
            reason: SnapshotReason::Lagged,
            ..
        } = ev
        {
            lagged = true;
        }
    }
    assert!(
        lagged,
        "the burst made watchers lag, so the cache was refilled by a resync"
    );
}

/// `close` stops every background task (the registry's watchers go away), ends the streams from
/// `watch`, and later calls fail with `Closed`; dropping the discovery does the same.
#[tokio::test]
async fn close_and_drop_stop_everything() {
    let registry = Arc::new(MemoryRegistry::new());
    registry.register(&healthy("a", "x", 8001)).await.unwrap();
    registry.register(&healthy("b", "y", 8002)).await.unwrap();
    let d = rr(registry.clone());
    d.discover("x").await.unwrap();
    d.discover("y").await.unwrap();
    let mut events = d.watch("x").await.unwrap();
    assert_eq!(registry.watcher_count(), 3);
    d.close().await.unwrap();
    d.close().await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(1), events.next()).await;
    assert!(matches!(end, Ok(None)), "watch stream ended");
    drop(events);
    wait_until(Duration::from_secs(1), || async {
        registry.watcher_count() == 0
    })
    .await
    .expect("tasks stopped");
    assert!(matches!(d.discover("x").await, Err(Error::Closed)));
    assert!(matches!(d.discover_one("x").await, Err(Error::Closed)));
    assert!(matches!(d.watch("x").await, Err(Error::Closed)));
    assert!(!registry.is_empty(), "the registry is the caller's");

    let d2 = rr(registry.clone());
    d2.discover("x").await.unwrap();
    assert_eq!(registry.watcher_count(), 1);
    drop(d2);
    wait_until(Duration::from_secs(1), || async {
        registry.watcher_count() == 0
    })
    .await
    .expect("drop stopped the task");
}

/// `watch(name)` streams that service's changes only.
#[tokio::test]
async fn watch_streams_one_service() {
    let registry = Arc::new(MemoryRegistry::new());
    let d = rr(registry.clone());
    let mut events = d.watch("orders").await.unwrap();
    registry
        .register(&healthy("o1", "orders", 8001))
        .await
        .unwrap();
    registry
        .register(&healthy("u1", "users", 8002))
        .await
        .unwrap();
    registry
        .update(&unhealthy("o1", "orders", 8001))
        .await
        .unwrap();
    registry.deregister("o1").await.unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        let e = tokio::time::timeout(Duration::from_secs(1), events.next())
            .await
            .unwrap()
            .unwrap();
        got.push((e.kind, e.service.id));
    }
    assert_eq!(
        got,
        vec![
            (ServiceEventType::Created, "o1".to_string()),
            (ServiceEventType::Updated, "o1".to_string()),
            (ServiceEventType::Deleted, "o1".to_string()),
        ]
    );
}

/// Filters by tags (all of / any of), metadata and version, per call and for the whole cache.
#[tokio::test]
async fn filters() {
    let registry = Arc::new(MemoryRegistry::new());
    let v1 = healthy("v1", "api", 8001)
        .with_version("1.0.0")
        .with_tag("eu")
        .with_tag("public")
        .with_metadata("zone", "a");
    let v2 = healthy("v2", "api", 8002)
        .with_version("2.0.0")
        .with_tag("us")
        .with_tag("public")
        .with_metadata("zone", "b");
    let v3 = healthy("v3", "api", 8003)
        .with_version("2.0.0")
        .with_tag("eu")
        .with_metadata("zone", "b");
    for s in [&v1, &v2, &v3] {
        registry.register(s).await.unwrap();
    }
    let d = rr(registry.clone());
    let ids = |v: Vec<Arc<waypost_core_types::ServiceInfo>>| {
        v.iter().map(|s| s.id.clone()).collect::<Vec<_>>()
    };
    assert_eq!(
        ids(d
            .discover_with("api", &Filter::new().all_tags(["eu", "public"]))
            .await
            .unwrap()),
        ["v1"]
    );
    assert_eq!(
        ids(d
            .discover_with("api", &Filter::new().any_tags(["us", "eu"]))
            .await
            .unwrap()),
        ["v1", "v2", "v3"]
    );
    assert_eq!(
        ids(d
            .discover_with("api", &Filter::new().metadata("zone", "b"))
            .await
            .unwrap()),
        ["v2", "v3"]
    );
    assert_eq!(
        ids(d
            .discover_with("api", &Filter::new().version("2.0.0").all_tags(["eu"]))
            .await
            .unwrap()),
        ["v3"]
    );
    assert!(matches!(
        d.discover_with("api", &Filter::new().version("9")).await,
        Err(Error::ServiceNotFound(_))
    ));
    for _ in 0..5 {
        let sel = d
            .select_with(
                "api",
                &Filter::new().metadata("zone", "a"),
                &SelectContext::default(),
            )
            .await
            .unwrap();
        assert_eq!(sel.instance.id, "v1");
    }

    let only_v2 = CachedDiscovery::builder(registry.clone())
        .filter(Filter::new().version("2.0.0").any_tags(["us"]))
        .build()
        .unwrap();
    assert_eq!(ids(only_v2.discover("api").await.unwrap()), ["v2"]);
    // A new instance that matches is picked up; one that does not, is not.
    registry
        .register(
            &healthy("v4", "api", 8004)
                .with_version("2.0.0")
                .with_tag("us"),
        )
        .await
        .unwrap();
    registry
        .register(
            &healthy("v5", "api", 8005)
                .with_version("1.0.0")
                .with_tag("us"),
        )
        .await
        .unwrap();
    wait_until(Duration::from_secs(1), || async {
        only_v2.discover("api").await.unwrap().len() == 2
    })
    .await
    .expect("v4 cached");
    assert_eq!(ids(only_v2.discover("api").await.unwrap()), ["v2", "v4"]);
}

/// Hits, misses, last refresh, and `clear_cache`.
#[tokio::test]
async fn cache_stats_and_clear_cache() {
    let registry = Arc::new(MemoryRegistry::new());
    registry.register(&healthy("a", "s", 8001)).await.unwrap();
    registry.register(&unhealthy("b", "s", 8002)).await.unwrap();
    let d = rr(registry.clone());
    assert!(d.cache_stats().is_empty());
    d.discover("s").await.unwrap();
    for _ in 0..4 {
        d.discover_one("s").await.unwrap();
    }
    let st = d.service_stats("s").unwrap();
    assert_eq!((st.instances, st.healthy, st.hits, st.misses), (2, 1, 4, 1));
    assert!(st.last_refresh.is_some() && st.watching);
    assert_eq!(d.cache_stats().len(), 1);

    d.clear_cache();
    assert!(d.cache_stats().is_empty());
    wait_until(Duration::from_secs(1), || async {
        registry.watcher_count() == 0
    })
    .await
    .expect("task stopped");
    d.discover("s").await.unwrap();
    assert_eq!(d.service_stats("s").unwrap().misses, 1);
    assert!(d.evict("s"));
    assert!(!d.evict("s"));
}

/// Concurrent first lookups of one service share one fill (one registry watch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_lookups_share_one_fill() {
    let registry = Arc::new(MemoryRegistry::new());
    registry.register(&healthy("a", "c", 8001)).await.unwrap();
    let d = rr(registry.clone());
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let d = d.clone();
            tokio::spawn(async move { d.discover_one("c").await.map(|s| s.id.clone()) })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), "a");
    }
    assert_eq!(registry.watcher_count(), 1);
}

/// Load-aware balancers get their call counts through `select`'s guard.
#[tokio::test]
async fn select_guard_feeds_the_balancer() {
    let registry = Arc::new(MemoryRegistry::new());
    registry.register(&healthy("a", "lr", 8001)).await.unwrap();
    registry.register(&healthy("b", "lr", 8002)).await.unwrap();
    let lb = Arc::new(waypost_balancer::LeastRequest::new());
    let d = CachedDiscovery::new(registry, lb.clone());
    let first = d.select("lr", &SelectContext::default()).await.unwrap();
    assert_eq!(lb.in_flight(&first.instance.id), 1);
    for _ in 0..20 {
        let s = d.select("lr", &SelectContext::default()).await.unwrap();
        assert_ne!(
            s.instance.id, first.instance.id,
            "the busy instance is avoided"
        );
        s.guard.finish(waypost_core_types::Outcome::Success);
    }
    // The avoid list is honoured softly.
    let avoid = vec!["a".to_string()];
    let ctx = SelectContext {
        hash_key: None,
        avoid: &avoid,
    };
    assert_eq!(d.select("lr", &ctx).await.unwrap().instance.id, "b");
    drop(first);
    assert_eq!(lb.in_flight("a") + lb.in_flight("b"), 0);
    let _ = Health::Healthy;
}

/// The per-thread fast path never serves an outdated instance: a change to an instance (its
/// port here) is visible to the next `discover_one` calls on the same thread.
#[tokio::test]
async fn repeated_lookups_see_updates() {
    let registry = Arc::new(MemoryRegistry::new());
    registry.register(&healthy("a", "upd", 8001)).await.unwrap();
    let d = rr(registry.clone());
    for _ in 0..10 {
        assert_eq!(d.discover_one("upd").await.unwrap().port, 8001);
    }
    registry.update(&healthy("a", "upd", 9001)).await.unwrap();
    wait_until(Duration::from_secs(1), || async {
        d.discover_one("upd").await.unwrap().port == 9001
    })
    .await
    .expect("update seen");
    for _ in 0..10 {
        assert_eq!(d.discover_one("upd").await.unwrap().port, 9001);
    }
    // Instances handed out equal the registry's data.
    let got = d.discover_one("upd").await.unwrap();
    assert_eq!(*got, registry.get_service("a").await.unwrap());
}
