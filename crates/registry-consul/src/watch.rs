//! Watches: Consul's blocking queries feeding the shared watch hub.
//!
//! Each watched scope has one hub ([`ScopedHubs`]) and one feed task:
//! - `watch_service(name)`: a blocking-query loop on `/v1/health/service/:name`;
//! - `watch()`: a blocking-query loop on `/v1/catalog/services` (to learn names) and one loop per
//!   listed name.
//!
//! A blocking query hands over the whole list of a name, so each answer replaces that name in
//! the hub (`hub.replace(&Scope::Service(name), list, None)`), which turns it into
//! `Created`/`Updated`/`Deleted` events. Consul's rules are followed: an answer older than what
//! the hub holds (by `X-Consul-Index`) is ignored; an index that goes backwards (a reset or
//! restore) or a loop that recovers from errors replaces the scope with a
//! `Snapshot { reason: Reconnected }`; a loop never spins (a token bucket spaces queries,
//! failures back off with jitter). The hub handles slow consumers and stream ends.
//!
//! Writes made through the registry refresh the watched views of their service before the write
//! returns, so a watcher sees each of them as its own event, in order, even when they happen
//! faster than a blocking query round-trip.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use parking_lot::Mutex;
use tracing::{debug, warn};
use waypost_core_types::backoff::Backoff;
use waypost_core_types::{
    Result, Scope, ScopedHubs, ServiceInfo, SharedWatchStream, SnapshotReason, Tasks, WatchHub,
    WatchStream,
};

use crate::client::ConsulClient;
use crate::pacing::TokenBucket;
use crate::read::{infos, read_instances, read_names, Blocking, Filter};

/// Settings of the watch loops.
#[derive(Debug, Clone)]
pub(crate) struct WatchSettings {
    pub(crate) wait: Duration,
    pub(crate) min_interval: Duration,
    pub(crate) backoff_initial: Duration,
    pub(crate) backoff_max: Duration,
    /// Queue length of each stream (the hub's capacity).
    pub(crate) buffer: usize,
}

/// The watches of one registry.
pub(crate) struct Watches {
    client: ConsulClient,
    filter: Filter,
    settings: WatchSettings,
    hubs: ScopedHubs,
    /// The feed of every live hub, for refreshes after writes.
    feeds: Mutex<Vec<Arc<Feed>>>,
}

/// What feeds one hub: the `X-Consul-Index` of what it holds, per name.
struct Feed {
    scope: Scope,
    hub: WatchHub,
    /// Held while the hub is changed, so answers of several loops apply one at a time.
    indexes: Mutex<HashMap<String, u64>>,
    /// The names the catalog lists (whole-registry feeds only).
    listed: Mutex<BTreeSet<String>>,
}

impl Feed {
    fn new(scope: Scope, hub: WatchHub) -> Self {
        Feed {
            scope,
            hub,
            indexes: Mutex::new(HashMap::new()),
            listed: Mutex::new(BTreeSet::new()),
        }
    }

    /// The index of what the hub holds of `name` (0: nothing read yet).
    fn index(&self, name: &str) -> u64 {
        self.indexes.lock().get(name).copied().unwrap_or(0)
    }

    /// Puts one answer for `name`, read at `index`, into the hub. Without a reason, an answer
    /// older than what the hub holds is ignored; with one (a reset, a recovery), it is taken
    /// whatever its index, and the streams of this feed get a snapshot with that reason.
    fn apply(
        &self,
        name: &str,
        index: u64,
        list: Vec<ServiceInfo>,
        reason: Option<SnapshotReason>,
    ) -> bool {
        let mut indexes = self.indexes.lock();
        let known = indexes.get(name).copied().unwrap_or(0);
        if reason.is_none() && index < known {
            debug!(service = %name, index, known, "consul: ignoring an older result");
            return false;
        }
        indexes.insert(name.to_owned(), index);
        let scope = Scope::Service(name.to_owned());
        match (&self.scope, reason) {
            (Scope::All, Some(reason)) => {
                // A whole-registry stream is resynced too: the rest of the view with this name's
                // new list (consistent, as every change of this hub holds `indexes`).
                let mut all: Vec<ServiceInfo> = self.hub.with_view(|v| {
                    v.iter(&Scope::All)
                        .filter(|s| s.name != name)
                        .map(|s| ServiceInfo::clone(s))
                        .collect()
                });
                all.extend(list);
                self.hub.replace(&Scope::All, all, Some(reason));
            }
            (_, reason) => {
                self.hub.replace(&scope, list, reason);
            }
        }
        true
    }

