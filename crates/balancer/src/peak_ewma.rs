//! Latency-aware choice: peak EWMA with the power of two choices.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use waypost_core_types::{
    CallGuard, CallObserver, InstanceSet, LoadBalancer, Outcome, SelectContext, ServiceInfo,
};

use crate::by_id::ById;
use crate::pick;
use crate::tracked::{Entry, Tables};

/// Draws two healthy instances at random and picks the one with the lower expected cost:
/// its peak-sensitive moving average of latency times (calls in flight + 1), as in Finagle,
/// linkerd and tower.
///
/// Latency is learnt from each call's [`CallGuard`] ([`LoadBalancer::pick`] on a set, or
/// [`LoadBalancer::begin`] after a [`select`](LoadBalancer::select)): finish it (or let it
/// drop, which reports [`Outcome::Ignored`]) and the balancer records how long the call took.
/// The average jumps up at once to a slower sample (the *peak*) and decays towards faster
/// samples and, while an instance is not used, towards zero with time constant
/// [`decay`](PeakEwmaBuilder::decay), so a recovered instance is tried again. Ignored outcomes
/// only end the in-flight count. Instances never measured cost
/// [`default_rtt`](PeakEwmaBuilder::default_rtt).
///
/// A failure counts as its latency and also sets a *penalty*: the instance costs at least
/// [`failure_penalty`](PeakEwmaBuilder::failure_penalty) (default 1 s), fading with time
/// constant [`penalty_decay`](PeakEwmaBuilder::penalty_decay) (default 1 s). So one failure
/// keeps traffic away from an instance for a few seconds (about 4 s next to 20 ms instances,
/// 2.3 s next to 100 ms ones), then it is tried again; another failure renews the penalty.
///
/// On an [`InstanceSet`], each instance's estimate is one cache line in a per-service table that
/// [`LoadBalancer::prepare`] maps to the set's positions (an instance keeps its entry, penalty
/// included, while it stays in the service; an entry of one that left goes to a newcomer once no
/// call is in flight on it), so a pick and its guard cost the same at any size and allocate
/// nothing; no estimate is ever dropped because the fleet is large. The calls in flight and the
/// average share one word (the average as an `f32`: 24 bits of precision). A pick reads the
/// balancer's clock when the call begins (the guard keeps the reading) and again when it ends.
/// [`LoadBalancer::forget`] drops a service's estimates.
/// On a slice, estimates are kept by instance id; ids with no call in flight and no update for
/// five time constants are dropped now and then, in amortised O(1). The two paths keep
/// separate estimates: use one of them per balancer.
///
/// Time, for latencies and for the decay, is the balancer's [`TimeSource`]: by default tokio's
/// clock ([`tokio::time::Instant`]) when the balancer is built inside a current-thread runtime,
/// the only kind on which a test can pause time, and otherwise the CPU's time-stamp counter
/// calibrated to nanoseconds, which costs less than half a read of the system clock here and
/// does not wait for the loads before it.
#[derive(Debug, Clone)]
pub struct PeakEwma {
    shared: Arc<Shared>,
}

/// Options of [`PeakEwma`].
#[derive(Debug, Clone)]
#[must_use]
pub struct PeakEwmaBuilder {
    default_rtt: Duration,
    decay: Duration,
    failure_penalty: Duration,
    penalty_decay: Duration,
    time: TimeSource,
}

/// The clock a [`PeakEwma`] measures calls and ages its estimates with
/// ([`PeakEwmaBuilder::time_source`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TimeSource {
    /// [`Tokio`](Self::Tokio) when the balancer is built inside a current-thread tokio runtime
    /// (the only kind on which a test can pause time, as `#[tokio::test]` builds), else
    /// [`Counter`](Self::Counter). The default.
    #[default]
    Auto,
    /// tokio's clock ([`tokio::time::Instant`]): the system's monotonic clock, or the paused
    /// clock of a test. Each read is a read of the system clock (about 25 ns alone here, and it
    /// waits for the loads before it).
    Tokio,
    /// The CPU's time-stamp counter calibrated to nanoseconds against the system's monotonic
    /// clock (the [`quanta`](https://docs.rs/quanta) crate), where the CPU has an invariant
    /// one; else the system's monotonic clock. The first such balancer of the process
    /// calibrates it, in its `build` (about 1 ms here; quanta gives up after 200 ms). It does
    /// not follow tokio's paused time.
    Counter,
}

impl Default for PeakEwmaBuilder {
    fn default() -> Self {
        PeakEwmaBuilder {
            default_rtt: Duration::from_millis(30),
            decay: Duration::from_secs(10),
            failure_penalty: Duration::from_secs(1),
            penalty_decay: Duration::from_secs(1),
            time: TimeSource::Auto,
        }
    }
}

