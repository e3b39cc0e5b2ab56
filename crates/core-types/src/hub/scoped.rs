//! [`ScopedHubs`]: one [`WatchHub`] per scope, for backends that run one server-side watch per
//! scope.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::{lock, WatchHub};
use crate::view::Scope;
use crate::{Error, Result, SharedWatchStream, WatchStream};

/// One [`WatchHub`] per scope, for backends that run one server-side watch per scope.
///
/// A backend's `watch`/`watch_service` calls [`ScopedHubs::subscribe`]: the first stream of a
/// scope runs `start`, which lists the scope into a new hub and spawns the task that feeds it;
/// later streams of the same scope share that hub. The feed task ends when
/// [`ScopedHubs::unwatched`] resolves (the last stream of its scope was dropped, or the registry
/// closed).
#[derive(Debug)]
pub struct ScopedHubs {
    hubs: Mutex<HashMap<Scope, WatchHub>>,
    backend: &'static str,
    capacity: usize,
    closed: AtomicBool,
}

impl ScopedHubs {
    /// No hub yet; each hub is one of a registry of `backend` (see [`WatchHub::new`]) whose
    /// streams may fall `capacity` items behind.
    pub fn new(backend: &'static str, capacity: usize) -> Self {
        ScopedHubs {
            hubs: Mutex::new(HashMap::new()),
            backend,
            capacity,
            closed: AtomicBool::new(false),
        }
    }