    /// Replaces the whole view (a whole-registry feed after a reset or recovery of the catalog)
    /// with what was read of each listed name. Indexes are taken as read, even lower ones (a
    /// reset); should a write's refresh have put a newer answer in meanwhile, the name's loop
    /// reads it again at once.
    fn apply_all(&self, read: Vec<(String, u64, Vec<ServiceInfo>)>, reason: SnapshotReason) {
        let mut indexes = self.indexes.lock();
        let mut all = Vec::new();
        for (name, index, list) in read {
            indexes.insert(name, index);
            all.extend(list);
        }
        self.hub.replace(&Scope::All, all, Some(reason));
    }

    /// Whether a loop on `name` should keep running after an empty answer.
    fn still_listed(&self, name: &str) -> bool {
        match &self.scope {
            Scope::Service(_) => true,
            Scope::All => self.listed.lock().contains(name),
        }
    }
}

impl Watches {
    pub(crate) fn new(client: ConsulClient, filter: Filter, settings: WatchSettings) -> Self {
        Watches {
            hubs: ScopedHubs::new(crate::client::BACKEND, settings.buffer),
            client,
            filter,
            settings,
            feeds: Mutex::new(Vec::new()),
        }
    }

    /// A stream over `scope`, sharing the hub and blocking queries of live streams of the same
    /// scope; the first stream of a scope starts its feed task on `tasks`.
    pub(crate) async fn subscribe(
        self: &Arc<Self>,
        tasks: &Tasks,
        scope: Scope,
    ) -> Result<WatchStream> {
        self.subscribe_with(tasks, scope, WatchHub::subscribe).await
    }

    /// [`subscribe`](Self::subscribe) with the hub's own instances.
    pub(crate) async fn subscribe_shared(
        self: &Arc<Self>,
        tasks: &Tasks,
        scope: Scope,
    ) -> Result<SharedWatchStream> {
        self.subscribe_with(tasks, scope, WatchHub::subscribe_shared)
            .await
    }

    async fn subscribe_with<S>(
        self: &Arc<Self>,
        tasks: &Tasks,
        scope: Scope,
        open: fn(&WatchHub, Scope) -> Result<S>,
    ) -> Result<S> {
        let start_scope = scope.clone();
        self.hubs
            .subscribe_with(
                scope,
                |hub| async move {
                    let feed = Arc::new(Feed::new(start_scope, hub));
                    let run = match &feed.scope {
                        Scope::Service(name) => {
                            let (index, list) =
                                read_instances(&self.client, &self.filter, name, None).await?;
                            feed.apply(name, index, infos(list), Some(SnapshotReason::Initial));
                            Arc::clone(self)
                                .name_loop(Arc::clone(&feed), name.clone())
                                .map(drop)
                                .boxed()
                        }
                        Scope::All => {
                            let (catalog_index, names) =
                                read_names(&self.client, &self.filter, None).await?;
                            let read = self.read_all(names.clone()).await?;
                            *feed.listed.lock() = names.iter().cloned().collect();
                            feed.apply_all(read, SnapshotReason::Initial);
                            Arc::clone(self)
                                .feed_all(Arc::clone(&feed), catalog_index, names)
                                .boxed()
                        }
                    };
                    self.feeds.lock().push(Arc::clone(&feed));
                    // Dropped with the task (or with the task refused after close).
                    let registered = FeedGuard {
                        watches: Arc::clone(self),
                        feed,
                    };
                    tasks.spawn(async move {
                        let FeedGuard { watches, feed } = &registered;
                        let unwatched = watches.hubs.unwatched(&feed.scope, &feed.hub);
                        tokio::select! {
                            () = unwatched => {}
                            () = run => {}
                        }
                    });
                    Ok(())
                },
                open,
            )
            .await
    }

