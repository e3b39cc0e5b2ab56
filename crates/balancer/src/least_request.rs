//! Least request by the power of two choices.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use waypost_core_types::{
    CallGuard, CallObserver, InstanceSet, LoadBalancer, Outcome, SelectContext, ServiceInfo,
};

use crate::by_id::ById;
use crate::pick;
use crate::tracked::{Entry, Tables};

/// Draws two healthy instances at random and picks the one with fewer calls in flight.
///
/// Calls are counted from the moment they begin until their [`CallGuard`] is finished or
/// dropped, so a caller cannot leave a count behind. Two random choices avoid the herd
/// behaviour of always taking the global minimum, and need no lock.
///
/// On an [`InstanceSet`] ([`LoadBalancer::pick`]), each instance's count is a 4-byte entry in a
/// per-service table that [`LoadBalancer::prepare`] maps to the set's positions (an instance
/// keeps its entry while it stays in the service; an entry of one that left is reused by a new
/// one once no call is in flight on it), so a pick and its guard cost the same at 10 or 100,000
/// instances, allocate nothing and read no clock.
/// [`LoadBalancer::forget`] drops a service's counts. On a slice ([`LoadBalancer::select`] then
/// [`LoadBalancer::begin`]), counts are kept by instance id; ids with no call in flight are
/// dropped now and then, in amortised O(1). The two paths count separately: use one of them
/// per balancer.
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

/// One instance's calls in flight; the observer of its calls' guards.
pub(crate) struct Load {
    id: Arc<str>,
    in_flight: AtomicUsize,
}

impl Load {
    fn new(id: &str) -> Self {
        Load {
            id: Arc::from(id),
            in_flight: AtomicUsize::new(0),
        }
    }

    #[inline]
    fn load(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a call in flight until the guard ends. The guard is untimed: a count needs no
    /// latency, so a call reads no clock.
    #[inline]
    fn begin(self: &Arc<Self>) -> CallGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        CallGuard::untimed(
            Arc::clone(self) as Arc<dyn CallObserver>,
            Arc::clone(&self.id),
        )
    }
}

/// An instance's calls in flight on the set path: an entry of the service's table.
pub(crate) struct Count(AtomicU32);

impl Entry for Count {
    type Opts = ();

    /// Calls are counted, not timed.
    #[inline]
    fn now((): &()) -> Option<u64> {
        None
    }

    fn new((): &(), _now: u64) -> Self {
        Count(AtomicU32::new(0))
    }

    fn reset(&self, (): &(), _now: u64) {
        self.0.store(0, Ordering::Relaxed);
    }

    #[inline]
    fn in_flight(&self) -> usize {
        self.0.load(Ordering::Relaxed) as usize
    }

    /// The less loaded one.
    #[inline]
    fn prefers((): &(), a: &Self, b: &Self) -> bool {
        b.0.load(Ordering::Relaxed) < a.0.load(Ordering::Relaxed)
    }

    #[inline]
    fn begin(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    #[inline]
    fn finish(&self, (): &(), _outcome: Outcome, _latency: Duration) {
        // A stray report never underflows.
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
    }
}

impl CallObserver for Load {
    fn on_finish(&self, _id: &str, _outcome: Outcome, _latency: Duration) {
        let _ = self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
    }
}

#[derive(Default)]
struct Counts {
    /// The slice path's counts, by instance id.
    in_flight: ById<Load>,
    /// The set path's counts, per service.
    sets: Tables<Count>,
}

impl std::fmt::Debug for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counts")
            .field("instances", &self.in_flight.len())
            .field("services", &self.sets.sets.len())
            .finish()
    }
}

impl Counts {
    fn load(&self, id: &str) -> usize {
        if let Some(n) = self.in_flight.with(id, Load::load) {
            return n;
        }
        self.sets.find(id, Count::in_flight).unwrap_or(0)
    }

    /// The slice path's count of `id`, created if needed (ids with no call in flight are
    /// dropped now and then: their count is 0 either way).
    fn slot(&self, id: &str) -> Arc<Load> {
        self.in_flight
            .get_or_insert(id, || Load::new(id), |l| l.load() > 0)
    }
}

impl LeastRequest {
    /// A least-request balancer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Calls currently in flight to instance `id` (on the set path, a scan of the services'
    /// instances: for diagnostics).
    pub fn in_flight(&self, id: &str) -> usize {
        self.shared.load(id)
    }

