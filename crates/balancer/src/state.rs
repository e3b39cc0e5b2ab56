//! Per-key balancer state with a lock-free read path.
//!
//! [`StateMap`] is a copy-on-write map behind an [`ArcSwap`]; each thread also keeps the current
//! map's `Arc` with its version number, so a lookup checks one shared read-only counter, hashes
//! the key and borrows the value, without a lock or any shared write. Inserting a key (the first pick for a service, the
//! first call to an instance) copies the map under a mutex; that happens once per key, so the
//! read path stays lock-free. [`Striped`] spreads a counter over cache-padded slots, one per
//! thread group, so threads do not fight over one cache line.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::pick::Fnv;

type Map<V> = HashMap<Arc<str>, Arc<V>, BuildHasherDefault<Fnv>>;

/// A read-mostly map from a key (service name or instance id) to shared state.
pub(crate) struct StateMap<V> {
    id: usize,
    map: ArcSwap<Map<V>>,
    write: Mutex<()>,
    /// Bumped whenever entries are removed, so that caches of values can tell they may be stale.
    generation: AtomicUsize,
    /// Bumped after every store to `map`.
    version: AtomicUsize,
}

static NEXT_MAP: AtomicUsize = AtomicUsize::new(1);

/// Maps each thread keeps at hand.
const THREAD_MAPS: usize = 8;

/// A thread's copy of a map's current `Arc`: (map id, version, the map).
type HeldMap = (usize, usize, Arc<dyn Any + Send + Sync>);

thread_local! {
    static MAPS: RefCell<[Option<HeldMap>; THREAD_MAPS]> =
        const { RefCell::new([None, None, None, None, None, None, None, None]) };
    static MAPS_NEXT: Cell<usize> = const { Cell::new(0) };
}

impl<V> Default for StateMap<V> {
    fn default() -> Self {
        StateMap {
            id: NEXT_MAP.fetch_add(1, Ordering::Relaxed),
            map: ArcSwap::from_pointee(Map::default()),
            write: Mutex::new(()),
            generation: AtomicUsize::new(0),
            version: AtomicUsize::new(0),
        }
    }
}

impl<V: Send + Sync + 'static> StateMap<V> {
    /// Runs `f` on the current map. Each thread keeps the map's current `Arc` and checks a
    /// version number, so a read writes no shared memory at all (not even arc-swap's debt
    /// slots); after a change, the first read on each thread loads the new map.
    #[inline]
    fn read<R>(&self, f: impl FnOnce(&Map<V>) -> R) -> R {
        let version = self.version.load(Ordering::Acquire);
        let mut f = Some(f);
        let hit = MAPS.with(|held| {
            let held = held.try_borrow().ok()?;
            let (_, _, map) = held
                .iter()
                .flatten()
                .find(|(id, v, _)| *id == self.id && *v == version)?;
            let map = map.downcast_ref::<Map<V>>()?;
            f.take().map(|f| f(map))
        });
        if let Some(r) = hit {
            return r;
        }
        let map = self.map.load_full();
        let r = f.take().map(|f| f(&map));
        MAPS.with(|held| {
            let Ok(mut held) = held.try_borrow_mut() else {
                return;
            };
            let slot = match held
                .iter()
                .position(|h| h.as_ref().is_some_and(|h| h.0 == self.id))
            {
                Some(i) => i,
                None => MAPS_NEXT.with(|n| {
                    let i = n.get();
                    n.set((i + 1) % THREAD_MAPS);
                    i
                }),
            };
            held[slot] = Some((self.id, version, map));
        });
        r.unwrap_or_else(|| unreachable!("f runs once"))
    }

    /// Runs `f` on the value for `key`, if there is one. Lock-free.
    #[inline]
    pub(crate) fn with<R>(&self, key: &str, f: impl FnOnce(&V) -> R) -> Option<R> {
        self.read(|map| map.get(key).map(|v| f(v)))
    }

    /// Runs `f` on the value for `key`, creating it with `make` first if needed. Lock-free when
    /// the key exists.
    #[inline]
    pub(crate) fn with_or_insert<R>(
        &self,
        key: &str,
        make: impl FnOnce() -> V,
        f: impl FnOnce(&V) -> R,
    ) -> R {
        let mut f = Some(f);
        let hit = self.read(|map| map.get(key).map(|v| f.take().map(|f| f(v))));
        if let Some(Some(r)) = hit {
            return r;
        }
        let v = self.insert_slow(key, make);
        match f.take() {
            Some(f) => f(&v),
            None => unreachable!("f runs once"),
        }
    }

    /// The shared value for `key`, created with `make` if needed.
    pub(crate) fn get_or_insert(&self, key: &str, make: impl FnOnce() -> V) -> Arc<V> {
        if let Some(v) = self.map.load().get(key) {
            return v.clone();
        }
        self.insert_slow(key, make)
    }

    /// Changes whenever entries are removed.
    #[inline]
    pub(crate) fn generation(&self) -> usize {
        self.generation.load(Ordering::Acquire)
    }

    #[cold]
    fn insert_slow(&self, key: &str, make: impl FnOnce() -> V) -> Arc<V> {
        let _w = self.write.lock();
        let cur = self.map.load_full();
        if let Some(v) = cur.get(key) {
            return v.clone();
        }
        let mut next: Map<V> = Map::with_capacity_and_hasher(cur.len() + 1, Default::default());
        next.extend(cur.iter().map(|(k, v)| (k.clone(), v.clone())));
        let v = Arc::new(make());
        next.insert(Arc::from(key), v.clone());
        self.map.store(Arc::new(next));
        self.version.fetch_add(1, Ordering::AcqRel);
        v
    }

    /// Drops the entry for `key`. A key that is not there costs a lock-free lookup and no copy
    /// of the map, so removing many absent keys (names nobody registered) is not quadratic.
    /// Returns whether there was an entry.
    pub(crate) fn remove(&self, key: &str) -> bool {
        if self.with(key, |_| ()).is_none() {
            return false;
        }
        self.retain(|k, _| k != key);
        true
    }

    /// Drops every entry for which `keep` is false.
    pub(crate) fn retain(&self, mut keep: impl FnMut(&str, &V) -> bool) {
        let _w = self.write.lock();
        let cur = self.map.load_full();
        let next: Map<V> = cur
            .iter()
            .filter(|(k, v)| keep(k, v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if next.len() != cur.len() {
            self.map.store(Arc::new(next));
            self.version.fetch_add(1, Ordering::AcqRel);
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Runs `f` on every entry.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&str, &V)) {
        for (k, v) in self.map.load().iter() {
            f(k, v);
        }
    }

    /// Number of keys.
    pub(crate) fn len(&self) -> usize {
        self.map.load().len()
    }
}

/// Number of slots of a [`Striped`] counter.
pub(crate) const STRIPES: usize = 16;

#[repr(align(128))]
#[derive(Default)]
struct Padded {
    value: AtomicUsize,
    started: AtomicBool,
}

/// Spacing of the starting points of slots: a prime, so slots start at different instances for
/// any set size it does not divide.
const SLOT_SPREAD: usize = 7919;

/// A counter split into cache-padded slots; each thread always uses the same slot.
///
/// The first slot used starts at 0 (a single thread sees an exact rotation from the first
/// instance); the k-th slot to be used starts at `k × 7919`, so threads that run in step do not
/// pick the same instance at the same time (which would make them fight over its reference
/// count).
#[derive(Default)]
pub(crate) struct Striped {
    slots: [Padded; STRIPES],
    started: AtomicUsize,
}

static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static STRIPE: usize = NEXT_STRIPE.fetch_add(1, Ordering::Relaxed) % STRIPES;
}

