//! What balancers precompute per [`InstanceSet`] generation, and how a pick finds it.
//!
//! [`PerService`] keeps, for each service, the state prepared for the latest set it saw (an
//! alias table, a schedule, per-instance state, a ring), and attaches it to the set it was
//! prepared for ([`InstanceSet::attach`]): a pick on that set finds it with one load. For a set
//! without it (prepared by another balancer, or cloned), the pick looks it up by the set's
//! generation: each thread keeps the last few prepared states it used, keyed by (balancer,
//! generation), so a pick on an unchanged set costs a short scan of a thread-local array and
//! no hashing, no lock and no shared write. A miss reads the per-service map (lock-free); a
//! set whose generation was never prepared is left to the balancer (`None`).
//!
//! Generations grow in the process, so a set older than the one prepared (a request that took
//! the set just before a change) is recognised and never replaces the newer state.
//!
//! A thread that replaces the last reference to an older state does not drop it (that can take
//! milliseconds for a large ring): it leaves it in its balancer's graveyard, which the next
//! `prepare` (or `forget`) empties, off the request path.
//!
//! [`Candidates`] holds the positions of a set's selection tier when not every instance is of
//! it, so uniform picks stay O(1) whatever the health mix.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::Rng;
use waypost_core_types::{CallGuard, InstanceSet, SelectContext, ServiceInfo};

use crate::pick::{self, REJECTION_TRIES};
use crate::state::StateMap;

/// State prepared for one generation of one service's set.
pub(crate) trait Generational: Send + Sync + 'static {
    /// The generation of the set it was prepared for.
    fn generation(&self) -> u64;
}

/// Prepared states each thread keeps at hand.
const THREAD_SLOTS: usize = 8;

/// A prepared state, type-erased.
type AnyState = Arc<dyn Any + Send + Sync>;

/// Where a thread leaves a prepared state it held last, for `prepare` to drop off the request
/// path (dropping a large ring or 100,000 per-instance states takes milliseconds).
type Graveyard = Arc<Mutex<Vec<AnyState>>>;

/// (balancer id, balancer epoch, set generation, the prepared state, its balancer's graveyard).
type Held = (usize, usize, u64, AnyState, Graveyard);

thread_local! {
    static HELD: RefCell<[Option<Held>; THREAD_SLOTS]> =
        const { RefCell::new([None, None, None, None, None, None, None, None]) };
    static HELD_NEXT: Cell<usize> = const { Cell::new(0) };
}

static NEXT_OWNER: AtomicUsize = AtomicUsize::new(1);

/// The latest prepared state of each service, for one balancer.
pub(crate) struct PerService<T> {
    owner: usize,
    /// Bumped when a service is forgotten, so that threads stop using what they hold.
    epoch: AtomicUsize,
    services: StateMap<ArcSwapOption<T>>,
    write: Mutex<()>,
    graveyard: Graveyard,
}

impl<T> Default for PerService<T> {
    fn default() -> Self {
        PerService {
            owner: NEXT_OWNER.fetch_add(1, Ordering::Relaxed),
            epoch: AtomicUsize::new(0),
            services: StateMap::default(),
            write: Mutex::new(()),
            graveyard: Graveyard::default(),
        }
    }
}

