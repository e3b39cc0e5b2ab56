//! [`InstanceSet`]: one service's instances as an immutable, versioned value that a change
//! replaces in a few microseconds, whatever the size of the fleet.
//!
//! A discovery cache publishes one `InstanceSet` per service and replaces it on every change;
//! balancers key what they precompute (alias tables, hash rings, per-instance state) by the
//! set's [`generation`](InstanceSet::generation), so noticing a change costs one integer
//! comparison instead of comparing the whole set on every pick.
//!
//! The instances live in fixed-size chunks of shared pointers. A change copies the table of
//! chunks and the one or two chunks it touches (about `n / 64 + 64` pointer copies), not the
//! whole set and never the instances themselves; a lookup by position is two indexed loads.
//! [`InstanceSetWriter`] applies changes and keeps the id → position index that makes them
//! O(1); a removal moves the last instance into the freed position, so the order of a set is
//! its instances' order of arrival (a set built from a list starts sorted by id).

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crate::{Health, ServiceInfo};

/// State a balancer prepared for one set, with the balancer's key.
type Attached = (usize, Arc<dyn Any + Send + Sync>);

/// log2 of the number of instances per chunk.
const CHUNK_SHIFT: usize = 6;
/// Instances per chunk.
const CHUNK: usize = 1 << CHUNK_SHIFT;

type Chunk = Arc<[Arc<ServiceInfo>]>;

/// Generations are unique in the process: two different sets never share one.
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

fn next_generation() -> u64 {
    NEXT_GENERATION.fetch_add(1, Ordering::Relaxed)
}

/// One service's instances: immutable, cheap to replace, with a process-unique generation.
///
/// Build one from a list with [`InstanceSet::new`], or keep one up to date with an
/// [`InstanceSetWriter`]. Every new set (every change) has a new
/// [`generation`](Self::generation), never reused in the process, so a balancer that cached
/// something for generation `g` knows the set is unchanged while it sees `g`.
///
/// ```
/// use std::sync::Arc;
/// use waypost_core_types::{Health, InstanceSet, ServiceInfo};
///
/// let set = InstanceSet::new("user", (1..=3).map(|i| {
///     Arc::new(ServiceInfo::new(format!("user-{i}"), "user", "10.0.0.1", 8080 + i)
///         .with_health(Health::Healthy))
/// }));
/// assert_eq!(set.len(), 3);
/// assert_eq!(set.get(0).map(|s| s.id.as_str()), Some("user-1"));
/// assert_eq!(set.selectable(), 3);
/// ```
pub struct InstanceSet {
    service: Arc<str>,
    generation: u64,
    len: usize,
    chunks: Arc<[Chunk]>,
    healthy: usize,
    unknown: usize,
    /// What the balancer of the cache that published the set prepared for it.
    attached: OnceLock<Attached>,
}

impl InstanceSet {
    /// A set of `instances` of `service`, sorted by id; of two instances with the same id the
    /// later one is kept.
    pub fn new(
        service: impl Into<Arc<str>>,
        instances: impl IntoIterator<Item = Arc<ServiceInfo>>,
    ) -> Self {
        let mut all: Vec<Arc<ServiceInfo>> = instances.into_iter().collect();
        // A stable sort keeps arrival order among equal ids; keep the last of each run.
        all.sort_by(|a, b| a.id.cmp(&b.id));
        let mut dedup: Vec<Arc<ServiceInfo>> = Vec::with_capacity(all.len());
        for s in all {
            match dedup.last_mut() {
                Some(last) if last.id == s.id => *last = s,
                _ => dedup.push(s),
            }
        }
        Self::from_ordered(service.into(), dedup)
    }

    /// An empty set of `service`.
    pub fn empty(service: impl Into<Arc<str>>) -> Self {
        Self::from_ordered(service.into(), Vec::new())
    }

    /// A set holding `all` in this order (ids already unique).
    fn from_ordered(service: Arc<str>, all: Vec<Arc<ServiceInfo>>) -> Self {
        let (healthy, unknown) = count_health(all.iter());
        let len = all.len();
        let chunks: Arc<[Chunk]> = all.chunks(CHUNK).map(Arc::from).collect();
        InstanceSet {
            service,
            generation: next_generation(),
            len,
            chunks,
            healthy,
            unknown,
            attached: OnceLock::new(),
        }
    }

    /// The service name the set was made for.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The service name, shared.
    pub fn service_arc(&self) -> &Arc<str> {
        &self.service
    }

