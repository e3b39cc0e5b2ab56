//! Round robin, per service and lock-free.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use waypost_core_types::{
    CallGuard, Health, InstanceSet, LoadBalancer, SelectContext, ServiceInfo,
};

use crate::pick;
use crate::prepared::{avoided, Candidates, Generational, PerService};
use crate::state::{StateMap, Striped};

/// Services remembered per thread, see [`RoundRobin`].
const THREAD_CACHE: usize = 4;

static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

/// From how many candidates a prepared pick warms the instances of its next turns: below,
/// they stay in the CPU's caches anyway.
const WARM_FROM: usize = 4096;

/// Turns per warm-up: every `WARM_BATCH`-th turn of a thread reads the next batch's
/// instances.
const WARM_BATCH: usize = 32;

/// A per-thread shortcut from an instance set to its service's counter.
struct Cached {
    owner: usize,
    generation: usize,
    /// The first instance of the set the counter was found for. Holding it keeps its name
    /// alive, so pointer identity proves the same service name.
    first: Arc<ServiceInfo>,
    counter: Arc<Striped>,
}

thread_local! {
    static CACHE: RefCell<[Option<Cached>; THREAD_CACHE]> = const { RefCell::new([None, None, None, None]) };
    static CACHE_NEXT: Cell<usize> = const { Cell::new(0) };
}

/// Picks the healthy instances of each service in turn (the `Unknown` ones when none is
/// healthy, see [`Health`]).
///
/// Each service (keyed by the instances' name) has its own position, so two services never
/// disturb each other's rotation (the Go original shared one counter). A pick takes the first
/// healthy instance at or after the position and moves the position past it, so unhealthy
/// instances are stepped over without giving their turn to a neighbour: on
/// `[1 healthy, 2 healthy, 3 unhealthy, 4 healthy]` the picks are 1, 2, 4, 1, 2, 4. When most
/// instances are healthy a pick is O(1).
///
/// The hot path takes no lock: the per-service counter is found in a copy-on-write map read
/// through `ArcSwap` (and each thread remembers the last few services it picked for, keyed by the
/// identity of the set's first instance, so a repeated pick skips even the map lookup), and it is
/// striped over cache-padded slots, one per thread group, so threads do not contend on one cache
/// line. Every thread's own sequence is an exact rotation; across
/// threads the load is spread evenly but not interleaved in a global order.
///
/// On an [`InstanceSet`] ([`LoadBalancer::select_set`], [`LoadBalancer::pick`]) the rotation
/// runs over the set's candidates, whose positions are precomputed once per generation (in
/// [`LoadBalancer::prepare`], or on the first pick of a generation nobody prepared) when some
/// instances are not of the selection tier, so a pick is O(1) whatever the size and the health
/// mix. Set and slice picks of one service share its position.
///
/// ```
/// use std::sync::Arc;
/// use waypost_balancer::RoundRobin;
/// use waypost_core_types::{Health, LoadBalancer, SelectContext, ServiceInfo};
///
/// let svc = |id: &str, h| Arc::new(ServiceInfo::new(id, "user-service", "10.0.0.1", 80).with_health(h));
/// let set = [svc("1", Health::Healthy), svc("2", Health::Healthy),
///            svc("3", Health::Unhealthy), svc("4", Health::Healthy)];
/// let rr = RoundRobin::new();
/// let picks: Vec<_> = (0..6)
///     .map(|_| rr.select(&set, &SelectContext::default()).unwrap().id.clone())
///     .collect();
/// assert_eq!(picks, ["1", "2", "4", "1", "2", "4"]);
/// ```
pub struct RoundRobin {
    id: usize,
    counters: StateMap<Striped>,
    sets: PerService<Prepared>,
}

/// What a pick on one generation of a service's set needs.
struct Prepared {
    generation: u64,
    /// The service's position, shared with the slice path and kept across generations.
    counter: Arc<Striped>,
    candidates: Candidates,
}

impl Generational for Prepared {
    fn generation(&self) -> u64 {
        self.generation
    }
}

impl Prepared {
    /// The next candidate in turn; avoided ones are stepped over while another is left.
    #[inline]
    fn next(&self, set: &InstanceSet, ctx: &SelectContext<'_>, warm: bool) -> Option<usize> {
        let k = self.candidates.len();
        if k == 0 {
            return None;
        }
        let turn = self.counter.next();
        let n = self.candidates.wrap(turn);
        if warm && k >= WARM_FROM && turn % WARM_BATCH == 0 {
            self.warm(set, n);
        }
        let i = self.candidates.at(n);
        if ctx.avoid.is_empty() || !avoided(set, i, ctx) {
            return Some(i);
        }
        Some(self.next_not_avoided(set, ctx, n).unwrap_or(i))
    }

