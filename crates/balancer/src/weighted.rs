//! Weighted random choice.

use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::Rng;
use waypost_core_types::{Health, InstanceSet, LoadBalancer, SelectContext, ServiceInfo};

use crate::pick;
use crate::prepared::{avoided, Generational, PerService};

/// Picks a healthy instance at random with probability proportional to
/// [`ServiceInfo::weight`] (default 100; weight 0 is never picked). When no healthy instance
/// can be picked, the same among the `Unknown` ones (see [`Health`]).
///
/// On an [`InstanceSet`], a pick is O(1) at any size: an alias table (Vose's method, exact
/// integer probabilities) is built once per set generation, in [`LoadBalancer::prepare`] or
/// on the first pick of a generation nobody prepared. On a slice, a pick is two passes over the
/// instances. Lock-free either way; clones share their state.
#[derive(Default, Clone)]
pub struct WeightedRandom {
    sets: Arc<PerService<Alias>>,
}

impl std::fmt::Debug for WeightedRandom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightedRandom")
            .field("services", &self.sets.len())
            .finish()
    }
}

impl WeightedRandom {
    /// A weighted random balancer.
    pub fn new() -> Self {
        Self::default()
    }

    #[cold]
    #[inline(never)]
    fn index_unprepared(&self, set: &InstanceSet, ctx: &SelectContext<'_>) -> Option<usize> {
        self.prepare(set);
        match self.sets.with(set, |a| a.pick(set, ctx)) {
            Some(r) => r,
            None => Alias::new(set).pick(set, ctx),
        }
    }
}

/// An alias table over the candidates of one set generation: the instances of the first
/// health tier (healthy, then unknown) whose weights are not all zero, weight 0 left out.
struct Alias {
    generation: u64,
    /// Set positions of the entries.
    positions: Vec<u32>,
    /// Entry `i` is kept when a draw in `0..total` is below `keep[i]`, else `alias[i]` is taken.
    keep: Vec<u64>,
    alias: Vec<u32>,
    total: u64,
}

impl Generational for Alias {
    fn generation(&self) -> u64 {
        self.generation
    }
}

impl Alias {
    fn new(set: &InstanceSet) -> Self {
        let of = |tier: Health| -> Option<Vec<(u32, u64)>> {
            let v: Vec<(u32, u64)> = set
                .iter()
                .enumerate()
                .filter(|(_, s)| s.health == tier && s.weight > 0)
                .map(|(i, s)| (i as u32, u64::from(s.weight)))
                .collect();
            (!v.is_empty()).then_some(v)
        };
        let entries = pick::in_tiers(of).unwrap_or_default();
        let m = entries.len() as u64;
        let total: u64 = entries.iter().map(|e| e.1).sum();
        // Vose's method on integers: entry i holds w_i × m out of m × total; each column of
        // height `total` is topped up from a large entry.
        let mut scaled: Vec<u64> = entries.iter().map(|e| e.1 * m).collect();
        let mut keep = vec![total; entries.len()];
        let mut alias: Vec<u32> = (0..entries.len() as u32).collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) =
            (0..entries.len()).partition(|i| scaled[*i] < total);
        while let (Some(&s), Some(&l)) = (small.last(), large.last()) {
            small.pop();
            keep[s] = scaled[s];
            alias[s] = l as u32;
            scaled[l] -= total - scaled[s];
            if scaled[l] < total {
                large.pop();
                small.push(l);
            }
        }
        Alias {
            generation: set.generation(),
            positions: entries.iter().map(|e| e.0).collect(),
            keep,
            alias,
            total,
        }
    }

    #[inline]
    fn draw(&self, rng: &mut SmallRng) -> usize {
        let i = rng.random_range(0..self.positions.len());
        let e = if rng.random_range(0..self.total) < self.keep[i] {
            i
        } else {
            self.alias[i] as usize
        };
        self.positions[e] as usize
    }

    #[inline]
    fn pick(&self, set: &InstanceSet, ctx: &SelectContext<'_>) -> Option<usize> {
        if self.positions.is_empty() {
            return None;
        }
        let first = pick::with_rng(|rng| self.draw(rng));
        if ctx.avoid.is_empty() || !avoided(set, first, ctx) {
            return Some(first);
        }
        Some(self.pick_strict(set, ctx).unwrap_or(first))
    }

    /// A weighted pick among the entries that are not avoided, if any.
    #[cold]
    fn pick_strict(&self, set: &InstanceSet, ctx: &SelectContext<'_>) -> Option<usize> {
        pick::with_rng(|rng| {
            for _ in 0..pick::REJECTION_TRIES {
                let i = self.draw(rng);
                if !avoided(set, i, ctx) {
                    return Some(i);
                }
            }
            let weight = |i: usize| set.get(i).map_or(0, |s| u64::from(s.weight));
            let free = || {
                self.positions
                    .iter()
                    .map(|p| *p as usize)
                    .filter(|i| !avoided(set, *i, ctx))
            };
            let sum: u64 = free().map(weight).sum();
            if sum == 0 {
                return None;
            }
            let mut r = rng.random_range(0..sum);
            free().find(|i| {
                let w = weight(*i);
                if r < w {
                    true
                } else {
                    r -= w;
                    false
                }
            })
        })
    }
}