    /// The set's generation: unique in the process, different for every set and every change.
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// How many instances the set holds.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the set is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The instance at `index`, if `index < len()`.
    #[inline]
    pub fn get(&self, index: usize) -> Option<&Arc<ServiceInfo>> {
        self.chunks
            .get(index >> CHUNK_SHIFT)
            .and_then(|c| c.get(index & (CHUNK - 1)))
    }

    /// The instances, in the set's order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &Arc<ServiceInfo>> + Clone + '_ {
        Iter {
            chunks: &self.chunks,
            index: 0,
            len: self.len,
        }
    }

    /// The instances, in the set's order, as a new vector (clones the pointers).
    pub fn to_vec(&self) -> Vec<Arc<ServiceInfo>> {
        self.iter().cloned().collect()
    }

    /// The position of the instance with `id` (a scan: for lookups off the request path).
    pub fn position(&self, id: &str) -> Option<usize> {
        self.iter().position(|s| s.id == id)
    }

    /// How many instances are `Healthy`.
    #[inline]
    pub fn healthy(&self) -> usize {
        self.healthy
    }

    /// How many instances are `Unknown`.
    #[inline]
    pub fn unknown(&self) -> usize {
        self.unknown
    }

    /// The health a balancer picks among
    /// ([`Health::SELECTION_ORDER`](crate::Health::SELECTION_ORDER)): `Healthy` when any
    /// instance is healthy, else `Unknown` when any is unknown, else `None`.
    #[inline]
    pub fn selection_tier(&self) -> Option<Health> {
        if self.healthy > 0 {
            Some(Health::Healthy)
        } else if self.unknown > 0 {
            Some(Health::Unknown)
        } else {
            None
        }
    }

    /// How many instances a balancer may pick: those of the [selection
    /// tier](Self::selection_tier).
    #[inline]
    pub fn selectable(&self) -> usize {
        if self.healthy > 0 {
            self.healthy
        } else {
            self.unknown
        }
    }

    /// Whether every instance is of the selection tier (then any position is a candidate).
    #[inline]
    pub fn all_selectable(&self) -> bool {
        self.selectable() == self.len
    }

    /// Attaches `state` that the balancer keyed `owner` prepared for this very set (in
    /// [`LoadBalancer::prepare`](crate::LoadBalancer::prepare)), so that its picks on the set
    /// find it with one load instead of a lookup. A set has one slot: the first attachment
    /// stays, and this returns whether `state` was attached. The state lives as long as the set.
    pub fn attach(&self, owner: usize, state: Arc<dyn Any + Send + Sync>) -> bool {
        self.attached.set((owner, state)).is_ok()
    }

    /// The state attached by the balancer keyed `owner`, if any.
    #[inline]
    pub fn attachment(&self, owner: usize) -> Option<&(dyn Any + Send + Sync)> {
        match self.attached.get() {
            Some((o, state)) if *o == owner => Some(&**state),
            _ => None,
        }
    }
}

/// A clone is the same set (same generation, same instances) without the
/// [attachment](InstanceSet::attach): state that holds a clone of its set can never keep itself
/// alive through it.
impl Clone for InstanceSet {
    fn clone(&self) -> Self {
        InstanceSet {
            service: Arc::clone(&self.service),
            generation: self.generation,
            len: self.len,
            chunks: Arc::clone(&self.chunks),
            healthy: self.healthy,
            unknown: self.unknown,
            attached: OnceLock::new(),
        }
    }
}

impl fmt::Debug for InstanceSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstanceSet")
            .field("service", &crate::quote::quoted(&self.service))
            .field("generation", &self.generation)
            .field("len", &self.len)
            .field("healthy", &self.healthy)
            .field("unknown", &self.unknown)
            .finish()
    }
}

/// Iterates a set's instances in order.
#[derive(Clone)]
struct Iter<'a> {
    chunks: &'a [Chunk],
    index: usize,
    len: usize,
}

impl<'a> Iterator for Iter<'a> {
    type Item = &'a Arc<ServiceInfo>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.index >= self.len {
            return None;
        }
        let i = self.index;
        self.index += 1;
        self.chunks
            .get(i >> CHUNK_SHIFT)
            .and_then(|c| c.get(i & (CHUNK - 1)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.len - self.index;
        (left, Some(left))
    }
}

impl ExactSizeIterator for Iter<'_> {}

fn count_health<'a>(all: impl Iterator<Item = &'a Arc<ServiceInfo>>) -> (usize, usize) {
    all.fold((0, 0), |(h, u), s| match s.health {
        Health::Healthy => (h + 1, u),
        Health::Unknown => (h, u + 1),
        Health::Unhealthy => (h, u),
    })
}

