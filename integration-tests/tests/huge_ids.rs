//! `deregister`, `renew` and `get_service` with a 10 MiB id answer, on every backend, with a
//! short error whose `Display` and `Debug` are bounded (the id is quoted up to 64 characters).

use std::sync::Arc;
use std::time::Duration;

use waypost::{new_service_registry, RegistryConfig, ServiceRegistry};
use waypost_integration_tests::etcd::{etcd_available, EtcdServer};
use waypost_integration_tests::nacos::{start_rnacos, RnacosOptions};
use waypost_integration_tests::require;
use waypost_integration_tests::zookeeper::{ZkOptions, ZkServer};
use waypost_registry_consul::fake::{FakeConsul, FakeOptions};

/// Longest error text accepted for a call with a 10 MiB id.
const SHORT: usize = 300;

async fn check(registry: Arc<dyn ServiceRegistry>) {
    let backend = registry.backend();
    let id = "i".repeat(10 << 20);
    let calls = [
        ("deregister", registry.deregister(&id).await.err()),
        ("renew", registry.renew(&id).await.err()),
        ("get_service", registry.get_service(&id).await.err()),
    ];
    for (call, error) in calls {
        let error = error.unwrap_or_else(|| panic!("{backend} {call}: accepted a 10 MiB id"));
        let (shown, debug) = (error.to_string(), format!("{error:?}"));
        assert!(
            shown.len() < SHORT && debug.len() < SHORT,
            "{backend} {call}: {} / {} bytes: {}",
            shown.len(),
            debug.len(),
            shown.chars().take(200).collect::<String>()
        );
    }
    let started = std::time::Instant::now();
    registry.close().await.expect("close");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_and_consul_answer_a_huge_id_briefly() {
    check(
        new_service_registry(&RegistryConfig::memory())
            .await
            .expect("memory"),
    )
    .await;
    let agent = FakeConsul::start(FakeOptions::default())
        .await
        .expect("fake agent");
    let url = format!(
        "consul://{}/waypost-huge?connect_timeout=2s&request_timeout=2s",
        agent.addr()
    );
    let config = RegistryConfig::from_url(&url).expect("parse");
    check(new_service_registry(&config).await.expect("consul")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_answers_a_huge_id_briefly() {
    let test = "etcd_answers_a_huge_id_briefly";
    if require(test, etcd_available()).is_none() {
        return;
    }
    let etcd = EtcdServer::start().await.expect("start etcd");
    let url = format!(
        "etcd://127.0.0.1:{}/waypost-huge-{}?connect_timeout=2s&request_timeout=2s",
        etcd.client_port(),
        std::process::id()
    );
    let config = RegistryConfig::from_url(&url).expect("parse");
    check(new_service_registry(&config).await.expect("etcd")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_answers_a_huge_id_briefly() {
    let test = "zookeeper_answers_a_huge_id_briefly";
    let Some(zk) = require(test, ZkServer::start(ZkOptions::default()).await) else {
        return;
    };
    let url = format!(
        "zk://{}/waypost-huge-{}?session_timeout=2s&connect_timeout=5s",
        zk.addr(),
        std::process::id()
    );
    let config = RegistryConfig::from_url(&url).expect("parse");
    check(new_service_registry(&config).await.expect("zookeeper")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacos_answers_a_huge_id_briefly() {
    let test = "nacos_answers_a_huge_id_briefly";
    let Some(server) = require(test, start_rnacos(RnacosOptions::default()).await) else {
        return;
    };
    let url = format!(
        "nacos://{}?group=HUGE_{}&connect_timeout=5s",
        server.addr(),
        std::process::id()
    );
    let config = RegistryConfig::from_url(&url).expect("parse");
    check(new_service_registry(&config).await.expect("nacos")).await;
}
