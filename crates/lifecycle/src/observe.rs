//! The announcer's metric: the gauge `waypost_lifecycle_phase{service,phase}`, 1 for the phase
//! the service is in and 0 for the phases it left (see `docs/metrics.md`, "Lifecycle
//! (waypost-lifecycle)"). Emitted through the [`metrics`] facade at each phase change, so a
//! recorder installed any time before the announcer runs sees every phase.

use metrics::{describe_gauge, gauge, Unit};

use crate::Phase;

/// `gauge{service, phase}`: 1 for the phase the service is in, 0 for the ones it left.
pub const PHASE: &str = "waypost_lifecycle_phase";

/// Registers the description of the lifecycle metric with the installed recorder, so that an
/// exporter can show it. Call it once, after installing the recorder.
pub fn describe_metrics() {
    describe_gauge!(
        PHASE,
        Unit::Count,
        "1 for the lifecycle phase an announced service is in (starting, waiting_ready, serving, deregistering, draining, stopping, closing, stopped), 0 for the phases it left."
    );
}

/// The `phase` label of `phase`.
pub fn phase_label(phase: Phase) -> &'static str {
    match phase {
        Phase::Starting => "starting",
        Phase::WaitingReady => "waiting_ready",
        Phase::Serving => "serving",
        Phase::Deregistering => "deregistering",
        Phase::Draining => "draining",
        Phase::Stopping => "stopping",
        Phase::Closing => "closing",
        Phase::Stopped => "stopped",
    }
}

/// Service `service` moved from phase `left` to phase `entered`.
pub(crate) fn moved(service: &str, left: Phase, entered: Phase) {
    if left != entered {
        gauge!(PHASE, "service" => service.to_owned(), "phase" => phase_label(left)).set(0.0);
    }
    gauge!(PHASE, "service" => service.to_owned(), "phase" => phase_label(entered)).set(1.0);
}
