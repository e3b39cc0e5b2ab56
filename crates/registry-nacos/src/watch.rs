//! Feeding the watch hubs: SDK subscriptions, the queries that follow each push, and the
//! periodic look for new services of a full watch.
//!
//! `watch_service(name)` and `watch()` share one hub per scope ([`ScopedHubs`]); each hub is a
//! [`Feed`] following a set of services: `{name}`, or every service of the namespace and group
//! for a full watch (Nacos pushes changes of subscribed services only, so a full watch polls for
//! new names every [`service_poll_interval`](crate::NacosConfig::service_poll_interval)). Each
//! service is subscribed with the SDK once, however many feeds follow it, and unsubscribed when
//! the last feed following it ends (its last stream was dropped).
//!
//! A push only marks its service dirty; one task queries the dirty services and publishes the
//! answers (see [`crate::view`]). After a reconnect every followed service is queried again and
//! every stream gets a `Snapshot { reason: Reconnected }`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use nacos_sdk::api::naming::{NamingChangeEvent, NamingEventListener};
use parking_lot::Mutex;
use tokio::sync::{MutexGuard, Notify};
use waypost_core_types::{
    Result, Scope, SharedWatchStream, SnapshotReason, Tasks, WatchHub, WatchStream,
};

use crate::error::limited;
use crate::registry::{check_name, Inner};
use crate::view::{Feed, State, Subscribed};

/// How long a failed query waits before it is tried again.
const REFRESH_RETRY: Duration = Duration::from_millis(500);

/// Services whose server state changed since they were last queried.
#[derive(Default)]
pub(crate) struct Dirty {
    names: Mutex<BTreeSet<String>>,
    notify: Notify,
}

impl Dirty {
    fn mark(&self, name: &str) {
        self.names.lock().insert(name.to_owned());
        self.notify.notify_one();
    }

    /// Waits until at least one service is dirty and takes them all.
    async fn take(&self) -> BTreeSet<String> {
        loop {
            let names = std::mem::take(&mut *self.names.lock());
            if !names.is_empty() {
                return names;
            }
            self.notify.notified().await;
        }
    }
}

/// The SDK listener of one service: it only says "something changed"; the registry queries.
struct Listener {
    name: String,
    dirty: Arc<Dirty>,
}

impl NamingEventListener for Listener {
    fn event(&self, _event: Arc<NamingChangeEvent>) {
        self.dirty.mark(&self.name);
    }
}

/// A new stream over `scope`, sharing the scope's hub or starting one.
pub(crate) async fn subscribe(
    inner: &Arc<Inner>,
    tasks: &Tasks,
    scope: Scope,
) -> Result<WatchStream> {
    inner.check_open()?;
    inner
        .hubs
        .subscribe(scope.clone(), |hub| start(inner, tasks, scope, hub))
        .await
}

/// [`subscribe`] with the hub's own instances.
pub(crate) async fn subscribe_shared(
    inner: &Arc<Inner>,
    tasks: &Tasks,
    scope: Scope,
) -> Result<SharedWatchStream> {
    inner.check_open()?;
    inner
        .hubs
        .subscribe_shared(scope.clone(), |hub| start(inner, tasks, scope, hub))
        .await
}

/// The `start` of [`ScopedHubs::subscribe`]: follows the scope's services, puts them in the
/// hub and spawns the task that ends the feed once the hub is unwatched.
async fn start(inner: &Arc<Inner>, tasks: &Tasks, scope: Scope, hub: WatchHub) -> Result<()> {
    let names = match &scope {
        Scope::Service(name) => vec![name.clone()],
        Scope::All => inner.all_names().await?,
    };
    let id = {
        let guard = inner.subscribe_lock.lock().await;
        let mut followed: BTreeSet<String> = BTreeSet::new();
        for name in names {
            if let Err(e) = inner.acquire(&guard, &name).await {
                for name in followed {
                    inner.release(&guard, &name).await;
                }
                return Err(e);
            }
            followed.insert(name);
        }
        let mut st = inner.state.lock();
        let id = st.next_feed;
        st.next_feed += 1;
        let feed = Feed {
            id,
            scope: scope.clone(),
            hub: hub.clone(),
            names: followed,
        };
        st.publish_snapshot(&feed, SnapshotReason::Initial);
        st.feeds.push(feed);
        id
    };
    let inner = Arc::clone(inner);
    tasks.spawn(async move {
        let unwatched = inner.hubs.unwatched(&scope, &hub);
        if scope == Scope::All {
            let mut unwatched = std::pin::pin!(unwatched);
            loop {
                tokio::select! {
                    () = &mut unwatched => break,
                    () = tokio::time::sleep(inner.config.service_poll_interval) => {
                        if let Err(e) = inner.follow_new_services(id).await {
                            tracing::debug!(target: "waypost::nacos", "service discovery poll failed: {e}");
                        }
                    }
                }
            }
        } else {
            unwatched.await;
        }
        inner.end_feed(id).await;
    });
    Ok(())
}

