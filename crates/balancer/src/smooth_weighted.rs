//! Smooth weighted round robin (the nginx algorithm), with an O(1) form for large fleets.

use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use waypost_core_types::{Health, InstanceSet, LoadBalancer, SelectContext, ServiceInfo};

use crate::pick;
use crate::prepared::{FastMod, Generational, PerService};
use crate::state::{StateMap, Striped};

/// Longest precomputed schedule, in picks (4 bytes each).
const MAX_PLAN: u64 = 1 << 20;

/// Most work (picks × candidates) spent computing nginx's exact schedule; beyond it the
/// schedule is computed in O(picks × log candidates) by earliest virtual deadline.
const MAX_NGINX_WORK: u64 = 1 << 22;

/// Deterministic weighted rotation that spreads heavy instances out: with weights 5, 1, 1 the
/// order is `a a b a c a a`, never five `a` in a row.
///
/// The order is nginx's smooth weighted round robin: each pick adds every candidate's
/// [`weight`](ServiceInfo::weight) to its running score, takes the highest score and subtracts
/// the total from it. Over any window of one period (`sum(weights) / gcd(weights)` picks) every
/// instance gets exactly its share. Weight 0 is never picked.
///
/// That order is periodic, so for each instance set (per service; on an [`InstanceSet`] once
/// per generation, in [`LoadBalancer::prepare`]) the balancer computes one period once, and a
/// pick is a lock-free step through it (a per-thread-striped counter, like
/// [`RoundRobin`](crate::RoundRobin)): O(1) at any size. nginx's algorithm costs O(candidates)
/// per pick, so it is used to compute the period only while period × candidates ≤ 2^22
/// (about a thousand instances of mixed weights); larger sets get the same kind of
/// schedule by earliest virtual deadline (instance `i`'s `k`-th turn falls at
/// `(k + ½) / weight_i`, ties to the earlier position), built in O(period × log n), which
/// keeps nginx's guarantees: every instance gets exactly its share over each period, and over
/// every stretch of picks from the start of a period each instance's count stays within one
/// of its weight share. Its order can differ from nginx's on ties. Sets whose period exceeds
/// 2^20 picks run the deadline scheduler live under a short per-service lock (O(log n) per
/// pick). Avoided instances are stepped over.
#[derive(Default)]
pub struct SmoothWeightedRoundRobin {
    services: StateMap<ServiceState>,
    sets: PerService<Prepared>,
}

#[derive(Default)]
struct ServiceState {
    counter: Striped,
    plan: ArcSwap<Plan>,
}

/// The slice path's plan: one period of picks for one instance set.
#[derive(Default)]
struct Plan {
    /// The instance set the plan was made for, in slice order.
    members: Vec<Arc<ServiceInfo>>,
    schedule: Schedule,
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
}

/// The set path's state for one generation.
struct Prepared {
    generation: u64,
    /// The service's counter, shared with the slice path and kept across generations.
    state: Arc<ServiceState>,
    schedule: Schedule,
}

impl Generational for Prepared {
    fn generation(&self) -> u64 {
        self.generation
    }
}

/// The order of picks over one period, as positions.
#[derive(Default)]
enum Schedule {
    /// Nothing to pick.
    #[default]
    Empty,
    /// One period, precomputed, and its length's divisor.
    Fixed(Box<[u32]>, FastMod),
    /// The deadline scheduler, run live (periods too long to precompute).
    Live(Mutex<BinaryHeap<Turn>>),
}

/// One candidate's next turn in the deadline scheduler: at virtual time `half_turns / (2 × weight)`.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Turn {
    half_turns: u64,
    weight: u64,
    position: u32,
}

impl Ord for Turn {
    /// The earlier deadline (then the earlier position) is the greater, for a max-heap.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        let a = u128::from(self.half_turns) * u128::from(other.weight);
        let b = u128::from(other.half_turns) * u128::from(self.weight);
        b.cmp(&a).then(other.position.cmp(&self.position))
    }
}

impl PartialOrd for Turn {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl Schedule {
    fn fixed(schedule: Box<[u32]>) -> Schedule {
        let modulo = FastMod::new(schedule.len());
        Schedule::Fixed(schedule, modulo)
    }