impl PeakEwmaBuilder {
    /// The latency assumed for an instance that was never measured (default 30 ms). Any value
    /// works: zero makes new instances look fastest, `Duration::MAX` slowest.
    pub fn default_rtt(mut self, rtt: Duration) -> Self {
        self.default_rtt = rtt;
        self
    }

    /// The time constant of the latency average (default 10 s). `Duration::MAX` means
    /// estimates never decay with time; zero is refused by [`build`](Self::build).
    pub fn decay(mut self, decay: Duration) -> Self {
        self.decay = decay;
        self
    }

    /// The cost a failed call gives its instance at least (default 1 s), fading with
    /// [`penalty_decay`](Self::penalty_decay). Zero: no penalty, a failure counts as its own
    /// latency; `Duration::MAX`: a failed instance is the last choice until the penalty fades.
    pub fn failure_penalty(mut self, penalty: Duration) -> Self {
        self.failure_penalty = penalty;
        self
    }

    /// The time constant with which a failure's penalty fades (default 1 s): after `t` it
    /// counts `failure_penalty × e^(-t / penalty_decay)`, so with the defaults an instance
    /// that failed once costs like a 20 ms instance again after about 4 s. Zero: the penalty
    /// lasts only the instant of the failure; `Duration::MAX`: it never fades.
    pub fn penalty_decay(mut self, decay: Duration) -> Self {
        self.penalty_decay = decay;
        self
    }

    /// The clock calls are measured and estimates aged with (default [`TimeSource::Auto`]).
    pub fn time_source(mut self, time: TimeSource) -> Self {
        self.time = time;
        self
    }

    /// The balancer.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`](waypost_core_types::Error::InvalidConfig) when `decay` is zero.
    pub fn build(self) -> waypost_core_types::Result<PeakEwma> {
        if self.decay.is_zero() {
            return Err(waypost_core_types::Error::InvalidConfig(
                "peak EWMA decay must be positive".into(),
            ));
        }
        let clock = Clock::of(self.time);
        Ok(self.build_on(clock))
    }

    fn build_on(self, clock: Clock) -> PeakEwma {
        let opts = Arc::new(Opts::new(&self, clock));
        PeakEwma {
            shared: Arc::new(Shared {
                sets: Tables::new(Arc::clone(&opts)),
                opts,
                builder: self,
                instances: ById::default(),
            }),
        }
    }
}

/// The options in the form the arithmetic uses (nanoseconds).
pub(crate) struct Opts {
    default_rtt: f64,
    /// The reciprocals of the time constants (a multiplication per decay instead of a
    /// division; infinite for a zero time constant, which decays everything at once).
    decay: f64,
    failure_penalty: f64,
    penalty_decay: f64,
    /// Idle time after which the slice path may drop an estimate.
    forget_after: Duration,
    /// Times are kept as nanoseconds since the balancer's creation, on this clock.
    clock: Clock,
}

impl Opts {
    fn new(b: &PeakEwmaBuilder, clock: Clock) -> Self {
        Opts {
            default_rtt: b.default_rtt.as_nanos() as f64,
            decay: 1.0 / b.decay.as_nanos() as f64,
            failure_penalty: b.failure_penalty.as_nanos() as f64,
            penalty_decay: 1.0 / b.penalty_decay.as_nanos() as f64,
            forget_after: b.decay.max(b.penalty_decay).saturating_mul(5),
            clock,
        }
    }

    /// Now, in nanoseconds since the balancer's creation.
    #[inline]
    fn now(&self) -> u64 {
        self.clock.now()
    }
}

/// A [`TimeSource`] once chosen, with its reading at the balancer's creation.
#[derive(Clone)]
enum Clock {
    Tokio(Instant),
    Counter(quanta::Clock, u64),
}

impl Clock {
    /// The clock `time` stands for, as of now.
    fn of(time: TimeSource) -> Self {
        let tokio = match time {
            TimeSource::Tokio => true,
            TimeSource::Counter => false,
            TimeSource::Auto => tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread),
        };
        if tokio {
            Clock::Tokio(Instant::now())
        } else {
            // quanta calibrates the counter once per process, in its first `Clock::new`.
            Clock::counter(quanta::Clock::new())
        }
    }

    fn counter(clock: quanta::Clock) -> Self {
        let base = clock.raw();
        Clock::Counter(clock, base)
    }

    /// Nanoseconds since the clock's base.
    #[inline]
    fn now(&self) -> u64 {
        match self {
            Clock::Tokio(base) => nanos(Instant::now().saturating_duration_since(*base)),
            Clock::Counter(clock, base) => clock.delta_as_nanos(*base, clock.raw()),
        }
    }

    /// [`now`](Self::now), from tokio's `now` if that is this clock.
    fn at(&self, now: Instant) -> u64 {
        match self {
            Clock::Tokio(base) => nanos(now.saturating_duration_since(*base)),
            Clock::Counter(..) => self.now(),
        }
    }
}

