//! The desired state and what the target holds: the syncer converges the second to the first.
//!
//! The source's watch sets the desired state (one mirror per instance id); a target listing
//! says which of this syncer's mirrors the target holds and with which fingerprint. An id whose
//! two sides differ is pending, and the writer sends the one write that makes them equal,
//! computed from the latest state when it is sent. So a change that arrives while the target is
//! down is not queued behind others: only the newest desired state of each id is written, and
//! nothing is lost when writes fail and are retried.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use waypost::core::ServiceInfo;

use super::origin::META_HASH;

/// One write to the target.
#[derive(Debug, Clone)]
pub enum Op {
    /// Register (upsert) this mirror.
    Register(Arc<ServiceInfo>),
    /// Deregister the mirror with this id.
    Deregister(String),
}

impl Op {
    /// `register` or `deregister`, for logs and metrics.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Op::Register(_) => "register",
            Op::Deregister(_) => "deregister",
        }
    }

    /// The instance id written.
    #[must_use]
    pub fn id(&self) -> &str {
        match self {
            Op::Register(s) => &s.id,
            Op::Deregister(id) => id,
        }
    }
}

/// How a write ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done (a deregistration of an instance already gone counts as done).
    Done,
    /// Failed in a way that trying again can fix (the target is down, a timeout).
    Retry,
    /// The target cannot store this instance; not tried again until it changes.
    Rejected(String),
}

/// A mirror wanted on the target.
#[derive(Debug, Clone)]
struct Want {
    mirror: Arc<ServiceInfo>,
    /// The source service name (scope of the source snapshot that set it).
    source_name: String,
}

/// A mirror of this syncer on the target.
#[derive(Debug, Clone)]
struct Held {
    name: String,
    hash: String,
    /// Registered through this process's target registry (so its liveness is ours). Mirrors
    /// found on the target at start belong to an earlier syncer's lease or session and must be
    /// registered again, else they would expire.
    live: bool,
}

/// What a converged id looked like, for logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The write.
    pub op: &'static str,
    /// Time from the receipt of the source change to the end of its write, when a source
    /// change was waiting for it.
    pub lag: Option<Duration>,
}

/// The desired state, the target's, and the schedule of writes between them.
#[derive(Debug)]
pub struct State {
    desired: HashMap<String, Want>,
    held: HashMap<String, Held>,
    /// Ids on the target that are not ours (registered by someone else): never touched.
    foreign: HashSet<String>,
    /// Ids the target refused, with the fingerprint refused.
    rejected: HashMap<String, String>,
    /// When the oldest source change not yet written for an id was received.
    since: HashMap<String, Instant>,
    /// Ids to look at, in order.
    ready: VecDeque<String>,
    queued: HashSet<String>,
    in_flight: HashSet<String>,
    /// Ids waiting for a retry: (when, attempts so far). Kept until a write succeeds, for the
    /// backoff.
    waiting: HashMap<String, (Instant, u32)>,
    /// The retry times in order (entries whose time no longer matches `waiting` are stale).
    timers: BTreeSet<(Instant, String)>,
    /// `(name, address, port)` → id, when the target keeps one instance per endpoint (Nacos).
    endpoints: Option<HashMap<(String, String, u16), String>>,
    /// Foreign conflicts already reported.
    reported: HashSet<String>,
}

/// A desired mirror that is not written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    /// The instance id.
    pub id: String,
    /// Why, for the log.
    pub why: String,
    /// Whether it counts as a refused write (`rejected`) rather than a conflict with an
    /// instance someone else registered on the target.
    pub rejected: bool,
}

/// Why a conflicting id is not mirrored.
pub const CONFLICT: &str =
    "the target has an instance with this id that no syncer of this source mirrored";

/// First retry delay of a failed write.
pub const RETRY_FIRST: Duration = Duration::from_millis(100);
/// Longest retry delay.
pub const RETRY_MAX: Duration = Duration::from_secs(5);

impl State {
    /// An empty state. `one_per_endpoint`: the target keys instances by service and endpoint
    /// (Nacos), so two ids at one endpoint of a service cannot both be mirrored.
    #[must_use]
    pub fn new(one_per_endpoint: bool) -> Self {
        State {
            desired: HashMap::new(),
            held: HashMap::new(),
            foreign: HashSet::new(),
            rejected: HashMap::new(),
            since: HashMap::new(),
            ready: VecDeque::new(),
            queued: HashSet::new(),
            in_flight: HashSet::new(),
            waiting: HashMap::new(),
            timers: BTreeSet::new(),
            endpoints: one_per_endpoint.then(HashMap::new),
            reported: HashSet::new(),
        }
    }