    /// The schedule over `candidates` (position, weight > 0), in position order.
    fn build(candidates: &[(u32, u64)]) -> Schedule {
        if candidates.is_empty() {
            return Schedule::Empty;
        }
        let g = candidates.iter().fold(0u64, |g, c| gcd(g, c.1));
        let reduced: Vec<(u32, u64)> = candidates.iter().map(|c| (c.0, c.1 / g)).collect();
        let period: u64 = reduced.iter().map(|c| c.1).sum();
        let k = reduced.len() as u64;
        if period <= MAX_PLAN && period.saturating_mul(k) <= MAX_NGINX_WORK {
            Schedule::fixed(nginx(&reduced, period))
        } else if period <= MAX_PLAN {
            let mut heap = heap(&reduced);
            Schedule::fixed((0..period).filter_map(|_| next_turn(&mut heap)).collect())
        } else {
            Schedule::Live(Mutex::new(heap(&reduced)))
        }
    }

    /// The next position, stepping over avoided instances while another is left.
    #[inline]
    fn next<'s>(
        &self,
        counter: &Striped,
        ctx: &SelectContext<'_>,
        get: impl Fn(usize) -> Option<&'s ServiceInfo>,
    ) -> Option<usize> {
        let avoided = |i: usize| get(i).is_some_and(|s| ctx.avoids(s));
        match self {
            Schedule::Empty => None,
            Schedule::Fixed(schedule, modulo) => {
                let len = schedule.len();
                let n = modulo.of(counter.next());
                let first = schedule[n] as usize;
                if ctx.avoid.is_empty() || !avoided(first) {
                    return Some(first);
                }
                (1..len)
                    .map(|k| schedule[(n + k) % len] as usize)
                    .find(|i| !avoided(*i))
                    .or(Some(first))
            }
            Schedule::Live(heap) => {
                let mut heap = heap.lock();
                if ctx.avoid.is_empty() {
                    return next_turn(&mut heap).map(|p| p as usize);
                }
                // Set the avoided turns aside, take the first other one, put them back.
                let mut aside = Vec::new();
                let found = loop {
                    match heap.peek() {
                        None => break None,
                        Some(t) if avoided(t.position as usize) => {
                            aside.extend(heap.pop());
                        }
                        Some(_) => break next_turn(&mut heap),
                    }
                };
                heap.extend(aside);
                found.or_else(|| next_turn(&mut heap)).map(|p| p as usize)
            }
        }
    }
}

/// One period of nginx's smooth weighted round robin, O(period × candidates).
fn nginx(candidates: &[(u32, u64)], period: u64) -> Box<[u32]> {
    let total: i64 = candidates.iter().map(|c| c.1 as i64).sum();
    let mut current = vec![0i64; candidates.len()];
    (0..period)
        .map(|_| {
            let mut best = 0;
            let mut best_score = i64::MIN;
            for (i, (c, cand)) in current.iter_mut().zip(candidates).enumerate() {
                *c += cand.1 as i64;
                if *c > best_score {
                    best_score = *c;
                    best = i;
                }
            }
            current[best] -= total;
            candidates[best].0
        })
        .collect()
}

fn heap(candidates: &[(u32, u64)]) -> BinaryHeap<Turn> {
    candidates
        .iter()
        .map(|c| Turn {
            half_turns: 1,
            weight: c.1,
            position: c.0,
        })
        .collect()
}

/// Takes the earliest turn and schedules that candidate's next one.
fn next_turn(heap: &mut BinaryHeap<Turn>) -> Option<u32> {
    let mut top = heap.peek_mut()?;
    let position = top.position;
    top.half_turns += 2;
    drop(top);
    Some(position)
}

/// The candidates (position, weight): those of the first health tier with a positive weight
/// (healthy, then unknown), weight 0 left out.
fn candidates<'a>(
    instances: impl Iterator<Item = &'a Arc<ServiceInfo>> + Clone,
) -> Vec<(u32, u64)> {
    let of = |tier: Health| -> Option<Vec<(u32, u64)>> {
        let v: Vec<(u32, u64)> = instances
            .clone()
            .enumerate()
            .filter(|(_, s)| s.health == tier && s.weight > 0)
            .map(|(i, s)| (i as u32, u64::from(s.weight)))
            .collect();
        (!v.is_empty()).then_some(v)
    };
    pick::in_tiers(of).unwrap_or_default()
}