    /// Reads the reference counts of the candidates this thread picks after the next
    /// [`WARM_BATCH`] (its turns are consecutive), so that they are in the CPU's cache when
    /// the caller of [`LoadBalancer::pick_warming`] clones or reads them. The reads of one batch
    /// overlap: one wait for memory per batch instead of one per pick.
    #[cold]
    #[inline(never)]
    fn warm(&self, set: &InstanceSet, n: usize) {
        let k = self.candidates.len();
        // `n < k` and `k ≥ WARM_FROM > 2 * WARM_BATCH`: one subtraction wraps a candidate.
        let mut c = n + WARM_BATCH;
        let mut sum = 0usize;
        for _ in 0..WARM_BATCH {
            if c >= k {
                c -= k;
            }
            if let Some(s) = set.get(self.candidates.at(c)) {
                sum = sum.wrapping_add(Arc::strong_count(s));
            }
            c += 1;
        }
        std::hint::black_box(sum);
    }

    /// The first candidate after the `n`-th that is not avoided: among `avoid.len() + 1`
    /// consecutive candidates one is not avoided, if any is.
    #[cold]
    fn next_not_avoided(
        &self,
        set: &InstanceSet,
        ctx: &SelectContext<'_>,
        n: usize,
    ) -> Option<usize> {
        let k = self.candidates.len();
        (1..k.min(ctx.avoid.len() + 1)).find_map(|step| {
            let i = self.candidates.at((n + step) % k);
            (!avoided(set, i, ctx)).then(|| {
                self.counter.advance(step);
                i
            })
        })
    }
}

impl Default for RoundRobin {
    fn default() -> Self {
        RoundRobin {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            counters: StateMap::default(),
            sets: PerService::default(),
        }
    }
}

impl RoundRobin {
    /// A round-robin balancer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `f` with the counter of the service `first` belongs to.
    #[inline]
    fn with_counter<R>(&self, first: &Arc<ServiceInfo>, f: impl FnOnce(&Striped) -> R) -> R {
        let generation = self.counters.generation();
        let mut f = Some(f);
        let hit = CACHE.with(|c| {
            let c = c.borrow();
            let e = c.iter().flatten().find(|e| {
                e.owner == self.id && e.generation == generation && Arc::ptr_eq(&e.first, first)
            })?;
            f.take().map(|f| f(&e.counter))
        });
        if let Some(r) = hit {
            return r;
        }
        let counter = self.counters.get_or_insert(&first.name, Striped::default);
        let r = f.take().map(|f| f(&counter));
        CACHE.with(|c| {
            let slot = CACHE_NEXT.with(|n| {
                let i = n.get();
                n.set((i + 1) % THREAD_CACHE);
                i
            });
            c.borrow_mut()[slot] = Some(Cached {
                owner: self.id,
                generation,
                first: first.clone(),
                counter,
            });
        });
        r.unwrap_or_else(|| unreachable!("f runs once"))
    }

    /// Forgets the position of services for which `keep` returns false (services that are gone).
    pub fn retain_services(&self, mut keep: impl FnMut(&str) -> bool) {
        self.sets.retain(&mut keep);
        self.counters.retain(|name, _| keep(name));
    }

    fn build(&self, set: &InstanceSet) -> Prepared {
        Prepared {
            generation: set.generation(),
            counter: self.counters.get_or_insert(set.service(), Striped::default),
            candidates: Candidates::new(set),
        }
    }

    /// A pick on a set whose generation was not prepared: prepares it (O(n)), or, for a set
    /// older than the prepared one, picks on a copy made for this pick alone.
    #[cold]
    #[inline(never)]
    fn next_unprepared(&self, set: &InstanceSet, ctx: &SelectContext<'_>) -> Option<usize> {
        self.prepare(set);
        match self.sets.with(set, |p| p.next(set, ctx, false)) {
            Some(r) => r,
            None => self.build(set).next(set, ctx, false),
        }
    }
}

impl std::fmt::Debug for RoundRobin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoundRobin")
            .field("services", &self.counters.len())
            .finish()
    }
}

