//! [`CachedDiscovery`]: watch-driven, cached discovery over any registry.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use waypost_core_types::quote::quoted;
use waypost_core_types::{
    Error, InstanceSet, LoadBalancer, Result, SelectContext, Selection, ServiceDiscovery,
    ServiceEventStream, ServiceInfo, ServiceRegistry,
};

use crate::cache::{Entry, EVICTED};
use crate::map::ServiceMap;
use crate::options::{DiscoveryBuilder, Options};
use crate::{events, refresh, CacheStats, Filter};

/// Services each thread remembers, see [`CachedDiscovery`].
const HOT_SLOTS: usize = 4;

static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

/// A per-thread shortcut to a service's current set.
struct Hot {
    owner: usize,
    name: Arc<str>,
    entry: Arc<Entry>,
    version: u64,
    set: Arc<InstanceSet>,
    /// This thread's own copies of the set's instances, in its order (see [`mirror`]).
    mirror: Vec<Arc<ServiceInfo>>,
}

/// Largest instance set copied per thread.
const MIRROR_MAX: usize = 256;

/// Copies of the instances for one thread. `discover_one` hands out `Arc`s; if every thread
/// handed out the same ones, their reference counts would bounce between CPU caches on every
/// call. A thread returns its own copies instead (same data; instances are immutable), and the
/// balancer still sees the shared set, so its per-set state is unaffected. Sets larger than
/// 256 instances are not copied.
///
/// `old` and `old_mirror` are the thread's previous set and its copies: an instance still at
/// the same position (the same `Arc`) keeps its copy, so after a change only the instances it
/// touched are copied again, not the whole set.
fn mirror(
    set: &InstanceSet,
    old: Option<&InstanceSet>,
    old_mirror: &[Arc<ServiceInfo>],
) -> Vec<Arc<ServiceInfo>> {
    if set.len() > MIRROR_MAX {
        return Vec::new();
    }
    set.iter()
        .enumerate()
        .map(|(i, s)| {
            let kept = old.and_then(|o| o.get(i)).zip(old_mirror.get(i));
            match kept {
                Some((was, own)) if Arc::ptr_eq(was, s) => Arc::clone(own),
                _ => Arc::new((**s).clone()),
            }
        })
        .collect()
}

/// Instances per chunk of an [`InstanceSet`]: positions `k * CHUNK ..` are contiguous in
/// memory. Only a shortcut for [`position_of`]; a different chunk size makes it miss, never
/// err, since every guess is checked by address.
const CHUNK: usize = 64;

/// The position of `picked` in `set`, from its address (no dereference, no scan of the
/// instances): `picked` is a reference into one of the set's chunks. For sets of at most
/// [`MIRROR_MAX`] instances, a few comparisons.
#[inline]
fn position_of(set: &InstanceSet, picked: &Arc<ServiceInfo>) -> Option<usize> {
    let size = std::mem::size_of::<Arc<ServiceInfo>>();
    let addr = picked as *const Arc<ServiceInfo> as usize;
    (0..set.len()).step_by(CHUNK).find_map(|start| {
        let base = set.get(start)? as *const Arc<ServiceInfo> as usize;
        let offset = addr.wrapping_sub(base) / size;
        let at = start + offset;
        (offset < CHUNK && set.get(at).is_some_and(|s| std::ptr::eq(s, picked))).then_some(at)
    })
}

/// `a == b`, for the per-thread shortcut's name check: names of up to 32 bytes (most service
/// names) are compared as two overlapping words or vectors read from both ends, without the
/// call to `memcmp` that a slice comparison makes.
#[inline]
fn same_name(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    match a.len() {
        4..8 => ends::<4>(a) == ends::<4>(b),
        8..16 => ends::<8>(a) == ends::<8>(b),
        16..=32 => ends::<16>(a) == ends::<16>(b),
        _ => a == b,
    }
}

/// The first and the last `N` bytes of `s` (they overlap when `s` is shorter than `2 * N`).
#[inline]
fn ends<const N: usize>(s: &[u8]) -> (Option<&[u8; N]>, Option<&[u8; N]>) {
    (s.first_chunk::<N>(), s.last_chunk::<N>())
}