    /// How many mirrors are wanted.
    #[must_use]
    pub fn desired_len(&self) -> usize {
        self.desired.len()
    }

    /// How many of this syncer's mirrors the target holds (as far as it knows).
    #[must_use]
    pub fn held_len(&self) -> usize {
        self.held.len()
    }

    /// Ids whose target state differs from the desired one (queued, in flight or waiting).
    /// Linear in the queue: call it for a gauge or a status line, not per event.
    #[must_use]
    pub fn pending(&self) -> usize {
        let mut ids: HashSet<&str> = self.in_flight.iter().map(String::as_str).collect();
        ids.extend(self.waiting.keys().map(String::as_str));
        for id in &self.ready {
            if !ids.contains(id.as_str()) && self.op_for(id).is_some() {
                ids.insert(id);
            }
        }
        ids.len()
    }

    /// Ids waiting for a retry.
    #[must_use]
    pub fn waiting_len(&self) -> usize {
        self.waiting.len()
    }

    /// Sets the mirror of one source instance (a Created/Updated change, or part of a snapshot).
    pub fn upsert(&mut self, source_name: &str, mirror: ServiceInfo, now: Instant) {
        let id = mirror.id.clone();
        if let Some(old) = self.desired.get(&id) {
            if old.mirror.metadata.get(META_HASH) == mirror.metadata.get(META_HASH) {
                return;
            }
            self.release_endpoint(&id);
        }
        self.since.entry(id.clone()).or_insert(now);
        self.desired.insert(
            id.clone(),
            Want {
                mirror: Arc::new(mirror),
                source_name: source_name.to_owned(),
            },
        );
        self.mark(&id);
    }

    /// Removes the mirror of one source instance (a Deleted change).
    pub fn remove(&mut self, id: &str, now: Instant) {
        if self.desired.remove(id).is_some() {
            self.release_endpoint(id);
            self.since.entry(id.to_owned()).or_insert(now);
            self.mark(id);
        }
    }

    /// Replaces the desired mirrors of one source scope (`None`: every service; `Some(name)`:
    /// one service) with `mirrors`, as a source snapshot says. Returns (added or changed,
    /// removed).
    pub fn replace_scope(
        &mut self,
        scope: Option<&str>,
        mirrors: Vec<(String, ServiceInfo)>,
        now: Instant,
    ) -> (usize, usize) {
        let keep: HashSet<&str> = mirrors.iter().map(|(_, m)| m.id.as_str()).collect();
        let gone: Vec<String> = self
            .desired
            .iter()
            .filter(|(id, w)| {
                scope.is_none_or(|s| w.source_name == s) && !keep.contains(id.as_str())
            })
            .map(|(id, _)| id.clone())
            .collect();
        drop(keep);
        for id in &gone {
            self.remove(id, now);
        }
        let mut changed = 0;
        for (source_name, mirror) in mirrors {
            let before = self
                .desired
                .get(&mirror.id)
                .and_then(|w| w.mirror.metadata.get(META_HASH).cloned());
            let differs = before.as_ref() != mirror.metadata.get(META_HASH);
            self.upsert(&source_name, mirror, now);
            changed += usize::from(differs);
        }
        (changed, gone.len())
    }

    /// Takes a listing of the target in `scope` (`None`: everything; `Some(names)`: those
    /// target services): `ours` are this syncer's mirrors there, `others` the ids of every
    /// other instance there. Returns how many of our mirrors the listing showed.
    pub fn target_listing(
        &mut self,
        scope: Option<&HashSet<String>>,
        ours: Vec<ServiceInfo>,
        others: Vec<String>,
    ) -> usize {
        let in_scope = |name: &str| scope.is_none_or(|s| s.contains(name));
        let mut seen = HashSet::with_capacity(ours.len());
        for t in ours {
            let hash = t.metadata.get(META_HASH).cloned().unwrap_or_default();
            seen.insert(t.id.clone());
            let live = self.held.get(&t.id).is_some_and(|h| h.live);
            self.held.insert(
                t.id.clone(),
                Held {
                    name: t.name,
                    hash,
                    live,
                },
            );
            self.foreign.remove(&t.id);
        }
        let count = seen.len();
        // Ours in scope that the listing lacks are gone (expired, deleted by someone).
        let vanished: Vec<String> = self
            .held
            .iter()
            .filter(|(id, h)| in_scope(&h.name) && !seen.contains(id.as_str()))
            .map(|(id, _)| id.clone())
            .collect();
        for id in vanished {
            self.held.remove(&id);
        }
        // Only desired ids (in scope) are ever checked against it, so the listing replaces it.
        self.foreign = others.into_iter().filter(|id| !seen.contains(id)).collect();
        self.reported.retain(|id| self.foreign.contains(id));
        let all: Vec<String> = self
            .desired
            .keys()
            .chain(self.held.keys())
            .cloned()
            .collect();
        for id in all {
            self.mark(&id);
        }
        count
    }