/// `d` in nanoseconds (saturating), without the 128-bit integer of `as_nanos`.
#[inline]
fn nanos(d: Duration) -> u64 {
    d.as_secs()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(d.subsec_nanos()))
}

/// `value` after `elapsed` nanoseconds of exponential decay with time constant `1 / rate`.
#[inline]
fn decayed(value: f64, elapsed: u64, rate: f64) -> f64 {
    if elapsed == 0 {
        value
    } else {
        value * decay_factor(elapsed as f64 * rate)
    }
}

/// `e^(-x)` for `x ≥ 0`. Between two calls to an instance, `x` is usually tiny (a few
/// milliseconds over seconds), where five terms of the series are exact to 3·10⁻¹⁰ relative and
/// cost a few multiplications instead of `exp`.
#[inline]
fn decay_factor(x: f64) -> f64 {
    if x < 1.0 / 32.0 {
        1.0 - x * (1.0 - x * (0.5 - x * (1.0 / 6.0 - x * (1.0 / 24.0))))
    } else {
        (-x).exp()
    }
}

struct Shared {
    builder: PeakEwmaBuilder,
    opts: Arc<Opts>,
    /// The slice path's estimates, by instance id.
    instances: ById<Estimate>,
    /// The set path's estimates, per service.
    sets: Tables<Cell>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("opts", &self.builder)
            .field("instances", &self.instances.len())
            .field("services", &self.sets.sets.len())
            .finish()
    }
}

/// One instance's estimate: an entry of its service's table on the set path (32 bytes, two to
/// a cache line, so that 100,000 instances take 3.2 MB).
///
/// The calls in flight and the latency average share one word, so that a pick reads both with
/// one load and a finished call updates both with one compare-and-swap: concurrent calls of one
/// instance neither wait for each other nor lose a peak.
#[repr(align(32))]
pub(crate) struct Cell {
    /// Calls in flight (low 32 bits) and the latency average in nanoseconds (`f32` bits, high
    /// 32 bits; 24 bits of precision), as of `at`.
    load: AtomicU64,
    /// When the average was last updated (nanoseconds since `opts.base`).
    at: AtomicU64,
    /// When the instance last failed ([`NEVER`] if it has not). The penalty is the full
    /// `failure_penalty` at that moment, decaying since: a new failure sets it back to the full
    /// amount, since what is left of an earlier one is never more, so the moment is all there
    /// is to keep.
    failed_at: AtomicU64,
}

/// [`Cell::failed_at`] of an instance that has not failed.
const NEVER: u64 = u64::MAX;

/// The word of a [`Cell`]: `rtt` and calls in flight.
#[inline]
fn pack(rtt: f64, in_flight: u32) -> u64 {
    u64::from((rtt as f32).to_bits()) << 32 | u64::from(in_flight)
}

/// The latency average and the calls in flight of a [`Cell`]'s word.
#[inline]
fn unpack(word: u64) -> (f64, u32) {
    (f64::from(f32::from_bits((word >> 32) as u32)), word as u32)
}

impl Cell {
    fn fresh(opts: &Opts, now: u64) -> Self {
        Cell {
            load: AtomicU64::new(pack(opts.default_rtt, 0)),
            at: AtomicU64::new(now),
            failed_at: AtomicU64::new(NEVER),
        }
    }

    /// The latency estimate at `now` (nanoseconds since `opts.base`), penalty included, and
    /// the calls in flight.
    #[inline]
    fn rtt_at(&self, opts: &Opts, now: u64) -> (f64, u32) {
        let (rtt, in_flight) = unpack(self.load.load(Ordering::Relaxed));
        let at = self.at.load(Ordering::Relaxed);
        let rtt = decayed(rtt, now.saturating_sub(at), opts.decay);
        let failed_at = self.failed_at.load(Ordering::Relaxed);
        let rtt = if failed_at != NEVER {
            let since = now.saturating_sub(failed_at);
            rtt.max(decayed(opts.failure_penalty, since, opts.penalty_decay))
        } else {
            rtt
        };
        (rtt, in_flight)
    }

    /// Expected cost of one more call: latency estimate × (calls in flight + 1).
    #[inline]
    fn cost(&self, opts: &Opts, now: u64) -> f64 {
        let (rtt, in_flight) = self.rtt_at(opts, now);
        rtt * (f64::from(in_flight) + 1.0)
    }

