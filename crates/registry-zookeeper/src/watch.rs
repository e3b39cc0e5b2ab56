//! Watch streams: a persistent recursive ZooKeeper watch turned into a snapshot followed by
//! `Created`/`Updated`/`Deleted` changes, with a new snapshot whenever changes may have been
//! missed (a reconnect, a new session, a watcher that fell behind).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream;
use tokio::sync::{mpsc, watch};
use waypost_core_types::{
    Result, ServiceEvent, ServiceInfo, SnapshotReason, WatchEvent, WatchStream,
};
use zookeeper_client::{
    AddWatchMode, Client, Error as ZkError, EventType, PersistentWatcher, SessionState,
    WatchedEvent,
};

use crate::errors::{convert, BACKEND};
use crate::ops::{self, Entry};
use crate::paths::Place;
use crate::session::{Inner, Slot};

/// How soon a failed resync is tried again (doubling up to [`MAX_RETRY`]).
const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(2);

/// What a watch covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Every service under the prefix.
    All,
    /// One service name.
    Service(String),
}

impl Scope {
    fn root(&self, inner: &Inner) -> String {
        match self {
            Scope::All => inner.paths.prefix().to_owned(),
            Scope::Service(name) => inner.paths.service(name),
        }
    }

    fn covers(&self, name: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Service(n) => n == name,
        }
    }
}

/// What a watch knows about one instance node.
#[derive(Debug, Clone)]
struct Known {
    info: ServiceInfo,
    czxid: i64,
    version: i32,
}

type KnownMap = HashMap<String, Known>;

fn to_known(entries: Vec<Entry>) -> KnownMap {
    entries
        .into_iter()
        .map(|e| {
            (
                e.path,
                Known {
                    info: e.info,
                    czxid: e.czxid,
                    version: e.version,
                },
            )
        })
        .collect()
}

fn snapshot_of(known: &KnownMap) -> Vec<ServiceInfo> {
    let mut services: Vec<ServiceInfo> = known.values().map(|k| k.info.clone()).collect();
    services.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
    services
}

async fn add_watch(inner: &Inner, client: &Client, scope: &Scope) -> Result<PersistentWatcher> {
    let root = scope.root(inner);
    client
        .watch(&root, AddWatchMode::PersistentRecursive)
        .await
        .map_err(|e| convert(e, &format!("watch {root}")))
}

async fn list(inner: &Inner, client: &Client, scope: &Scope) -> Result<KnownMap> {
    let entries = match scope {
        Scope::All => ops::list_all(inner, client).await?,
        Scope::Service(name) => ops::list_service(inner, client, name).await?,
    };
    Ok(to_known(entries))
}

/// Starts a watch: the persistent watch is added before the listing, so no change between the
/// two is lost (changes already in the listing are recognised by their version and skipped).
pub(crate) async fn start(inner: Arc<Inner>, scope: Scope) -> Result<WatchStream> {
    let slot = inner.slot();
    let client = slot
        .client
        .clone()
        .ok_or(waypost_core_types::Error::Closed)?;
    let watcher = add_watch(&inner, &client, &scope).await?;
    let known = list(&inner, &client, &scope).await?;
    let (tx, mut rx) = mpsc::channel(inner.config.watch_buffer.max(1));
    // The channel is empty, so this cannot fail for lack of room.
    let _ = tx.try_send(WatchEvent::Snapshot {
        services: snapshot_of(&known),
        reason: SnapshotReason::Initial,
    });
    let task = WatchTask {
        sessions: inner.subscribe_slot(),
        shutdown: inner.subscribe_shutdown(),
        inner,
        scope,
        client,
        generation: slot.generation,
        watcher: Some(watcher),
        known,
        tx,
        lagged: false,
        disconnected: false,
        resync: None,
        retry_delay: FIRST_RETRY,
    };
    tokio::spawn(task.run());
    Ok(Box::pin(stream::poll_fn(move |cx| rx.poll_recv(cx))))
}

/// A resync that is due, and why.
#[derive(Debug, Clone, Copy)]
struct PendingResync {
    reason: SnapshotReason,
    at: tokio::time::Instant,
}

