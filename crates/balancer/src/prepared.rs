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
use waypost_core_types::{InstanceSet, SelectContext};

use crate::pick::REJECTION_TRIES;
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
    /// The state this balancer attached to `set` when it prepared it (one load), if it did.
    #[inline]
    pub(crate) fn attached<'a>(&self, set: &'a InstanceSet) -> Option<&'a T> {
        set.attachment(self.owner)
            .and_then(|a| a.downcast_ref::<T>())
    }

    /// Runs `f` on the state prepared for `set`'s generation; `None` when there is none.
    #[inline]
    pub(crate) fn with<R>(&self, set: &InstanceSet, f: impl FnOnce(&T) -> R) -> Option<R> {
        if let Some(state) = self.attached(set) {
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
        self.prepare_from(set, |_| build());
    }

    /// Like [`prepare`](Self::prepare), `build` given the service's latest state (older than
    /// `set`), for state derived from the previous generation's.
    pub(crate) fn prepare_from(&self, set: &InstanceSet, build: impl FnOnce(Option<&T>) -> T) {
        let latest = self.latest(set.service());
        if latest
            .as_ref()
            .is_some_and(|p| p.generation() >= set.generation())
        {
            return;
        }
        self.store_for(set, Arc::new(build(latest.as_deref())));
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
