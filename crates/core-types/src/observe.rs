//! Metrics of what every registry backend shares: state transitions, re-registrations, watch
//! events and resyncs, and the latency and errors of backend calls.
//!
//! They are emitted through the [`metrics`] facade: the application installs a recorder (an
//! exporter) and sees them; without one they cost next to nothing. Handles are taken when a
//! registry is built (its `StateCell` and watch hubs), so a recorder must be
//! installed **before** registries are built; one installed later sees nothing of the
//! registries that already exist. The names, types and labels are listed in `docs/metrics.md`
//! ("Registries (every backend)"); [`describe_metrics`] gives an exporter their descriptions.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

/// `counter{backend, state}`: transitions of a registry's state, by the state entered.
pub const STATE_TRANSITIONS: &str = "waypost_registry_state_transitions_total";
/// `gauge{backend}`: how many registries of the backend are connected (1 for the usual one
/// registry per backend: 0 while it recovers or after close).
pub const CONNECTED: &str = "waypost_registry_connected";
/// `counter{backend}`: instances registered again after an outage, a lost lease or session.
pub const REREGISTRATIONS: &str = "waypost_registry_reregistrations_total";
/// `counter{backend, event}`: watch events by type (`created`, `updated`, `deleted`,
/// `snapshot`).
pub const WATCH_EVENTS: &str = "waypost_registry_watch_events_total";
/// `counter{backend, reason}`: watch resyncs (snapshots replacing what streams knew), by reason.
pub const WATCH_RESYNCS: &str = "waypost_registry_watch_resyncs_total";
/// `histogram{backend, op}`: how long backend calls took, in seconds.
pub const CALL_DURATION: &str = "waypost_registry_call_duration_seconds";
/// `counter{backend, op}`: backend calls that returned an error.
pub const CALL_ERRORS: &str = "waypost_registry_call_errors_total";

/// Registers the descriptions (and units) of the registry metrics with the installed recorder,
/// so that an exporter can show them (Prometheus `# HELP` / `# TYPE`). Call it once, after
/// installing the recorder; calling it again is harmless.
pub fn describe_metrics() {
    describe_counter!(
        STATE_TRANSITIONS,
        Unit::Count,
        "Transitions of a registry's connection state, by the state entered (connected, recovering, closed)."
    );
    describe_gauge!(
        CONNECTED,
        Unit::Count,
        "Registries of the backend connected to their server (1 for one registry that is connected; 0 while it recovers or after it closed)."
    );
    describe_counter!(
        REREGISTRATIONS,
        Unit::Count,
        "Instances the registry registered again after an outage, a lost lease or session, or keys deleted behind its back."
    );
    describe_counter!(
        WATCH_EVENTS,
        Unit::Count,
        "Watch events: changes the registry's view applied (created, updated, deleted) and snapshots sent to watch streams."
    );
    describe_counter!(
        WATCH_RESYNCS,
        Unit::Count,
        "Watch resyncs: a stream that fell behind (lagged) or a backend that reconnected or lost history (reconnected)."
    );
    describe_histogram!(
        CALL_DURATION,
        Unit::Seconds,
        "Latency of registry calls (register, deregister, update, renew, get, list, watch), errors included."
    );
    describe_counter!(
        CALL_ERRORS,
        Unit::Count,
        "Registry calls that returned an error, whatever the error."
    );
}

/// A kind of registry call, the `op` label of [`CALL_DURATION`] and [`CALL_ERRORS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RegistryOp {
    /// `register`.
    Register,
    /// `deregister`.
    Deregister,
    /// `update`.
    Update,
    /// `renew`.
    Renew,
    /// `get_service`.
    Get,
    /// `list_services`, `list_instances`, `list_instances_shared`.
    List,
    /// Starting a watch: `watch`, `watch_service`, `watch_service_shared` (until the stream is
    /// handed out, not its lifetime).
    Watch,
}

impl RegistryOp {
    /// Every op, in declaration order.
    pub const ALL: [RegistryOp; 7] = [
        RegistryOp::Register,
        RegistryOp::Deregister,
        RegistryOp::Update,
        RegistryOp::Renew,
        RegistryOp::Get,
        RegistryOp::List,
        RegistryOp::Watch,
    ];

    /// The label value: `register`, `deregister`, `update`, `renew`, `get`, `list`, `watch`.
    pub const fn as_str(self) -> &'static str {
        match self {
            RegistryOp::Register => "register",
            RegistryOp::Deregister => "deregister",
            RegistryOp::Update => "update",
            RegistryOp::Renew => "renew",
            RegistryOp::Get => "get",
            RegistryOp::List => "list",
            RegistryOp::Watch => "watch",
        }
    }

    #[cfg(feature = "backend")]
    const fn index(self) -> usize {
        match self {
            RegistryOp::Register => 0,
            RegistryOp::Deregister => 1,
            RegistryOp::Update => 2,
            RegistryOp::Renew => 3,
            RegistryOp::Get => 4,
            RegistryOp::List => 5,
            RegistryOp::Watch => 6,
        }
    }
}

#[cfg(feature = "backend")]
pub(crate) use backend::HubMetrics;
#[cfg(feature = "backend")]
pub use backend::RegistryMetrics;

