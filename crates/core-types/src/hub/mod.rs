//! The watch hub: one [`InstanceView`] and the watch streams fed from it.
//!
//! Every registry backend feeds what it learns from its server (or, in memory, every write) into
//! a [`WatchHub`]; the hub keeps the view, fans each change out to the streams whose scope covers
//! it, and handles the rest the same way for every backend:
//! - each stream starts with a `Snapshot { reason: Initial }` of its scope, taken under the
//!   hub's lock, so no change is missed or repeated between the snapshot and the changes;
//! - each stream has a bounded queue; a consumer that falls more than `capacity` items behind
//!   loses its backlog and gets a `Snapshot { reason: Lagged }` of the current view instead
//!   (`Initial` if it had not read its first snapshot yet), so it is never silently wrong;
//! - [`WatchHub::replace`] with a reason (a reconnect, lost history) sends every stream in that
//!   scope a snapshot with that reason, and streams with a wider scope the changes;
//! - dropping a stream unsubscribes it; [`WatchHub::close`] ends every stream after what is
//!   already queued for it.
//!
//! Each hub counts, for its backend, the changes its view applied and the snapshots it queued
//! (`waypost_registry_watch_events_total{backend,event}`) and its resyncs
//! (`waypost_registry_watch_resyncs_total{backend,reason}`): see [`crate::observe`].
//!
//! [`ScopedHubs`] keeps one hub per scope for backends that run one server-side watch per scope
//! (etcd, ZooKeeper): the watch starts with the first stream of a scope and stops after the last
//! one is dropped.

use std::collections::{HashMap, VecDeque};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll};

use futures_core::Stream;
use futures_util::task::AtomicWaker;
use tokio::sync::Notify;

use crate::observe::HubMetrics;
use crate::view::{InstanceView, Scope};

mod scoped;

use crate::{
    Error, Result, ServiceEvent, ServiceEventType, ServiceInfo, SharedWatchEvent,
    SharedWatchStream, SnapshotReason, WatchEvent, WatchStream,
};
pub use scoped::ScopedHubs;

/// How many items a stream may have queued before it counts as lagging, unless a backend's
/// config says otherwise.
pub const DEFAULT_WATCH_CAPACITY: usize = 1024;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing user-supplied runs under these locks; a poisoned lock still holds consistent data.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Fans the changes of one [`InstanceView`] out to watch streams. Cheap to clone (shared).
#[derive(Clone)]
pub struct WatchHub {
    shared: Arc<Shared>,
}

struct Shared {
    inner: Mutex<Inner>,
    capacity: usize,
    /// Woken when the last stream is dropped or the hub closes.
    idle: Notify,
    metrics: HubMetrics,
}

#[derive(Default)]
struct Inner {
    view: InstanceView,
    all: Vec<Arc<Sub>>,
    by_service: HashMap<String, Vec<Arc<Sub>>>,
    subscribers: usize,
    closed: bool,
}

struct Sub {
    scope: Scope,
    capacity: usize,
    queue: Mutex<Queue>,
    waker: AtomicWaker,
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Item>,
    /// The backlog overflowed: the next item is a snapshot of the current view.
    lagged: bool,
    closed: bool,
    /// The stream has handed out at least one item.
    delivered: bool,
}

enum Item {
    Change(ServiceEventType, Arc<ServiceInfo>),
    Snapshot(Vec<Arc<ServiceInfo>>, SnapshotReason),
}

/// What a stream hands out: copies ([`WatchEvent`]) or the hub's own instances
/// ([`SharedWatchEvent`]).
trait FromItem: Send + 'static {
    fn from_item(item: Item) -> Self;
}

impl FromItem for WatchEvent {
    fn from_item(item: Item) -> Self {
        match item {
            Item::Change(kind, service) => WatchEvent::Change(ServiceEvent {
                kind,
                service: Arc::unwrap_or_clone(service),
            }),
            Item::Snapshot(services, reason) => WatchEvent::Snapshot {
                services: services.into_iter().map(Arc::unwrap_or_clone).collect(),
                reason,
            },
        }
    }
}

