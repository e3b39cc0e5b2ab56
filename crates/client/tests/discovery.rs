//! The client over the real discovery (`CachedDiscovery` on the in-memory registry).
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Reply, TestServer};
use waypost_balancer::{LeastRequest, RoundRobin};
use waypost_client::{OutlierConfig, ServiceClient};
use waypost_core_types::{
    CircuitState, Error, Health, LoadBalancer, ServiceDiscovery, ServiceInfo, ServiceRegistry,
};
use waypost_discovery::CachedDiscovery;
use waypost_registry_memory::MemoryRegistry;

async fn setup(
    servers: &[(&str, &TestServer)],
    balancer: Arc<dyn LoadBalancer>,
) -> (Arc<MemoryRegistry>, Arc<dyn ServiceDiscovery>) {
    let registry = Arc::new(MemoryRegistry::new());
    for (id, s) in servers {
        let svc = ServiceInfo::new(*id, "user-service", "127.0.0.1", s.addr.port())
            .with_health(Health::Healthy);
        registry.register(&svc).await.unwrap();
    }
    let discovery: Arc<dyn ServiceDiscovery> =
        Arc::new(CachedDiscovery::new(registry.clone(), balancer));
    (registry, discovery)
}

#[tokio::test]
async fn retries_avoid_the_failed_instance_with_the_real_balancer() {
    let sick = TestServer::start(Reply::Status(503, "sick")).await;
    let well = TestServer::start(Reply::Status(200, "ok")).await;
    let (_registry, discovery) =
        setup(&[("u1", &sick), ("u2", &well)], Arc::new(RoundRobin::new())).await;
    let client = ServiceClient::builder(discovery.clone())
        .retry(1, Duration::from_millis(1))
        .no_outlier_detection()
        .build()
        .unwrap();
    // Round-robin alternates; with one retry that avoids the failed instance, every call
    // succeeds, and the sick instance is tried at most once per call.
    for _ in 0..10 {
        assert_eq!(client.get("user-service", "/").await.unwrap(), "ok");
    }
    assert_eq!(well.hits(), 10);
    assert!(sick.hits() <= 10);
    discovery.close().await.unwrap();
}

#[tokio::test]
async fn ejection_keeps_traffic_off_a_failing_instance_and_deregistration_too() {
    let sick = TestServer::start(Reply::Status(500, "sick")).await;
    let well = TestServer::start(Reply::Status(200, "ok")).await;
    let (registry, discovery) = setup(
        &[("u1", &sick), ("u2", &well)],
        Arc::new(LeastRequest::new()),
    )
    .await;
    let client = ServiceClient::builder(discovery.clone())
        .retry(2, Duration::from_millis(1))
        .outlier_detection(OutlierConfig::new(2, Duration::from_secs(60)))
        .no_retry_budget()
        .build()
        .unwrap();
    for _ in 0..30 {
        assert_eq!(client.get("user-service", "/").await.unwrap(), "ok");
    }
    assert_eq!(sick.hits(), 2, "ejected after two failures");
    assert_eq!(client.instance_state("u1"), CircuitState::Open);

    registry.deregister("u2").await.unwrap();
    // Discovery follows the registry's watch; wait until the instance is gone from its cache.
    for _ in 0..100 {
        if discovery.discover("user-service").await.unwrap().len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Only the ejected instance is left: the client fails fast without calling it.
    assert!(matches!(
        client.get("user-service", "/").await,
        Err(Error::CircuitOpen)
    ));
    assert_eq!(sick.hits(), 2);
    discovery.close().await.unwrap();
}
