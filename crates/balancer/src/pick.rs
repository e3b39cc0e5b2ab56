//! Shared selection helpers: which instances are candidates, uniform picks among them, the
//! thread-local RNG and the stable 64-bit hash.
//!
//! A candidate is an instance of the health *tier* being tried: balancers try the `Healthy`
//! instances, and only when none of them can be picked, the `Unknown` ones ([`in_tiers`],
//! [`Health::SELECTION_ORDER`]); `Unhealthy` ones never. Within a tier, when the context names
//! instances to avoid, the *strict* candidates (of the tier and not avoided) are used as long as
//! there is one, and all of the tier otherwise: the avoid list is a preference, never a reason to
//! fail.

use std::cell::RefCell;
use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use waypost_core_types::{Health, SelectContext, ServiceInfo};

/// How many uniform draws over the whole slice are tried before counting candidates.
pub(crate) const REJECTION_TRIES: usize = 4;

/// Runs `pick` for each health tier of [`Health::SELECTION_ORDER`] until one gives a result:
/// the `Unknown` instances are tried only when no `Healthy` one could be picked. The second try
/// runs only where a balancer would otherwise have returned `None`, so a set with a healthy
/// instance costs nothing more.
#[inline(always)]
pub(crate) fn in_tiers<T>(mut pick: impl FnMut(Health) -> Option<T>) -> Option<T> {
    let [first, second] = Health::SELECTION_ORDER;
    match pick(first) {
        Some(t) => Some(t),
        None => second_tier(|| pick(second)),
    }
}

/// The second tier's pick, kept out of line so that the first stays as small as a balancer
/// without tiers.
#[cold]
#[inline(never)]
fn second_tier<T>(pick: impl FnOnce() -> Option<T>) -> Option<T> {
    pick()
}

/// Whether `s` is a candidate of health `tier`; `strict` also skips avoided instances.
#[inline]
pub(crate) fn usable(s: &ServiceInfo, ctx: &SelectContext<'_>, strict: bool, tier: Health) -> bool {
    s.health == tier && !(strict && ctx.avoids(s))
}

/// Whether to start in strict mode (only worth it when something is avoided).
#[inline]
pub(crate) fn wants_strict(ctx: &SelectContext<'_>) -> bool {
    !ctx.avoid.is_empty()
}

/// The number of candidates and the mode they were counted in; `None` when there is none.
#[inline]
pub(crate) fn count(
    instances: &[Arc<ServiceInfo>],
    ctx: &SelectContext<'_>,
    tier: Health,
) -> Option<(usize, bool)> {
    if wants_strict(ctx) {
        let k = instances
            .iter()
            .filter(|s| usable(s, ctx, true, tier))
            .count();
        if k > 0 {
            return Some((k, true));
        }
    }
    let k = instances.iter().filter(|s| s.health == tier).count();
    (k > 0).then_some((k, false))
}

/// The index of the `n`-th candidate (in slice order).
#[inline]
pub(crate) fn nth(
    instances: &[Arc<ServiceInfo>],
    ctx: &SelectContext<'_>,
    strict: bool,
    tier: Health,
    n: usize,
) -> Option<usize> {
    instances
        .iter()
        .enumerate()
        .filter(|(_, s)| usable(s, ctx, strict, tier))
        .nth(n)
        .map(|(i, _)| i)
}

/// A uniformly random candidate's index, from the first health tier that has one.
#[inline]
pub(crate) fn random_index(
    instances: &[Arc<ServiceInfo>],
    ctx: &SelectContext<'_>,
    rng: &mut SmallRng,
) -> Option<usize> {
    // Written out rather than through `in_tiers`: the closure cost a few nanoseconds here.
    let [first, second] = Health::SELECTION_ORDER;
    match random_index_in(instances, ctx, rng, first) {
        Some(i) => Some(i),
        None => random_index_cold(instances, ctx, rng, second),
    }
}

