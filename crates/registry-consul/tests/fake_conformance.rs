//! The registry conformance suite against the fake Consul agent: directly, through
//! `Box<dyn ServiceRegistry>` and through `Arc<dyn ServiceRegistry>`. These always run (CI
//! checks the Consul backend against this fake agent).

mod common;

use std::sync::Arc;
use std::time::Duration;

use waypost_core_types::conformance::{self, ConformanceOptions};
use waypost_core_types::ServiceRegistry;

fn options() -> ConformanceOptions {
    ConformanceOptions::default()
        .with_event_timeout(Duration::from_secs(10))
        .with_lag_burst(40)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_against_fake_agent() {
    let agent = common::fake().await;
    // A small watch buffer, so the lagging-watcher check exercises the resync path.
    let registry = common::connect(common::fast_config(&agent).with_watch_buffer(16)).await;
    conformance::run_all(&registry, &options()).await;
    assert!(
        agent.local_service_ids().is_empty(),
        "close deregisters everything"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_through_box_dyn() {
    let agent = common::fake().await;
    let registry: Box<dyn ServiceRegistry> =
        Box::new(common::connect(common::fast_config(&agent)).await);
    conformance::run_all(registry.as_ref(), &options()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_through_arc_dyn() {
    let agent = common::fake().await;
    let registry: Arc<dyn ServiceRegistry> =
        Arc::new(common::connect(common::fast_config(&agent)).await);
    conformance::run_all(&*registry, &options()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_watcher_is_resynced_with_a_snapshot() {
    let agent = common::fake().await;
    let registry = common::connect(common::fast_config(&agent).with_watch_buffer(4)).await;
    let report = conformance::lagging_watcher_gets_resync(&registry, &options()).await;
    assert!(
        report.resynced,
        "a 4-item buffer must overflow and resync: {report:?}"
    );
    registry.close().await.unwrap();
}
