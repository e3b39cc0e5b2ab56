//! Smooth weighted round robin (the nginx algorithm).

use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use waypost_core_types::{Health, LoadBalancer, SelectContext, ServiceInfo};

use crate::pick;
use crate::state::{StateMap, Striped};

/// Longest precomputed schedule, in picks (4 bytes each).
const MAX_PLAN: u64 = 4096;

/// Most work (picks × instances) spent precomputing a schedule, which happens on the first pick
/// after the instance set changes.
const MAX_PLAN_WORK: u64 = 1 << 20;

/// Deterministic weighted rotation that spreads heavy instances out: with weights 5, 1, 1 the
/// order is `a a b a c a a`, never five `a` in a row.
///
/// The order is nginx's smooth weighted round robin: each pick adds every candidate's
/// [`weight`](ServiceInfo::weight) to its running score, takes the highest score and subtracts
/// the total from it. Over any window of one period (`sum(weights) / gcd(weights)` picks) every
/// instance gets exactly its share. Weight 0 is never picked.
///
/// That order is periodic, so for each instance set (per service) the balancer computes one
/// period once, and a pick is then a lock-free step through it (a per-thread-striped counter,
/// like [`RoundRobin`](crate::RoundRobin)). Sets whose period is longer than 4096 picks (or
/// whose period × size exceeds 2^20) fall back to running the algorithm on each pick under a
/// short per-service lock. Avoided instances are
/// stepped over.
#[derive(Default)]
pub struct SmoothWeightedRoundRobin {
    services: StateMap<ServiceState>,
}

#[derive(Default)]
struct ServiceState {
    counter: Striped,
    plan: ArcSwap<Plan>,
    live: Mutex<Scores>,
}

/// One period of picks for one instance set.
#[derive(Default)]
struct Plan {
    /// The instance set the plan was made for, in slice order.
    members: Vec<Arc<ServiceInfo>>,
    /// Indices into `members`; `None` when the period is too long to precompute.
    schedule: Option<Vec<u32>>,
}

impl Plan {
    fn same(&self, instances: &[Arc<ServiceInfo>]) -> bool {
        // No early exit: a straight pass over two pointer arrays.
        self.members.len() == instances.len()
            && self
                .members
                .iter()
                .zip(instances)
                .fold(true, |same, (a, b)| same & Arc::ptr_eq(a, b))
    }

    fn build(instances: &[Arc<ServiceInfo>]) -> Plan {
        let weights = effective_weights(instances);
        let g = weights.iter().fold(0u64, |g, w| gcd(g, *w as u64));
        let total: u64 = weights.iter().map(|w| *w as u64).sum();
        let schedule = match total.checked_div(g) {
            None => Some(Vec::new()),
            Some(period)
                if period <= MAX_PLAN
                    && period.saturating_mul(instances.len() as u64) <= MAX_PLAN_WORK =>
            {
                let mut scores = Scores {
                    current: vec![0; instances.len()],
                    weights,
                    ..Scores::default()
                };
                let w = std::mem::take(&mut scores.weights);
                let schedule = (0..period)
                    .filter_map(|_| scores.step(&w).map(|i| i as u32))
                    .collect();
                Some(schedule)
            }
            Some(_) => None,
        };
        Plan {
            members: instances.to_vec(),
            schedule,
        }
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Each instance's weight if it is in the health tier picked from, else 0: the healthy ones,
/// or the `Unknown` ones when no healthy one has a weight (see [`pick::in_tiers`]).
fn effective_weights(instances: &[Arc<ServiceInfo>]) -> Vec<i64> {
    let of = |tier: Health| -> Option<Vec<i64>> {
        let w: Vec<i64> = instances
            .iter()
            .map(|s| {
                if s.health == tier {
                    i64::from(s.weight)
                } else {
                    0
                }
            })
            .collect();
        w.iter().any(|w| *w > 0).then_some(w)
    };
    pick::in_tiers(of).unwrap_or_else(|| vec![0; instances.len()])
}

/// Live scores, for sets whose period is too long to precompute.
#[derive(Default)]
struct Scores {
    members: Vec<Arc<ServiceInfo>>,
    weights: Vec<i64>,
    current: Vec<i64>,
}

impl ServiceState {
    fn choose(
        &self,
        plan: &Plan,
        instances: &[Arc<ServiceInfo>],
        ctx: &SelectContext<'_>,
    ) -> Option<usize> {
        match &plan.schedule {
            Some(schedule) if schedule.is_empty() => None,
            Some(schedule) => {
                let len = schedule.len();
                let n = self.counter.next() % len;
                let at = |k: usize| schedule[(n + k) % len] as usize;
                if !pick::wants_strict(ctx) {
                    return Some(at(0));
                }
                (0..len)
                    .map(at)
                    .find(|i| !ctx.avoids(&instances[*i]))
                    .or(Some(at(0)))
            }
            None => {
                let mut live = self.live.lock();
                live.sync(instances);
                live.pick(instances, ctx)
            }
        }
    }
}

impl SmoothWeightedRoundRobin {
    /// A smooth weighted round-robin balancer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets the state of services for which `keep` returns false.
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
        self.weights = effective_weights(instances);
    }

    /// One step of the algorithm over the candidates (`weights[i] > 0`).
    #[inline]
    fn step(&mut self, weights: &[i64]) -> Option<usize> {
        let mut total = 0i64;
        let mut best = None;
        let mut best_score = i64::MIN;
        for (i, (c, w)) in self.current.iter_mut().zip(weights).enumerate() {
            if *w == 0 {
                continue;
            }
            *c += *w;
            total += *w;
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
        let weights = std::mem::take(&mut self.weights);
        let r = if pick::wants_strict(ctx) {
            let strict: Vec<i64> = weights
                .iter()
                .zip(instances)
                .map(|(w, s)| if ctx.avoids(s) { 0 } else { *w })
                .collect();
            self.step(&strict).or_else(|| self.step(&weights))
        } else {
            self.step(&weights)
        };
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
        let i = self
            .services
            .with_or_insert(&first.name, ServiceState::default, |st| {
                let plan = st.plan.load();
                if plan.same(instances) {
                    return st.choose(&plan, instances, ctx);
                }
                drop(plan);
                let plan = Arc::new(Plan::build(instances));
                st.plan.store(plan.clone());
                st.choose(&plan, instances, ctx)
            })?;
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
    fn long_periods_run_live_with_exact_shares() {
        // Coprime weights: a period of 1009 + 1013 + 1019 + 1021 + 1031 > 4096 picks.
        let w = [1009, 1013, 1019, 1021, 1031];
        let s = weighted("l", &w);
        let b = SmoothWeightedRoundRobin::new();
        let period: u32 = w.iter().sum();
        let mut counts = [0u32; 5];
        for _ in 0..period {
            counts[index(b.select(&s, &SelectContext::default()).unwrap())] += 1;
        }
        assert_eq!(counts, w);
        let seq = ids((0..3).map(|_| b.select(&s, &SelectContext::default())));
        assert_eq!(seq.len(), 3);
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