    /// Whether `id` is held by someone else on the target (a conflict: never overwritten).
    #[must_use]
    pub fn is_foreign(&self, id: &str) -> bool {
        self.foreign.contains(id) && !self.held.contains_key(id)
    }

    fn release_endpoint(&mut self, id: &str) {
        if let Some(map) = &mut self.endpoints {
            map.retain(|_, owner| owner != id);
        }
    }

    /// The write that would make `id` converge, if any.
    fn op_for(&self, id: &str) -> Option<Op> {
        match (self.desired.get(id), self.held.get(id)) {
            (Some(w), held) => {
                let hash = w.mirror.metadata.get(META_HASH)?;
                if held.is_some_and(|h| h.live && h.hash == *hash) {
                    return None;
                }
                if held.is_none() && self.foreign.contains(id) {
                    return None;
                }
                if self.rejected.get(id) == Some(hash) {
                    return None;
                }
                Some(Op::Register(w.mirror.clone()))
            }
            (None, Some(_)) => Some(Op::Deregister(id.to_owned())),
            (None, None) => None,
        }
    }

    fn mark(&mut self, id: &str) {
        if self.in_flight.contains(id) || self.waiting.contains_key(id) {
            return;
        }
        if self.queued.insert(id.to_owned()) {
            self.ready.push_back(id.to_owned());
        }
    }

    /// Ids whose retry time has come go back to the queue; returns the next retry time.
    pub fn wake(&mut self, now: Instant) -> Option<Instant> {
        while let Some((at, _)) = self.timers.first() {
            if *at > now {
                break;
            }
            let Some((at, id)) = self.timers.pop_first() else {
                break;
            };
            let current = self.waiting.get(&id).is_some_and(|(when, _)| *when == at);
            if current && !self.in_flight.contains(&id) && self.queued.insert(id.clone()) {
                self.ready.push_back(id);
            }
        }
        self.timers.first().map(|(at, _)| *at)
    }

    /// The next write to send, if any id needs one and none is in flight for it. A Register
    /// that collides with another desired instance at the same endpoint on a one-per-endpoint
    /// target, and (once) a desired id that a foreign target instance holds, are returned as
    /// `Err`: not written.
    pub fn next_op(&mut self) -> Option<Result<Op, Skip>> {
        while let Some(id) = self.ready.pop_front() {
            self.queued.remove(&id);
            if self.in_flight.contains(&id) {
                continue;
            }
            let Some(op) = self.op_for(&id) else {
                // Converged, moot or blocked: nothing to wait for any more.
                self.waiting.remove(&id);
                self.since.remove(&id);
                if self.desired.contains_key(&id)
                    && self.is_foreign(&id)
                    && self.reported.insert(id.clone())
                {
                    return Some(Err(Skip {
                        id,
                        why: CONFLICT.to_owned(),
                        rejected: false,
                    }));
                }
                continue;
            };
            if let (Op::Register(m), Some(map)) = (&op, &mut self.endpoints) {
                let key = (m.name.clone(), m.address.clone(), m.port);
                match map.get(&key) {
                    Some(owner) if owner != &id && self.desired.contains_key(owner) => {
                        let why = format!(
                            "the target keeps one instance per address and port of a service, \
                             and {owner} is already mirrored at {}",
                            m.endpoint()
                        );
                        let hash = m.metadata.get(META_HASH).cloned().unwrap_or_default();
                        self.rejected.insert(id.clone(), hash);
                        self.since.remove(&id);
                        return Some(Err(Skip {
                            id,
                            why,
                            rejected: true,
                        }));
                    }
                    _ => {
                        map.insert(key, id.clone());
                    }
                }
            }
            self.in_flight.insert(id);
            return Some(Ok(op));
        }
        None
    }