fn total(
    instances: &[Arc<ServiceInfo>],
    ctx: &SelectContext<'_>,
    strict: bool,
    tier: Health,
) -> u64 {
    instances
        .iter()
        .filter(|s| pick::usable(s, ctx, strict, tier))
        .map(|s| u64::from(s.weight))
        .sum()
}

impl LoadBalancer for WeightedRandom {
    fn name(&self) -> &'static str {
        "weighted_random"
    }

    fn select<'a>(
        &self,
        instances: &'a [Arc<ServiceInfo>],
        ctx: &SelectContext<'_>,
    ) -> Option<&'a Arc<ServiceInfo>> {
        pick::in_tiers(|tier| select_in(instances, ctx, tier))
    }

    /// O(1): a draw from the alias table of the set's generation.
    #[inline]
    fn select_set<'a>(
        &self,
        set: &'a InstanceSet,
        ctx: &SelectContext<'_>,
    ) -> Option<&'a Arc<ServiceInfo>> {
        let i = match self.sets.with(set, |a| a.pick(set, ctx)) {
            Some(i) => i,
            None => self.index_unprepared(set, ctx),
        }?;
        set.get(i)
    }

    fn prepare(&self, set: &InstanceSet) {
        self.sets.prepare(set, || Alias::new(set));
    }

    fn forget(&self, service: &str) {
        self.sets.forget(service);
    }
}

