//! The sync metrics (see `docs/metrics.md`, "Sync (waypost sync)").
//!
//! Emitted through the `metrics` facade. `waypost sync --metrics-addr ADDR` installs a
//! Prometheus recorder before any handle is taken (handles taken before a recorder exists are
//! no-ops) and serves the text format at `http://ADDR/metrics`; without it nothing is recorded.

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Gauge, Histogram, Unit,
};
use waypost::core::SnapshotReason;

/// Time from the receipt of a source change to the end of its write on the target.
pub const LAG: &str = "waypost_sync_lag_seconds";
/// Instances whose target state differs from the source's (queued, in flight or waiting).
pub const PENDING: &str = "waypost_sync_pending";
/// Writes to the target by `op` and `outcome`.
pub const WRITES: &str = "waypost_sync_writes_total";
/// Reconciliations by `reason`.
pub const RESYNCS: &str = "waypost_sync_resyncs_total";

/// The `op` label values.
pub const OPS: [&str; 2] = ["register", "deregister"];
/// The `outcome` label values: written; timed out (retried); failed otherwise (retried); the
/// target cannot store the instance (skipped until it changes).
pub const OUTCOMES: [&str; 4] = ["success", "timeout", "error", "rejected"];
/// The `reason` label values of [`RESYNCS`]: the start, and the source snapshots by their
/// reason.
pub const REASONS: [&str; 4] = ["start", "initial", "lagged", "reconnected"];

/// Registers the descriptions of the sync metrics with the installed recorder.
pub fn describe_metrics() {
    describe_histogram!(
        LAG,
        Unit::Seconds,
        "Time from the receipt of a source change to the end of its write on the target"
    );
    describe_gauge!(
        PENDING,
        Unit::Count,
        "Instances whose target state differs from the source's: queued, in flight or waiting \
         for a retry"
    );
    describe_counter!(
        WRITES,
        Unit::Count,
        "Writes to the target by op (register, deregister) and outcome (success, timeout, \
         error, rejected)"
    );
    describe_counter!(
        RESYNCS,
        Unit::Count,
        "Reconciliations of the target with the source, by reason (start, initial, lagged, \
         reconnected)"
    );
}

/// The handles, taken once.
#[derive(Debug)]
pub struct SyncMetrics {
    lag: Histogram,
    pending: Gauge,
    writes: Vec<Counter>,
    resyncs: Vec<Counter>,
}

impl Default for SyncMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl SyncMetrics {
    /// Takes the handles from the installed recorder (no-ops without one).
    #[must_use]
    pub fn new() -> Self {
        let mut writes = Vec::with_capacity(OPS.len() * OUTCOMES.len());
        for op in OPS {
            for outcome in OUTCOMES {
                writes.push(counter!(WRITES, "op" => op, "outcome" => outcome));
            }
        }
        SyncMetrics {
            lag: histogram!(LAG),
            pending: gauge!(PENDING),
            writes,
            resyncs: REASONS
                .iter()
                .map(|r| counter!(RESYNCS, "reason" => *r))
                .collect(),
        }
    }

    /// One write ended.
    pub fn write(&self, op: &str, outcome: &str) {
        let o = OPS.iter().position(|x| *x == op);
        let u = OUTCOMES.iter().position(|x| *x == outcome);
        if let (Some(o), Some(u)) = (o, u) {
            self.writes[o * OUTCOMES.len() + u].increment(1);
        }
    }

    /// A change reached the target after `seconds`.
    pub fn lag(&self, seconds: f64) {
        self.lag.record(seconds);
    }

    /// The number of pending instances.
    pub fn pending(&self, n: usize) {
        #[allow(clippy::cast_precision_loss)] // counts far below 2^52
        self.pending.set(n as f64);
    }

    /// A reconciliation for a source snapshot (`None`: the one at start).
    pub fn resync(&self, reason: Option<SnapshotReason>) {
        self.resyncs[reason_index(reason)].increment(1);
    }
}

/// The label value of a reconciliation reason.
#[must_use]
pub fn reason_name(reason: Option<SnapshotReason>) -> &'static str {
    REASONS[reason_index(reason)]
}

fn reason_index(reason: Option<SnapshotReason>) -> usize {
    match reason {
        None => 0,
        Some(SnapshotReason::Initial) => 1,
        Some(SnapshotReason::Lagged) => 2,
        // Reconnected, and any reason added later: the source lost track of changes.
        Some(_) => 3,
    }
}

#[cfg(test)]
mod tests {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    use metrics_util::MetricKind;

    use super::*;

    #[test]
    fn names_labels_and_values_are_as_documented() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            describe_metrics();
            let m = SyncMetrics::new();
            m.write("register", "success");
            m.write("register", "success");
            m.write("deregister", "rejected");
            m.write("bogus", "success"); // not a label value: ignored
            m.lag(0.25);
            m.pending(7);
            m.resync(None);
            m.resync(Some(SnapshotReason::Reconnected));
        });
        let mut seen = Vec::new();
        for (key, unit, _desc, value) in snapshotter.snapshot().into_vec() {
            let (kind, key) = key.into_parts();
            let mut labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            let value = match value {
                DebugValue::Counter(n) => format!("{n}"),
                DebugValue::Gauge(g) => format!("{}", g.into_inner()),
                DebugValue::Histogram(h) => {
                    format!("{:?}", h.iter().map(|v| v.into_inner()).collect::<Vec<_>>())
                }
            };
            if value == "0" {
                continue; // handles taken but never used
            }
            seen.push((kind, key.name().to_owned(), labels.join(","), value, unit));
        }
        seen.sort_by(|a, b| (&a.1, &a.2).cmp(&(&b.1, &b.2)));
        let c = MetricKind::Counter;
        assert_eq!(
            seen,
            vec![
                (
                    MetricKind::Histogram,
                    LAG.into(),
                    String::new(),
                    "[0.25]".into(),
                    Some(Unit::Seconds)
                ),
                (
                    MetricKind::Gauge,
                    PENDING.into(),
                    String::new(),
                    "7".into(),
                    Some(Unit::Count)
                ),
                (
                    c,
                    RESYNCS.into(),
                    "reason=reconnected".into(),
                    "1".into(),
                    Some(Unit::Count)
                ),
                (
                    c,
                    RESYNCS.into(),
                    "reason=start".into(),
                    "1".into(),
                    Some(Unit::Count)
                ),
                (
                    c,
                    WRITES.into(),
                    "op=deregister,outcome=rejected".into(),
                    "1".into(),
                    Some(Unit::Count)
                ),
                (
                    c,
                    WRITES.into(),
                    "op=register,outcome=success".into(),
                    "2".into(),
                    Some(Unit::Count)
                ),
            ]
        );
    }
}
