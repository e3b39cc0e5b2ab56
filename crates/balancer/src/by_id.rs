//! Per-instance state by instance id, for the slice API (`select` then `begin`).
//!
//! A sharded map ([`DashMap`]): a lookup or an insert costs the same at any size (no
//! copy-on-write of the whole map per new id). Ids whose state carries nothing worth keeping
//! are dropped when the map has doubled since the last time, so that cost is amortised O(1)
//! per new id, with no size past which every call pays.

use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

use crate::pick::Fnv;

/// The map holds at least this many ids before it drops any.
const PRUNE_FLOOR: usize = 1024;

pub(crate) struct ById<S> {
    map: DashMap<Arc<str>, Arc<S>, BuildHasherDefault<Fnv>>,
    prune_at: AtomicUsize,
}

impl<S> Default for ById<S> {
    fn default() -> Self {
        ById {
            map: DashMap::default(),
            prune_at: AtomicUsize::new(PRUNE_FLOOR),
        }
    }
}

impl<S> ById<S> {
    /// Runs `f` on the state of `id`, if there is one.
    #[inline]
    pub(crate) fn with<R>(&self, id: &str, f: impl FnOnce(&S) -> R) -> Option<R> {
        self.map.get(id).map(|v| f(v.value()))
    }

    /// The state of `id`, made by `make` if there is none. Before adding an id, when the map
    /// has doubled since the last time, drops the entries for which `keep` is false.
    pub(crate) fn get_or_insert(
        &self,
        id: &str,
        make: impl FnOnce() -> S,
        keep: impl Fn(&S) -> bool,
    ) -> Arc<S> {
        if let Some(v) = self.map.get(id) {
            return Arc::clone(v.value());
        }
        if self.map.len() >= self.prune_at.load(Ordering::Relaxed) {
            self.map.retain(|_, v| keep(v));
            self.prune_at
                .store((2 * self.map.len()).max(PRUNE_FLOOR), Ordering::Relaxed);
        }
        Arc::clone(
            self.map
                .entry(Arc::from(id))
                .or_insert_with(|| Arc::new(make()))
                .value(),
        )
    }

    /// Number of ids.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_only_what_keep_refuses_and_only_after_doubling() {
        let m: ById<usize> = ById::default();
        for i in 0..PRUNE_FLOOR {
            m.get_or_insert(&format!("i{i}"), || i, |v| v % 2 == 0);
        }
        assert_eq!(m.len(), PRUNE_FLOOR);
        // The next new id prunes the odd ones first.
        m.get_or_insert("new", || 1, |v| v % 2 == 0);
        assert_eq!(m.len(), PRUNE_FLOOR / 2 + 1);
        assert_eq!(m.with("i2", |v| *v), Some(2));
        assert_eq!(m.with("i3", |v| *v), None);
        // The next prune waits until the map has doubled again (at least the floor).
        for i in 0..PRUNE_FLOOR / 2 - 1 {
            m.get_or_insert(&format!("j{i}"), || 1, |v| v % 2 == 0);
        }
        assert_eq!(m.len(), PRUNE_FLOOR);
    }
}
