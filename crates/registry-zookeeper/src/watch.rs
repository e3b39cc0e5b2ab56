//! Feeding the watch hubs: one persistent recursive ZooKeeper watch per watched scope (the prefix
//! for `watch`, `<prefix>/<name>` for `watch_service`), shared by every stream of that scope
//! through [`ScopedHubs`](waypost_core_types::ScopedHubs). The hub does the fan-out, the lag
//! resync and the stream ends; this module lists, follows the watch, fetches changed nodes and
//! resyncs the hub with `Snapshot { reason: Reconnected }` after a reconnect or a new session.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use waypost_core_types::backoff::Backoff;
use waypost_core_types::{
    Error, Result, Scope, ServiceEvent, ServiceInfo, SharedWatchStream, SnapshotReason, Tasks,
    WatchHub, WatchStream,
};
use zookeeper_client::{
    AddWatchMode, Client, Error as ZkError, EventType, PersistentWatcher, SessionState,
    WatchedEvent,
};

use crate::error::{convert, BACKEND};
use crate::keys::Place;
use crate::liveness::Slot;
use crate::ops::{self, Entry};
use crate::registry::Inner;

/// How soon a failed resync is tried again (doubling up to [`MAX_RETRY`]).
const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(2);

/// The version of an instance node the hub already holds, to skip notifications of changes that
/// a listing already included.
#[derive(Debug, Clone, Copy)]
struct Version {
    czxid: i64,
    version: i32,
}

type Versions = HashMap<String, Version>;

fn root(inner: &Inner, scope: &Scope) -> String {
    match scope {
        Scope::All => inner.paths.prefix().to_owned(),
        Scope::Service(name) => inner.paths.service(name),
    }
}

async fn add_watch(inner: &Inner, client: &Client, scope: &Scope) -> Result<PersistentWatcher> {
    let root = root(inner, scope);
    client
        .watch(&root, AddWatchMode::PersistentRecursive)
        .await
        .map_err(|e| convert(e, &format!("watch {root}")))
}

/// Lists the scope: the instances and their node versions.
async fn list(
    inner: &Inner,
    client: &Client,
    scope: &Scope,
) -> Result<(Vec<ServiceInfo>, Versions)> {
    let entries: Vec<Entry> = match scope {
        Scope::All => ops::list_all(inner, client).await?,
        Scope::Service(name) => ops::list_service(inner, client, name).await?,
    };
    let mut versions = Versions::with_capacity(entries.len());
    let mut services = Vec::with_capacity(entries.len());
    for e in entries {
        versions.insert(
            e.path,
            Version {
                czxid: e.czxid,
                version: e.version,
            },
        );
        services.push(e.info);
    }
    Ok((services, versions))
}

/// A stream over `scope`: from the live hub of that scope, or from a new one whose feed starts
/// here. The persistent watch is added before the listing, so no change between the two is lost
/// (changes the listing already holds are recognised by their version and skipped).
pub(crate) async fn subscribe(
    inner: &Arc<Inner>,
    tasks: &Tasks,
    scope: Scope,
) -> Result<WatchStream> {
    subscribe_with(inner, tasks, scope, WatchHub::subscribe).await
}

/// [`subscribe`] with the hub's own instances.
pub(crate) async fn subscribe_shared(
    inner: &Arc<Inner>,
    tasks: &Tasks,
    scope: Scope,
) -> Result<SharedWatchStream> {
    subscribe_with(inner, tasks, scope, WatchHub::subscribe_shared).await
}

async fn subscribe_with<S>(
    inner: &Arc<Inner>,
    tasks: &Tasks,
    scope: Scope,
    open: fn(&WatchHub, Scope) -> Result<S>,
) -> Result<S> {
    let start = |hub: WatchHub| {
        let scope = scope.clone();
        async move {
            // Subscribed before reading the session, so a session published meanwhile is seen.
            let mut sessions = inner.subscribe_slot();
            let slot = sessions.borrow_and_update().clone();
            let client = slot.client.clone().ok_or(Error::Closed)?;
            let watcher = add_watch(inner, &client, &scope).await?;
            let (services, versions) = list(inner, &client, &scope).await?;
            hub.replace(&scope, services, Some(SnapshotReason::Initial));
            let feed = Feed {
                sessions,
                inner: Arc::clone(inner),
                hub,
                scope,
                client,
                generation: slot.generation,
                watcher: Some(watcher),
                versions,
                disconnected: false,
                resync: None,
                backoff: Backoff::new(FIRST_RETRY, MAX_RETRY),
            };
            tasks.spawn(feed.run());
            Ok(())
        }
    };
    inner.hubs.subscribe_with(scope.clone(), start, open).await
}

/// The task that keeps one scope's hub current.
struct Feed {
    inner: Arc<Inner>,
    hub: WatchHub,
    scope: Scope,
    client: Client,
    generation: u64,
    /// `None` after the session ended (a terminal state must not be awaited again).
    watcher: Option<PersistentWatcher>,
    versions: Versions,
    /// The connection dropped; the next `SyncConnected` triggers a resync.
    disconnected: bool,
    /// When the next resync is due.
    resync: Option<Instant>,
    backoff: Backoff,
    sessions: watch::Receiver<Slot>,
}

