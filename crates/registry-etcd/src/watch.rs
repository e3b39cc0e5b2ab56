//! Watch feeds: one etcd watch per watched scope, feeding that scope's [`WatchHub`].
//!
//! The first stream of a scope reads the range at revision R into a new hub, then an etcd watch
//! of the same range from R + 1 feeds every change to it; later streams of the scope share the
//! hub, and the feed stops after the last stream is dropped. A broken watch (dead member,
//! restarting server) is reopened from the last revision seen, so nothing is lost or repeated,
//! once the server has shown that it still holds the history the watch followed (see
//! [`history`](crate::history): same cluster, raft term and revision never going back, and the
//! same keys at the last revision seen). If it does not (a wiped or restored server), or that
//! revision was compacted, the range is read again and every stream gets a
//! `Snapshot { reason: Reconnected }`. The hub handles consumers that fall behind
//! ([`EtcdConfig::watch_buffer`](crate::EtcdConfig::watch_buffer) items).

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{EventType, WatchOptions};
use waypost_core_types::backoff::Backoff;
use waypost_core_types::{
    Result, Scope, ServiceEvent, ServiceInfo, SharedWatchStream, SnapshotReason, Tasks, WatchHub,
    WatchStream,
};

use crate::history::{self, Anchor, Digest, Identity, Position, ServerHeader, Verdict};
use crate::keys::{prefix_end, range_start};
use crate::ops::{Inner, Listing};

/// A stream over `scope`, from the scope's live feed or a new one.
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
    inner
        .hubs
        .subscribe_with(
            scope.clone(),
            |hub| async move {
                let range = range_of(inner, &scope);
                let mut listing = inner.list_range_full(&range).await?;
                let services = std::mem::take(&mut listing.services);
                hub.replace(&scope, services, Some(SnapshotReason::Initial));
                tasks.spawn(run(Arc::clone(inner), scope, range, hub, listing));
                Ok(())
            },
            open,
        )
        .await
}

fn range_of(inner: &Inner, scope: &Scope) -> String {
    match scope {
        Scope::All => inner.keys.all(),
        Scope::Service(name) => inner.keys.service(name),
    }
}

/// Feeds `hub` until its last stream is dropped or the registry closes.
async fn run(inner: Arc<Inner>, scope: Scope, range: String, hub: WatchHub, listing: Listing) {
    let mut feed = Feed {
        inner: &inner,
        scope: &scope,
        range: &range,
        hub: &hub,
        next_rev: 0,
        raw_count: 0,
        anchor: None,
        digest: None,
        identity: Identity::default(),
        check_first: false,
        backoff: Backoff::new(Duration::from_millis(20), inner.config.max_backoff),
    };
    feed.start_from(listing);
    tokio::select! {
        () = inner.hubs.unwatched(&scope, &hub) => {}
        () = feed.run() => {}
    }
}

struct Feed<'a> {
    inner: &'a Inner,
    scope: &'a Scope,
    range: &'a str,
    hub: &'a WatchHub,
    /// The first revision not yet reflected in the hub.
    next_rev: i64,
    /// Keys in the range (valid records or not) at `next_rev - 1`.
    raw_count: i64,
    /// The last key seen written in the range.
    anchor: Option<Anchor>,
    /// The keys of the range and their modification revisions; `None` once an event came
    /// without its previous value.
    digest: Option<Digest>,
    /// The server's identity as seen so far.
    identity: Identity,
    /// The watch broke since the last read: check the server's history before resuming.
    check_first: bool,
    backoff: Backoff,
}