impl Hot {
    /// Takes the entry's current set, published as `version`; false when the entry is out of
    /// the service map (or has no set).
    #[cold]
    fn reload(&mut self, version: u64) -> bool {
        if version & EVICTED != 0 {
            return false;
        }
        let Some(set) = self.entry.snap.load_full() else {
            return false;
        };
        self.mirror = mirror(&set, Some(&self.set), &self.mirror);
        self.set = set;
        self.version = version;
        true
    }
}

/// This thread's copy of `picked` (an instance of `set`) from `mirror`, or `picked` when
/// there is none (see [`mirror`]).
#[inline]
fn own_copy<'a>(
    set: &InstanceSet,
    mirror: &'a [Arc<ServiceInfo>],
    picked: &'a Arc<ServiceInfo>,
) -> &'a Arc<ServiceInfo> {
    if mirror.is_empty() {
        return picked;
    }
    position_of(set, picked)
        .and_then(|at| mirror.get(at))
        .unwrap_or(picked)
}

thread_local! {
    static HOT: RefCell<[Option<Hot>; HOT_SLOTS]> = const { RefCell::new([None, None, None, None]) };
    static HOT_NEXT: Cell<usize> = const { Cell::new(0) };
}

/// Service discovery with a per-service cache kept current by the registry's watch.
///
/// The first lookup of a service subscribes to [`ServiceRegistry::watch_service_shared`] and
/// fills the cache from its snapshot; a background task owned by the discovery then applies every
/// change, and replaces the set on every resync snapshot. A change costs the same whatever the
/// size of the service (a few microseconds at 100,000 instances): the cached set is an
/// [`InstanceSet`] kept by an [`InstanceSetWriter`](waypost_core_types::InstanceSetWriter),
/// which copies a few pointers per change, and its instances are the registry's own `Arc`s when
/// the registry keeps them in process (the in-memory registry), so the cache holds pointers,
/// not copies. Every new set goes through the balancer's
/// [`prepare`](LoadBalancer::prepare) before any lookup sees it, and a service dropped from the
/// cache (evicted, idle, cleared, closed) is [forgotten](LoadBalancer::forget) by the
/// balancer. If the watch ends or fails, the task polls
/// [`ServiceRegistry::list_instances_shared`] every [`refresh_interval`](DiscoveryBuilder::refresh_interval)
/// and tries to watch again until it succeeds. While the registry cannot be reached, lookups keep
/// answering from the last known set, and [`CacheStats::stale_for`] says how old it is. After a
/// gap in the watch (a registry restart), instances the first full set leaves out are still
/// served for the [`reconnect_grace`](DiscoveryBuilder::reconnect_grace) unless the registry
/// deletes them, so a service about to register again is never "not found" meanwhile.
///
/// Lookups on a filled cache take no lock and write no shared memory: the service map (in 256
/// shards) and each service's instance set are immutable snapshots behind `ArcSwap`, the hit
/// counter is striped per thread, and each thread keeps a shortcut to the last few services it
/// looked up (checked against a version number and an eviction flag on every call, so it never
/// serves an outdated set; it holds at most four snapshots per thread alive until replaced).
///
/// The cache does not keep every name it was ever asked for (service names can come from request
/// input): a service nobody looked up for
/// [`idle_timeout`](DiscoveryBuilder::idle_timeout) (default 5 min), or for
/// [`empty_idle_timeout`](DiscoveryBuilder::empty_idle_timeout) (default 30 s) when it has no
/// instance, is dropped with its watch task, and filled again by its next lookup. Lookups of a
/// name with no instance are answered from the cache (`ServiceNotFound`) until then. The idle
/// sweep is a task of the discovery, started by the first lookup.
///
/// Cloning gives another handle to the same discovery. [`close`](ServiceDiscovery::close), or
/// dropping the last handle, stops every background task and ends every stream from
/// [`watch`](ServiceDiscovery::watch).
///
/// Building one needs no runtime; the first lookup of each service spawns its watch task, so
/// lookups must run inside a tokio runtime.
///
/// `discover_one` drops the balancer's [`CallGuard`](waypost_core_types::CallGuard) at once (the
/// Laravel-Go module's API has no way to report the call); with load-aware balancers
/// ([`LeastRequest`], [`PeakEwma`]) use [`select`](ServiceDiscovery::select) and finish the guard
/// when the call ends.
///
/// [`LeastRequest`]: waypost_balancer::LeastRequest
/// [`PeakEwma`]: waypost_balancer::PeakEwma
#[derive(Clone)]
pub struct CachedDiscovery {
    inner: Arc<Inner>,
}

