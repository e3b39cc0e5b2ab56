//! One service's cache entry: the current instance set, how fresh it is, and its counters.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use waypost_core_types::{Error, Health, ServiceEvent, ServiceEventType, ServiceInfo};

use crate::options::Options;
use crate::stats::{CacheStats, StripedCounter};

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

#[derive(Debug, Default)]
struct Status {
    watching: bool,
    last_refresh: Option<(Instant, SystemTime)>,
    last_error: Option<String>,
    refused: u64,
}

/// One cached service.
pub(crate) struct Entry {
    pub(crate) name: Arc<str>,
    pub(crate) snap: ArcSwapOption<Snapshot>,
    /// Bumped after every store to `snap`, so per-thread copies can tell they are out of date.
    pub(crate) version: AtomicU64,
    pub(crate) hits: StripedCounter,
    pub(crate) misses: AtomicU64,
    /// Held while the first fill runs, so concurrent first lookups wait for one fill.
    pub(crate) fill: tokio::sync::Mutex<()>,
    pub(crate) task: Mutex<Option<JoinHandle<()>>>,
    /// Set once the entry is out of the service map (evicted, idle, cleared); per-thread
    /// shortcuts to it are then stale.
    pub(crate) evicted: AtomicBool,
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
            evicted: AtomicBool::new(false),
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

    fn current_len(&self) -> usize {
        self.snap.load().as_ref().map_or(0, |s| s.all.len())
    }

    fn keep(&self, s: &ServiceInfo, opts: &Options) -> bool {
        *s.name == *self.name && opts.filter.matches(s)
    }

    /// Replaces the set (a snapshot or a poll), unless the shrink guard refuses. `watching` says
    /// whether a live watch delivered it.
    pub(crate) fn apply_full(&self, services: Vec<ServiceInfo>, opts: &Options, watching: bool) {
        let next: Vec<Arc<ServiceInfo>> = services
            .into_iter()
            .filter(|s| self.keep(s, opts))
            .map(Arc::new)
            .collect();
        let cur = self.current_len();
        if self.snap.load().is_some() && opts.refuses(cur, next.len()) {
            self.refuse(cur, next.len());
            self.status.lock().watching = watching;
            return;
        }
        self.publish(Snapshot::new(next));
        self.refreshed(watching);
    }

    /// Applies one change from the watch.
    pub(crate) fn apply_change(&self, event: ServiceEvent, opts: &Options) {
        if *event.service.name != *self.name {
            return;
        }
        let cur = self.snap.load_full();
        let mut all = cur.as_ref().map(|s| s.all.clone()).unwrap_or_default();
        let pos = all.iter().position(|s| s.id == event.service.id);
        match (event.kind, pos) {
            (ServiceEventType::Deleted, None) => {}
            (ServiceEventType::Deleted, Some(i)) => {
                if all.len() == 1 && opts.refuses(1, 0) {
                    self.refuse(1, 0);
                    return;
                }
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
            service = %self.name,
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
        }
    }

    pub(crate) fn abort_task(&self) {
        if let Some(t) = self.task.lock().take() {
            t.abort();
        }
    }
}