impl<T: Generational> PerService<T> {
    /// Runs `f` on the state prepared for `set`'s generation; `None` when there is none.
    #[inline]
    pub(crate) fn with<R>(&self, set: &InstanceSet, f: impl FnOnce(&T) -> R) -> Option<R> {
        // The state this balancer attached to the set when it prepared it: one load.
        if let Some(state) = set
            .attachment(self.owner)
            .and_then(|a| a.downcast_ref::<T>())
        {
            return Some(f(state));
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let generation = set.generation();
        let mut f = Some(f);
        let hit = HELD.with(|held| {
            let held = held.try_borrow().ok()?;
            let (_, _, _, value, _) = held.iter().flatten().find(|(owner, e, g, _, _)| {
                *g == generation && *owner == self.owner && *e == epoch
            })?;
            let value = value.downcast_ref::<T>()?;
            f.take().map(|f| f(value))
        });
        if hit.is_some() {
            return hit;
        }
        self.with_shared(set, epoch, f.take()?)
    }

    #[cold]
    #[inline(never)]
    fn with_shared<R>(
        &self,
        set: &InstanceSet,
        epoch: usize,
        f: impl FnOnce(&T) -> R,
    ) -> Option<R> {
        let latest = self.latest(set.service())?;
        if latest.generation() != set.generation() {
            return None;
        }
        let r = f(&latest);
        HELD.with(|held| {
            let Ok(mut held) = held.try_borrow_mut() else {
                return;
            };
            // Replace what this thread held for an older generation of the same balancer and
            // service, else the next slot in turn.
            let same = held.iter().position(|h| {
                h.as_ref().is_some_and(|(owner, _, _, v, _)| {
                    *owner == self.owner
                        && v.downcast_ref::<T>()
                            .is_some_and(|v| v.generation() < latest.generation())
                })
            });
            let slot = same.unwrap_or_else(|| {
                HELD_NEXT.with(|n| {
                    let i = n.get();
                    n.set((i + 1) % THREAD_SLOTS);
                    i
                })
            });
            let generation = latest.generation();
            let new: Held = (
                self.owner,
                epoch,
                generation,
                latest,
                Arc::clone(&self.graveyard),
            );
            if let Some((_, _, _, old, graveyard)) = held[slot].replace(new) {
                // The last holder of an older state leaves it to the next `prepare`.
                if Arc::strong_count(&old) == 1 {
                    graveyard.lock().push(old);
                }
            }
        });
        Some(r)
    }

    /// Drops the states threads left behind (outside the graveyard's lock).
    fn bury(&self) {
        let dead = std::mem::take(&mut *self.graveyard.lock());
        drop(dead);
    }

    /// The latest state prepared for `service`.
    pub(crate) fn latest(&self, service: &str) -> Option<Arc<T>> {
        self.services
            .with(service, |slot| slot.load_full())
            .flatten()
    }

    /// Builds and stores the state for `set` with `build`, unless the same or a newer
    /// generation of its service is already prepared.
    pub(crate) fn prepare(&self, set: &InstanceSet, build: impl FnOnce() -> T) {
        let newer = self
            .latest(set.service())
            .is_none_or(|p| p.generation() < set.generation());
        if newer {
            self.store_for(set, Arc::new(build()));
        }
    }

    /// Makes `value`, prepared for `set`, the state of its service (unless a newer generation
    /// is already there) and attaches it to `set`, where picks on that set find it first.
    pub(crate) fn store_for(&self, set: &InstanceSet, value: Arc<T>) {
        if value.generation() == set.generation() {
            set.attach(self.owner, Arc::clone(&value) as AnyState);
        }
        self.store(set.service(), value);
    }

    /// Makes `value` the state of `service`, unless a newer generation is already there.
    pub(crate) fn store(&self, service: &str, value: Arc<T>) {
        self.bury();
        let _w = self.write.lock();
        let slot = self.services.get_or_insert(service, ArcSwapOption::empty);
        if slot
            .load()
            .as_ref()
            .is_some_and(|cur| cur.generation() >= value.generation())
        {
            return;
        }
        slot.store(Some(value));
    }

    /// Drops the state of `service`; threads stop using what they hold of it.
    pub(crate) fn forget(&self, service: &str) {
        self.bury();
        let _w = self.write.lock();
        if self.services.remove(service) {
            self.epoch.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Drops the state of services for which `keep` is false.
    pub(crate) fn retain(&self, mut keep: impl FnMut(&str) -> bool) {
        self.bury();
        let _w = self.write.lock();
        self.services.retain(|name, _| keep(name));
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// The latest state of every service.
    pub(crate) fn all(&self) -> Vec<Arc<T>> {
        let mut out = Vec::new();
        self.services.for_each(|_, slot| {
            if let Some(v) = slot.load_full() {
                out.push(v);
            }
        });
        out
    }

    /// Number of services with state.
    pub(crate) fn len(&self) -> usize {
        self.services.len()
    }
}

/// `n % d` by multiplication (Lemire's fastmod) instead of a division, which costs more than
/// the rest of a round-robin pick. Exact for the low 32 bits of `n`: a rotation driven by an
/// ever-growing counter restarts once every 2^32 picks of a thread group, a step nobody sees.
#[derive(Clone, Copy)]
pub(crate) struct FastMod {
    d: u64,
    m: u64,
}

impl FastMod {
    /// For divisor `d` (at least 1, at most `u32::MAX`).
    pub(crate) fn new(d: usize) -> Self {
        let d = d.clamp(1, u32::MAX as usize) as u64;
        FastMod {
            d,
            m: (u64::MAX / d).wrapping_add(1),
        }
    }

    /// `(n mod 2^32) % d`.
    #[inline]
    pub(crate) fn of(&self, n: usize) -> usize {
        let low = self.m.wrapping_mul(u64::from(n as u32));
        ((u128::from(low) * u128::from(self.d)) >> 64) as usize
    }
}

/// The positions a uniform pick draws from: every position when the whole set is of its
/// selection tier, else the positions of that tier.
pub(crate) struct Candidates {
    len: usize,
    modulo: FastMod,
    positions: Option<Box<[u32]>>,
}

impl Candidates {
    pub(crate) fn new(set: &InstanceSet) -> Self {
        let tier = set.selection_tier();
        let positions = (!set.all_selectable()).then(|| {
            set.iter()
                .enumerate()
                .filter(|(_, s)| Some(s.health) == tier)
                .map(|(i, _)| i as u32)
                .collect()
        });
        Candidates {
            len: set.selectable(),
            modulo: FastMod::new(set.selectable()),
            positions,
        }
    }

    /// How many candidates.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// `n` modulo the number of candidates (see [`FastMod`]).
    #[inline]
    pub(crate) fn wrap(&self, n: usize) -> usize {
        self.modulo.of(n)
    }

    /// The position of the `k`-th candidate.
    #[inline]
    pub(crate) fn at(&self, k: usize) -> usize {
        match &self.positions {
            None => k,
            Some(p) => p[k] as usize,
        }
    }

    /// A uniformly random candidate; avoided ones only when every candidate is avoided.
    #[inline]
    pub(crate) fn random(
        &self,
        set: &InstanceSet,
        ctx: &SelectContext<'_>,
        rng: &mut SmallRng,
    ) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let first = self.at(rng.random_range(0..self.len));
        if ctx.avoid.is_empty() || !avoided(set, first, ctx) {
            return Some(first);
        }
        self.random_strict(set, ctx, rng).or(Some(first))
    }

    /// A uniformly random candidate that is not avoided, if there is one.
    #[cold]
    fn random_strict(
        &self,
        set: &InstanceSet,
        ctx: &SelectContext<'_>,
        rng: &mut SmallRng,
    ) -> Option<usize> {
        for _ in 0..REJECTION_TRIES {
            let i = self.at(rng.random_range(0..self.len));
            if !avoided(set, i, ctx) {
                return Some(i);
            }
        }
        let free = self.not_avoided(set, ctx);
        (!free.is_empty()).then(|| free[rng.random_range(0..free.len())])
    }

    /// The candidates that are not avoided (a scan, for when most are avoided).
    fn not_avoided(&self, set: &InstanceSet, ctx: &SelectContext<'_>) -> Vec<usize> {
        (0..self.len)
            .map(|k| self.at(k))
            .filter(|i| !avoided(set, *i, ctx))
            .collect()
    }

    /// Two distinct uniformly random candidates (the second `None` when there is only one),
    /// for power-of-two-choices balancers: not avoided ones while there is one, like
    /// [`pick::random_pair`](crate::pick::random_pair).
    #[inline]
    pub(crate) fn random_pair(
        &self,
        set: &InstanceSet,
        ctx: &SelectContext<'_>,
        rng: &mut SmallRng,
    ) -> Option<(usize, Option<usize>)> {
        match self.len {
            0 => None,
            1 => Some((self.at(0), None)),
            k => {
                let a = rng.random_range(0..k);
                let mut b = rng.random_range(0..k - 1);
                if b >= a {
                    b += 1;
                }
                let (a, b) = (self.at(a), self.at(b));
                if ctx.avoid.is_empty() || (!avoided(set, a, ctx) && !avoided(set, b, ctx)) {
                    return Some((a, Some(b)));
                }
                Some(self.pair_strict(set, ctx, rng).unwrap_or((a, Some(b))))
            }
        }
    }

    #[cold]
    fn pair_strict(
        &self,
        set: &InstanceSet,
        ctx: &SelectContext<'_>,
        rng: &mut SmallRng,
    ) -> Option<(usize, Option<usize>)> {
        let k = self.len;
        for _ in 0..REJECTION_TRIES {
            let a = rng.random_range(0..k);
            let mut b = rng.random_range(0..k - 1);
            if b >= a {
                b += 1;
            }
            let (a, b) = (self.at(a), self.at(b));
            if !avoided(set, a, ctx) && !avoided(set, b, ctx) {
                return Some((a, Some(b)));
            }
        }
        let free = self.not_avoided(set, ctx);
        match free.len() {
            0 => None,
            1 => Some((free[0], None)),
            k => {
                let a = rng.random_range(0..k);
                let mut b = rng.random_range(0..k - 1);
                if b >= a {
                    b += 1;
                }
                Some((free[a], Some(free[b])))
            }
        }
    }
}

/// Whether the instance at `i` is on the avoid list.
#[inline]
pub(crate) fn avoided(set: &InstanceSet, i: usize, ctx: &SelectContext<'_>) -> bool {
    set.get(i).is_some_and(|s| ctx.avoids(s))
}

/// Carries per-instance state from one set to the next by id: what the previous set held at
/// a position is reused when the same id sits there (the common case: a change touches one or
/// two positions), else found by id; instances that left are dropped with the previous set.
pub(crate) fn carry_over<S>(
    set: &InstanceSet,
    prev: Option<(&InstanceSet, &[Arc<S>])>,
    mut make: impl FnMut(&Arc<ServiceInfo>) -> Arc<S>,
) -> Vec<Arc<S>> {
    let mut by_id: Option<std::collections::HashMap<&str, &Arc<S>>> = None;
    set.iter()
        .enumerate()
        .map(|(i, s)| {
            let Some((prev_set, prev_slots)) = prev else {
                return make(s);
            };
            if let (Some(p), Some(slot)) = (prev_set.get(i), prev_slots.get(i)) {
                if Arc::ptr_eq(p, s) || p.id == s.id {
                    return Arc::clone(slot);
                }
            }
            // A removal moves the last instance into the freed position: look there first.
            let last = prev_set.len().wrapping_sub(1);
            if let (Some(p), Some(slot)) = (prev_set.get(last), prev_slots.get(last)) {
                if p.id == s.id {
                    return Arc::clone(slot);
                }
            }
            let map = by_id.get_or_insert_with(|| {
                prev_set
                    .iter()
                    .map(|p| p.id.as_str())
                    .zip(prev_slots.iter())
                    .collect()
            });
            match map.get(s.id.as_str()) {
                Some(slot) => Arc::clone(slot),
                None => make(s),
            }
        })
        .collect()
}

/// Per-instance state of one set generation, aligned with the set's positions, for balancers
/// that track calls: a pick reaches an instance's state by index.
pub(crate) struct Tracked<S> {
    generation: u64,
    /// The set it was made for (kept to carry state over to the next one).
    set: InstanceSet,
    pub(crate) slots: Vec<Arc<S>>,
    pub(crate) candidates: Candidates,
}

impl<S: Send + Sync + 'static> Generational for Tracked<S> {
    fn generation(&self) -> u64 {
        self.generation
    }
}

impl<S> Tracked<S> {
    /// The state for `set`, reusing `prev`'s per-instance state for the instances that stay.
    pub(crate) fn new(
        set: &InstanceSet,
        prev: Option<&Tracked<S>>,
        make: impl FnMut(&Arc<ServiceInfo>) -> Arc<S>,
    ) -> Self {
        let slots = carry_over(set, prev.map(|p| (&p.set, &p.slots[..])), make);
        Tracked {
            generation: set.generation(),
            set: set.clone(),
            slots,
            candidates: Candidates::new(set),
        }
    }

    /// The state of the instance with `id` (a scan: for diagnostics).
    pub(crate) fn find(&self, id: &str) -> Option<&Arc<S>> {
        self.set
            .iter()
            .position(|s| s.id == id)
            .and_then(|i| self.slots.get(i))
    }
}

/// Prepares `set` in `sets` unless the same or a newer generation is there, carrying the
/// per-instance state of the latest generation over.
pub(crate) fn prepare_tracked<S: Send + Sync + 'static>(
    sets: &PerService<Tracked<S>>,
    set: &InstanceSet,
    make: impl FnMut(&Arc<ServiceInfo>) -> Arc<S>,
) {
    let prev = sets.latest(set.service());
    if prev
        .as_ref()
        .is_some_and(|p| p.generation >= set.generation())
    {
        return;
    }
    sets.store_for(set, Arc::new(Tracked::new(set, prev.as_deref(), make)));
}

/// The per-instance state of a balancer that picks the better of two random candidates and
/// tracks the call it starts (least request, peak EWMA).
pub(crate) trait TwoChoices: Send + Sync + 'static {
    /// Whether `b` is a better pick than `a`.
    fn prefers(a: &Self, b: &Self) -> bool;

