//! Watches: one hub per registry keeps a view of every watched service name, fed by blocking
//! queries on `/v1/health/service/:name` (one loop per name) and, for whole-registry watches,
//! on `/v1/catalog/services` (to learn names). New results are diffed against the view into
//! `Created`/`Updated`/`Deleted`.
//!
//! Consul's rules are followed: results older than the view (by `X-Consul-Index`) are ignored;
//! an index that goes backwards (a reset or restore) or a loop that recovers from errors
//! replaces the view and sends `Snapshot { reason: Reconnected }`; a loop never spins (a token
//! bucket spaces queries, failures back off with jitter).
//!
//! Writes made through the registry refresh the view of their service before the write
//! returns, so a watcher sees each of them as its own event, in order, even when they happen
//! faster than a blocking query round-trip.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, warn};
use waypost_core_types::{
    Error, Result, ServiceEvent, ServiceInfo, SnapshotReason, WatchEvent, WatchStream,
};

use crate::backoff::TokenBucket;
use crate::client::ConsulClient;
use crate::read::{read_instances, read_names, Blocking, Scope};
use waypost_core_types::backoff::delay as backoff;

/// One name read for a new view: name, index, instances.
type Fetched = (String, u64, BTreeMap<String, ServiceInfo>);

/// Settings of the watch loops.
#[derive(Debug, Clone)]
pub(crate) struct WatchSettings {
    pub(crate) wait: Duration,
    pub(crate) min_interval: Duration,
    pub(crate) backoff_initial: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) buffer: usize,
}

pub(crate) struct Hub {
    client: ConsulClient,
    scope: Scope,
    settings: WatchSettings,
    state: Mutex<HubState>,
}

#[derive(Default)]
struct HubState {
    closed: bool,
    views: HashMap<String, View>,
    subs: Vec<Sub>,
    next_id: u64,
    catalog_task: Option<JoinHandle<()>>,
    catalog_index: u64,
}

struct View {
    index: u64,
    instances: BTreeMap<String, ServiceInfo>,
    task: Option<JoinHandle<()>>,
    /// Subscribers of this name only.
    named_subs: usize,
}

impl Drop for View {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

struct Sub {
    id: u64,
    filter: Option<String>,
    tx: mpsc::Sender<WatchEvent>,
    lagged: Arc<AtomicBool>,
}

/// How a result is applied to a view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Diff against the view, if not older than it.
    Diff,
    /// Replace the view and send a `Reconnected` snapshot.
    Resync,
}

impl HubState {
    fn full_subs(&self) -> usize {
        self.subs.iter().filter(|s| s.filter.is_none()).count()
    }

    fn snapshot(&self, filter: Option<&str>) -> Vec<ServiceInfo> {
        match filter {
            Some(name) => self
                .views
                .get(name)
                .map(|v| v.instances.values().cloned().collect())
                .unwrap_or_default(),
            None => {
                let mut all: Vec<ServiceInfo> = self
                    .views
                    .values()
                    .flat_map(|v| v.instances.values().cloned())
                    .collect();
                all.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
                all
            }
        }
    }

    fn send(&mut self, name: &str, ev: &WatchEvent) {
        for s in &self.subs {
            if s.filter.as_deref().is_some_and(|f| f != name) {
                continue;
            }
            if s.lagged.load(Ordering::Acquire) {
                continue;
            }
            if let Err(mpsc::error::TrySendError::Full(_)) = s.tx.try_send(ev.clone()) {
                debug!(service = %name, "consul: a watcher fell behind; it will get a snapshot");
                s.lagged.store(true, Ordering::Release);
            }
        }
    }