/// A key of the writer's index: an instance, hashed and compared by id, found by `&str`.
struct ById(Arc<ServiceInfo>);

impl PartialEq for ById {
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
    }
}

impl Eq for ById {}

impl Hash for ById {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.id.hash(state)
    }
}

impl std::borrow::Borrow<str> for ById {
    fn borrow(&self) -> &str {
        &self.0.id
    }
}

/// What an [`InstanceSetWriter`] change did.
#[derive(Debug, Clone)]
pub enum SetChange {
    /// A new instance was added.
    Added,
    /// An instance with the same id was replaced; here is the one it replaced.
    Replaced(Arc<ServiceInfo>),
}

/// Keeps one service's [`InstanceSet`] up to date, one change at a time.
///
/// Each change publishes a new set (a new generation) in O(n / 64 + 64) pointer copies, with
/// an id → position index kept on the side so no change scans the set. A removal moves the
/// set's last instance into the freed position.
///
/// ```
/// use std::sync::Arc;
/// use waypost_core_types::{InstanceSetWriter, ServiceInfo};
///
/// let mut w = InstanceSetWriter::new("user");
/// w.upsert(Arc::new(ServiceInfo::new("a", "user", "10.0.0.1", 80)));
/// w.upsert(Arc::new(ServiceInfo::new("b", "user", "10.0.0.2", 80)));
/// let before = w.current().generation();
/// assert!(w.remove("a").is_some());
/// assert_eq!(w.current().len(), 1);
/// assert_ne!(w.current().generation(), before);
/// ```
pub struct InstanceSetWriter {
    current: Arc<InstanceSet>,
    positions: HashMap<ById, usize>,
}

impl InstanceSetWriter {
    /// A writer for `service`, starting empty.
    pub fn new(service: impl Into<Arc<str>>) -> Self {
        InstanceSetWriter {
            current: Arc::new(InstanceSet::empty(service)),
            positions: HashMap::new(),
        }
    }

    /// The current set.
    #[inline]
    pub fn current(&self) -> &Arc<InstanceSet> {
        &self.current
    }

    /// The current instance with `id`, if any.
    pub fn get(&self, id: &str) -> Option<&Arc<ServiceInfo>> {
        self.positions.get(id).and_then(|&i| self.current.get(i))
    }

    /// Replaces the whole set with `instances` (sorted by id, the later of two equal ids kept).
    pub fn replace(
        &mut self,
        instances: impl IntoIterator<Item = Arc<ServiceInfo>>,
    ) -> &Arc<InstanceSet> {
        let set = InstanceSet::new(self.current.service.clone(), instances);
        self.positions = set
            .iter()
            .enumerate()
            .map(|(i, s)| (ById(Arc::clone(s)), i))
            .collect();
        self.current = Arc::new(set);
        &self.current
    }

    /// Adds `service`, or replaces the instance with its id (in place, keeping its position).
    pub fn upsert(&mut self, service: Arc<ServiceInfo>) -> SetChange {
        let (healthy, unknown) = (self.current.healthy, self.current.unknown);
        let (h_add, u_add) = count_health(std::iter::once(&service));
        if let Some(&i) = self.positions.get(service.id.as_str()) {
            let old = match self.current.get(i) {
                Some(old) => Arc::clone(old),
                None => unreachable!("the index holds positions inside the set"),
            };
            let (h_del, u_del) = count_health(std::iter::once(&old));
            let chunks = with_chunk(&self.current.chunks, i >> CHUNK_SHIFT, |c| {
                c[i & (CHUNK - 1)] = Arc::clone(&service);
            });
            self.positions.remove(service.id.as_str());
            self.positions.insert(ById(service), i);
            self.publish(
                self.current.len,
                chunks,
                healthy + h_add - h_del,
                unknown + u_add - u_del,
            );
            return SetChange::Replaced(old);
        }
        let i = self.current.len;
        let chunks = if i & (CHUNK - 1) == 0 {
            // A new chunk at the end.
            let mut table: Vec<Chunk> = self.current.chunks.to_vec();
            table.push(Arc::from(vec![Arc::clone(&service)]));
            Arc::from(table)
        } else {
            with_chunk_vec(&self.current.chunks, i >> CHUNK_SHIFT, |c| {
                c.push(Arc::clone(&service))
            })
        };
        self.positions.insert(ById(service), i);
        self.publish(i + 1, chunks, healthy + h_add, unknown + u_add);
        SetChange::Added
    }