struct Inner {
    id: usize,
    registry: Arc<dyn ServiceRegistry>,
    balancer: Arc<dyn LoadBalancer>,
    opts: Arc<Options>,
    services: ServiceMap,
    /// The task that drops idle services, started with the first lookup.
    sweeper: Mutex<Option<JoinHandle<()>>>,
    closed: AtomicBool,
    shutdown: watch::Sender<bool>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(t) = self.sweeper.lock().take() {
            t.abort();
        }
        for e in self.services.remove_where(|_| true) {
            e.retire();
        }
    }
}

impl Inner {
    /// Drops the services nobody looked up for the idle time (see
    /// [`DiscoveryBuilder::idle_timeout`]), with their watch tasks.
    fn sweep(&self) {
        let now = Instant::now();
        let (idle, empty) = (self.opts.idle_timeout, self.opts.empty_idle_timeout);
        let stale: HashSet<*const Entry> = self
            .services
            .entries()
            .iter()
            .filter(|e| e.idle_at(now, idle, empty))
            .map(Arc::as_ptr)
            .collect();
        if stale.is_empty() {
            return;
        }
        let removed = self
            .services
            .remove_where(|e| stale.contains(&(e as *const Entry)));
        for e in &removed {
            e.retire();
        }
        tracing::debug!(
            dropped = removed.len(),
            "discovery: dropped services nobody looked up"
        );
    }
}

/// Sweeps `inner` every `tick` until it is closed or dropped (it holds only a weak reference).
async fn sweep_idle(inner: Weak<Inner>, tick: std::time::Duration) {
    let Some(mut shutdown) = inner.upgrade().map(|i| i.shutdown.subscribe()) else {
        return;
    };
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|closed| *closed) => return,
            _ = tokio::time::sleep(tick) => {}
        }
        match inner.upgrade() {
            Some(inner) => inner.sweep(),
            None => return,
        }
    }
}

impl std::fmt::Debug for CachedDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedDiscovery")
            .field("registry", &self.inner.registry.backend())
            .field("balancer", &self.inner.balancer.name())
            .field("services", &self.inner.services.len())
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .finish()
    }
}

impl CachedDiscovery {
    /// A discovery over `registry` picking with `balancer`, with default options (the Laravel-Go
    /// module's `NewMemoryServiceDiscovery(registry, balancer)`, for any registry).
    pub fn new(registry: Arc<dyn ServiceRegistry>, balancer: Arc<dyn LoadBalancer>) -> Self {
        Self::from_parts(registry, balancer, Options::default())
    }

    /// Options for a discovery over `registry`.
    pub fn builder(registry: Arc<dyn ServiceRegistry>) -> DiscoveryBuilder {
        DiscoveryBuilder::new(registry)
    }

    pub(crate) fn from_parts(
        registry: Arc<dyn ServiceRegistry>,
        balancer: Arc<dyn LoadBalancer>,
        opts: Options,
    ) -> Self {
        let (shutdown, _) = watch::channel(false);
        CachedDiscovery {
            inner: Arc::new(Inner {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                registry,
                balancer,
                opts: Arc::new(opts),
                services: ServiceMap::default(),
                sweeper: Mutex::new(None),
                closed: AtomicBool::new(false),
                shutdown,
            }),
        }
    }

    /// The registry this discovery reads.
    pub fn registry(&self) -> &Arc<dyn ServiceRegistry> {
        &self.inner.registry
    }

    /// The balancer `select` and `discover_one` use.
    pub fn balancer(&self) -> &Arc<dyn LoadBalancer> {
        &self.inner.balancer
    }