    fn prepare_set(&self, set: &InstanceSet) {
        self.shared.sets.prepare(set);
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
        let load = |s: &ServiceInfo| self.shared.in_flight.with(&s.id, Load::load).unwrap_or(0);
        let (la, lb) = (load(&instances[a]), load(&instances[b]));
        Some(&instances[if lb < la { b } else { a }])
    }

    fn begin(&self, instance: &ServiceInfo) -> CallGuard {
        self.shared.slot(&instance.id).begin()
    }

    fn select_set<'a>(
        &self,
        set: &'a InstanceSet,
        ctx: &SelectContext<'_>,
    ) -> Option<&'a Arc<ServiceInfo>> {
        self.shared.sets.select_set(set, ctx)
    }

    /// O(1): two random candidates, their counts reached by position, and a guard holding the
    /// chosen count's chunk and index (no lookup, no allocation, no clock).
    #[inline]
    fn pick<'a>(
        &self,
        set: &'a InstanceSet,
        ctx: &SelectContext<'_>,
    ) -> Option<(&'a Arc<ServiceInfo>, CallGuard)> {
        self.shared.sets.pick(set, ctx)
    }

    fn prepare(&self, set: &InstanceSet) {
        self.prepare_set(set);
    }

    fn forget(&self, service: &str) {
        self.shared.sets.forget(service);
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
        CallObserver::on_finish(
            &*lb.shared.slot("g-0"),
            "g-0",
            Outcome::Success,
            Duration::ZERO,
        );
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

    /// Starts a call on the instance at position `i` of a prepared set.
    fn begin_at(lb: &LeastRequest, set: &InstanceSet, i: usize) -> CallGuard {
        lb.shared
            .sets
            .sets
            .with(set, |t| t.begin(i))
            .expect("prepared")
    }

    #[test]
    fn set_counts_carry_over_by_id_and_leave_with_their_instance() {
        use crate::testing::writer;
        use waypost_core_types::Health::Healthy as H;
        let mut w = writer("s", &[H; 4]);
        let lb = LeastRequest::new();
        let set = Arc::clone(w.current());
        lb.prepare(&set);
        let busy = begin_at(&lb, &set, 0);
        let _busy2 = begin_at(&lb, &set, 0);
        let gone = begin_at(&lb, &set, 1);
        assert_eq!(lb.in_flight("s-0"), 2);
        for _ in 0..500 {
            let (p, g) = lb.pick(&set, &SelectContext::default()).unwrap();
            assert_ne!(p.id, "s-0");
            drop(g);
        }
        // s-1 leaves (s-3 moves into its position): s-0 keeps its count, s-1's is dropped.
        w.remove("s-1");
        let set = Arc::clone(w.current());
        lb.prepare(&set);
        assert_eq!(lb.in_flight("s-0"), 2);
        assert_eq!(lb.in_flight("s-1"), 0);
        assert!(lb
            .shared
            .sets
            .sets
            .latest("s")
            .unwrap()
            .find("s-1")
            .is_none());
        for _ in 0..500 {
            let (p, g) = lb.pick(&set, &SelectContext::default()).unwrap();
            assert_ne!(p.id, "s-0");
            g.finish(Outcome::Success);
        }
        // The guard of an instance that left still ends quietly.
        gone.finish(Outcome::Failure);
        busy.finish(Outcome::Success);
        assert_eq!(lb.in_flight("s-0"), 1);
        lb.forget("s");
        assert_eq!(lb.shared.sets.sets.len(), 0);
        assert_eq!(lb.in_flight("s-0"), 0);
    }

    #[test]
    fn slice_path_has_no_cliff_and_keeps_busy_counts() {
        // Far more ids than the old 1,024 limit: a busy instance keeps its count.
        let lb = LeastRequest::new();
        let s = set("big", &[true; 5000]);
        let busy = lb.begin(&s[7]);
        for inst in &s {
            lb.begin(inst).finish(Outcome::Success);
        }
        assert_eq!(lb.in_flight("big-7"), 1);
        assert!(lb.shared.in_flight.len() < 5000, "idle ids are dropped");
        busy.finish(Outcome::Success);
        assert_eq!(lb.in_flight("big-7"), 0);
    }
}