impl SmoothWeightedRoundRobin {
    /// A smooth weighted round-robin balancer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets the state of services for which `keep` returns false.
    pub fn retain_services(&self, mut keep: impl FnMut(&str) -> bool) {
        self.sets.retain(&mut keep);
        self.services.retain(|name, _| keep(name));
    }

    fn build(&self, set: &InstanceSet) -> Prepared {
        Prepared {
            generation: set.generation(),
            state: self
                .services
                .get_or_insert(set.service(), ServiceState::default),
            schedule: Schedule::build(&candidates(set.iter())),
        }
    }

    #[inline]
    fn next(p: &Prepared, set: &InstanceSet, ctx: &SelectContext<'_>) -> Option<usize> {
        p.schedule
            .next(&p.state.counter, ctx, |i| set.get(i).map(|s| &**s))
    }

    /// A pick on a generation that was not prepared: prepares it (O(period), see the type's
    /// docs), or, for a set older than the prepared one, builds a schedule for this pick alone.
    #[cold]
    #[inline(never)]
    fn next_unprepared(&self, set: &InstanceSet, ctx: &SelectContext<'_>) -> Option<usize> {
        self.prepare(set);
        match self.sets.with(set, |p| Self::next(p, set, ctx)) {
            Some(r) => r,
            None => Self::next(&self.build(set), set, ctx),
        }
    }
}

