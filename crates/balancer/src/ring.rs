//! The consistent-hash ring of a versioned [`InstanceSet`], updated in place of a rebuild.
//!
//! The ring's points are sorted by hash and cut by the top bits of their hash into `2^bits`
//! chunks of about [`TARGET`] points each, every chunk behind its own `Arc`. A lookup reads its
//! chunk straight from the table (indexed by its hash's top bits), guesses its position by
//! interpolation and scans a few words: two or three cache lines, at 10 instances or 100,000.
//! A change of one instance adds or removes its `replicas` points: only the chunks those points
//! fall in are copied (copy-on-write), the others are shared with the previous ring, so one
//! change in 10,000 instances copies about 160 chunks of 512 bytes instead of sorting 1.6
//! million points.
//!
//! A point names a *slot*, not a position: an instance keeps its slot for as long as it is on
//! the ring, and a per-generation table maps slots to the set's positions (a removal moves the
//! set's last instance into the freed position: only that table changes for it). The ring holds
//! the instances of the set's selection tier only, so a lookup's first point is the answer
//! unless the caller avoids it; the keys an instance owns do not depend on the other
//! instances' health, exactly as when unhealthy instances are stepped over.

use std::collections::HashMap;
use std::sync::Arc;

use waypost_core_types::{Health, InstanceSet, ServiceInfo};

use crate::pick;
use crate::prepared::{Candidates, Generational};

/// The average number of points per chunk a layout aims at. A chunk of 64 points is 512 bytes:
/// a lookup's interpolated guess is within a few points (one or two cache lines) of the
/// answer, and a change copies only small chunks.
const TARGET: usize = 64;

/// How far (in bits, so a factor of 4) the average chunk may drift from [`TARGET`] through
/// updates before the ring is laid out again.
const SLACK: u32 = 2;

/// No slot (a position whose instance is not on the ring) or no position (a free slot).
pub(crate) const NONE: u32 = u32::MAX;

/// The hashes of the points of instance `id`: the same in every process and release.
pub(crate) fn point_hashes(id: &str, replicas: usize) -> impl Iterator<Item = u64> + '_ {
    let mut base = pick::Fnv::default();
    base.write_bytes(id.as_bytes());
    base.write_bytes(b"#");
    (0..replicas).map(move |r| {
        let mut h = base;
        h.write_bytes(&(r as u32).to_le_bytes());
        h.finish64()
    })
}

/// One point of the ring: a hash and the slot of the instance it belongs to. Points are
/// ordered by hash, then slot.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Point {
    hash: u64,
    slot: u32,
}

/// The number of bits that index `n` distinct values (0 for at most one).
fn bits_to_index(n: usize) -> u32 {
    usize::BITS - n.saturating_sub(1).leading_zeros()
}

/// The layout for `len` points and `slots` slots: about [`TARGET`] points per chunk, and
/// enough bits for every slot (a slot is stored in the low `bits` bits of its point).
fn layout_bits(len: usize, slots: usize) -> u32 {
    bits_to_index(len.div_ceil(TARGET)).max(bits_to_index(slots))
}

/// The sorted points in `1 << bits` chunks, each behind its own `Arc`: chunk `b` holds the
/// points whose hash starts with the `bits` bits of `b`, so a lookup goes straight to its
/// chunk (no search) and a change copies only the chunks its points fall in.
///
/// Inside a chunk, the top `bits` bits of a hash are known, so a point is one word:
/// `hash << bits | slot`, and the words sort like the points. A lookup guesses the position of
/// its hash by interpolation (hashes are uniform) and corrects the guess by a short scan;
/// eight points share a cache line.
#[derive(Clone)]
struct Points {
    chunks: Vec<Arc<[u64]>>,
    bits: u32,
    len: usize,
}