struct WatchTask {
    inner: Arc<Inner>,
    scope: Scope,
    client: Client,
    generation: u64,
    /// `None` after the session ended (a terminal state must not be awaited again).
    watcher: Option<PersistentWatcher>,
    known: KnownMap,
    tx: mpsc::Sender<WatchEvent>,
    /// The consumer fell behind: changes are dropped until a `Lagged` snapshot is delivered.
    lagged: bool,
    /// The connection dropped; the next `SyncConnected` triggers a resync.
    disconnected: bool,
    resync: Option<PendingResync>,
    retry_delay: Duration,
    sessions: watch::Receiver<Slot>,
    shutdown: watch::Receiver<bool>,
}

async fn next_event(watcher: &mut Option<PersistentWatcher>) -> WatchedEvent {
    match watcher {
        Some(w) => w.changed().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What woke the watch task.
enum Wake {
    Stop,
    Session,
    Room(mpsc::OwnedPermit<WatchEvent>),
    Resync,
    Event(WatchedEvent),
}

/// Whether the loop goes on.
enum Flow {
    Continue,
    Stop,
}

impl WatchTask {
    async fn run(mut self) {
        loop {
            let wake = tokio::select! {
                biased;
                _ = self.shutdown.wait_for(|stop| *stop) => Wake::Stop,
                () = self.tx.closed() => Wake::Stop,
                r = self.sessions.changed() => match r {
                    Ok(()) => Wake::Session,
                    Err(_) => Wake::Stop,
                },
                permit = self.tx.clone().reserve_owned(), if self.lagged => match permit {
                    Ok(permit) => Wake::Room(permit),
                    Err(_) => Wake::Stop,
                },
                () = sleep_until(self.resync.map(|r| r.at)), if self.resync.is_some() => Wake::Resync,
                ev = next_event(&mut self.watcher), if self.watcher.is_some() => Wake::Event(ev),
            };
            let flow = match wake {
                Wake::Stop => Flow::Stop,
                Wake::Session => self.on_session_published(),
                Wake::Room(permit) => self.deliver_lagged_snapshot(permit).await,
                Wake::Resync => self.try_resync().await,
                Wake::Event(ev) => self.on_event(ev).await,
            };
            if matches!(flow, Flow::Stop) {
                return;
            }
        }
    }

    fn schedule_resync(&mut self, reason: SnapshotReason, after: Duration) {
        let at = tokio::time::Instant::now() + after;
        self.resync = Some(match self.resync {
            Some(p) if p.at <= at => p,
            _ => PendingResync { reason, at },
        });
    }

    /// Sends a change, or marks the watch lagged when the consumer's buffer is full.
    fn emit(&mut self, event: WatchEvent) -> Flow {
        if self.lagged {
            return Flow::Continue;
        }
        match self.tx.try_send(event) {
            Ok(()) => Flow::Continue,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::debug!(
                    backend = BACKEND,
                    "watcher fell behind; a resync snapshot will follow"
                );
                self.lagged = true;
                Flow::Continue
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Flow::Stop,
        }
    }

    fn on_session_published(&mut self) -> Flow {
        let slot = self.sessions.borrow_and_update().clone();
        let Some(client) = slot.client else {
            return Flow::Stop;
        };
        if slot.generation == self.generation {
            return Flow::Continue;
        }
        // A new session: the old watch is gone with the old session.
        self.generation = slot.generation;
        self.client = client;
        self.watcher = None;
        self.disconnected = false;
        self.schedule_resync(SnapshotReason::Reconnected, Duration::ZERO);
        Flow::Continue
    }

    async fn try_resync(&mut self) -> Flow {
        let Some(pending) = self.resync.take() else {
            return Flow::Continue;
        };
        match self.resync_now(pending.reason).await {
            Ok(flow) => {
                self.retry_delay = FIRST_RETRY;
                flow
            }
            Err(e) => {
                tracing::debug!(backend = BACKEND, "watch resync failed, retrying: {e}");
                let delay = self.retry_delay;
                self.retry_delay = (self.retry_delay * 2).min(MAX_RETRY);
                self.schedule_resync(pending.reason, delay);
                Flow::Continue
            }
        }
    }

    /// (Re-)adds the watch if needed, lists everything in scope and sends a snapshot.
    async fn resync_now(&mut self, reason: SnapshotReason) -> Result<Flow> {
        // After a reconnect the watch is added again even when the session survived:
        // zookeeper-client 0.11 re-sends only one-shot watches on reconnect (`SetWatches`
        // without the persistent ones), so the server no longer knows our persistent watch. The
        // new watcher is in place before the old one is dropped, so there is no gap.
        if self.watcher.is_none() || reason == SnapshotReason::Reconnected {
            self.watcher = Some(add_watch(&self.inner, &self.client, &self.scope).await?);
        }
        let known = list(&self.inner, &self.client, &self.scope).await?;
        let services = snapshot_of(&known);
        self.known = known;
        if self.lagged {
            // The lagged path delivers a full snapshot as soon as there is room.
            return Ok(Flow::Continue);
        }
        Ok(self.emit(WatchEvent::Snapshot { services, reason }))
    }

    async fn deliver_lagged_snapshot(&mut self, permit: mpsc::OwnedPermit<WatchEvent>) -> Flow {
        match list(&self.inner, &self.client, &self.scope).await {
            Ok(known) => {
                permit.send(WatchEvent::Snapshot {
                    services: snapshot_of(&known),
                    reason: SnapshotReason::Lagged,
                });
                self.known = known;
                self.lagged = false;
            }
            Err(e) => {
                drop(permit);
                tracing::debug!(
                    backend = BACKEND,
                    "lagged watch resync failed, retrying: {e}"
                );
                // Stay lagged; the reserve branch fires again. Pace it.
                tokio::time::sleep(FIRST_RETRY).await;
            }
        }
        Flow::Continue
    }

    async fn on_event(&mut self, ev: WatchedEvent) -> Flow {
        match ev.event_type {
            EventType::Session => self.on_session_state(ev.session_state),
            EventType::NodeCreated | EventType::NodeDataChanged => {
                if self.lagged {
                    return Flow::Continue;
                }
                self.on_written(&ev.path).await
            }
            EventType::NodeDeleted => {
                if self.lagged {
                    return Flow::Continue;
                }
                match self.known.remove(&ev.path) {
                    Some(k) => self.emit(WatchEvent::Change(ServiceEvent::deleted(k.info))),
                    None => Flow::Continue,
                }
            }
            EventType::NodeChildrenChanged => Flow::Continue,
        }
    }

    fn on_session_state(&mut self, state: SessionState) -> Flow {
        match state {
            SessionState::Disconnected => self.disconnected = true,
            // Changes during the outage may not have been delivered (ZOOKEEPER-4698).
            SessionState::SyncConnected | SessionState::ConnectedReadOnly if self.disconnected => {
                self.disconnected = false;
                self.schedule_resync(SnapshotReason::Reconnected, Duration::ZERO);
            }
            // The watcher must not be awaited again: the supervisor publishes a new session and
            // `on_session_published` resyncs.
            s if s.is_terminated() => self.watcher = None,
            _ => {}
        }
        Flow::Continue
    }

    async fn on_written(&mut self, path: &str) -> Flow {
        let (name, id) = match self.inner.paths.place(path) {
            Place::Instance { name, id } if self.scope.covers(name) => {
                (name.to_owned(), id.to_owned())
            }
            _ => return Flow::Continue,
        };
        let (data, stat) = match self.client.get_data(path).await {
            Ok(found) => found,
            // Deleted again already: its NodeDeleted follows.
            Err(ZkError::NoNode) => return Flow::Continue,
            Err(e) => {
                tracing::debug!(
                    backend = BACKEND,
                    path,
                    "fetching a changed node failed: {e}"
                );
                self.schedule_resync(SnapshotReason::Reconnected, FIRST_RETRY);
                return Flow::Continue;
            }
        };
        let Some(info) = self.inner.decode(path, &name, &id, &data) else {
            // It became foreign data: for our view, the instance is gone.
            return match self.known.remove(path) {
                Some(k) => self.emit(WatchEvent::Change(ServiceEvent::deleted(k.info))),
                None => Flow::Continue,
            };
        };
        let event = match self.known.get(path) {
            Some(k) if k.czxid == stat.czxid && k.version >= stat.version => return Flow::Continue,
            Some(_) => ServiceEvent::updated(info.clone()),
            None => ServiceEvent::created(info.clone()),
        };
        self.known.insert(
            path.to_owned(),
            Known {
                info,
                czxid: stat.czxid,
                version: stat.version,
            },
        );
        self.emit(WatchEvent::Change(event))
    }
}