    /// Removes the instance with `id`; returns it, or `None` when the set has no such instance
    /// (then nothing changes, not even the generation).
    pub fn remove(&mut self, id: &str) -> Option<Arc<ServiceInfo>> {
        let i = self.positions.remove(id)?;
        let len = self.current.len;
        let last = len - 1;
        let old = match self.current.get(i) {
            Some(old) => Arc::clone(old),
            None => unreachable!("the index holds positions inside the set"),
        };
        let (h_del, u_del) = count_health(std::iter::once(&old));
        let mut table: Vec<Chunk> = self.current.chunks.to_vec();
        if i != last {
            let moved = match self.current.get(last) {
                Some(s) => Arc::clone(s),
                None => unreachable!("len - 1 is inside the set"),
            };
            let mut chunk = table[i >> CHUNK_SHIFT].to_vec();
            chunk[i & (CHUNK - 1)] = Arc::clone(&moved);
            table[i >> CHUNK_SHIFT] = Arc::from(chunk);
            if let Some(pos) = self.positions.get_mut(moved.id.as_str()) {
                *pos = i;
            }
        }
        // Drop the last position.
        let tail = last >> CHUNK_SHIFT;
        if last & (CHUNK - 1) == 0 {
            table.pop();
        } else {
            let mut chunk = table[tail].to_vec();
            chunk.pop();
            table[tail] = Arc::from(chunk);
        }
        self.publish(
            last,
            Arc::from(table),
            self.current.healthy - h_del,
            self.current.unknown - u_del,
        );
        Some(old)
    }

    fn publish(&mut self, len: usize, chunks: Arc<[Chunk]>, healthy: usize, unknown: usize) {
        self.current = Arc::new(InstanceSet {
            service: self.current.service.clone(),
            generation: next_generation(),
            len,
            chunks,
            healthy,
            unknown,
            attached: OnceLock::new(),
        });
    }
}

impl fmt::Debug for InstanceSetWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstanceSetWriter")
            .field("current", &self.current)
            .finish()
    }
}

/// A copy of `table` where chunk `at` was changed by `f` (same length).
fn with_chunk(table: &[Chunk], at: usize, f: impl FnOnce(&mut [Arc<ServiceInfo>])) -> Arc<[Chunk]> {
    let mut out: Vec<Chunk> = table.to_vec();
    let mut chunk = out[at].to_vec();
    f(&mut chunk);
    out[at] = Arc::from(chunk);
    Arc::from(out)
}