async fn next_event(watcher: &mut Option<PersistentWatcher>) -> WatchedEvent {
    match watcher {
        Some(w) => w.changed().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What woke the feed.
enum Wake {
    Stop,
    Session,
    Resync,
    Event(WatchedEvent),
}

impl Feed {
    /// Runs until the last stream of the scope is dropped, the registry closes or its tasks stop.
    async fn run(mut self) {
        let inner = Arc::clone(&self.inner);
        let (scope, hub) = (self.scope.clone(), self.hub.clone());
        let mut unwatched = std::pin::pin!(inner.hubs.unwatched(&scope, &hub));
        loop {
            let wake = tokio::select! {
                biased;
                () = &mut unwatched => Wake::Stop,
                r = self.sessions.changed() => match r {
                    Ok(()) => Wake::Session,
                    Err(_) => Wake::Stop,
                },
                () = sleep_until(self.resync), if self.resync.is_some() => Wake::Resync,
                ev = next_event(&mut self.watcher), if self.watcher.is_some() => Wake::Event(ev),
            };
            let go_on = match wake {
                Wake::Stop => false,
                Wake::Session => self.on_session_published(),
                Wake::Resync => {
                    self.try_resync().await;
                    true
                }
                Wake::Event(ev) => {
                    self.on_event(ev).await;
                    true
                }
            };
            if !go_on {
                return;
            }
        }
    }

    fn schedule_resync(&mut self, after: Duration) {
        let at = Instant::now() + after;
        self.resync = Some(self.resync.map_or(at, |due| due.min(at)));
    }

    /// A new session was published (or the registry closed): `false` to stop.
    fn on_session_published(&mut self) -> bool {
        let slot = self.sessions.borrow_and_update().clone();
        let Some(client) = slot.client else {
            return false;
        };
        if slot.generation != self.generation {
            // A new session: the old watch is gone with the old session.
            self.generation = slot.generation;
            self.client = client;
            self.watcher = None;
            self.disconnected = false;
            self.schedule_resync(Duration::ZERO);
        }
        true
    }

    async fn try_resync(&mut self) {
        self.resync = None;
        match self.resync_now().await {
            Ok(()) => self.backoff.reset(),
            Err(e) => {
                let delay = self.backoff.next_delay();
                tracing::debug!(backend = BACKEND, retry_in = ?delay, "watch resync failed: {e}");
                self.schedule_resync(delay);
            }
        }
    }

    /// Adds the watch again, lists the scope and hands the hub a `Reconnected` snapshot.
    async fn resync_now(&mut self) -> Result<()> {
        // The watch is added again even when the session survived a reconnect:
        // zookeeper-client 0.11 re-sends only one-shot watches on reconnect (`SetWatches`
        // without the persistent ones), so the server no longer knows our persistent watch. The
        // new watcher is in place before the old one is dropped, so there is no gap.
        self.watcher = Some(add_watch(&self.inner, &self.client, &self.scope).await?);
        let (services, versions) = list(&self.inner, &self.client, &self.scope).await?;
        self.versions = versions;
        self.hub
            .replace(&self.scope, services, Some(SnapshotReason::Reconnected));
        Ok(())
    }

    async fn on_event(&mut self, ev: WatchedEvent) {
        match ev.event_type {
            EventType::Session => self.on_session_state(ev.session_state),
            EventType::NodeCreated | EventType::NodeDataChanged => self.on_written(&ev.path).await,
            EventType::NodeDeleted => self.on_deleted(&ev.path),
            EventType::NodeChildrenChanged => {}
        }
    }

    fn on_session_state(&mut self, state: SessionState) {
        match state {
            SessionState::Disconnected => self.disconnected = true,
            // Changes during the outage may not have been delivered (ZOOKEEPER-4698).
            SessionState::SyncConnected | SessionState::ConnectedReadOnly if self.disconnected => {
                self.disconnected = false;
                self.schedule_resync(Duration::ZERO);
            }
            // The watcher must not be awaited again: the supervisor publishes a new session and
            // `on_session_published` resyncs.
            s if s.is_terminated() => self.watcher = None,
            _ => {}
        }
    }

    /// The instance at `path` is gone for the hub (deleted, or now foreign data).
    fn on_deleted(&mut self, path: &str) {
        if self.versions.remove(path).is_none() {
            return;
        }
        if let Place::Instance { name, id } = self.inner.paths.place(path) {
            // The hub reports the last state it knew.
            self.hub
                .apply(ServiceEvent::deleted(ServiceInfo::new(id, name, "", 0)));
        }
    }

    async fn on_written(&mut self, path: &str) {
        let (name, id) = match self.inner.paths.place(path) {
            Place::Instance { name, id } if self.scope.covers(name) => {
                (name.to_owned(), id.to_owned())
            }
            _ => return,
        };
        let (data, stat) = match self.client.get_data(path).await {
            Ok(found) => found,
            // Deleted again already: its NodeDeleted follows.
            Err(ZkError::NoNode) => return,
            Err(e) => {
                tracing::debug!(
                    backend = BACKEND,
                    path,
                    "fetching a changed node failed: {e}"
                );
                self.schedule_resync(FIRST_RETRY);
                return;
            }
        };
        let Some(info) = self.inner.decode(path, &name, &id, &data) else {
            return self.on_deleted(path);
        };
        let event = match self.versions.get(path) {
            Some(k) if k.czxid == stat.czxid && k.version >= stat.version => return,
            Some(_) => ServiceEvent::updated(info),
            None => ServiceEvent::created(info),
        };
        self.versions.insert(
            path.to_owned(),
            Version {
                czxid: stat.czxid,
                version: stat.version,
            },
        );
        self.hub.apply(event);
    }
}