#[cold]
#[inline(never)]
fn random_index_cold(
    instances: &[Arc<ServiceInfo>],
    ctx: &SelectContext<'_>,
    rng: &mut SmallRng,
    tier: Health,
) -> Option<usize> {
    random_index_in(instances, ctx, rng, tier)
}

/// A uniformly random candidate's index in `tier`.
///
/// Draws over the whole slice a few times first (rejection sampling, O(1) when most instances are
/// candidates), then counts the candidates and draws among them: either way every candidate has
/// the same chance.
#[inline(always)]
fn random_index_in(
    instances: &[Arc<ServiceInfo>],
    ctx: &SelectContext<'_>,
    rng: &mut SmallRng,
    tier: Health,
) -> Option<usize> {
    let len = instances.len();
    if len == 0 {
        return None;
    }
    let strict = wants_strict(ctx);
    for _ in 0..REJECTION_TRIES {
        let i = rng.random_range(0..len);
        if usable(&instances[i], ctx, strict, tier) {
            return Some(i);
        }
    }
    let (k, strict) = count(instances, ctx, tier)?;
    nth(instances, ctx, strict, tier, rng.random_range(0..k))
}

/// Two distinct uniformly random candidates' indices (the second is `None` when there is only
/// one candidate), from the first health tier that has one, for power-of-two-choices balancers.
pub(crate) fn random_pair(
    instances: &[Arc<ServiceInfo>],
    ctx: &SelectContext<'_>,
    rng: &mut SmallRng,
) -> Option<(usize, Option<usize>)> {
    let [first, second] = Health::SELECTION_ORDER;
    match random_pair_in(instances, ctx, rng, first) {
        Some(p) => Some(p),
        None => random_pair_cold(instances, ctx, rng, second),
    }
}

#[cold]
#[inline(never)]
fn random_pair_cold(
    instances: &[Arc<ServiceInfo>],
    ctx: &SelectContext<'_>,
    rng: &mut SmallRng,
    tier: Health,
) -> Option<(usize, Option<usize>)> {
    random_pair_in(instances, ctx, rng, tier)
}

#[inline(always)]
fn random_pair_in(
    instances: &[Arc<ServiceInfo>],
    ctx: &SelectContext<'_>,
    rng: &mut SmallRng,
    tier: Health,
) -> Option<(usize, Option<usize>)> {
    let len = instances.len();
    if len == 0 {
        return None;
    }
    let strict = wants_strict(ctx);
    if len >= 2 {
        for _ in 0..REJECTION_TRIES {
            let a = rng.random_range(0..len);
            let mut b = rng.random_range(0..len - 1);
            if b >= a {
                b += 1;
            }
            if usable(&instances[a], ctx, strict, tier) && usable(&instances[b], ctx, strict, tier)
            {
                return Some((a, Some(b)));
            }
        }
    }
    let (k, strict) = count(instances, ctx, tier)?;
    if k == 1 {
        return Some((nth(instances, ctx, strict, tier, 0)?, None));
    }
    let ra = rng.random_range(0..k);
    let mut rb = rng.random_range(0..k - 1);
    if rb >= ra {
        rb += 1;
    }
    let (mut a, mut b) = (None, None);
    for (pos, (i, _)) in instances
        .iter()
        .enumerate()
        .filter(|(_, s)| usable(s, ctx, strict, tier))
        .enumerate()
    {
        if pos == ra {
            a = Some(i);
        }
        if pos == rb {
            b = Some(i);
        }
    }
    Some((a?, b))
}

thread_local! {
    static RNG: RefCell<SmallRng> = RefCell::new(SmallRng::from_rng(&mut rand::rng()));
}

/// Runs `f` with this thread's fast RNG (seeded once per thread from the OS-seeded thread RNG).
#[inline]
pub(crate) fn with_rng<R>(f: impl FnOnce(&mut SmallRng) -> R) -> R {
    RNG.with(|r| f(&mut r.borrow_mut()))
}

