//! Per-instance state of balancers that track calls (least request, peak EWMA), kept so that a
//! pick and its guard cost the same at 10 or 100,000 instances.
//!
//! A service's entries live in chunks of [`CHUNK`] that never move: an instance keeps its slot
//! from one set generation to the next for as long as it stays in the service, so a call that
//! began on one generation ends on the entry that later generations read. Each generation has a
//! [`Table`]: for every position of its set, the slot of that instance's entry (a `u32`, so the
//! map of 100,000 positions fits in a core's L2 cache), and the chunks. A pick reads two entries
//! by position; a guard holds one reference to the chosen entry's chunk and the entry's index
//! ([`CallGuard::for_slot`]): no lookup by id, no allocation, no per-call reference to the
//! instance's id.
//!
//! Slots of instances that left are freed when the next generation is built, and handed to new
//! instances from a later generation on, once no call is in flight on them. A pick on a set
//! older than that (a request that took the set before two changes) may start a call on a slot
//! that another instance took meanwhile: the count moves with its call (begun and ended on the
//! same entry) and at most that one latency sample lands on the other instance.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use waypost_core_types::{
    CallGuard, InstanceSet, Outcome, SelectContext, ServiceInfo, SlotObserver,
};

use crate::pick;
use crate::prepared::{Candidates, Generational, PerService};

/// Entries per chunk.
pub(crate) const CHUNK: usize = 64;
const CHUNK_SHIFT: u32 = CHUNK.trailing_zeros();

/// One instance's state in a [`Chunk`].
pub(crate) trait Entry: Send + Sync + Sized + 'static {
    /// What the entries' arithmetic needs (the balancer's options).
    type Opts: Send + Sync + 'static;

    /// The entries' clock, read when a call begins: a stamp that the call's guard hands back
    /// to [`finish_stamped`](Self::finish_stamped). `None` for entries that keep no time (their
    /// calls are not timed).
    fn now(opts: &Self::Opts) -> Option<u64>;

    /// A fresh entry (no call in flight); `now` is [`now`](Self::now) or zero.
    fn new(opts: &Self::Opts, now: u64) -> Self;

    /// Makes a free entry (no call in flight) fresh again, for a new instance.
    fn reset(&self, opts: &Self::Opts, now: u64);

    /// Calls in flight.
    fn in_flight(&self) -> usize;

    /// Whether `b` is a better pick than `a`.
    fn prefers(opts: &Self::Opts, a: &Self, b: &Self) -> bool;

    /// Counts a call in flight.
    fn begin(&self);

    /// A call ended after `latency` (zero for an untimed call; else measured by the caller).
    fn finish(&self, opts: &Self::Opts, outcome: Outcome, latency: Duration);

    /// A call that began at `stamp` (a reading of [`now`](Self::now)) ended now.
    fn finish_stamped(&self, opts: &Self::Opts, outcome: Outcome, stamp: u64) {
        let _ = stamp;
        self.finish(opts, outcome, Duration::ZERO);
    }
}

/// [`CHUNK`] entries, and the options their arithmetic uses; the observer of their calls.
pub(crate) struct Chunk<E: Entry> {
    entries: [E; CHUNK],
    opts: Arc<E::Opts>,
}

impl<E: Entry> Chunk<E> {
    fn new(opts: &Arc<E::Opts>, now: u64) -> Self {
        Chunk {
            entries: std::array::from_fn(|_| E::new(opts, now)),
            opts: Arc::clone(opts),
        }
    }
}

impl<E: Entry> SlotObserver for Chunk<E> {
    /// The end of an untimed call, or of one whose caller measured it (the instant of a guard
    /// that read tokio's clock is not used: timed entries keep time on their own clock).
    fn on_slot_finish(&self, slot: u32, outcome: Outcome, latency: Duration, _: Option<Instant>) {
        if let Some(e) = self.entries.get(slot as usize) {
            e.finish(&self.opts, outcome, latency);
        }
    }

    #[inline]
    fn on_stamped_finish(&self, slot: u32, outcome: Outcome, stamp: u64) {
        if let Some(e) = self.entries.get(slot as usize) {
            e.finish_stamped(&self.opts, outcome, stamp);
        }
    }
}

/// The entries of one set generation: the slot of each position's instance.
pub(crate) struct Table<E: Entry> {
    generation: u64,
    /// The set it was made for (its ids carry the slots over to the next generation).
    set: InstanceSet,
    slot_of: Box<[u32]>,
    chunks: Arc<[Arc<Chunk<E>>]>,
    /// Slots no instance of this generation holds.
    free: Vec<u32>,
    opts: Arc<E::Opts>,
    pub(crate) candidates: Candidates,
}