impl FromItem for SharedWatchEvent {
    fn from_item(item: Item) -> Self {
        match item {
            Item::Change(kind, service) => SharedWatchEvent::Change { kind, service },
            Item::Snapshot(services, reason) => SharedWatchEvent::Snapshot { services, reason },
        }
    }
}

impl Sub {
    fn wake(&self) {
        self.waker.wake();
    }

    fn push_change(&self, kind: ServiceEventType, service: &Arc<ServiceInfo>) {
        {
            let mut q = lock(&self.queue);
            if q.closed || q.lagged {
                return;
            }
            if q.items.len() >= self.capacity {
                q.items.clear();
                q.lagged = true;
            } else {
                q.items.push_back(Item::Change(kind, Arc::clone(service)));
            }
        }
        self.wake();
    }

    /// Replaces everything queued with a snapshot. A stream that has not delivered anything yet
    /// still gets its first snapshot as `Initial`.
    fn push_snapshot(&self, services: Vec<Arc<ServiceInfo>>, reason: SnapshotReason) {
        {
            let mut q = lock(&self.queue);
            if q.closed {
                return;
            }
            let reason = if q.delivered {
                reason
            } else {
                SnapshotReason::Initial
            };
            q.items.clear();
            q.lagged = false;
            q.items.push_back(Item::Snapshot(services, reason));
        }
        self.wake();
    }

    fn close(&self) {
        lock(&self.queue).closed = true;
        self.wake();
    }
}

impl Inner {
    fn fan_out(&self, kind: ServiceEventType, service: &Arc<ServiceInfo>) {
        for sub in &self.all {
            sub.push_change(kind, service);
        }
        if let Some(subs) = self.by_service.get(&service.name) {
            for sub in subs {
                sub.push_change(kind, service);
            }
        }
    }

    fn subs(&self) -> impl Iterator<Item = &Arc<Sub>> + '_ {
        self.all.iter().chain(self.by_service.values().flatten())
    }
}

impl std::fmt::Debug for WatchHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = lock(&self.shared.inner);
        f.debug_struct("WatchHub")
            .field("instances", &inner.view.len())
            .field("subscribers", &inner.subscribers)
            .field("closed", &inner.closed)
            .finish()
    }
}

impl WatchHub {
    /// A hub of a registry of `backend` (the `backend` label of its metrics) whose streams
    /// may each fall `capacity` items behind before they are resynced (at least 1).
    pub fn new(backend: &'static str, capacity: usize) -> Self {
        WatchHub {
            shared: Arc::new(Shared {
                inner: Mutex::new(Inner::default()),
                capacity: capacity.max(1),
                idle: Notify::new(),
                metrics: HubMetrics::new(backend),
            }),
        }
    }

    /// A new stream over `scope`: a `Snapshot { reason: Initial }` of the view first, then every
    /// change in scope.
    ///
    /// A change of service `S` costs only the streams of `S` and the streams of every service:
    /// streams of other services are not touched, however many there are.
    ///
    /// # Errors
    /// [`Error::Closed`] after [`close`](Self::close).
    pub fn subscribe(&self, scope: Scope) -> Result<WatchStream> {
        Ok(Box::pin(self.open::<WatchEvent>(scope)?))
    }

    /// [`subscribe`](Self::subscribe) with the hub's own instances: every snapshot and change
    /// hands out the `Arc`s the view holds, without copying them.
    ///
    /// # Errors
    /// [`Error::Closed`] after [`close`](Self::close).
    pub fn subscribe_shared(&self, scope: Scope) -> Result<SharedWatchStream> {
        Ok(Box::pin(self.open::<SharedWatchEvent>(scope)?))
    }

