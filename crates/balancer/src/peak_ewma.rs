//! Latency-aware choice: peak EWMA with the power of two choices.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;
use waypost_core_types::{
    CallGuard, CallObserver, LoadBalancer, Outcome, SelectContext, ServiceInfo,
};

use crate::pick;
use crate::state::StateMap;

/// Above this many tracked instances, idle entries are dropped when a new one is added.
const PRUNE_ABOVE: usize = 1024;

/// Draws two healthy instances at random and picks the one with the lower expected cost:
/// its peak-sensitive moving average of latency times (calls in flight + 1), as in Finagle,
/// linkerd and tower.
///
/// Latency is learnt through [`LoadBalancer::begin`]: finish the returned [`CallGuard`] (or let it
/// drop, which reports [`Outcome::Ignored`]) and the balancer records how long the call took.
/// The average jumps up at once to a slower sample (the *peak*) and decays towards faster samples
/// and, while an instance is not used, towards zero with time constant
/// [`decay`](PeakEwmaBuilder::decay), so a recovered instance is tried again. Failures count as
/// at least [`failure_penalty`](PeakEwmaBuilder::failure_penalty); ignored outcomes only end the
/// in-flight count. Instances never measured cost [`default_rtt`](PeakEwmaBuilder::default_rtt).
///
/// Time, for latencies and for the decay, is tokio's clock ([`tokio::time::Instant`]), as for
/// [`CallGuard`]: the system's monotonic clock, or the paused clock of a test.
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
}

impl Default for PeakEwmaBuilder {
    fn default() -> Self {
        PeakEwmaBuilder {
            default_rtt: Duration::from_millis(30),
            decay: Duration::from_secs(10),
            failure_penalty: Duration::from_secs(1),
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

    /// The time constant of the moving average (default 10 s). `Duration::MAX` means estimates
    /// never decay with time; zero is refused by [`build`](Self::build).
    pub fn decay(mut self, decay: Duration) -> Self {
        self.decay = decay;
        self
    }

    /// The latency a failed call counts as at least (default 1 s). Zero counts a failure as its
    /// own latency; `Duration::MAX` makes a failed instance the last choice until faster
    /// samples bring its estimate down.
    pub fn failure_penalty(mut self, penalty: Duration) -> Self {
        self.failure_penalty = penalty;
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
        Ok(PeakEwma {
            shared: Arc::new(Shared {
                opts: self,
                instances: StateMap::default(),
            }),
        })
    }
}

struct Shared {
    opts: PeakEwmaBuilder,
    instances: StateMap<Estimate>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("opts", &self.opts)
            .field("instances", &self.instances.len())
            .finish()
    }
}

struct Estimate {
    in_flight: AtomicUsize,
    /// (average latency in nanoseconds, when it was last updated)
    rtt: Mutex<(f64, Instant)>,
}

impl Estimate {
    fn new(default_rtt: Duration, now: Instant) -> Self {
        Estimate {
            in_flight: AtomicUsize::new(0),
            rtt: Mutex::new((default_rtt.as_nanos() as f64, now)),
        }
    }
}

impl Shared {
    fn decayed(&self, rtt: f64, since: Instant, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(since).as_nanos() as f64;
        rtt * (-elapsed / self.opts.decay.as_nanos() as f64).exp()
    }

    fn cost(&self, e: Option<&Estimate>, now: Instant) -> f64 {
        match e {
            Some(e) => {
                let (rtt, at) = *e.rtt.lock();
                let pending = e.in_flight.load(Ordering::Relaxed) as f64;
                self.decayed(rtt, at, now) * (pending + 1.0)
            }
            None => self.opts.default_rtt.as_nanos() as f64,
        }
    }
}

impl CallObserver for Shared {
    fn on_finish(&self, id: &str, outcome: Outcome, latency: Duration) {
        self.instances.with(id, |e| {
            let _ = e
                .in_flight
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
            let sample = match outcome {
                Outcome::Ignored => return,
                Outcome::Success => latency,
                Outcome::Failure => latency.max(self.opts.failure_penalty),
            }
            .as_nanos() as f64;
            let now = Instant::now();
            let mut g = e.rtt.lock();
            let (rtt, at) = *g;
            let next = if sample > rtt {
                sample
            } else {
                let elapsed = now.saturating_duration_since(at).as_nanos() as f64;
                let w = (-elapsed / self.opts.decay.as_nanos() as f64).exp();
                // A sample arriving with no time passed still moves the average a little, so a
                // burst of fast answers is not ignored.
                let w = w.min(0.9);
                rtt * w + sample * (1.0 - w)
            };
            *g = (next, now);
        });
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

    /// The current latency estimate of instance `id`, if it was ever used.
    pub fn estimate(&self, id: &str) -> Option<Duration> {
        let now = Instant::now();
        self.shared.instances.with(id, |e| {
            let (rtt, at) = *e.rtt.lock();
            Duration::from_nanos(self.shared.decayed(rtt, at, now) as u64)
        })
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
        let now = Instant::now();
        let (ca, cb) = self
            .shared
            .instances
            .with2(&instances[a].id, &instances[b].id, |ea, eb| {
                (self.shared.cost(ea, now), self.shared.cost(eb, now))
            });
        Some(&instances[if cb < ca { b } else { a }])
    }

    fn begin(&self, instance: &ServiceInfo) -> CallGuard {
        let map = &self.shared.instances;
        if map.with(&instance.id, |_| ()).is_none() && map.len() >= PRUNE_ABOVE {
            map.retain(|_, e| e.in_flight.load(Ordering::Relaxed) > 0);
        }
        let default_rtt = self.shared.opts.default_rtt;
        map.with_or_insert(
            &instance.id,
            || Estimate::new(default_rtt, Instant::now()),
            |e| e.in_flight.fetch_add(1, Ordering::Relaxed),
        );
        CallGuard::new(self.shared.clone(), instance.id.as_str())
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
    fn none_and_unhealthy() {
        let lb = PeakEwma::new();
        assert!(lb.select(&[], &SelectContext::default()).is_none());
        assert!(lb
            .select(&set("n", &[false; 2]), &SelectContext::default())
            .is_none());
        let s = set("n", &[true, false]);
        assert_eq!(lb.select(&s, &SelectContext::default()).unwrap().id, "n-0");
    }
}
