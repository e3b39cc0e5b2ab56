//! Weighted random choice.

use std::sync::Arc;

use rand::Rng;
use waypost_core_types::{Health, LoadBalancer, SelectContext, ServiceInfo};

use crate::pick;

/// Picks a healthy instance at random with probability proportional to
/// [`ServiceInfo::weight`] (default 100; weight 0 is never picked). When no healthy instance
/// can be picked, the same among the `Unknown` ones (see [`Health`]).
///
/// Stateless and lock-free; a pick is two passes over the instances.
#[derive(Debug, Default, Clone, Copy)]
pub struct WeightedRandom;

impl WeightedRandom {
    /// A weighted random balancer.
    pub fn new() -> Self {
        WeightedRandom
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
                WeightedRandom
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
                WeightedRandom
                    .select(&s, &SelectContext::default())
                    .unwrap()
                    .id,
                "w-1"
            );
        }
        assert!(WeightedRandom
            .select(&weighted("w", &[0, 0]), &SelectContext::default())
            .is_none());
        assert!(WeightedRandom
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
            assert_eq!(WeightedRandom.select(&s, &ctx).unwrap().id, "w-1");
        }
        let avoid = vec!["w-0".to_string(), "w-1".to_string()];
        let ctx = SelectContext {
            hash_key: None,
            avoid: &avoid,
        };
        assert_ne!(WeightedRandom.select(&s, &ctx).unwrap().id, "w-2");
    }
}
