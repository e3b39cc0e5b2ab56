//! The consistent-hash ring of a versioned [`InstanceSet`], updated in place of a rebuild.
//!
//! The ring's points are sorted by hash and cut by the top bits of their hash into `2^bits`
//! chunks of at most about [`TARGET`] points each, every chunk behind its own `Arc`. A lookup
//! reads its chunk straight from the table (indexed by its hash's top bits), guesses its
//! position by interpolation and scans a few words: two or three cache lines, at 10 instances
//! or 100,000. A change of one instance adds or removes its `replicas` points: only the chunks
//! those points fall in are copied (copy-on-write), the others are shared with the previous
//! ring, so one change in 10,000 instances (16,384 chunks of about 100 points) copies about
//! 160 chunks of 800 bytes instead of sorting 1.6 million points.
//!
//! A point names the position of its instance in the set, so a lookup's answer needs no
//! further table. An instance that moves (a removal moves the set's last instance into the
//! freed position) has its points placed again: a removal changes up to three times
//! `replicas` points. The ring holds the instances of the set's selection tier only, so a
//! lookup's first point is the answer unless the caller avoids it; the keys an instance owns
//! do not depend on the other instances' health, exactly as when unhealthy instances are
//! stepped over.

use std::collections::HashMap;
use std::sync::Arc;

use waypost_core_types::{Health, InstanceSet, ServiceInfo};

use crate::pick;
use crate::prepared::{Candidates, Generational};

/// The most points per chunk, on average, a layout aims at (fewer when the set's positions
/// need more bits). A chunk of 128 points is 1 KiB: a lookup's interpolated guess is within a
/// few points (one or two cache lines) of the answer, and a change copies only small chunks.
const TARGET: usize = 128;

/// How far (in bits: a factor of 4 in the number of chunks) the layout may drift through
/// updates from the one a build would choose before the ring is laid out again. A set that
/// grows past the power of two instances its layout holds is laid out again at once (a
/// position must fit in its points' words). Either is one O(points) pass, no sort: 24 ms at
/// 10,000 instances, 229 ms at 100,000 (160 replicas, release build), about once per doubling.
const SLACK: u32 = 2;

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

/// One point of the ring: a hash and the position in the set of the instance it belongs to.
/// Points are ordered by hash, then position.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Point {
    hash: u64,
    pos: u32,
}

/// The number of bits that index `n` distinct values (0 for at most one).
fn bits_to_index(n: usize) -> u32 {
    usize::BITS - n.saturating_sub(1).leading_zeros()
}

/// The layout for `len` points on a set of `positions` instances: about [`TARGET`] points per
/// chunk, and enough bits for every position (stored in the low `bits` bits of its points).
fn layout_bits(len: usize, positions: usize) -> u32 {
    bits_to_index(len.div_ceil(TARGET)).max(bits_to_index(positions))
}