impl LoadBalancer for RoundRobin {
    fn name(&self) -> &'static str {
        "round_robin"
    }

    fn select<'a>(
        &self,
        instances: &'a [Arc<ServiceInfo>],
        ctx: &SelectContext<'_>,
    ) -> Option<&'a Arc<ServiceInfo>> {
        let first = instances.first()?;
        let len = instances.len();
        self.with_counter(first, |counter| {
            let start = counter.next() % len;
            let strict = pick::wants_strict(ctx);
            // The health tiers written out (not through `pick::in_tiers`, whose closure cost
            // two nanoseconds here): the second tier only when the first has no candidate.
            let [first, second] = Health::SELECTION_ORDER;
            let found = match next_in_tier(instances, ctx, start, strict, first) {
                Some(i) => Some(i),
                None => next_in_second_tier(instances, ctx, start, strict, second),
            };
            if let Some(i) = found {
                // Skip the instances stepped over, so the next pick starts after this one.
                let skipped = (i + len - start) % len;
                if skipped > 0 {
                    counter.advance(skipped);
                }
            }
            found
        })
        .map(|i| &instances[i])
    }

    /// O(1): the next candidate of the prepared generation (the positions of the selection
    /// tier are precomputed when some instances are not of it).
    #[inline]
    fn select_set<'a>(
        &self,
        set: &'a InstanceSet,
        ctx: &SelectContext<'_>,
    ) -> Option<&'a Arc<ServiceInfo>> {
        let i = match self.sets.with(set, |p| p.next(set, ctx, false)) {
            Some(i) => i,
            None => self.next_unprepared(set, ctx),
        }?;
        set.get(i)
    }

    /// [`select_set`](Self::select_set) that, in a set of 4,096 candidates or more, reads the
    /// instances of the thread's next turns ahead: 32 of them every 32 turns. (The lookup is
    /// written out in both: a shared helper made `select_set` 1–2 ns slower.)
    #[inline]
    fn pick_warming<'a>(
        &self,
        set: &'a InstanceSet,
        ctx: &SelectContext<'_>,
    ) -> Option<(&'a Arc<ServiceInfo>, CallGuard)> {
        let i = match self.sets.with(set, |p| p.next(set, ctx, true)) {
            Some(i) => i,
            None => self.next_unprepared(set, ctx),
        }?;
        Some((set.get(i)?, CallGuard::noop()))
    }

    fn prepare(&self, set: &InstanceSet) {
        self.sets.prepare(set, || self.build(set));
    }

    fn forget(&self, service: &str) {
        self.sets.forget(service);
        self.counters.remove(service);
    }
}

/// The first candidate of `tier` at or after `start`, avoided ones only if no other is left.
#[inline(always)]
fn next_in_tier(
    instances: &[Arc<ServiceInfo>],
    ctx: &SelectContext<'_>,
    start: usize,
    strict: bool,
    tier: Health,
) -> Option<usize> {
    match next_from(instances, ctx, start, strict, tier) {
        Some(i) => Some(i),
        None if strict => next_from(instances, ctx, start, false, tier),
        None => None,
    }
}

#[cold]
#[inline(never)]
fn next_in_second_tier(
    instances: &[Arc<ServiceInfo>],
    ctx: &SelectContext<'_>,
    start: usize,
    strict: bool,
    tier: Health,
) -> Option<usize> {
    next_in_tier(instances, ctx, start, strict, tier)
}