    fn open<E: FromItem>(&self, scope: Scope) -> Result<HubStream<E>> {
        let sub = {
            let mut inner = lock(&self.shared.inner);
            if inner.closed {
                return Err(Error::Closed);
            }
            let snapshot = inner.view.snapshot_shared(&scope);
            let sub = Arc::new(Sub {
                scope: scope.clone(),
                capacity: self.shared.capacity,
                queue: Mutex::new(Queue::default()),
                waker: AtomicWaker::new(),
            });
            lock(&sub.queue)
                .items
                .push_back(Item::Snapshot(snapshot, SnapshotReason::Initial));
            match scope {
                Scope::All => inner.all.push(Arc::clone(&sub)),
                Scope::Service(name) => inner
                    .by_service
                    .entry(name)
                    .or_default()
                    .push(Arc::clone(&sub)),
            }
            inner.subscribers += 1;
            sub
        };
        self.shared.metrics.snapshots(1);
        Ok(HubStream {
            sub,
            hub: Arc::downgrade(&self.shared),
            out: PhantomData,
        })
    }

    /// Applies one change to the view and sends what it changed (see [`InstanceView::apply`])
    /// to the streams in scope. Returns the kind of change the view saw, `None` if nothing
    /// changed.
    pub fn apply(&self, event: ServiceEvent) -> Option<ServiceEventType> {
        self.apply_shared(event.kind, Arc::new(event.service))
    }

    /// [`apply`](Self::apply) with a shared instance.
    pub fn apply_shared(
        &self,
        kind: ServiceEventType,
        service: Arc<ServiceInfo>,
    ) -> Option<ServiceEventType> {
        let mut inner = lock(&self.shared.inner);
        if inner.closed {
            return None;
        }
        let (kind, service) = inner.view.apply_shared(kind, service)?;
        inner.fan_out(kind, &service);
        drop(inner);
        self.shared.metrics.change(kind);
        Some(kind)
    }

    /// Replaces a known instance in the view without sending anything to the streams (see
    /// [`InstanceView::refresh`]): for a renewal that only moves `last_check`, which watchers
    /// are not told of, so that the view keeps sharing the instance its source holds. Later
    /// snapshots show the new value. Returns whether the view knew the instance.
    pub fn refresh_shared(&self, service: Arc<ServiceInfo>) -> bool {
        let mut inner = lock(&self.shared.inner);
        !inner.closed && inner.view.refresh(service)
    }

    /// Replaces everything in `scope` with `services` (the result of listing the server).
    ///
    /// With `reason: None` the streams get the difference as changes, as if each had happened.
    /// With a reason (the backend reconnected, lost history, renewed its session), every stream
    /// whose scope lies within `scope` gets a snapshot with that reason instead, and wider
    /// streams get the difference. Returns how many instances changed.
    pub fn replace(
        &self,
        scope: &Scope,
        services: Vec<ServiceInfo>,
        reason: Option<SnapshotReason>,
    ) -> usize {
        let mut inner = lock(&self.shared.inner);
        if inner.closed {
            return 0;
        }
        let diff = inner
            .view
            .replace_shared(scope, services.into_iter().map(Arc::new).collect());
        let metrics = &self.shared.metrics;
        for (kind, _) in &diff {
            metrics.change(*kind);
        }
        let Some(reason) = reason else {
            for (kind, service) in &diff {
                inner.fan_out(*kind, service);
            }
            return diff.len();
        };
        metrics.resync(reason);
        for sub in inner.subs() {
            if scope.contains(&sub.scope) {
                sub.push_snapshot(inner.view.snapshot_shared(&sub.scope), reason);
                metrics.snapshots(1);
            } else {
                for (kind, service) in &diff {
                    if sub.scope.covers(&service.name) {
                        sub.push_change(*kind, service);
                    }
                }
            }
        }
        diff.len()
    }

    /// Reads the view under the hub's lock.
    pub fn with_view<R>(&self, f: impl FnOnce(&InstanceView) -> R) -> R {
        f(&lock(&self.shared.inner).view)
    }

