//! The watch loop: source events in, target writes out, until shutdown.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{self, BoxStream, SelectAll};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};
use waypost::core::{
    Error, RegistryState, ServiceEventType, ServiceInfo, ServiceRegistry, SnapshotReason,
    WatchEvent,
};

use super::log::{message, peer, Log};
use super::metrics::{reason_name, SyncMetrics};
use super::origin::{Marks, Verdict};
use super::state::{backoff, Applied, Op, Outcome, State};
use crate::error::{CliError, CliResult, Exit};

/// A source watch item with its scope (`None`: every service; `Some(name)`: one service).
type Scoped = (Option<String>, WatchEvent);

/// How often the pending gauge is refreshed.
const GAUGE_EVERY: Duration = Duration::from_millis(250);
/// At most one "write failed" line per this interval (the others are counted into it).
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(1);
/// A reconciliation with more writes than this logs a summary instead of one line per write.
const QUIET_ABOVE: usize = 20;

/// What the engine needs.
pub struct Settings {
    pub source: Arc<dyn ServiceRegistry>,
    pub target: Arc<dyn ServiceRegistry>,
    pub one_per_endpoint: bool,
    pub marks: Marks,
    pub services: Vec<String>,
    pub timeout: Duration,
    pub concurrency: usize,
    pub status_every: Duration,
    pub log: Log,
}

/// Counters for the status line.
#[derive(Debug, Default)]
struct Stats {
    ok: u64,
    failed: u64,
    rejected: u64,
    lag_max: Option<Duration>,
    lag_last: Option<Duration>,
    failures_unlogged: u64,
    last_failure_log: Option<Instant>,
}

/// A reconciliation whose writes are summarised rather than logged one by one.
#[derive(Debug)]
struct Batch {
    started: Instant,
    writes: u64,
}

pub struct Engine {
    s: Settings,
    state: State,
    metrics: SyncMetrics,
    stats: Stats,
    /// Source instances not mirrored (id → (scope name, why)), for the status line.
    refused: HashMap<String, String>,
    target_scope: Option<HashSet<String>>,
    batch: Option<Batch>,
    target_connected: bool,
    /// The kind of state last logged per side (0 connected, 1 recovering, 2 closed).
    source_kind: Option<u8>,
    target_kind: Option<u8>,
}

impl Engine {
    pub fn new(s: Settings) -> Self {
        let target_scope = (!s.services.is_empty()).then(|| {
            s.services
                .iter()
                .map(|n| s.marks.prefix_map.map(n))
                .collect()
        });
        Engine {
            state: State::new(s.one_per_endpoint),
            metrics: SyncMetrics::new(),
            stats: Stats::default(),
            refused: HashMap::new(),
            target_scope,
            batch: None,
            target_connected: true,
            source_kind: None,
            target_kind: None,
            s,
        }
    }

