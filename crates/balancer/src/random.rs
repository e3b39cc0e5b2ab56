//! Uniform random choice.

use std::sync::Arc;

use waypost_core_types::{InstanceSet, LoadBalancer, SelectContext, ServiceInfo};

use crate::pick;
use crate::prepared::{Candidates, Generational, PerService};

/// Picks a healthy instance uniformly at random.
///
/// The randomness is a real RNG (a per-thread `SmallRng` seeded from the operating system), not
/// the clock modulo n as in the Go original. No lock; on an [`InstanceSet`] a pick is O(1) at
/// any size and any health mix: when some instances are not of the selection tier, the
/// positions of those that are are precomputed once per set generation
/// ([`LoadBalancer::prepare`]). On a slice, a pick is O(1) while most instances are healthy.
/// Clones share their state.
#[derive(Default, Clone)]
pub struct Random {
    sets: Arc<PerService<Prepared>>,
}

struct Prepared {
    generation: u64,
    candidates: Candidates,
}

impl Generational for Prepared {
    fn generation(&self) -> u64 {
        self.generation
    }
}

impl std::fmt::Debug for Random {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Random")
            .field("services", &self.sets.len())
            .finish()
    }
}

impl Random {
    /// A random balancer.
    pub fn new() -> Self {
        Self::default()
    }

    fn build(set: &InstanceSet) -> Prepared {
        Prepared {
            generation: set.generation(),
            candidates: Candidates::new(set),
        }
    }

    #[cold]
    #[inline(never)]
    fn index_unprepared(&self, set: &InstanceSet, ctx: &SelectContext<'_>) -> Option<usize> {
        self.prepare(set);
        let pick = |p: &Prepared| pick::with_rng(|rng| p.candidates.random(set, ctx, rng));
        match self.sets.with(set, pick) {
            Some(r) => r,
            None => pick(&Self::build(set)),
        }
    }
}

impl LoadBalancer for Random {
    fn name(&self) -> &'static str {
        "random"
    }

    fn select<'a>(
        &self,
        instances: &'a [Arc<ServiceInfo>],
        ctx: &SelectContext<'_>,
    ) -> Option<&'a Arc<ServiceInfo>> {
        pick::with_rng(|rng| pick::random_index(instances, ctx, rng)).map(|i| &instances[i])
    }

    /// O(1): a uniform draw over the set when all of it is selectable, else over the
    /// candidates precomputed for its generation.
    #[inline]
    fn select_set<'a>(
        &self,
        set: &'a InstanceSet,
        ctx: &SelectContext<'_>,
    ) -> Option<&'a Arc<ServiceInfo>> {
        use rand::Rng;
        let len = set.len();
        if set.all_selectable() && ctx.avoid.is_empty() && len > 0 {
            return set.get(pick::with_rng(|rng| rng.random_range(0..len)));
        }
        let pick = |p: &Prepared| pick::with_rng(|rng| p.candidates.random(set, ctx, rng));
        let i = match self.sets.with(set, pick) {
            Some(i) => i,
            None => self.index_unprepared(set, ctx),
        }?;
        set.get(i)
    }

    fn prepare(&self, set: &InstanceSet) {
        self.sets.prepare(set, || Self::build(set));
    }

    fn forget(&self, service: &str) {
        self.sets.forget(service);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{index, set};

    /// Pearson's chi-square statistic of `counts` against a uniform expectation.
    fn chi_square(counts: &[usize]) -> f64 {
        let total: usize = counts.iter().sum();
        let expected = total as f64 / counts.len() as f64;
        counts
            .iter()
            .map(|c| (*c as f64 - expected).powi(2) / expected)
            .sum()
    }

    #[test]
    fn uniform_by_chi_square() {
        let s = set("r", &[true; 10]);
        let mut counts = [0usize; 10];
        for _ in 0..10_000 {
            counts[index(Random::new().select(&s, &SelectContext::default()).unwrap())] += 1;
        }
        // 9 degrees of freedom: P(chi2 > 33.72) = 0.0001.
        let chi2 = chi_square(&counts);
        assert!(chi2 < 33.72, "chi-square {chi2} over {counts:?}");
    }

    #[test]
    fn uniform_over_healthy_only() {
        // Half unhealthy: the candidates are drawn from the healthy half only, still uniformly.
        let s = set("r", &[true, false, true, false, true, false, true, false]);
        let mut counts = [0usize; 8];
        for _ in 0..10_000 {
            counts[index(Random::new().select(&s, &SelectContext::default()).unwrap())] += 1;
        }
        let healthy: Vec<usize> = counts.iter().step_by(2).copied().collect();
        assert!(
            counts.iter().skip(1).step_by(2).all(|c| *c == 0),
            "{counts:?}"
        );
        // 3 degrees of freedom: P(chi2 > 21.11) = 0.0001.
        let chi2 = chi_square(&healthy);
        assert!(chi2 < 21.11, "chi-square {chi2} over {healthy:?}");
    }

    #[test]
    fn not_the_clock() {
        // Consecutive picks within the same instant differ (a clock-modulo pick would repeat).
        let s = set("r", &[true; 10]);
        let picks: std::collections::HashSet<usize> = (0..50)
            .map(|_| index(Random::new().select(&s, &SelectContext::default()).unwrap()))
            .collect();
        assert!(picks.len() >= 5, "{picks:?}");
    }

    #[test]
    fn none_and_avoid() {
        assert!(Random::new()
            .select(&[], &SelectContext::default())
            .is_none());
        assert!(Random::new()
            .select(&set("r", &[false; 3]), &SelectContext::default())
            .is_none());
        let s = set("r", &[true, true, false]);
        let avoid = vec!["r-0".to_string()];
        let ctx = SelectContext {
            hash_key: None,
            avoid: &avoid,
        };
        for _ in 0..100 {
            assert_eq!(Random::new().select(&s, &ctx).unwrap().id, "r-1");
        }
        let avoid = vec!["r-0".to_string(), "r-1".to_string()];
        let ctx = SelectContext {
            hash_key: None,
            avoid: &avoid,
        };
        assert!(Random::new().select(&s, &ctx).unwrap().is_healthy());
    }

    #[test]
    fn set_picks_uniform_over_candidates() {
        use waypost_core_types::Health::{Healthy as H, Unhealthy as D};
        let w = crate::testing::writer("r", &[H, D, H, D, H, D, H, D]);
        let set = w.current();
        let lb = Random::new();
        lb.prepare(set);
        let mut counts = [0usize; 8];
        for _ in 0..10_000 {
            counts[index(lb.select_set(set, &SelectContext::default()).unwrap())] += 1;
        }
        assert!(
            counts.iter().skip(1).step_by(2).all(|c| *c == 0),
            "{counts:?}"
        );
        let healthy: Vec<usize> = counts.iter().step_by(2).copied().collect();
        let chi2 = chi_square(&healthy);
        assert!(chi2 < 21.11, "chi-square {chi2} over {healthy:?}");
    }
}