    /// Whether `other` costs less than `self` now. Without a failure penalty on either, the
    /// clock is not read: both averages decay at the same rate, so comparing them at the later
    /// of their update times orders them as at any later time.
    #[inline]
    fn costlier_than(&self, other: &Cell, opts: &Opts) -> bool {
        let penalised = self.failed_at.load(Ordering::Relaxed) != NEVER
            || other.failed_at.load(Ordering::Relaxed) != NEVER;
        if penalised {
            let now = opts.now();
            return other.cost(opts, now) < self.cost(opts, now);
        }
        let (at_a, at_b) = (
            self.at.load(Ordering::Relaxed),
            other.at.load(Ordering::Relaxed),
        );
        let t = at_a.max(at_b);
        let cost = |e: &Cell, at: u64| {
            let (rtt, in_flight) = unpack(e.load.load(Ordering::Relaxed));
            decayed(rtt, t - at, opts.decay) * (f64::from(in_flight) + 1.0)
        };
        cost(other, at_b) < cost(self, at_a)
    }

    fn estimate(&self, opts: &Opts, now: u64) -> Duration {
        Duration::from_nanos(self.rtt_at(opts, now).0 as u64)
    }

    /// Calls in flight.
    #[inline]
    fn in_flight(&self) -> u32 {
        self.load.load(Ordering::Relaxed) as u32
    }

    /// Whether the slice path may drop it: no call in flight and idle for five time constants.
    fn idle(&self, opts: &Opts, now: u64) -> bool {
        let failed_at = self.failed_at.load(Ordering::Relaxed);
        let last =
            self.at
                .load(Ordering::Relaxed)
                .max(if failed_at == NEVER { 0 } else { failed_at });
        let idle = now.saturating_sub(last);
        self.in_flight() == 0 && Duration::from_nanos(idle) > opts.forget_after
    }

    /// Counts a call in flight (in the low half of the word: 2^32 calls in flight at once
    /// would be needed to reach the average's bits).
    #[inline]
    fn begin(&self) {
        self.load.fetch_add(1, Ordering::Relaxed);
    }

    /// A call ended with an ignored outcome: only the in-flight count goes down.
    #[inline]
    fn release(&self) {
        let _ = self
            .load
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |word| {
                let (_, in_flight) = unpack(word);
                (in_flight > 0).then(|| word - 1)
            });
    }

    /// A call ended at `now` after `latency` nanoseconds: the in-flight count goes down, and
    /// unless the outcome is ignored, the average takes the sample (at once if it is a peak)
    /// and a failure sets the penalty.
    #[inline]
    fn finish(&self, opts: &Opts, outcome: Outcome, latency: u64, now: u64) {
        if outcome == Outcome::Ignored {
            self.release();
            return;
        }
        let sample = latency as f64;
        // The old average's weight. A sample arriving with no time passed still moves the
        // average a little, so a burst of fast answers is not ignored.
        let w = decayed(
            1.0,
            now.saturating_sub(self.at.load(Ordering::Relaxed)),
            opts.decay,
        )
        .min(0.9);
        let _ = self
            .load
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |word| {
                let (old, in_flight) = unpack(word);
                let rtt = if sample > old {
                    sample
                } else {
                    old * w + sample * (1.0 - w)
                };
                Some(pack(rtt, in_flight.saturating_sub(1)))
            });
        self.at.store(now, Ordering::Relaxed);
        if outcome == Outcome::Failure && opts.failure_penalty > 0.0 {
            self.penalise(now);
        }
    }

    /// Sets the full failure penalty at `now` (unless a concurrent failure set it later).
    #[cold]
    fn penalise(&self, now: u64) {
        let _ = self
            .failed_at
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |at| {
                (at == NEVER || at < now).then_some(now)
            });
    }
}

impl Entry for Cell {
    type Opts = Opts;

    #[inline]
    fn now(opts: &Opts) -> Option<u64> {
        Some(opts.now())
    }

    fn new(opts: &Opts, now: u64) -> Self {
        Cell::fresh(opts, now)
    }

    fn reset(&self, opts: &Opts, now: u64) {
        self.load
            .store(pack(opts.default_rtt, 0), Ordering::Relaxed);
        self.at.store(now, Ordering::Relaxed);
        self.failed_at.store(NEVER, Ordering::Relaxed);
    }

    #[inline]
    fn in_flight(&self) -> usize {
        Cell::in_flight(self) as usize
    }

    /// The cheaper one.
    #[inline]
    fn prefers(opts: &Opts, a: &Self, b: &Self) -> bool {
        a.costlier_than(b, opts)
    }

    #[inline]
    fn begin(&self) {
        Cell::begin(self);
    }