impl Feed<'_> {
    async fn run(mut self) {
        loop {
            self.session().await;
            tokio::time::sleep(self.backoff.next_delay()).await;
        }
    }

    /// Follows the history of `listing` from the revision after it.
    fn start_from(&mut self, listing: Listing) {
        self.next_rev = listing.revision + 1;
        self.raw_count = listing.raw_count;
        self.anchor = listing.anchor;
        self.digest = Some(listing.digest);
        self.identity = Identity::new(listing.server);
        self.check_first = false;
    }

    /// Re-reads the range; every stream of the scope gets a snapshot with `reason`.
    async fn resync(&mut self, reason: SnapshotReason) {
        match self.inner.list_range_full(self.range).await {
            Ok(mut listing) => {
                let services = std::mem::take(&mut listing.services);
                self.hub.replace(self.scope, services, Some(reason));
                self.start_from(listing);
            }
            Err(e) => {
                self.check_first = true;
                tracing::warn!(target: "waypost::etcd", error = %e, range = self.range, "watch resync failed; retrying");
            }
        }
    }

    /// Before resuming: does the server still hold the history this watch followed? `false`
    /// when the session should not start now (the server did not answer, or a resync is due
    /// and failed).
    async fn check_history(&mut self) -> bool {
        if !self.check_first {
            return true;
        }
        let at = Position {
            revision: self.next_rev - 1,
            raw_count: self.raw_count,
            anchor: self.anchor.clone(),
            digest: self.digest,
        };
        match history::check(self.inner, &mut self.identity, self.range, &at).await {
            Verdict::Same => {
                self.check_first = false;
                true
            }
            Verdict::Lost(why) => {
                self.history_lost(&why).await;
                !self.check_first
            }
            Verdict::Unreachable(why) => {
                tracing::debug!(target: "waypost::etcd", error = %why, "watch not resumed yet");
                false
            }
        }
    }

    async fn history_lost(&mut self, why: &str) {
        tracing::warn!(
            target: "waypost::etcd",
            range = self.range,
            reason = why,
            "etcd no longer holds the history this watch followed (wiped, restored or replaced); \
             sending a fresh snapshot"
        );
        self.resync(SnapshotReason::Reconnected).await;
    }

    /// One etcd watch from `next_rev`, until it breaks or history is lost.
    async fn session(&mut self) {
        if !self.check_history().await {
            return;
        }
        // Whatever ends this session, the next one checks the server first.
        self.check_first = true;
        let opts = WatchOptions::new()
            .with_range(prefix_end(self.range.as_bytes()))
            .with_start_revision(self.next_rev)
            .with_prev_key()
            .with_progress_notify();
        let mut watch_client = self.inner.client.watch_client();
        let timeout = self.inner.policy.attempt_timeout;
        let mut stream = match tokio::time::timeout(
            timeout,
            watch_client.watch(range_start(self.range), Some(opts)),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(target: "waypost::etcd", error = %e, "watch not opened");
                return;
            }
            Err(_) => return,
        };
        let mut created = false;
        loop {
            let resp = match stream.message().await {
                Ok(Some(resp)) => resp,
                Ok(None) => {
                    tracing::debug!(target: "waypost::etcd", "watch stream ended; resuming");
                    return;
                }
                Err(e) => {
                    tracing::debug!(target: "waypost::etcd", error = %e, "watch broke; resuming");
                    return;
                }
            };
            if resp.compact_revision() > 0 || resp.canceled() {
                tracing::warn!(
                    target: "waypost::etcd",
                    compacted = resp.compact_revision(),
                    reason = resp.cancel_reason(),
                    "watch history lost; sending a fresh snapshot"
                );
                self.resync(SnapshotReason::Reconnected).await;
                return;
            }
            // Any response from a server whose history is not ours (its revision or raft term
            // went back, another cluster) means our position means nothing there.
            if let Some(h) = resp.header() {
                if let Err(why) = self.identity.observe(&ServerHeader::from(h)) {
                    self.history_lost(&why).await;
                    return;
                }
            }
            if !created && resp.created() {
                created = true;
                self.backoff.reset();
            }
            // One revision can hold many events (a transaction, a lease expiry): compare
            // against the position before this response, advance after it.
            let floor = self.next_rev;
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                let rev = kv.mod_revision();
                if rev < floor {
                    continue; // already covered by a snapshot
                }
                self.track(ev.event_type(), kv, ev.prev_kv());
                if let Some(change) = convert(self.inner, ev.event_type(), kv, ev.prev_kv()) {
                    self.hub.apply(change);
                }
                self.next_rev = self.next_rev.max(rev + 1);
            }
        }
    }
}

impl Feed<'_> {
    /// Keeps the key count, the anchor and the digest in step with an applied event.
    fn track(
        &mut self,
        kind: EventType,
        kv: &etcd_client::KeyValue,
        prev: Option<&etcd_client::KeyValue>,
    ) {
        let key = kv.key();
        // The pair the key had before, if it existed.
        let before = match (kind, kv.version(), prev) {
            (EventType::Put, 1, _) => Ok(None),
            (_, _, Some(p)) => Ok(Some(p.mod_revision())),
            (_, _, None) => Err(()),
        };
        match before {
            Ok(old) => {
                if let (Some(d), Some(old)) = (self.digest.as_mut(), old) {
                    d.toggle(key, old);
                }
            }
            // No previous value (compacted): the digest cannot follow any more.
            Err(()) => self.digest = None,
        }
        match kind {
            EventType::Put => {
                if kv.version() == 1 {
                    self.raw_count += 1;
                }
                if let Some(d) = self.digest.as_mut() {
                    d.toggle(key, kv.mod_revision());
                }
                self.anchor = Some(Anchor::of(kv));
            }
            EventType::Delete => {
                self.raw_count -= 1;
                if let Some(a) = self.anchor.as_mut().filter(|a| a.key == key) {
                    a.deleted = true;
                }
            }
        }
    }
}

/// The change an etcd event means, if any.
fn convert(
    inner: &Inner,
    kind: EventType,
    kv: &etcd_client::KeyValue,
    prev: Option<&etcd_client::KeyValue>,
) -> Option<ServiceEvent> {
    let (name, id) = inner.keys.parse(kv.key())?;
    let previous = prev.and_then(|p| inner.decode(p.key(), p.value()));
    match kind {
        EventType::Put => match inner.decode(kv.key(), kv.value()) {
            // `version` counts puts since creation: 1 is a new key. A key whose previous value
            // was garbage is new to the watcher too.
            Some(info) if kv.version() == 1 || (prev.is_some() && previous.is_none()) => {
                Some(ServiceEvent::created(info))
            }
            Some(info) => Some(ServiceEvent::updated(info)),
            // A valid record overwritten with garbage is gone for our purposes.
            None => previous.map(ServiceEvent::deleted),
        },
        EventType::Delete => match (previous, prev) {
            (Some(info), _) => Some(ServiceEvent::deleted(info)),
            // The deleted value was garbage: the watcher never saw it.
            (None, Some(_)) => None,
            // No previous value (compacted): id and name from the key.
            (None, None) => Some(ServiceEvent::deleted(ServiceInfo::new(id, name, "", 0))),
        },
    }
}
