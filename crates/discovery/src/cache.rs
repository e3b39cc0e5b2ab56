//! One service's cache entry: the current instance set, how fresh it is, and its counters.
//!
//! The set is kept by an [`InstanceSetWriter`]: a watch change is one writer operation
//! (O(n / 64 + 64) pointer copies, never a copy or a sort of the whole set), and a full set (a
//! snapshot or a poll) replaces it. Every new set is handed to the balancer's
//! [`prepare`](LoadBalancer::prepare) before it is published, so picks never build per-set state
//! on the request path. Instances are the registry's own `Arc`s: the cache copies pointers, not
//! instances.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use waypost_core_types::{
    Error, Health, InstanceSet, InstanceSetWriter, LoadBalancer, ServiceEventType, ServiceInfo,
};

use waypost_core_types::quote::quoted;

use crate::observe::EntryMetrics;
use crate::options::Options;

use crate::stats::{CacheStats, StripedCounter};

/// The bit of [`Entry::version`] that says the entry is out of the service map.
pub(crate) const EVICTED: u64 = 1 << 63;

/// How many of `all` a balancer may pick: the healthy ones, or the `Unknown` ones when none is
/// healthy ([`Health::SELECTION_ORDER`](waypost_core_types::Health::SELECTION_ORDER)).
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
    /// The published set; `None` until the first fill.
    pub(crate) snap: ArcSwapOption<InstanceSet>,
    /// Bumped after every store to `snap`, so per-thread copies can tell they are out of date;
    /// [`EVICTED`] is set in it once the entry is out of the service map (evicted, idle,
    /// cleared), so that one load tells both.
    pub(crate) version: AtomicU64,
    /// Applies the changes; its current set is the one published in `snap`. Only the service's
    /// task (and, before it starts, the first fill) applies changes, so the lock is never
    /// contended; [`retire`](Self::retire) takes it so that no set is prepared after the
    /// balancer forgot the service.
    writer: Mutex<InstanceSetWriter>,
    /// Prepares every set before it is published; forgets the service when the entry retires.
    balancer: Arc<dyn LoadBalancer>,
    pub(crate) hits: StripedCounter,
    pub(crate) misses: AtomicU64,
    /// The service's metric handles (see [`crate::observe`]).
    pub(crate) metrics: EntryMetrics,
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
    pub(crate) fn new(name: &str, balancer: Arc<dyn LoadBalancer>) -> Self {
        let name: Arc<str> = Arc::from(name);
        Entry {
            metrics: EntryMetrics::new(&name),
            writer: Mutex::new(InstanceSetWriter::new(name.clone())),
            balancer,
            name,
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

    /// One lookup answered from the cache. The metric gets it in a batch (see
    /// [`report_hits`](Self::report_hits)).
    #[inline]
    pub(crate) fn hit(&self) {
        self.hits.incr(&self.metrics.hits);
    }

    /// Adds the hits not yet in the hits metric to it (they are added in batches of
    /// [`REPORT_EVERY`](crate::stats::REPORT_EVERY) per thread stripe as they happen, and
    /// here: when statistics are read, at each idle sweep, when the entry retires).
    pub(crate) fn report_hits(&self) {
        self.hits.report(&self.metrics.hits);
    }

    /// One lookup that found no cached set.
    pub(crate) fn miss(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
        self.metrics.misses.increment(1);
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
        self.report_hits();
        let uses = self
            .hits
            .sum()
            .wrapping_add(self.misses.load(Ordering::Relaxed));
        let mut st = self.idle.lock();
        if st.0 != uses {
            *st = (uses, now);
            return false;
        }
        let limit = if snap.is_empty() { empty_idle } else { idle };
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
        services: Vec<Arc<ServiceInfo>>,
        opts: &Options,
        watching: bool,
        after_gap: bool,
    ) {
        let mut next: Vec<Arc<ServiceInfo>> = services
            .into_iter()
            .filter(|s| self.keep(s, opts))
            .collect();
        let mut w = self.writer.lock();
        let cur = self.snap.load_full();
        let cur_len = cur.as_ref().map_or(0, |s| s.len());
        if cur.is_some() && opts.refuses(cur_len, next.len()) {
            drop(w);
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
            let listed: HashSet<&str> = next.iter().map(|n| n.id.as_str()).collect();
            let mut kept = Vec::new();
            for s in cur.iter() {
                let missing = !listed.contains(s.id.as_str());
                if missing && (after_gap || holding.contains(&s.id)) {
                    held.push(s.id.clone());
                    kept.push(s.clone());
                }
            }
            next.extend(kept);
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
        w.replace(next);
        self.publish(&w);
        drop(w);
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
        tracing::info!(
            service = %quoted(&self.name),
            dropped = held.len(),
            "discovery: reconnect grace ended; dropping the instances that did not come back"
        );
        let mut w = self.writer.lock();
        let mut changed = false;
        for id in &held {
            changed |= w.remove(id).is_some();
        }
        if changed {
            self.publish(&w);
        }
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

    /// Applies one change from the watch: one writer operation, then the new set is prepared
    /// and published (nothing is published when the change changes nothing).
    pub(crate) fn apply_change(
        &self,
        kind: ServiceEventType,
        service: Arc<ServiceInfo>,
        opts: &Options,
    ) {
        if *service.name != *self.name {
            return;
        }
        let mut w = self.writer.lock();
        if kind == ServiceEventType::Deleted
            && w.current().len() == 1
            && w.get(&service.id).is_some()
        {
            if opts.refuses(1, 0) {
                drop(w);
                self.refuse(1, 0);
                return;
            }
            if self.hold_last(&service.id, opts) {
                return;
            }
        }
        // Back, or confirmed gone: either way no longer held.
        self.release(&service.id);
        let changed = match kind {
            ServiceEventType::Created | ServiceEventType::Updated if self.keep(&service, opts) => {
                w.upsert(service);
                true
            }
            // Deleted, or no longer matching the discovery's filter.
            _ => w.remove(&service.id).is_some(),
        };
        if changed {
            self.publish(&w);
        }
        drop(w);
        self.refreshed(true);
    }

    /// Prepares the writer's current set and publishes it. The balancer prepares every set
    /// before any lookup can see it; an entry out of the service map publishes (a lookup
    /// filling it still answers) but prepares nothing, since the balancer forgets it. An empty
    /// set has nothing to prepare: the balancer forgets the service instead (a name nobody
    /// registered, looked up from request input, leaves no state in the balancer).
    fn publish(&self, w: &InstanceSetWriter) {
        let set = w.current();
        if self.version.load(Ordering::Acquire) & EVICTED == 0 {
            if set.is_empty() {
                self.balancer.forget(&self.name);
            } else {
                self.balancer.prepare(set);
            }
        }
        self.metrics.published(set);
        self.snap.store(Some(Arc::clone(set)));
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
        self.report_hits();
        let snap = self.snap.load();
        let st = self.status.lock();
        CacheStats {
            service: self.name.to_string(),
            instances: snap.as_ref().map_or(0, |s| s.len()),
            healthy: snap.as_ref().map_or(0, |s| s.healthy()),
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

    /// The entry left the service map (evicted, idle, cleared, closed): stops its task and
    /// tells the balancer to forget the service. Waits for a change being applied, if any, so
    /// that no set is prepared after the balancer forgot (the entry is marked evicted first,
    /// which stops later changes from preparing).
    pub(crate) fn retire(&self) {
        debug_assert!(self.version.load(Ordering::Acquire) & EVICTED != 0);
        self.abort_task();
        let _applying = self.writer.lock();
        self.balancer.forget(&self.name);
        self.metrics.cleared();
        self.report_hits();
    }
}

/// One service's cache entry without a registry or a task: the apply path the service's watch
/// task runs, callable on its own. For the crate's benchmarks (`benches/apply.rs`); not part of
/// the API.
#[doc(hidden)]
pub struct EntryHarness {
    entry: Entry,
    opts: Options,
}

impl EntryHarness {
    /// An empty entry of service `name` whose sets `balancer` prepares, with default options.
    pub fn new(name: &str, balancer: Arc<dyn LoadBalancer>) -> Self {
        EntryHarness {
            entry: Entry::new(name, balancer),
            opts: Options::default(),
        }
    }

    /// Applies a full set, as a watch snapshot delivers it.
    pub fn apply_snapshot(&self, services: Vec<Arc<ServiceInfo>>) {
        self.entry.apply_full(services, &self.opts, true, false);
    }

    /// Applies one watch change.
    pub fn apply_change(&self, kind: ServiceEventType, service: Arc<ServiceInfo>) {
        self.entry.apply_change(kind, service, &self.opts);
    }

    /// The published set, if one was.
    pub fn current(&self) -> Option<Arc<InstanceSet>> {
        self.entry.snap.load_full()
    }

    /// How many instances the published set holds.
    pub fn len(&self) -> usize {
        self.entry.snap.load().as_ref().map_or(0, |s| s.len())
    }

    /// Whether the published set is empty (or none was published).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;

    use waypost_core_types::SelectContext;

    use super::*;
    use crate::Filter;

    /// Records the generation of every set it was asked to prepare.
    #[derive(Debug, Default)]
    struct Recording {
        prepared: Mutex<Vec<u64>>,
        forgotten: Mutex<Vec<String>>,
    }

    impl LoadBalancer for Recording {
        fn name(&self) -> &'static str {
            "recording"
        }
        fn select<'a>(
            &self,
            instances: &'a [Arc<ServiceInfo>],
            _ctx: &SelectContext<'_>,
        ) -> Option<&'a Arc<ServiceInfo>> {
            instances.first()
        }
        fn prepare(&self, set: &InstanceSet) {
            self.prepared.lock().push(set.generation());
        }
        fn forget(&self, service: &str) {
            self.forgotten.lock().push(service.to_owned());
        }
    }

    fn svc(id: u32, port: u16, health: Health, tag: &str) -> Arc<ServiceInfo> {
        Arc::new(
            ServiceInfo::new(format!("i{id:03}"), "s", "10.0.0.1", port)
                .with_health(health)
                .with_tag(tag),
        )
    }

    fn sorted(set: &InstanceSet) -> Vec<Arc<ServiceInfo>> {
        let mut all = set.to_vec();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// Changes applied one at a time through the writer give the same instances (the very same
    /// `Arc`s, the same health counts) as a full re-list of the result, with the discovery's
    /// filter applied on both paths; every published set was prepared, in publication order.
    #[test]
    fn changes_through_the_writer_match_a_full_relist() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(15);
        let opts = Options {
            filter: Filter::new().all_tags(["api"]),
            ..Options::default()
        };
        let balancer = Arc::new(Recording::default());
        let entry = Entry::new("s", balancer.clone());
        // What the registry holds, by id.
        let mut registry: BTreeMap<String, Arc<ServiceInfo>> = BTreeMap::new();
        for id in 0..40 {
            let s = svc(id, 80, Health::Healthy, "api");
            registry.insert(s.id.clone(), s);
        }
        entry.apply_full(registry.values().cloned().collect(), &opts, true, false);
        let healths = [Health::Healthy, Health::Unknown, Health::Unhealthy];
        for step in 0..3_000u32 {
            let id = rng.random_range(0..120);
            let key = format!("i{id:03}");
            if rng.random_bool(0.35) {
                if let Some(gone) = registry.remove(&key) {
                    entry.apply_change(ServiceEventType::Deleted, gone, &opts);
                }
            } else {
                // One in four registrations lacks the tag the filter asks for.
                let tag = if rng.random_bool(0.25) { "web" } else { "api" };
                let s = svc(
                    id,
                    (step % 60_000) as u16 + 1,
                    healths[rng.random_range(0..3)],
                    tag,
                );
                let kind = if registry.contains_key(&key) {
                    ServiceEventType::Updated
                } else {
                    ServiceEventType::Created
                };
                registry.insert(key, s.clone());
                entry.apply_change(kind, s, &opts);
            }
            if step % 100 == 99 || registry.len() <= 1 {
                let relisted = Entry::new("s", Arc::new(Recording::default()));
                relisted.apply_full(registry.values().cloned().collect(), &opts, true, false);
                let (a, b) = (
                    entry.snap.load_full().unwrap(),
                    relisted.snap.load_full().unwrap(),
                );
                let (a_all, b_all) = (sorted(&a), sorted(&b));
                assert_eq!(a_all.len(), b_all.len(), "step {step}");
                for (x, y) in a_all.iter().zip(&b_all) {
                    assert!(Arc::ptr_eq(x, y), "step {step}: {} vs {}", x.id, y.id);
                }
                assert_eq!((a.healthy(), a.unknown()), (b.healthy(), b.unknown()));
                assert!(a.iter().all(|s| opts.filter.matches(s)));
            }
        }
        let prepared = balancer.prepared.lock().clone();
        assert_eq!(
            prepared.last().copied(),
            entry.snap.load().as_ref().map(|s| s.generation()),
            "the published set is the last one prepared"
        );
        assert!(prepared.len() > 1_000, "one prepare per change");
        assert!(prepared.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn a_change_that_changes_nothing_publishes_nothing() {
        let balancer = Arc::new(Recording::default());
        let entry = Entry::new("s", balancer.clone());
        let opts = Options::default();
        entry.apply_full(vec![svc(1, 80, Health::Healthy, "api")], &opts, true, false);
        let (version, prepared) = (
            entry.version.load(Ordering::Acquire),
            balancer.prepared.lock().len(),
        );
        entry.apply_change(
            ServiceEventType::Deleted,
            svc(2, 80, Health::Healthy, "api"),
            &opts,
        );
        // Another service's change is not ours.
        entry.apply_change(
            ServiceEventType::Created,
            Arc::new(ServiceInfo::new("x", "other", "10.0.0.1", 80)),
            &opts,
        );
        assert_eq!(entry.version.load(Ordering::Acquire), version);
        assert_eq!(balancer.prepared.lock().len(), prepared);
        assert_eq!(entry.snap.load().as_ref().unwrap().len(), 1);
    }

    #[test]
    fn a_retired_entry_prepares_nothing_and_is_forgotten() {
        let balancer = Arc::new(Recording::default());
        let entry = Entry::new("s", balancer.clone());
        let opts = Options::default();
        entry.apply_full(vec![svc(1, 80, Health::Healthy, "api")], &opts, true, false);
        entry.mark_evicted();
        entry.retire();
        assert_eq!(*balancer.forgotten.lock(), ["s"]);
        let prepared = balancer.prepared.lock().len();
        entry.apply_change(
            ServiceEventType::Created,
            svc(2, 80, Health::Healthy, "api"),
            &opts,
        );
        assert_eq!(balancer.prepared.lock().len(), prepared);
        assert_eq!(
            entry.snap.load().as_ref().unwrap().len(),
            2,
            "still published"
        );
    }
}