impl Points {
    /// The chunk of `hash`.
    #[inline]
    fn chunk_index(&self, hash: u64) -> usize {
        // Through u128: a shift by 64 (no bits, one chunk) is 0.
        ((hash as u128) >> (64 - self.bits)) as usize
    }

    /// `p` as stored in its chunk.
    #[inline]
    fn pack(&self, p: Point) -> u64 {
        (p.hash << self.bits) | u64::from(p.slot)
    }

    /// The slot of a stored point.
    #[inline]
    fn slot(&self, word: u64) -> u32 {
        // The low `bits` bits: the slot, which is below `1 << bits`.
        (word & ((1u64 << self.bits) - 1)) as u32
    }

    /// The points, sorted, laid out for `slots` slots.
    fn build(mut all: Vec<Point>, slots: usize) -> Self {
        all.sort_unstable();
        Self::lay_out(&all, layout_bits(all.len(), slots))
    }

    /// Sorted points cut into `1 << bits` chunks.
    fn lay_out(all: &[Point], bits: u32) -> Self {
        let mut points = Points {
            chunks: Vec::with_capacity(1 << bits),
            bits,
            len: all.len(),
        };
        let mut i = 0;
        for b in 0..1usize << bits {
            let from = i;
            while i < all.len() && points.chunk_index(all[i].hash) == b {
                i += 1;
            }
            let chunk: Arc<[u64]> = all[from..i].iter().map(|p| points.pack(*p)).collect();
            points.chunks.push(chunk);
        }
        points
    }

    /// Every point, in order.
    fn unpack(&self) -> Vec<Point> {
        let mut all = Vec::with_capacity(self.len);
        for (b, chunk) in self.chunks.iter().enumerate() {
            let top = ((b as u128) << (64 - self.bits)) as u64;
            all.extend(chunk.iter().map(|w| Point {
                hash: top | w.checked_shr(self.bits).unwrap_or(0),
                slot: self.slot(*w),
            }));
        }
        all
    }

    /// The first point at or after `hash`, as (chunk, index), wrapping to the first point;
    /// the ring must not be empty.
    #[inline]
    fn start(&self, hash: u64) -> (usize, usize) {
        let mut c = self.chunk_index(hash);
        let i = first_at_or_after(&self.chunks[c], hash << self.bits);
        if i < self.chunks[c].len() {
            return (c, i);
        }
        loop {
            c += 1;
            if c == self.chunks.len() {
                c = 0;
            }
            if !self.chunks[c].is_empty() {
                return (c, 0);
            }
        }
    }

    /// The first slot clockwise from `hash` (once around the ring) for which `f` gives a
    /// value, and that value.
    #[inline]
    fn find_map<T>(&self, hash: u64, mut f: impl FnMut(u32) -> Option<T>) -> Option<T> {
        if self.len == 0 {
            return None;
        }
        let (mut c, mut i) = self.start(hash);
        let mut left = self.len;
        loop {
            for w in &self.chunks[c][i..] {
                if let Some(t) = f(self.slot(*w)) {
                    return Some(t);
                }
                left -= 1;
                if left == 0 {
                    return None;
                }
            }
            i = 0;
            c += 1;
            if c == self.chunks.len() {
                c = 0;
            }
        }
    }

