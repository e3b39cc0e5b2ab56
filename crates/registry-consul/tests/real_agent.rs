//! The same checks against a real Consul agent, when `CONSUL_HTTP_ADDR` is set (for example
//! `docker compose up consul` and `CONSUL_HTTP_ADDR=http://127.0.0.1:8500`; `CONSUL_HTTP_TOKEN`
//! and `CONSUL_CACERT` are honoured). Without it these tests print `SKIPPED` and pass, because
//! no Consul agent can be installed on the CI machines: CI checks this backend against the fake
//! agent (tests `fake_conformance` and `fake_behaviour`), which always runs.
//! `WAYPOST_REQUIRE_CONSUL=1` turns a missing agent into a failure.

mod common;

use std::sync::Arc;
use std::time::Duration;

use waypost_core_types::conformance::{self, ConformanceOptions};
use waypost_core_types::{Health, ServiceInfo, ServiceRegistry};
use waypost_registry_consul::{ConsulConfig, ConsulRegistry};

fn real_config(test: &str) -> Option<ConsulConfig> {
    match std::env::var("CONSUL_HTTP_ADDR") {
        Ok(a) if !a.is_empty() => Some(
            ConsulConfig::from_env()
                .with_ttl(Duration::from_secs(10))
                .with_watch_wait(Duration::from_secs(5))
                .with_watch_min_interval(Duration::from_millis(50))
                .with_retry_initial_backoff(Duration::from_millis(100))
                .with_retry_max_backoff(Duration::from_secs(2)),
        ),
        _ if common::real_agent_required() => {
            panic!("{test}: CONSUL_HTTP_ADDR is not set and WAYPOST_REQUIRE_CONSUL=1")
        }
        _ => {
            eprintln!(
                "SKIPPED: {test}: CONSUL_HTTP_ADDR is not set, no real Consul agent to test \
                 against (the fake-agent tests cover this backend; set WAYPOST_REQUIRE_CONSUL=1 \
                 to make this a failure)"
            );
            None
        }
    }
}

fn options() -> ConformanceOptions {
    ConformanceOptions::default()
        .with_event_timeout(Duration::from_secs(15))
        .with_lag_burst(60)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_agent_conformance_suite() {
    let Some(cfg) = real_config("real_agent_conformance_suite") else {
        return;
    };
    let registry = ConsulRegistry::connect(cfg)
        .await
        .expect("connect to CONSUL_HTTP_ADDR");
    conformance::run_all(&registry, &options()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_agent_conformance_suite_through_arc_dyn() {
    let Some(cfg) = real_config("real_agent_conformance_suite_through_arc_dyn") else {
        return;
    };
    let registry: Arc<dyn ServiceRegistry> = Arc::new(
        ConsulRegistry::connect(cfg)
            .await
            .expect("connect to CONSUL_HTTP_ADDR"),
    );
    conformance::run_all(&*registry, &options()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_agent_keeps_the_ttl_check_passing() {
    let Some(cfg) = real_config("real_agent_keeps_the_ttl_check_passing") else {
        return;
    };
    let registry = ConsulRegistry::connect(cfg)
        .await
        .expect("connect to CONSUL_HTTP_ADDR");
    let name = conformance::unique_name("real-ttl");
    let svc = ServiceInfo::new(format!("{name}-1"), &name, "127.0.0.1", 8080)
        .with_health(Health::Healthy)
        .with_ttl(Duration::from_secs(2));
    registry.register(&svc).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let got = registry.get_service(&svc.id).await.unwrap();
    assert_eq!(
        got.health,
        Health::Healthy,
        "the TTL check must still pass after 2.5 TTLs"
    );
    registry.close().await.unwrap();
    assert!(registry_list_empty(&name).await);
}

async fn registry_list_empty(name: &str) -> bool {
    let Some(cfg) = real_config("real_agent_keeps_the_ttl_check_passing") else {
        return true;
    };
    let r = ConsulRegistry::connect(cfg).await.expect("connect");
    let empty = r.list_instances(name).await.expect("list").is_empty();
    r.close().await.expect("close");
    empty
}