/// A stable 64-bit hash: the same bytes give the same value in every process and on every
/// platform, so hash rings agree across processes.
#[inline]
pub(crate) fn hash64(bytes: &[u8]) -> u64 {
    let mut h = Fnv::default();
    h.write_bytes(bytes);
    h.finish64()
}

/// A fast word-at-a-time hash state (FxHash's mixing step, eight bytes per multiply, with a
/// murmur3 finaliser), also used as the map hasher of per-service state. Not meant to resist
/// collision attacks: keys are service names and instance ids from the registry.
#[derive(Clone, Copy)]
pub(crate) struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    #[inline]
    fn mix(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    #[inline]
    pub(crate) fn write_bytes(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.mix(u64::from_le_bytes(w));
        }
        let rem = chunks.remainder();
        if !rem.is_empty() {
            let mut w = 0u64;
            for (i, b) in rem.iter().enumerate() {
                w |= u64::from(*b) << (8 * i);
            }
            // The length in the top byte keeps "ab" and "ab\0" apart.
            self.mix(w ^ ((rem.len() as u64) << 56));
        }
    }

    #[inline]
    pub(crate) fn finish64(&self) -> u64 {
        fmix64(self.0)
    }
}

impl std::hash::Hasher for Fnv {
    #[inline]
    fn finish(&self) -> u64 {
        self.finish64()
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        self.write_bytes(bytes);
    }
}

/// The murmur3 64-bit finaliser: spreads every input bit over the output.
#[inline]
pub(crate) fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use waypost_core_types::Health;

    fn set(health: &[bool]) -> Vec<Arc<ServiceInfo>> {
        health
            .iter()
            .enumerate()
            .map(|(i, h)| {
                Arc::new(
                    ServiceInfo::new(format!("i{i}"), "s", "h", 1).with_health(if *h {
                        Health::Healthy
                    } else {
                        Health::Unhealthy
                    }),
                )
            })
            .collect()
    }

    #[test]
    fn soft_avoid_falls_back() {
        let s = set(&[true, false, true]);
        let avoid = vec!["i0".to_string(), "i2".to_string()];
        let ctx = SelectContext {
            hash_key: None,
            avoid: &avoid,
        };
        let h = Health::Healthy;
        assert_eq!(count(&s, &ctx, h), Some((2, false)));
        let avoid1 = vec!["i0".to_string()];
        let ctx1 = SelectContext {
            hash_key: None,
            avoid: &avoid1,
        };
        assert_eq!(count(&s, &ctx1, h), Some((1, true)));
        assert_eq!(nth(&s, &ctx1, true, h, 0), Some(2));
        assert_eq!(count(&set(&[false, false]), &ctx, h), None);
    }

    #[test]
    fn pairs_are_distinct_candidates() {
        let s = set(&[true, false, true, true, false]);
        let mut rng = SmallRng::seed_from_u64(7);
        for _ in 0..1000 {
            let (a, b) = random_pair(&s, &SelectContext::default(), &mut rng).unwrap();
            let b = b.unwrap();
            assert_ne!(a, b);
            assert!(s[a].is_healthy() && s[b].is_healthy());
        }
        let one = set(&[false, true]);
        assert_eq!(
            random_pair(&one, &SelectContext::default(), &mut rng),
            Some((1, None))
        );
        assert_eq!(random_pair(&[], &SelectContext::default(), &mut rng), None);
    }

    #[test]
    fn hash_is_stable() {
        // Fixed values: rings must agree across processes and releases.
        assert_eq!(hash64(b""), fmix64(0xcbf2_9ce4_8422_2325));
        assert_ne!(hash64(b"ab"), hash64(b"ab\0"));
        assert_ne!(hash64(b"abcdefgh"), hash64(b"abcdefgh\0"));
        assert_eq!(hash64(b"user-42"), hash64(b"user-42"));
        assert_ne!(hash64(b"user-42"), hash64(b"user-43"));
    }
}