    /// Records how a write ended. Returns what converged (for the lag metric and logs) when the
    /// write brought the id to its desired state; `now` is when the write ended.
    pub fn finish(&mut self, op: &Op, outcome: Outcome, now: Instant) -> Option<Applied> {
        let id = op.id().to_owned();
        self.in_flight.remove(&id);
        match outcome {
            Outcome::Done => {
                self.waiting.remove(&id);
                match op {
                    Op::Register(m) => {
                        self.rejected.remove(&id);
                        self.held.insert(
                            id.clone(),
                            Held {
                                name: m.name.clone(),
                                hash: m.metadata.get(META_HASH).cloned().unwrap_or_default(),
                                live: true,
                            },
                        );
                    }
                    Op::Deregister(_) => {
                        self.held.remove(&id);
                    }
                }
                if self.op_for(&id).is_some() {
                    // Changed again while the write was in flight.
                    self.mark(&id);
                    return None;
                }
                let lag = self
                    .since
                    .remove(&id)
                    .map(|t| now.saturating_duration_since(t));
                Some(Applied { op: op.name(), lag })
            }
            Outcome::Retry => {
                let attempts = self.waiting.get(&id).map_or(0, |(_, n)| *n) + 1;
                let at = now + backoff(&id, attempts);
                self.timers.insert((at, id.clone()));
                self.waiting.insert(id, (at, attempts));
                None
            }
            Outcome::Rejected(_) => {
                self.waiting.remove(&id);
                if let Op::Register(m) = op {
                    let hash = m.metadata.get(META_HASH).cloned().unwrap_or_default();
                    self.rejected.insert(id.clone(), hash);
                }
                self.since.remove(&id);
                self.release_endpoint(&id);
                self.mark(&id);
                None
            }
        }
    }

    /// Makes every waiting id due now (the target is back).
    pub fn retry_now(&mut self, now: Instant) {
        for (id, (at, _)) in &mut self.waiting {
            *at = now;
            self.timers.insert((now, id.clone()));
        }
    }

    /// Desired ids that a foreign target instance holds (never overwritten), sorted.
    #[must_use]
    pub fn conflicts(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .desired
            .keys()
            .filter(|id| self.is_foreign(id))
            .cloned()
            .collect();
        ids.sort();
        ids
    }

    /// The ids of this syncer's mirrors the target holds.
    #[must_use]
    pub fn held_ids(&self) -> Vec<String> {
        self.held.keys().cloned().collect()
    }
}