    /// Whether [`close`](ServiceDiscovery::close) was called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// Picks an instance from the cache without waiting: `None` when the service is not cached
    /// yet (then use [`select`](ServiceDiscovery::select), which fills it). The fast path of
    /// `select` and `discover_one`.
    ///
    /// # Errors
    /// Inside the `Some`: `Closed`, `ServiceNotFound` when the cached set is empty,
    /// `NoHealthyInstance` when all of it is unhealthy.
    #[inline]
    pub fn select_cached(&self, name: &str, ctx: &SelectContext<'_>) -> Option<Result<Selection>> {
        if self.inner.closed.load(Ordering::Relaxed) {
            return Some(Err(Error::Closed));
        }
        if let Some(done) = self.select_hot(name, ctx) {
            return Some(done);
        }
        self.inner.services.with(name, |entry| {
            let version = entry.version.load(Ordering::Acquire);
            let set = entry.snap.load_full()?;
            entry.hit();
            let done = self.pick(name, &set, &[], ctx);
            self.remember(entry, version, set);
            Some(done)
        })?
    }

    /// The per-thread shortcut: the last few services this thread looked up, with their
    /// sets, checked against the entry's version (which also says whether the entry was
    /// evicted). No shared write, no hashing; a changed snapshot is reloaded.
    #[inline]
    fn select_hot(&self, name: &str, ctx: &SelectContext<'_>) -> Option<Result<Selection>> {
        self.with_hot(name, |h| {
            h.entry.hit();
            Some(self.pick(name, &h.set, &h.mirror, ctx))
        })
    }

    /// `discover_one` through the per-thread shortcut, when it picks an instance: the result
    /// fits in a register. `None` (and no hit counted) when the shortcut does not know the
    /// service or the lookup ends in an error; [`select_cached`](Self::select_cached) then
    /// answers.
    #[inline]
    fn discover_hot(&self, name: &str) -> Option<Arc<ServiceInfo>> {
        if self.inner.closed.load(Ordering::Relaxed) {
            return None;
        }
        self.with_hot(name, |h| {
            // Empty, or nothing to pick: the errors come from `select_cached`.
            if h.set.selectable() == 0 {
                return None;
            }
            let (picked, _guard) = self
                .inner
                .balancer
                .pick_warming(&h.set, &SelectContext::default())?;
            h.entry.hit();
            Some(Arc::clone(own_copy(&h.set, &h.mirror, picked)))
        })
    }

    /// Runs `f` on this thread's shortcut to `name`, brought up to date with the entry's
    /// current set; `None` when this thread has none (or the entry left the service map).
    #[inline]
    fn with_hot<R>(&self, name: &str, f: impl FnOnce(&Hot) -> Option<R>) -> Option<R> {
        HOT.with(|hot| {
            // A balancer that calls back into discovery finds the cell borrowed: slow path.
            let mut hot = hot.try_borrow_mut().ok()?;
            let slot = hot.iter_mut().find(|slot| {
                slot.as_ref()
                    .is_some_and(|h| h.owner == self.inner.id && same_name(&h.name, name))
            })?;
            let h = slot.as_mut()?;
            let version = h.entry.version.load(Ordering::Acquire);
            if version != h.version && !h.reload(version) {
                if version & EVICTED != 0 {
                    // Out of the map: forget it, the slow path finds the current entry.
                    *slot = None;
                }
                return None;
            }
            f(h)
        })
    }

    fn remember(&self, entry: &Arc<Entry>, version: u64, set: Arc<InstanceSet>) {
        HOT.with(|hot| {
            let Ok(mut hot) = hot.try_borrow_mut() else {
                return;
            };
            let slot = HOT_NEXT.with(|n| {
                let i = n.get();
                n.set((i + 1) % HOT_SLOTS);
                i
            });
            hot[slot] = Some(Hot {
                owner: self.inner.id,
                name: entry.name.clone(),
                entry: entry.clone(),
                version,
                mirror: mirror(&set, None, &[]),
                set,
            });
        });
    }

    /// Picks in `set` with the balancer (select and begin in one); returns the same instance
    /// from `mirror` (this thread's copies, in the set's order) when there is one, so that
    /// threads do not share reference counts.
    #[inline]
    fn pick(
        &self,
        name: &str,
        set: &InstanceSet,
        mirror: &[Arc<ServiceInfo>],
        ctx: &SelectContext<'_>,
    ) -> Result<Selection> {
        if set.is_empty() {
            return Err(Error::ServiceNotFound(name.to_owned()));
        }
        if set.selectable() == 0 {
            return Err(Error::NoHealthyInstance(name.to_owned()));
        }
        match self.inner.balancer.pick_warming(set, ctx) {
            Some((picked, guard)) => Ok(Selection {
                instance: Arc::clone(own_copy(set, mirror, picked)),
                guard,
            }),
            None => Err(Error::NoHealthyInstance(name.to_owned())),
        }
    }

