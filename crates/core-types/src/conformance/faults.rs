//! The fault suite: what a registry does when its server fails, written once for every backend.
//!
//! A backend's tests implement [`ServerFixture`] for the server they run (a real process, or an
//! in-process fake) and call [`run_faults`], or one check at a time. Each check:
//!
//! - asserts the behaviour a user relies on, with the timing tolerances of [`FaultOptions`];
//! - uses service names of its own ([`super::unique_name`]) and never wipes data,
//!   so the checks can share one server (and one prefix) with each other and with other tests;
//! - panics with a message naming the broken behaviour;
//! - returns what it measured, so a backend's test can assert more about its own backend.
//!
//! | check | what a user relies on |
//! |---|---|
//! | [`no_server_fails_fast`] | construction without a server fails within the connect timeout with `Unavailable`/`Timeout`, naming the server |
//! | [`wrong_credentials_are_a_clear_auth_error`] | a wrong password gives `Error::Auth` at once, without the password in it, and changes nothing |
//! | [`dropped_registry_vanishes_promptly`] | a registry dropped without `close` removes its instances well before their TTL and ends its streams |
//! | [`close_is_idempotent_and_ends_streams`] | `close` twice is fine, deregisters, ends every watch and the state stream with `Closed` |
//! | [`freeze_and_thaw_recovers`] | a server that stops answering for a while loses none of our registrations, and watches have no gap |
//! | [`kill_and_restart_recovers`] | a killed and restarted server: state `Recovering` then `Connected`, registrations back, watches have no gap |
//!
//! ```
//! # async fn demo(fixture: &mut dyn waypost_core_types::conformance::faults::ServerFixture) {
//! use waypost_core_types::conformance::faults;
//! let report = faults::run_faults(fixture).await;
//! println!("{report:?}");
//! # }
//! ```
//!
//! One idea in one file: the fault checks, one `pub async fn` per fault, and the fixture trait
//! they drive.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::time::Instant;

use super::{assert_same_data, instance, unique_name, KeptFields};
use crate::{
    Error, InstanceView, RegistryState, Result, Scope, ServiceRegistry, SnapshotReason, WatchEvent,
    WatchStream,
};

/// The password a fixture's server accepts (see [`ServerFixture::connect_with_password`]).
pub const RIGHT_PASSWORD: &str = "fault-suite-right-pw";
/// A password the server must refuse.
pub const WRONG_PASSWORD: &str = "fault-suite-wrong-pw";

/// How much later than a bound an outcome may be observed (scheduling, polling every 25 ms).
const SLACK: Duration = Duration::from_millis(500);
/// How often conditions are polled.
const POLL: Duration = Duration::from_millis(25);

/// The timing a fixture's registries are configured with, the bounds the checks hold them to,
/// and what the backend's watch promises after an outage.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FaultOptions {
    /// The connect timeout of [`ServerFixture::connect_unreachable`] and of
    /// [`ServerFixture::connect_with_password`]: construction must fail within it.
    pub connect_bound: Duration,
    /// How long a registry may take to notice that its server was killed (state `Recovering`).
    pub outage_detect: Duration,
    /// After the server is back (restarted and ready, or thawed): how long until our
    /// registrations are on the server again and the registry is `Connected`.
    pub recovery: Duration,
    /// How long the server keeps an instance of a registry that stopped renewing it (the TTL,
    /// the session timeout, the TTL plus Consul's reaping delay).
    pub liveness: Duration,
    /// Within how long a dropped registry's instances must be gone; less than `liveness`.
    pub drop_bound: Duration,
    /// How long a change may take to reach a watcher of another registry.
    pub event_timeout: Duration,
    /// How long [`freeze_and_thaw_recovers`] keeps the server frozen; less than `liveness`.
    pub freeze_for: Duration,
    /// Whether a watch of this backend tells its consumer, with a `Snapshot { reason:
    /// Reconnected }`, that it may have missed changes while the server was down (a new
    /// session, a re-subscription). Then [`kill_and_restart_recovers`] expects one within
    /// `recovery`. A backend that resumes its watch without a possible gap (etcd, from the last
    /// revision) needs none; every backend must end with the true set either way.
    pub reconnected_snapshot: bool,
}

