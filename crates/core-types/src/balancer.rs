//! The [`LoadBalancer`] trait, and call tracking for balancers that learn from outcomes.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::{InstanceSet, ServiceInfo};

/// How a call (or a protected operation) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// It succeeded.
    Success,
    /// It failed in a way that says something about the instance (counts as a failure).
    Failure,
    /// It ended without telling anything about the instance (cancelled, or an error the caller
    /// chose not to count).
    Ignored,
}

/// What a caller tells the balancer about one pick.
#[derive(Debug, Default, Clone, Copy)]
pub struct SelectContext<'a> {
    /// A key for consistent hashing (a user or session id). Balancers that do not hash ignore it.
    pub hash_key: Option<&'a [u8]>,
    /// Ids of instances to avoid, for example because they just failed. A balancer skips them as
    /// long as another candidate (of the same health tier) is left, and falls back to them otherwise.
    pub avoid: &'a [String],
}

impl<'a> SelectContext<'a> {
    /// A context carrying a consistent-hash key.
    pub fn with_hash_key(key: &'a [u8]) -> Self {
        SelectContext {
            hash_key: Some(key),
            avoid: &[],
        }
    }

    /// Whether `instance` is on the avoid list.
    pub fn avoids(&self, instance: &ServiceInfo) -> bool {
        self.avoid.contains(&instance.id)
    }
}

/// Receives the end of a call that a [`CallGuard`] tracked.
pub trait CallObserver: Send + Sync {
    /// A tracked call to instance `id` ended after `latency` with `outcome`.
    fn on_finish(&self, id: &str, outcome: Outcome, latency: Duration);

    /// Like [`on_finish`](Self::on_finish), with the instant the call ended on tokio's clock
    /// (the one the guard read to measure `latency`), so that an observer that needs the time
    /// does not read the clock again. [`CallGuard::finish`] and a dropped guard call this; the
    /// default calls [`on_finish`](Self::on_finish).
    fn on_finish_at(&self, id: &str, outcome: Outcome, latency: Duration, now: Instant) {
        let _ = now;
        self.on_finish(id, outcome, latency);
    }
}

/// Receives the end of calls to instances whose state the observer keeps in one table (a
/// balancer's per-instance state), each call told by the index of its instance's entry: a guard
/// made with [`CallGuard::for_slot`] holds one reference to the table and that index, so that
/// starting and ending a call costs no lookup, no allocation and no reference to the instance's
/// id.
pub trait SlotObserver: Send + Sync {
    /// A call tracked for entry `slot` ended after `latency` with `outcome`; `now` is the
    /// instant on tokio's clock the guard read to measure it (`None` for an
    /// [untimed](CallGuard::for_slot_untimed) guard, whose latency is zero, and for
    /// [`CallGuard::finish_with_latency`]).
    fn on_slot_finish(&self, slot: u32, outcome: Outcome, latency: Duration, now: Option<Instant>);

    /// A call tracked by a [stamped](CallGuard::for_slot_stamped) guard for entry `slot` ended
    /// with `outcome`; `stamp` is the value the observer gave the guard when the call began
    /// (its reading of its own clock), so that the observer measures the call on that clock
    /// and the guard reads none. The default reports an untimed end to
    /// [`on_slot_finish`](Self::on_slot_finish).
    fn on_stamped_finish(&self, slot: u32, outcome: Outcome, stamp: u64) {
        let _ = stamp;
        self.on_slot_finish(slot, outcome, Duration::ZERO, None);
    }
}

/// Tracks one call to one instance; reports its end to the balancer exactly once.
///
/// Finish it with [`CallGuard::finish`]; a guard dropped unfinished (a cancelled future, an early
/// return) reports [`Outcome::Ignored`], so a caller cannot leave an in-flight count behind.
///
/// Latency is measured on tokio's clock ([`tokio::time::Instant`]): the system's monotonic clock,
/// also outside a runtime, except in a test that paused time, where it follows
/// `tokio::time::advance` like every other timer of waypost. A
/// [stamped](CallGuard::for_slot_stamped) guard reads no clock: its observer measures the call
/// on a clock of its own (peak EWMA's time source).
#[must_use = "a call guard reports the call's outcome; finish it or let it drop when the call ends"]
pub struct CallGuard {
    inner: Option<Tracked>,
}

