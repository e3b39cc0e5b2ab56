//! The consistent-hash ring of a versioned [`InstanceSet`], updated in place of a rebuild.
//!
//! The ring's points are sorted by hash and cut into chunks of about [`CHUNK`] points, each
//! behind its own `Arc`, with the first hash of every chunk in a small index. A change of one
//! instance adds or removes its `replicas` points: only the chunks those points fall in are
//! copied (copy-on-write), the others are shared with the previous ring, so one change in
//! 10,000 instances copies a few hundred small chunks instead of sorting 1.6 million points.
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

/// Points per chunk when a ring is built; a chunk that grows past twice this is split.
const CHUNK: usize = 256;

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

/// One point of the ring: a hash and the slot of the instance it belongs to.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Point {
    hash: u64,
    slot: u32,
}

/// A chunk: sorted points (by hash, then slot), right behind its `Arc` (one indirection from
/// the table).
type Chunk = Arc<[Point]>;

/// The sorted points, in shared chunks.
#[derive(Clone)]
struct Points {
    /// Each chunk with its first hash (read together: one cache line for both).
    chunks: Vec<(u64, Chunk)>,
    /// `buckets[b]` = the number of chunks whose first hash is below `b << (64 - bits)`, so a
    /// lookup searches only the few chunks of its bucket; one extra entry at the end.
    buckets: Vec<u32>,
    bits: u32,
    len: usize,
}

impl Points {
    fn build(mut all: Vec<Point>) -> Self {
        all.sort_unstable();
        let chunks: Vec<(u64, Chunk)> = all
            .chunks(CHUNK)
            .map(|c| (c[0].hash, Arc::from(c)))
            .collect();
        Self::of(chunks, all.len())
    }

    fn of(chunks: Vec<(u64, Chunk)>, len: usize) -> Self {
        // About one chunk per bucket.
        let bits = (usize::BITS - chunks.len().leading_zeros()).clamp(1, 20);
        let mut buckets = Vec::with_capacity((1 << bits) + 1);
        let mut i = 0usize;
        for b in 0..1u64 << bits {
            while i < chunks.len() && (chunks[i].0 >> (64 - bits)) < b {
                i += 1;
            }
            buckets.push(i as u32);
        }
        buckets.push(chunks.len() as u32);
        Points {
            chunks,
            buckets,
            bits,
            len,
        }
    }

    /// The chunk a point with `hash` belongs in: the last whose first hash is `<= hash`
    /// (the first chunk for a hash below every point).
    #[inline]
    fn chunk_of(&self, hash: u64) -> usize {
        let b = (hash >> (64 - self.bits)) as usize;
        let lo = self.buckets[b] as usize;
        let hi = self.buckets[b + 1] as usize;
        (lo + self.chunks[lo..hi].partition_point(|c| c.0 <= hash)).saturating_sub(1)
    }

    /// The first point at or after `hash`, as (chunk, index), wrapping to the first point.
    #[inline]
    fn start(&self, hash: u64) -> (usize, usize) {
        if self.chunks.is_empty() {
            return (0, 0);
        }
        let c = self.chunk_of(hash);
        let chunk = &self.chunks[c].1;
        let i = first_at_or_after(chunk, hash);
        if i < chunk.len() {
            (c, i)
        } else if c + 1 < self.chunks.len() {
            (c + 1, 0)
        } else {
            (0, 0)
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
            for p in &self.chunks[c].1[i..] {
                if let Some(t) = f(p.slot) {
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

    /// A copy with `ops` applied ((point, add?)): only the chunks they fall in are copied; the
    /// others are shared.
    fn apply(&self, mut ops: Vec<(Point, bool)>) -> Self {
        if self.chunks.is_empty() {
            return Points::build(ops.iter().filter(|o| o.1).map(|o| o.0).collect());
        }
        ops.sort_unstable();
        let mut out: Vec<(u64, Chunk)> = Vec::with_capacity(self.chunks.len() + 8);
        let mut len = self.len;
        let mut next = 0usize;
        let mut k = 0usize;
        while k < ops.len() {
            let c = self.chunk_of(ops[k].0.hash);
            out.extend(self.chunks[next..c].iter().cloned());
            let mut chunk: Vec<Point> = self.chunks[c].1.to_vec();
            while k < ops.len() && self.chunk_of(ops[k].0.hash) == c {
                let (point, add) = ops[k];
                match (chunk.binary_search(&point), add) {
                    (Err(i), true) => {
                        chunk.insert(i, point);
                        len += 1;
                    }
                    (Ok(i), false) => {
                        chunk.remove(i);
                        len -= 1;
                    }
                    // Adding a point that is there or removing one that is not: nothing to do.
                    _ => {}
                }
                k += 1;
            }
            let pieces = if chunk.len() > 2 * CHUNK {
                CHUNK
            } else {
                chunk.len().max(1)
            };
            out.extend(chunk.chunks(pieces).map(|p| (p[0].hash, Arc::from(p))));
            next = c + 1;
        }
        out.extend(self.chunks[next..].iter().cloned());
        Points::of(out, len)
    }
}

/// The index of the first point of `chunk` whose hash is `>= hash` (`chunk.len()` if none).
///
/// Point hashes are uniform, so the position is first guessed by interpolation between the
/// chunk's first and last hash, then corrected by a short scan (a few entries, one or two cache
/// lines, where a binary search over a 4 KiB chunk touches six or more).
#[inline]
fn first_at_or_after(chunk: &[Point], hash: u64) -> usize {
    let n = chunk.len();
    let (Some(first), Some(last)) = (chunk.first(), chunk.last()) else {
        return 0;
    };
    if hash <= first.hash {
        return 0;
    }
    if hash > last.hash {
        return n;
    }
    let span = (last.hash - first.hash) as f64;
    let guess = (((hash - first.hash) as f64 / span) * (n - 1) as f64) as usize;
    let mut i = guess.min(n - 1);
    // Invariant wanted: chunk[i - 1].hash < hash <= chunk[i].hash.
    while i > 0 && chunk[i - 1].hash >= hash {
        i -= 1;
    }
    while i < n && chunk[i].hash < hash {
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
            points: Arc::new(Points::build(all)),
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
            Arc::new(self.points.apply(ops))
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

    #[test]
    fn interpolation_finds_the_same_point_as_a_binary_search() {
        let mut pts: Vec<Point> = (0..CHUNK as u64)
            .map(|i| Point {
                hash: pick::fmix64(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
                slot: i as u32,
            })
            .collect();
        pts.sort_unstable();
        // Duplicate hashes too.
        pts[10].hash = pts[11].hash;
        pts.sort_unstable();
        for k in 0..20_000u64 {
            let h = pick::fmix64(k ^ 0xdead_beef);
            assert_eq!(
                first_at_or_after(&pts, h),
                pts.partition_point(|p| p.hash < h)
            );
        }
        for p in &pts {
            for h in [p.hash.wrapping_sub(1), p.hash, p.hash.wrapping_add(1)] {
                assert_eq!(
                    first_at_or_after(&pts, h),
                    pts.partition_point(|q| q.hash < h)
                );
            }
        }
        assert_eq!(first_at_or_after(&pts, u64::MAX), pts.len());
        assert_eq!(first_at_or_after(&[], 5), 0);
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
}