    /// Starts tracking a call to this instance.
    fn begin(self: &Arc<Self>) -> CallGuard;
}

/// The better of two random candidates of `t`'s generation.
#[inline]
pub(crate) fn choose_two<S: TwoChoices>(
    t: &Tracked<S>,
    set: &InstanceSet,
    ctx: &SelectContext<'_>,
) -> Option<usize> {
    let (a, b) = pick::with_rng(|rng| t.candidates.random_pair(set, ctx, rng))?;
    let Some(b) = b else {
        return Some(a);
    };
    Some(if S::prefers(&t.slots[a], &t.slots[b]) {
        b
    } else {
        a
    })
}

#[inline]
fn choose_two_and_begin<S: TwoChoices>(
    t: &Tracked<S>,
    set: &InstanceSet,
    ctx: &SelectContext<'_>,
) -> Option<(usize, CallGuard)> {
    let i = choose_two(t, set, ctx)?;
    Some((i, t.slots[i].begin()))
}

/// [`LoadBalancer::select_set`](waypost_core_types::LoadBalancer::select_set) of a
/// two-choices balancer: the position it picks in `set`.
pub(crate) fn select_two<S: TwoChoices, F>(
    sets: &PerService<Tracked<S>>,
    set: &InstanceSet,
    ctx: &SelectContext<'_>,
    make: impl Fn() -> F,
) -> Option<usize>
where
    F: FnMut(&Arc<ServiceInfo>) -> Arc<S>,
{
    match sets.with(set, |t| choose_two(t, set, ctx)) {
        Some(i) => i,
        None => pick_two_unprepared(sets, set, ctx, make).map(|(i, _guard)| i),
    }
}