    fn apply(&mut self, name: &str, index: u64, new: BTreeMap<String, ServiceInfo>, mode: Mode) {
        let Some(view) = self.views.get_mut(name) else {
            return;
        };
        if mode == Mode::Diff && index < view.index {
            debug!(service = %name, index, view = view.index, "consul: ignoring an older result");
            return;
        }
        view.index = index;
        let old = std::mem::replace(&mut view.instances, new);
        if mode == Mode::Resync {
            let subs: Vec<(u64, Option<String>)> = self
                .subs
                .iter()
                .filter(|s| s.filter.as_deref().is_none_or(|f| f == name))
                .map(|s| (s.id, s.filter.clone()))
                .collect();
            for (id, filter) in subs {
                let services = self.snapshot(filter.as_deref());
                if let Some(s) = self.subs.iter().find(|s| s.id == id) {
                    let ev = WatchEvent::Snapshot {
                        services,
                        reason: SnapshotReason::Reconnected,
                    };
                    if s.tx.try_send(ev).is_err() {
                        s.lagged.store(true, Ordering::Release);
                    }
                }
            }
            return;
        }
        let mut events = Vec::new();
        {
            let view = &self.views[name];
            for (id, s) in &view.instances {
                match old.get(id) {
                    None => events.push(ServiceEvent::created(s.clone())),
                    Some(o) if o != s => events.push(ServiceEvent::updated(s.clone())),
                    Some(_) => {}
                }
            }
            for (id, o) in &old {
                if !view.instances.contains_key(id) {
                    events.push(ServiceEvent::deleted(o.clone()));
                }
            }
        }
        for ev in events {
            self.send(name, &WatchEvent::Change(ev));
        }
    }
}

impl Hub {
    pub(crate) fn new(client: ConsulClient, scope: Scope, settings: WatchSettings) -> Arc<Hub> {
        Arc::new(Hub {
            client,
            scope,
            settings,
            state: Mutex::new(HubState::default()),
        })
    }

    /// Starts a watch of one name (`Some`) or of everything (`None`).
    pub(crate) async fn subscribe(self: &Arc<Self>, filter: Option<String>) -> Result<WatchStream> {
        let names: Vec<String> = match &filter {
            Some(n) => vec![n.clone()],
            None => read_names(&self.client, None).await?.1,
        };
        let missing: Vec<String> = {
            let st = self.state.lock();
            if st.closed {
                return Err(Error::Closed);
            }
            names
                .iter()
                .filter(|n| !st.views.contains_key(*n))
                .cloned()
                .collect()
        };
        let fetched: Vec<Result<Fetched>> = futures_util::stream::iter(missing)
            .map(|name| async move {
                let (idx, inst) = read_instances(&self.client, &self.scope, &name, None).await?;
                Ok((name, idx, inst))
            })
            .buffer_unordered(8)
            .collect()
            .await;
        let (tx, rx) = mpsc::channel(self.settings.buffer.max(1));
        let lagged = Arc::new(AtomicBool::new(false));
        let id;
        {
            let mut st = self.state.lock();
            if st.closed {
                return Err(Error::Closed);
            }
            for f in fetched {
                let (name, idx, inst) = f?;
                st.views.entry(name).or_insert_with(|| View {
                    index: idx,
                    instances: inst,
                    task: None,
                    named_subs: 0,
                });
            }
            if let Some(name) = &filter {
                if let Some(v) = st.views.get_mut(name) {
                    v.named_subs += 1;
                }
            } else if st.catalog_task.is_none() {
                st.catalog_task = Some(tokio::spawn(catalog_loop(Arc::downgrade(self))));
            }
            for name in &names {
                self.ensure_task(&mut st, name);
            }
            id = st.next_id;
            st.next_id += 1;
            let services = st.snapshot(filter.as_deref());
            // A fresh channel has room for the first item.
            let _ = tx.try_send(WatchEvent::Snapshot {
                services,
                reason: SnapshotReason::Initial,
            });
            st.subs.push(Sub {
                id,
                filter: filter.clone(),
                tx,
                lagged: lagged.clone(),
            });
        }
        Ok(Box::pin(HubStream {
            rx,
            lagged,
            hub: Arc::downgrade(self),
            id,
            filter,
        }))
    }

    fn ensure_task(self: &Arc<Self>, st: &mut HubState, name: &str) {
        if let Some(v) = st.views.get_mut(name) {
            if v.task.is_none() {
                v.task = Some(tokio::spawn(name_loop(
                    Arc::downgrade(self),
                    name.to_owned(),
                )));
            }
        }
    }