impl Default for FaultOptions {
    fn default() -> Self {
        FaultOptions {
            connect_bound: Duration::from_secs(2),
            outage_detect: Duration::from_secs(5),
            recovery: Duration::from_secs(10),
            liveness: Duration::from_secs(30),
            drop_bound: Duration::from_secs(5),
            event_timeout: Duration::from_secs(10),
            freeze_for: Duration::from_secs(1),
            reconnected_snapshot: false,
        }
    }
}

impl FaultOptions {
    /// Sets [`FaultOptions::connect_bound`]. Like every duration here, at most
    /// [`MAX_BOUND`](super::MAX_BOUND).
    #[must_use]
    pub fn with_connect_bound(mut self, bound: Duration) -> Self {
        self.connect_bound = super::bounded(bound);
        self
    }

    /// Sets [`FaultOptions::outage_detect`].
    #[must_use]
    pub fn with_outage_detect(mut self, bound: Duration) -> Self {
        self.outage_detect = super::bounded(bound);
        self
    }

    /// Sets [`FaultOptions::recovery`].
    #[must_use]
    pub fn with_recovery(mut self, bound: Duration) -> Self {
        self.recovery = super::bounded(bound);
        self
    }

    /// Sets [`FaultOptions::liveness`] and [`FaultOptions::drop_bound`].
    #[must_use]
    pub fn with_liveness(mut self, liveness: Duration, drop_bound: Duration) -> Self {
        self.liveness = super::bounded(liveness);
        self.drop_bound = super::bounded(drop_bound);
        self
    }

    /// Sets [`FaultOptions::event_timeout`].
    #[must_use]
    pub fn with_event_timeout(mut self, timeout: Duration) -> Self {
        self.event_timeout = super::bounded(timeout);
        self
    }

    /// Sets [`FaultOptions::reconnected_snapshot`].
    #[must_use]
    pub fn with_reconnected_snapshot(mut self, expected: bool) -> Self {
        self.reconnected_snapshot = expected;
        self
    }

    /// Sets [`FaultOptions::freeze_for`].
    #[must_use]
    pub fn with_freeze_for(mut self, freeze: Duration) -> Self {
        self.freeze_for = super::bounded(freeze);
        self
    }
}

/// What a fault check needs from a real or fake server. Implemented by each backend's tests.
///
/// Registries it hands out are configured with short timeouts (those of [`options`](Self::options))
/// and share one namespace (prefix, chroot, group), so that a registry sees what another one
/// registered. Fault injection panics when it fails: it is test code.
#[async_trait]
pub trait ServerFixture: Send + Sync {
    /// The timing the fixture's registries use, and the bounds the checks hold them to.
    fn options(&self) -> FaultOptions;

    /// A new registry against the server.
    ///
    /// # Errors
    /// When the registry cannot be built.
    async fn connect(&self) -> Result<Box<dyn ServiceRegistry>>;

    /// Builds a registry against `127.0.0.1:port`, where nothing listens, with
    /// [`FaultOptions::connect_bound`] as its connect timeout.
    ///
    /// # Errors
    /// What the backend returns: the check expects `Unavailable` or `Timeout`.
    async fn connect_unreachable(&self, port: u16) -> Result<Box<dyn ServiceRegistry>>;

    /// `None` when the backend has no authentication. Otherwise a registry that authenticates
    /// with `password` against a server (this one, or one the fixture starts for it) that
    /// accepts [`RIGHT_PASSWORD`] only. A backend that checks credentials per request may
    /// return `Ok` for a wrong password: the check then expects its first write to fail.
    async fn connect_with_password(
        &mut self,
        password: &str,
    ) -> Option<Result<Box<dyn ServiceRegistry>>>;

    /// Kills the server (SIGKILL, or the fake's listener stops and drops every connection).
    async fn kill(&mut self);

    /// Starts the killed server again on the same port and data, and waits until it is ready.
    async fn restart(&mut self);

    /// Freezes the server: connections stay open, nothing is answered (SIGSTOP).
    async fn freeze(&mut self);

    /// Thaws a frozen server (SIGCONT).
    async fn thaw(&mut self);
}

