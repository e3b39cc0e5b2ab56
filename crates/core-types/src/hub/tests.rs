//! Tests of the watch hub.

use super::*;
use futures_util::StreamExt;

fn svc(name: &str, id: &str) -> ServiceInfo {
    ServiceInfo::new(id, name, "10.0.0.1", 80)
}

fn ids(services: &[ServiceInfo]) -> Vec<&str> {
    services.iter().map(|s| s.id.as_str()).collect()
}

async fn next(s: &mut WatchStream) -> WatchEvent {
    tokio::time::timeout(std::time::Duration::from_secs(1), s.next())
        .await
        .expect("an item in time")
        .expect("an item, not the end")
}

fn change(ev: WatchEvent) -> (ServiceEventType, String) {
    match ev {
        WatchEvent::Change(c) => (c.kind, c.service.id),
        other => panic!("expected a change, got {other:?}"),
    }
}

#[tokio::test]
async fn snapshot_then_changes_in_scope() {
    let hub = WatchHub::new("test", 16);
    hub.apply(ServiceEvent::created(svc("a", "a1")));
    hub.apply(ServiceEvent::created(svc("b", "b1")));
    let mut all = hub.subscribe(Scope::All).unwrap();
    let mut only_a = hub.subscribe(Scope::Service("a".into())).unwrap();
    match next(&mut all).await {
        WatchEvent::Snapshot { services, reason } => {
            assert_eq!(reason, SnapshotReason::Initial);
            assert_eq!(ids(&services), ["a1", "b1"]);
        }
        other => panic!("{other:?}"),
    }
    match next(&mut only_a).await {
        WatchEvent::Snapshot { services, .. } => assert_eq!(ids(&services), ["a1"]),
        other => panic!("{other:?}"),
    }
    // Updated of an unknown id is Created; Created of a known one is Updated; Deleted of an
    // unknown one is nothing.
    hub.apply(ServiceEvent::updated(svc("b", "b2")));
    hub.apply(ServiceEvent::created(svc("a", "a1")));
    assert_eq!(hub.apply(ServiceEvent::deleted(svc("a", "zz"))), None);
    hub.apply(ServiceEvent::deleted(svc("a", "a1")));
    assert_eq!(
        change(next(&mut all).await),
        (ServiceEventType::Created, "b2".into())
    );
    assert_eq!(
        change(next(&mut all).await),
        (ServiceEventType::Updated, "a1".into())
    );
    assert_eq!(
        change(next(&mut all).await),
        (ServiceEventType::Deleted, "a1".into())
    );
    assert_eq!(
        change(next(&mut only_a).await),
        (ServiceEventType::Updated, "a1".into())
    );
    assert_eq!(
        change(next(&mut only_a).await),
        (ServiceEventType::Deleted, "a1".into())
    );
    assert_eq!(hub.subscribers(), 2);
    drop(only_a);
    assert_eq!(hub.subscribers(), 1);
}

#[tokio::test]
async fn a_lagging_stream_gets_a_snapshot_of_the_current_view() {
    let hub = WatchHub::new("test", 2);
    let mut s = hub.subscribe(Scope::All).unwrap();
    for i in 0..5 {
        hub.apply(ServiceEvent::created(svc("a", &format!("x{i}"))));
    }
    // The first snapshot overflowed with the rest: its replacement is still `Initial`.
    match next(&mut s).await {
        WatchEvent::Snapshot { services, reason } => {
            assert_eq!(reason, SnapshotReason::Initial);
            assert_eq!(services.len(), 5);
        }
        other => panic!("{other:?}"),
    }
    hub.apply(ServiceEvent::deleted(svc("a", "x0")));
    assert_eq!(
        change(next(&mut s).await),
        (ServiceEventType::Deleted, "x0".into())
    );
    for i in 5..9 {
        hub.apply(ServiceEvent::created(svc("a", &format!("x{i}"))));
    }
    match next(&mut s).await {
        WatchEvent::Snapshot { services, reason } => {
            assert_eq!(reason, SnapshotReason::Lagged);
            assert_eq!(services.len(), 8);
        }
        other => panic!("{other:?}"),
    }
    hub.apply(ServiceEvent::created(svc("a", "y")));
    assert_eq!(
        change(next(&mut s).await),
        (ServiceEventType::Created, "y".into())
    );
}