/// Queries dirty services and publishes the answers, until the registry's tasks stop.
pub(crate) async fn refresh_loop(inner: Arc<Inner>) {
    loop {
        let names = inner.dirty.take().await;
        let results =
            futures_util::future::join_all(names.iter().map(|name| inner.refresh(name))).await;
        let mut failed = false;
        for (name, res) in names.iter().zip(results) {
            if let Err(e) = res {
                tracing::debug!(target: "waypost::nacos", service = name.as_str(), "refresh failed, retrying: {e}");
                failed = true;
                inner.dirty.names.lock().insert(name.clone());
            }
        }
        if failed {
            tokio::time::sleep(REFRESH_RETRY).await;
        }
    }
}

impl Inner {
    /// Every service name a full watch follows: the server's and ours.
    async fn all_names(&self) -> Result<Vec<String>> {
        let mut names = self.slots.service_names().await?;
        names.extend(self.state.lock().ours.values().map(|r| r.info.name.clone()));
        names.sort();
        names.dedup();
        names.retain(|n| check_name(n).is_ok());
        Ok(names)
    }

    /// Follows service `name` once more: subscribes it with the SDK and queries it the first
    /// time.
    async fn acquire(&self, _one_at_a_time: &MutexGuard<'_, ()>, name: &str) -> Result<()> {
        if let Some(sub) = self.state.lock().subscribed.get_mut(name) {
            sub.users += 1;
            return Ok(());
        }
        self.check_open()?;
        let listener: Arc<dyn NamingEventListener> = Arc::new(Listener {
            name: name.to_owned(),
            dirty: Arc::clone(&self.dirty),
        });
        let main = self.slots.main()?;
        limited(
            &format!("subscribing to `{name}`"),
            self.config.connect_timeout,
            main.subscribe(name.to_owned(), self.group(), Vec::new(), listener.clone()),
        )
        .await?;
        let list = match self.slots.query(name).await {
            Ok(list) => list,
            Err(e) => {
                self.unsubscribe(name, listener).await;
                return Err(e);
            }
        };
        let mut st = self.state.lock();
        let foreign = st.decode_foreign(name, &list);
        st.subscribed.insert(
            name.to_owned(),
            Subscribed {
                foreign,
                listener,
                users: 1,
            },
        );
        Ok(())
    }

    /// Follows service `name` once less; the last one unsubscribes it.
    async fn release(&self, _one_at_a_time: &MutexGuard<'_, ()>, name: &str) {
        let listener = {
            let mut st = self.state.lock();
            let Some(sub) = st.subscribed.get_mut(name) else {
                return;
            };
            sub.users = sub.users.saturating_sub(1);
            if sub.users > 0 {
                return;
            }
            st.subscribed.remove(name).map(|s| s.listener)
        };
        if let Some(listener) = listener {
            self.unsubscribe(name, listener).await;
        }
    }

    pub(crate) async fn unsubscribe(&self, name: &str, listener: Arc<dyn NamingEventListener>) {
        let Ok(main) = self.slots.main() else {
            return;
        };
        if let Err(e) = limited(
            &format!("unsubscribing from `{name}`"),
            self.config.connect_timeout,
            main.unsubscribe(name.to_owned(), self.group(), Vec::new(), listener),
        )
        .await
        {
            tracing::debug!(target: "waypost::nacos", service = name, "{e}");
        }
    }

