//! A cache of a service's instances adds at most 200 bytes per instance over the registry that
//! holds them, when the registry hands out its own `Arc`s (a native `watch_service_shared`, as
//! the in-memory registry's): the cache holds pointers, not copies.
//!
//! Measured as the live bytes requested from the allocator (a counting global allocator) from
//! just before the discovery is built to after its first fill of 10,000 instances and 300
//! changes. The same measurement over a registry that hands out copies shows the cache's own
//! copies, so the measurement can tell the two apart. One test in its own binary: nothing else
//! allocates meanwhile.
//!
//! `cargo test -p waypost-discovery --release --test footprint -- --nocapture`
#![allow(clippy::unwrap_used)] // tests

use std::alloc::System;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::StreamExt;
use parking_lot::Mutex;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use tokio::sync::mpsc;
use waypost_core_types::{
    Error, Health, InstanceSet, LoadBalancer, Result, SelectContext, ServiceDiscovery,
    ServiceEventType, ServiceInfo, ServiceRegistry, SharedWatchEvent, SharedWatchStream,
    SnapshotReason, WatchStream,
};
use waypost_discovery::CachedDiscovery;
use waypost_registry_memory::MemoryRegistry;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const INSTANCES: usize = 10_000;
const CHANGES: usize = 300;
const NAME: &str = "fleet";

/// A registry of one service that keeps its instances as `Arc`s and, when `shares`, hands out
/// those very `Arc`s in its shared watch (otherwise copies, as a remote backend would).
#[derive(Debug)]
struct InProcess {
    shares: bool,
    instances: Mutex<HashMap<String, Arc<ServiceInfo>>>,
    feed: Mutex<Option<mpsc::UnboundedSender<SharedWatchEvent>>>,
    /// Events the cache has taken from the watch so far.
    taken: Arc<AtomicUsize>,
    sent: AtomicUsize,
}

fn instance(i: usize, port: u16) -> Arc<ServiceInfo> {
    Arc::new(
        ServiceInfo::new(format!("{NAME}-{i:05}"), NAME, "10.1.2.3", port)
            .with_health(Health::Healthy)
            .with_metadata("zone", "eu-west-1a")
            .with_metadata("build", "2026.11.3")
            .with_tag("api")
            .with_tag("v2"),
    )
}

impl InProcess {
    fn new(shares: bool) -> Arc<Self> {
        let instances = (0..INSTANCES)
            .map(|i| instance(i, 8000))
            .map(|s| (s.id.clone(), s))
            .collect();
        Arc::new(InProcess {
            shares,
            instances: Mutex::new(instances),
            feed: Mutex::new(None),
            taken: Arc::new(AtomicUsize::new(0)),
            sent: AtomicUsize::new(0),
        })
    }

    fn out(&self, s: &Arc<ServiceInfo>) -> Arc<ServiceInfo> {
        if self.shares {
            s.clone()
        } else {
            Arc::new((**s).clone())
        }
    }

    fn send(&self, kind: ServiceEventType, s: &Arc<ServiceInfo>) {
        let service = self.out(s);
        self.sent.fetch_add(1, Ordering::SeqCst);
        let feed = self.feed.lock();
        feed.as_ref()
            .unwrap()
            .send(SharedWatchEvent::Change { kind, service })
            .unwrap();
    }

    fn put(&self, s: Arc<ServiceInfo>) {
        let kind = match self.instances.lock().insert(s.id.clone(), s.clone()) {
            Some(_) => ServiceEventType::Updated,
            None => ServiceEventType::Created,
        };
        self.send(kind, &s);
    }

    fn remove(&self, i: usize) {
        let gone = self
            .instances
            .lock()
            .remove(&format!("{NAME}-{i:05}"))
            .unwrap();
        self.send(ServiceEventType::Deleted, &gone);
    }

    /// Waits until the cache took every event sent (a current-thread runtime: the cache
    /// applies an event in the same poll that takes it).
    async fn drained(&self) {
        for _ in 0..10_000 {
            if self.taken.load(Ordering::SeqCst) == self.sent.load(Ordering::SeqCst) {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the cache did not take the watch events");
    }
}

#[async_trait]
impl ServiceRegistry for InProcess {
    fn backend(&self) -> &'static str {
        "in-process"
    }
    async fn register(&self, _: &ServiceInfo) -> Result<()> {
        Err(Error::Unsupported("test".into()))
    }
    async fn deregister(&self, _: &str) -> Result<()> {
        Err(Error::Unsupported("test".into()))
    }
    async fn update(&self, _: &ServiceInfo) -> Result<()> {
        Err(Error::Unsupported("test".into()))
    }
    async fn renew(&self, _: &str) -> Result<()> {
        Err(Error::Unsupported("test".into()))
    }
    async fn get_service(&self, id: &str) -> Result<ServiceInfo> {
        Err(Error::NotFound(id.into()))
    }
    async fn list_services(&self) -> Result<Vec<ServiceInfo>> {
        Err(Error::Unsupported("test".into()))
    }
    async fn list_instances(&self, _: &str) -> Result<Vec<ServiceInfo>> {
        Err(Error::Unsupported("test".into()))
    }
    async fn watch(&self) -> Result<WatchStream> {
        Err(Error::Unsupported("test".into()))
    }
    async fn watch_service_shared(&self, name: &str) -> Result<SharedWatchStream> {
        assert_eq!(name, NAME);
        let (tx, rx) = mpsc::unbounded_channel();
        let services = self
            .instances
            .lock()
            .values()
            .map(|s| self.out(s))
            .collect();
        tx.send(SharedWatchEvent::Snapshot {
            services,
            reason: SnapshotReason::Initial,
        })
        .unwrap();
        self.sent.fetch_add(1, Ordering::SeqCst);
        *self.feed.lock() = Some(tx);
        let taken = self.taken.clone();
        let stream =
            futures_util::stream::unfold(rx, |mut rx| async { rx.recv().await.map(|ev| (ev, rx)) });
        Ok(Box::pin(stream.inspect(move |_| {
            taken.fetch_add(1, Ordering::SeqCst);
        })))
    }
    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

/// Picks a set's first instance, without copying the set (the list-based default would).
#[derive(Debug)]
struct First;

impl LoadBalancer for First {
    fn name(&self) -> &'static str {
        "first"
    }
    fn select<'a>(
        &self,
        instances: &'a [Arc<ServiceInfo>],
        _: &SelectContext<'_>,
    ) -> Option<&'a Arc<ServiceInfo>> {
        instances.first()
    }
    fn select_set<'a>(
        &self,
        set: &'a InstanceSet,
        _: &SelectContext<'_>,
    ) -> Option<&'a Arc<ServiceInfo>> {
        set.get(0)
    }
}

