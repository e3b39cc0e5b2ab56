//! The `waypost` facade's `zookeeper` feature: a `zookeeper://` URL (with digest credentials)
//! builds a working `ZookeeperRegistry` against a real ZooKeeper.

use std::time::Duration;

use waypost::{new_service_registry, Health, RegistryConfig, ServiceInfo};
use waypost_core_types::Error;
use waypost_integration_tests::require;
use waypost_integration_tests::zookeeper::{ZkOptions, ZkServer};

#[tokio::test(flavor = "current_thread")]
async fn zookeeper_url_builds_a_working_registry() {
    let test = "zookeeper_url_builds_a_working_registry";
    let Some(zk) = require(test, ZkServer::start(ZkOptions::default()).await) else {
        return;
    };
    let prefix = format!("/waypost-facade-{}", std::process::id());
    let url = |auth: &str| {
        format!(
            "zookeeper://{auth}{}{prefix}?session_timeout=2s&connect_timeout=5s",
            zk.addr()
        )
    };
    let config = RegistryConfig::from_url(&url("alice:right-pw@")).expect("parse");
    assert!(!format!("{config:?}").contains("right-pw"));
    let registry = new_service_registry(&config)
        .await
        .expect("build from the URL");
    assert_eq!(registry.backend(), "zookeeper");
    let svc =
        ServiceInfo::new("facade-1", "facade", "127.0.0.1", 8080).with_health(Health::Healthy);
    registry.register(&svc).await.expect("register");

    // Another client, without credentials, sees it under the URL's prefix (world-readable).
    let reader = new_service_registry(&RegistryConfig::from_url(&url("")).expect("parse"))
        .await
        .expect("reader");
    let seen = reader.list_instances("facade").await.expect("list");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].id, "facade-1");

    // The same user with the wrong password is refused clearly.
    let wrong = RegistryConfig::from_url(&url("alice:wrong-pw@")).expect("parse");
    match new_service_registry(&wrong).await {
        Err(Error::Auth { .. }) => {}
        other => panic!("expected Error::Auth, got {other:?}"),
    }

    registry.close().await.expect("close");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        reader
            .list_instances("facade")
            .await
            .expect("list")
            .is_empty(),
        "close removes our node"
    );
    reader.close().await.expect("close reader");
}