/// What [`no_server_fails_fast`] observed.
#[derive(Debug)]
pub struct UnreachableReport {
    /// The port nothing listened on.
    pub port: u16,
    /// How long construction took to fail.
    pub took: Duration,
    /// The error.
    pub error: Error,
}

/// What [`kill_and_restart_recovers`] and [`freeze_and_thaw_recovers`] observed.
#[derive(Debug, Clone)]
pub struct RecoveryReport {
    /// Whether the owner's state showed `Recovering` during the fault.
    pub saw_recovering: bool,
    /// From the server being back until our registrations were on it and the owner `Connected`.
    pub recovered_after: Duration,
    /// The reasons of the snapshots the observer's watch sent after its initial one.
    pub resyncs: Vec<SnapshotReason>,
    /// Every state the owner reported, in order.
    pub states: Vec<RegistryState>,
}

/// What [`run_faults`] observed.
#[derive(Debug)]
pub struct FaultReport {
    /// From [`no_server_fails_fast`].
    pub unreachable: UnreachableReport,
    /// From [`wrong_credentials_are_a_clear_auth_error`]: the `Auth` error, if the backend has
    /// authentication.
    pub auth: Option<Error>,
    /// From [`dropped_registry_vanishes_promptly`]: how long the instances took to vanish.
    pub dropped_gone_after: Duration,
    /// From [`freeze_and_thaw_recovers`].
    pub frozen: RecoveryReport,
    /// From [`kill_and_restart_recovers`].
    pub restarted: RecoveryReport,
}

/// Runs every check in turn, the destructive ones (freeze, kill) last.
pub async fn run_faults(fixture: &mut dyn ServerFixture) -> FaultReport {
    let unreachable = no_server_fails_fast(fixture).await;
    let auth = wrong_credentials_are_a_clear_auth_error(fixture).await;
    let dropped_gone_after = dropped_registry_vanishes_promptly(fixture).await;
    close_is_idempotent_and_ends_streams(fixture).await;
    let frozen = freeze_and_thaw_recovers(fixture).await;
    let restarted = kill_and_restart_recovers(fixture).await;
    FaultReport {
        unreachable,
        auth,
        dropped_gone_after,
        frozen,
        restarted,
    }
}

/// Polls `probe` until it holds; `false` once `deadline` passes.
async fn poll_until<F, Fut>(deadline: Instant, mut probe: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    loop {
        if probe().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The sorted ids a registry lists for `name` (`None` on an error).
async fn listed(registry: &dyn ServiceRegistry, name: &str) -> Option<Vec<String>> {
    let mut ids: Vec<String> = registry
        .list_instances(name)
        .await
        .ok()?
        .into_iter()
        .map(|s| s.id)
        .collect();
    ids.sort();
    Some(ids)
}

/// A watcher's view of one service, built only from its stream.
struct Follower {
    scope: Scope,
    stream: WatchStream,
    view: InstanceView,
    /// Reasons of the snapshots after the initial one.
    resyncs: Vec<SnapshotReason>,
    started: bool,
}

impl Follower {
    async fn new(registry: &dyn ServiceRegistry, name: &str) -> Follower {
        let stream = registry
            .watch_service(name)
            .await
            .unwrap_or_else(|e| panic!("watch_service({name}): {e}"));
        Follower {
            scope: Scope::Service(name.to_owned()),
            stream,
            view: InstanceView::new(),
            resyncs: Vec::new(),
            started: false,
        }
    }

    fn ids(&self) -> Vec<String> {
        self.view
            .iter(&self.scope)
            .map(|s| s.id.clone())
            .collect::<Vec<_>>()
    }

    /// Applies the stream until a `Reconnected` snapshot came.
    async fn until_resync(&mut self, deadline: Instant, what: &str) {
        while !self.resyncs.contains(&SnapshotReason::Reconnected) {
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Ok(Some(event)) => {
                    if let WatchEvent::Snapshot { reason, .. } = &event {
                        self.resyncs.push(*reason);
                    }
                    self.view.apply_watch_event(&self.scope, event);
                }
                Ok(None) => panic!("{what}: the watch ended"),
                Err(_) => panic!(
                    "{what}: the watch sent no Reconnected snapshot (snapshots: {:?}); its \
                     consumer cannot know it may have missed changes",
                    self.resyncs
                ),
            }
        }
    }

    /// Applies the stream until the view holds exactly `want` (sorted ids).
    async fn until(&mut self, want: &[String], limit: Duration, what: &str) {
        let deadline = Instant::now() + limit;
        while !self.started || self.ids() != want {
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Ok(Some(event)) => {
                    if let WatchEvent::Snapshot { reason, .. } = &event {
                        if self.started {
                            self.resyncs.push(*reason);
                        } else {
                            assert_eq!(
                                *reason,
                                SnapshotReason::Initial,
                                "a watch must start with an initial snapshot"
                            );
                        }
                    } else {
                        assert!(self.started, "a watch must start with a snapshot");
                    }
                    self.started = true;
                    self.view.apply_watch_event(&self.scope, event);
                }
                Ok(None) => panic!("{what}: the watch ended; its view was {:?}", self.ids()),
                Err(_) => panic!(
                    "{what}: within {limit:?} the watch's view was {:?}, not {want:?} (a gap)",
                    self.ids()
                ),
            }
        }
    }
}

