//! The per-service event stream of [`CachedDiscovery::watch`](crate::CachedDiscovery).

use std::collections::HashMap;

use futures_util::StreamExt;
use tokio::sync::watch;
use waypost_core_types::{ServiceEvent, ServiceEventStream, ServiceInfo, WatchEvent, WatchStream};

/// Turns a registry watch into plain change events. The initial snapshot is the starting point
/// (no events); a later snapshot (a resync after lag or a reconnect) is turned into the
/// `Created`/`Updated`/`Deleted` events that bring a listener from what it saw to the new state,
/// so nothing is silently lost. The stream ends at `shutdown`.
pub(crate) fn changes(
    stream: WatchStream,
    mut shutdown: watch::Receiver<bool>,
) -> ServiceEventStream {
    let mut known: HashMap<String, ServiceInfo> = HashMap::new();
    let mut started = false;
    let events = stream.flat_map(move |ev| {
        let out = match ev {
            WatchEvent::Snapshot { services, .. } => {
                let next: HashMap<String, ServiceInfo> =
                    services.into_iter().map(|s| (s.id.clone(), s)).collect();
                let out = if started {
                    diff(&known, &next)
                } else {
                    Vec::new()
                };
                started = true;
                known = next;
                out
            }
            WatchEvent::Change(change) => {
                match change.kind {
                    waypost_core_types::ServiceEventType::Deleted => {
                        known.remove(&change.service.id);
                    }
                    _ => {
                        known.insert(change.service.id.clone(), change.service.clone());
                    }
                }
                vec![change]
            }
            _ => Vec::new(),
        };
        futures_util::stream::iter(out)
    });
    let stop = async move {
        let _ = shutdown.wait_for(|closed| *closed).await;
    };
    Box::pin(events.take_until(stop))
}

fn diff(
    old: &HashMap<String, ServiceInfo>,
    new: &HashMap<String, ServiceInfo>,
) -> Vec<ServiceEvent> {
    let mut out = Vec::new();
    let mut ids: Vec<&String> = new.keys().collect();
    ids.sort();
    for id in ids {
        let s = &new[id];
        match old.get(id) {
            None => out.push(ServiceEvent::created(s.clone())),
            Some(o) if o != s => out.push(ServiceEvent::updated(s.clone())),
            Some(_) => {}
        }
    }
    let mut gone: Vec<&ServiceInfo> = old.values().filter(|o| !new.contains_key(&o.id)).collect();
    gone.sort_by(|a, b| a.id.cmp(&b.id));
    out.extend(gone.into_iter().map(|o| ServiceEvent::deleted(o.clone())));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use waypost_core_types::{ServiceEventType, SnapshotReason};

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