    /// A copy with `ops` applied ((point, add?)), for `slots` slots: only the chunks they fall
    /// in are copied; the others are shared. The ring is laid out again (O(points), no sort)
    /// when a slot would not fit in its chunks' words, or when the average chunk has drifted
    /// past [`SLACK`] bits from [`TARGET`] points.
    fn apply(&self, mut ops: Vec<(Point, bool)>, slots: usize) -> Self {
        let mut out = if bits_to_index(slots) > self.bits {
            Self::lay_out(&self.unpack(), layout_bits(self.len, slots))
        } else {
            self.clone()
        };
        ops.sort_unstable();
        let mut k = 0;
        while k < ops.len() {
            let c = out.chunk_index(ops[k].0.hash);
            let mut chunk = out.chunks[c].to_vec();
            while k < ops.len() && out.chunk_index(ops[k].0.hash) == c {
                let (point, add) = ops[k];
                match (chunk.binary_search(&out.pack(point)), add) {
                    (Err(i), true) => {
                        chunk.insert(i, out.pack(point));
                        out.len += 1;
                    }
                    (Ok(i), false) => {
                        chunk.remove(i);
                        out.len -= 1;
                    }
                    // Adding a point that is there or removing one that is not: nothing to do.
                    _ => {}
                }
                k += 1;
            }
            out.chunks[c] = Arc::from(chunk);
        }
        let bits = layout_bits(out.len, slots);
        if out.bits + SLACK < bits || out.bits > bits + SLACK {
            out = Self::lay_out(&out.unpack(), bits);
        }
        out
    }

    /// The bytes the points and their chunk table take (allocator overhead aside).
    #[cfg(test)]
    fn bytes(&self) -> usize {
        let header = 2 * std::mem::size_of::<usize>();
        self.chunks.len() * (std::mem::size_of::<Arc<[u64]>>() + header) + self.len * 8
    }
}

/// The index of the first word of `chunk` that is `>= key` (`chunk.len()` if none).
///
/// Stored points are uniform over the words, so the position is first guessed by
/// interpolation, then corrected by a short scan (a few words, one or two cache lines).
#[inline]
fn first_at_or_after(chunk: &[u64], key: u64) -> usize {
    let n = chunk.len();
    let guess = ((u128::from(key) * n as u128) >> 64) as usize;
    let mut i = guess;
    // Invariant wanted: chunk[i - 1] < key <= chunk[i].
    while i > 0 && chunk[i - 1] >= key {
        i -= 1;
    }
    while i < n && chunk[i] < key {
        i += 1;
    }
    i
}

/// The ring of one set generation.
pub(crate) struct SetRing {
    generation: u64,
    set: InstanceSet,
    /// The health of the instances on the ring (the set's selection tier).
    tier: Option<Health>,
    points: Arc<Points>,
    /// Position → slot (`NONE` when that instance is not on the ring).
    pos_slot: Vec<u32>,
    /// Slot → position (`NONE` for a free slot).
    slot_pos: Vec<u32>,
    free: Vec<u32>,
    pub(crate) candidates: Candidates,
}

impl Generational for SetRing {
    fn generation(&self) -> u64 {
        self.generation
    }
}

impl SetRing {
    /// The ring of `set` from scratch: O(n × replicas × log).
    pub(crate) fn build(set: &InstanceSet, replicas: usize) -> Self {
        let tier = set.selection_tier();
        let on_ring = |s: &ServiceInfo| Some(s.health) == tier;
        let mut all = Vec::with_capacity(set.selectable() * replicas);
        let mut pos_slot = vec![NONE; set.len()];
        for (i, s) in set.iter().enumerate() {
            if on_ring(s) {
                pos_slot[i] = i as u32;
                all.extend(point_hashes(&s.id, replicas).map(|hash| Point {
                    hash,
                    slot: i as u32,
                }));
            }
        }
        let slot_pos = pos_slot.clone();
        let free = (0..set.len() as u32)
            .filter(|i| pos_slot[*i as usize] == NONE)
            .collect();
        SetRing {
            generation: set.generation(),
            set: set.clone(),
            tier,
            points: Arc::new(Points::build(all, set.len())),
            pos_slot,
            slot_pos,
            free,
            candidates: Candidates::new(set),
        }
    }

