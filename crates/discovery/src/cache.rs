//! One service's cache entry: the current instance set, how fresh it is, and its counters.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use waypost_core_types::{Error, Health, ServiceEvent, ServiceEventType, ServiceInfo};

use waypost_core_types::quote::quoted;

use crate::options::Options;

use crate::stats::{CacheStats, StripedCounter};

/// The bit of [`Entry::version`] that says the entry is out of the service map.
pub(crate) const EVICTED: u64 = 1 << 63;

/// An immutable instance set, sorted by id; replaced as a whole on every change.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub(crate) all: Vec<Arc<ServiceInfo>>,
    /// Healthy instances.
    pub(crate) healthy: usize,
    /// Instances a balancer may pick: the healthy ones, or the `Unknown` ones when none is
    /// healthy ([`Health::SELECTION_ORDER`](waypost_core_types::Health::SELECTION_ORDER)).
    pub(crate) selectable: usize,
}

impl Snapshot {
    fn new(mut all: Vec<Arc<ServiceInfo>>) -> Self {
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all.dedup_by(|a, b| a.id == b.id);
        let healthy = all.iter().filter(|s| s.is_healthy()).count();
        let selectable = selectable(&all);
        Snapshot {
            all,
            healthy,
            selectable,
        }
    }
}

/// How many of `all` a balancer may pick (see [`Snapshot::selectable`]).
pub(crate) fn selectable(all: &[Arc<ServiceInfo>]) -> usize {
    match Health::selection_tier(all.iter().map(|s| &**s)) {
        Some(tier) => all.iter().filter(|s| s.health == tier).count(),
        None => 0,
    }
}

/// Instances kept after a full set that followed a watch gap left them out (see
/// [`DiscoveryBuilder::reconnect_grace`](crate::DiscoveryBuilder::reconnect_grace)).
#[derive(Debug)]
struct Grace {
    /// When the instances still held are dropped (`None`: a grace of `Duration::MAX`, until
    /// they come back or are deleted).
    until: Option<Instant>,
    /// Ids of the instances held, not yet back and not confirmed gone.
    held: Vec<String>,
    /// A hold of the last instance after its `Deleted` change (see [`LAST_DELETE_HOLD`]), not
    /// a reconnect grace: a full set after a gap starts the grace proper.
    last_delete: bool,
}

/// How long the `Deleted` change of a service's last instance waits before it empties the
/// cached set, while the reconnect grace is on. A backend may deliver the server's empty state
/// as a deletion just before its reconnect snapshot (the Nacos backend does, a millisecond
/// before); the snapshot then finds the instance still cached and holds it for the grace.
pub(crate) const LAST_DELETE_HOLD: std::time::Duration = std::time::Duration::from_millis(250);

#[derive(Debug, Default)]
struct Status {
    watching: bool,
    last_refresh: Option<(Instant, SystemTime)>,
    last_error: Option<String>,
    refused: u64,
    grace: Option<Grace>,
}

/// One cached service.
pub(crate) struct Entry {
    pub(crate) name: Arc<str>,
    pub(crate) snap: ArcSwapOption<Snapshot>,
    /// Bumped after every store to `snap`, so per-thread copies can tell they are out of date;
    /// [`EVICTED`] is set in it once the entry is out of the service map (evicted, idle,
    /// cleared), so that one load tells both.
    pub(crate) version: AtomicU64,
    pub(crate) hits: StripedCounter,
    pub(crate) misses: AtomicU64,
    /// Held while the first fill runs, so concurrent first lookups wait for one fill.
    pub(crate) fill: tokio::sync::Mutex<()>,
    pub(crate) task: Mutex<Option<JoinHandle<()>>>,
    /// For the idle sweep: the lookups counted at the last sweep, and since when that count has
    /// not changed.
    idle: Mutex<(u64, Instant)>,
    status: Mutex<Status>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry").field("name", &self.name).finish()
    }
}

impl Entry {
    pub(crate) fn new(name: &str) -> Self {
        Entry {
            name: Arc::from(name),
            snap: ArcSwapOption::empty(),
            version: AtomicU64::new(0),
            hits: StripedCounter::default(),
            misses: AtomicU64::new(0),
            fill: tokio::sync::Mutex::new(()),
            task: Mutex::new(None),
            idle: Mutex::new((0, Instant::now())),
            status: Mutex::new(Status::default()),
        }
    }