/// The first candidate at or after `start`, wrapping around.
#[inline]
fn next_from(
    instances: &[Arc<ServiceInfo>],
    ctx: &SelectContext<'_>,
    start: usize,
    strict: bool,
    tier: Health,
) -> Option<usize> {
    let len = instances.len();
    (0..len)
        .map(|k| {
            let i = start + k;
            if i >= len {
                i - len
            } else {
                i
            }
        })
        .find(|i| pick::usable(&instances[*i], ctx, strict, tier))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{ids, set};

    #[test]
    fn laravel_go_demo_order() {
        let s = set("demo", &[true, true, false, true]);
        let rr = RoundRobin::new();
        let picks = ids((0..6).map(|_| rr.select(&s, &SelectContext::default())));
        assert_eq!(
            picks,
            ["demo-0", "demo-1", "demo-3", "demo-0", "demo-1", "demo-3"]
        );
    }

    #[test]
    fn each_service_has_its_own_position() {
        let a = set("a", &[true, true, true]);
        let b = set("b", &[true, true]);
        let rr = RoundRobin::new();
        let ctx = SelectContext::default();
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(rr.select(&a, &ctx).unwrap().id.clone());
            got.push(rr.select(&b, &ctx).unwrap().id.clone());
        }
        assert_eq!(got, ["a-0", "b-0", "a-1", "b-1", "a-2", "b-0"]);
    }

    #[test]
    fn new_set_of_same_service_keeps_position_and_retain_resets() {
        let rr = RoundRobin::new();
        let ctx = SelectContext::default();
        let a = set("p", &[true, true, true]);
        assert_eq!(rr.select(&a, &ctx).unwrap().id, "p-0");
        // The same service as a new snapshot (new allocations): the rotation continues.
        let b = set("p", &[true, true, true]);
        assert_eq!(rr.select(&b, &ctx).unwrap().id, "p-1");
        assert_eq!(rr.select(&a, &ctx).unwrap().id, "p-2");
        // Forgetting the service starts it over, even for sets this thread has seen.
        rr.retain_services(|_| false);
        assert_eq!(rr.select(&a, &ctx).unwrap().id, "p-0");
        // Two balancers never share positions.
        let other = RoundRobin::new();
        assert_eq!(other.select(&a, &ctx).unwrap().id, "p-0");
    }

    #[test]
    fn warming_picks_keep_the_rotation() {
        // Large enough to warm (every 32nd turn reads the next 32 candidates), with unhealthy
        // instances so that candidates are not positions, over the wrap-around twice.
        let health: Vec<bool> = (0..WARM_FROM * 2 + 300).map(|i| i % 7 != 3).collect();
        let healthy = health.iter().filter(|h| **h).count();
        assert!(
            healthy >= WARM_FROM,
            "{healthy} candidates: too few to warm"
        );
        let s = InstanceSet::new("w", set("w", &health));
        let plain = RoundRobin::new();
        let warming: Arc<dyn LoadBalancer> = Arc::new(RoundRobin::new());
        plain.prepare(&s);
        warming.prepare(&s);
        let ctx = SelectContext::default();
        for _ in 0..2 * healthy + 100 {
            let (a, _) = plain.pick(&s, &ctx).unwrap();
            let (b, _) = Arc::clone(&warming).pick_warming(&s, &ctx).unwrap();
            assert_eq!(a.id, b.id);
            assert_eq!(a.health, Health::Healthy);
        }
    }

    #[test]
    fn none_when_empty_or_all_unhealthy() {
        let rr = RoundRobin::new();
        assert!(rr.select(&[], &SelectContext::default()).is_none());
        assert!(rr
            .select(&set("x", &[false, false]), &SelectContext::default())
            .is_none());
    }

    #[test]
    fn avoid_is_soft() {
        let s = set("v", &[true, true, false]);
        let rr = RoundRobin::new();
        let avoid = vec!["v-0".to_string()];
        let ctx = SelectContext {
            hash_key: None,
            avoid: &avoid,
        };
        for _ in 0..5 {
            assert_eq!(rr.select(&s, &ctx).unwrap().id, "v-1");
        }
        let avoid_all = vec!["v-0".to_string(), "v-1".to_string()];
        let ctx = SelectContext {
            hash_key: None,
            avoid: &avoid_all,
        };
        assert!(rr.select(&s, &ctx).unwrap().is_healthy());
    }

    #[test]
    fn threads_share_the_load_evenly() {
        let s = Arc::new(set("t", &[true; 4]));
        let rr = Arc::new(RoundRobin::new());
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let (s, rr) = (s.clone(), rr.clone());
                std::thread::spawn(move || {
                    let mut c = [0usize; 4];
                    for _ in 0..4000 {
                        c[crate::testing::index(
                            rr.select(&s, &SelectContext::default()).unwrap(),
                        )] += 1;
                    }
                    c
                })
            })
            .collect();
        let mut total = [0usize; 4];
        for h in hs {
            for (t, c) in total.iter_mut().zip(h.join().unwrap()) {
                *t += c;
            }
        }
        // Every slot's sequence is an exact rotation, so the sum is exact.
        assert_eq!(total, [4000; 4]);
    }

    #[test]
    fn set_rotation_over_candidates_across_generations_and_forget() {
        use crate::testing::{instance, writer};
        use Health::{Healthy as H, Unhealthy as D};
        let mut w = writer("rr", &[H, H, D, H]);
        let rr = RoundRobin::new();
        let ctx = SelectContext::default();
        let set = Arc::clone(w.current());
        rr.prepare(&set);
        let picks = ids((0..4).map(|_| rr.select_set(&set, &ctx)));
        assert_eq!(picks, ["rr-0", "rr-1", "rr-3", "rr-0"]);
        // A new generation: the rotation goes on over the new candidates.
        w.upsert(instance("rr", "rr-2", H, 100));
        let set = Arc::clone(w.current());
        rr.prepare(&set);
        let picks = ids((0..4).map(|_| rr.select_set(&set, &ctx)));
        assert_eq!(picks, ["rr-0", "rr-1", "rr-2", "rr-3"]);
        // Avoided instances are stepped over, and the next pick starts after the one taken.
        let avoid = vec!["rr-0".to_string(), "rr-1".to_string()];
        let avoiding = SelectContext {
            hash_key: None,
            avoid: &avoid,
        };
        assert_eq!(rr.select_set(&set, &avoiding).unwrap().id, "rr-2");
        assert_eq!(rr.select_set(&set, &ctx).unwrap().id, "rr-3");
        // Forgetting the service drops its position.
        rr.forget("rr");
        assert_eq!(rr.sets.len(), 0);
        assert_eq!(rr.select_set(&set, &ctx).unwrap().id, "rr-0");
    }
}