/// Whom to tell, about which instance, and when the call began (`None`: not timed; a stamp:
/// on the observer's own clock).
enum Tracked {
    Id(Arc<dyn CallObserver>, Arc<str>, Option<Instant>),
    Slot(Arc<dyn SlotObserver>, u32, Option<Instant>),
    Stamped(Arc<dyn SlotObserver>, u32, u64),
}

impl CallGuard {
    /// A guard that reports to nobody (for balancers that do not track calls).
    #[inline]
    pub fn noop() -> Self {
        CallGuard { inner: None }
    }

    /// A guard reporting to `observer` for instance `id`, starting now.
    pub fn new(observer: Arc<dyn CallObserver>, id: impl Into<Arc<str>>) -> Self {
        CallGuard {
            inner: Some(Tracked::Id(observer, id.into(), Some(Instant::now()))),
        }
    }

    /// A guard reporting to `observer` for instance `id` without measuring the call: the
    /// observer's [`on_finish`](CallObserver::on_finish) is told a latency of zero. For observers
    /// that only count calls (least request), it saves reading the clock twice per call.
    pub fn untimed(observer: Arc<dyn CallObserver>, id: impl Into<Arc<str>>) -> Self {
        CallGuard {
            inner: Some(Tracked::Id(observer, id.into(), None)),
        }
    }

    /// A guard reporting to `observer` for its entry `slot`, starting now.
    #[inline]
    pub fn for_slot(observer: Arc<dyn SlotObserver>, slot: u32) -> Self {
        CallGuard {
            inner: Some(Tracked::Slot(observer, slot, Some(Instant::now()))),
        }
    }

    /// A guard reporting to `observer` for its entry `slot` without measuring the call (a
    /// latency of zero, no clock read).
    #[inline]
    pub fn for_slot_untimed(observer: Arc<dyn SlotObserver>, slot: u32) -> Self {
        CallGuard {
            inner: Some(Tracked::Slot(observer, slot, None)),
        }
    }

    /// A guard reporting to `observer` for its entry `slot`, for a call the observer times on
    /// a clock of its own: the guard reads no clock and hands `stamp` (the observer's reading
    /// when the call began) back to [`SlotObserver::on_stamped_finish`] when the call ends.
    #[inline]
    pub fn for_slot_stamped(observer: Arc<dyn SlotObserver>, slot: u32, stamp: u64) -> Self {
        CallGuard {
            inner: Some(Tracked::Stamped(observer, slot, stamp)),
        }
    }

    /// Reports the outcome, measuring latency from the guard's creation (zero for an
    /// untimed guard; measured by the observer for a stamped one).
    #[inline]
    pub fn finish(mut self, outcome: Outcome) {
        if let Some(tracked) = self.inner.take() {
            report(tracked, outcome);
        }
    }

    /// Reports the outcome with a latency the caller measured.
    pub fn finish_with_latency(mut self, outcome: Outcome, latency: Duration) {
        match self.inner.take() {
            Some(Tracked::Id(obs, id, _)) => obs.on_finish(&id, outcome, latency),
            Some(Tracked::Slot(obs, slot, _) | Tracked::Stamped(obs, slot, _)) => {
                obs.on_slot_finish(slot, outcome, latency, None);
            }
            None => {}
        }
    }
}

impl Drop for CallGuard {
    #[inline]
    fn drop(&mut self) {
        if let Some(tracked) = self.inner.take() {
            report(tracked, Outcome::Ignored);
        }
    }
}

/// Tells the observer a call ended: timed from its start on tokio's clock, or untimed.
#[inline]
fn report(tracked: Tracked, outcome: Outcome) {
    match tracked {
        Tracked::Id(obs, id, Some(start)) => {
            let now = Instant::now();
            obs.on_finish_at(&id, outcome, now.saturating_duration_since(start), now);
        }
        Tracked::Id(obs, id, None) => obs.on_finish(&id, outcome, Duration::ZERO),
        Tracked::Slot(obs, slot, Some(start)) => {
            let now = Instant::now();
            obs.on_slot_finish(
                slot,
                outcome,
                now.saturating_duration_since(start),
                Some(now),
            );
        }
        Tracked::Slot(obs, slot, None) => obs.on_slot_finish(slot, outcome, Duration::ZERO, None),
        Tracked::Stamped(obs, slot, stamp) => obs.on_stamped_finish(slot, outcome, stamp),
    }
}