impl Striped {
    /// Adds one to this thread's slot and returns the slot's previous value.
    #[inline]
    pub(crate) fn next(&self) -> usize {
        let slot = &self.slots[STRIPE.with(|s| *s)];
        if !slot.started.load(Ordering::Relaxed) {
            self.start(slot);
        }
        slot.value.fetch_add(1, Ordering::Relaxed)
    }

    #[cold]
    fn start(&self, slot: &Padded) {
        if !slot.started.swap(true, Ordering::Relaxed) {
            let k = self.started.fetch_add(1, Ordering::Relaxed);
            slot.value
                .fetch_add(k.wrapping_mul(SLOT_SPREAD), Ordering::Relaxed);
        }
    }

    /// Adds `n` to this thread's slot.
    #[inline]
    pub(crate) fn advance(&self, n: usize) {
        let i = STRIPE.with(|s| *s);
        self.slots[i].value.fetch_add(n, Ordering::Relaxed);
    }

    /// The sum over all slots.
    #[cfg(test)]
    pub(crate) fn sum(&self) -> usize {
        self.slots.iter().fold(0usize, |a, s| {
            a.wrapping_add(s.value.load(Ordering::Relaxed))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_once_then_read() {
        let m: StateMap<AtomicUsize> = StateMap::default();
        assert_eq!(m.with("a", |v| v.load(Ordering::Relaxed)), None);
        for _ in 0..3 {
            m.with_or_insert(
                "a",
                || AtomicUsize::new(0),
                |v| v.fetch_add(1, Ordering::Relaxed),
            );
        }
        m.with_or_insert("b", || AtomicUsize::new(10), |_| ());
        assert_eq!(m.with("a", |v| v.load(Ordering::Relaxed)), Some(3));
        assert_eq!(m.len(), 2);
        m.retain(|k, _| k == "b");
        assert_eq!(m.len(), 1);
        assert_eq!(m.with("b", |v| v.load(Ordering::Relaxed)), Some(10));
    }

    #[test]
    fn threads_see_changes_made_elsewhere() {
        let m: Arc<StateMap<AtomicUsize>> = Arc::default();
        m.with_or_insert("a", || AtomicUsize::new(1), |_| ());
        let (to_main, from_reader) = std::sync::mpsc::channel();
        let (to_reader, from_main) = std::sync::mpsc::channel::<()>();
        let reader = {
            let m = m.clone();
            std::thread::spawn(move || {
                // Holds the map at its current version.
                assert_eq!(m.with("a", |v| v.load(Ordering::Relaxed)), Some(1));
                assert_eq!(m.with("b", |_| ()), None);
                to_main.send(()).unwrap();
                from_main.recv().unwrap();
                // After an insert and a removal elsewhere, it reads the new map.
                assert_eq!(m.with("b", |v| v.load(Ordering::Relaxed)), Some(2));
                assert_eq!(m.with("a", |_| ()), None);
            })
        };
        from_reader.recv().unwrap();
        m.with_or_insert("b", || AtomicUsize::new(2), |_| ());
        m.retain(|k, _| k == "b");
        to_reader.send(()).unwrap();
        reader.join().unwrap();
    }

    #[test]
    fn striped_counts_every_thread() {
        let c = Arc::new(Striped::default());
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        c.next();
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        // Slots started at 0, 7919, 2 × 7919, … (one per thread here, unless threads share).
        let starts: usize = (0..c.started.load(Ordering::Relaxed))
            .map(|k| k * SLOT_SPREAD)
            .sum();
        assert_eq!(c.sum() - starts, 4000);
    }
}