    /// Whether nobody looked the service up for `idle` (or `empty_idle`, when its cached set is
    /// empty) as of `now`, counting from the sweeps that saw its lookup count unchanged. An entry
    /// still being filled is never idle.
    pub(crate) fn idle_at(
        &self,
        now: Instant,
        idle: std::time::Duration,
        empty_idle: std::time::Duration,
    ) -> bool {
        let Some(snap) = self.snap.load_full() else {
            return false;
        };
        let uses = self
            .hits
            .sum()
            .wrapping_add(self.misses.load(Ordering::Relaxed));
        let mut st = self.idle.lock();
        if st.0 != uses {
            *st = (uses, now);
            return false;
        }
        let limit = if snap.all.is_empty() {
            empty_idle
        } else {
            idle
        };
        now.saturating_duration_since(st.1) >= limit
    }

    fn keep(&self, s: &ServiceInfo, opts: &Options) -> bool {
        *s.name == *self.name && opts.filter.matches(s)
    }

    /// Replaces the set (a snapshot or a poll), unless the shrink guard refuses. `watching` says
    /// whether a live watch delivered it; `after_gap` whether it follows a gap in the watch (a
    /// reconnect snapshot, the first snapshot of a new watch, a poll while the watch is down):
    /// then the instances it leaves out are kept for the reconnect grace, unless a `Deleted`
    /// change confirms they are gone.
    pub(crate) fn apply_full(
        &self,
        services: Vec<ServiceInfo>,
        opts: &Options,
        watching: bool,
        after_gap: bool,
    ) {
        let mut next: Vec<Arc<ServiceInfo>> = services
            .into_iter()
            .filter(|s| self.keep(s, opts))
            .map(Arc::new)
            .collect();
        let cur = self.snap.load_full();
        let cur_len = cur.as_ref().map_or(0, |s| s.all.len());
        if cur.is_some() && opts.refuses(cur_len, next.len()) {
            self.refuse(cur_len, next.len());
            self.status.lock().watching = watching;
            return;
        }
        let mut st = self.status.lock();
        // A last instance waiting out its deletion, with a gap now: the grace proper starts.
        if after_gap && st.grace.as_ref().is_some_and(|g| g.last_delete) {
            st.grace = None;
        }
        // Instances held by a grace still running stay held; after a gap, so do the ones this
        // set leaves out.
        let grace_on = !opts.reconnect_grace.is_zero();
        let holding = st
            .grace
            .as_ref()
            .map(|g| g.held.clone())
            .unwrap_or_default();
        let mut held = Vec::new();
        if let Some(cur) = cur.as_ref().filter(|_| grace_on) {
            let listed: HashSet<String> = next.iter().map(|n| n.id.clone()).collect();
            for s in &cur.all {
                let missing = !listed.contains(&s.id);
                if missing && (after_gap || holding.contains(&s.id)) {
                    held.push(s.id.clone());
                    next.push(s.clone());
                }
            }
        }
        if held.is_empty() {
            st.grace = None;
        } else {
            let now = Instant::now();
            // A grace already running keeps its end: repeated polls while the watch is down
            // must not hold an instance for ever.
            let until = match &st.grace {
                Some(g) => g.until,
                None => now.checked_add(opts.reconnect_grace),
            };
            tracing::info!(
                service = %quoted(&self.name),
                held = held.len(),
                grace = ?opts.reconnect_grace,
                "discovery: a full set after a watch gap left instances out; serving them until they come back, the registry deletes them, or the grace ends"
            );
            // Without a gap, a last instance waiting out its deletion keeps waiting.
            let last_delete = st.grace.as_ref().is_some_and(|g| g.last_delete);
            st.grace = Some(Grace {
                until,
                held,
                last_delete,
            });
        }
        drop(st);
        self.publish(Snapshot::new(next));
        self.refreshed(watching);
    }

    /// When the instances held after a watch gap are dropped, if any are held.
    pub(crate) fn grace_deadline(&self) -> Option<Instant> {
        self.status.lock().grace.as_ref().and_then(|g| g.until)
    }

