//! The `waypost` facade's `consul` feature: a `consul://` URL (with its ACL token) builds a
//! working `ConsulRegistry`. No Consul agent can be installed on the CI machine, so this runs
//! against the fake agent of `waypost-registry-consul` (feature `fake-agent`), which follows
//! Consul's documented HTTP API.

use std::time::Duration;

use waypost::{new_service_registry, Health, RegistryConfig, ServiceInfo};
use waypost_core_types::Error;
use waypost_registry_consul::fake::{FakeConsul, FakeOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_url_with_token_builds_a_working_registry_against_the_fake_agent() {
    let agent = FakeConsul::start(FakeOptions::default().with_acl_token("s3cret-token"))
        .await
        .expect("start the fake agent");
    let addr = agent.addr();
    let url =
        format!("consul://:s3cret-token@{addr}/waypost-facade?ttl=5s&connect_timeout=2s&dc=dc1");
    let config = RegistryConfig::from_url(&url).expect("parse the consul URL");
    assert!(!format!("{config:?}").contains("s3cret-token"));
    let registry = new_service_registry(&config)
        .await
        .expect("build from the URL");
    assert_eq!(registry.backend(), "consul");

    let svc =
        ServiceInfo::new("facade-1", "facade", "127.0.0.1", 8080).with_health(Health::Healthy);
    registry
        .register(&svc)
        .await
        .expect("register with the token");
    assert_eq!(agent.local_service_ids(), vec!["facade-1".to_string()]);
    let listed = registry.list_instances("facade").await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].health, Health::Healthy);
    registry.close().await.expect("close");
    assert!(agent.local_service_ids().is_empty(), "close deregisters");

    // Without the token, the agent refuses writes: a clear authentication error.
    let anonymous = RegistryConfig::from_url(&format!(
        "consul://{addr}/waypost-facade?connect_timeout=2s"
    ))
    .expect("parse");
    let result = async {
        let r = new_service_registry(&anonymous).await?;
        r.register(&svc).await
    }
    .await;
    assert!(matches!(result, Err(Error::Auth { .. })), "{result:?}");
}

#[tokio::test]
async fn consul_url_to_a_dead_agent_fails_within_its_connect_timeout() {
    let port = waypost_integration_tests::free_port();
    let config = RegistryConfig::from_url(&format!("consul://127.0.0.1:{port}?connect_timeout=1s"))
        .expect("parse");
    let start = tokio::time::Instant::now();
    let result = new_service_registry(&config).await;
    assert!(result.is_err(), "nothing listens on {port}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "took {:?}",
        start.elapsed()
    );
}