/// Collects a registry's `state_changes` on a task, until the stream ends.
fn collect_states(registry: &dyn ServiceRegistry) -> tokio::task::JoinHandle<Vec<RegistryState>> {
    let mut changes = registry.state_changes();
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(state) = changes.next().await {
            seen.push(state);
        }
        seen
    })
}

async fn close_all(registries: &[&dyn ServiceRegistry]) {
    for r in registries {
        r.close()
            .await
            .unwrap_or_else(|e| panic!("close of a {} registry failed: {e}", r.backend()));
    }
}

/// (a) Construction against a port where nothing listens fails within the connect timeout with
/// `Unavailable` or `Timeout`, and the error names the server; nothing hangs.
pub async fn no_server_fails_fast(fixture: &dyn ServerFixture) -> UnreachableReport {
    let bound = fixture.options().connect_bound;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port");
    let start = Instant::now();
    let result = tokio::time::timeout(bound * 3, fixture.connect_unreachable(port))
        .await
        .unwrap_or_else(|_| panic!("construction without a server hung for {:?}", bound * 3));
    let took = start.elapsed();
    let error = match result {
        Ok(registry) => {
            let _ = registry.close().await;
            panic!("construction against 127.0.0.1:{port}, where nothing listens, succeeded")
        }
        Err(e) => e,
    };
    assert!(
        matches!(error, Error::Unavailable(_) | Error::Timeout { .. }),
        "no server: expected Unavailable or Timeout, got {error:?}"
    );
    assert!(
        error.to_string().contains(&port.to_string()),
        "the error names the server (port {port}): {error}"
    );
    assert!(
        took <= bound + SLACK,
        "no server: failed after {took:?}, the connect timeout is {bound:?}"
    );
    UnreachableReport { port, took, error }
}