    /// A feed's last stream is gone: stop following its services (unless the registry closed,
    /// which unsubscribes everything itself).
    async fn end_feed(&self, id: u64) {
        if self.is_closed() {
            return;
        }
        let guard = self.subscribe_lock.lock().await;
        let feed = {
            let mut st = self.state.lock();
            let Some(i) = st.feeds.iter().position(|f| f.id == id) else {
                return;
            };
            st.feeds.swap_remove(i)
        };
        for name in &feed.names {
            self.release(&guard, name).await;
        }
    }

    /// Adds services that appeared on the server (or among ours) to full-watch feed `id`.
    async fn follow_new_services(&self, id: u64) -> Result<()> {
        for name in self.all_names().await? {
            self.follow_in(Some(id), &name).await?;
        }
        Ok(())
    }

    /// Makes full-watch feed `id` (or every full-watch feed) follow service `name` and publishes
    /// what it has.
    pub(crate) async fn follow_in(&self, id: Option<u64>, name: &str) -> Result<()> {
        let wanting = |st: &State| -> Vec<u64> {
            st.feeds
                .iter()
                .filter(|f| f.scope == Scope::All && id.is_none_or(|id| f.id == id))
                .filter(|f| !f.names.contains(name))
                .map(|f| f.id)
                .collect()
        };
        if wanting(&self.state.lock()).is_empty() {
            return Ok(());
        }
        let guard = self.subscribe_lock.lock().await;
        // Feeds start and end under this guard only: the list is stable while it is held.
        let ids = wanting(&self.state.lock());
        for _ in &ids {
            self.acquire(&guard, name).await?;
        }
        let mut st = self.state.lock();
        for id in ids {
            if let Some(f) = st.feed_mut(id) {
                f.names.insert(name.to_owned());
            }
        }
        st.publish(name);
        Ok(())
    }

    /// Queries `name` and publishes the answer, if some feed follows it.
    async fn refresh(&self, name: &str) -> Result<()> {
        if !self.state.lock().subscribed.contains_key(name) {
            return Ok(());
        }
        let list = self.slots.query(name).await?;
        let mut st = self.state.lock();
        st.set_foreign(name, &list);
        st.publish(name);
        Ok(())
    }

    /// After a reconnect: queries every followed service again and sends every stream a
    /// `Snapshot { reason: Reconnected }`.
    pub(crate) async fn resnapshot(&self) {
        let names: Vec<String> = self.state.lock().subscribed.keys().cloned().collect();
        for name in names {
            match self.slots.query(&name).await {
                Ok(list) => self.state.lock().set_foreign(&name, &list),
                Err(e) => {
                    tracing::warn!(target: "waypost::nacos", service = name.as_str(), "query after reconnect: {e}");
                    self.dirty.mark(&name);
                }
            }
        }
        let st = self.state.lock();
        for feed in &st.feeds {
            st.publish_snapshot(feed, SnapshotReason::Reconnected);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn pushes_mark_services_dirty_once_until_taken() {
        let dirty = Arc::new(Dirty::default());
        let listener = Listener {
            name: "a".into(),
            dirty: Arc::clone(&dirty),
        };
        let event = Arc::new(NamingChangeEvent {
            service_name: "a".into(),
            group_name: "g".into(),
            clusters: String::new(),
            instances: None,
        });
        listener.event(event.clone());
        listener.event(event);
        dirty.mark("b");
        let taken = tokio::time::timeout(Duration::from_secs(1), dirty.take())
            .await
            .unwrap();
        assert_eq!(taken.into_iter().collect::<Vec<_>>(), ["a", "b"]);
        // Nothing is dirty now: `take` waits for the next push.
        assert!(tokio::time::timeout(Duration::from_secs(60), dirty.take())
            .await
            .is_err());
        // A push while nobody waits is not lost.
        dirty.mark("c");
        let taken = tokio::time::timeout(Duration::from_secs(1), dirty.take())
            .await
            .unwrap();
        assert_eq!(taken.into_iter().collect::<Vec<_>>(), ["c"]);
    }
}
