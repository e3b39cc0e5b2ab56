//! Least request by the power of two choices.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use waypost_core_types::{
    CallGuard, CallObserver, LoadBalancer, Outcome, SelectContext, ServiceInfo,
};

use crate::pick;
use crate::state::StateMap;

/// Above this many tracked instances, idle entries are dropped when a new one is added.
const PRUNE_ABOVE: usize = 1024;

/// Draws two healthy instances at random and picks the one with fewer calls in flight.
///
/// Calls are counted through [`LoadBalancer::begin`]: the returned [`CallGuard`] keeps the call
/// in flight until it is finished or dropped, so a caller cannot leave a count behind. Two random
/// choices avoid the herd behaviour of always taking the global minimum, and need no lock: counts
/// live in a lock-free read map keyed by instance id.
///
/// ```
/// use std::sync::Arc;
/// use waypost_balancer::LeastRequest;
/// use waypost_core_types::{Health, LoadBalancer, Outcome, SelectContext, ServiceInfo};
///
/// let a = Arc::new(ServiceInfo::new("a", "svc", "10.0.0.1", 80).with_health(Health::Healthy));
/// let b = Arc::new(ServiceInfo::new("b", "svc", "10.0.0.2", 80).with_health(Health::Healthy));
/// let lb = LeastRequest::new();
/// let busy = lb.begin(&a); // one call in flight on `a`
/// let set = [a.clone(), b.clone()];
/// assert_eq!(lb.select(&set, &SelectContext::default()).unwrap().id, "b");
/// busy.finish(Outcome::Success);
/// assert_eq!(lb.in_flight("a"), 0);
/// ```
#[derive(Debug, Default, Clone)]
pub struct LeastRequest {
    shared: Arc<Counts>,
}

#[derive(Default)]
struct Counts {
    in_flight: StateMap<AtomicUsize>,
}

impl std::fmt::Debug for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counts")
            .field("instances", &self.in_flight.len())
            .finish()
    }
}

impl Counts {
    fn load(&self, id: &str) -> usize {
        self.in_flight
            .with(id, |c| c.load(Ordering::Relaxed))
            .unwrap_or(0)
    }
}

impl CallObserver for Counts {
    fn on_finish(&self, id: &str, _outcome: Outcome, _latency: Duration) {
        self.in_flight.with(id, |c| {
            let _ = c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
        });
    }
}

impl LeastRequest {
    /// A least-request balancer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Calls currently in flight to instance `id`.
    pub fn in_flight(&self, id: &str) -> usize {
        self.shared.load(id)
    }
}

impl LoadBalancer for LeastRequest {
    fn name(&self) -> &'static str {
        "least_request"
    }

    fn select<'a>(
        &self,
        instances: &'a [Arc<ServiceInfo>],
        ctx: &SelectContext<'_>,
    ) -> Option<&'a Arc<ServiceInfo>> {
        let (a, b) = pick::with_rng(|rng| pick::random_pair(instances, ctx, rng))?;
        let Some(b) = b else {
            return Some(&instances[a]);
        };
        let load = |c: Option<&AtomicUsize>| c.map_or(0, |c| c.load(Ordering::Relaxed));
        let (la, lb) = self
            .shared
            .in_flight
            .with2(&instances[a].id, &instances[b].id, |ca, cb| {
                (load(ca), load(cb))
            });
        Some(&instances[if lb < la { b } else { a }])
    }

    fn begin(&self, instance: &ServiceInfo) -> CallGuard {
        let counts = &self.shared.in_flight;
        if counts.with(&instance.id, |_| ()).is_none() && counts.len() >= PRUNE_ABOVE {
            counts.retain(|_, c| c.load(Ordering::Relaxed) > 0);
        }
        counts.with_or_insert(
            &instance.id,
            || AtomicUsize::new(0),
            |c| c.fetch_add(1, Ordering::Relaxed),
        );
        CallGuard::new(self.shared.clone(), instance.id.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{index, set};

    #[test]
    fn never_picks_the_busiest_when_others_are_idle() {
        let s = set("l", &[true; 3]);
        let lb = LeastRequest::new();
        let _busy: Vec<_> = (0..3).map(|_| lb.begin(&s[0])).collect();
        assert_eq!(lb.in_flight("l-0"), 3);
        for _ in 0..1000 {
            assert_ne!(lb.select(&s, &SelectContext::default()).unwrap().id, "l-0");
        }
    }

    #[test]
    fn guards_release_counts_even_when_dropped() {
        let s = set("g", &[true; 2]);
        let lb = LeastRequest::new();
        let g1 = lb.begin(&s[0]);
        let g2 = lb.begin(&s[0]);
        assert_eq!(lb.in_flight("g-0"), 2);
        g1.finish(Outcome::Failure);
        drop(g2);
        assert_eq!(lb.in_flight("g-0"), 0);
        // A stray report never underflows.
        CallObserver::on_finish(&*lb.shared, "g-0", Outcome::Success, Duration::ZERO);
        assert_eq!(lb.in_flight("g-0"), 0);
    }

    #[test]
    fn balances_concurrent_load() {
        // Keep up to 8 calls open at once, finishing the oldest: the counts stay level.
        let s = set("c", &[true; 4]);
        let lb = LeastRequest::new();
        let mut open = std::collections::VecDeque::new();
        let mut picks = [0usize; 4];
        for _ in 0..4000 {
            let p = lb.select(&s, &SelectContext::default()).unwrap();
            picks[index(p)] += 1;
            open.push_back(lb.begin(p));
            if open.len() > 8 {
                open.pop_front().unwrap().finish(Outcome::Success);
            }
            let max = (0..4)
                .map(|i| lb.in_flight(&format!("c-{i}")))
                .max()
                .unwrap();
            assert!(max <= 5, "in flight became uneven: {max}");
        }
        assert!(picks.iter().all(|p| *p > 800), "{picks:?}");
    }

    #[test]
    fn none_and_unhealthy() {
        let lb = LeastRequest::new();
        assert!(lb.select(&[], &SelectContext::default()).is_none());
        assert!(lb
            .select(&set("n", &[false; 2]), &SelectContext::default())
            .is_none());
        let s = set("n", &[false, true, false]);
        for _ in 0..100 {
            assert_eq!(lb.select(&s, &SelectContext::default()).unwrap().id, "n-1");
        }
    }
}
