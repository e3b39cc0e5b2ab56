//! Uniform random choice.

use std::sync::Arc;

use waypost_core_types::{LoadBalancer, SelectContext, ServiceInfo};

use crate::pick;

/// Picks a healthy instance uniformly at random.
///
/// The randomness is a real RNG (a per-thread `SmallRng` seeded from the operating system), not
/// the clock modulo n as in the Go original. Stateless, so it needs no per-service state and no
/// lock; with mostly healthy instances a pick is O(1).
#[derive(Debug, Default, Clone, Copy)]
pub struct Random;

impl Random {
    /// A random balancer.
    pub fn new() -> Self {
        Random
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
            counts[index(Random.select(&s, &SelectContext::default()).unwrap())] += 1;
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
            counts[index(Random.select(&s, &SelectContext::default()).unwrap())] += 1;
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
            .map(|_| index(Random.select(&s, &SelectContext::default()).unwrap()))
            .collect();
        assert!(picks.len() >= 5, "{picks:?}");
    }

    #[test]
    fn none_and_avoid() {
        assert!(Random.select(&[], &SelectContext::default()).is_none());
        assert!(Random
            .select(&set("r", &[false; 3]), &SelectContext::default())
            .is_none());
        let s = set("r", &[true, true, false]);
        let avoid = vec!["r-0".to_string()];
        let ctx = SelectContext {
            hash_key: None,
            avoid: &avoid,
        };
        for _ in 0..100 {
            assert_eq!(Random.select(&s, &ctx).unwrap().id, "r-1");
        }
        let avoid = vec!["r-0".to_string(), "r-1".to_string()];
        let ctx = SelectContext {
            hash_key: None,
            avoid: &avoid,
        };
        assert!(Random.select(&s, &ctx).unwrap().is_healthy());
    }
}