#[tokio::test]
async fn replace_with_a_reason_resyncs_streams_in_scope_and_diffs_wider_ones() {
    let hub = WatchHub::new("test", 16);
    hub.replace(&Scope::All, vec![svc("a", "a1"), svc("b", "b1")], None);
    let mut all = hub.subscribe(Scope::All).unwrap();
    let mut only_a = hub.subscribe(Scope::Service("a".into())).unwrap();
    next(&mut all).await;
    next(&mut only_a).await;
    let mut a1 = svc("a", "a1");
    a1.port = 81;
    let n = hub.replace(
        &Scope::Service("a".into()),
        vec![a1, svc("a", "a2")],
        Some(SnapshotReason::Reconnected),
    );
    assert_eq!(n, 2);
    match next(&mut only_a).await {
        WatchEvent::Snapshot { services, reason } => {
            assert_eq!(reason, SnapshotReason::Reconnected);
            assert_eq!(ids(&services), ["a1", "a2"]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        change(next(&mut all).await),
        (ServiceEventType::Updated, "a1".into())
    );
    assert_eq!(
        change(next(&mut all).await),
        (ServiceEventType::Created, "a2".into())
    );
    // Without a reason, everyone gets the difference: additions first, then removals.
    hub.replace(&Scope::All, vec![svc("c", "c1")], None);
    let got: Vec<_> = vec![
        change(next(&mut all).await),
        change(next(&mut all).await),
        change(next(&mut all).await),
        change(next(&mut all).await),
    ];
    assert_eq!(
        got,
        [
            (ServiceEventType::Created, "c1".to_owned()),
            (ServiceEventType::Deleted, "a1".to_owned()),
            (ServiceEventType::Deleted, "a2".to_owned()),
            (ServiceEventType::Deleted, "b1".to_owned()),
        ]
    );
}

#[tokio::test]
async fn close_ends_streams_after_their_backlog_and_refuses_new_ones() {
    let hub = WatchHub::new("test", 16);
    let mut s = hub.subscribe(Scope::All).unwrap();
    hub.apply(ServiceEvent::created(svc("a", "a1")));
    let idle = hub.clone();
    let waiter = tokio::spawn(async move { idle.idle().await });
    hub.close();
    hub.close();
    assert!(matches!(next(&mut s).await, WatchEvent::Snapshot { .. }));
    assert!(matches!(next(&mut s).await, WatchEvent::Change(_)));
    assert!(s.next().await.is_none());
    assert!(matches!(hub.subscribe(Scope::All), Err(Error::Closed)));
    waiter.await.unwrap();
}

#[tokio::test]
async fn streams_of_other_services_are_not_touched_by_a_change() {
    // Capacity 1: one change queued for a stream of another service would already lag it.
    let hub = WatchHub::new("test", 1);
    hub.apply(ServiceEvent::created(svc("b", "b1")));
    let mut others: Vec<WatchStream> = (0..10)
        .map(|i| hub.subscribe(Scope::Service(format!("other{i}"))).unwrap())
        .collect();
    // Each reads its first snapshot now, so anything that reached it later would show (a
    // change, or a `Lagged` snapshot).
    for s in &mut others {
        match next(s).await {
            WatchEvent::Snapshot { services, reason } => {
                assert_eq!(reason, SnapshotReason::Initial);
                assert!(services.is_empty());
            }
            other => panic!("{other:?}"),
        }
    }
    let mut only_b = hub.subscribe(Scope::Service("b".into())).unwrap();
    next(&mut only_b).await;
    for i in 0..100 {
        hub.apply(ServiceEvent::created(svc("a", &format!("a{i}"))));
    }
    hub.apply(ServiceEvent::deleted(svc("b", "b1")));
    for s in &mut others {
        if let Some(item) = futures_util::FutureExt::now_or_never(s.next()) {
            panic!("a stream of another service got {item:?}");
        }
    }
    assert_eq!(
        change(next(&mut only_b).await),
        (ServiceEventType::Deleted, "b1".into())
    );
}

#[tokio::test]
async fn shared_streams_hand_out_the_view_s_own_instances() {
    let hub = WatchHub::new("test", 16);
    hub.apply(ServiceEvent::created(svc("a", "a1")));
    let mut shared = hub.subscribe_shared(Scope::Service("a".into())).unwrap();
    let held = hub.with_view(|v| Arc::clone(v.get("a", "a1").unwrap()));
    match shared.next().await.unwrap() {
        SharedWatchEvent::Snapshot { services, reason } => {
            assert_eq!(reason, SnapshotReason::Initial);
            assert!(Arc::ptr_eq(&services[0], &held));
        }
        other => panic!("{other:?}"),
    }
    let a2 = Arc::new(svc("a", "a2"));
    hub.apply_shared(ServiceEventType::Created, Arc::clone(&a2));
    match shared.next().await.unwrap() {
        SharedWatchEvent::Change { kind, service } => {
            assert_eq!(kind, ServiceEventType::Created);
            assert!(Arc::ptr_eq(&service, &a2));
        }
        other => panic!("{other:?}"),
    }
    // A refresh replaces the view's value and tells nobody.
    let mut a1 = svc("a", "a1");
    a1.port = 99;
    assert!(hub.refresh_shared(Arc::new(a1)));
    assert!(!hub.refresh_shared(Arc::new(svc("a", "unknown"))));
    assert!(futures_util::FutureExt::now_or_never(shared.next()).is_none());
    assert_eq!(hub.with_view(|v| v.get("a", "a1").unwrap().port), 99);
    assert!(hub.with_view(|v| v.get("a", "unknown").is_none()));
}