    /// Picks among `matching` (a filtered list, not a cached set) with the balancer's
    /// list-based [`select`](LoadBalancer::select).
    fn pick_listed(
        &self,
        name: &str,
        matching: &[Arc<ServiceInfo>],
        ctx: &SelectContext<'_>,
    ) -> Result<Selection> {
        if matching.is_empty() {
            return Err(Error::ServiceNotFound(name.to_owned()));
        }
        if crate::cache::selectable(matching) == 0 {
            return Err(Error::NoHealthyInstance(name.to_owned()));
        }
        match self.inner.balancer.select(matching, ctx) {
            Some(picked) => Ok(Selection {
                guard: self.inner.balancer.begin(picked),
                instance: picked.clone(),
            }),
            None => Err(Error::NoHealthyInstance(name.to_owned())),
        }
    }

    /// The cached set of `name`, filling it on first use.
    async fn snapshot(&self, name: &str) -> Result<Arc<InstanceSet>> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        let cached = self.inner.services.with(name, |entry| {
            let snap = entry.snap.load_full()?;
            entry.hit();
            Some(snap)
        });
        if let Some(Some(snap)) = cached {
            return Ok(snap);
        }
        self.fill(name).await
    }

    #[cold]
    async fn fill(&self, name: &str) -> Result<Arc<InstanceSet>> {
        self.start_sweeper();
        let entry = self
            .inner
            .services
            .get_or_insert(name, || Entry::new(name, self.inner.balancer.clone()));
        entry.miss();
        let _filling = entry.fill.lock().await;
        if let Some(snap) = entry.snap.load_full() {
            return Ok(snap);
        }
        if self.is_closed() {
            return Err(Error::Closed);
        }
        let inner = &self.inner;
        match refresh::first_fill(&entry, &*inner.registry, &inner.opts).await {
            Ok(stream) => {
                let task = tokio::spawn(refresh::run(
                    entry.clone(),
                    inner.registry.clone(),
                    inner.opts.clone(),
                    stream,
                    inner.shutdown.subscribe(),
                ));
                *entry.task.lock() = Some(task);
                // Closed or evicted while filling: nobody owns the task any more.
                if self.is_closed() || !self.holds(name, &entry) {
                    entry.abort_task();
                }
                entry
                    .snap
                    .load_full()
                    .ok_or_else(|| Error::Unavailable(format!("`{}` was not filled", quoted(name))))
            }
            Err(e) => {
                self.remove_if(name, &entry);
                Err(e)
            }
        }
    }

    fn holds(&self, name: &str, entry: &Arc<Entry>) -> bool {
        self.inner
            .services
            .with(name, |e| Arc::ptr_eq(e, entry))
            .unwrap_or(false)
    }

    fn remove_if(&self, name: &str, entry: &Arc<Entry>) {
        if self.inner.services.remove_if(name, entry) {
            entry.retire();
        }
    }

    /// Starts the task that drops idle services, once (none when both idle times are
    /// `Duration::MAX`).
    fn start_sweeper(&self) {
        let opts = &self.inner.opts;
        let Some(tick) = opts.sweep_tick() else {
            return;
        };
        let mut slot = self.inner.sweeper.lock();
        if slot.is_some() || self.is_closed() {
            return;
        }
        *slot = Some(tokio::spawn(sweep_idle(Arc::downgrade(&self.inner), tick)));
    }

    /// One instance of `name` chosen by the balancer: [`ServiceDiscovery::discover_one`]
    /// without the box the trait method puts its future in. When the service is cached the
    /// future is ready at its first poll and allocates nothing; the first lookup of a service
    /// fills the cache as the trait method does. Callers holding the concrete type (or
    /// `Arc<CachedDiscovery>`) get this one; through `dyn ServiceDiscovery` the trait method
    /// runs the same code in a boxed future.
    ///
    /// # Errors
    /// As [`select`](ServiceDiscovery::select).
    pub async fn discover_one(&self, name: &str) -> Result<Arc<ServiceInfo>> {
        if let Some(found) = self.discover_hot(name) {
            return Ok(found);
        }
        if let Some(done) = self.select_cached(name, &SelectContext::default()) {
            return done.map(|sel| sel.instance);
        }
        self.fill_and_pick(name).await
    }

    /// The first lookup of `name` by `discover_one`: fills the cache, then picks. Boxed, so
    /// that the fill's state does not make the future of every `discover_one` (which a hit
    /// moves and polls) several times larger.
    #[cold]
    fn fill_and_pick<'a>(
        &'a self,
        name: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Arc<ServiceInfo>>> + Send + 'a>> {
        Box::pin(async move {
            let set = self.fill(name).await?;
            self.pick(name, &set, &[], &SelectContext::default())
                .map(|sel| sel.instance)
        })
    }

    /// How many services are cached.
    pub fn cached_services(&self) -> usize {
        self.inner.services.len()
    }

    /// Every instance of `name` that matches `filter`, healthy or not.
    ///
    /// # Errors
    /// As [`discover`](ServiceDiscovery::discover); `ServiceNotFound` also when no instance
    /// matches.
    pub async fn discover_with(
        &self,
        name: &str,
        filter: &Filter,
    ) -> Result<Vec<Arc<ServiceInfo>>> {
        let set = self.snapshot(name).await?;
        let out: Vec<_> = set.iter().filter(|s| filter.matches(s)).cloned().collect();
        if out.is_empty() {
            return Err(Error::ServiceNotFound(name.to_owned()));
        }
        Ok(sorted_by_id(out))
    }

    /// One instance of `name` among those matching `filter`, chosen by the balancer (healthy
    /// ones first, `Unknown` ones when none is healthy, as [`select`](ServiceDiscovery::select)).
    ///
    /// # Errors
    /// As [`select`](ServiceDiscovery::select); `ServiceNotFound` also when no instance matches.
    pub async fn select_with(
        &self,
        name: &str,
        filter: &Filter,
        ctx: &SelectContext<'_>,
    ) -> Result<Selection> {
        let set = self.snapshot(name).await?;
        let matching: Vec<_> = set.iter().filter(|s| filter.matches(s)).cloned().collect();
        self.pick_listed(name, &matching, ctx)
    }

    /// Statistics of every cached service, sorted by name.
    pub fn cache_stats(&self) -> Vec<CacheStats> {
        let mut out: Vec<_> = self
            .inner
            .services
            .entries()
            .iter()
            .map(|e| e.stats())
            .collect();
        out.sort_by(|a, b| a.service.cmp(&b.service));
        out
    }

    /// Statistics of one cached service.
    pub fn service_stats(&self, name: &str) -> Option<CacheStats> {
        self.inner.services.with(name, |e| e.stats())
    }

    /// Empties the cache and stops every service's background task; the next lookup of each
    /// service fills it again from the registry.
    pub fn clear_cache(&self) {
        for e in self.inner.services.remove_where(|_| true) {
            e.retire();
        }
    }

    /// Drops one service from the cache (and stops its task; the balancer forgets it). Returns
    /// whether it was cached.
    pub fn evict(&self, name: &str) -> bool {
        match self.inner.services.remove(name) {
            Some(e) => {
                e.retire();
                true
            }
            None => false,
        }
    }
}