    /// Runs until `shutdown` resolves (exit 0) or a registry closes (exit 1).
    pub async fn run(mut self, shutdown: impl Future<Output = &'static str>) -> CliResult {
        tokio::pin!(shutdown);
        let log = self.s.log;
        log.info(
            "starting",
            &[
                ("source", Value::String(self.s.marks.source_id.clone())),
                ("target", Value::String(self.s.marks.target_id.clone())),
                (
                    "services",
                    if self.s.services.is_empty() {
                        Value::String("all".into())
                    } else {
                        Value::String(self.s.services.join(","))
                    },
                ),
                ("ttl", Value::String(format!("{:?}", self.s.marks.ttl))),
            ],
        );
        // The watch first: its initial snapshot is the desired state the listing is
        // compared with. No write is sent before every stream's first snapshot.
        let mut watch = tokio::select! {
            w = self.open_watch() => w?,
            sig = &mut shutdown => {
                log.info("stopping", &[("signal", json!(sig))]);
                return Ok(Exit::Ok);
            }
        };
        let mut awaiting_initial: HashSet<Option<String>> = self.scopes();
        self.metrics.resync(None);
        let mut relist_at = if self.list_target("start").await {
            None
        } else {
            Some(Instant::now() + backoff("list", 1))
        };
        let mut relist_attempts = 1;
        let mut source_states = self.s.source.state_changes();
        let mut target_states = self.s.target.state_changes();
        let mut writes: JoinSet<(Op, WriteResult)> = JoinSet::new();
        let mut in_flight: HashMap<tokio::task::Id, Op> = HashMap::new();
        let now = Instant::now();
        let mut status_at = (!self.s.status_every.is_zero()).then(|| now + self.s.status_every);
        let mut gauge_at = now + GAUGE_EVERY;

        loop {
            if awaiting_initial.is_empty() {
                self.dispatch(&mut writes, &mut in_flight);
            }
            let now = Instant::now();
            let retry_at = self.state.wake(now);
            if awaiting_initial.is_empty() {
                self.dispatch(&mut writes, &mut in_flight);
            }
            let wake_at = [retry_at, status_at, relist_at, Some(gauge_at)]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(gauge_at);
            tokio::select! {
                biased;
                sig = &mut shutdown => {
                    log.info("stopping", &[
                        ("signal", json!(sig)),
                        ("mirrored", json!(self.state.held_len())),
                        ("pending", json!(self.state.pending())),
                    ]);
                    writes.abort_all();
                    return Ok(Exit::Ok);
                }
                Some(done) = writes.join_next_with_id(), if !writes.is_empty() => {
                    let (op, result) = match done {
                        Ok((task, (op, result))) => {
                            in_flight.remove(&task);
                            (op, result)
                        }
                        Err(err) => {
                            let Some(op) = in_flight.remove(&err.id()) else { continue };
                            (op, WriteResult::Failed(Error::Unavailable(format!(
                                "the write task ended: {err}"
                            ))))
                        }
                    };
                    self.finished(op, result)?;
                }
                item = watch.next() => match item {
                    Some((scope, event)) => {
                        let initial = awaiting_initial.remove(&scope);
                        if self.on_event(scope, event, initial) {
                            relist_at = Some(Instant::now());
                        }
                    }
                    None => {
                        if self.s.source.state() == RegistryState::Closed {
                            return Err(CliError::new(Exit::Failure, "the source registry closed"));
                        }
                        log.warn("source-watch-ended", &[("action", json!("reopening"))]);
                        watch = tokio::select! {
                            w = self.open_watch() => w?,
                            sig = &mut shutdown => {
                                log.info("stopping", &[("signal", json!(sig))]);
                                writes.abort_all();
                                return Ok(Exit::Ok);
                            }
                        };
                        // Each stream starts again with a snapshot, which reconciles.
                    }
                },
                Some(state) = source_states.next() => self.on_state("source", &state),
                Some(state) = target_states.next() => {
                    let was = self.target_connected;
                    self.on_state("target", &state);
                    if state == RegistryState::Closed {
                        return Err(CliError::new(Exit::Failure, "the target registry closed"));
                    }
                    if !was && self.target_connected {
                        // Back: retry now, and find out what it holds.
                        self.state.retry_now(Instant::now());
                        relist_at = Some(Instant::now());
                    }
                }
                () = sleep_until(wake_at) => {
                    let now = Instant::now();
                    if now >= gauge_at {
                        self.metrics.pending(self.state.pending());
                        gauge_at = now + GAUGE_EVERY;
                        self.check_batch(now);
                    }
                    if status_at.is_some_and(|t| now >= t) {
                        self.status();
                        status_at = Some(now + self.s.status_every);
                    }
                    if relist_at.is_some_and(|t| now >= t) {
                        if self.list_target("resync").await {
                            relist_at = None;
                            relist_attempts = 1;
                        } else {
                            relist_attempts += 1;
                            relist_at = Some(Instant::now() + backoff("list", relist_attempts));
                        }
                    }
                }
            }
        }
    }

    fn scopes(&self) -> HashSet<Option<String>> {
        if self.s.services.is_empty() {
            HashSet::from([None])
        } else {
            self.s.services.iter().cloned().map(Some).collect()
        }
    }

