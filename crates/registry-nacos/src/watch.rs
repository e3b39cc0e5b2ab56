//! Watchers: one bounded queue per watch stream, fed by the registry's view of each service.
//!
//! Every change is computed under the registry's state lock and pushed to the queues of the
//! matching watchers under that same lock, so a snapshot taken under the lock and the changes
//! that follow it never overlap or leave a gap. A watcher whose queue is full is marked lagging:
//! its queued changes are dropped and its next item is a fresh snapshot
//! ([`SnapshotReason::Lagged`]).

use std::collections::VecDeque;
use std::sync::Arc;

use futures_util::stream;
use parking_lot::Mutex;
use tokio::sync::Notify;
use waypost_core_types::{ServiceEvent, ServiceInfo, SnapshotReason, WatchEvent, WatchStream};

/// Builds a snapshot of the current view for a watcher (called with the registry's state lock
/// held, so it is consistent with the events queued after it).
pub(crate) trait SnapshotSource: Send + Sync + 'static {
    /// Locks the state and calls [`Watcher::push_resync`] with the instances in scope.
    fn resync(&self, watcher: &Watcher);
}

/// One watch stream's queue.
#[derive(Debug)]
pub(crate) struct Watcher {
    /// `Some(name)`: only this service; `None`: every service.
    pub(crate) filter: Option<String>,
    capacity: usize,
    queue: Mutex<Queue>,
    notify: Notify,
}

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<WatchEvent>,
    lagged: bool,
    closed: bool,
    delivered: bool,
}

impl Watcher {
    pub(crate) fn new(filter: Option<String>, capacity: usize) -> Arc<Self> {
        Arc::new(Watcher {
            filter,
            capacity: capacity.max(1),
            queue: Mutex::new(Queue::default()),
            notify: Notify::new(),
        })
    }

    /// Whether this watcher wants changes of service `name`.
    pub(crate) fn wants(&self, name: &str) -> bool {
        self.filter.as_deref().is_none_or(|f| f == name)
    }

    /// Whether the stream was dropped or closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.queue.lock().closed
    }

    /// Queues one change (or marks the watcher lagging when its queue is full).
    pub(crate) fn push_change(&self, ev: ServiceEvent) {
        {
            let mut q = self.queue.lock();
            if q.closed || q.lagged {
                return;
            }
            if q.items.len() >= self.capacity {
                q.items.clear();
                q.lagged = true;
            } else {
                q.items.push_back(WatchEvent::Change(ev));
            }
        }
        self.notify.notify_one();
    }

    /// Replaces everything queued by a snapshot (the caller holds the state lock).
    pub(crate) fn push_snapshot(&self, services: Vec<ServiceInfo>, reason: SnapshotReason) {
        {
            let mut q = self.queue.lock();
            if q.closed {
                return;
            }
            q.items.clear();
            q.lagged = false;
            q.items.push_back(WatchEvent::Snapshot { services, reason });
        }
        self.notify.notify_one();
    }

    /// Replaces everything queued by a resync snapshot: `Initial` if the stream has not
    /// delivered anything yet (its initial snapshot was dropped with the overflow), else `Lagged`.
    pub(crate) fn push_resync(&self, services: Vec<ServiceInfo>) {
        let reason = if self.queue.lock().delivered {
            SnapshotReason::Lagged
        } else {
            SnapshotReason::Initial
        };
        self.push_snapshot(services, reason);
    }

    /// Ends the stream (after what is queued has been read).
    pub(crate) fn close(&self) {
        self.queue.lock().closed = true;
        self.notify.notify_one();
    }

    fn is_lagged(&self) -> bool {
        self.queue.lock().lagged
    }

    /// The next queued item, `Err(())` when the stream is over.
    fn pop(&self) -> Result<Option<WatchEvent>, ()> {
        let mut q = self.queue.lock();
        if let Some(ev) = q.items.pop_front() {
            q.delivered = true;
            return Ok(Some(ev));
        }
        if q.closed {
            return Err(());
        }
        Ok(None)
    }
}

/// Ends the watcher when the stream is dropped, so the registry stops feeding it.
struct Guard {
    watcher: Arc<Watcher>,
    source: Arc<dyn SnapshotSource>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.watcher.close();
    }
}

/// The stream of a watcher whose first item (the initial snapshot) is already queued.
pub(crate) fn into_stream(watcher: Arc<Watcher>, source: Arc<dyn SnapshotSource>) -> WatchStream {
    let guard = Guard { watcher, source };
    Box::pin(stream::unfold(guard, |guard| async move {
        loop {
            if guard.watcher.is_lagged() {
                guard.source.resync(&guard.watcher);
            }
            match guard.watcher.pop() {
                Ok(Some(ev)) => return Some((ev, guard)),
                Err(()) => return None,
                Ok(None) => guard.watcher.notify.notified().await,
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    struct Fixed(Vec<ServiceInfo>);
    impl SnapshotSource for Fixed {
        fn resync(&self, w: &Watcher) {
            w.push_resync(self.0.clone());
        }
    }

    fn svc(id: &str) -> ServiceInfo {
        ServiceInfo::new(id, "s", "h", 1)
    }

    #[tokio::test]
    async fn delivers_in_order_then_ends_on_close() {
        let w = Watcher::new(None, 10);
        w.push_snapshot(vec![], SnapshotReason::Initial);
        w.push_change(ServiceEvent::created(svc("a")));
        w.push_change(ServiceEvent::deleted(svc("a")));
        let mut s = into_stream(w.clone(), Arc::new(Fixed(vec![])));
        assert!(matches!(s.next().await, Some(WatchEvent::Snapshot { .. })));
        assert_eq!(s.next().await.unwrap().as_change().unwrap().service.id, "a");
        assert!(s.next().await.unwrap().as_change().is_some());
        w.close();
        assert!(s.next().await.is_none());
    }

    #[tokio::test]
    async fn overflow_becomes_a_lagged_snapshot() {
        let w = Watcher::new(Some("s".into()), 2);
        w.push_snapshot(vec![], SnapshotReason::Initial);
        for i in 0..5 {
            w.push_change(ServiceEvent::created(svc(&format!("x{i}"))));
        }
        let mut s = into_stream(w.clone(), Arc::new(Fixed(vec![svc("final")])));
        // The initial snapshot overflowed with the rest: the replacement is still `Initial`.
        match s.next().await {
            Some(WatchEvent::Snapshot { services, reason }) => {
                assert_eq!(reason, SnapshotReason::Initial);
                assert_eq!(services[0].id, "final");
            }
            other => panic!("expected a resync snapshot, got {other:?}"),
        }
        for i in 0..5 {
            w.push_change(ServiceEvent::created(svc(&format!("y{i}"))));
        }
        match s.next().await {
            Some(WatchEvent::Snapshot { reason, .. }) => assert_eq!(reason, SnapshotReason::Lagged),
            other => panic!("expected a lagged snapshot, got {other:?}"),
        }
        assert!(w.wants("s") && !w.wants("t"));
    }

    #[tokio::test]
    async fn dropping_the_stream_closes_the_watcher() {
        let w = Watcher::new(None, 2);
        w.push_snapshot(vec![], SnapshotReason::Initial);
        let s = into_stream(w.clone(), Arc::new(Fixed(vec![])));
        assert!(!w.is_closed());
        drop(s);
        assert!(w.is_closed());
    }
}