/// (c) A wrong password gives `Error::Auth` (at construction, or, for backends that check per
/// request, at the first write and at reads) within the connect timeout; neither the wrong nor
/// the right password appears in its `Display` or `Debug`, nor in a registry's `Debug`; and
/// nothing registered with the right password changes. Returns `None` when the backend has no
/// authentication.
pub async fn wrong_credentials_are_a_clear_auth_error(
    fixture: &mut dyn ServerFixture,
) -> Option<Error> {
    let bound = fixture.options().connect_bound;
    let right = fixture
        .connect_with_password(RIGHT_PASSWORD)
        .await?
        .expect("the right password connects");
    let debug = format!("{right:?}");
    assert!(
        !debug.contains(RIGHT_PASSWORD),
        "a registry's Debug must not show its password: {debug}"
    );
    let name = unique_name("auth");
    let mine = instance(&name, &format!("{name}-a"), 8001);
    right
        .register(&mine)
        .await
        .expect("register with the right password");
    assert_eq!(
        listed(right.as_ref(), &name).await,
        Some(vec![mine.id.clone()])
    );
    let mut watch = Follower::new(right.as_ref(), &name).await;
    watch
        .until(
            std::slice::from_ref(&mine.id),
            fixture.options().event_timeout,
            "a watch with the right password",
        )
        .await;
    drop(watch);

    let start = Instant::now();
    let attempt = fixture
        .connect_with_password(WRONG_PASSWORD)
        .await
        .expect("a fixture with authentication must build a registry for any password");
    let error = match attempt {
        Err(e) => e,
        Ok(wrong) => {
            let intruder = instance(&name, &format!("{name}-intruder"), 8002);
            let e = wrong
                .register(&intruder)
                .await
                .expect_err("a write with a wrong password must be refused");
            let read = wrong.list_instances(&name).await;
            assert!(
                matches!(read, Err(Error::Auth { .. })),
                "a read with a wrong password must be refused with Auth, got {read:?}"
            );
            let _ = wrong.close().await;
            e
        }
    };
    let took = start.elapsed();
    assert!(
        matches!(error, Error::Auth { .. }),
        "a wrong password must give Error::Auth, got {error:?}"
    );
    let text = format!("{error} {error:?}");
    assert!(
        !text.contains(WRONG_PASSWORD) && !text.contains(RIGHT_PASSWORD),
        "an auth error must not contain a password: {text}"
    );
    assert!(
        took <= bound + SLACK,
        "an auth error must come at once, not after retries: {took:?}"
    );
    assert_eq!(
        listed(right.as_ref(), &name).await,
        Some(vec![mine.id.clone()]),
        "a refused client must change nothing"
    );
    close_all(&[right.as_ref()]).await;
    Some(error)
}

/// (d) A registry dropped without `close`: its watch streams end, and its instances vanish
/// (a watcher in another registry sees them go, and that registry lists none) within
/// [`FaultOptions::drop_bound`], well before the server would expire them. Returns how long they
/// took to vanish.
pub async fn dropped_registry_vanishes_promptly(fixture: &dyn ServerFixture) -> Duration {
    let t = fixture.options();
    assert!(
        t.drop_bound < t.liveness,
        "fixture timing: drop_bound {:?} must be below liveness {:?} to prove anything",
        t.drop_bound,
        t.liveness
    );
    let name = unique_name("dropped");
    let observer = fixture.connect().await.expect("connect the observer");
    let mut seen = Follower::new(observer.as_ref(), &name).await;
    seen.until(&[], t.event_timeout, "initial snapshot").await;

    let registry = fixture.connect().await.expect("connect");
    let ids = vec![format!("{name}-1"), format!("{name}-2")];
    for (i, id) in ids.iter().enumerate() {
        registry
            .register(&instance(&name, id, 8001 + i as u16))
            .await
            .expect("register");
    }
    seen.until(&ids, t.event_timeout, "the observer sees both instances")
        .await;
    let mut own = registry.watch_service(&name).await.expect("watch_service");

    drop(registry);
    let dropped = Instant::now();
    let deadline = dropped + t.drop_bound;
    let ended =
        tokio::time::timeout_at(deadline, async { while own.next().await.is_some() {} }).await;
    assert!(
        ended.is_ok(),
        "a dropped registry's watch streams must end within {:?}",
        t.drop_bound
    );
    seen.until(
        &[],
        deadline.saturating_duration_since(Instant::now()) + SLACK,
        "a dropped registry's instances vanish from a watcher",
    )
    .await;
    let gone = poll_until(deadline + SLACK, || async {
        listed(observer.as_ref(), &name).await == Some(Vec::new())
    })
    .await;
    let after = dropped.elapsed();
    assert!(
        gone,
        "a dropped registry's instances are still listed after {after:?}: {:?}",
        listed(observer.as_ref(), &name).await
    );
    assert!(
        after <= t.drop_bound + SLACK,
        "a dropped registry's instances took {after:?} to vanish (bound {:?}, liveness {:?})",
        t.drop_bound,
        t.liveness
    );
    close_all(&[observer.as_ref()]).await;
    after
}

