//! [`MemoryRegistry`]: the in-process registry.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use waypost_core_types::observe::RegistryOp;
use waypost_core_types::validate::{validate_key_part, MAX_NAME_LEN};
use waypost_core_types::{
    Error, RegistryState, Result, Scope, ServiceInfo, ServiceRegistry, SharedWatchStream,
    StateCell, StateStream, Tasks, WatchStream,
};

use crate::store::Store;
use crate::{MemoryConfig, MemoryRegistryBuilder};

/// The in-process registry: a concurrent map with TTL expiry, renewal and gap-free watches.
///
/// Cloning is cheap and gives another handle to the same registry. Instances with a TTL (their
/// own, or the configured default) expire unless [`renew`](ServiceRegistry::renew)ed within it;
/// a cleanup worker owned by the registry removes them and emits `Deleted`. A TTL too long to
/// represent as a point in time (`Duration::MAX`, "no limit") never expires. The worker stops on
/// [`close`](ServiceRegistry::close) or when the last handle is dropped; dropping the last handle
/// without `close` also ends every watch stream.
#[derive(Clone)]
pub struct MemoryRegistry {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<Store>,
    /// The fast check of every call; `state` says the same for observers.
    closed: AtomicBool,
    state: StateCell,
    tasks: Tasks,
    config: MemoryConfig,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The tasks abort with `tasks`; the instances go with the store. Watch streams end.
        self.store.hub.close();
    }
}

impl std::fmt::Debug for MemoryRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryRegistry")
            .field("instances", &self.inner.store.len())
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .field("config", &self.inner.config)
            .finish()
    }
}

impl Default for MemoryRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryRegistry {
    /// A registry with the default [`MemoryConfig`].
    ///
    /// # Panics
    /// When called outside a tokio runtime (the cleanup worker needs one); use
    /// [`MemoryRegistry::builder`] to get an error instead.
    pub fn new() -> Self {
        match Self::builder().build() {
            Ok(r) => r,
            Err(e) => panic!("MemoryRegistry::new: {e}"),
        }
    }

    /// A builder for custom settings.
    pub fn builder() -> MemoryRegistryBuilder {
        MemoryRegistryBuilder::default()
    }

    pub(crate) fn start(config: MemoryConfig) -> Result<Self> {
        tokio::runtime::Handle::try_current().map_err(|_| {
            Error::InvalidConfig("memory registry must be created inside a tokio runtime".into())
        })?;
        let inner = Arc::new(Inner {
            store: Arc::new(Store::new(config.watch_buffer, config.default_ttl)),
            closed: AtomicBool::new(false),
            state: StateCell::new("memory"),
            tasks: Tasks::new(),
            config,
        });
        inner.tasks.spawn(cleanup_worker(
            Arc::clone(&inner.store),
            inner.config.cleanup_interval,
        ));
        Ok(MemoryRegistry { inner })
    }

    /// The settings in use.
    pub fn config(&self) -> &MemoryConfig {
        &self.inner.config
    }

    /// Number of registered instances.
    pub fn len(&self) -> usize {
        self.inner.store.len()
    }

    /// Whether no instance is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Shared, immutable handles to the instances of one service, without copying their data
    /// (the fast path for in-process discovery).
    ///
    /// # Errors
    /// `Closed` after [`close`](ServiceRegistry::close).
    pub fn instances_shared(&self, name: &str) -> Result<Vec<Arc<ServiceInfo>>> {
        self.check_open()?;
        Ok(self.inner.store.shared_name(name))
    }

    /// Number of live watch streams.
    pub fn watcher_count(&self) -> usize {
        self.inner.store.hub.subscribers()
    }

    /// Removes expired instances now (the cleanup worker does this every interval).
    /// Returns how many were removed.
    pub fn expire_now(&self) -> usize {
        self.inner.store.expire(tokio::time::Instant::now())
    }