#[cfg(feature = "backend")]
mod backend {
    use std::future::Future;
    use std::time::Instant;

    use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};

    use super::*;
    use crate::{RegistryState, Result, ServiceEventType, SnapshotReason};

    /// The metric handles of one registry: taken once when the registry is built (by its
    /// [`StateCell`](crate::StateCell)), reused by every call.
    pub struct RegistryMetrics {
        backend: &'static str,
        /// Per [`RegistryOp::index`]: latency and errors.
        calls: [(Histogram, Counter); 7],
        /// connected, recovering, closed.
        transitions: [Counter; 3],
        connected: Gauge,
        reregistrations: Counter,
    }

    impl std::fmt::Debug for RegistryMetrics {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("RegistryMetrics")
                .field("backend", &self.backend)
                .finish_non_exhaustive()
        }
    }

    impl RegistryMetrics {
        /// The handles of a registry of `backend` (`memory`, `etcd`, `consul`, `nacos`,
        /// `zookeeper`), from the recorder installed now; the registry counts as connected.
        pub fn new(backend: &'static str) -> Self {
            let calls = RegistryOp::ALL.map(|op| {
                (
                    histogram!(CALL_DURATION, "backend" => backend, "op" => op.as_str()),
                    counter!(CALL_ERRORS, "backend" => backend, "op" => op.as_str()),
                )
            });
            let transitions = ["connected", "recovering", "closed"]
                .map(|state| counter!(STATE_TRANSITIONS, "backend" => backend, "state" => state));
            let connected = gauge!(CONNECTED, "backend" => backend);
            connected.increment(1.0);
            RegistryMetrics {
                backend,
                calls,
                transitions,
                connected,
                reregistrations: counter!(REREGISTRATIONS, "backend" => backend),
            }
        }

        /// The backend label.
        pub fn backend(&self) -> &'static str {
            self.backend
        }

        /// Runs one backend call of kind `op`: records its latency in [`CALL_DURATION`] and,
        /// when it fails, counts it in [`CALL_ERRORS`]. A call dropped before it finishes
        /// (cancelled) records nothing.
        ///
        /// # Errors
        /// Whatever `call` returns.
        pub async fn observe<T, F>(&self, op: RegistryOp, call: F) -> Result<T>
        where
            F: Future<Output = Result<T>>,
        {
            let started = Instant::now();
            let out = call.await;
            let (latency, errors) = &self.calls[op.index()];
            latency.record(started.elapsed().as_secs_f64());
            if out.is_err() {
                errors.increment(1);
            }
            out
        }

        /// `count` instances were registered again after an outage, a lost lease or session,
        /// or keys deleted behind the registry's back.
        pub fn reregistered(&self, count: usize) {
            if count > 0 {
                self.reregistrations
                    .increment(u64::try_from(count).unwrap_or(u64::MAX));
            }
        }

        /// The state changed to `state`.
        ///
        /// The connected gauge counts the connected registries of the backend: +1 on entering
        /// `Connected`, -1 on leaving it (for `Recovering`, or `Closed` from `Connected`).
        pub(crate) fn entered(&self, was_connected: bool, state: &RegistryState) {
            let i = match state {
                RegistryState::Connected => 0,
                RegistryState::Recovering { .. } => 1,
                RegistryState::Closed => 2,
            };
            self.transitions[i].increment(1);
            match state {
                RegistryState::Connected => self.connected.increment(1.0),
                _ if was_connected => self.connected.decrement(1.0),
                _ => {}
            }
        }

        /// A registry dropped without `close` while connected leaves the count.
        pub(crate) fn dropped_connected(&self) {
            self.connected.decrement(1.0);
        }
    }

    /// The handles of one watch hub.
    pub(crate) struct HubMetrics {
        /// created, updated, deleted, snapshot.
        events: [Counter; 4],
        /// lagged, reconnected.
        resyncs: [Counter; 2],
    }

    impl HubMetrics {
        pub(crate) fn new(backend: &'static str) -> Self {
            HubMetrics {
                events: ["created", "updated", "deleted", "snapshot"]
                    .map(|event| counter!(WATCH_EVENTS, "backend" => backend, "event" => event)),
                resyncs: ["lagged", "reconnected"].map(
                    |reason| counter!(WATCH_RESYNCS, "backend" => backend, "reason" => reason),
                ),
            }
        }

        /// The view applied one change.
        pub(crate) fn change(&self, kind: ServiceEventType) {
            let i = match kind {
                ServiceEventType::Created => 0,
                ServiceEventType::Updated => 1,
                ServiceEventType::Deleted => 2,
            };
            self.events[i].increment(1);
        }

        /// `streams` snapshots were queued for streams.
        pub(crate) fn snapshots(&self, streams: usize) {
            if streams > 0 {
                self.events[3].increment(u64::try_from(streams).unwrap_or(u64::MAX));
            }
        }

        /// One resync for `reason` (an initial fill is not one).
        pub(crate) fn resync(&self, reason: SnapshotReason) {
            match reason {
                SnapshotReason::Initial => {}
                SnapshotReason::Lagged => self.resyncs[0].increment(1),
                SnapshotReason::Reconnected => self.resyncs[1].increment(1),
            }
        }
    }
}