    fn unsubscribe(&self, id: u64) {
        let mut st = self.state.lock();
        let Some(pos) = st.subs.iter().position(|s| s.id == id) else {
            return;
        };
        let sub = st.subs.remove(pos);
        if let Some(name) = &sub.filter {
            if let Some(v) = st.views.get_mut(name) {
                v.named_subs = v.named_subs.saturating_sub(1);
            }
        }
        let full = st.full_subs();
        if full == 0 {
            if let Some(t) = st.catalog_task.take() {
                t.abort();
            }
            st.views.retain(|_, v| v.named_subs > 0);
        }
    }

    /// After a write through the registry: read `name` now and apply it, so watchers see the
    /// write as its own event before the write call returns.
    pub(crate) async fn refresh(self: &Arc<Self>, name: &str) {
        let needed = {
            let st = self.state.lock();
            !st.closed && (st.views.contains_key(name) || st.full_subs() > 0)
        };
        if !needed {
            return;
        }
        match read_instances(&self.client, &self.scope, name, None).await {
            Ok((idx, inst)) => {
                let mut st = self.state.lock();
                if st.closed {
                    return;
                }
                if !st.views.contains_key(name) {
                    if st.full_subs() == 0 || inst.is_empty() {
                        return;
                    }
                    st.views.insert(
                        name.to_owned(),
                        View {
                            index: 0,
                            instances: BTreeMap::new(),
                            task: None,
                            named_subs: 0,
                        },
                    );
                    self.ensure_task(&mut st, name);
                }
                st.apply(name, idx, inst, Mode::Diff);
            }
            Err(e) => {
                debug!(service = %name, "consul: refresh after a write failed ({e}); the watch loop catches up")
            }
        }
    }

