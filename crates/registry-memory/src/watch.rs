//! Watch streams: a snapshot, then every change after it; a new snapshot when a watcher lags.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use futures_util::stream;
use tokio::sync::{broadcast, watch};
use waypost_core_types::{ServiceEvent, SnapshotReason, WatchEvent, WatchStream};

use crate::store::{Change, Store};

struct Watcher {
    store: Weak<Store>,
    rx: broadcast::Receiver<Arc<Change>>,
    closed: watch::Receiver<bool>,
    scope: Option<String>,
    /// Sequence number at which each instance was seen in the last snapshot: older changes to it
    /// are already reflected and are skipped.
    seen: HashMap<String, u64>,
    pending: Option<WatchEvent>,
}

impl Watcher {
    /// Takes a snapshot. The receiver was subscribed before, so nothing after it is missed.
    fn snapshot(&mut self, reason: SnapshotReason) -> Option<WatchEvent> {
        let store = self.store.upgrade()?;
        let items = store.snapshot(self.scope.as_deref());
        self.seen = items
            .iter()
            .map(|(seq, info)| (info.id.clone(), *seq))
            .collect();
        let services = items.into_iter().map(|(_, info)| (*info).clone()).collect();
        Some(WatchEvent::Snapshot { services, reason })
    }

    fn accept(&mut self, change: &Change) -> Option<WatchEvent> {
        if let Some(scope) = &self.scope {
            if change.info.name != *scope {
                return None;
            }
        }
        if let Some(seen) = self.seen.get(&change.info.id) {
            if change.seq <= *seen {
                return None;
            }
            self.seen.remove(&change.info.id);
        }
        Some(WatchEvent::Change(ServiceEvent {
            kind: change.kind,
            service: (*change.info).clone(),
        }))
    }

    async fn next(&mut self) -> Option<WatchEvent> {
        if let Some(ev) = self.pending.take() {
            return Some(ev);
        }
        loop {
            if *self.closed.borrow() {
                return None;
            }
            tokio::select! {
                biased;
                changed = self.closed.changed() => {
                    if changed.is_err() || *self.closed.borrow() {
                        return None;
                    }
                }
                received = self.rx.recv() => match received {
                    Ok(change) => {
                        if let Some(ev) = self.accept(&change) {
                            return Some(ev);
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::debug!(missed, "memory registry watcher lagged; resyncing");
                        // Continue from the oldest retained change; the snapshot covers the gap
                        // and `seen` skips what it already reflects.
                        return self.snapshot(SnapshotReason::Lagged);
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        }
    }
}

pub(crate) fn watch_stream(
    store: &Arc<Store>,
    closed: watch::Receiver<bool>,
    scope: Option<String>,
) -> WatchStream {
    let rx = store.changes.subscribe();
    let mut watcher = Watcher {
        store: Arc::downgrade(store),
        rx,
        closed,
        scope,
        seen: HashMap::new(),
        pending: None,
    };
    watcher.pending = watcher.snapshot(SnapshotReason::Initial);
    Box::pin(stream::unfold(watcher, |mut w| async move {
        let ev = w.next().await?;
        Some((ev, w))
    }))
}