impl fmt::Debug for CallGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("CallGuard");
        match &self.inner {
            Some(Tracked::Id(_, id, _)) => d.field("instance", &Some(id)),
            Some(Tracked::Slot(_, slot, _) | Tracked::Stamped(_, slot, _)) => d.field("slot", slot),
            None => d.field("instance", &None::<&str>),
        };
        d.finish()
    }
}

/// Chooses one instance among several.
///
/// Every balancer picks among the `Healthy` instances, among the `Unknown` ones when no `Healthy`
/// instance can be picked, never an `Unhealthy` one
/// ([`Health::SELECTION_ORDER`](crate::Health::SELECTION_ORDER)), and returns `None` for an empty
/// or all-unhealthy list. Balancers that keep per-service state key it by the instances' service
/// name.
pub trait LoadBalancer: Send + Sync + fmt::Debug {
    /// A short name (`"round_robin"`, `"p2c_peak_ewma"`, …).
    fn name(&self) -> &'static str;

    /// Picks one instance: a healthy one, or an `Unknown` one when none is healthy.
    fn select<'a>(
        &self,
        instances: &'a [Arc<ServiceInfo>],
        ctx: &SelectContext<'_>,
    ) -> Option<&'a Arc<ServiceInfo>>;

    /// Starts tracking a call to `instance`. Balancers that learn from load or latency (least
    /// request, peak EWMA) count it in flight until the guard finishes; others return a no-op
    /// guard.
    fn begin(&self, instance: &ServiceInfo) -> CallGuard {
        let _ = instance;
        CallGuard::noop()
    }

    /// Picks one instance of a versioned [`InstanceSet`], with the same rules as
    /// [`select`](Self::select).
    ///
    /// Balancers that precompute per set (weights, rings, per-instance state) key it by the
    /// set's [`generation`](InstanceSet::generation) and override this; the default copies the
    /// set into a list and calls [`select`](Self::select), so it costs O(n).
    fn select_set<'a>(
        &self,
        set: &'a InstanceSet,
        ctx: &SelectContext<'_>,
    ) -> Option<&'a Arc<ServiceInfo>> {
        let all = set.to_vec();
        let picked = self.select(&all, ctx)?;
        let at = all.iter().position(|s| Arc::ptr_eq(s, picked))?;
        set.get(at)
    }

    /// Picks one instance of `set` and starts tracking a call to it: what a client does for
    /// every attempt. The default is [`select_set`](Self::select_set) then
    /// [`begin`](Self::begin); balancers that track calls override it to reach their
    /// per-instance state without a lookup by id.
    fn pick<'a>(
        &self,
        set: &'a InstanceSet,
        ctx: &SelectContext<'_>,
    ) -> Option<(&'a Arc<ServiceInfo>, CallGuard)> {
        let picked = self.select_set(set, ctx)?;
        Some((picked, self.begin(picked)))
    }

    /// [`pick`](Self::pick), for a caller that goes on to clone or read the picked instance
    /// (the discovery cache, the client). A balancer that knows which instances its next picks
    /// return (round robin, in a set too large for the CPU's caches) may read them ahead, so that
    /// their callers find them in the cache; a caller that only picks would pay for those reads
    /// for nothing. The default is [`pick`](Self::pick).
    fn pick_warming<'a>(
        &self,
        set: &'a InstanceSet,
        ctx: &SelectContext<'_>,
    ) -> Option<(&'a Arc<ServiceInfo>, CallGuard)> {
        self.pick(set, ctx)
    }

    /// Tells the balancer that `set` is (or is about to become) its service's current set, so
    /// that it can build what picks on it need (an alias table, a hash ring, per-instance state)
    /// off the request path. A discovery cache calls it on every change, before it publishes
    /// the set. Picks stay correct without it; the default does nothing.
    fn prepare(&self, set: &InstanceSet) {
        let _ = set;
    }

    /// Forgets what the balancer keeps for `service` (its cache entry was evicted or cleared).
    /// The default does nothing.
    fn forget(&self, service: &str) {
        let _ = service;
    }
}

