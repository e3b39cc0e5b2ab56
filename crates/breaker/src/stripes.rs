//! Striped, epoch-tagged counters: the success path of the window-based breakers writes only to
//! its own thread's cache line.
//!
//! Each counter word holds `tag << 32 | count`. The tag names the epoch the count belongs to; an
//! epoch ends (under the breaker's mutex) by [`Stripes::retag`], which swaps every word to the
//! next tag and a zero count and returns what the old epoch counted. An increment is a
//! compare-and-swap that only succeeds while the word still carries the caller's tag, so a count
//! can never slip from one epoch into the next: a caller that raced with a retag sees
//! [`Add::Stale`] and starts over.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Slots per thread group, at most.
const MAX_SLOTS: usize = 64;

/// One cache-line pair of counters (128 bytes: adjacent-line prefetch pairs lines on x86).
#[repr(align(128))]
#[derive(Debug)]
struct Slot<const C: usize>([AtomicU64; C]);

/// `C` counters, striped over cache-padded slots; each thread always uses the same slot.
#[derive(Debug)]
pub(crate) struct Stripes<const C: usize> {
    slots: Box<[Slot<C>]>,
    mask: usize,
}

/// What [`Stripes::add`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Add {
    /// Counted.
    Added,
    /// Not counted: this thread's slot already holds `cap` in this epoch.
    Full,
    /// Not counted: the epoch has ended.
    Stale,
}

static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SLOT: usize = NEXT_SLOT.fetch_add(1, Ordering::Relaxed);
}

fn pack(tag: u32, count: u32) -> u64 {
    (u64::from(tag) << 32) | u64::from(count)
}

fn tag_of(word: u64) -> u32 {
    (word >> 32) as u32
}

fn count_of(word: u64) -> u32 {
    word as u32
}

impl<const C: usize> Stripes<C> {
    /// Two slots per available core (a power of two, 2 to 64), every word at tag 0, count 0.
    pub(crate) fn new() -> Self {
        // Asked once: on Linux the answer reads cgroup files.
        static SLOTS: OnceLock<usize> = OnceLock::new();
        let n = *SLOTS.get_or_init(|| {
            let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
            (cores * 2).next_power_of_two().clamp(2, MAX_SLOTS)
        });
        Stripes {
            slots: (0..n)
                .map(|_| Slot(std::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
            mask: n - 1,
        }
    }

    /// The number of slots.
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Adds one to counter `counter` of this thread's slot, if the slot is in epoch `tag` and
    /// holds less than `cap`.
    #[inline]
    pub(crate) fn add(&self, counter: usize, tag: u32, cap: u32) -> Add {
        let word = &self.slots[SLOT.with(|s| *s) & self.mask].0[counter];
        let mut w = word.load(Ordering::Acquire);
        loop {
            if tag_of(w) != tag {
                return Add::Stale;
            }
            if count_of(w) >= cap {
                return Add::Full;
            }
            match word.compare_exchange_weak(w, w + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Add::Added,
                Err(now) => w = now,
            }
        }
    }

    /// Ends epoch `tag`: every word moves to `next` with a zero count. Returns, per counter, the
    /// sum of the counts that were in epoch `tag`.
    pub(crate) fn retag(&self, tag: u32, next: u32) -> [u64; C] {
        let mut sums = [0u64; C];
        for slot in self.slots.iter() {
            for (word, sum) in slot.0.iter().zip(sums.iter_mut()) {
                let old = word.swap(pack(next, 0), Ordering::AcqRel);
                if tag_of(old) == tag {
                    *sum += u64::from(count_of(old));
                }
            }
        }
        sums
    }

    /// Per counter, the sum of the counts in epoch `tag` (a read; nothing changes).
    pub(crate) fn sum(&self, tag: u32) -> [u64; C] {
        let mut sums = [0u64; C];
        for slot in self.slots.iter() {
            for (word, sum) in slot.0.iter().zip(sums.iter_mut()) {
                let w = word.load(Ordering::Acquire);
                if tag_of(w) == tag {
                    *sum += u64::from(count_of(w));
                }
            }
        }
        sums
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn counts_are_exact_across_threads() {
        let s = Arc::new(Stripes::<2>::new());
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        assert_eq!(s.add(i % 2, 0, u32::MAX), Add::Added);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!(s.sum(0), [20_000, 20_000]);
        assert_eq!(s.retag(0, 1), [20_000, 20_000]);
        assert_eq!(s.sum(1), [0, 0]);
        assert_eq!(s.sum(0), [0, 0], "the old epoch is gone");
    }

    #[test]
    fn a_stale_tag_never_counts() {
        let s = Stripes::<1>::new();
        assert_eq!(s.add(0, 0, u32::MAX), Add::Added);
        assert_eq!(s.retag(0, 1), [1]);
        assert_eq!(s.add(0, 0, u32::MAX), Add::Stale);
        assert_eq!(s.add(0, 1, u32::MAX), Add::Added);
        assert_eq!(s.retag(0, 2), [0], "counts of epoch 1 are not epoch 0's");
    }

    #[test]
    fn the_cap_is_per_slot() {
        let s = Stripes::<1>::new();
        assert!(s.len() >= 2 && s.len().is_power_of_two());
        for _ in 0..3 {
            assert_eq!(s.add(0, 0, 3), Add::Added);
        }
        assert_eq!(s.add(0, 0, 3), Add::Full);
        assert_eq!(s.sum(0), [3]);
    }

    #[test]
    fn retag_while_counting_loses_nothing() {
        // Counts land either in the epoch being ended (returned by retag) or, after a Stale, in
        // the next one: the totals add up exactly.
        let s = Arc::new(Stripes::<1>::new());
        let tag = Arc::new(AtomicU64::new(0));
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let (s, tag) = (s.clone(), tag.clone());
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        loop {
                            let t = tag.load(Ordering::Acquire) as u32;
                            if s.add(0, t, u32::MAX) == Add::Added {
                                break;
                            }
                        }
                    }
                })
            })
            .collect();
        let mut total = 0;
        let mut t = 0u32;
        while workers.iter().any(|w| !w.is_finished()) {
            total += s.retag(t, t + 1)[0];
            t += 1;
            tag.store(u64::from(t), Ordering::Release);
        }
        for w in workers {
            w.join().expect("thread");
        }
        total += s.retag(t, t + 1)[0];
        assert_eq!(total, 40_000);
    }
}