    /// Drops the instances still held if their grace has ended by `now`.
    pub(crate) fn expire_grace(&self, now: Instant) {
        let held = {
            let mut st = self.status.lock();
            match &st.grace {
                Some(g) if g.until.is_some_and(|until| until <= now) => {
                    st.grace.take().map(|g| g.held)
                }
                _ => None,
            }
        };
        let Some(held) = held else {
            return;
        };
        let cur = self.snap.load_full();
        let all: Vec<_> = cur
            .as_ref()
            .map(|s| {
                s.all
                    .iter()
                    .filter(|s| !held.contains(&s.id))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        tracing::info!(
            service = %quoted(&self.name),
            dropped = held.len(),
            "discovery: reconnect grace ended; dropping the instances that did not come back"
        );
        self.publish(Snapshot::new(all));
    }

    /// The `Deleted` change of the last instance `id`: holds it for [`LAST_DELETE_HOLD`] (when
    /// the reconnect grace is on and nothing holds it yet). Returns whether it is held.
    fn hold_last(&self, id: &str, opts: &Options) -> bool {
        if opts.reconnect_grace.is_zero() {
            return false;
        }
        let mut st = self.status.lock();
        if let Some(g) = &st.grace {
            // Held already: a reconnect grace confirmed by this deletion ends; a hold goes on.
            return g.last_delete && g.held.iter().any(|h| h == id);
        }
        let now = Instant::now();
        st.grace = Some(Grace {
            until: now.checked_add(LAST_DELETE_HOLD.min(opts.reconnect_grace)),
            held: vec![id.to_owned()],
            last_delete: true,
        });
        true
    }

    /// Stops holding instance `id` (it is back, or the registry confirmed it is gone).
    fn release(&self, id: &str) {
        let mut st = self.status.lock();
        if let Some(g) = st.grace.as_mut() {
            g.held.retain(|h| h != id);
            if g.held.is_empty() {
                st.grace = None;
            }
        }
    }

    /// Applies one change from the watch.
    pub(crate) fn apply_change(&self, event: ServiceEvent, opts: &Options) {
        if *event.service.name != *self.name {
            return;
        }
        let cur = self.snap.load_full();
        let mut all = cur.as_ref().map(|s| s.all.clone()).unwrap_or_default();
        let pos = all.iter().position(|s| s.id == event.service.id);
        if event.kind == ServiceEventType::Deleted && pos.is_some() && all.len() == 1 {
            if opts.refuses(1, 0) {
                self.refuse(1, 0);
                return;
            }
            if self.hold_last(&event.service.id, opts) {
                return;
            }
        }
        // Back, or confirmed gone: either way no longer held.
        self.release(&event.service.id);
        match (event.kind, pos) {
            (ServiceEventType::Deleted, None) => {}
            (ServiceEventType::Deleted, Some(i)) => {
                all.remove(i);
            }
            (ServiceEventType::Created | ServiceEventType::Updated, pos) => {
                let keep = self.keep(&event.service, opts);
                match (pos, keep) {
                    (Some(i), true) => all[i] = Arc::new(event.service),
                    (Some(i), false) => {
                        all.remove(i);
                    }
                    (None, true) => all.push(Arc::new(event.service)),
                    (None, false) => {}
                }
            }
        }
        self.publish(Snapshot::new(all));
        self.refreshed(true);
    }

    fn publish(&self, snap: Snapshot) {
        self.snap.store(Some(Arc::new(snap)));
        self.version.fetch_add(1, Ordering::Release);
    }

    fn refuse(&self, cur: usize, next: usize) {
        tracing::warn!(
            service = %quoted(&self.name),
            cached = cur,
            update = next,
            "discovery: shrink guard refused an update; serving the cached instances"
        );
        self.status.lock().refused += 1;
    }

    fn refreshed(&self, watching: bool) {
        let mut st = self.status.lock();
        st.watching = watching;
        st.last_refresh = Some((Instant::now(), SystemTime::now()));
        if watching {
            st.last_error = None;
        }
    }

    /// A snapshot arrived on a fresh watch (the data itself goes through `apply_full`).
    pub(crate) fn watch_lost(&self, why: &str) {
        let mut st = self.status.lock();
        st.watching = false;
        st.last_error = Some(why.to_owned());
    }

    /// A registry call failed.
    pub(crate) fn failed(&self, err: &Error) {
        let mut st = self.status.lock();
        st.watching = false;
        st.last_error = Some(err.to_string());
    }

    pub(crate) fn stats(&self) -> CacheStats {
        let snap = self.snap.load();
        let st = self.status.lock();
        CacheStats {
            service: self.name.to_string(),
            instances: snap.as_ref().map_or(0, |s| s.all.len()),
            healthy: snap.as_ref().map_or(0, |s| s.healthy),
            hits: self.hits.sum(),
            misses: self.misses.load(Ordering::Relaxed),
            last_refresh: st.last_refresh.map(|(_, wall)| wall),
            watching: st.watching,
            stale_for: if st.watching {
                None
            } else {
                Some(
                    st.last_refresh
                        .map_or(std::time::Duration::MAX, |(at, _)| at.elapsed()),
                )
            },
            last_error: st.last_error.clone(),
            refused_updates: st.refused,
            stale_instances: st
                .grace
                .as_ref()
                .filter(|g| !g.last_delete)
                .map_or(0, |g| g.held.len()),
        }
    }

    /// Marks the entry as out of the service map.
    pub(crate) fn mark_evicted(&self) {
        self.version.fetch_or(EVICTED, Ordering::AcqRel);
    }

    pub(crate) fn abort_task(&self) {
        if let Some(t) = self.task.lock().take() {
            t.abort();
        }
    }
}