    /// The ring of `set` from `self`'s: the points of the instances that joined or left the
    /// ring are added or removed (O(changes × replicas + chunks)), plus an O(n) pass over
    /// pointers to find the changes. A change of tier rebuilds.
    pub(crate) fn next(&self, set: &InstanceSet, replicas: usize) -> Self {
        let tier = set.selection_tier();
        if tier != self.tier {
            return Self::build(set, replicas);
        }
        let old = &self.set;
        let on_ring = |s: &ServiceInfo| Some(s.health) == tier;
        // Positions whose instance changed, old and new.
        let mut gone: HashMap<&str, usize> = HashMap::new();
        let mut came: Vec<usize> = Vec::new();
        for i in 0..old.len().max(set.len()) {
            match (old.get(i), set.get(i)) {
                (Some(a), Some(b)) if Arc::ptr_eq(a, b) => {}
                (a, b) => {
                    if let Some(a) = a {
                        gone.insert(a.id.as_str(), i);
                    }
                    if b.is_some() {
                        came.push(i);
                    }
                }
            }
        }
        let mut pos_slot = self.pos_slot.clone();
        pos_slot.resize(set.len(), NONE);
        let mut slot_pos = self.slot_pos.clone();
        let mut free = self.free.clone();
        let mut ops: Vec<(Point, bool)> = Vec::new();
        let mut unplace = |slot: u32, id: &str, slot_pos: &mut Vec<u32>, free: &mut Vec<u32>| {
            ops.extend(point_hashes(id, replicas).map(|hash| (Point { hash, slot }, false)));
            slot_pos[slot as usize] = NONE;
            free.push(slot);
        };
        let mut added: Vec<(usize, &Arc<ServiceInfo>)> = Vec::new();
        for &i in &came {
            let Some(s) = set.get(i) else { continue };
            let was = gone.remove(s.id.as_str());
            let old_slot = was.map_or(NONE, |p| self.pos_slot[p]);
            match (old_slot != NONE, on_ring(s)) {
                (true, true) => {
                    pos_slot[i] = old_slot;
                    slot_pos[old_slot as usize] = i as u32;
                }
                (true, false) => {
                    unplace(old_slot, &s.id, &mut slot_pos, &mut free);
                    pos_slot[i] = NONE;
                }
                (false, true) => added.push((i, s)),
                (false, false) => pos_slot[i] = NONE,
            }
        }
        for (id, p) in gone {
            let slot = self.pos_slot[p];
            if slot != NONE {
                unplace(slot, id, &mut slot_pos, &mut free);
            }
        }
        for (i, s) in added {
            let slot = free.pop().unwrap_or_else(|| {
                slot_pos.push(NONE);
                (slot_pos.len() - 1) as u32
            });
            slot_pos[slot as usize] = i as u32;
            pos_slot[i] = slot;
            ops.extend(point_hashes(&s.id, replicas).map(|hash| (Point { hash, slot }, true)));
        }
        let points = if ops.is_empty() {
            Arc::clone(&self.points)
        } else {
            Arc::new(self.points.apply(ops, slot_pos.len()))
        };
        SetRing {
            generation: set.generation(),
            set: set.clone(),
            tier,
            points,
            pos_slot,
            slot_pos,
            free,
            candidates: Candidates::new(set),
        }
    }

    /// The position of the first instance clockwise from `hash` that `usable` accepts, on the
    /// set this ring was prepared for.
    #[inline]
    pub(crate) fn lookup(&self, hash: u64, mut usable: impl FnMut(usize) -> bool) -> Option<usize> {
        self.points.find_map(hash, |slot| {
            let p = self.slot_pos.get(slot as usize).copied().unwrap_or(NONE);
            (p != NONE && usable(p as usize)).then_some(p as usize)
        })
    }

