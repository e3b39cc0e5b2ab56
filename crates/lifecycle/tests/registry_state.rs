//! The announcer follows the registry's state: when the registry reports `Connected` again
//! after an outage, the registration is checked (and put back) at once, not at the next renewal.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot};
use waypost_core_types::{
    async_trait, RegistryState, Result, ServiceInfo, ServiceRegistry, StateStream, WatchStream,
};
use waypost_lifecycle::{Announcer, Phase};
use waypost_registry_memory::MemoryRegistry;

/// The in-memory registry with a state stream the test drives, counting renewals.
struct Driven {
    inner: MemoryRegistry,
    /// Handed out once by `state_changes`.
    states: std::sync::Mutex<Option<mpsc::UnboundedReceiver<RegistryState>>>,
    renewals: AtomicU32,
}

impl std::fmt::Debug for Driven {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Driven")
    }
}

#[async_trait]
impl ServiceRegistry for Driven {
    fn backend(&self) -> &'static str {
        "driven"
    }
    async fn register(&self, service: &ServiceInfo) -> Result<()> {
        self.inner.register(service).await
    }
    async fn deregister(&self, id: &str) -> Result<()> {
        self.inner.deregister(id).await
    }
    async fn update(&self, service: &ServiceInfo) -> Result<()> {
        self.inner.update(service).await
    }
    async fn renew(&self, id: &str) -> Result<()> {
        self.renewals.fetch_add(1, Ordering::SeqCst);
        self.inner.renew(id).await
    }
    async fn get_service(&self, id: &str) -> Result<ServiceInfo> {
        self.inner.get_service(id).await
    }
    async fn list_services(&self) -> Result<Vec<ServiceInfo>> {
        self.inner.list_services().await
    }
    async fn list_instances(&self, name: &str) -> Result<Vec<ServiceInfo>> {
        self.inner.list_instances(name).await
    }
    async fn watch(&self) -> Result<WatchStream> {
        self.inner.watch().await
    }
    fn state_changes(&self) -> StateStream {
        let mut rx = self
            .states
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
            .expect("state_changes once");
        Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }
    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}

#[tokio::test(start_paused = true)]
async fn back_to_connected_checks_the_registration_at_once() {
    let (state_tx, state_rx) = mpsc::unbounded_channel();
    let registry = Arc::new(Driven {
        inner: MemoryRegistry::new(),
        states: std::sync::Mutex::new(Some(state_rx)),
        renewals: AtomicU32::new(0),
    });
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let announcer = Announcer::new(registry.clone(), "users")
        .with_advertise_addr("10.0.0.5:8080")
        .with_renew_interval(Duration::from_secs(3600))
        .with_shutdown(async move {
            let _ = stop_rx.await;
        });
    let mut phases = announcer.phases();
    let run = tokio::spawn(
        announcer.serve("10.0.0.5:8080".parse().unwrap(), |stop| async move {
            stop.await;
            Ok::<(), std::io::Error>(())
        }),
    );
    phases.wait_for(|p| *p == Phase::Serving).await.unwrap();
    state_tx.send(RegistryState::Connected).unwrap();
    // An outage during which the registry lost our instance.
    state_tx
        .send(RegistryState::Recovering {
            since: SystemTime::now(),
            attempts: 1,
            last_error: "connection refused".into(),
        })
        .unwrap();
    registry
        .inner
        .deregister("users-10.0.0.5-8080")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(registry.renewals.load(Ordering::SeqCst), 0);
    state_tx.send(RegistryState::Connected).unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        registry.renewals.load(Ordering::SeqCst),
        1,
        "checked at once"
    );
    assert_eq!(registry.inner.len(), 1, "put back");
    stop_tx.send(()).unwrap();
    run.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn intervals_of_duration_max_do_not_overflow() {
    // An hourly cleanup worker: three paused days pass in a few thousand wake-ups.
    let registry = Arc::new(
        MemoryRegistry::builder()
            .cleanup_interval(Duration::from_secs(3600))
            .build()
            .unwrap(),
    );
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let announcer = Announcer::new(registry.clone(), "users")
        .with_advertise_addr("10.0.0.5:8080")
        .with_renew_interval(Duration::MAX)
        .with_readiness(Duration::MAX, || async { false })
        .with_shutdown(async move {
            let _ = stop_rx.await;
        });
    let mut phases = announcer.phases();
    let run = tokio::spawn(
        announcer.serve("10.0.0.5:8080".parse().unwrap(), |stop| async move {
            stop.await;
            Ok::<(), std::io::Error>(())
        }),
    );
    phases
        .wait_for(|p| *p == Phase::WaitingReady)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3 * 24 * 3600)).await;
    assert_eq!(registry.len(), 1);
    stop_tx.send(()).unwrap();
    run.await.unwrap().unwrap();
}