/// (e) `close` deregisters (another registry sees the instance go), is idempotent, ends every
/// watch stream and the state stream (its last item `Closed`), and every later call is `Closed`.
pub async fn close_is_idempotent_and_ends_streams(fixture: &dyn ServerFixture) {
    let t = fixture.options();
    let name = unique_name("fclose");
    let registry = fixture.connect().await.expect("connect");
    let observer = fixture.connect().await.expect("connect the observer");
    let states = collect_states(registry.as_ref());
    let mine = instance(&name, &format!("{name}-a"), 8001);
    registry.register(&mine).await.expect("register");
    let mut seen = Follower::new(observer.as_ref(), &name).await;
    seen.until(
        std::slice::from_ref(&mine.id),
        t.event_timeout,
        "the observer sees the instance",
    )
    .await;
    let mut all = registry.watch().await.expect("watch");
    let mut one = Follower::new(registry.as_ref(), &name).await;
    one.until(
        std::slice::from_ref(&mine.id),
        t.event_timeout,
        "own watch_service",
    )
    .await;

    registry.close().await.expect("close");
    registry.close().await.expect("a second close is fine");
    assert_eq!(registry.state(), RegistryState::Closed, "state after close");
    for (what, stream) in [("watch", &mut all), ("watch_service", &mut one.stream)] {
        let ended = tokio::time::timeout(t.event_timeout, async {
            while stream.next().await.is_some() {}
        })
        .await;
        assert!(ended.is_ok(), "close must end every {what} stream");
    }
    let states = tokio::time::timeout(t.event_timeout, states)
        .await
        .expect("close must end the state stream")
        .expect("state collector");
    assert_eq!(
        states.first(),
        Some(&RegistryState::Connected),
        "{states:?}"
    );
    assert_eq!(states.last(), Some(&RegistryState::Closed), "{states:?}");
    assert!(
        matches!(registry.register(&mine).await, Err(Error::Closed)),
        "register after close must be Closed"
    );
    assert!(
        matches!(registry.list_instances(&name).await, Err(Error::Closed)),
        "list_instances after close must be Closed"
    );
    seen.until(
        &[],
        t.event_timeout,
        "close deregisters: another registry sees the instance go",
    )
    .await;
    assert_eq!(listed(observer.as_ref(), &name).await, Some(Vec::new()));
    close_all(&[observer.as_ref()]).await;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    KillRestart,
    FreezeThaw,
}

/// (b) The server is killed and restarted: the owner's state goes `Recovering` (within
/// [`FaultOptions::outage_detect`]) and back to `Connected`; our registrations are on the server
/// again (as a registry connected after the restart sees) within [`FaultOptions::recovery`]; a
/// watcher in another registry ends with the true set (by a `Reconnected` snapshot or by the
/// changes: no gap; the snapshot is required with [`FaultOptions::reconnected_snapshot`]), and
/// changes made after the restart reach it.
pub async fn kill_and_restart_recovers(fixture: &mut dyn ServerFixture) -> RecoveryReport {
    outage_recovers(fixture, Fault::KillRestart).await
}

/// The server is frozen for [`FaultOptions::freeze_for`] (shorter than the liveness) and thawed:
/// our registrations stay (or are back within [`FaultOptions::recovery`]), the owner is
/// `Connected`, and a watcher in another registry ends with the true set, changes after the thaw
/// included.
pub async fn freeze_and_thaw_recovers(fixture: &mut dyn ServerFixture) -> RecoveryReport {
    outage_recovers(fixture, Fault::FreezeThaw).await
}

