//! Cache statistics.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

/// What the cache knows about one service (the Laravel-Go module's `GetCacheStats`, extended).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// The service name.
    pub service: String,
    /// Instances in the cache (after the discovery's filter).
    pub instances: usize,
    /// Of those, healthy ones.
    pub healthy: usize,
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that had to wait for the registry (the first one, and any after a failed fill).
    pub misses: u64,
    /// When the cached set was last confirmed current (a snapshot, a change, or a successful
    /// poll).
    pub last_refresh: Option<SystemTime>,
    /// Whether a registry watch is live (the cache follows changes as they happen).
    pub watching: bool,
    /// `None` while the watch is live. Otherwise how old the cached set is: the time since the
    /// last refresh, while the discovery polls or cannot reach the registry.
    pub stale_for: Option<Duration>,
    /// The last registry error, cleared when the watch is back.
    pub last_error: Option<String>,
    /// Updates the shrink guard refused.
    pub refused_updates: u64,
    /// Instances still served although the last full set (after a registry reconnect or a
    /// watch gap) left them out: held for the reconnect grace until they come back, the
    /// registry deletes them, or the grace ends.
    pub stale_instances: usize,
}

#[repr(align(128))]
#[derive(Default)]
struct Padded(AtomicU64);

const STRIPES: usize = 16;

/// A hit counter spread over cache-padded slots so that threads do not share a cache line.
#[derive(Default)]
pub(crate) struct StripedCounter {
    slots: [Padded; STRIPES],
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
}

impl StripedCounter {
    #[inline]
    pub(crate) fn incr(&self) {
        let i = SLOT.with(|s| *s);
        self.slots[i].0.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn sum(&self) -> u64 {
        self.slots
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }
}
