//! A full set that follows a gap in the watch (a registry restart) must not empty the cache of a
//! service about to come back: the instances it leaves out are served for the reconnect grace,
//! unless the registry deletes them. Paused time throughout.
#![allow(clippy::unwrap_used)] // tests

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::healthy;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use waypost_core_types::{
    Error, Result, ServiceDiscovery, ServiceEvent, ServiceInfo, ServiceRegistry, SnapshotReason,
    WatchEvent, WatchStream,
};
use waypost_discovery::{CachedDiscovery, DEFAULT_RECONNECT_GRACE};

/// A registry whose watch of a service is fed by the test: the first item is the snapshot it
/// was built with, the rest is what the test sends.
#[derive(Debug)]
struct Scripted {
    initial: Vec<ServiceInfo>,
    feed: Mutex<Option<mpsc::UnboundedSender<WatchEvent>>>,
}

impl Scripted {
    fn new(initial: Vec<ServiceInfo>) -> Arc<Self> {
        Arc::new(Scripted {
            initial,
            feed: Mutex::new(None),
        })
    }

    fn send(&self, ev: WatchEvent) {
        self.feed.lock().as_ref().unwrap().send(ev).unwrap();
    }

    fn snapshot(&self, services: Vec<ServiceInfo>, reason: SnapshotReason) {
        self.send(WatchEvent::Snapshot { services, reason });
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
        Ok(Vec::new())
    }
    async fn list_instances(&self, _: &str) -> Result<Vec<ServiceInfo>> {
        Ok(Vec::new())
    }
    async fn watch(&self) -> Result<WatchStream> {
        Err(Error::Unsupported("test".into()))
    }
    async fn watch_service(&self, _: &str) -> Result<WatchStream> {
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(WatchEvent::Snapshot {
            services: self.initial.clone(),
            reason: SnapshotReason::Initial,
        })
        .unwrap();
        *self.feed.lock() = Some(tx);
        Ok(Box::pin(futures_util::stream::unfold(rx, |mut rx| async {
            rx.recv().await.map(|ev| (ev, rx))
        })))
    }
    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

fn svc(id: &str) -> ServiceInfo {
    healthy(id, "svc", 8000)
}

async fn ids(d: &CachedDiscovery) -> Vec<String> {
    match d.discover("svc").await {
        Ok(v) => v.iter().map(|s| s.id.clone()).collect(),
        Err(Error::ServiceNotFound(_)) => Vec::new(),
        Err(e) => panic!("{e}"),
    }
}

/// Lets the discovery's watch task apply what was sent.
async fn applied() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

async fn setup(initial: &[&str]) -> (Arc<Scripted>, CachedDiscovery) {
    let r = Scripted::new(initial.iter().map(|id| svc(id)).collect());
    let d = CachedDiscovery::new(r.clone(), Arc::new(waypost_balancer::RoundRobin::new()));
    assert_eq!(ids(&d).await.len(), initial.len());
    (r, d)
}

/// The Nacos restart: an empty reconnect snapshot, then the instances register again a second
/// later. Lookups never fail meanwhile; the one that never comes back goes after the grace.
#[tokio::test(start_paused = true)]
async fn empty_reconnect_snapshot_keeps_serving_until_they_are_back() {
    assert_eq!(DEFAULT_RECONNECT_GRACE, Duration::from_secs(10));
    let (r, d) = setup(&["a", "b"]).await;
    r.snapshot(Vec::new(), SnapshotReason::Reconnected);
    applied().await;
    assert_eq!(ids(&d).await, ["a", "b"]);
    assert!(d.discover_one("svc").await.is_ok());
    assert_eq!(d.service_stats("svc").unwrap().stale_instances, 2);

    tokio::time::sleep(Duration::from_secs(1)).await;
    r.send(WatchEvent::Change(ServiceEvent::created(svc("a"))));
    applied().await;
    assert_eq!(d.service_stats("svc").unwrap().stale_instances, 1);
    for _ in 0..10 {
        assert!(d.discover_one("svc").await.is_ok());
    }
    // b never comes back: dropped when the grace ends, 10 s after the reconnect.
    tokio::time::sleep(Duration::from_millis(8_900)).await;
    assert_eq!(ids(&d).await, ["a", "b"]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(ids(&d).await, ["a"]);
    assert_eq!(d.service_stats("svc").unwrap().stale_instances, 0);
}

/// A `Deleted` change confirms the removal at once; a shrunken reconnect snapshot holds only
/// what it left out.
#[tokio::test(start_paused = true)]
async fn deletion_confirms_and_shrunken_snapshots_hold_the_rest() {
    let (r, d) = setup(&["a", "b", "c"]).await;
    r.snapshot(vec![svc("a")], SnapshotReason::Reconnected);
    applied().await;
    assert_eq!(ids(&d).await, ["a", "b", "c"]);
    assert_eq!(d.service_stats("svc").unwrap().stale_instances, 2);
    r.send(WatchEvent::Change(ServiceEvent::deleted(svc("b"))));
    applied().await;
    assert_eq!(ids(&d).await, ["a", "c"]);
    // Another full set during the grace keeps c held (the same grace, not a new one).
    tokio::time::sleep(Duration::from_secs(5)).await;
    r.snapshot(vec![svc("a")], SnapshotReason::Lagged);
    applied().await;
    assert_eq!(ids(&d).await, ["a", "c"]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(ids(&d).await, ["a"]);
}

/// Nothing comes back: "not found" once the grace is over, not before.
#[tokio::test(start_paused = true)]
async fn nothing_comes_back() {
    let (r, d) = setup(&["a"]).await;
    r.snapshot(Vec::new(), SnapshotReason::Reconnected);
    applied().await;
    tokio::time::sleep(Duration::from_millis(9_990)).await;
    assert_eq!(d.discover_one("svc").await.unwrap().id, "a");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(matches!(
        d.discover_one("svc").await,
        Err(Error::ServiceNotFound(_))
    ));
}

/// Without a gap, a snapshot is the truth: a lagged watcher's empty snapshot empties the cache.
#[tokio::test(start_paused = true)]
async fn lagged_snapshots_apply_at_once() {
    let (r, d) = setup(&["a"]).await;
    r.snapshot(Vec::new(), SnapshotReason::Lagged);
    applied().await;
    assert!(ids(&d).await.is_empty());
}

/// Zero turns the grace off; `Duration::MAX` holds until the registry deletes them.
#[tokio::test(start_paused = true)]
async fn grace_zero_and_max() {
    let r = Scripted::new(vec![svc("a")]);
    let d = CachedDiscovery::builder(r.clone())
        .reconnect_grace(Duration::ZERO)
        .build()
        .unwrap();
    assert_eq!(ids(&d).await, ["a"]);
    r.snapshot(Vec::new(), SnapshotReason::Reconnected);
    applied().await;
    assert!(ids(&d).await.is_empty());

    let r = Scripted::new(vec![svc("a")]);
    let d = CachedDiscovery::builder(r.clone())
        .reconnect_grace(Duration::MAX)
        .build()
        .unwrap();
    assert_eq!(ids(&d).await, ["a"]);
    r.snapshot(Vec::new(), SnapshotReason::Reconnected);
    applied().await;
    tokio::time::advance(Duration::from_secs(100 * 365 * 24 * 3600)).await;
    applied().await;
    assert_eq!(ids(&d).await, ["a"]);
    r.send(WatchEvent::Change(ServiceEvent::deleted(svc("a"))));
    applied().await;
    assert!(ids(&d).await.is_empty());
}

/// The shrink guard still comes first: with `refuse_empty_updates` the empty set is refused.
#[tokio::test(start_paused = true)]
async fn shrink_guard_first() {
    let r = Scripted::new(vec![svc("a")]);
    let d = CachedDiscovery::builder(r.clone())
        .refuse_empty_updates(true)
        .build()
        .unwrap();
    assert_eq!(ids(&d).await, ["a"]);
    r.snapshot(Vec::new(), SnapshotReason::Reconnected);
    applied().await;
    let stats = d.service_stats("svc").unwrap();
    assert_eq!((stats.refused_updates, stats.stale_instances), (1, 0));
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(ids(&d).await, ["a"]);
}

/// The race the Nacos backend runs after a restart: the server's empty state arrives as a
/// `Deleted` change a millisecond before the `Reconnected` snapshot. The last instance's deletion
/// waits 250 ms, the snapshot finds it still cached and holds it for the grace.
#[tokio::test(start_paused = true)]
async fn deletion_just_before_a_reconnect_snapshot_is_held_too() {
    let (r, d) = setup(&["a"]).await;
    r.send(WatchEvent::Change(ServiceEvent::deleted(svc("a"))));
    applied().await;
    assert_eq!(ids(&d).await, ["a"], "the last instance's deletion waits");
    r.snapshot(Vec::new(), SnapshotReason::Reconnected);
    applied().await;
    assert_eq!(d.service_stats("svc").unwrap().stale_instances, 1);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        ids(&d).await,
        ["a"],
        "held for the grace, not the 250 ms hold"
    );
    r.send(WatchEvent::Change(ServiceEvent::created(svc("a"))));
    applied().await;
    assert_eq!(d.service_stats("svc").unwrap().stale_instances, 0);
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(ids(&d).await, ["a"]);
}

/// Without a reconnect, the last instance's deletion takes effect after the 250 ms hold; other
/// deletions at once.
#[tokio::test(start_paused = true)]
async fn a_plain_deletion_of_the_last_instance_takes_a_second() {
    let (r, d) = setup(&["a", "b"]).await;
    r.send(WatchEvent::Change(ServiceEvent::deleted(svc("a"))));
    applied().await;
    assert_eq!(ids(&d).await, ["b"]);
    r.send(WatchEvent::Change(ServiceEvent::deleted(svc("b"))));
    applied().await;
    assert_eq!(ids(&d).await, ["b"]);
    tokio::time::sleep(Duration::from_millis(240)).await;
    assert_eq!(ids(&d).await, ["b"]);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(ids(&d).await.is_empty());
}