/// `all`, sorted by id: the order `discover` promises. A cached set is in arrival order (a
/// full set starts sorted, later changes append or fill gaps), so the run-adaptive stable sort
/// has little to do.
fn sorted_by_id(mut all: Vec<Arc<ServiceInfo>>) -> Vec<Arc<ServiceInfo>> {
    all.sort_by(|a, b| a.id.cmp(&b.id));
    all
}

#[async_trait]
impl ServiceDiscovery for CachedDiscovery {
    async fn discover(&self, name: &str) -> Result<Vec<Arc<ServiceInfo>>> {
        let set = self.snapshot(name).await?;
        if set.is_empty() {
            return Err(Error::ServiceNotFound(name.to_owned()));
        }
        Ok(sorted_by_id(set.to_vec()))
    }

    async fn select(&self, name: &str, ctx: &SelectContext<'_>) -> Result<Selection> {
        if let Some(done) = self.select_cached(name, ctx) {
            return done;
        }
        let set = self.fill(name).await?;
        self.pick(name, &set, &[], ctx)
    }

    async fn discover_one(&self, name: &str) -> Result<Arc<ServiceInfo>> {
        CachedDiscovery::discover_one(self, name).await
    }

    async fn watch(&self, name: &str) -> Result<ServiceEventStream> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        let stream = self.inner.registry.watch_service(name).await?;
        Ok(events::changes(stream, self.inner.shutdown.subscribe()))
    }

    async fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let _ = self.inner.shutdown.send(true);
        if let Some(t) = self.inner.sweeper.lock().take() {
            t.abort();
        }
        self.clear_cache();
        if self.inner.opts.owns_registry {
            self.inner.registry.close().await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use waypost_core_types::InstanceSetWriter;

    use super::*;

    fn svc(i: usize) -> Arc<ServiceInfo> {
        Arc::new(ServiceInfo::new(format!("i{i:03}"), "s", "10.0.0.1", 80))
    }

    #[tokio::test]
    async fn the_discover_one_future_is_small_and_send() {
        let registry = Arc::new(waypost_registry_memory::MemoryRegistry::new());
        let d = CachedDiscovery::new(registry, Arc::new(waypost_balancer::RoundRobin::new()));
        let size = std::mem::size_of_val(&d.discover_one("s"));
        assert!(size <= 64, "{size} bytes");
        // And `Send`, as the trait's boxed one: callers spawn it.
        fn send<T: Send>(t: T) -> T {
            t
        }
        let err = send(d.discover_one("s")).await.unwrap_err();
        assert!(
            matches!(err, Error::ServiceNotFound(ref n) if n == "s"),
            "{err:?}"
        );
    }

    #[test]
    fn names_compare_as_strings() {
        let base: String = ('a'..='z').chain('0'..='9').chain('A'..='J').collect();
        for len in 0..=base.len() {
            let a = &base[..len];
            // The same bytes elsewhere in memory.
            let copy = String::from(a);
            assert!(same_name(a, &copy), "{len}");
            // A different byte at every position, and every other length, is a different name.
            for at in 0..len {
                let mut b = a.as_bytes().to_vec();
                b[at] = b'-';
                let b = String::from_utf8(b).unwrap();
                assert!(!same_name(a, &b), "{len} at {at}");
            }
            for other in 0..=base.len() {
                assert_eq!(same_name(a, &base[..other]), other == len, "{len} {other}");
            }
        }
    }

    #[test]
    fn positions_from_addresses() {
        for n in [1, 63, 64, 65, 200, 256, 300] {
            let set = InstanceSet::new("s", (0..n).map(svc));
            for i in 0..n {
                assert_eq!(
                    position_of(&set, set.get(i).unwrap()),
                    Some(i),
                    "{i} of {n}"
                );
            }
            // The same instance, not in the set: never mistaken for a position.
            let stranger = set.get(0).unwrap().clone();
            assert_eq!(position_of(&set, &stranger), None);
        }
    }

    #[test]
    fn mirrors_copy_only_what_changed() {
        let mut w = InstanceSetWriter::new("s");
        w.replace((0..100).map(svc));
        let first = Arc::clone(w.current());
        let mine = mirror(&first, None, &[]);
        assert!(mine
            .iter()
            .zip(first.iter())
            .all(|(m, s)| !Arc::ptr_eq(m, s) && **m == **s));
        w.remove("i010"); // the last instance moves to position 10
        w.upsert(Arc::new(ServiceInfo::new("i020", "s", "10.0.0.2", 81)));
        let second = Arc::clone(w.current());
        let next = mirror(&second, Some(&first), &mine);
        assert_eq!(next.len(), 99);
        for (i, (m, s)) in next.iter().zip(second.iter()).enumerate() {
            assert_eq!(**m, **s, "position {i}");
            let reused = Arc::ptr_eq(m, &mine[i]);
            assert_eq!(reused, i != 10 && i != 20, "position {i}");
        }
        assert!(mirror(&InstanceSet::new("s", (0..300).map(svc)), None, &[]).is_empty());
    }
}