    /// Ends every stream and stops every loop.
    pub(crate) fn close(&self) {
        let mut st = self.state.lock();
        st.closed = true;
        st.subs.clear();
        st.views.clear();
        if let Some(t) = st.catalog_task.take() {
            t.abort();
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.close();
    }
}

async fn name_loop(hub: Weak<Hub>, name: String) {
    let (client, scope, settings) = match hub.upgrade() {
        Some(h) => (h.client.clone(), h.scope.clone(), h.settings.clone()),
        None => return,
    };
    let mut bucket = TokenBucket::new(2, settings.min_interval);
    let mut failures = 0u32;
    loop {
        let requested = {
            let Some(h) = hub.upgrade() else { return };
            let st = h.state.lock();
            match st.views.get(&name) {
                Some(v) => v.index.max(1),
                None => return,
            }
        };
        bucket.acquire().await;
        let res = read_instances(
            &client,
            &scope,
            &name,
            Some(Blocking {
                index: requested,
                wait: settings.wait,
            }),
        )
        .await;
        let Some(h) = hub.upgrade() else { return };
        match res {
            Ok((idx, inst)) => {
                let mode = if failures > 0 {
                    debug!(service = %name, "consul: watch recovered; resyncing");
                    Mode::Resync
                } else if idx < requested {
                    debug!(service = %name, idx, requested, "consul: index went backwards; resyncing");
                    Mode::Resync
                } else {
                    Mode::Diff
                };
                failures = 0;
                h.state.lock().apply(&name, idx, inst, mode);
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                drop(h);
                let d = backoff(failures, settings.backoff_initial, settings.backoff_max);
                warn!(service = %name, attempt = failures, "consul: watch query failed: {e}; retrying in {d:?}");
                tokio::time::sleep(d).await;
            }
        }
    }
}

async fn catalog_loop(hub: Weak<Hub>) {
    let (client, scope, settings) = match hub.upgrade() {
        Some(h) => (h.client.clone(), h.scope.clone(), h.settings.clone()),
        None => return,
    };
    let mut bucket = TokenBucket::new(2, settings.min_interval);
    let mut failures = 0u32;
    loop {
        let requested = match hub.upgrade() {
            Some(h) => h.state.lock().catalog_index.max(1),
            None => return,
        };
        bucket.acquire().await;
        let res = read_names(
            &client,
            Some(Blocking {
                index: requested,
                wait: settings.wait,
            }),
        )
        .await;
        match res {
            Ok((idx, names)) => {
                failures = 0;
                let Some(h) = hub.upgrade() else { return };
                let missing: Vec<String> = {
                    let mut st = h.state.lock();
                    st.catalog_index = idx;
                    // Names gone from the catalog (and not watched by name): their instances
                    // are deleted, unless the view is newer than this answer.
                    let gone: Vec<String> = st
                        .views
                        .iter()
                        .filter(|(n, v)| v.named_subs == 0 && v.index <= idx && !names.contains(n))
                        .map(|(n, _)| n.clone())
                        .collect();
                    for n in gone {
                        st.apply(&n, idx, BTreeMap::new(), Mode::Diff);
                        st.views.remove(&n);
                    }
                    names
                        .into_iter()
                        .filter(|n| !st.views.contains_key(n))
                        .collect()
                };
                drop(h);
                for name in missing {
                    let r = read_instances(&client, &scope, &name, None).await;
                    let Some(h) = hub.upgrade() else { return };
                    match r {
                        Ok((idx, inst)) => {
                            let mut st = h.state.lock();
                            if st.closed || st.full_subs() == 0 {
                                return;
                            }
                            if !st.views.contains_key(&name) {
                                st.views.insert(
                                    name.clone(),
                                    View {
                                        index: 0,
                                        instances: BTreeMap::new(),
                                        task: None,
                                        named_subs: 0,
                                    },
                                );
                                h.ensure_task(&mut st, &name);
                            }
                            st.apply(&name, idx, inst, Mode::Diff);
                        }
                        Err(e) => {
                            // The next catalog answer lists it again.
                            warn!(service = %name, "consul: reading a new service failed: {e}");
                            h.state.lock().catalog_index = 0;
                        }
                    }
                }
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let d = backoff(failures, settings.backoff_initial, settings.backoff_max);
                warn!(
                    attempt = failures,
                    "consul: catalog watch failed: {e}; retrying in {d:?}"
                );
                tokio::time::sleep(d).await;
            }
        }
    }
}

struct HubStream {
    rx: mpsc::Receiver<WatchEvent>,
    lagged: Arc<AtomicBool>,
    hub: Weak<Hub>,
    id: u64,
    filter: Option<String>,
}

impl Stream for HubStream {
    type Item = WatchEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<WatchEvent>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(v) => return Poll::Ready(v),
            Poll::Pending => {}
        }
        if self.lagged.load(Ordering::Acquire) {
            let Some(hub) = self.hub.upgrade() else {
                return Poll::Ready(None);
            };
            let st = hub.state.lock();
            if st.closed {
                return Poll::Ready(None);
            }
            // Under the hub lock nothing is sent: drop what queued up since, then resync.
            while self.rx.try_recv().is_ok() {}
            self.lagged.store(false, Ordering::Release);
            let services = st.snapshot(self.filter.as_deref());
            return Poll::Ready(Some(WatchEvent::Snapshot {
                services,
                reason: SnapshotReason::Lagged,
            }));
        }
        Poll::Pending
    }
}