async fn outage_recovers(fixture: &mut dyn ServerFixture, fault: Fault) -> RecoveryReport {
    let t = fixture.options();
    let tag = match fault {
        Fault::KillRestart => "restart",
        Fault::FreezeThaw => "freeze",
    };
    let name = unique_name(tag);
    let owner = fixture.connect().await.expect("connect the owner");
    let observer = fixture.connect().await.expect("connect the observer");
    let states = collect_states(owner.as_ref());
    let mut ids: Vec<String> = (0..2).map(|i| format!("{name}-{i}")).collect();
    let mut registered = BTreeMap::new();
    for (i, id) in ids.iter().enumerate() {
        let s = instance(&name, id, 8001 + i as u16);
        owner.register(&s).await.expect("register");
        registered.insert(id.clone(), s);
    }
    let mut seen = Follower::new(observer.as_ref(), &name).await;
    seen.until(&ids, t.event_timeout, "the observer sees our instances")
        .await;

    let mut saw_recovering = false;
    match fault {
        Fault::KillRestart => {
            fixture.kill().await;
            saw_recovering = poll_until(Instant::now() + t.outage_detect, || async {
                matches!(owner.state(), RegistryState::Recovering { .. })
            })
            .await;
            assert!(
                saw_recovering,
                "a killed server must show as Recovering within {:?}; state {:?}",
                t.outage_detect,
                owner.state()
            );
            if let RegistryState::Recovering { last_error, .. } = owner.state() {
                assert!(!last_error.is_empty(), "Recovering says what went wrong");
            }
            fixture.restart().await;
        }
        Fault::FreezeThaw => {
            fixture.freeze().await;
            let until = Instant::now() + t.freeze_for;
            while Instant::now() < until {
                saw_recovering |= matches!(owner.state(), RegistryState::Recovering { .. });
                tokio::time::sleep(POLL).await;
            }
            fixture.thaw().await;
        }
    }
    let back = Instant::now();

    // A registry connected now reads what the server holds.
    let mut checker = None;
    let deadline = back + t.recovery;
    while checker.is_none() {
        match fixture.connect().await {
            Ok(r) => checker = Some(r),
            Err(e) if Instant::now() >= deadline => {
                panic!(
                    "no registry can connect {:?} after the server is back: {e}",
                    t.recovery
                )
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
    let checker = checker.expect("connected");
    let recovered = poll_until(deadline, || async {
        listed(checker.as_ref(), &name).await.as_deref() == Some(&ids[..])
            && owner.state().is_connected()
    })
    .await;
    assert!(
        recovered,
        "{tag}: registrations not back within {:?}: another registry lists {:?}, owner state {:?}",
        t.recovery,
        listed(checker.as_ref(), &name).await,
        owner.state()
    );
    let recovered_after = back.elapsed();
    if fault == Fault::KillRestart && t.reconnected_snapshot {
        seen.until_resync(deadline + SLACK, "after the restart")
            .await;
    }

    // The watch ends with the true set, and changes after the fault still reach it.
    seen.until(&ids, t.event_timeout, "the watch after the fault")
        .await;
    let after = format!("{name}-after");
    let s = instance(&name, &after, 8100);
    owner.register(&s).await.expect("register after the fault");
    registered.insert(after.clone(), s);
    owner
        .deregister(&ids[0])
        .await
        .expect("deregister after the fault");
    ids.remove(0);
    ids.push(after);
    ids.sort();
    seen.until(
        &ids,
        t.event_timeout,
        "changes after the fault reach the watch",
    )
    .await;
    assert_eq!(
        listed(checker.as_ref(), &name).await.as_deref(),
        Some(&ids[..]),
        "the server holds what the watch shows"
    );
    for s in seen.view.iter(&seen.scope) {
        assert_same_data(
            s,
            &registered[&s.id],
            "the watch's instance after the fault",
            KeptFields::All,
        );
    }
    for s in checker.list_instances(&name).await.expect("list") {
        assert_same_data(
            &s,
            &registered[&s.id],
            "the server's instance after the fault",
            KeptFields::All,
        );
    }

    close_all(&[owner.as_ref(), observer.as_ref(), checker.as_ref()]).await;
    let states = tokio::time::timeout(t.event_timeout, states)
        .await
        .expect("close ends the state stream")
        .expect("state collector");
    assert_eq!(
        states.first(),
        Some(&RegistryState::Connected),
        "{states:?}"
    );
    assert_eq!(states.last(), Some(&RegistryState::Closed), "{states:?}");
    if fault == Fault::KillRestart {
        let recovering = states
            .iter()
            .position(|s| matches!(s, RegistryState::Recovering { .. }))
            .unwrap_or_else(|| panic!("state_changes must report Recovering: {states:?}"));
        assert!(
            states[recovering..].contains(&RegistryState::Connected),
            "state_changes must report Connected after Recovering: {states:?}"
        );
    }
    RecoveryReport {
        saw_recovering,
        recovered_after,
        resyncs: seen.resyncs,
        states,
    }
}
