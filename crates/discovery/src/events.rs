//! The per-service event stream of [`CachedDiscovery::watch`](crate::CachedDiscovery).

use futures_util::StreamExt;
use tokio::sync::watch;
use waypost_core_types::{InstanceView, Scope, ServiceEventStream, WatchEvent, WatchStream};

/// Turns a registry watch into plain change events. The initial snapshot is the starting point
/// (no events); a later snapshot (a resync after lag or a reconnect) is turned into the
/// `Created`/`Updated`/`Deleted` events that bring a listener from what it saw to the new state,
/// so nothing is silently lost. The stream ends at `shutdown`.
pub(crate) fn changes(
    stream: WatchStream,
    mut shutdown: watch::Receiver<bool>,
) -> ServiceEventStream {
    // The stream is already scoped to one service: the view covers everything it carries.
    let mut view = InstanceView::new();
    let mut started = false;
    let events = stream.flat_map(move |ev| {
        let out = match ev {
            WatchEvent::Snapshot { .. } if !started => {
                started = true;
                view.apply_watch_event(&Scope::All, ev);
                Vec::new()
            }
            other => view.apply_watch_event(&Scope::All, other),
        };
        futures_util::stream::iter(out)
    });
    let stop = async move {
        let _ = shutdown.wait_for(|closed| *closed).await;
    };
    Box::pin(events.take_until(stop))
}

#[cfg(test)]
mod tests {
    use super::*;
    use waypost_core_types::{ServiceEvent, ServiceEventType, ServiceInfo, SnapshotReason};

    #[tokio::test]
    async fn resync_becomes_events() {
        let a = ServiceInfo::new("a", "s", "h", 1);
        let b = ServiceInfo::new("b", "s", "h", 2);
        let b2 = ServiceInfo::new("b", "s", "h", 3);
        let c = ServiceInfo::new("c", "s", "h", 4);
        let items = vec![
            WatchEvent::Snapshot {
                services: vec![a.clone(), b.clone()],
                reason: SnapshotReason::Initial,
            },
            WatchEvent::Change(ServiceEvent::created(c.clone())),
            WatchEvent::Snapshot {
                services: vec![b2.clone(), c.clone()],
                reason: SnapshotReason::Lagged,
            },
        ];
        let (_tx, rx) = watch::channel(false);
        let got: Vec<_> = changes(Box::pin(futures_util::stream::iter(items)), rx)
            .map(|e| (e.kind, e.service.id))
            .collect()
            .await;
        assert_eq!(
            got,
            vec![
                (ServiceEventType::Created, "c".to_string()),
                (ServiceEventType::Updated, "b".to_string()),
                (ServiceEventType::Deleted, "a".to_string()),
            ]
        );
    }
}