/// The sorted points in `1 << bits` chunks, each behind its own `Arc`: chunk `b` holds the
/// points whose hash starts with the `bits` bits of `b`, so a lookup goes straight to its
/// chunk (no search) and a change copies only the chunks its points fall in.
///
/// Inside a chunk, the top `bits` bits of a hash are known, so a point is one word:
/// `hash << bits | pos`, and the words sort like the points. A lookup guesses the position of
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
        (p.hash << self.bits) | u64::from(p.pos)
    }

    /// The position of a stored point.
    #[inline]
    fn pos(&self, word: u64) -> u32 {
        // The low `bits` bits: the position, which is below `1 << bits`.
        (word & ((1u64 << self.bits) - 1)) as u32
    }

    /// The points, sorted, laid out for a set of `positions` instances.
    fn build(mut all: Vec<Point>, positions: usize) -> Self {
        all.sort_unstable();
        Self::lay_out(&all, layout_bits(all.len(), positions))
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
                pos: self.pos(*w),
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

    /// The first position clockwise from `hash` (once around the ring) for which `f` gives a
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
                if let Some(t) = f(self.pos(*w)) {
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

    /// A copy with `ops` applied ((point, add?)), for a set of `positions` instances: only the
    /// chunks they fall in are copied; the others are shared. The ring is laid out again
    /// (O(points), no sort) when a position would not fit in its chunks' words, or when the
    /// layout has drifted more than [`SLACK`] bits from the one a build would choose.
    fn apply(&self, mut ops: Vec<(Point, bool)>, positions: usize) -> Self {
        let mut out = if bits_to_index(positions) > self.bits {
            Self::lay_out(&self.unpack(), layout_bits(self.len, positions))
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
        let bits = layout_bits(out.len, positions);
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
        let mut all = Vec::with_capacity(set.selectable() * replicas);
        for (i, s) in set.iter().enumerate() {
            if Some(s.health) == tier {
                all.extend(point_hashes(&s.id, replicas).map(|hash| Point {
                    hash,
                    pos: i as u32,
                }));
            }
        }
        SetRing {
            generation: set.generation(),
            set: set.clone(),
            tier,
            points: Arc::new(Points::build(all, set.len())),
            candidates: Candidates::new(set),
        }
    }

    /// The ring of `set` from `self`'s: the points of the instances that joined or left the
    /// ring are added or removed, and those of an instance that moved to another position
    /// (a removal moves the set's last instance into the freed one) are placed again
    /// (O(changes × replicas + chunks)), plus an O(n) pass over pointers to find the changes.
    /// A change of tier rebuilds.
    pub(crate) fn next(&self, set: &InstanceSet, replicas: usize) -> Self {
        let tier = set.selection_tier();
        if tier != self.tier {
            return Self::build(set, replicas);
        }
        let old = &self.set;
        let on_ring = |s: &ServiceInfo| Some(s.health) == tier;
        // Positions whose instance changed: the old ones that were on the ring by id, and the
        // new ones.
        let mut gone: HashMap<&str, usize> = HashMap::new();
        let mut came: Vec<usize> = Vec::new();
        for i in 0..old.len().max(set.len()) {
            match (old.get(i), set.get(i)) {
                (Some(a), Some(b)) if Arc::ptr_eq(a, b) => {}
                (a, b) => {
                    if let Some(a) = a.filter(|a| on_ring(a)) {
                        gone.insert(a.id.as_str(), i);
                    }
                    if b.is_some() {
                        came.push(i);
                    }
                }
            }
        }
        let mut ops: Vec<(Point, bool)> = Vec::new();
        let mut place = |id: &str, at: usize, add: bool| {
            let pos = at as u32;
            ops.extend(point_hashes(id, replicas).map(|hash| (Point { hash, pos }, add)));
        };
        for &i in &came {
            let Some(s) = set.get(i) else { continue };
            let was = gone.remove(s.id.as_str());
            match (was, on_ring(s)) {
                (Some(p), true) if p == i => {}
                (Some(p), true) => {
                    place(&s.id, p, false);
                    place(&s.id, i, true);
                }
                (Some(p), false) => place(&s.id, p, false),
                (None, true) => place(&s.id, i, true),
                (None, false) => {}
            }
        }
        for (id, p) in gone {
            place(id, p, false);
        }
        let points = if ops.is_empty() {
            Arc::clone(&self.points)
        } else {
            Arc::new(self.points.apply(ops, set.len()))
        };
        SetRing {
            generation: set.generation(),
            set: set.clone(),
            tier,
            points,
            candidates: Candidates::new(set),
        }
    }

    /// The position of the first instance clockwise from `hash` that `usable` accepts, on the
    /// set this ring was prepared for.
    #[inline]
    pub(crate) fn lookup(&self, hash: u64, mut usable: impl FnMut(usize) -> bool) -> Option<usize> {
        self.points
            .find_map(hash, |p| usable(p as usize).then_some(p as usize))
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

    /// The position of the first point at or after `hash` in a plain sorted list, wrapping.
    fn first_slot(sorted: &[Point], hash: u64) -> Option<u32> {
        let i = sorted.partition_point(|p| p.hash < hash);
        sorted.get(i).or(sorted.first()).map(|p| p.pos)
    }

    #[test]
    fn chunked_lookups_equal_a_search_of_the_sorted_points() {
        for (n, positions) in [
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
                    pos: (i % positions) as u32,
                })
                .collect();
            // Points right at chunk borders and at both ends of the ring.
            if n > 0 {
                all.push(Point { hash: 0, pos: 0 });
                all.push(Point {
                    hash: u64::MAX,
                    pos: 0,
                });
                all.push(Point {
                    hash: 1 << 63,
                    pos: 0,
                });
            }
            let points = Points::build(all.clone(), positions);
            all.sort_unstable();
            assert_eq!(points.len, all.len());
            assert!(points.bits >= bits_to_index(positions));
            assert!(all == points.unpack(), "n {n}");
            let mut keys: Vec<u64> = (0..5_000u64).map(|k| pick::fmix64(k ^ 99)).collect();
            keys.extend(all.iter().flat_map(|p| [p.hash.wrapping_sub(1), p.hash]));
            for key in keys {
                let got = points.find_map(key, Some);
                assert_eq!(got, first_slot(&all, key), "n {n} key {key:x}");
            }
            // Stepping over every point: the walk visits each once.
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

    /// Points take one word each, plus a chunk (its table entry and `Arc` counts) per 64 to
    /// 128 points.
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
    /// as it goes (more positions than its chunks' words hold, chunks too full or too empty) and
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
            // Up, then down.
            let top = *layouts.iter().max().unwrap();
            assert!(top >= bits_to_index(700), "{layouts:?}");
            assert!(layouts.len() >= 3, "{layouts:?}");
            assert_eq!(ring.points(), 0);
        }
    }
}