/// [`LoadBalancer::pick`](waypost_core_types::LoadBalancer::pick) of a two-choices balancer,
/// O(1) on a prepared set: two random candidates, their state reached by position, and a
/// guard whose observer is the chosen instance's state (no lookup, no allocation). `make`
/// gives the function that makes an instance's state; it is called only when `set` was not
/// prepared.
#[inline]
pub(crate) fn pick_two<S: TwoChoices, F>(
    sets: &PerService<Tracked<S>>,
    set: &InstanceSet,
    ctx: &SelectContext<'_>,
    make: impl Fn() -> F,
) -> Option<(usize, CallGuard)>
where
    F: FnMut(&Arc<ServiceInfo>) -> Arc<S>,
{
    match sets.with(set, |t| choose_two_and_begin(t, set, ctx)) {
        Some(r) => r,
        None => pick_two_unprepared(sets, set, ctx, make),
    }
}

/// A pick on a generation that was not prepared: prepares it (O(n)), or, for a set older than
/// the prepared one, carries the state over into a copy made for this pick alone.
#[cold]
#[inline(never)]
fn pick_two_unprepared<S: TwoChoices, F>(
    sets: &PerService<Tracked<S>>,
    set: &InstanceSet,
    ctx: &SelectContext<'_>,
    make: impl Fn() -> F,
) -> Option<(usize, CallGuard)>
where
    F: FnMut(&Arc<ServiceInfo>) -> Arc<S>,
{
    prepare_tracked(sets, set, make());
    if let Some(r) = sets.with(set, |t| choose_two_and_begin(t, set, ctx)) {
        return r;
    }
    let latest = sets.latest(set.service());
    let t = Tracked::new(set, latest.as_deref(), make());
    choose_two_and_begin(&t, set, ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fastmod_is_exact_on_32_bits() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        for d in (1..300).chain([1 << 20, 25_000, 100_000, u32::MAX as usize]) {
            let f = FastMod::new(d);
            for n in (0..1000).chain([u32::MAX as usize - 1, u32::MAX as usize]) {
                assert_eq!(f.of(n), n % d, "{n} % {d}");
            }
            for _ in 0..1000 {
                let n: u32 = rng.random();
                assert_eq!(f.of(n as usize), n as usize % d, "{n} % {d}");
            }
        }
    }
}
