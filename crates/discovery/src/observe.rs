//! Metrics of the discovery cache, per service: lookups answered from the cache (hits) and
//! lookups that waited for the registry (misses), instances cached by health, watch resyncs by
//! reason, and how long a watch event takes to reach the cache.
//!
//! Emitted through the [`metrics`] facade. The handles live in each service's cache entry and
//! are taken when the entry is created (a service's first lookup), so a recorder installed
//! later sees only services first looked up after it was installed: install the recorder
//! before building the discovery. The table of names, types and labels is in `docs/metrics.md`
//! ("Discovery (waypost-discovery)").

use std::time::Instant;

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Gauge, Histogram, Unit,
};
use waypost_core_types::{InstanceSet, SnapshotReason};

/// `counter{service}`: lookups answered from the cache.
pub const CACHE_HITS: &str = "waypost_discovery_cache_hits_total";
/// `counter{service}`: lookups that found no cached set and waited for the registry.
pub const CACHE_MISSES: &str = "waypost_discovery_cache_misses_total";
/// `gauge{service, health}`: instances in the cache, by health.
pub const INSTANCES: &str = "waypost_discovery_instances";
/// `counter{service, reason}`: full sets that replaced the cache during a watch, by reason.
pub const WATCH_RESYNCS: &str = "waypost_discovery_watch_resyncs_total";
/// `histogram{service}`: seconds from a watch item's receipt to the cache holding its result.
pub const EVENT_TO_CACHE: &str = "waypost_discovery_event_to_cache_seconds";

/// Registers the descriptions (and units) of the discovery metrics with the installed recorder,
/// so that an exporter can show them. Call it once, after installing the recorder.
pub fn describe_metrics() {
    describe_counter!(
        CACHE_HITS,
        Unit::Count,
        "Discovery lookups answered from the cache."
    );
    describe_counter!(
        CACHE_MISSES,
        Unit::Count,
        "Discovery lookups that found no cached set and waited for the registry (the first lookup of a service, and any after a failed fill)."
    );
    describe_gauge!(
        INSTANCES,
        Unit::Count,
        "Instances of a service in the discovery cache (after the discovery's filter), by health."
    );
    describe_counter!(
        WATCH_RESYNCS,
        Unit::Count,
        "Full sets that replaced a service's cache while it was watched: lagged (the watcher fell behind), reconnected (the registry reconnected or lost history), restarted (the watch started again after a gap)."
    );
    describe_histogram!(
        EVENT_TO_CACHE,
        Unit::Seconds,
        "Time from the discovery receiving a watch item (change or snapshot) to the cache holding its result (filtered, prepared for the balancer, published)."
    );
}

const HEALTH: [&str; 3] = ["healthy", "unhealthy", "unknown"];

/// The handles of one cached service.
pub(crate) struct EntryMetrics {
    pub(crate) hits: Counter,
    pub(crate) misses: Counter,
    /// healthy, unhealthy, unknown.
    instances: [Gauge; 3],
    /// lagged, reconnected, restarted.
    resyncs: [Counter; 3],
    event_to_cache: Histogram,
}

impl EntryMetrics {
    pub(crate) fn new(service: &str) -> Self {
        let label = || service.to_owned();
        EntryMetrics {
            hits: counter!(CACHE_HITS, "service" => label()),
            misses: counter!(CACHE_MISSES, "service" => label()),
            instances: HEALTH
                .map(|health| gauge!(INSTANCES, "service" => label(), "health" => health)),
            resyncs: ["lagged", "reconnected", "restarted"]
                .map(|reason| counter!(WATCH_RESYNCS, "service" => label(), "reason" => reason)),
            event_to_cache: histogram!(EVENT_TO_CACHE, "service" => label()),
        }
    }

    /// The cache now holds `set`.
    pub(crate) fn published(&self, set: &InstanceSet) {
        let (healthy, unknown) = (set.healthy(), set.unknown());
        let unhealthy = set.len().saturating_sub(healthy).saturating_sub(unknown);
        for (gauge, n) in self.instances.iter().zip([healthy, unhealthy, unknown]) {
            gauge.set(n as f64);
        }
    }

    /// The service left the cache.
    pub(crate) fn cleared(&self) {
        for gauge in &self.instances {
            gauge.set(0.0);
        }
    }

    /// A snapshot arrived on the live watch; `restarted` when it is the first of a watch started
    /// again after a gap.
    pub(crate) fn snapshot(&self, reason: SnapshotReason, restarted: bool) {
        let i = match reason {
            SnapshotReason::Lagged => 0,
            SnapshotReason::Reconnected => 1,
            _ if restarted => 2,
            _ => return,
        };
        self.resyncs[i].increment(1);
    }

    /// The item received at `received` is in the cache.
    pub(crate) fn applied(&self, received: Instant) {
        self.event_to_cache.record(received.elapsed().as_secs_f64());
    }
}