impl<T: LoadBalancer + ?Sized> LoadBalancer for Arc<T> {
    fn name(&self) -> &'static str {
        (**self).name()
    }

    fn select<'a>(
        &self,
        instances: &'a [Arc<ServiceInfo>],
        ctx: &SelectContext<'_>,
    ) -> Option<&'a Arc<ServiceInfo>> {
        (**self).select(instances, ctx)
    }

    fn begin(&self, instance: &ServiceInfo) -> CallGuard {
        (**self).begin(instance)
    }

    fn select_set<'a>(
        &self,
        set: &'a InstanceSet,
        ctx: &SelectContext<'_>,
    ) -> Option<&'a Arc<ServiceInfo>> {
        (**self).select_set(set, ctx)
    }

    fn pick<'a>(
        &self,
        set: &'a InstanceSet,
        ctx: &SelectContext<'_>,
    ) -> Option<(&'a Arc<ServiceInfo>, CallGuard)> {
        (**self).pick(set, ctx)
    }

    fn pick_warming<'a>(
        &self,
        set: &'a InstanceSet,
        ctx: &SelectContext<'_>,
    ) -> Option<(&'a Arc<ServiceInfo>, CallGuard)> {
        (**self).pick_warming(set, ctx)
    }

    fn prepare(&self, set: &InstanceSet) {
        (**self).prepare(set)
    }

    fn forget(&self, service: &str) {
        (**self).forget(service)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Rec(Mutex<Vec<(String, Outcome)>>);
    impl CallObserver for Rec {
        fn on_finish(&self, id: &str, outcome: Outcome, _latency: Duration) {
            self.0.lock().unwrap().push((id.to_owned(), outcome));
        }
    }

    #[test]
    fn guard_reports_exactly_once() {
        let rec = Arc::new(Rec::default());
        CallGuard::new(rec.clone(), "a").finish(Outcome::Success);
        drop(CallGuard::new(rec.clone(), "b"));
        CallGuard::noop().finish(Outcome::Failure);
        assert_eq!(
            *rec.0.lock().unwrap(),
            vec![
                ("a".into(), Outcome::Success),
                ("b".into(), Outcome::Ignored)
            ]
        );
    }

    /// Slot guards report once, to their entry, timed (with the instant they read) or not.
    #[tokio::test(start_paused = true)]
    async fn slot_guards_report_once_with_their_slot() {
        type Report = (u32, Outcome, Duration, Option<Instant>);
        #[derive(Default)]
        struct Slots(Mutex<Vec<Report>>);
        impl SlotObserver for Slots {
            fn on_slot_finish(&self, slot: u32, o: Outcome, l: Duration, now: Option<Instant>) {
                self.0.lock().unwrap().push((slot, o, l, now));
            }
        }
        let rec = Arc::new(Slots::default());
        let start = Instant::now();
        let timed = CallGuard::for_slot(rec.clone(), 7);
        let untimed = CallGuard::for_slot_untimed(rec.clone(), 8);
        assert_eq!(format!("{timed:?}"), "CallGuard { slot: 7 }");
        tokio::time::advance(Duration::from_millis(30)).await;
        timed.finish(Outcome::Failure);
        drop(untimed);
        CallGuard::for_slot(rec.clone(), 9)
            .finish_with_latency(Outcome::Success, Duration::from_millis(5));
        let end = start + Duration::from_millis(30);
        assert_eq!(
            *rec.0.lock().unwrap(),
            vec![
                (7, Outcome::Failure, Duration::from_millis(30), Some(end)),
                (8, Outcome::Ignored, Duration::ZERO, None),
                (9, Outcome::Success, Duration::from_millis(5), None),
            ]
        );
    }

    /// A stamped guard reads no clock and hands its stamp back once: finished, dropped (as
    /// ignored), or with a caller's latency (then as a slot report without stamp). An observer
    /// that does not take stamps gets untimed reports.
    #[test]
    fn stamped_guards_hand_their_stamp_back_once() {
        type Stamped = (u32, Outcome, Option<u64>, Duration);
        #[derive(Default)]
        struct Stamps(Mutex<Vec<Stamped>>);
        impl SlotObserver for Stamps {
            fn on_slot_finish(&self, slot: u32, o: Outcome, l: Duration, now: Option<Instant>) {
                assert_eq!(now, None);
                self.0.lock().unwrap().push((slot, o, None, l));
            }
            fn on_stamped_finish(&self, slot: u32, o: Outcome, stamp: u64) {
                self.0
                    .lock()
                    .unwrap()
                    .push((slot, o, Some(stamp), Duration::ZERO));
            }
        }
        let rec = Arc::new(Stamps::default());
        let g = CallGuard::for_slot_stamped(rec.clone(), 3, 1_234);
        assert_eq!(format!("{g:?}"), "CallGuard { slot: 3 }");
        g.finish(Outcome::Failure);
        drop(CallGuard::for_slot_stamped(rec.clone(), 4, u64::MAX));
        CallGuard::for_slot_stamped(rec.clone(), 5, 9)
            .finish_with_latency(Outcome::Success, Duration::from_millis(7));
        assert_eq!(
            *rec.0.lock().unwrap(),
            vec![
                (3, Outcome::Failure, Some(1_234), Duration::ZERO),
                (4, Outcome::Ignored, Some(u64::MAX), Duration::ZERO),
                (5, Outcome::Success, None, Duration::from_millis(7)),
            ]
        );

        type Report = (u32, Outcome, Duration, Option<Instant>);
        struct Plain(Mutex<Vec<Report>>);
        impl SlotObserver for Plain {
            fn on_slot_finish(&self, slot: u32, o: Outcome, l: Duration, now: Option<Instant>) {
                self.0.lock().unwrap().push((slot, o, l, now));
            }
        }
        let plain = Arc::new(Plain(Mutex::default()));
        CallGuard::for_slot_stamped(plain.clone(), 1, 77).finish(Outcome::Success);
        assert_eq!(
            *plain.0.lock().unwrap(),
            vec![(1, Outcome::Success, Duration::ZERO, None)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn guard_measures_latency_on_tokios_clock() {
        #[derive(Default)]
        struct Latencies(Mutex<Vec<Duration>>);
        impl CallObserver for Latencies {
            fn on_finish(&self, _id: &str, _outcome: Outcome, latency: Duration) {
                self.0.lock().unwrap().push(latency);
            }
        }
        let rec = Arc::new(Latencies::default());
        let guard = CallGuard::new(rec.clone(), "a");
        tokio::time::advance(Duration::from_millis(250)).await;
        guard.finish(Outcome::Success);
        let dropped = CallGuard::new(rec.clone(), "a");
        tokio::time::advance(Duration::from_secs(2)).await;
        drop(dropped);
        assert_eq!(
            *rec.0.lock().unwrap(),
            vec![Duration::from_millis(250), Duration::from_secs(2)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn guard_passes_the_instant_it_read() {
        #[derive(Default)]
        struct At(Mutex<Vec<(Duration, Instant)>>);
        impl CallObserver for At {
            fn on_finish(&self, _id: &str, _outcome: Outcome, _latency: Duration) {
                unreachable!("the guard calls on_finish_at");
            }
            fn on_finish_at(&self, _id: &str, _o: Outcome, latency: Duration, now: Instant) {
                self.0.lock().unwrap().push((latency, now));
            }
        }
        let rec = Arc::new(At::default());
        let start = Instant::now();
        let guard = CallGuard::new(rec.clone(), "a");
        tokio::time::advance(Duration::from_millis(40)).await;
        guard.finish(Outcome::Success);
        drop(CallGuard::new(rec.clone(), "a"));
        let got = rec.0.lock().unwrap().clone();
        let end = start + Duration::from_millis(40);
        assert_eq!(
            got,
            vec![(Duration::from_millis(40), end), (Duration::ZERO, end)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn untimed_guard_reports_zero_latency_once() {
        #[derive(Default)]
        struct Seen(Mutex<Vec<(String, Outcome, Duration)>>);
        impl CallObserver for Seen {
            fn on_finish(&self, id: &str, outcome: Outcome, latency: Duration) {
                self.0
                    .lock()
                    .unwrap()
                    .push((id.to_owned(), outcome, latency));
            }
            fn on_finish_at(&self, _id: &str, _o: Outcome, _l: Duration, _now: Instant) {
                unreachable!("an untimed guard reads no clock");
            }
        }
        let rec = Arc::new(Seen::default());
        let guard = CallGuard::untimed(rec.clone(), "a");
        tokio::time::advance(Duration::from_secs(3)).await;
        guard.finish(Outcome::Failure);
        drop(CallGuard::untimed(rec.clone(), "b"));
        assert_eq!(
            *rec.0.lock().unwrap(),
            vec![
                ("a".into(), Outcome::Failure, Duration::ZERO),
                ("b".into(), Outcome::Ignored, Duration::ZERO)
            ]
        );
    }

    #[test]
    fn avoid_list() {
        let avoid = vec!["x".to_string()];
        let ctx = SelectContext {
            hash_key: None,
            avoid: &avoid,
        };
        assert!(ctx.avoids(&ServiceInfo::new("x", "s", "h", 1)));
        assert!(!ctx.avoids(&ServiceInfo::new("y", "s", "h", 1)));
    }
}