    /// A call whose caller measured its latency.
    fn finish(&self, opts: &Opts, outcome: Outcome, latency: Duration) {
        Cell::finish(self, opts, outcome, nanos(latency), opts.now());
    }

    /// A call measured on the balancer's clock from `stamp`.
    #[inline]
    fn finish_stamped(&self, opts: &Opts, outcome: Outcome, stamp: u64) {
        if outcome == Outcome::Ignored {
            self.release();
            return;
        }
        let now = opts.now();
        Cell::finish(self, opts, outcome, now.saturating_sub(stamp), now);
    }
}

/// The slice path's estimate of one instance, kept by id; the observer of its calls' guards.
pub(crate) struct Estimate {
    id: Arc<str>,
    cell: Cell,
    opts: Arc<Opts>,
}

impl Estimate {
    fn new(id: &str, opts: &Arc<Opts>, now: u64) -> Self {
        Estimate {
            id: Arc::from(id),
            cell: Cell::fresh(opts, now),
            opts: Arc::clone(opts),
        }
    }

    /// Counts a call in flight until the guard ends.
    fn begin(self: &Arc<Self>) -> CallGuard {
        self.cell.begin();
        CallGuard::new(
            Arc::clone(self) as Arc<dyn CallObserver>,
            Arc::clone(&self.id),
        )
    }
}

impl CallObserver for Estimate {
    fn on_finish(&self, _id: &str, outcome: Outcome, latency: Duration) {
        let now = self.opts.now();
        self.cell.finish(&self.opts, outcome, nanos(latency), now);
    }

    /// Uses the instant the guard read to measure the call if it is of the balancer's clock (no
    /// second read of tokio's clock).
    fn on_finish_at(&self, _id: &str, outcome: Outcome, latency: Duration, now: Instant) {
        let now = self.opts.clock.at(now);
        self.cell.finish(&self.opts, outcome, nanos(latency), now);
    }
}

impl Default for PeakEwma {
    fn default() -> Self {
        Self::new()
    }
}

impl PeakEwma {
    /// A peak-EWMA balancer with the default options.
    pub fn new() -> Self {
        Self::builder()
            .build()
            .unwrap_or_else(|_| unreachable!("the default options are valid"))
    }

    /// Options.
    pub fn builder() -> PeakEwmaBuilder {
        PeakEwmaBuilder::default()
    }

    /// The current latency estimate of instance `id` (its failure penalty included), if it
    /// was ever used (on the set path, a scan of the services' instances: for diagnostics).
    pub fn estimate(&self, id: &str) -> Option<Duration> {
        let now = self.shared.opts.now();
        let opts = &*self.shared.opts;
        if let Some(d) = self
            .shared
            .instances
            .with(id, |e| e.cell.estimate(opts, now))
        {
            return Some(d);
        }
        self.shared.sets.find(id, |e| e.estimate(opts, now))
    }

    /// The slice path's estimate of `id`, created if needed (ids with no call in flight and
    /// no update for five time constants are dropped now and then).
    fn slot(&self, id: &str) -> Arc<Estimate> {
        let now = self.shared.opts.now();
        let opts = &self.shared.opts;
        self.shared.instances.get_or_insert(
            id,
            || Estimate::new(id, opts, now),
            |e| !e.cell.idle(opts, now),
        )
    }
}