    /// How many streams are subscribed.
    pub fn subscribers(&self) -> usize {
        lock(&self.shared.inner).subscribers
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        lock(&self.shared.inner).closed
    }

    /// Ends every stream (after what is queued for it) and refuses new ones. Idempotent.
    pub fn close(&self) {
        let subs: Vec<Arc<Sub>> = {
            let mut inner = lock(&self.shared.inner);
            inner.closed = true;
            let subs = inner.subs().cloned().collect();
            inner.all.clear();
            inner.by_service.clear();
            inner.subscribers = 0;
            subs
        };
        for sub in subs {
            sub.close();
        }
        self.shared.idle.notify_waiters();
    }

    /// Resolves when the hub has no stream (at once if it has none now) or is closed.
    pub async fn idle(&self) {
        loop {
            let notified = self.shared.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let inner = lock(&self.shared.inner);
                if inner.subscribers == 0 || inner.closed {
                    return;
                }
            }
            notified.await;
        }
    }

    pub(crate) fn same(&self, other: &WatchHub) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

impl Shared {
    fn unsubscribe(&self, sub: &Arc<Sub>) {
        let now_idle = {
            let mut inner = lock(&self.inner);
            let list = match &sub.scope {
                Scope::All => Some(&mut inner.all),
                Scope::Service(name) => inner.by_service.get_mut(name),
            };
            let Some(list) = list else {
                return;
            };
            let before = list.len();
            list.retain(|s| !Arc::ptr_eq(s, sub));
            let removed = before != list.len();
            if list.is_empty() {
                if let Scope::Service(name) = &sub.scope {
                    inner.by_service.remove(name);
                }
            }
            if removed {
                inner.subscribers -= 1;
            }
            removed && inner.subscribers == 0
        };
        if now_idle {
            self.idle.notify_waiters();
        }
    }

    /// Replaces a lagging stream's backlog with a snapshot of the current view.
    fn resync(&self, sub: &Sub) {
        let inner = lock(&self.inner);
        let snapshot = inner.view.snapshot_shared(&sub.scope);
        let mut q = lock(&sub.queue);
        if !q.lagged {
            return;
        }
        let reason = if q.delivered {
            SnapshotReason::Lagged
        } else {
            SnapshotReason::Initial
        };
        q.items.clear();
        q.lagged = false;
        q.items.push_back(Item::Snapshot(snapshot, reason));
        drop(q);
        drop(inner);
        self.metrics.snapshots(1);
        self.metrics.resync(reason);
    }
}

/// One subscriber's stream; dropping it unsubscribes.
struct HubStream<E> {
    sub: Arc<Sub>,
    hub: Weak<Shared>,
    out: PhantomData<fn() -> E>,
}

impl<E: FromItem> HubStream<E> {
    fn try_next(&self) -> Poll<Option<E>> {
        loop {
            let lagged = {
                let mut q = lock(&self.sub.queue);
                if let Some(item) = q.items.pop_front() {
                    q.delivered = true;
                    drop(q);
                    return Poll::Ready(Some(E::from_item(item)));
                }
                if q.closed {
                    return Poll::Ready(None);
                }
                q.lagged
            };
            if !lagged {
                return Poll::Pending;
            }
            tracing::debug!(scope = ?self.sub.scope, "watcher fell behind; resyncing it with a snapshot");
            match self.hub.upgrade() {
                Some(hub) => hub.resync(&self.sub),
                None => return Poll::Ready(None),
            }
        }
    }
}

impl<E: FromItem> Stream for HubStream<E> {
    type Item = E;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<E>> {
        if let Poll::Ready(item) = self.try_next() {
            return Poll::Ready(item);
        }
        self.sub.waker.register(cx.waker());
        self.try_next()
    }
}

impl<E> Drop for HubStream<E> {
    fn drop(&mut self) {
        if let Some(hub) = self.hub.upgrade() {
            hub.unsubscribe(&self.sub);
        }
    }
}

#[cfg(test)]
mod tests;