    /// Runs one call, timed and counted (see [`waypost_core_types::observe`]).
    async fn observe<T>(
        &self,
        op: RegistryOp,
        call: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        self.inner.state.metrics().observe(op, call).await
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }
}

/// Runs until the registry's tasks stop (close, or the last handle dropped).
async fn cleanup_worker(store: Arc<Store>, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let removed = store.expire(tokio::time::Instant::now());
        if removed > 0 {
            tracing::debug!(removed, "memory registry expired instances");
        }
    }
}

#[async_trait]
impl ServiceRegistry for MemoryRegistry {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn register(&self, service: &ServiceInfo) -> Result<()> {
        self.observe(RegistryOp::Register, async {
            self.check_open()?;
            self.inner.store.register(service)
        })
        .await
    }

    async fn deregister(&self, id: &str) -> Result<()> {
        self.observe(RegistryOp::Deregister, async {
            self.check_open()?;
            self.inner.store.deregister(id)
        })
        .await
    }

    async fn update(&self, service: &ServiceInfo) -> Result<()> {
        self.observe(RegistryOp::Update, async {
            self.check_open()?;
            self.inner.store.update(service)
        })
        .await
    }

    async fn renew(&self, id: &str) -> Result<()> {
        self.observe(RegistryOp::Renew, async {
            self.check_open()?;
            self.inner.store.renew(id)
        })
        .await
    }

    async fn get_service(&self, id: &str) -> Result<ServiceInfo> {
        self.observe(RegistryOp::Get, async {
            self.check_open()?;
            self.inner.store.get(id)
        })
        .await
    }

    async fn list_services(&self) -> Result<Vec<ServiceInfo>> {
        self.observe(RegistryOp::List, async {
            self.check_open()?;
            Ok(self.inner.store.list_all())
        })
        .await
    }

    async fn list_instances(&self, name: &str) -> Result<Vec<ServiceInfo>> {
        self.observe(RegistryOp::List, async {
            self.check_open()?;
            validate_key_part("name", name, MAX_NAME_LEN)?;
            Ok(self.inner.store.list_name(name))
        })
        .await
    }

    async fn list_instances_shared(&self, name: &str) -> Result<Vec<Arc<ServiceInfo>>> {
        self.observe(RegistryOp::List, async {
            self.check_open()?;
            validate_key_part("name", name, MAX_NAME_LEN)?;
            Ok(self.inner.store.shared_name(name))
        })
        .await
    }

    async fn watch(&self) -> Result<WatchStream> {
        self.observe(RegistryOp::Watch, async {
            self.check_open()?;
            self.inner.store.hub.subscribe(Scope::All)
        })
        .await
    }

    async fn watch_service(&self, name: &str) -> Result<WatchStream> {
        self.observe(RegistryOp::Watch, async {
            self.check_open()?;
            validate_key_part("name", name, MAX_NAME_LEN)?;
            self.inner
                .store
                .hub
                .subscribe(Scope::Service(name.to_owned()))
        })
        .await
    }

    /// The registry's own instances: the `Arc`s of every snapshot and change are the ones
    /// [`list_instances_shared`](ServiceRegistry::list_instances_shared) hands out, so a cache
    /// fed by this stream holds no copy of its own.
    async fn watch_service_shared(&self, name: &str) -> Result<SharedWatchStream> {
        self.observe(RegistryOp::Watch, async {
            self.check_open()?;
            validate_key_part("name", name, MAX_NAME_LEN)?;
            self.inner
                .store
                .hub
                .subscribe_shared(Scope::Service(name.to_owned()))
        })
        .await
    }

    fn state(&self) -> RegistryState {
        self.inner.state.get()
    }

    fn state_changes(&self) -> StateStream {
        self.inner.state.changes()
    }

    fn default_ttl(&self) -> Option<Duration> {
        self.inner.config.default_ttl
    }

    async fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.inner.state.close();
        self.inner.tasks.shutdown().await;
        self.inner.store.hub.close();
        self.inner.store.clear();
        Ok(())
    }
}
