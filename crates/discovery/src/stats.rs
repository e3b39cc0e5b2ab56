//! Cache statistics.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use metrics::Counter;

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

/// One stripe: its count, and how much of it was added to the metric so far (same cache line,
/// written by the same threads).
#[repr(align(128))]
#[derive(Default)]
struct Padded {
    count: AtomicU64,
    reported: AtomicU64,
}

impl Padded {
    /// Adds what this stripe counted since its last report to `metric`. Concurrent reports
    /// add each hit once (`fetch_max` hands each a disjoint range).
    #[cold]
    fn report(&self, metric: &Counter) {
        let now = self.count.load(Ordering::Relaxed);
        let before = self.reported.fetch_max(now, Ordering::Relaxed);
        if now > before {
            metric.increment(now - before);
        }
    }
}

const STRIPES: usize = 16;

/// A stripe adds its hits to the metric every this many hits (and whenever
/// [`StripedCounter::report`] runs), so that a lookup does not write the metric's shared
/// atomic every time.
pub(crate) const REPORT_EVERY: u64 = 64;

/// A hit counter spread over cache-padded slots so that threads do not share a cache line.
/// It feeds a metric counter in batches (see [`REPORT_EVERY`]).
#[derive(Default)]
pub(crate) struct StripedCounter {
    slots: [Padded; STRIPES],
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
}

impl StripedCounter {
    /// Counts one hit; every [`REPORT_EVERY`] hits of this thread's stripe, adds the stripe's
    /// unreported hits to `metric`.
    #[inline]
    pub(crate) fn incr(&self, metric: &Counter) {
        let i = SLOT.with(|s| *s);
        let slot = &self.slots[i];
        let n = slot.count.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        if n % REPORT_EVERY == 0 {
            slot.report(metric);
        }
    }

    /// Adds every stripe's unreported hits to `metric`.
    pub(crate) fn report(&self, metric: &Counter) {
        for slot in &self.slots {
            slot.report(metric);
        }
    }

    pub(crate) fn sum(&self) -> u64 {
        self.slots
            .iter()
            .map(|s| s.count.load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }
}