    /// Reads `name` now and puts it in every hub that watches it, so watchers see a write made
    /// through this registry before the write returns.
    pub(crate) async fn refresh(&self, name: &str) {
        let feeds: Vec<Arc<Feed>> = self
            .feeds
            .lock()
            .iter()
            .filter(|f| f.scope.covers(name))
            .cloned()
            .collect();
        if feeds.is_empty() {
            return;
        }
        match read_instances(&self.client, &self.filter, name, None).await {
            Ok((index, list)) => {
                let list = infos(list);
                for feed in feeds {
                    feed.apply(name, index, list.clone(), None);
                }
            }
            Err(e) => {
                debug!(service = %name, "consul: refresh after a write failed ({e}); the watch loop catches up")
            }
        }
    }

    /// Ends every stream; the feed tasks stop with the registry's tasks.
    pub(crate) fn close(&self) {
        self.hubs.close();
        self.feeds.lock().clear();
    }

    /// Reads the instances of every name, 8 at a time.
    async fn read_all(&self, names: Vec<String>) -> Result<Vec<(String, u64, Vec<ServiceInfo>)>> {
        let read: Vec<Result<(String, u64, Vec<ServiceInfo>)>> = futures_util::stream::iter(names)
            .map(|name| async move {
                let (index, list) = read_instances(&self.client, &self.filter, &name, None).await?;
                Ok((name, index, infos(list)))
            })
            .buffer_unordered(8)
            .collect()
            .await;
        read.into_iter().collect()
    }

    /// Blocking queries on one name, forever (a whole-registry feed's loop ends once the name
    /// is empty and gone from the catalog). Returns the name.
    async fn name_loop(self: Arc<Self>, feed: Arc<Feed>, name: String) -> String {
        let s = &self.settings;
        let mut bucket = TokenBucket::new(2, s.min_interval);
        let mut backoff = Backoff::new(s.backoff_initial, s.backoff_max);
        loop {
            let requested = feed.index(&name).max(1);
            bucket.acquire().await;
            let blocking = Blocking {
                index: requested,
                wait: s.wait,
            };
            match read_instances(&self.client, &self.filter, &name, Some(blocking)).await {
                Ok((index, list)) => {
                    let reason = if backoff.attempts() > 0 {
                        debug!(service = %name, "consul: watch recovered; resyncing");
                        Some(SnapshotReason::Reconnected)
                    } else if index < requested {
                        debug!(service = %name, index, requested, "consul: index went backwards; resyncing");
                        Some(SnapshotReason::Reconnected)
                    } else {
                        None
                    };
                    backoff.reset();
                    let empty = list.is_empty();
                    feed.apply(&name, index, infos(list), reason);
                    if empty && !feed.still_listed(&name) {
                        return name;
                    }
                }
                Err(e) => {
                    let d = backoff.next_delay();
                    warn!(service = %name, attempt = backoff.attempts(), "consul: watch query failed: {e}; retrying in {d:?}");
                    tokio::time::sleep(d).await;
                }
            }
        }
    }

    /// A whole-registry feed: the catalog's blocking queries, and one loop per listed name.
    async fn feed_all(self: Arc<Self>, feed: Arc<Feed>, catalog_index: u64, names: Vec<String>) {
        let mut loops = FuturesUnordered::new();
        let mut running = BTreeSet::new();
        for name in names {
            running.insert(name.clone());
            loops.push(Arc::clone(&self).name_loop(Arc::clone(&feed), name));
        }
        let catalog = catalog_answers(Arc::clone(&self), catalog_index);
        tokio::pin!(catalog);
        loop {
            tokio::select! {
                Some(answer) = catalog.next() => {
                    let CatalogAnswer { index, names, reason } = answer;
                    *feed.listed.lock() = names.iter().cloned().collect();
                    match reason {
                        Some(reason) => match self.read_all(names.clone()).await {
                            Ok(read) => feed.apply_all(read, reason),
                            // The name loops catch up on their own.
                            Err(e) => warn!("consul: re-reading the catalog's services failed: {e}"),
                        },
                        None => {
                            // Names gone from the catalog: their instances are deleted, unless
                            // the hub holds a newer answer.
                            let held: Vec<String> =
                                feed.hub.with_view(|v| v.names().map(str::to_owned).collect());
                            for name in held.iter().filter(|n| !names.contains(n)) {
                                feed.apply(name, index, Vec::new(), None);
                            }
                        }
                    }
                    for name in names {
                        if running.insert(name.clone()) {
                            loops.push(Arc::clone(&self).name_loop(Arc::clone(&feed), name));
                        }
                    }
                }
                Some(name) = loops.next(), if !loops.is_empty() => {
                    // Listed again since the loop decided to end: keep watching it.
                    if feed.still_listed(&name) {
                        loops.push(Arc::clone(&self).name_loop(Arc::clone(&feed), name));
                    } else {
                        running.remove(&name);
                    }
                }
                else => return,
            }
        }
    }
}