impl Drop for HubStream {
    fn drop(&mut self) {
        if let Some(h) = self.hub.upgrade() {
            h.unsubscribe(self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use waypost_core_types::{Health, ServiceEventType};

    fn svc(id: &str, version: &str) -> ServiceInfo {
        ServiceInfo::new(id, "web", "127.0.0.1", 80).with_version(version)
    }

    fn map(items: &[ServiceInfo]) -> BTreeMap<String, ServiceInfo> {
        items.iter().map(|s| (s.id.clone(), s.clone())).collect()
    }

    fn state_with_sub(cap: usize) -> (HubState, mpsc::Receiver<WatchEvent>, Arc<AtomicBool>) {
        let mut st = HubState::default();
        st.views.insert(
            "web".into(),
            View {
                index: 10,
                instances: map(&[svc("a", "1")]),
                task: None,
                named_subs: 1,
            },
        );
        let (tx, rx) = mpsc::channel(cap);
        let lagged = Arc::new(AtomicBool::new(false));
        st.subs.push(Sub {
            id: 0,
            filter: Some("web".into()),
            tx,
            lagged: lagged.clone(),
        });
        (st, rx, lagged)
    }

    fn kinds(rx: &mut mpsc::Receiver<WatchEvent>) -> Vec<(ServiceEventType, String)> {
        let mut out = Vec::new();
        while let Ok(ev) = rx.try_recv() {
            match ev {
                WatchEvent::Change(c) => out.push((c.kind, c.service.id)),
                other => panic!("unexpected {other:?}"),
            }
        }
        out
    }

    #[test]
    fn newer_results_are_diffed_into_events() {
        let (mut st, mut rx, _) = state_with_sub(16);
        st.apply("web", 11, map(&[svc("a", "2"), svc("b", "1")]), Mode::Diff);
        assert_eq!(
            kinds(&mut rx),
            vec![
                (ServiceEventType::Updated, "a".into()),
                (ServiceEventType::Created, "b".into())
            ]
        );
        st.apply("web", 12, map(&[svc("b", "1")]), Mode::Diff);
        assert_eq!(
            kinds(&mut rx),
            vec![(ServiceEventType::Deleted, "a".into())]
        );
        // Same index, same data (a blocking query that timed out): nothing.
        st.apply("web", 12, map(&[svc("b", "1")]), Mode::Diff);
        assert!(kinds(&mut rx).is_empty());
    }

    #[test]
    fn older_results_are_ignored() {
        let (mut st, mut rx, _) = state_with_sub(16);
        st.apply("web", 9, BTreeMap::new(), Mode::Diff);
        assert!(
            kinds(&mut rx).is_empty(),
            "a stale answer must not roll the view back"
        );
        assert_eq!(st.views["web"].index, 10);
        assert_eq!(st.views["web"].instances.len(), 1);
    }

    #[test]
    fn resync_replaces_the_view_with_a_reconnected_snapshot() {
        let (mut st, mut rx, _) = state_with_sub(16);
        let unhealthy = svc("c", "1").with_health(Health::Unhealthy);
        st.apply(
            "web",
            3,
            map(std::slice::from_ref(&unhealthy)),
            Mode::Resync,
        );
        match rx.try_recv() {
            Ok(WatchEvent::Snapshot {
                services,
                reason: SnapshotReason::Reconnected,
            }) => assert_eq!(services, vec![unhealthy]),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            st.views["web"].index, 3,
            "a lower index is taken after a reset"
        );
    }

    #[test]
    fn a_full_queue_marks_the_watcher_lagged_and_drops_events() {
        let (mut st, mut rx, lagged) = state_with_sub(1);
        st.apply("web", 11, map(&[svc("a", "1"), svc("b", "1")]), Mode::Diff);
        st.apply(
            "web",
            12,
            map(&[svc("a", "1"), svc("b", "1"), svc("c", "1")]),
            Mode::Diff,
        );
        assert!(lagged.load(Ordering::Acquire));
        assert_eq!(
            kinds(&mut rx),
            vec![(ServiceEventType::Created, "b".into())]
        );
        st.apply("web", 13, map(&[svc("a", "1")]), Mode::Diff);
        assert!(kinds(&mut rx).is_empty(), "nothing is queued while lagged");
    }

    #[test]
    fn other_names_are_not_sent_to_a_named_watcher() {
        let (mut st, mut rx, _) = state_with_sub(16);
        st.views.insert(
            "db".into(),
            View {
                index: 1,
                instances: BTreeMap::new(),
                task: None,
                named_subs: 0,
            },
        );
        let mut db = svc("d", "1");
        db.name = "db".into();
        st.apply("db", 2, map(&[db]), Mode::Diff);
        assert!(kinds(&mut rx).is_empty());
    }
}