/// A copy of `table` where chunk `at` was changed by `f` (any length).
fn with_chunk_vec(
    table: &[Chunk],
    at: usize,
    f: impl FnOnce(&mut Vec<Arc<ServiceInfo>>),
) -> Arc<[Chunk]> {
    let mut out: Vec<Chunk> = table.to_vec();
    let mut chunk = out[at].to_vec();
    f(&mut chunk);
    out[at] = Arc::from(chunk);
    Arc::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(id: &str, health: Health) -> Arc<ServiceInfo> {
        Arc::new(ServiceInfo::new(id, "s", "10.0.0.1", 80).with_health(health))
    }

    fn ids(set: &InstanceSet) -> Vec<String> {
        set.iter().map(|s| s.id.clone()).collect()
    }

    /// Checks the set against a plain model: same ids, positions, health counts.
    fn check(w: &InstanceSetWriter, model: &[Arc<ServiceInfo>]) {
        let set = w.current();
        assert_eq!(set.len(), model.len());
        assert_eq!(set.iter().len(), model.len());
        for (i, s) in model.iter().enumerate() {
            assert!(Arc::ptr_eq(set.get(i).unwrap(), s), "position {i}");
            assert_eq!(w.get(&s.id).map(|x| x.id.as_str()), Some(s.id.as_str()));
        }
        assert!(set.get(model.len()).is_none());
        let healthy = model.iter().filter(|s| s.health == Health::Healthy).count();
        let unknown = model.iter().filter(|s| s.health == Health::Unknown).count();
        assert_eq!((set.healthy(), set.unknown()), (healthy, unknown));
    }

    #[test]
    fn new_sorts_by_id_and_keeps_the_later_duplicate() {
        let a1 = svc("a", Health::Healthy);
        let a2 = svc("a", Health::Unknown);
        let set = InstanceSet::new(
            "s",
            [
                svc("c", Health::Healthy),
                a1,
                svc("b", Health::Healthy),
                a2.clone(),
            ],
        );
        assert_eq!(ids(&set), ["a", "b", "c"]);
        assert!(Arc::ptr_eq(set.get(0).unwrap(), &a2));
        assert_eq!(set.healthy(), 2);
        assert_eq!(set.unknown(), 1);
        assert_eq!(set.selection_tier(), Some(Health::Healthy));
        assert_eq!(set.selectable(), 2);
        assert!(!set.all_selectable());
        assert_eq!(set.position("c"), Some(2));
        assert_eq!(set.position("z"), None);
    }

    #[test]
    fn tiers() {
        let set = InstanceSet::new(
            "s",
            [svc("a", Health::Unknown), svc("b", Health::Unhealthy)],
        );
        assert_eq!(set.selection_tier(), Some(Health::Unknown));
        assert_eq!(set.selectable(), 1);
        let set = InstanceSet::new("s", [svc("b", Health::Unhealthy)]);
        assert_eq!(set.selection_tier(), None);
        assert_eq!(set.selectable(), 0);
        let set = InstanceSet::empty("s");
        assert!(set.is_empty());
        assert_eq!(set.selection_tier(), None);
        assert!(set.all_selectable());
    }

    #[test]
    fn every_set_has_a_new_generation() {
        let mut w = InstanceSetWriter::new("s");
        let mut seen = vec![w.current().generation()];
        w.upsert(svc("a", Health::Healthy));
        seen.push(w.current().generation());
        w.upsert(svc("a", Health::Unknown));
        seen.push(w.current().generation());
        w.replace([svc("b", Health::Healthy)]);
        seen.push(w.current().generation());
        let g = w.current().generation();
        assert!(w.remove("nope").is_none());
        assert_eq!(w.current().generation(), g, "a no-op keeps the set");
        w.remove("b");
        seen.push(w.current().generation());
        let n = seen.len();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), n);
    }

    #[test]
    fn writer_matches_a_plain_model_through_random_changes() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut w = InstanceSetWriter::new("s");
        let mut model: Vec<Arc<ServiceInfo>> = Vec::new();
        let healths = [Health::Healthy, Health::Unknown, Health::Unhealthy];
        for step in 0..20_000 {
            let id = format!("i{}", rng.random_range(0..300u32));
            if step % 5000 == 4999 {
                // A full replace now and then (sorted by id).
                let fresh: Vec<_> = model.iter().take(150).cloned().collect();
                w.replace(fresh.clone());
                model = fresh;
                model.sort_by(|a, b| a.id.cmp(&b.id));
            } else if rng.random_bool(0.6) {
                let s = svc(&id, healths[rng.random_range(0..3)]);
                let change = w.upsert(s.clone());
                match model.iter().position(|m| m.id == id) {
                    Some(p) => {
                        assert!(
                            matches!(change, SetChange::Replaced(ref old) if Arc::ptr_eq(old, &model[p]))
                        );
                        model[p] = s;
                    }
                    None => {
                        assert!(matches!(change, SetChange::Added));
                        model.push(s);
                    }
                }
            } else {
                let removed = w.remove(&id);
                match model.iter().position(|m| m.id == id) {
                    Some(p) => {
                        assert!(Arc::ptr_eq(&removed.unwrap(), &model[p]));
                        model.swap_remove(p);
                    }
                    None => assert!(removed.is_none()),
                }
            }
            check(&w, &model);
        }
    }

    #[test]
    fn one_attachment_per_set_found_by_its_owner() {
        let set = InstanceSet::new("s", [svc("a", Health::Healthy)]);
        assert!(set.attachment(7).is_none());
        assert!(set.attach(7, Arc::new(41u32)));
        assert!(
            !set.attach(8, Arc::new(42u32)),
            "the first attachment stays"
        );
        assert_eq!(
            set.attachment(7).and_then(|a| a.downcast_ref::<u32>()),
            Some(&41)
        );
        assert!(set.attachment(8).is_none());
        assert!(
            set.clone().attachment(7).is_none(),
            "a clone carries no attachment"
        );
        let mut w = InstanceSetWriter::new("s");
        w.upsert(svc("a", Health::Healthy));
        assert!(w.current().attach(7, Arc::new(1u8)));
        w.upsert(svc("b", Health::Healthy));
        assert!(
            w.current().attachment(7).is_none(),
            "a new set starts without one"
        );
    }

    #[test]
    fn old_sets_stay_as_they_were() {
        let mut w = InstanceSetWriter::new("s");
        for i in 0..200 {
            w.upsert(svc(&format!("i{i:03}"), Health::Healthy));
        }
        let before = Arc::clone(w.current());
        let snapshot = ids(&before);
        w.remove("i010");
        w.upsert(svc("i050", Health::Unhealthy));
        w.upsert(svc("new", Health::Healthy));
        assert_eq!(ids(&before), snapshot);
        assert_eq!(before.healthy(), 200);
        assert_eq!(w.current().len(), 200);
        assert_eq!(w.current().healthy(), 199);
    }
}
