//! [`DiscoveryBuilder`]: the options of [`CachedDiscovery`].

use std::sync::Arc;
use std::time::Duration;

use waypost_balancer::RoundRobin;
use waypost_core_types::{Error, LoadBalancer, Result, ServiceRegistry};

use crate::{CachedDiscovery, Filter};

/// Options shared by a discovery and its background tasks.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) refresh_interval: Duration,
    pub(crate) initial_timeout: Duration,
    pub(crate) refuse_empty: bool,
    pub(crate) min_fraction: Option<f64>,
    pub(crate) filter: Filter,
    pub(crate) owns_registry: bool,
    pub(crate) idle_timeout: Duration,
    pub(crate) empty_idle_timeout: Duration,
    pub(crate) reconnect_grace: Duration,
}

/// How long instances left out by the first full set after a watch gap are still served, by
/// default.
pub const DEFAULT_RECONNECT_GRACE: Duration = Duration::from_secs(10);

/// How long a cached service nobody looks up is kept, by default.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// How long a cached service with no instance (an unknown name) nobody looks up is kept, by
/// default.
pub const DEFAULT_EMPTY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for Options {
    fn default() -> Self {
        Options {
            refresh_interval: Duration::from_secs(5),
            initial_timeout: Duration::from_secs(5),
            refuse_empty: false,
            min_fraction: None,
            filter: Filter::new(),
            owns_registry: false,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            empty_idle_timeout: DEFAULT_EMPTY_IDLE_TIMEOUT,
            reconnect_grace: DEFAULT_RECONNECT_GRACE,
        }
    }
}

impl Options {
    /// How often idle services are looked for: half the shorter idle time (at least 1 ms);
    /// `None` when both are `Duration::MAX` (nothing is ever dropped).
    pub(crate) fn sweep_tick(&self) -> Option<Duration> {
        let shortest = self.idle_timeout.min(self.empty_idle_timeout);
        (shortest != Duration::MAX).then(|| (shortest / 2).max(Duration::from_millis(1)))
    }

    /// Whether the shrink guard refuses replacing `current` instances by `next`.
    pub(crate) fn refuses(&self, current: usize, next: usize) -> bool {
        if current == 0 || next >= current {
            return false;
        }
        if next == 0 && self.refuse_empty {
            return true;
        }
        match self.min_fraction {
            Some(f) => (next as f64) < f * current as f64,
            None => false,
        }
    }
}

/// Builds a [`CachedDiscovery`].
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use waypost_balancer::LeastRequest;
/// use waypost_discovery::{CachedDiscovery, Filter};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> waypost_core_types::Result<()> {
/// let registry = Arc::new(waypost_registry_memory::MemoryRegistry::new());
/// let discovery = CachedDiscovery::builder(registry)
///     .balancer(Arc::new(LeastRequest::new()))
///     .refresh_interval(Duration::from_secs(2))
///     .refuse_empty_updates(true)
///     .filter(Filter::new().all_tags(["api"]))
///     .build()?;
/// # let _ = discovery; Ok(()) }
/// ```
#[derive(Debug)]
#[must_use]
pub struct DiscoveryBuilder {
    registry: Arc<dyn ServiceRegistry>,
    balancer: Option<Arc<dyn LoadBalancer>>,
    opts: Options,
}

impl DiscoveryBuilder {
    pub(crate) fn new(registry: Arc<dyn ServiceRegistry>) -> Self {
        DiscoveryBuilder {
            registry,
            balancer: None,
            opts: Options::default(),
        }
    }

    /// The balancer `discover_one`/`select` use (default [`RoundRobin`]).
    pub fn balancer(mut self, balancer: Arc<dyn LoadBalancer>) -> Self {
        self.balancer = Some(balancer);
        self
    }

    /// While the registry watch is down: how often to poll `list_instances` and try to watch
    /// again (default 5 s). It also bounds each of those calls. `Duration::MAX` means never:
    /// after the watch ends the cache keeps its last set. Zero is refused by
    /// [`build`](Self::build).
    pub fn refresh_interval(mut self, interval: Duration) -> Self {
        self.opts.refresh_interval = interval;
        self
    }

    /// How long the first lookup of a service waits for the registry (default 5 s).
    /// `Duration::MAX` means no limit; zero is refused by [`build`](Self::build).
    pub fn initial_timeout(mut self, timeout: Duration) -> Self {
        self.opts.initial_timeout = timeout;
        self
    }

    /// Refuse an update that would empty a non-empty cached set (for registries that push empty
    /// lists while they restart). Default off. A refused update is counted in
    /// [`CacheStats::refused_updates`](crate::CacheStats::refused_updates).
    pub fn refuse_empty_updates(mut self, refuse: bool) -> Self {
        self.opts.refuse_empty = refuse;
        self
    }

    /// Refuse a full update (snapshot or poll) that would shrink a non-empty cached set below
    /// `fraction` of its size (`0 < fraction ≤ 1`); implies refusing empty updates.
    pub fn min_shrink_fraction(mut self, fraction: f64) -> Self {
        self.opts.min_fraction = Some(fraction);
        self
    }

