//! Watchers of one service cost nothing to changes of others, and shared watchers hold the
//! registry's own instances.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use waypost_core_types::{
    ServiceEventType, ServiceInfo, ServiceRegistry, SharedWatchEvent, SnapshotReason, WatchEvent,
    WatchStream,
};
use waypost_registry_memory::MemoryRegistry;

const CHANGES: usize = 20_000;
const UNRELATED: usize = 100;
const BUFFER: usize = 256;

fn hot(i: usize) -> ServiceInfo {
    ServiceInfo::new(format!("hot-{}", i % 100), "hot", "10.0.0.1", 8080)
        .with_metadata("seq", i.to_string())
}

fn seq(s: &ServiceInfo) -> Option<usize> {
    s.metadata.get("seq").and_then(|v| v.parse().ok())
}

/// Reads `stream` until it has seen change number `last` of "hot", checking that every change
/// of "hot" follows the one before it, unless a `Lagged` snapshot (the only kind allowed after
/// the `Initial` one) replaced what was missed. Returns how many resyncs it saw.
async fn follow(mut stream: WatchStream, last: usize) -> usize {
    let mut seen: Option<usize> = None;
    let mut first = true;
    let mut resyncs = 0;
    while seen != Some(last) {
        match stream.next().await.expect("the stream goes on") {
            WatchEvent::Snapshot { services, reason } => {
                if first {
                    assert_eq!(reason, SnapshotReason::Initial);
                } else {
                    assert_eq!(reason, SnapshotReason::Lagged);
                    resyncs += 1;
                }
                let newest = services.iter().filter_map(seq).max();
                assert!(newest >= seen, "a resync went back: {newest:?} < {seen:?}");
                seen = newest.or(seen);
            }
            WatchEvent::Change(c) => {
                if c.service.name != "hot" {
                    continue;
                }
                let got = seq(&c.service).expect("a sequence number");
                assert_eq!(got, seen.map_or(0, |s| s + 1), "a change out of order");
                // The first registration of each of the 100 ids creates it.
                let kind = if got < 100 {
                    ServiceEventType::Created
                } else {
                    ServiceEventType::Updated
                };
                assert_eq!(c.kind, kind);
                seen = Some(got);
            }
            other => panic!("unexpected {other:?}"),
        }
        first = false;
    }
    resyncs
}

#[tokio::test]
async fn a_hundred_unrelated_watchers_get_nothing_but_their_snapshot() {
    // A small buffer: one change in 256 reaching a watcher of another service would lag it.
    let registry = MemoryRegistry::builder()
        .watch_buffer(BUFFER)
        .build()
        .unwrap();
    for k in 0..UNRELATED {
        registry
            .register(&ServiceInfo::new(
                format!("other{k}-1"),
                format!("other{k}"),
                "10.0.1.1",
                80,
            ))
            .await
            .unwrap();
    }
    let mut unrelated = Vec::new();
    for k in 0..UNRELATED {
        let mut s = registry.watch_service(&format!("other{k}")).await.unwrap();
        // Read before the changes: a stream that has delivered its first snapshot gets any later
        // one as `Lagged`, and changes as changes, so whatever reaches it shows.
        match s.next().now_or_never() {
            Some(Some(WatchEvent::Snapshot { services, reason })) => {
                assert_eq!(reason, SnapshotReason::Initial);
                assert_eq!(services.len(), 1);
                assert_eq!(services[0].name, format!("other{k}"));
            }
            other => panic!("watcher of other{k}: expected its snapshot, got {other:?}"),
        }
        unrelated.push(s);
    }
    let of_hot = tokio::spawn(follow(
        registry.watch_service("hot").await.unwrap(),
        CHANGES - 1,
    ));
    let of_all = tokio::spawn(follow(registry.watch().await.unwrap(), CHANGES - 1));
    for i in 0..CHANGES {
        registry.register(&hot(i)).await.unwrap();
        // On this one thread the followers read only when the writer yields: after 100 changes
        // they read them one by one; after 1,000 (more than the buffer) they must resync.
        if i < 10_000 && i % 100 == 99 || i % 1_000 == 999 {
            tokio::task::yield_now().await;
        }
    }
    for task in [of_hot, of_all] {
        let resyncs = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("the follower saw every change")
            .expect("the follower's checks held");
        assert!(
            resyncs > 0,
            "the follower never lagged: the test missed a path"
        );
    }
    for (k, mut s) in unrelated.into_iter().enumerate() {
        if let Some(item) = s.next().now_or_never() {
            panic!("watcher of other{k} got more than its snapshot: {item:?}");
        }
    }
    registry.close().await.unwrap();
}

fn by_id(list: &[Arc<ServiceInfo>], id: &str) -> Arc<ServiceInfo> {
    Arc::clone(list.iter().find(|s| s.id == id).expect("listed"))
}

async fn next_shared(s: &mut waypost_core_types::SharedWatchStream) -> SharedWatchEvent {
    tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .expect("an item in time")
        .expect("an item, not the end")
}

#[tokio::test]
async fn shared_watchers_hold_the_registry_s_own_instances() {
    let registry = MemoryRegistry::new();
    for id in ["a1", "a2"] {
        registry
            .register(&ServiceInfo::new(id, "a", "10.0.0.1", 80))
            .await
            .unwrap();
    }
    let mut watch = registry.watch_service_shared("a").await.unwrap();
    let listed = registry.list_instances_shared("a").await.unwrap();
    match next_shared(&mut watch).await {
        SharedWatchEvent::Snapshot { services, reason } => {
            assert_eq!(reason, SnapshotReason::Initial);
            assert_eq!(services.len(), 2);
            for s in &services {
                assert!(Arc::ptr_eq(s, &by_id(&listed, &s.id)), "{}", s.id);
            }
        }
        other => panic!("{other:?}"),
    }

    registry
        .register(&ServiceInfo::new("a1", "a", "10.0.0.9", 81))
        .await
        .unwrap();
    let listed = registry.list_instances_shared("a").await.unwrap();
    match next_shared(&mut watch).await {
        SharedWatchEvent::Change { kind, service } => {
            assert_eq!(kind, ServiceEventType::Updated);
            assert_eq!(service.port, 81);
            assert!(Arc::ptr_eq(&service, &by_id(&listed, "a1")));
        }
        other => panic!("{other:?}"),
    }

    // A renewal tells no watcher, yet a new watcher's snapshot shares the renewed instance.
    registry.renew("a2").await.unwrap();
    assert!(watch.next().now_or_never().is_none());
    let listed = registry.list_instances_shared("a").await.unwrap();
    let mut later = registry.watch_service_shared("a").await.unwrap();
    match next_shared(&mut later).await {
        SharedWatchEvent::Snapshot { services, .. } => {
            for s in &services {
                assert!(Arc::ptr_eq(s, &by_id(&listed, &s.id)), "{}", s.id);
            }
        }
        other => panic!("{other:?}"),
    }

    let a1 = by_id(&listed, "a1");
    registry.deregister("a1").await.unwrap();
    match next_shared(&mut watch).await {
        SharedWatchEvent::Change { kind, service } => {
            assert_eq!(kind, ServiceEventType::Deleted);
            assert!(Arc::ptr_eq(&service, &a1));
        }
        other => panic!("{other:?}"),
    }
    registry.close().await.unwrap();
    assert!(watch.next().await.is_none());
}