/// A weighted pick among the instances of health `tier`.
fn select_in<'a>(
    instances: &'a [Arc<ServiceInfo>],
    ctx: &SelectContext<'_>,
    tier: Health,
) -> Option<&'a Arc<ServiceInfo>> {
    let mut strict = pick::wants_strict(ctx);
    let mut sum = total(instances, ctx, strict, tier);
    if sum == 0 && strict {
        strict = false;
        sum = total(instances, ctx, false, tier);
    }
    if sum == 0 {
        return None;
    }
    let mut r = pick::with_rng(|rng| rng.random_range(0..sum));
    instances.iter().find(|s| {
        if !pick::usable(s, ctx, strict, tier) {
            return false;
        }
        let w = u64::from(s.weight);
        if r < w {
            true
        } else {
            r -= w;
            false
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{index, weighted};

    #[test]
    fn shares_match_weights_within_two_percent() {
        let s = weighted("w", &[100, 200, 300, 400]);
        let mut counts = [0usize; 4];
        let n = 10_000;
        for _ in 0..n {
            counts[index(
                WeightedRandom::new()
                    .select(&s, &SelectContext::default())
                    .unwrap(),
            )] += 1;
        }
        for (i, want) in [0.1, 0.2, 0.3, 0.4].iter().enumerate() {
            let got = counts[i] as f64 / n as f64;
            assert!(
                (got - want).abs() <= 0.02,
                "instance {i}: {got} vs {want} ({counts:?})"
            );
        }
    }

    #[test]
    fn zero_weight_is_never_picked() {
        let s = weighted("w", &[0, 100, 0]);
        for _ in 0..1000 {
            assert_eq!(
                WeightedRandom::new()
                    .select(&s, &SelectContext::default())
                    .unwrap()
                    .id,
                "w-1"
            );
        }
        assert!(WeightedRandom::new()
            .select(&weighted("w", &[0, 0]), &SelectContext::default())
            .is_none());
        assert!(WeightedRandom::new()
            .select(&[], &SelectContext::default())
            .is_none());
    }

    #[test]
    fn skips_unhealthy_and_avoided_softly() {
        let mut s = weighted("w", &[100, 100, 100]);
        s[2] = Arc::new(
            (*s[2].clone())
                .clone()
                .with_health(waypost_core_types::Health::Unhealthy),
        );
        let avoid = vec!["w-0".to_string()];
        let ctx = SelectContext {
            hash_key: None,
            avoid: &avoid,
        };
        for _ in 0..200 {
            assert_eq!(WeightedRandom::new().select(&s, &ctx).unwrap().id, "w-1");
        }
        let avoid = vec!["w-0".to_string(), "w-1".to_string()];
        let ctx = SelectContext {
            hash_key: None,
            avoid: &avoid,
        };
        assert_ne!(WeightedRandom::new().select(&s, &ctx).unwrap().id, "w-2");
    }

    #[test]
    fn set_shares_match_weights_and_zero_is_never_picked() {
        use crate::testing::instance;
        use waypost_core_types::Health::{Healthy as H, Unknown as U};
        let set = InstanceSet::new(
            "w",
            [100, 200, 300, 400, 0]
                .iter()
                .enumerate()
                .map(|(i, w)| instance("w", &format!("w-{i}"), H, *w)),
        );
        let lb = WeightedRandom::new();
        lb.prepare(&set);
        let mut counts = [0usize; 5];
        let n = 20_000;
        for _ in 0..n {
            counts[index(lb.select_set(&set, &SelectContext::default()).unwrap())] += 1;
        }
        assert_eq!(counts[4], 0);
        for (i, want) in [0.1, 0.2, 0.3, 0.4].iter().enumerate() {
            let got = counts[i] as f64 / n as f64;
            assert!(
                (got - want).abs() <= 0.02,
                "{i}: {got} vs {want} ({counts:?})"
            );
        }
        // Healthy instances that all weigh 0: the unknown ones are used, as on a slice.
        let set = InstanceSet::new(
            "z",
            [instance("z", "z-0", H, 0), instance("z", "z-1", U, 10)],
        );
        assert_eq!(
            lb.select_set(&set, &SelectContext::default()).unwrap().id,
            "z-1"
        );
        assert_eq!(
            WeightedRandom::new()
                .select(&set.to_vec(), &SelectContext::default())
                .unwrap()
                .id,
            "z-1"
        );
    }

    #[test]
    fn alias_table_is_exact() {
        // Summing each entry's share over the table gives back the weights exactly.
        let weights = [3u64, 1, 7, 2, 11, 5];
        let set = InstanceSet::new(
            "a",
            weights.iter().enumerate().map(|(i, w)| {
                crate::testing::instance("a", &format!("a-{i}"), Health::Healthy, *w as u32)
            }),
        );
        let alias = Alias::new(&set);
        let m = alias.positions.len() as u128;
        let mut share = vec![0u128; weights.len()];
        for i in 0..alias.positions.len() {
            let keep = u128::from(alias.keep[i]);
            share[alias.positions[i] as usize] += keep;
            share[alias.positions[alias.alias[i] as usize] as usize] +=
                u128::from(alias.total) - keep;
        }
        let total: u128 = weights.iter().map(|w| u128::from(*w)).sum();
        for (i, w) in weights.iter().enumerate() {
            // Entry i's probability is share / (m × total) = w / total.
            assert_eq!(share[i], u128::from(*w) * m, "{i}");
        }
        assert_eq!(u128::from(alias.total), total);
    }
}
