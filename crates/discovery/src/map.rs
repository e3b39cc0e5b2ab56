//! The service map of a discovery: service name → cache entry, read without a lock.
//!
//! Each of 256 shards is an immutable `HashMap` behind an `ArcSwap`, replaced as a whole by its
//! writers (one at a time per shard). A lookup hashes the name, loads its shard and looks it up:
//! no lock, no shared write. Sharding keeps an insert cheap even when many names are cached
//! (service names can come from request input): an insert copies one shard, a 256th of the map.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::cache::Entry;

/// FNV-1a: service names are short, and this map is read on every lookup that misses the
/// per-thread shortcut.
#[derive(Clone, Copy)]
pub(crate) struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        // Spread the low bits into the high ones (hashbrown uses the top 7 bits).
        let mut k = self.0;
        k ^= k >> 33;
        k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
        k ^= k >> 33;
        k
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

type Shard = HashMap<Arc<str>, Arc<Entry>, BuildHasherDefault<Fnv>>;

const SHARDS: usize = 256;

/// See the [module docs](self).
pub(crate) struct ServiceMap {
    shards: [ArcSwap<Shard>; SHARDS],
    writers: [Mutex<()>; SHARDS],
}

impl Default for ServiceMap {
    fn default() -> Self {
        ServiceMap {
            shards: std::array::from_fn(|_| ArcSwap::from_pointee(Shard::default())),
            writers: std::array::from_fn(|_| Mutex::new(())),
        }
    }
}

fn shard_of(name: &str) -> usize {
    let mut h = BuildHasherDefault::<Fnv>::default().build_hasher();
    h.write(name.as_bytes());
    // The top bits: hashbrown uses the low ones inside the shard.
    (h.finish() >> 56) as usize % SHARDS
}

impl ServiceMap {
    /// Runs `f` on the entry of `name` without cloning it.
    #[inline]
    pub(crate) fn with<R>(&self, name: &str, f: impl FnOnce(&Arc<Entry>) -> R) -> Option<R> {
        self.shards[shard_of(name)].load().get(name).map(f)
    }

    /// The entry of `name`, inserted (made by `make`) if there is none.
    pub(crate) fn get_or_insert(&self, name: &str, make: impl FnOnce() -> Entry) -> Arc<Entry> {
        let i = shard_of(name);
        if let Some(e) = self.shards[i].load().get(name) {
            return e.clone();
        }
        let _w = self.writers[i].lock();
        let cur = self.shards[i].load_full();
        if let Some(e) = cur.get(name) {
            return e.clone();
        }
        let mut next = (*cur).clone();
        let entry = Arc::new(make());
        next.insert(Arc::from(name), entry.clone());
        self.shards[i].store(Arc::new(next));
        entry
    }

    /// Removes `name` if it maps to `entry`; marks it evicted. Returns whether it did.
    pub(crate) fn remove_if(&self, name: &str, entry: &Arc<Entry>) -> bool {
        let i = shard_of(name);
        let _w = self.writers[i].lock();
        let cur = self.shards[i].load_full();
        if !cur.get(name).is_some_and(|e| Arc::ptr_eq(e, entry)) {
            return false;
        }
        let mut next = (*cur).clone();
        next.remove(name);
        self.shards[i].store(Arc::new(next));
        entry.mark_evicted();
        true
    }

    /// Removes `name`, whatever it maps to; marks it evicted.
    pub(crate) fn remove(&self, name: &str) -> Option<Arc<Entry>> {
        let i = shard_of(name);
        let _w = self.writers[i].lock();
        let cur = self.shards[i].load_full();
        let entry = cur.get(name)?.clone();
        let mut next = (*cur).clone();
        next.remove(name);
        self.shards[i].store(Arc::new(next));
        entry.mark_evicted();
        Some(entry)
    }

    /// Removes every entry for which `drop` says so; marks them evicted and returns them.
    pub(crate) fn remove_where(&self, mut drop: impl FnMut(&Entry) -> bool) -> Vec<Arc<Entry>> {
        let mut removed = Vec::new();
        for i in 0..SHARDS {
            if !self.shards[i].load().values().any(|e| drop(e)) {
                continue;
            }
            let _w = self.writers[i].lock();
            let cur = self.shards[i].load_full();
            let mut next = Shard::with_capacity_and_hasher(cur.len(), Default::default());
            for (k, v) in cur.iter() {
                if drop(v) {
                    v.mark_evicted();
                    removed.push(v.clone());
                } else {
                    next.insert(k.clone(), v.clone());
                }
            }
            self.shards[i].store(Arc::new(next));
        }
        removed
    }

    /// Every entry.
    pub(crate) fn entries(&self) -> Vec<Arc<Entry>> {
        self.shards
            .iter()
            .flat_map(|s| s.load().values().cloned().collect::<Vec<_>>())
            .collect()
    }

    /// How many services are cached.
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.load().len()).sum()
    }
}
