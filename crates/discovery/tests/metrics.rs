//! The discovery cache's metrics, recorded by a recording recorder: names, labels and values
//! exactly as `docs/metrics.md` ("Discovery (waypost-discovery)") lists them.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use waypost_balancer::RoundRobin;
use waypost_core_types::{
    Error, Health, Result, ServiceDiscovery, ServiceInfo, ServiceRegistry, SnapshotReason,
    WatchEvent, WatchStream,
};
use waypost_discovery::CachedDiscovery;
use waypost_registry_memory::MemoryRegistry;
use waypost_test_metrics::{Recorded, Recording};

const HITS: &str = "waypost_discovery_cache_hits_total";
const MISSES: &str = "waypost_discovery_cache_misses_total";
const INSTANCES: &str = "waypost_discovery_instances";
const RESYNCS: &str = "waypost_discovery_watch_resyncs_total";
const EVENT_TO_CACHE: &str = "waypost_discovery_event_to_cache_seconds";

fn svc(id: &str, port: u16, health: Health) -> ServiceInfo {
    ServiceInfo::new(id, "orders", "10.0.0.1", port).with_health(health)
}

/// The instance gauges of `orders` (healthy, unhealthy, unknown).
fn instances(m: &Recorded) -> [Option<f64>; 3] {
    ["healthy", "unhealthy", "unknown"]
        .map(|health| m.gauge(INSTANCES, &[("service", "orders"), ("health", health)]))
}

/// Yields to the discovery's task until the cache holds `n` instances of `orders` (2 s at most).
async fn cached(d: &CachedDiscovery, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while d.service_stats("orders").map(|s| s.instances) != Some(n) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cache never held {n} instances: {:?}",
            d.service_stats("orders")
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Hits, misses, instances by health, a lagged resync and the event-to-cache histogram, on
/// one service over the memory registry (a watch buffer of 1, so that two changes in a row
/// make the discovery's watch fall behind).
#[test]
fn hits_misses_instances_resyncs_and_event_to_cache() {
    let recorder = Recording::default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let orders = [("service", "orders")];
    metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let registry = Arc::new(MemoryRegistry::builder().watch_buffer(1).build().unwrap());
            registry
                .register(&svc("o1", 81, Health::Healthy))
                .await
                .unwrap();
            registry
                .register(&svc("o2", 82, Health::Healthy))
                .await
                .unwrap();
            registry
                .register(&svc("o3", 83, Health::Unhealthy))
                .await
                .unwrap();
            let d = CachedDiscovery::new(registry.clone(), Arc::new(RoundRobin::new()));
            recorder.take();

            // The first lookup waits for the registry: a miss; the cache holds 2 + 1.
            d.discover_one("orders").await.unwrap();
            let m = recorder.take();
            assert_eq!(m.counter(MISSES, &orders), 1);
            assert_eq!(m.counter(HITS, &orders), 0);
            assert_eq!(instances(&m), [Some(2.0), Some(1.0), Some(0.0)]);
            assert!(
                m.histogram(EVENT_TO_CACHE, &orders).is_empty(),
                "the first fill is not a watch event"
            );
            assert_eq!(m.label_names(HITS), [["service"]]);
            assert_eq!(m.label_names(MISSES), [["service"]]);
            assert_eq!(m.label_names(INSTANCES), [["health", "service"]]);
            assert_eq!(m.label_names(RESYNCS), [["reason", "service"]]);
            assert_eq!(m.label_names(EVENT_TO_CACHE), [["service"]]);

            // Cached lookups, through every path: hits.
            for _ in 0..3 {
                d.discover_one("orders").await.unwrap();
            }
            d.discover("orders").await.unwrap();
            // Hits reach the metric in batches; reading the statistics adds the rest.
            let m = recorder.take();
            assert_eq!(m.counter(HITS, &orders), 0);
            let stats = d.service_stats("orders").unwrap();
            assert_eq!((stats.hits, stats.misses), (4, 1));
            let m = recorder.take();
            assert_eq!(m.counter(HITS, &orders), 4, "the same count as the stats");
            assert_eq!(m.counter(MISSES, &orders), 0);

            // Two changes before the discovery's task runs: its watch (1 item of buffer) falls
            // behind and gets a `Lagged` snapshot, applied as one item.
            registry
                .register(&svc("o4", 84, Health::Healthy))
                .await
                .unwrap();
            registry
                .register(&svc("o5", 85, Health::Unknown))
                .await
                .unwrap();
            cached(&d, 5).await;
            let m = recorder.take();
            assert_eq!(
                m.counter(RESYNCS, &[("service", "orders"), ("reason", "lagged")]),
                1
            );
            assert_eq!(
                m.counter(RESYNCS, &[("service", "orders"), ("reason", "reconnected")]),
                0
            );
            assert_eq!(
                m.counter(RESYNCS, &[("service", "orders"), ("reason", "restarted")]),
                0
            );
            let samples = m.histogram(EVENT_TO_CACHE, &orders);
            assert_eq!(samples.len(), 1, "one item (the snapshot): {samples:?}");
            assert!(samples[0] >= 0.0 && samples[0] < 1.0, "{samples:?}");
            assert_eq!(instances(&m), [Some(3.0), Some(1.0), Some(1.0)]);

            // One change: one sample, the gauges follow.
            registry.deregister("o5").await.unwrap();
            cached(&d, 4).await;
            let m = recorder.take();
            assert_eq!(m.histogram(EVENT_TO_CACHE, &orders).len(), 1);
            assert_eq!(instances(&m), [Some(3.0), Some(1.0), Some(0.0)]);
            assert_eq!(
                m.counter(RESYNCS, &[("service", "orders"), ("reason", "lagged")]),
                0
            );

            // A service that is not registered: a miss, then hits of its empty set.
            assert!(d.discover_one("nobody").await.is_err());
            assert!(d.discover_one("nobody").await.is_err());
            assert_eq!(d.service_stats("nobody").unwrap().hits, 1);
            let m = recorder.take();
            assert_eq!(m.counter(MISSES, &[("service", "nobody")]), 1);
            assert_eq!(m.counter(HITS, &[("service", "nobody")]), 1);

            // The service leaves the cache: its gauges read 0.
            d.close().await.unwrap();
            let m = recorder.take();
            assert_eq!(instances(&m), [Some(0.0), Some(0.0), Some(0.0)]);
            registry.close().await.unwrap();
        })
    });
}