    /// Like [`lookup`](Self::lookup) on `other`, a set this ring was not prepared for: each
    /// point is mapped to `other` by id through the position it had here (instances that moved
    /// or joined since are skipped until `other` is prepared).
    pub(crate) fn lookup_in(
        &self,
        other: &InstanceSet,
        hash: u64,
        mut usable: impl FnMut(usize) -> bool,
    ) -> Option<usize> {
        self.lookup(hash, |p| {
            let same = match (self.set.get(p), other.get(p)) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a.id == b.id,
                _ => false,
            };
            same && usable(p)
        })
    }

    /// The number of points on the ring.
    #[cfg(test)]
    pub(crate) fn points(&self) -> usize {
        self.points.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` uniform sorted words, with one duplicate.
    fn words(n: u64, seed: u64) -> Vec<u64> {
        let mut w: Vec<u64> = (0..n)
            .map(|i| pick::fmix64((i ^ seed).wrapping_mul(0x9e37_79b9_7f4a_7c15)))
            .collect();
        if n > 11 {
            w[10] = w[11];
        }
        w.sort_unstable();
        w
    }

    #[test]
    fn interpolation_finds_the_same_word_as_a_binary_search() {
        for n in [1, 2, 7, TARGET as u64, 4 * TARGET as u64, 3000] {
            let chunk = words(n, n);
            for k in 0..5_000u64 {
                let key = pick::fmix64(k ^ 0xdead_beef);
                let want = chunk.partition_point(|w| *w < key);
                assert_eq!(first_at_or_after(&chunk, key), want, "n {n}");
            }
            for w in &chunk {
                for key in [w.wrapping_sub(1), *w, w.wrapping_add(1)] {
                    let want = chunk.partition_point(|x| *x < key);
                    assert_eq!(first_at_or_after(&chunk, key), want, "n {n}");
                }
            }
            assert_eq!(first_at_or_after(&chunk, 0), 0);
            assert_eq!(first_at_or_after(&chunk, u64::MAX), chunk.len());
        }
        assert_eq!(first_at_or_after(&[], 5), 0);
    }

    /// The slot of the first point at or after `hash` in a plain sorted list, wrapping.
    fn first_slot(sorted: &[Point], hash: u64) -> Option<u32> {
        let i = sorted.partition_point(|p| p.hash < hash);
        sorted.get(i).or(sorted.first()).map(|p| p.slot)
    }

    #[test]
    fn chunked_lookups_equal_a_search_of_the_sorted_points() {
        for (n, slots) in [
            (0, 1),
            (1, 1),
            (3, 3),
            (100, 10),
            (5_000, 40),
            (20_000, 2_000),
        ] {
            let mut all: Vec<Point> = words(n, 7)
                .into_iter()
                .enumerate()
                .map(|(i, hash)| Point {
                    hash,
                    slot: (i % slots) as u32,
                })
                .collect();
            // Points right at chunk borders and at both ends of the ring.
            if n > 0 {
                all.push(Point { hash: 0, slot: 0 });
                all.push(Point {
                    hash: u64::MAX,
                    slot: 0,
                });
                all.push(Point {
                    hash: 1 << 63,
                    slot: 0,
                });
            }
            let points = Points::build(all.clone(), slots);
            all.sort_unstable();
            assert_eq!(points.len, all.len());
            assert!(points.bits >= bits_to_index(slots));
            assert!(all == points.unpack(), "n {n}");
            let mut keys: Vec<u64> = (0..5_000u64).map(|k| pick::fmix64(k ^ 99)).collect();
            keys.extend(all.iter().flat_map(|p| [p.hash.wrapping_sub(1), p.hash]));
            for key in keys {
                let got = points.find_map(key, Some);
                assert_eq!(got, first_slot(&all, key), "n {n} key {key:x}");
            }
            // Stepping over slots: the walk visits every point once, in ring order.
            if let Some(first) = all.first() {
                let mut seen = 0;
                let none: Option<()> = points.find_map(first.hash, |_| {
                    seen += 1;
                    None
                });
                assert!(none.is_none());
                assert_eq!(seen, all.len());
            }
        }
    }

    /// Points take one word each, plus a chunk table entry per 32 to 64 points.
    #[test]
    fn a_point_takes_about_nine_bytes() {
        let mut w = waypost_core_types::InstanceSetWriter::new("m");
        for i in 0..1_000 {
            w.upsert(Arc::new(
                ServiceInfo::new(format!("m{i}"), "m", "h", 1).with_health(Health::Healthy),
            ));
        }
        let ring = SetRing::build(w.current(), 160);
        let bytes = ring.points.bytes() as f64 / ring.points() as f64;
        assert!((8.0..9.5).contains(&bytes), "{bytes} bytes per point");
    }

    #[test]
    fn updates_equal_a_rebuild() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut w = waypost_core_types::InstanceSetWriter::new("r");
        let healths = [
            Health::Healthy,
            Health::Healthy,
            Health::Healthy,
            Health::Unknown,
        ];
        for i in 0..200 {
            w.upsert(Arc::new(
                ServiceInfo::new(format!("i{i}"), "r", "h", 1).with_health(Health::Healthy),
            ));
        }
        let replicas = 40;
        let mut ring = SetRing::build(w.current(), replicas);
        for step in 0..300 {
            let id = format!("i{}", rng.random_range(0..260u32));
            if rng.random_bool(0.5) {
                let h = healths[rng.random_range(0..healths.len())];
                w.upsert(Arc::new(ServiceInfo::new(id, "r", "h", 1).with_health(h)));
            } else {
                w.remove(&id);
            }
            let set = w.current();
            ring = ring.next(set, replicas);
            let fresh = SetRing::build(set, replicas);
            assert_eq!(ring.points(), fresh.points(), "step {step}");
            for k in 0..200u64 {
                let h = pick::fmix64(k ^ (step as u64) << 20);
                let a = ring.lookup(h, |_| true).map(|p| &set.get(p).unwrap().id);
                let b = fresh.lookup(h, |_| true).map(|p| &set.get(p).unwrap().id);
                assert_eq!(a, b, "step {step} key {k}");
            }
        }
    }

    /// A ring grown one instance at a time from empty, then emptied again, is laid out again
    /// as it goes (more slots than its chunks' words hold, chunks too full or too empty) and
    /// always finds what a ring built from scratch finds.
    #[test]
    fn growing_and_shrinking_lay_the_ring_out_again() {
        for replicas in [1, 40] {
            let mut w = waypost_core_types::InstanceSetWriter::new("g");
            let mut ring = SetRing::build(w.current(), replicas);
            let mut layouts = vec![ring.points.bits];
            let ids: Vec<String> = (0..700).map(|i| format!("g{i}")).collect();
            let steps = ids
                .iter()
                .map(|id| (id, true))
                .chain(ids.iter().rev().map(|id| (id, false)));
            for (step, (id, add)) in steps.enumerate() {
                if add {
                    w.upsert(Arc::new(
                        ServiceInfo::new(id.clone(), "g", "h", 1).with_health(Health::Healthy),
                    ));
                } else {
                    w.remove(id);
                }
                let set = w.current();
                ring = ring.next(set, replicas);
                if layouts.last() != Some(&ring.points.bits) {
                    layouts.push(ring.points.bits);
                }
                let fresh = SetRing::build(set, replicas);
                assert_eq!(ring.points(), fresh.points(), "step {step}");
                for k in 0..50u64 {
                    let h = pick::fmix64(k ^ (step as u64) << 20);
                    let a = ring.lookup(h, |_| true).map(|p| &set.get(p).unwrap().id);
                    let b = fresh.lookup(h, |_| true).map(|p| &set.get(p).unwrap().id);
                    assert_eq!(a, b, "replicas {replicas} step {step} key {k}");
                }
            }
            // Up, then down (slots stay: the ring keeps enough bits for 700 of them).
            let top = *layouts.iter().max().unwrap();
            assert!(top >= bits_to_index(700), "{layouts:?}");
            assert!(layouts.len() >= 3, "{layouts:?}");
            assert_eq!(ring.points(), 0);
        }
    }
}