    /// A stream over `scope`, from the live hub of that scope or from a new one that `start`
    /// fills: it must put the scope's current instances in the hub with
    /// `hub.replace(&scope, services, Some(SnapshotReason::Initial))` before it returns, and
    /// start the task that keeps the hub current until [`unwatched`](Self::unwatched).
    ///
    /// # Errors
    /// `Closed` after [`close`](Self::close); whatever `start` returns.
    pub async fn subscribe<F, Fut>(&self, scope: Scope, start: F) -> Result<WatchStream>
    where
        F: FnOnce(WatchHub) -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        self.subscribe_with(scope, start, WatchHub::subscribe).await
    }

    /// [`subscribe`](Self::subscribe) with the hub's own instances (see
    /// [`WatchHub::subscribe_shared`]); `start` as there.
    ///
    /// # Errors
    /// `Closed` after [`close`](Self::close); whatever `start` returns.
    pub async fn subscribe_shared<F, Fut>(
        &self,
        scope: Scope,
        start: F,
    ) -> Result<SharedWatchStream>
    where
        F: FnOnce(WatchHub) -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        self.subscribe_with(scope, start, WatchHub::subscribe_shared)
            .await
    }

    /// [`subscribe`](Self::subscribe) or [`subscribe_shared`](Self::subscribe_shared), as `open`
    /// says ([`WatchHub::subscribe`] or [`WatchHub::subscribe_shared`]): for a backend that
    /// starts both kinds of stream with one `start`.
    ///
    /// # Errors
    /// `Closed` after [`close`](Self::close); whatever `start` or `open` returns.
    pub async fn subscribe_with<S, F, Fut>(
        &self,
        scope: Scope,
        start: F,
        open: fn(&WatchHub, Scope) -> Result<S>,
    ) -> Result<S>
    where
        F: FnOnce(WatchHub) -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        if let Some(stream) = self.subscribe_live(&scope, open)? {
            return Ok(stream);
        }
        let hub = WatchHub::new(self.backend, self.capacity);
        // Subscribed before `start`, so the feed task `start` spawns cannot find the hub unused.
        let stream = open(&hub, scope.clone())?;
        if let Err(e) = start(hub.clone()).await {
            hub.close();
            return Err(e);
        }
        let mut hubs = lock(&self.hubs);
        if self.closed.load(Ordering::Acquire) {
            hub.close();
            return Err(Error::Closed);
        }
        if let Some(live) = hubs.get(&scope) {
            if let Ok(shared) = open(live, scope.clone()) {
                // Another stream of this scope started its hub meanwhile: use that one.
                drop(stream);
                hub.close();
                return Ok(shared);
            }
        }
        hubs.insert(scope, hub);
        Ok(stream)
    }

    fn subscribe_live<S>(
        &self,
        scope: &Scope,
        open: fn(&WatchHub, Scope) -> Result<S>,
    ) -> Result<Option<S>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let hubs = lock(&self.hubs);
        Ok(hubs.get(scope).and_then(|h| open(h, scope.clone()).ok()))
    }

    /// Resolves when `hub` (of `scope`) should stop being fed: its last stream was dropped (the
    /// hub is then removed and closed, so a new stream starts a new one) or it was closed.
    pub async fn unwatched(&self, scope: &Scope, hub: &WatchHub) {
        loop {
            hub.idle().await;
            if hub.is_closed() {
                return;
            }
            let mut hubs = lock(&self.hubs);
            if hub.subscribers() == 0 {
                if hubs.get(scope).is_some_and(|h| h.same(hub)) {
                    hubs.remove(scope);
                }
                hub.close();
                return;
            }
        }
    }

    /// Every live hub, with its scope.
    pub fn hubs(&self) -> Vec<(Scope, WatchHub)> {
        lock(&self.hubs)
            .iter()
            .map(|(s, h)| (s.clone(), h.clone()))
            .collect()
    }

    /// Closes every hub (ending every stream) and refuses new streams. Idempotent.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let hubs: Vec<WatchHub> = lock(&self.hubs).drain().map(|(_, h)| h).collect();
        for hub in hubs {
            hub.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ServiceInfo, SnapshotReason, WatchEvent};
    use futures_util::StreamExt;
    use std::sync::Arc;

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

    #[tokio::test]
    async fn scoped_hubs_share_a_feed_and_stop_it_after_the_last_stream() {
        let hubs = Arc::new(ScopedHubs::new("test", 16));
        let scope = Scope::Service("a".into());
        let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (stopped_tx, mut stopped_rx) = tokio::sync::mpsc::unbounded_channel();
        let start = |hubs: Arc<ScopedHubs>, scope: Scope| {
            let started = Arc::clone(&started);
            let stopped_tx = stopped_tx.clone();
            move |hub: WatchHub| async move {
                started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                hub.replace(&scope, vec![svc("a", "a1")], Some(SnapshotReason::Initial));
                tokio::spawn(async move {
                    hubs.unwatched(&scope, &hub).await;
                    let _ = stopped_tx.send(());
                });
                Ok(())
            }
        };
        let mut one = hubs
            .subscribe(scope.clone(), start(Arc::clone(&hubs), scope.clone()))
            .await
            .unwrap();
        let mut two = hubs
            .subscribe(scope.clone(), start(Arc::clone(&hubs), scope.clone()))
            .await
            .unwrap();
        assert_eq!(started.load(std::sync::atomic::Ordering::SeqCst), 1);
        for s in [&mut one, &mut two] {
            match next(s).await {
                WatchEvent::Snapshot { services, reason } => {
                    assert_eq!(reason, SnapshotReason::Initial);
                    assert_eq!(ids(&services), ["a1"]);
                }
                other => panic!("{other:?}"),
            }
        }
        drop(one);
        assert!(stopped_rx.try_recv().is_err());
        drop(two);
        tokio::time::timeout(std::time::Duration::from_secs(1), stopped_rx.recv())
            .await
            .unwrap();
        assert!(hubs.hubs().is_empty());
        // A new stream starts a new feed.
        let _three = hubs
            .subscribe(scope.clone(), start(Arc::clone(&hubs), scope.clone()))
            .await
            .unwrap();
        assert_eq!(started.load(std::sync::atomic::Ordering::SeqCst), 2);
        hubs.close();
        tokio::time::timeout(std::time::Duration::from_secs(1), stopped_rx.recv())
            .await
            .unwrap();
        assert!(matches!(
            hubs.subscribe(scope.clone(), start(Arc::clone(&hubs), scope.clone()))
                .await,
            Err(Error::Closed)
        ));
    }
}
