//! Ports of the Go module's registry tests (TestServiceInfo, TestMemoryServiceRegistry,
//! TestServiceRegistryCleanup, TestServiceRegistryConcurrency), with the Go bugs they hid fixed:
//! values are copies, renewed instances do not expire, the cleanup worker stops.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use waypost_core_types::{
    Error, Health, Protocol, ServiceEventType, ServiceInfo, ServiceRegistry, SnapshotReason,
    WatchEvent,
};
use waypost_registry_memory::MemoryRegistry;

fn go_service() -> ServiceInfo {
    ServiceInfo::new("user-service-1", "user-service", "localhost", 8080)
        .with_version("1.0.0")
        .with_protocol(Protocol::Http)
        .with_health(Health::Healthy)
        .with_metadata("environment", "production")
        .with_metadata("region", "us-west-1")
        .with_tag("api")
        .with_tag("user")
        .with_ttl(Duration::from_secs(30))
}

#[test]
fn test_service_info() {
    let s = go_service();
    assert_eq!(s.id, "user-service-1");
    assert_eq!(s.name, "user-service");
    assert_eq!(s.version, "1.0.0");
    assert_eq!(s.address, "localhost");
    assert_eq!(s.port, 8080);
    assert_eq!(s.protocol, Protocol::Http);
    assert_eq!(s.health, Health::Healthy);
    assert_eq!(s.metadata["environment"], "production");
    assert_eq!(s.tags, vec!["api", "user"]);
    assert_eq!(s.ttl, Duration::from_secs(30));
    assert!(s.is_healthy());
    s.validate().unwrap();
}

#[tokio::test]
async fn test_memory_service_registry() {
    let registry = MemoryRegistry::new();
    let s = go_service();
    registry.register(&s).await.unwrap();

    let got = registry.get_service("user-service-1").await.unwrap();
    assert_eq!(got.name, "user-service");
    assert!(!got.created_at.is_zero());

    let all = registry.list_services().await.unwrap();
    assert_eq!(all.len(), 1);

    let mut changed = got.clone();
    changed.health = Health::Unhealthy;
    registry.update(&changed).await.unwrap();
    assert_eq!(
        registry.get_service("user-service-1").await.unwrap().health,
        Health::Unhealthy
    );

    registry.deregister("user-service-1").await.unwrap();
    assert!(matches!(
        registry.get_service("user-service-1").await,
        Err(Error::NotFound(_))
    ));
    assert!(registry.list_services().await.unwrap().is_empty());
    assert!(registry.is_empty());
}

