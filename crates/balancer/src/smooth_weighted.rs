//! Smooth weighted round robin (the nginx algorithm).

use std::sync::Arc;

use parking_lot::Mutex;
use waypost_core_types::{LoadBalancer, SelectContext, ServiceInfo};

use crate::pick;
use crate::state::StateMap;

/// Deterministic weighted rotation that spreads heavy instances out: with weights 5, 1, 1 the
/// order is `a a b a c a a`, never five `a` in a row.
///
/// Each pick adds every candidate's [`weight`](ServiceInfo::weight) to its running score, takes the
/// highest score and subtracts the total from it (nginx's smooth weighted round robin). Over any
/// window of `sum(weights)` picks, every instance gets exactly its share. Weight 0 is never
/// picked. The scores are per service, behind a short per-service lock (a pick is one pass over
/// the instances); instances are matched to their scores by identity, so a changed set resets
/// only the scores of instances that changed.
#[derive(Default)]
pub struct SmoothWeightedRoundRobin {
    services: StateMap<Mutex<Scores>>,
}

#[derive(Default)]
struct Scores {
    /// The instance set the scores belong to, in slice order.
    members: Vec<Arc<ServiceInfo>>,
    /// Each member's weight if it is healthy, else 0 (valid while `members` is unchanged:
    /// instances are immutable behind their `Arc`).
    weights: Vec<i64>,
    /// Running scores.
    current: Vec<i64>,
}

impl SmoothWeightedRoundRobin {
    /// A smooth weighted round-robin balancer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets the scores of services for which `keep` returns false.
    pub fn retain_services(&self, mut keep: impl FnMut(&str) -> bool) {
        self.services.retain(|name, _| keep(name));
    }
}

impl std::fmt::Debug for SmoothWeightedRoundRobin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmoothWeightedRoundRobin")
            .field("services", &self.services.len())
            .finish()
    }
}

impl Scores {
    fn sync(&mut self, instances: &[Arc<ServiceInfo>]) {
        // No early exit: a straight pass over two pointer arrays.
        let same = self.members.len() == instances.len()
            && self
                .members
                .iter()
                .zip(instances)
                .fold(true, |same, (a, b)| same & Arc::ptr_eq(a, b));
        if same {
            return;
        }
        if self.members.len() != instances.len() {
            self.members = instances.to_vec();
            self.current = vec![0; instances.len()];
        } else {
            for (i, (m, s)) in self.members.iter_mut().zip(instances).enumerate() {
                if !Arc::ptr_eq(m, s) {
                    if m.id != s.id {
                        self.current[i] = 0;
                    }
                    *m = s.clone();
                }
            }
        }
        self.weights = instances
            .iter()
            .map(|s| {
                if s.is_healthy() {
                    i64::from(s.weight)
                } else {
                    0
                }
            })
            .collect();
    }

    /// One step of the algorithm over the candidates `w(i) > 0`.
    #[inline]
    fn step(&mut self, w: impl Fn(usize) -> i64) -> Option<usize> {
        let mut total = 0i64;
        let mut best = None;
        let mut best_score = i64::MIN;
        for (i, c) in self.current.iter_mut().enumerate() {
            let w = w(i);
            if w == 0 {
                continue;
            }
            *c += w;
            total += w;
            if *c > best_score {
                best_score = *c;
                best = Some(i);
            }
        }
        let b = best?;
        self.current[b] -= total;
        Some(b)
    }

    fn pick(&mut self, instances: &[Arc<ServiceInfo>], ctx: &SelectContext<'_>) -> Option<usize> {
        if !pick::wants_strict(ctx) {
            let weights = std::mem::take(&mut self.weights);
            let r = self.step(|i| weights[i]);
            self.weights = weights;
            return r;
        }
        let weights = std::mem::take(&mut self.weights);
        let strict = |i: usize| {
            if ctx.avoids(&instances[i]) {
                0
            } else {
                weights[i]
            }
        };
        let r = self.step(strict).or_else(|| self.step(|i| weights[i]));
        self.weights = weights;
        r
    }
}

impl LoadBalancer for SmoothWeightedRoundRobin {
    fn name(&self) -> &'static str {
        "smooth_weighted_round_robin"
    }

    fn select<'a>(
        &self,
        instances: &'a [Arc<ServiceInfo>],
        ctx: &SelectContext<'_>,
    ) -> Option<&'a Arc<ServiceInfo>> {
        let first = instances.first()?;
        let i = self.services.with_or_insert(
            &first.name,
            || Mutex::new(Scores::default()),
            |scores| {
                let mut sc = scores.lock();
                sc.sync(instances);
                sc.pick(instances, ctx)
            },
        )?;
        Some(&instances[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{ids, index, weighted};

    #[test]
    fn nginx_order() {
        let s = weighted("n", &[5, 1, 1]);
        let b = SmoothWeightedRoundRobin::new();
        let picks = ids((0..7).map(|_| b.select(&s, &SelectContext::default())));
        assert_eq!(picks, ["n-0", "n-0", "n-1", "n-0", "n-2", "n-0", "n-0"]);
    }

    #[test]
    fn exact_shares_and_zero_weight() {
        let s = weighted("e", &[100, 200, 300, 400, 0]);
        let b = SmoothWeightedRoundRobin::new();
        let mut counts = [0usize; 5];
        for _ in 0..10_000 {
            counts[index(b.select(&s, &SelectContext::default()).unwrap())] += 1;
        }
        assert_eq!(counts, [1000, 2000, 3000, 4000, 0]);
        assert!(b
            .select(&weighted("z", &[0, 0]), &SelectContext::default())
            .is_none());
        assert!(b.select(&[], &SelectContext::default()).is_none());
    }

    #[test]
    fn unhealthy_skipped_and_avoid_soft() {
        let mut s = weighted("u", &[100, 100, 100]);
        s[1] = Arc::new(
            (*s[1].clone())
                .clone()
                .with_health(waypost_core_types::Health::Unhealthy),
        );
        let b = SmoothWeightedRoundRobin::new();
        let picks = ids((0..4).map(|_| b.select(&s, &SelectContext::default())));
        assert_eq!(picks, ["u-0", "u-2", "u-0", "u-2"]);
        let avoid = vec!["u-0".to_string(), "u-2".to_string()];
        let ctx = SelectContext {
            hash_key: None,
            avoid: &avoid,
        };
        assert!(b.select(&s, &ctx).unwrap().is_healthy());
    }
}