impl<E: Entry> Generational for Table<E> {
    fn generation(&self) -> u64 {
        self.generation
    }
}

impl<E: Entry> Table<E> {
    /// The table of `set`: the instances `prev` had keep their slots (found by position, else
    /// by id), new ones take free slots with no call in flight, else slots of new chunks.
    pub(crate) fn new(set: &InstanceSet, prev: Option<&Table<E>>, opts: &Arc<E::Opts>) -> Self {
        let now = E::now(opts).unwrap_or(0);
        let capacity = prev.map_or(0, |p| p.chunks.len() * CHUNK);
        let mut taken = vec![false; capacity];
        let mut by_id: Option<HashMap<&str, u32>> = None;
        let mut slot_of = Vec::with_capacity(set.len());
        let mut pending = Vec::new();
        for (i, s) in set.iter().enumerate() {
            let kept = prev.and_then(|p| p.slot_for(i, s, &mut by_id));
            match kept {
                Some(slot) if !taken[slot as usize] => {
                    taken[slot as usize] = true;
                    slot_of.push(slot);
                }
                _ => {
                    pending.push(i);
                    slot_of.push(u32::MAX);
                }
            }
        }
        let mut chunks = prev.map(|p| Arc::clone(&p.chunks));
        let mut free = Vec::new();
        let mut pending = pending.into_iter().peekable();
        if let Some(p) = prev {
            // Slots freed by an earlier generation, when no call is in flight on them.
            for &slot in &p.free {
                let entry = p.entry(slot);
                match pending.peek() {
                    Some(&i) if !taken[slot as usize] && entry.in_flight() == 0 => {
                        entry.reset(opts, now);
                        taken[slot as usize] = true;
                        slot_of[i] = slot;
                        pending.next();
                    }
                    _ => free.push(slot),
                }
            }
            // Slots of instances that left: free from the next generation on.
            free.extend(
                p.slot_of
                    .iter()
                    .copied()
                    .filter(|slot| !taken[*slot as usize]),
            );
        }
        if pending.peek().is_some() {
            let mut grown: Vec<Arc<Chunk<E>>> = chunks.as_deref().unwrap_or(&[]).to_vec();
            let mut next = grown.len() * CHUNK;
            for i in pending {
                if next == grown.len() * CHUNK {
                    grown.push(Arc::new(Chunk::new(opts, now)));
                }
                slot_of[i] = next as u32;
                next += 1;
            }
            free.extend((next..grown.len() * CHUNK).map(|s| s as u32));
            chunks = Some(grown.into());
        }
        Table {
            generation: set.generation(),
            set: set.clone(),
            slot_of: slot_of.into_boxed_slice(),
            chunks: chunks.unwrap_or_else(|| Arc::from(Vec::new())),
            free,
            opts: Arc::clone(opts),
            candidates: Candidates::new(set),
        }
    }

    /// The slot this table gives the instance with `id`, if it had it at `position` (the usual
    /// case: a change touches one or two positions), at the last position (a removal moves the
    /// last instance into the freed one), or anywhere (a map made on first need).
    fn slot_for<'a>(
        &'a self,
        position: usize,
        instance: &Arc<ServiceInfo>,
        by_id: &mut Option<HashMap<&'a str, u32>>,
    ) -> Option<u32> {
        let last = self.set.len().wrapping_sub(1);
        for at in [position, last] {
            if self
                .set
                .get(at)
                .is_some_and(|s| Arc::ptr_eq(s, instance) || s.id == instance.id)
            {
                return self.slot_of.get(at).copied();
            }
        }
        let id = instance.id.as_str();
        by_id
            .get_or_insert_with(|| {
                self.set
                    .iter()
                    .map(|s| s.id.as_str())
                    .zip(self.slot_of.iter().copied())
                    .collect()
            })
            .get(id)
            .copied()
    }

    #[inline]
    fn entry(&self, slot: u32) -> &E {
        let slot = slot as usize;
        &self.chunks[slot >> CHUNK_SHIFT].entries[slot & (CHUNK - 1)]
    }

    /// The entry of the instance at `position`.
    #[inline]
    pub(crate) fn at(&self, position: usize) -> &E {
        self.entry(self.slot_of[position])
    }

    /// Starts tracking a call to the instance at `position`.
    #[inline]
    pub(crate) fn begin(&self, position: usize) -> CallGuard {
        let slot = self.slot_of[position] as usize;
        let chunk = &self.chunks[slot >> CHUNK_SHIFT];
        let index = (slot & (CHUNK - 1)) as u32;
        chunk.entries[index as usize].begin();
        let observer = Arc::clone(chunk) as Arc<dyn SlotObserver>;
        match E::now(&self.opts) {
            Some(stamp) => CallGuard::for_slot_stamped(observer, index, stamp),
            None => CallGuard::for_slot_untimed(observer, index),
        }
    }

    /// The entry of the instance with `id` (a scan: for diagnostics).
    pub(crate) fn find(&self, id: &str) -> Option<&E> {
        self.set.position(id).map(|i| self.at(i))
    }

    /// The better of two random candidates of `set` (this table's generation).
    #[inline]
    pub(crate) fn choose_two(&self, set: &InstanceSet, ctx: &SelectContext<'_>) -> Option<usize> {
        let (a, b) = pick::with_rng(|rng| self.candidates.random_pair(set, ctx, rng))?;
        let Some(b) = b else {
            return Some(a);
        };
        Some(if E::prefers(&self.opts, self.at(a), self.at(b)) {
            b
        } else {
            a
        })
    }

    #[inline]
    pub(crate) fn choose_two_and_begin(
        &self,
        set: &InstanceSet,
        ctx: &SelectContext<'_>,
    ) -> Option<(usize, CallGuard)> {
        let i = self.choose_two(set, ctx)?;
        Some((i, self.begin(i)))
    }

    /// How many slots the chunks hold (for tests).
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.chunks.len() * CHUNK
    }
}