    /// Opens the source watch (one stream, or one per `--service`), retrying with backoff.
    async fn open_watch(&self) -> CliResult<SelectAll<BoxStream<'static, Scoped>>> {
        let mut attempts = 0;
        loop {
            match self.try_open_watch().await {
                Ok(w) => return Ok(w),
                Err(e) if e.is_closed() => {
                    return Err(CliError::new(Exit::Failure, "the source registry closed"))
                }
                Err(e) => {
                    attempts += 1;
                    self.s.log.warn(
                        "source-watch-failed",
                        &[
                            ("error", message(&e.to_string())),
                            ("attempt", json!(attempts)),
                        ],
                    );
                    tokio::time::sleep(backoff("watch", attempts)).await;
                }
            }
        }
    }

    async fn try_open_watch(&self) -> Result<SelectAll<BoxStream<'static, Scoped>>, Error> {
        let mut all = SelectAll::new();
        if self.s.services.is_empty() {
            let w = tokio::time::timeout(self.s.timeout, self.s.source.watch())
                .await
                .map_err(|_| timeout("starting the watch", self.s.timeout))??;
            all.push(w.map(|e| (None, e)).boxed());
        } else {
            for name in &self.s.services {
                let w = tokio::time::timeout(self.s.timeout, self.s.source.watch_service(name))
                    .await
                    .map_err(|_| timeout("starting the watch", self.s.timeout))??;
                let scope = Some(name.clone());
                all.push(w.map(move |e| (scope.clone(), e)).boxed());
            }
        }
        // Never empty: a SelectAll of no streams would end at once.
        all.push(stream::pending().boxed());
        Ok(all)
    }

    /// Applies one source item; returns whether the target should be listed again (a snapshot
    /// other than the very first of a stream reconciles with the target as it is now).
    fn on_event(&mut self, scope: Option<String>, event: WatchEvent, initial: bool) -> bool {
        let now = Instant::now();
        match event {
            WatchEvent::Snapshot { services, reason } => {
                let total = services.len();
                let mut mirrors = Vec::with_capacity(total);
                self.refused
                    .retain(|_, s| scope.as_ref().is_some_and(|sc| s != sc));
                for s in services {
                    if let Some(m) = self.judge(&s, false) {
                        mirrors.push((s.name.clone(), m));
                    }
                }
                let count = mirrors.len();
                let (changed, removed) = self.state.replace_scope(scope.as_deref(), mirrors, now);
                self.metrics.resync(Some(reason));
                self.start_batch(changed + removed, now);
                self.s.log.info(
                    "snapshot",
                    &[
                        ("reason", json!(reason_name(Some(reason)))),
                        ("scope", scope.as_deref().map_or(json!("all"), peer)),
                        ("instances", json!(total)),
                        ("mirrored", json!(count)),
                        ("changed", json!(changed)),
                        ("removed", json!(removed)),
                    ],
                );
                !(initial && reason == SnapshotReason::Initial)
            }
            WatchEvent::Change(change) => {
                match change.kind {
                    ServiceEventType::Created | ServiceEventType::Updated => {
                        match self.judge(&change.service, true) {
                            Some(m) => self.state.upsert(&change.service.name, m, now),
                            None => self.state.remove(&change.service.id, now),
                        }
                    }
                    ServiceEventType::Deleted => {
                        self.refused.remove(&change.service.id);
                        self.state.remove(&change.service.id, now);
                    }
                }
                false
            }
            #[allow(unreachable_patterns)] // WatchEvent is non_exhaustive
            _ => false,
        }
    }

    /// The mirror of a source instance, or `None` (refused, logged when `log_refusal`).
    fn judge(&mut self, s: &ServiceInfo, log_refusal: bool) -> Option<ServiceInfo> {
        match self.s.marks.judge(s) {
            Verdict::Mirror(m) => {
                self.refused.remove(&s.id);
                Some(m)
            }
            Verdict::FromTarget => {
                self.refused.insert(s.id.clone(), s.name.clone());
                None
            }
            Verdict::Invalid(why) => {
                let first = self.refused.insert(s.id.clone(), s.name.clone()).is_none();
                if first || log_refusal {
                    self.s.log.warn(
                        "skipped",
                        &[
                            ("id", peer(&s.id)),
                            ("service", peer(&s.name)),
                            ("why", message(&why)),
                        ],
                    );
                }
                None
            }
        }
    }

    /// Lists the target and takes what it holds; returns false when it could not.
    async fn list_target(&mut self, reason: &str) -> bool {
        let listed = tokio::time::timeout(self.s.timeout, async {
            match &self.target_scope {
                None => self.s.target.list_services().await,
                Some(names) => {
                    let mut all = Vec::new();
                    for name in names {
                        all.extend(self.s.target.list_instances(name).await?);
                    }
                    Ok(all)
                }
            }
        })
        .await
        .unwrap_or_else(|_| Err(timeout("listing the target", self.s.timeout)));
        match listed {
            Ok(list) => {
                let (ours, others): (Vec<ServiceInfo>, Vec<ServiceInfo>) =
                    list.into_iter().partition(|t| self.s.marks.owns(t));
                let others: Vec<String> = others.into_iter().map(|t| t.id).collect();
                let n_others = others.len();
                let held = self
                    .state
                    .target_listing(self.target_scope.as_ref(), ours, others);
                self.s.log.info(
                    "target-listed",
                    &[
                        ("reason", json!(reason)),
                        ("mirrors", json!(held)),
                        ("others", json!(n_others)),
                        ("pending", json!(self.state.pending())),
                    ],
                );
                true
            }
            Err(e) => {
                self.s.log.warn(
                    "target-list-failed",
                    &[
                        ("error", message(&e.to_string())),
                        ("action", json!("retrying")),
                    ],
                );
                false
            }
        }
    }

    fn dispatch(
        &mut self,
        writes: &mut JoinSet<(Op, WriteResult)>,
        in_flight: &mut HashMap<tokio::task::Id, Op>,
    ) {
        while writes.len() < self.s.concurrency {
            match self.state.next_op() {
                None => break,
                Some(Err(skip)) => {
                    if skip.rejected {
                        self.stats.rejected += 1;
                        self.metrics.write("register", "rejected");
                    }
                    self.s.log.warn(
                        "skipped",
                        &[("id", peer(&skip.id)), ("why", message(&skip.why))],
                    );
                }
                Some(Ok(op)) => {
                    let target = self.s.target.clone();
                    let limit = self.s.timeout;
                    let task_op = op.clone();
                    let handle = writes.spawn(async move {
                        let call = async {
                            match &task_op {
                                Op::Register(m) => target.register(m).await,
                                Op::Deregister(id) => target.deregister(id).await,
                            }
                        };
                        let result = match tokio::time::timeout(limit, call).await {
                            Ok(Ok(())) => WriteResult::Ok,
                            Ok(Err(e)) => WriteResult::Failed(e),
                            Err(_) => WriteResult::TimedOut,
                        };
                        (task_op, result)
                    });
                    in_flight.insert(handle.id(), op);
                }
            }
        }
    }

    fn finished(&mut self, op: Op, result: WriteResult) -> CliResult<()> {
        let now = Instant::now();
        let (outcome, label) = match result {
            WriteResult::Ok => (Outcome::Done, "success"),
            WriteResult::Failed(e) if matches!(op, Op::Deregister(_)) && e.is_not_found() => {
                (Outcome::Done, "success")
            }
            WriteResult::Failed(e) if e.is_closed() => {
                return Err(CliError::new(Exit::Failure, "the target registry closed"));
            }
            WriteResult::Failed(
                e @ (Error::InvalidInstance(_) | Error::InvalidConfig(_) | Error::Unsupported(_)),
            ) => (Outcome::Rejected(e.to_string()), "rejected"),
            WriteResult::Failed(e) => {
                self.failure_line(&op, &e.to_string(), now);
                (Outcome::Retry, "error")
            }
            WriteResult::TimedOut => {
                self.failure_line(&op, &format!("no answer within {:?}", self.s.timeout), now);
                (Outcome::Retry, "timeout")
            }
        };
        self.metrics.write(op.name(), label);
        match &outcome {
            Outcome::Done => self.stats.ok += 1,
            Outcome::Retry => self.stats.failed += 1,
            Outcome::Rejected(why) => {
                self.stats.rejected += 1;
                self.s.log.warn(
                    "skipped",
                    &[
                        ("id", peer(op.id())),
                        ("op", json!(op.name())),
                        ("why", message(why)),
                    ],
                );
            }
        }
        if let Some(Applied { op: name, lag }) = self.state.finish(&op, outcome, now) {
            if let Some(lag) = lag {
                self.metrics.lag(lag.as_secs_f64());
                self.stats.lag_last = Some(lag);
                self.stats.lag_max = Some(self.stats.lag_max.map_or(lag, |m| m.max(lag)));
            }
            match &mut self.batch {
                Some(batch) => batch.writes += 1,
                None => {
                    let mut fields = vec![("id", peer(op.id()))];
                    if let Op::Register(m) = &op {
                        fields.push(("service", peer(&m.name)));
                        fields.push(("endpoint", peer(&m.endpoint())));
                    }
                    if let Some(lag) = lag {
                        fields.push(("lag_ms", json!(millis(lag))));
                    }
                    let event = if name == "register" {
                        "mirrored"
                    } else {
                        "removed"
                    };
                    self.s.log.info(event, &fields);
                }
            }
        }
        Ok(())
    }

    fn failure_line(&mut self, op: &Op, error: &str, now: Instant) {
        let due = self
            .stats
            .last_failure_log
            .is_none_or(|t| now.saturating_duration_since(t) >= FAILURE_LOG_EVERY);
        if !due {
            self.stats.failures_unlogged += 1;
            return;
        }
        let mut fields = vec![
            ("op", json!(op.name())),
            ("id", peer(op.id())),
            ("error", message(error)),
            ("action", json!("retrying")),
        ];
        if self.stats.failures_unlogged > 0 {
            fields.push(("more_failures", json!(self.stats.failures_unlogged)));
        }
        self.s.log.warn("write-failed", &fields);
        self.stats.failures_unlogged = 0;
        self.stats.last_failure_log = Some(now);
    }

    fn on_state(&mut self, side: &str, state: &RegistryState) {
        let kind = match state {
            RegistryState::Connected => 0,
            RegistryState::Recovering { .. } => 1,
            _ => 2,
        };
        // One line per change of kind, not one per reconnection attempt.
        let last = if side == "target" {
            &mut self.target_kind
        } else {
            &mut self.source_kind
        };
        if *last == Some(kind) {
            return;
        }
        *last = Some(kind);
        if side == "target" {
            self.target_connected = state.is_connected();
        }
        match state {
            RegistryState::Connected => {
                self.s.log.info(
                    "registry-state",
                    &[("side", json!(side)), ("state", json!("connected"))],
                );
            }
            RegistryState::Recovering {
                attempts,
                last_error,
                ..
            } => self.s.log.warn(
                "registry-state",
                &[
                    ("side", json!(side)),
                    ("state", json!("recovering")),
                    ("attempts", json!(attempts)),
                    ("error", message(last_error)),
                ],
            ),
            RegistryState::Closed => self.s.log.info(
                "registry-state",
                &[("side", json!(side)), ("state", json!("closed"))],
            ),
            #[allow(unreachable_patterns)] // RegistryState is non_exhaustive
            _ => {}
        }
    }

    fn start_batch(&mut self, writes: usize, now: Instant) {
        if writes > QUIET_ABOVE && self.batch.is_none() {
            self.batch = Some(Batch {
                started: now,
                writes: 0,
            });
        }
    }

    /// Ends a summarised reconciliation when nothing is pending any more.
    fn check_batch(&mut self, now: Instant) {
        if self.batch.is_some() && self.state.pending() == 0 {
            if let Some(batch) = self.batch.take() {
                self.s.log.info(
                    "converged",
                    &[
                        ("writes", json!(batch.writes)),
                        ("mirrored", json!(self.state.held_len())),
                        (
                            "took_ms",
                            json!(millis(now.saturating_duration_since(batch.started))),
                        ),
                    ],
                );
            }
        }
    }

    fn status(&mut self) {
        let st = &mut self.stats;
        self.s.log.info(
            "status",
            &[
                ("desired", json!(self.state.desired_len())),
                ("mirrored", json!(self.state.held_len())),
                ("pending", json!(self.state.pending())),
                ("retrying", json!(self.state.waiting_len())),
                ("not_mirrored", json!(self.refused.len())),
                ("writes_ok", json!(st.ok)),
                ("writes_failed", json!(st.failed)),
                ("rejected", json!(st.rejected)),
                (
                    "lag_last_ms",
                    st.lag_last.map_or(Value::Null, |l| json!(millis(l))),
                ),
                (
                    "lag_max_ms",
                    st.lag_max.map_or(Value::Null, |l| json!(millis(l))),
                ),
            ],
        );
        // The maximum is per status interval.
        st.lag_max = None;
    }
}

/// How one write ended.
#[derive(Debug)]
enum WriteResult {
    Ok,
    Failed(Error),
    TimedOut,
}

fn timeout(what: &str, limit: Duration) -> Error {
    Error::Unavailable(format!("{what}: no answer within {limit:?}"))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