/// Live bytes allocated since `region` started.
fn live(region: &Region<'_, System>) -> isize {
    let c = region.change();
    c.bytes_allocated as isize - c.bytes_deallocated as isize
}

/// Bytes per instance the discovery adds over `registry`: its first fill, then `CHANGES`
/// changes (updates, and deletions each followed by the instance's return).
async fn added_per_instance(registry: Arc<InProcess>) -> usize {
    let region = Region::new(GLOBAL);
    let d = CachedDiscovery::new(registry.clone(), Arc::new(First));
    d.discover_one(NAME).await.unwrap();
    registry.drained().await;
    for c in 0..CHANGES {
        let i = (c * 7919) % INSTANCES;
        if c % 3 == 0 {
            registry.remove(i);
            registry.put(instance(i, 8000));
        } else {
            registry.put(instance(i, 9000 + c as u16));
        }
        registry.drained().await;
    }
    let added = live(&region).max(0) as usize;
    // The cache follows the registry, instance for instance.
    let cached = d.discover(NAME).await.unwrap();
    let held = registry.instances.lock().clone();
    assert_eq!(cached.len(), INSTANCES);
    for s in &cached {
        let theirs = &held[&s.id];
        assert_eq!(s.port, theirs.port, "{}", s.id);
        assert_eq!(Arc::ptr_eq(s, theirs), registry.shares, "{}", s.id);
    }
    d.close().await.unwrap();
    drop(d);
    released(&registry).await;
    added / INSTANCES
}

/// Bytes per instance a discovery adds over the in-memory registry holding 10,000 instances:
/// its first fill, then `CHANGES` re-registrations with a new port.
async fn added_over_the_memory_registry() -> usize {
    let registry = Arc::new(
        MemoryRegistry::builder()
            .cleanup_interval(std::time::Duration::from_secs(3600))
            .build()
            .unwrap(),
    );
    for i in 0..INSTANCES {
        registry.register(&instance(i, 8000)).await.unwrap();
    }
    let region = Region::new(GLOBAL);
    let d = CachedDiscovery::new(registry.clone(), Arc::new(First));
    d.discover_one(NAME).await.unwrap();
    let mut last = (String::new(), 0);
    for c in 0..CHANGES {
        let i = (c * 7919) % INSTANCES;
        let s = instance(i, 9000 + c as u16);
        last = (s.id.clone(), s.port);
        registry.register(&s).await.unwrap();
    }
    // Wait until the cache applied the last change (a current-thread runtime: yielding lets
    // its watch task run).
    for _ in 0..10_000 {
        let seen = d
            .discover(NAME)
            .await
            .unwrap()
            .iter()
            .any(|s| s.id == last.0 && s.port == last.1);
        if seen {
            break;
        }
        tokio::task::yield_now().await;
    }
    let added = live(&region).max(0) as usize;
    let cached = d.discover(NAME).await.unwrap();
    let held: HashMap<String, Arc<ServiceInfo>> = registry
        .instances_shared(NAME)
        .unwrap()
        .into_iter()
        .map(|s| (s.id.clone(), s))
        .collect();
    assert_eq!(cached.len(), INSTANCES);
    for s in &cached {
        assert!(Arc::ptr_eq(s, &held[&s.id]), "{} is a copy", s.id);
    }
    d.close().await.unwrap();
    drop(d);
    registry.close().await.unwrap();
    released(&registry).await;
    added / INSTANCES
}

/// Waits until nothing but the caller holds `registry` (the closed discovery's watch task has
/// ended), so that what it frees is not counted in the next measurement.
async fn released<T>(registry: &Arc<T>) {
    for _ in 0..10_000 {
        if Arc::strong_count(registry) == 1 {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("a closed discovery still holds its registry");
}

#[test]
fn a_cache_adds_at_most_200_bytes_per_instance_over_a_sharing_registry() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Built before measuring, with every instance they hold.
    let sharing = InProcess::new(true);
    let copying = InProcess::new(false);
    rt.block_on(async {
        let shared = added_per_instance(sharing).await;
        eprintln!("a cache over a sharing registry adds {shared} B per instance");
        assert!(shared <= 200, "{shared} B per instance");
        let memory = added_over_the_memory_registry().await;
        eprintln!("a cache over the in-memory registry adds {memory} B per instance");
        assert!(memory <= 200, "{memory} B per instance");
        let copied = added_per_instance(copying).await;
        eprintln!("a cache over a copying registry adds {copied} B per instance");
        assert!(
            copied >= shared + 400,
            "the cache's own copies ({copied} B per instance) should show"
        );
    });
}
