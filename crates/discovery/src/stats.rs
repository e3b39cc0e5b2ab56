//! Cache statistics.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
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

/// Stripes a thread can own: while it owns one, no other thread writes it.
const OWNED: usize = 16;

/// Stripes shared, with atomic adds, by the threads beyond the owners.
const SHARED: usize = 8;

/// A stripe adds its hits to the metric every this many hits (and whenever
/// [`StripedCounter::report`] runs), so that a lookup does not write the metric's shared
/// atomic every time.
pub(crate) const REPORT_EVERY: u64 = 64;

/// A hit counter spread over cache-padded slots, so that threads do not share a cache line,
/// feeding a metric counter in batches (see [`REPORT_EVERY`]). Each of up to 16 threads at a
/// time owns a slot (in every counter; it gives it back when it exits): no other thread
/// writes it, so counting a hit is a plain load and store, no locked instruction. Threads
/// beyond those are spread over 8 more slots, which they add to atomically.
#[derive(Default)]
pub(crate) struct StripedCounter {
    slots: [Padded; OWNED + SHARED],
}

/// The slots owned by a thread, one bit each.
static OWNED_SLOTS: AtomicU32 = AtomicU32::new(0);

/// Spreads the threads without a slot of their own over the shared ones.
static NEXT_SHARED: AtomicUsize = AtomicUsize::new(0);

/// A thread's slot: its own (given back when the thread exits), or a shared one.
enum Lease {
    Owned(usize),
    Shared(usize),
}

impl Lease {
    /// The lowest slot nobody owns, if any. The acquire pairs with the release of the thread
    /// that owned it before: its last counts are visible to the next owner's loads.
    fn claim() -> Self {
        let mut taken = OWNED_SLOTS.load(Ordering::Relaxed);
        loop {
            let free = (!taken).trailing_zeros() as usize;
            if free >= OWNED {
                return Lease::Shared(OWNED + NEXT_SHARED.fetch_add(1, Ordering::Relaxed) % SHARED);
            }
            match OWNED_SLOTS.compare_exchange_weak(
                taken,
                taken | 1 << free,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Lease::Owned(free),
                Err(now) => taken = now,
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Lease::Owned(i) = *self {
            OWNED_SLOTS.fetch_and(!(1 << i), Ordering::Release);
        }
    }
}

thread_local! {
    static LEASE: Lease = Lease::claim();
}

impl StripedCounter {
    /// Counts one hit; every [`REPORT_EVERY`] hits of this thread's slot, adds the slot's
    /// unreported hits to `metric`.
    #[inline]
    pub(crate) fn incr(&self, metric: &Counter) {
        // While the thread exits, its lease may be gone: the first shared slot.
        let (owned, i) = LEASE
            .try_with(|l| match *l {
                Lease::Owned(i) => (true, i),
                Lease::Shared(i) => (false, i),
            })
            .unwrap_or((false, OWNED));
        let slot = &self.slots[i];
        let n = if owned {
            // Only this thread writes the slot: no read-modify-write needed.
            let n = slot.count.load(Ordering::Relaxed).wrapping_add(1);
            slot.count.store(n, Ordering::Relaxed);
            n
        } else {
            slot.count.fetch_add(1, Ordering::Relaxed).wrapping_add(1)
        };
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use waypost_test_metrics::Recording;

    use super::*;

    /// More threads than slots, counting at once, threads exiting and others taking their
    /// slots: every hit is counted once, and reaches the metric once.
    #[test]
    fn every_hit_is_counted_once_by_any_number_of_threads() {
        let recorder = Recording::default();
        let metric = metrics::with_local_recorder(&recorder, || metrics::counter!("hits"));
        let metric = Arc::new(metric);
        let counter = Arc::new(StripedCounter::default());
        let (threads, each) = (3 * OWNED, 10_000u64);
        for round in 0..2 {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    let (counter, metric) = (counter.clone(), metric.clone());
                    std::thread::spawn(move || {
                        for _ in 0..each {
                            counter.incr(&metric);
                        }
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
            let total = (round + 1) * threads as u64 * each;
            assert_eq!(counter.sum(), total);
            counter.report(&metric);
            counter.report(&metric);
            assert_eq!(recorder.take().counter("hits", &[]), threads as u64 * each);
        }
    }
}