impl LoadBalancer for PeakEwma {
    fn name(&self) -> &'static str {
        "p2c_peak_ewma"
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
        let now = self.shared.opts.now();
        let default = self.shared.opts.default_rtt;
        let cost = |s: &ServiceInfo| {
            self.shared
                .instances
                .with(&s.id, |e| e.cell.cost(&self.shared.opts, now))
                .unwrap_or(default)
        };
        let (ca, cb) = (cost(&instances[a]), cost(&instances[b]));
        Some(&instances[if cb < ca { b } else { a }])
    }

    fn begin(&self, instance: &ServiceInfo) -> CallGuard {
        self.slot(&instance.id).begin()
    }

    fn select_set<'a>(
        &self,
        set: &'a InstanceSet,
        ctx: &SelectContext<'_>,
    ) -> Option<&'a Arc<ServiceInfo>> {
        self.shared.sets.select_set(set, ctx)
    }

    /// O(1): two random candidates, their estimates reached by position, and a guard holding the
    /// chosen estimate's chunk and index (no lookup, no allocation).
    #[inline]
    fn pick<'a>(
        &self,
        set: &'a InstanceSet,
        ctx: &SelectContext<'_>,
    ) -> Option<(&'a Arc<ServiceInfo>, CallGuard)> {
        self.shared.sets.pick(set, ctx)
    }

    fn prepare(&self, set: &InstanceSet) {
        self.shared.sets.prepare(set);
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
    fn avoids_a_ten_times_slower_instance() {
        // Two fast instances (10 ms) and one slow (100 ms): uniform choice would send a third of
        // the picks to the slow one; peak EWMA must send at least 90% elsewhere.
        let s = set("p", &[true; 3]);
        let lb = PeakEwma::new();
        let mut counts = [0usize; 3];
        let n = 10_000;
        for _ in 0..n {
            let p = lb.select(&s, &SelectContext::default()).unwrap();
            let i = index(p);
            counts[i] += 1;
            let latency = Duration::from_millis(if i == 2 { 100 } else { 10 });
            lb.begin(p).finish_with_latency(Outcome::Success, latency);
        }
        let away = (counts[0] + counts[1]) as f64 / n as f64;
        assert!(
            away >= 0.9,
            "only {away} away from the slow instance: {counts:?}"
        );
        // The fast ones share the rest.
        assert!(counts[0] > n / 4 && counts[1] > n / 4, "{counts:?}");
    }

    #[test]
    fn avoids_the_slow_one_with_calls_in_flight() {
        // Many calls open at once: cost = latency × (in flight + 1) still favours the fast ones.
        let s = set("q", &[true; 3]);
        let lb = PeakEwma::new();
        let mut open: std::collections::VecDeque<(CallGuard, usize)> = Default::default();
        let mut counts = [0usize; 3];
        for _ in 0..6000 {
            let p = lb.select(&s, &SelectContext::default()).unwrap();
            let i = index(p);
            counts[i] += 1;
            open.push_back((lb.begin(p), i));
            if open.len() > 6 {
                let (g, i) = open.pop_front().unwrap();
                let latency = Duration::from_millis(if i == 2 { 100 } else { 10 });
                g.finish_with_latency(Outcome::Success, latency);
            }
        }
        let slow = counts[2] as f64 / 6000.0;
        assert!(slow <= 0.1, "{counts:?}");
    }

    #[test]
    fn failures_and_estimates() {
        let s = set("f", &[true; 2]);
        let lb = PeakEwma::builder()
            .failure_penalty(Duration::from_millis(500))
            .build()
            .unwrap();
        lb.begin(&s[0])
            .finish_with_latency(Outcome::Failure, Duration::from_millis(1));
        assert!(lb.estimate("f-0").unwrap() > Duration::from_millis(400));
        lb.begin(&s[1])
            .finish_with_latency(Outcome::Success, Duration::from_millis(5));
        for _ in 0..100 {
            assert_eq!(lb.select(&s, &SelectContext::default()).unwrap().id, "f-1");
        }
        assert!(PeakEwma::builder().decay(Duration::ZERO).build().is_err());
    }

    /// Zero and `Duration::MAX` for every option and for a measured latency: no panic, and the
    /// documented meaning (MAX decay: estimates stay; MAX penalty: the failed one is avoided).
    #[tokio::test(start_paused = true)]
    async fn zero_and_max_durations() {
        let s = set("z", &[true; 2]);
        assert!(PeakEwma::builder().decay(Duration::ZERO).build().is_err());
        for rtt in [Duration::ZERO, Duration::MAX] {
            let lb = PeakEwma::builder().default_rtt(rtt).build().unwrap();
            assert!(lb.select(&s, &SelectContext::default()).is_some());
            lb.begin(&s[0]).finish(Outcome::Success);
            assert!(lb.estimate("z-0").is_some());
        }
        let lb = PeakEwma::builder()
            .decay(Duration::MAX)
            .failure_penalty(Duration::MAX)
            .penalty_decay(Duration::MAX)
            .build()
            .unwrap();
        lb.begin(&s[0])
            .finish_with_latency(Outcome::Failure, Duration::ZERO);
        lb.begin(&s[1])
            .finish_with_latency(Outcome::Success, Duration::from_millis(5));
        let fast = lb.estimate("z-1").unwrap();
        assert!(fast < Duration::from_millis(30), "{fast:?}");
        tokio::time::advance(Duration::from_secs(100 * 365 * 24 * 3600)).await;
        assert_eq!(lb.estimate("z-0"), Some(Duration::from_nanos(u64::MAX)));
        let later = lb.estimate("z-1").unwrap();
        assert!(
            fast - later < Duration::from_micros(1),
            "no decay: {later:?}"
        );
        for _ in 0..100 {
            assert_eq!(lb.select(&s, &SelectContext::default()).unwrap().id, "z-1");
        }
        let lb = PeakEwma::builder()
            .failure_penalty(Duration::ZERO)
            .build()
            .unwrap();
        lb.begin(&s[0])
            .finish_with_latency(Outcome::Failure, Duration::from_millis(2));
        // No penalty: the failure counts as its 2 ms.
        assert_eq!(lb.estimate("z-0"), Some(Duration::from_micros(27_200)));
        lb.begin(&s[1])
            .finish_with_latency(Outcome::Success, Duration::MAX);
        assert_eq!(lb.estimate("z-1"), Some(Duration::from_nanos(u64::MAX)));
    }

    #[test]
    fn an_entry_is_half_a_cache_line_and_keeps_the_latest_failure() {
        assert_eq!(std::mem::size_of::<Cell>(), 32);
        let opts = Opts::new(&PeakEwmaBuilder::default(), Clock::of(TimeSource::Tokio));
        let cell = Cell::fresh(&opts, 0);
        assert_eq!(cell.failed_at.load(Ordering::Relaxed), NEVER);
        // Two concurrent failures whose stores land out of order: the later moment stays.
        cell.penalise(2_000);
        cell.penalise(1_000);
        assert_eq!(cell.failed_at.load(Ordering::Relaxed), 2_000);
        // The full penalty (1 s by default) at the failure, e⁻¹ of it one penalty decay later.
        assert_eq!(cell.rtt_at(&opts, 2_000).0, 1e9);
        let later = cell.rtt_at(&opts, 2_000 + 1_000_000_000).0;
        assert!((later - 1e9 / std::f64::consts::E).abs() < 1.0, "{later}");
    }

    /// `Auto` is tokio's clock on a current-thread runtime (where `#[tokio::test]` can pause
    /// time), the counter elsewhere; the explicit choices are kept.
    #[test]
    fn auto_time_source_follows_the_runtime() {
        let tokio = |time| matches!(Clock::of(time), Clock::Tokio(_));
        assert!(!tokio(TimeSource::Auto));
        assert!(tokio(TimeSource::Tokio));
        let current = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        current.block_on(async {
            assert!(tokio(TimeSource::Auto));
            assert!(!tokio(TimeSource::Counter));
        });
        let multi = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        multi.block_on(async {
            assert!(!tokio(TimeSource::Auto));
            assert!(tokio(TimeSource::Tokio));
        });
    }

    /// On the counter, a pick's guard is measured from its stamp: latency, failure penalty and
    /// its decay all on the counter (here a mock one), ignored outcomes only end the call.
    #[test]
    fn the_counter_times_calls_from_the_picks_stamp() {
        let (clock, mock) = quanta::Clock::mock();
        mock.increment(Duration::from_secs(5));
        let lb = PeakEwma::builder().build_on(Clock::counter(clock));
        let s = InstanceSet::new("c", set("c", &[true; 2]));
        lb.prepare(&s);
        let (p, g) = lb.pick(&s, &SelectContext::default()).unwrap();
        let id = p.id.clone();
        mock.increment(Duration::from_millis(40));
        g.finish(Outcome::Success);
        assert_eq!(lb.estimate(&id), Some(Duration::from_millis(40)));
        let (p, g) = lb.pick(&s, &SelectContext::default()).unwrap();
        let other = p.id.clone();
        assert_ne!(other, id, "the unmeasured one (30 ms) is cheaper");
        mock.increment(Duration::from_millis(2));
        g.finish(Outcome::Failure);
        assert_eq!(lb.estimate(&other), Some(Duration::from_secs(1)));
        mock.increment(Duration::from_secs(1));
        let faded = lb.estimate(&other).unwrap().as_secs_f64();
        assert!((faded - 1.0 / std::f64::consts::E).abs() < 1e-6, "{faded}");
        // A dropped guard: no sample, the call is no longer in flight.
        let (p, g) = lb.pick(&s, &SelectContext::default()).unwrap();
        let before = lb.estimate(&p.id);
        let cell = |id: &str| lb.shared.sets.find(id, |e| e.in_flight()).unwrap();
        assert_eq!(cell(&p.id), 1);
        mock.increment(Duration::from_secs(3));
        drop(g);
        assert_eq!(cell(&p.id), 0);
        assert!(lb.estimate(&p.id) <= before);
    }

    /// The real counter measures real time.
    #[test]
    fn the_counter_measures_real_time() {
        let lb = PeakEwma::builder()
            .time_source(TimeSource::Counter)
            .build()
            .unwrap();
        let s = InstanceSet::new("t", set("t", &[true]));
        let (p, g) = lb.pick(&s, &SelectContext::default()).unwrap();
        std::thread::sleep(Duration::from_millis(60));
        g.finish(Outcome::Success);
        let measured = lb.estimate(&p.id).unwrap();
        assert!(
            (Duration::from_millis(60)..Duration::from_secs(10)).contains(&measured),
            "{measured:?}"
        );
    }

    #[test]
    fn none_and_unhealthy() {
        let lb = PeakEwma::new();
        assert!(lb.select(&[], &SelectContext::default()).is_none());
        assert!(lb
            .select(&set("n", &[false; 2]), &SelectContext::default())
            .is_none());
        let s = set("n", &[true, false]);
        assert_eq!(lb.select(&s, &SelectContext::default()).unwrap().id, "n-0");
    }

    /// Starts a call on the instance at position `i` of a prepared set.
    fn begin_at(lb: &PeakEwma, set: &InstanceSet, i: usize) -> CallGuard {
        lb.shared
            .sets
            .sets
            .with(set, |t| t.begin(i))
            .expect("prepared")
    }

    /// At 10,000 instances (past the old 1,024-id pruning that reset a failed instance's 1 s
    /// estimate to 24 ms at 2,000), a failure's penalty is kept on the set path, through calls
    /// to every other instance and a change of the set, and on the slice path.
    #[tokio::test(start_paused = true)]
    async fn failure_penalty_is_kept_at_ten_thousand_instances() {
        use crate::testing::instance;
        use waypost_core_types::Health::Healthy as H;
        let mut w = waypost_core_types::InstanceSetWriter::new("big");
        w.replace((0..10_000).map(|i| instance("big", &format!("big-{i}"), H, 100)));
        let lb = PeakEwma::new();
        let set = Arc::clone(w.current());
        lb.prepare(&set);
        let failed = set.position("big-42").unwrap();
        begin_at(&lb, &set, failed).finish_with_latency(Outcome::Failure, Duration::from_millis(3));
        for i in (0..set.len()).filter(|i| *i != failed) {
            begin_at(&lb, &set, i).finish_with_latency(Outcome::Success, Duration::from_millis(10));
        }
        w.remove("big-7");
        let set = Arc::clone(w.current());
        lb.prepare(&set);
        assert_eq!(lb.estimate("big-42"), Some(Duration::from_secs(1)));
        for _ in 0..20_000 {
            let (p, g) = lb.pick(&set, &SelectContext::default()).unwrap();
            assert_ne!(p.id, "big-42");
            g.finish_with_latency(Outcome::Success, Duration::from_millis(10));
        }
        // The slice path: 10,000 ids, one of them failed first.
        let lb = PeakEwma::new();
        let all = set.to_vec();
        lb.begin(&all[0])
            .finish_with_latency(Outcome::Failure, Duration::from_millis(3));
        for s in &all[1..] {
            lb.begin(s)
                .finish_with_latency(Outcome::Success, Duration::from_millis(10));
        }
        assert_eq!(lb.estimate(&all[0].id), Some(Duration::from_secs(1)));
    }

    /// One failure keeps traffic away for a few seconds, not a minute: with the defaults
    /// (1 s penalty fading with a 1 s time constant) next to 10 ms instances, the failed
    /// instance gets nothing for 4 s and traffic again by 5 s.
    #[tokio::test(start_paused = true)]
    async fn a_recovered_instance_gets_traffic_within_seconds() {
        let s = InstanceSet::new("r", set("r", &[true; 3]));
        let lb = PeakEwma::new();
        lb.prepare(&s);
        // All three answer in 10 ms, then r-0 fails once (in 10 ms too).
        for i in 0..3 {
            for _ in 0..10 {
                begin_at(&lb, &s, i)
                    .finish_with_latency(Outcome::Success, Duration::from_millis(10));
            }
        }
        let failed = s.position("r-0").unwrap();
        begin_at(&lb, &s, failed).finish_with_latency(Outcome::Failure, Duration::from_millis(10));
        let mut first_back = None;
        for step in 0..100 {
            // 100 ms of paused time per step, 20 calls of 10 ms each.
            let mut to_failed = 0;
            for _ in 0..20 {
                let (p, g) = lb.pick(&s, &SelectContext::default()).unwrap();
                to_failed += usize::from(p.id == "r-0");
                g.finish_with_latency(Outcome::Success, Duration::from_millis(10));
            }
            if to_failed > 0 && first_back.is_none() {
                first_back = Some(step);
            }
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        let back = Duration::from_millis(100 * first_back.expect("tried again") as u64);
        assert!(
            (Duration::from_secs(4)..=Duration::from_secs(5)).contains(&back),
            "back after {back:?}"
        );
        // A longer penalty_decay keeps it away longer, as documented.
        let lb = PeakEwma::builder()
            .penalty_decay(Duration::from_secs(10))
            .build()
            .unwrap();
        lb.prepare(&s);
        begin_at(&lb, &s, failed).finish_with_latency(Outcome::Failure, Duration::from_millis(10));
        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(lb.estimate("r-0").unwrap() > Duration::from_millis(100));
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(lb.estimate("r-0").unwrap() < Duration::from_millis(10));
    }
}