/// Hits reach the metric every 64 hits of a thread without anything else happening, the rest
/// when the statistics are read or the service leaves the cache.
#[test]
fn hits_reach_the_metric_in_batches_of_64_per_thread() {
    let recorder = Recording::default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let orders = [("service", "orders")];
    metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let registry = Arc::new(MemoryRegistry::new());
            registry
                .register(&svc("o1", 81, Health::Healthy))
                .await
                .unwrap();
            let d = CachedDiscovery::new(registry.clone(), Arc::new(RoundRobin::new()));
            d.discover_one("orders").await.unwrap();
            for _ in 0..63 {
                d.discover_one("orders").await.unwrap();
            }
            assert_eq!(recorder.take().counter(HITS, &orders), 0);
            d.discover_one("orders").await.unwrap();
            assert_eq!(recorder.take().counter(HITS, &orders), 64);
            for _ in 0..100 {
                d.discover_one("orders").await.unwrap();
            }
            // 128 reached: another batch; 36 wait.
            assert_eq!(recorder.take().counter(HITS, &orders), 64);
            // Leaving the cache adds the rest; nothing is counted twice.
            d.close().await.unwrap();
            assert_eq!(recorder.take().counter(HITS, &orders), 36);
            registry.close().await.unwrap();
        })
    });
}

/// A registry whose watch streams the test feeds: each new stream starts with an `Initial`
/// snapshot of `list`; `send` adds to the current stream, `cut` ends it.
#[derive(Debug, Default)]
struct Scripted {
    list: Mutex<Vec<ServiceInfo>>,
    feed: Mutex<Option<mpsc::UnboundedSender<WatchEvent>>>,
    watches: std::sync::atomic::AtomicUsize,
}

impl Scripted {
    fn send(&self, ev: WatchEvent) {
        self.feed.lock().as_ref().unwrap().send(ev).unwrap();
    }
    fn cut(&self) {
        self.feed.lock().take();
    }
}

#[async_trait]
impl ServiceRegistry for Scripted {
    fn backend(&self) -> &'static str {
        "scripted"
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
        Ok(self.list.lock().clone())
    }
    async fn list_instances(&self, _: &str) -> Result<Vec<ServiceInfo>> {
        Ok(self.list.lock().clone())
    }
    async fn watch(&self) -> Result<WatchStream> {
        Err(Error::Unsupported("use watch_service".into()))
    }
    async fn watch_service(&self, _: &str) -> Result<WatchStream> {
        self.watches
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let (tx, mut rx) = mpsc::unbounded_channel();
        tx.send(WatchEvent::Snapshot {
            services: self.list.lock().clone(),
            reason: SnapshotReason::Initial,
        })
        .unwrap();
        *self.feed.lock() = Some(tx);
        Ok(Box::pin(futures_util::stream::poll_fn(move |cx| {
            rx.poll_recv(cx)
        })))
    }
    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

