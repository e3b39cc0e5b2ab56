//! The registry conformance suite, run three ways: on the concrete type, through
//! `Box<dyn ServiceRegistry>` and through `Arc<dyn ServiceRegistry>`.

use std::sync::Arc;
use std::time::Duration;

use waypost_core_types::conformance::{self, ConformanceOptions};
use waypost_core_types::ServiceRegistry;
use waypost_registry_memory::MemoryRegistry;

fn registry() -> MemoryRegistry {
    MemoryRegistry::builder()
        .cleanup_interval(Duration::from_millis(20))
        .watch_buffer(256)
        .build()
        .expect("registry")
}

fn options() -> ConformanceOptions {
    ConformanceOptions::default()
        .with_event_timeout(Duration::from_secs(5))
        .with_ttl_expiry(Duration::from_millis(300), Duration::from_millis(200))
        .with_lag_burst(2_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_concrete() {
    let r = registry();
    conformance::run_all(&r, &options()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_boxed_dyn() {
    let r: Box<dyn ServiceRegistry> = Box::new(registry());
    conformance::run_all(r.as_ref(), &options()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_arc_dyn() {
    let r: Arc<dyn ServiceRegistry> = Arc::new(registry());
    conformance::run_all(r.as_ref(), &options()).await;
}

/// With a 256-change buffer and 3,000 changes, the watcher must have lagged and been resynced
/// (the check itself proves the final view is exact either way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_watcher_is_resynced_not_gapped() {
    let r = registry();
    let report = conformance::lagging_watcher_gets_resync(&r, &options()).await;
    assert!(report.resynced, "{report:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn individual_checks_on_a_current_thread_runtime() {
    let r = registry();
    let opts = options();
    conformance::register_get_list_update_deregister(&r).await;
    conformance::upsert_emits_created_then_updated(&r, &opts).await;
    conformance::rejects_invalid_instances(&r).await;
    conformance::concurrent_registrations(&r).await;
    conformance::close_ends_watches_and_is_idempotent(&r, &opts).await;
}