    /// Only cache instances that match `filter` (per-call filters are on
    /// [`CachedDiscovery::discover_with`] and [`CachedDiscovery::select_with`]).
    pub fn filter(mut self, filter: Filter) -> Self {
        self.opts.filter = filter;
        self
    }

    /// Drops a cached service, with its watch task, when nobody looked it up for `idle`
    /// (default 5 min, [`DEFAULT_IDLE_TIMEOUT`]); the next lookup fills it again. Service names
    /// can come from request input (a [`ServiceClient`] call names its service), so the cache
    /// must not keep every name it was ever asked for. The sweep runs every half of the shorter
    /// idle time, so a service goes between `idle` and 1.5 × `idle` after its last lookup.
    /// `Duration::MAX` keeps services for good; zero is refused by [`build`](Self::build).
    ///
    /// [`ServiceClient`]: https://docs.rs/waypost-client
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.opts.idle_timeout = idle;
        self
    }

    /// The same for a service whose cached set is empty, typically a name nothing is
    /// registered under (default 30 s, [`DEFAULT_EMPTY_IDLE_TIMEOUT`]). Until then, lookups of
    /// it answer `ServiceNotFound` from the cache (and its watch says when it appears).
    /// `Duration::MAX` keeps them for good; zero is refused by [`build`](Self::build).
    pub fn empty_idle_timeout(mut self, idle: Duration) -> Self {
        self.opts.empty_idle_timeout = idle;
        self
    }

    /// How long instances are still served when the first full set after a gap in the watch
    /// leaves them out (default 10 s, [`DEFAULT_RECONNECT_GRACE`]).
    ///
    /// A registry that restarts can answer with an empty (or partial) list before the services
    /// have registered again: Nacos sends its reconnect snapshot about a second before the
    /// re-registrations land. Taken as the truth, that list would make lookups fail with
    /// `ServiceNotFound` for services about to come back. So after a reconnect snapshot
    /// ([`SnapshotReason::Reconnected`](waypost_core_types::SnapshotReason::Reconnected)), the
    /// first snapshot of a watch started again, or a poll while the watch is down, the instances
    /// the new set leaves out stay in the cache (counted in
    /// [`CacheStats::stale_instances`](crate::CacheStats::stale_instances)) until they come back,
    /// a `Deleted` change confirms they are gone, or the grace ends. A snapshot after a lag, and
    /// every other change, are applied as they are. This applies to every backend.
    ///
    /// A backend may also deliver the server's empty state as a `Deleted` change just before its
    /// reconnect snapshot (the Nacos backend does, about a millisecond before). So while the
    /// grace is on, the `Deleted` change of a service's *last* cached instance takes effect
    /// 250 ms later (or at the end of a shorter grace): a reconnect snapshot meanwhile holds the
    /// instance for the grace, a `Created` change keeps it, and otherwise the set empties then.
    ///
    /// Zero turns it off (the new set replaces the old at once); `Duration::MAX` holds them
    /// until they come back or are deleted. The shrink guard
    /// ([`refuse_empty_updates`](Self::refuse_empty_updates)) still applies first.
    pub fn reconnect_grace(mut self, grace: Duration) -> Self {
        self.opts.reconnect_grace = grace;
        self
    }

    /// Close the registry when the discovery is closed (default: the caller owns it).
    pub fn owns_registry(mut self, owns: bool) -> Self {
        self.opts.owns_registry = owns;
        self
    }

    /// The discovery. Nothing runs until the first lookup of a service.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a zero interval, timeout or idle time, or a shrink fraction
    /// outside `(0, 1]`.
    pub fn build(self) -> Result<CachedDiscovery> {
        if self.opts.refresh_interval.is_zero() {
            return Err(Error::InvalidConfig(
                "discovery: refresh_interval must be greater than zero".into(),
            ));
        }
        if self.opts.initial_timeout.is_zero() {
            return Err(Error::InvalidConfig(
                "discovery: initial_timeout must be greater than zero".into(),
            ));
        }
        if self.opts.idle_timeout.is_zero() || self.opts.empty_idle_timeout.is_zero() {
            return Err(Error::InvalidConfig(
                "discovery: idle_timeout and empty_idle_timeout must be greater than zero".into(),
            ));
        }
        if let Some(f) = self.opts.min_fraction {
            if !(f > 0.0 && f <= 1.0) {
                return Err(Error::InvalidConfig(format!(
                    "discovery: min_shrink_fraction must be in (0, 1], got {f}"
                )));
            }
        }
        let balancer = self.balancer.unwrap_or_else(|| Arc::new(RoundRobin::new()));
        Ok(CachedDiscovery::from_parts(
            self.registry,
            balancer,
            self.opts,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> Options {
        Options::default()
    }

    #[test]
    fn shrink_guard() {
        let mut o = opts();
        assert!(!o.refuses(3, 0));
        o.refuse_empty = true;
        assert!(o.refuses(3, 0));
        assert!(!o.refuses(0, 0));
        assert!(!o.refuses(3, 1));
        o.min_fraction = Some(0.5);
        assert!(o.refuses(10, 4));
        assert!(!o.refuses(10, 5));
        assert!(!o.refuses(10, 12));
    }
}