/// Resyncs by reason: a `Reconnected` snapshot, and the first snapshot of a watch started
/// again after it ended (`restarted`); the polls in between are not resyncs.
#[test]
fn resyncs_reconnected_and_restarted() {
    let recorder = Recording::default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let reason = |r: &'static str| [("service", "orders"), ("reason", r)];
    metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let registry = Arc::new(Scripted::default());
            *registry.list.lock() = vec![svc("o1", 81, Health::Healthy)];
            let d = CachedDiscovery::builder(registry.clone())
                .refresh_interval(Duration::from_secs(1))
                .build()
                .unwrap();
            d.discover_one("orders").await.unwrap();
            recorder.take();

            registry.send(WatchEvent::Snapshot {
                services: vec![
                    svc("o1", 81, Health::Healthy),
                    svc("o2", 82, Health::Healthy),
                ],
                reason: SnapshotReason::Reconnected,
            });
            cached(&d, 2).await;
            let m = recorder.take();
            assert_eq!(m.counter(RESYNCS, &reason("reconnected")), 1);
            assert_eq!(m.counter(RESYNCS, &reason("restarted")), 0);
            assert_eq!(
                m.histogram(EVENT_TO_CACHE, &[("service", "orders")]).len(),
                1
            );

            // The watch ends: the discovery polls, then watches again; the new watch's first
            // snapshot is a restart.
            *registry.list.lock() = vec![
                svc("o1", 81, Health::Healthy),
                svc("o2", 82, Health::Healthy),
                svc("o3", 83, Health::Healthy),
            ];
            registry.cut();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while registry.watches.load(std::sync::atomic::Ordering::SeqCst) < 2
                || !d.service_stats("orders").unwrap().watching
            {
                assert!(tokio::time::Instant::now() < deadline, "no new watch");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            cached(&d, 3).await;
            let m = recorder.take();
            assert_eq!(m.counter(RESYNCS, &reason("restarted")), 1);
            assert_eq!(m.counter(RESYNCS, &reason("reconnected")), 0);
            assert_eq!(m.counter(RESYNCS, &reason("lagged")), 0);
            d.close().await.unwrap();
        })
    });
}

/// Handles taken with no recorder installed record nothing, and cost nothing to keep.
#[test]
fn without_a_recorder_nothing_is_recorded() {
    let recorder = Recording::default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let registry = Arc::new(MemoryRegistry::new());
        registry
            .register(&svc("o1", 81, Health::Healthy))
            .await
            .unwrap();
        let d = CachedDiscovery::new(registry, Arc::new(RoundRobin::new()));
        d.discover_one("orders").await.unwrap();
        // Installed after the entry was built: its handles are the no-op ones.
        metrics::with_local_recorder(&recorder, || {
            for _ in 0..3 {
                assert!(d.select_cached("orders", &Default::default()).is_some());
            }
        });
        assert_eq!(d.service_stats("orders").unwrap().hits, 3);
        d.close().await.unwrap();
    });
    let m = recorder.take();
    assert_eq!(m.counter(HITS, &[("service", "orders")]), 0);
    assert!(m.label_names(HITS).is_empty());
}

#[test]
fn describe_metrics_describes_every_discovery_metric() {
    let recorder = Recording::default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        waypost_discovery::describe_metrics();
        rt.block_on(async {
            let registry = Arc::new(MemoryRegistry::new());
            let d = CachedDiscovery::new(registry, Arc::new(RoundRobin::new()));
            let _ = d.discover("orders").await;
            d.close().await.unwrap();
        })
    });
    let described = recorder.described();
    let expected = [
        (HITS, metrics::Unit::Count),
        (MISSES, metrics::Unit::Count),
        (EVENT_TO_CACHE, metrics::Unit::Seconds),
        (INSTANCES, metrics::Unit::Count),
        (RESYNCS, metrics::Unit::Count),
    ];
    assert_eq!(
        described,
        expected
            .into_iter()
            .map(|(n, u)| (n.to_owned(), Some(u)))
            .collect()
    );
}