/// The Go cleanup test registered a 1 s TTL service and slept; here time is paused, so the
/// boundaries are exact: alive just before the TTL, gone one cleanup tick after it.
#[tokio::test(start_paused = true)]
async fn test_service_registry_cleanup() {
    let registry = MemoryRegistry::builder()
        .cleanup_interval(Duration::from_millis(100))
        .build()
        .unwrap();
    let mut watch = registry.watch().await.unwrap();
    assert!(matches!(
        watch.next().await,
        Some(WatchEvent::Snapshot {
            reason: SnapshotReason::Initial,
            ..
        })
    ));
    let s = go_service().with_ttl(Duration::from_secs(1));
    registry.register(&s).await.unwrap();
    let forever = ServiceInfo::new("static-1", "static", "localhost", 9000);
    registry.register(&forever).await.unwrap();
    let _ = watch.next().await; // Created user-service-1
    let _ = watch.next().await; // Created static-1

    tokio::time::sleep(Duration::from_millis(950)).await;
    assert!(
        registry.get_service("user-service-1").await.is_ok(),
        "alive before its TTL"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        matches!(
            registry.get_service("user-service-1").await,
            Err(Error::NotFound(_))
        ),
        "gone within TTL + one cleanup interval"
    );
    match watch.next().await {
        Some(WatchEvent::Change(ev)) => {
            assert_eq!(ev.kind, ServiceEventType::Deleted);
            assert_eq!(ev.service.id, "user-service-1");
        }
        other => panic!("expected the expiry's Deleted event, got {other:?}"),
    }
    // Without a TTL (and no default), an instance never expires.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert!(registry.get_service("static-1").await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn renewal_keeps_an_instance_alive_and_late_renewal_fails() {
    let registry = MemoryRegistry::builder()
        .cleanup_interval(Duration::from_millis(100))
        .build()
        .unwrap();
    let s = go_service().with_ttl(Duration::from_secs(1));
    registry.register(&s).await.unwrap();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(800)).await;
        registry.renew(&s.id).await.unwrap();
    }
    let got = registry.get_service(&s.id).await.unwrap();
    assert!(
        got.last_check > got.created_at,
        "renew records the heartbeat time"
    );
    tokio::time::sleep(Duration::from_millis(1001)).await;
    // Expired: a late renew is refused even before the worker collects it.
    assert!(matches!(
        registry.renew(&s.id).await,
        Err(Error::NotFound(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn default_ttl_applies_to_instances_without_one() {
    let registry = MemoryRegistry::builder()
        .cleanup_interval(Duration::from_millis(100))
        .default_ttl(Some(Duration::from_secs(2)))
        .build()
        .unwrap();
    registry
        .register(&ServiceInfo::new("a", "svc", "h", 1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2150)).await;
    assert!(registry.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_service_registry_concurrency() {
    let registry = Arc::new(MemoryRegistry::new());
    let mut tasks = Vec::new();
    for t in 0..10 {
        let registry = Arc::clone(&registry);
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                let s = ServiceInfo::new(format!("svc-{t}-{i}"), format!("svc-{t}"), "h", 8000);
                registry.register(&s).await.unwrap();
                registry.get_service(&s.id).await.unwrap();
                registry.list_services().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(registry.list_services().await.unwrap().len(), 100);
    for t in 0..10 {
        assert_eq!(
            registry
                .list_instances(&format!("svc-{t}"))
                .await
                .unwrap()
                .len(),
            10
        );
    }
}

#[tokio::test(start_paused = true)]
async fn cleanup_worker_stops_on_close_and_on_drop() {
    let registry = MemoryRegistry::builder()
        .cleanup_interval(Duration::from_millis(10))
        .build()
        .unwrap();
    let watch = registry.watch().await.unwrap();
    assert_eq!(registry.watcher_count(), 1);
    drop(watch);
    assert_eq!(
        registry.watcher_count(),
        0,
        "dropping a stream stops its watch"
    );

    // Dropping the last handle ends the streams (and the worker, which holds no handle).
    let mut watch = registry.watch().await.unwrap();
    let _ = watch.next().await;
    drop(registry);
    let ended = tokio::time::timeout(Duration::from_secs(1), watch.next()).await;
    assert!(
        matches!(ended, Ok(None)),
        "stream must end when the registry is dropped"
    );
}

#[tokio::test]
async fn renaming_an_instance_moves_it_between_services() {
    let registry = MemoryRegistry::new();
    let mut old_watch = registry.watch_service("old").await.unwrap();
    let _ = old_watch.next().await;
    registry
        .register(&ServiceInfo::new("x", "old", "h", 1))
        .await
        .unwrap();
    registry
        .register(&ServiceInfo::new("x", "new", "h", 1))
        .await
        .unwrap();
    assert!(registry.list_instances("old").await.unwrap().is_empty());
    assert_eq!(registry.list_instances("new").await.unwrap().len(), 1);
    assert_eq!(registry.get_service("x").await.unwrap().name, "new");
    let kinds: Vec<_> = [old_watch.next().await, old_watch.next().await]
        .into_iter()
        .map(|e| e.and_then(|e| e.as_change().map(|c| c.kind)))
        .collect();
    assert_eq!(
        kinds,
        vec![
            Some(ServiceEventType::Created),
            Some(ServiceEventType::Deleted)
        ]
    );
}

#[tokio::test]
async fn bad_config_is_an_error() {
    for builder in [
        MemoryRegistry::builder().cleanup_interval(Duration::ZERO),
        MemoryRegistry::builder().watch_buffer(0),
        MemoryRegistry::builder().default_ttl(Some(Duration::ZERO)),
    ] {
        assert!(matches!(builder.build(), Err(Error::InvalidConfig(_))));
    }
}

#[test]
fn building_outside_a_runtime_is_an_error_not_a_panic() {
    match MemoryRegistry::builder().build() {
        Err(Error::InvalidConfig(msg)) => assert!(msg.contains("tokio runtime")),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn state_changes_follow_the_registry_to_closed() {
    use waypost_core_types::RegistryState;
    let registry = MemoryRegistry::new();
    let mut states = registry.state_changes();
    assert_eq!(states.next().await, Some(RegistryState::Connected));
    registry.close().await.unwrap();
    assert_eq!(states.next().await, Some(RegistryState::Closed));
    assert_eq!(states.next().await, None, "the stream ends after Closed");
    assert_eq!(registry.state(), RegistryState::Closed);
}

/// `Duration::MAX` as an instance's own TTL means "never expires": register and renew accept
/// it (no instant overflow), and a year later the instance is still there. As the registry's
/// `default_ttl` it is outside the documented bounds (1 ms to 365 days): a configuration error.
#[tokio::test(start_paused = true)]
async fn a_ttl_of_duration_max_never_expires() {
    let registry = MemoryRegistry::builder()
        .cleanup_interval(Duration::from_secs(3600))
        .default_ttl(Some(Duration::from_secs(365 * 24 * 3600)))
        .build()
        .unwrap();
    let own = go_service().with_ttl(Duration::MAX);
    registry.register(&own).await.unwrap();
    registry.renew(&own.id).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2 * 365 * 24 * 3600)).await;
    assert_eq!(registry.len(), 1);
    registry.renew(&own.id).await.unwrap();
    registry.close().await.unwrap();
    assert!(matches!(
        MemoryRegistry::builder()
            .default_ttl(Some(Duration::MAX))
            .build(),
        Err(Error::InvalidConfig(_))
    ));
}

/// The cleanup interval at its extremes: zero and `Duration::MAX` are configuration errors (the
/// bounds are 10 ms to 24 h); at 24 h, expired instances are still refused on renew before the
/// worker collects them.
#[tokio::test(start_paused = true)]
async fn cleanup_interval_extremes() {
    for bad in [Duration::ZERO, Duration::MAX] {
        assert!(matches!(
            MemoryRegistry::builder().cleanup_interval(bad).build(),
            Err(Error::InvalidConfig(_))
        ));
    }
    let registry = MemoryRegistry::builder()
        .cleanup_interval(Duration::from_secs(24 * 3600))
        .build()
        .unwrap();
    let s = go_service().with_ttl(Duration::from_secs(1));
    registry.register(&s).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(matches!(
        registry.renew(&s.id).await,
        Err(Error::NotFound(_))
    ));
    registry.close().await.unwrap();
}