impl std::fmt::Debug for SmoothWeightedRoundRobin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmoothWeightedRoundRobin")
            .field("services", &self.services.len())
            .finish()
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
                let mut plan = st.plan.load_full();
                if !plan.same(instances) {
                    plan = Arc::new(Plan {
                        members: instances.to_vec(),
                        schedule: Schedule::build(&candidates(instances.iter())),
                    });
                    st.plan.store(plan.clone());
                }
                plan.schedule
                    .next(&st.counter, ctx, |i| instances.get(i).map(|s| &**s))
            })?;
        Some(&instances[i])
    }

    /// O(1): the next step of the schedule prepared for the set's generation.
    #[inline]
    fn select_set<'a>(
        &self,
        set: &'a InstanceSet,
        ctx: &SelectContext<'_>,
    ) -> Option<&'a Arc<ServiceInfo>> {
        let i = match self.sets.with(set, |p| Self::next(p, set, ctx)) {
            Some(i) => i,
            None => self.next_unprepared(set, ctx),
        }?;
        set.get(i)
    }

    fn prepare(&self, set: &InstanceSet) {
        self.sets.prepare(set, || self.build(set));
    }

    fn forget(&self, service: &str) {
        self.sets.forget(service);
        self.services.remove(service);
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

    /// The positions a schedule gives over `picks` picks.
    fn run(schedule: &Schedule, picks: usize) -> Vec<usize> {
        let counter = Striped::default();
        (0..picks)
            .map(|_| {
                schedule
                    .next(&counter, &SelectContext::default(), |_| None)
                    .unwrap()
            })
            .collect()
    }

    /// Smoothness: over every stretch of picks from the start, each candidate's count stays
    /// within one of its weight share (|count - picks × w / W| < 1); over any window anywhere
    /// (the difference of two such stretches) within two; over a period, exact.
    fn assert_smooth(weights: &[u64], seq: &[usize]) {
        let total: u64 = weights.iter().sum();
        let mut counts = vec![0u64; weights.len()];
        let mut worst = 0f64;
        for (t, p) in seq.iter().enumerate() {
            counts[*p] += 1;
            for (i, w) in weights.iter().enumerate() {
                let share = (t + 1) as f64 * *w as f64 / total as f64;
                let err = (counts[i] as f64 - share).abs();
                worst = worst.max(err);
                assert!(
                    err < 1.0,
                    "candidate {i} at pick {t}: {} vs {share}",
                    counts[i]
                );
            }
        }
        if seq.len() as u64 % total == 0 {
            let rounds = seq.len() as u64 / total;
            let want: Vec<u64> = weights.iter().map(|w| w * rounds).collect();
            assert_eq!(counts, want);
        }
        assert!(worst < 1.0);
    }

    #[test]
    fn nginx_and_deadline_schedules_are_smooth() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for _ in 0..20 {
            let k = rng.random_range(2..40);
            let weights: Vec<u64> = (0..k).map(|_| rng.random_range(1..20)).collect();
            let candidates: Vec<(u32, u64)> = weights
                .iter()
                .enumerate()
                .map(|(i, w)| (i as u32, *w))
                .collect();
            let period: u64 =
                weights.iter().sum::<u64>() / weights.iter().fold(0, |g, w| gcd(g, *w));
            let reduced: Vec<u64> = {
                let g = weights.iter().fold(0, |g, w| gcd(g, *w));
                weights.iter().map(|w| w / g).collect()
            };
            // nginx's own order (small: precomputed exactly).
            let nginx_seq: Vec<usize> = nginx(&candidates, period)
                .iter()
                .map(|p| *p as usize)
                .collect();
            assert_smooth(&reduced, &nginx_seq);
            assert_eq!(
                run(&Schedule::build(&candidates), period as usize),
                nginx_seq
            );
            // The deadline order used for large sets.
            let mut h = heap(&candidates);
            let edf: Vec<usize> = (0..2 * period)
                .map(|_| next_turn(&mut h).unwrap() as usize)
                .collect();
            assert_smooth(&reduced, &edf);
        }
    }

    #[test]
    fn large_sets_use_the_deadline_schedule_and_long_periods_run_live() {
        // 10,000 candidates of weights 1..=4: period 25,000, too much work for nginx's O(n)
        // steps, so the deadline schedule is precomputed.
        let candidates: Vec<(u32, u64)> =
            (0..10_000u32).map(|i| (i, u64::from(i % 4 + 1))).collect();
        let schedule = Schedule::build(&candidates);
        assert!(matches!(schedule, Schedule::Fixed(ref s, _) if s.len() == 25_000));
        let weights: Vec<u64> = candidates.iter().map(|c| c.1).collect();
        assert_smooth(&weights, &run(&schedule, 25_000));
        // A period longer than 2^20 picks: the scheduler runs live, just as smooth.
        let candidates = [(0, 1_000_003), (1, 999_983), (2, 1_000_033)];
        let schedule = Schedule::build(&candidates);
        assert!(matches!(schedule, Schedule::Live(_)));
        let weights: Vec<u64> = candidates.iter().map(|c| c.1).collect();
        assert_smooth(&weights, &run(&schedule, 30_000));
        // Live, avoided instances are stepped over.
        let avoid = vec!["l-0".to_string()];
        let ctx = SelectContext {
            hash_key: None,
            avoid: &avoid,
        };
        let ids: Vec<Arc<ServiceInfo>> = (0..3)
            .map(|i| Arc::new(ServiceInfo::new(format!("l-{i}"), "l", "h", 1)))
            .collect();
        let counter = Striped::default();
        for _ in 0..100 {
            let p = schedule
                .next(&counter, &ctx, |i| ids.get(i).map(|s| &**s))
                .unwrap();
            assert_ne!(p, 0);
        }
    }

    #[test]
    fn set_path_keeps_nginx_order_and_exact_shares() {
        let b = SmoothWeightedRoundRobin::new();
        let set = InstanceSet::new("n", weighted("n", &[5, 1, 1]));
        b.prepare(&set);
        let picks = ids((0..7).map(|_| b.select_set(&set, &SelectContext::default())));
        assert_eq!(picks, ["n-0", "n-0", "n-1", "n-0", "n-2", "n-0", "n-0"]);
        // 1,000 instances of weights 1..=4 through a set, unprepared: exact shares per period.
        let w: Vec<u32> = (0..1000).map(|i| i % 4 + 1).collect();
        let set = InstanceSet::new("m", weighted("m", &w));
        let mut counts = vec![0u32; 1000];
        for _ in 0..2500 {
            counts[index(b.select_set(&set, &SelectContext::default()).unwrap())] += 1;
        }
        // Counted by the number in each id, like the weights.
        assert_eq!(counts, w);
        b.forget("m");
        assert!(b.sets.latest("m").is_none());
    }
}