/// Removes a feed from the refresh list when its task ends.
struct FeedGuard {
    watches: Arc<Watches>,
    feed: Arc<Feed>,
}

impl Drop for FeedGuard {
    fn drop(&mut self) {
        self.watches
            .feeds
            .lock()
            .retain(|f| !Arc::ptr_eq(f, &self.feed));
    }
}

/// One answer of the catalog's blocking query.
struct CatalogAnswer {
    index: u64,
    names: Vec<String>,
    /// Set after a reset (the index went backwards) or a recovery from errors.
    reason: Option<SnapshotReason>,
}

/// The catalog's blocking queries as a stream of answers (retrying failures with backoff).
fn catalog_answers(
    watches: Arc<Watches>,
    index: u64,
) -> impl futures_core::Stream<Item = CatalogAnswer> {
    let s = &watches.settings;
    let bucket = TokenBucket::new(2, s.min_interval);
    let backoff = Backoff::new(s.backoff_initial, s.backoff_max);
    futures_util::stream::unfold(
        (watches, index, bucket, backoff),
        |(watches, index, mut bucket, mut backoff)| async move {
            loop {
                let requested = index.max(1);
                bucket.acquire().await;
                let blocking = Blocking {
                    index: requested,
                    wait: watches.settings.wait,
                };
                match read_names(&watches.client, &watches.filter, Some(blocking)).await {
                    Ok((index, names)) => {
                        let reason = (backoff.attempts() > 0 || index < requested)
                            .then_some(SnapshotReason::Reconnected);
                        backoff.reset();
                        let answer = CatalogAnswer {
                            index,
                            names,
                            reason,
                        };
                        return Some((answer, (watches, index, bucket, backoff)));
                    }
                    Err(e) => {
                        let d = backoff.next_delay();
                        warn!(
                            attempt = backoff.attempts(),
                            "consul: catalog watch failed: {e}; retrying in {d:?}"
                        );
                        tokio::time::sleep(d).await;
                    }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use waypost_core_types::{Health, ServiceEventType, WatchEvent};

    fn svc(name: &str, id: &str, version: &str) -> ServiceInfo {
        ServiceInfo::new(id, name, "127.0.0.1", 80).with_version(version)
    }

    /// Instances in id order, as the reads return them.
    fn list(items: &[ServiceInfo]) -> Vec<ServiceInfo> {
        let by_id: std::collections::BTreeMap<_, _> =
            items.iter().map(|s| (s.id.clone(), s.clone())).collect();
        by_id.into_values().collect()
    }

    /// A feed of `scope` holding `web` = [a@1] at index 10, and one stream past its snapshot.
    fn feed_with_stream(scope: Scope, capacity: usize) -> (Feed, WatchStream) {
        let feed = Feed::new(scope.clone(), WatchHub::new("test", capacity));
        feed.apply("web", 10, list(&[svc("web", "a", "1")]), None);
        let mut stream = feed.hub.subscribe(scope).unwrap();
        assert!(matches!(
            stream.next().now_or_never(),
            Some(Some(WatchEvent::Snapshot {
                reason: SnapshotReason::Initial,
                ..
            }))
        ));
        (feed, stream)
    }

    fn ready(stream: &mut WatchStream) -> Vec<WatchEvent> {
        let mut out = Vec::new();
        while let Some(Some(ev)) = stream.next().now_or_never() {
            out.push(ev);
        }
        out
    }

    fn kinds(stream: &mut WatchStream) -> Vec<(ServiceEventType, String)> {
        ready(stream)
            .into_iter()
            .map(|ev| match ev {
                WatchEvent::Change(c) => (c.kind, c.service.id),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    fn web() -> Scope {
        Scope::Service("web".into())
    }

    #[test]
    fn newer_results_are_diffed_into_events() {
        let (feed, mut stream) = feed_with_stream(web(), 16);
        feed.apply(
            "web",
            11,
            list(&[svc("web", "a", "2"), svc("web", "b", "1")]),
            None,
        );
        assert_eq!(
            kinds(&mut stream),
            vec![
                (ServiceEventType::Updated, "a".into()),
                (ServiceEventType::Created, "b".into())
            ]
        );
        feed.apply("web", 12, list(&[svc("web", "b", "1")]), None);
        assert_eq!(
            kinds(&mut stream),
            vec![(ServiceEventType::Deleted, "a".into())]
        );
        // Same index, same data (a blocking query that timed out): nothing.
        feed.apply("web", 12, list(&[svc("web", "b", "1")]), None);
        assert!(kinds(&mut stream).is_empty());
    }

    #[test]
    fn older_results_are_ignored() {
        let (feed, mut stream) = feed_with_stream(web(), 16);
        assert!(!feed.apply("web", 9, Vec::new(), None));
        assert!(
            kinds(&mut stream).is_empty(),
            "a stale answer must not roll the view back"
        );
        assert_eq!(feed.index("web"), 10);
        assert_eq!(feed.hub.with_view(|v| v.len()), 1);
    }

    #[test]
    fn resync_replaces_the_view_with_a_reconnected_snapshot() {
        let (feed, mut stream) = feed_with_stream(web(), 16);
        let unhealthy = svc("web", "c", "1").with_health(Health::Unhealthy);
        feed.apply(
            "web",
            3,
            vec![unhealthy.clone()],
            Some(SnapshotReason::Reconnected),
        );
        match ready(&mut stream).as_slice() {
            [WatchEvent::Snapshot {
                services,
                reason: SnapshotReason::Reconnected,
            }] => assert_eq!(services, &vec![unhealthy]),
            other => panic!("{other:?}"),
        }
        assert_eq!(feed.index("web"), 3, "a lower index is taken after a reset");
    }

    #[test]
    fn a_whole_registry_stream_is_resynced_with_every_name() {
        let (feed, mut stream) = feed_with_stream(Scope::All, 16);
        feed.apply("db", 5, list(&[svc("db", "d", "1")]), None);
        assert_eq!(
            kinds(&mut stream),
            vec![(ServiceEventType::Created, "d".into())]
        );
        feed.apply(
            "web",
            2,
            list(&[svc("web", "b", "1")]),
            Some(SnapshotReason::Reconnected),
        );
        match ready(&mut stream).as_slice() {
            [WatchEvent::Snapshot {
                services,
                reason: SnapshotReason::Reconnected,
            }] => {
                let ids: Vec<&str> = services.iter().map(|s| s.id.as_str()).collect();
                assert_eq!(ids, ["d", "b"], "db kept, web replaced");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_watcher_past_the_watch_buffer_gets_a_lagged_snapshot() {
        let (feed, mut stream) = feed_with_stream(web(), 1);
        feed.apply(
            "web",
            11,
            list(&[svc("web", "a", "1"), svc("web", "b", "1")]),
            None,
        );
        feed.apply(
            "web",
            12,
            list(&[
                svc("web", "a", "1"),
                svc("web", "b", "1"),
                svc("web", "c", "1"),
            ]),
            None,
        );
        match ready(&mut stream).as_slice() {
            [WatchEvent::Snapshot {
                services,
                reason: SnapshotReason::Lagged,
            }] => assert_eq!(services.len(), 3),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn other_names_are_not_sent_to_a_named_watcher() {
        let (feed, mut stream) = feed_with_stream(web(), 16);
        feed.apply("db", 2, list(&[svc("db", "d", "1")]), None);
        assert!(kinds(&mut stream).is_empty());
    }
}