/// A balancer's tables: the latest generation's of each service, and the options of their
/// entries.
pub(crate) struct Tables<E: Entry> {
    pub(crate) sets: PerService<Table<E>>,
    opts: Arc<E::Opts>,
}

impl<E: Entry> Default for Tables<E>
where
    E::Opts: Default,
{
    fn default() -> Self {
        Tables::new(Arc::default())
    }
}

impl<E: Entry> Tables<E> {
    pub(crate) fn new(opts: Arc<E::Opts>) -> Self {
        Tables {
            sets: PerService::default(),
            opts,
        }
    }

    /// Prepares `set` unless the same or a newer generation of its service is prepared,
    /// carrying the entries of the latest generation over.
    pub(crate) fn prepare(&self, set: &InstanceSet) {
        self.sets
            .prepare_from(set, |prev| Table::new(set, prev, &self.opts));
    }

    /// [`LoadBalancer::select_set`](waypost_core_types::LoadBalancer::select_set) of a
    /// two-choices balancer.
    pub(crate) fn select_set<'a>(
        &self,
        set: &'a InstanceSet,
        ctx: &SelectContext<'_>,
    ) -> Option<&'a Arc<ServiceInfo>> {
        let i = match self.sets.with(set, |t| t.choose_two(set, ctx)) {
            Some(i) => i,
            None => self.pick_unprepared(set, ctx).map(|(i, _guard)| i),
        };
        set.get(i?)
    }

    /// [`LoadBalancer::pick`](waypost_core_types::LoadBalancer::pick) of a two-choices
    /// balancer, O(1) on a prepared set: two random candidates, their entries reached by
    /// position, and a guard holding the chosen entry's chunk and index.
    #[inline]
    pub(crate) fn pick<'a>(
        &self,
        set: &'a InstanceSet,
        ctx: &SelectContext<'_>,
    ) -> Option<(&'a Arc<ServiceInfo>, CallGuard)> {
        // The table attached to the set, in straight-line code (the usual case: the discovery
        // cache prepared the set it hands out). The guard is made last, so that it is built
        // where the result goes: a guard built before and moved in was reread from the stack
        // wider than it was written, which the CPU cannot forward from its stores.
        if let Some(t) = self.sets.attached(set) {
            let i = t.choose_two(set, ctx)?;
            let picked = set.get(i)?;
            return Some((picked, t.begin(i)));
        }
        let (i, guard) = self.pick_unattached(set, ctx)?;
        Some((set.get(i)?, guard))
    }

    /// A pick on a set this balancer did not attach its table to: the table of its generation
    /// held by this thread or the service, else [`pick_unprepared`](Self::pick_unprepared).
    #[cold]
    #[inline(never)]
    fn pick_unattached(
        &self,
        set: &InstanceSet,
        ctx: &SelectContext<'_>,
    ) -> Option<(usize, CallGuard)> {
        match self.sets.with(set, |t| t.choose_two_and_begin(set, ctx)) {
            Some(r) => r,
            None => self.pick_unprepared(set, ctx),
        }
    }

    /// A pick on a generation that was not prepared: prepares it (O(n)), or, for a set older
    /// than the prepared one, makes a table for this pick alone from the latest one.
    #[cold]
    #[inline(never)]
    fn pick_unprepared(
        &self,
        set: &InstanceSet,
        ctx: &SelectContext<'_>,
    ) -> Option<(usize, CallGuard)> {
        self.prepare(set);
        if let Some(r) = self.sets.with(set, |t| t.choose_two_and_begin(set, ctx)) {
            return r;
        }
        let latest = self.sets.latest(set.service());
        Table::new(set, latest.as_deref(), &self.opts).choose_two_and_begin(set, ctx)
    }

    /// Drops the tables of `service`.
    pub(crate) fn forget(&self, service: &str) {
        self.sets.forget(service);
    }

    /// `f` of the entry of instance `id` in the first service that has it (a scan: for
    /// diagnostics).
    pub(crate) fn find<R>(&self, id: &str, f: impl Fn(&E) -> R) -> Option<R> {
        self.sets.all().iter().find_map(|t| t.find(id).map(&f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::least_request::Count;
    use crate::testing::{instance, writer};
    use waypost_core_types::Health::Healthy as H;

    fn table(prev: Option<&Table<Count>>, set: &InstanceSet) -> Table<Count> {
        Table::new(set, prev, &Arc::new(()))
    }

    fn slot(t: &Table<Count>, id: &str) -> u32 {
        t.slot_of[t.set.position(id).expect("in the set")]
    }

    #[test]
    fn instances_keep_their_slots_and_new_ones_take_free_ones_without_calls() {
        let mut w = writer("t", &[H; 64]);
        let t1 = table(None, w.current());
        assert_eq!(t1.capacity(), 64);
        let kept = slot(&t1, "t-5");
        // A call in flight on t-3, then t-3 and t-4 leave and two others come.
        let busy = t1.begin(t1.set.position("t-3").unwrap());
        let (s3, s4) = (slot(&t1, "t-3"), slot(&t1, "t-4"));
        w.remove("t-3");
        w.remove("t-4");
        let t2 = table(Some(&t1), w.current());
        assert_eq!(slot(&t2, "t-5"), kept);
        w.upsert(instance("t", "new-1", H, 100));
        w.upsert(instance("t", "new-2", H, 100));
        let t3 = table(Some(&t2), w.current());
        // t-4's slot is free and idle: a newcomer takes it, with a fresh count; t-3's still has
        // a call in flight: the other newcomer gets a slot of a new chunk.
        let new = [slot(&t3, "new-1"), slot(&t3, "new-2")];
        assert!(new.contains(&s4), "{new:?}");
        assert!(!new.contains(&s3), "{new:?}");
        assert_eq!(t3.capacity(), 128);
        assert_eq!(t3.entry(s4).in_flight(), 0);
        // The call that began on t-3 ends on t-3's entry; then its slot can be used again.
        busy.finish(Outcome::Success);
        assert_eq!(t3.entry(s3).in_flight(), 0);
        w.upsert(instance("t", "new-3", H, 100));
        let t4 = table(Some(&t3), w.current());
        assert_eq!(t4.capacity(), 128);
        let slots: std::collections::HashSet<u32> = t4.slot_of.iter().copied().collect();
        assert_eq!(slots.len(), t4.set.len(), "one slot per instance");
        assert_eq!(slot(&t4, "t-5"), kept);
    }

    #[test]
    fn counts_follow_their_instance_through_changes() {
        let mut w = writer("c", &[H; 300]);
        let t1 = table(None, w.current());
        assert_eq!(t1.capacity(), 320);
        let guards: Vec<_> = (0..300).map(|i| t1.begin(i)).collect();
        // Every other instance leaves; their slots stay busy until their calls end.
        for i in (0..300).step_by(2) {
            w.remove(&format!("c-{i}"));
        }
        let t2 = table(Some(&t1), w.current());
        for i in (1..300).step_by(2) {
            assert_eq!(t2.find(&format!("c-{i}")).unwrap().in_flight(), 1);
        }
        drop(guards);
        for i in (1..300).step_by(2) {
            assert_eq!(t2.find(&format!("c-{i}")).unwrap().in_flight(), 0);
        }
        // 150 newcomers fit in the 170 free slots: no new chunk.
        for i in 0..150 {
            w.upsert(instance("c", &format!("n-{i}"), H, 100));
        }
        let t3 = table(Some(&t2), w.current());
        let t4 = table(Some(&t3), w.current());
        assert_eq!(t3.capacity(), 320);
        assert_eq!(t4.capacity(), 320);
        assert_eq!(
            t4.slot_of
                .iter()
                .collect::<std::collections::HashSet<_>>()
                .len(),
            300
        );
    }
}