/// The delay before retry number `attempts` of `id`: doubling from [`RETRY_FIRST`] up to
/// [`RETRY_MAX`], with up to a quarter more from the id so that retries spread out.
#[must_use]
pub fn backoff(id: &str, attempts: u32) -> Duration {
    let base = RETRY_FIRST
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(10))
        .min(RETRY_MAX);
    let spread = id.bytes().fold(attempts, |h, b| {
        h.wrapping_mul(31).wrapping_add(u32::from(b))
    }) % 256;
    base + base / 4 * spread / 256
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::origin::fingerprint;

    fn mirror(id: &str, port: u16) -> ServiceInfo {
        let mut m = ServiceInfo::new(id, "svc", "10.0.0.1", port);
        let hash = fingerprint(&m);
        m.metadata.insert(META_HASH.to_owned(), hash);
        m
    }

    fn drain(state: &mut State) -> Vec<Op> {
        let mut ops = Vec::new();
        while let Some(op) = state.next_op() {
            if let Ok(op) = op {
                ops.push(op);
            }
        }
        ops
    }

    #[test]
    fn only_the_latest_desired_state_is_written() {
        let t0 = Instant::now();
        let mut s = State::new(false);
        s.upsert("svc", mirror("a", 1), t0);
        s.upsert("svc", mirror("a", 2), t0);
        s.remove("a", t0);
        s.upsert("svc", mirror("a", 3), t0);
        let ops = drain(&mut s);
        assert_eq!(ops.len(), 1);
        let Op::Register(m) = &ops[0] else { panic!() };
        assert_eq!(m.port, 3);
        let applied = s
            .finish(&ops[0], Outcome::Done, t0 + Duration::from_millis(40))
            .unwrap();
        assert_eq!(applied.lag, Some(Duration::from_millis(40)));
        assert_eq!(s.pending(), 0);
        assert!(drain(&mut s).is_empty());
    }

    #[test]
    fn a_change_during_a_write_is_written_after_it() {
        let t0 = Instant::now();
        let mut s = State::new(false);
        s.upsert("svc", mirror("a", 1), t0);
        let op = drain(&mut s).remove(0);
        s.upsert("svc", mirror("a", 2), t0);
        assert!(drain(&mut s).is_empty(), "one write per id at a time");
        assert_eq!(s.finish(&op, Outcome::Done, t0), None);
        let ops = drain(&mut s);
        let Op::Register(m) = &ops[0] else { panic!() };
        assert_eq!(m.port, 2);
    }

    #[test]
    fn failed_writes_wait_with_capped_backoff_and_keep_the_latest_state() {
        let t0 = Instant::now();
        let mut s = State::new(false);
        s.upsert("svc", mirror("a", 1), t0);
        let op = drain(&mut s).remove(0);
        s.finish(&op, Outcome::Retry, t0);
        assert_eq!(s.pending(), 1);
        s.remove("a", t0);
        assert!(drain(&mut s).is_empty(), "waits for its retry");
        let next = s.wake(t0).unwrap();
        assert!(next >= t0 + RETRY_FIRST && next <= t0 + RETRY_FIRST * 2);
        s.wake(next);
        // Removed meanwhile, and never written: nothing to do.
        assert!(drain(&mut s).is_empty());
        assert_eq!(s.pending(), 0);
        for n in 1..40 {
            assert!(backoff("a", n) <= RETRY_MAX + RETRY_MAX / 4);
        }
        // The target is back: waiting writes go now, not at their retry time.
        s.upsert("svc", mirror("b", 1), t0);
        let op = drain(&mut s).remove(0);
        s.finish(&op, Outcome::Retry, t0);
        assert!(drain(&mut s).is_empty());
        s.retry_now(t0);
        s.wake(t0);
        assert_eq!(drain(&mut s).len(), 1);
        assert!(backoff("a", 30) >= RETRY_MAX);
    }

    #[test]
    fn restart_takes_over_held_mirrors_and_removes_stale_ones() {
        let t0 = Instant::now();
        let mut s = State::new(false);
        // The target holds a (from an earlier run, up to date) and b (gone from the source),
        // plus someone else's c.
        let count = s.target_listing(
            None,
            vec![mirror("a", 1), mirror("b", 1)],
            vec!["c".to_owned()],
        );
        assert_eq!(count, 2);
        s.replace_scope(None, vec![("svc".into(), mirror("a", 1))], t0);
        s.upsert("svc", mirror("c", 9), t0);
        let mut ops = Vec::new();
        let mut skips = Vec::new();
        while let Some(next) = s.next_op() {
            match next {
                Ok(op) => ops.push((op.id().to_owned(), op.name())),
                Err(skip) => skips.push(skip),
            }
        }
        ops.sort();
        // a is registered again under this syncer's liveness; b is removed; c is not ours.
        assert_eq!(
            ops,
            vec![("a".into(), "register"), ("b".into(), "deregister")]
        );
        assert!(s.is_foreign("c"));
        assert_eq!(s.conflicts(), vec!["c".to_owned()]);
        assert_eq!(
            skips,
            vec![Skip {
                id: "c".into(),
                why: CONFLICT.into(),
                rejected: false
            }]
        );
        // Reported once, not at every change.
        s.upsert("svc", mirror("c", 10), t0);
        assert!(s.next_op().is_none());
    }

    #[test]
    fn snapshots_replace_only_their_scope() {
        let t0 = Instant::now();
        let mut s = State::new(false);
        let mut other = mirror("o", 1);
        other.name = "other".into();
        s.upsert("other", other, t0);
        s.upsert("svc", mirror("a", 1), t0);
        let (changed, removed) =
            s.replace_scope(Some("svc"), vec![("svc".into(), mirror("b", 1))], t0);
        assert_eq!((changed, removed), (1, 1));
        assert_eq!(s.desired_len(), 2);
    }

    #[test]
    fn one_instance_per_endpoint_targets_refuse_the_second() {
        let t0 = Instant::now();
        let mut s = State::new(true);
        s.upsert("svc", mirror("a", 1), t0);
        s.upsert("svc", mirror("b", 1), t0);
        let first = s.next_op().unwrap().unwrap();
        assert_eq!(first.id(), "a");
        let skip = s.next_op().unwrap().unwrap_err();
        assert_eq!(skip.id, "b");
        assert!(skip.rejected);
        assert!(skip.why.contains("10.0.0.1:1"), "{}", skip.why);
        assert!(s.next_op().is_none());
    }

    #[test]
    fn rejected_instances_wait_for_a_change() {
        let t0 = Instant::now();
        let mut s = State::new(false);
        s.upsert("svc", mirror("a", 1), t0);
        let op = drain(&mut s).remove(0);
        s.finish(&op, Outcome::Rejected("bad".into()), t0);
        assert!(drain(&mut s).is_empty());
        assert_eq!(s.pending(), 0);
        s.upsert("svc", mirror("a", 2), t0);
        assert_eq!(drain(&mut s).len(), 1);
    }
}
