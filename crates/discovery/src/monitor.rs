//! [`HealthMonitor`]: probes a service's instances on an interval and writes their health to
//! the registry.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use waypost_core_types::quote::quoted;
use waypost_core_types::{
    Error, Health, HealthChecker, Result, ServiceInfo, ServiceRegistry, Timestamp,
};

/// Options of a [`HealthMonitor`].
#[derive(Debug)]
#[must_use]
pub struct HealthMonitorBuilder {
    registry: Arc<dyn ServiceRegistry>,
    checker: Arc<dyn HealthChecker>,
    services: Vec<String>,
    interval: Duration,
    check_timeout: Option<Duration>,
    failure_threshold: u32,
    success_threshold: u32,
}

impl HealthMonitorBuilder {
    /// Adds a service whose instances are probed.
    pub fn service(mut self, name: impl Into<String>) -> Self {
        self.services.push(name.into());
        self
    }

    /// Time between the starts of probe rounds (default 10 s; a round that takes longer is
    /// followed by the next one `interval` after it ends). The first round runs at once.
    /// `Duration::MAX` probes once; zero is refused by [`start`](Self::start).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// A limit on one probe on top of the checker's own (default: the interval).
    /// `Duration::MAX` leaves only the checker's own limit; zero is refused by
    /// [`start`](Self::start).
    pub fn check_timeout(mut self, timeout: Duration) -> Self {
        self.check_timeout = Some(timeout);
        self
    }

    /// Consecutive failed probes that mark an instance unhealthy (default 3).
    pub fn failure_threshold(mut self, n: u32) -> Self {
        self.failure_threshold = n;
        self
    }

    /// Consecutive passed probes that mark an instance healthy (default 2).
    pub fn success_threshold(mut self, n: u32) -> Self {
        self.success_threshold = n;
        self
    }

    /// Starts probing, on the current tokio runtime.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for no service, a zero interval, check timeout or threshold, or
    /// when called outside a tokio runtime.
    pub fn start(self) -> Result<HealthMonitor> {
        if self.services.is_empty() {
            return Err(Error::InvalidConfig(
                "health monitor: no service to probe".into(),
            ));
        }
        if self.interval.is_zero()
            || self.check_timeout.is_some_and(|t| t.is_zero())
            || self.failure_threshold == 0
            || self.success_threshold == 0
        {
            return Err(Error::InvalidConfig(
                "health monitor: interval, check timeout and thresholds must be greater than zero"
                    .into(),
            ));
        }
        let rt = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::InvalidConfig("health monitor must be started inside a tokio runtime".into())
        })?;
        let shared = Arc::new(Shared {
            registry: self.registry,
            checker: self.checker,
            services: self.services,
            check_timeout: self.check_timeout.unwrap_or(self.interval),
            failure_threshold: self.failure_threshold,
            success_threshold: self.success_threshold,
            state: Mutex::new(HashMap::new()),
            rounds: Mutex::new(0),
        });
        let task = rt.spawn(run(shared.clone(), self.interval));
        Ok(HealthMonitor {
            shared,
            task: Mutex::new(Some(task)),
        })
    }
}

/// What the monitor knows about one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InstanceHealth {
    /// The instance id.
    pub id: String,
    /// The health the monitor last wrote or found in the registry.
    pub health: Health,
    /// Probes passed in a row.
    pub consecutive_successes: u32,
    /// Probes failed in a row.
    pub consecutive_failures: u32,
    /// Why the last probe failed, if it did.
    pub last_error: Option<String>,
}

struct Shared {
    registry: Arc<dyn ServiceRegistry>,
    checker: Arc<dyn HealthChecker>,
    services: Vec<String>,
    check_timeout: Duration,
    failure_threshold: u32,
    success_threshold: u32,
    state: Mutex<HashMap<String, InstanceHealth>>,
    rounds: Mutex<u64>,
}

/// Probes the instances of some services every interval with a [`HealthChecker`], and writes
/// their health to the registry with [`ServiceRegistry::update`]: `Unhealthy` after
/// `failure_threshold` failed probes in a row, `Healthy` after `success_threshold` passed ones.
/// A probe that answers [`Error::Unsupported`] (the checker cannot judge that instance) counts
/// neither way.
/// A discovery watching the registry then stops returning a dead instance within about
/// `interval × failure_threshold`.
///
/// The probing task belongs to the monitor: it stops on [`stop`](HealthMonitor::stop) or when
/// the monitor is dropped.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use waypost_discovery::{HealthMonitor, TcpHealthChecker};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> waypost_core_types::Result<()> {
/// let registry = Arc::new(waypost_registry_memory::MemoryRegistry::new());
/// let monitor = HealthMonitor::builder(registry, Arc::new(TcpHealthChecker::default()))
///     .service("user-service")
///     .interval(Duration::from_secs(5))
///     .failure_threshold(3)
///     .start()?;
/// monitor.stop();
/// # Ok(()) }
/// ```
pub struct HealthMonitor {
    shared: Arc<Shared>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for HealthMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthMonitor")
            .field("services", &self.shared.services)
            .field("running", &self.is_running())
            .finish()
    }
}

impl Drop for HealthMonitor {
    fn drop(&mut self) {
        self.stop();
    }
}

impl HealthMonitor {
    /// Options for a monitor writing to `registry` what `checker` finds.
    pub fn builder(
        registry: Arc<dyn ServiceRegistry>,
        checker: Arc<dyn HealthChecker>,
    ) -> HealthMonitorBuilder {
        HealthMonitorBuilder {
            registry,
            checker,
            services: Vec::new(),
            interval: Duration::from_secs(10),
            check_timeout: None,
            failure_threshold: 3,
            success_threshold: 2,
        }
    }

    /// Stops probing. Idempotent.
    pub fn stop(&self) {
        if let Some(t) = self.task.lock().take() {
            t.abort();
        }
    }

    /// Whether the probing task runs.
    pub fn is_running(&self) -> bool {
        self.task.lock().as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Probe rounds completed.
    pub fn rounds(&self) -> u64 {
        *self.shared.rounds.lock()
    }

    /// What the monitor knows about every instance it probes, sorted by id.
    pub fn status(&self) -> Vec<InstanceHealth> {
        let mut out: Vec<_> = self.shared.state.lock().values().cloned().collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }
}

async fn run(shared: Arc<Shared>, interval: Duration) {
    loop {
        let started = Instant::now();
        round(&shared).await;
        *shared.rounds.lock() += 1;
        // The next round `interval` after this one started, or after it ended if it ran late;
        // a time too far to represent (`Duration::MAX`) means no further round.
        let now = Instant::now();
        let next = started
            .checked_add(interval)
            .filter(|next| *next >= now)
            .or_else(|| now.checked_add(interval));
        match next {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending::<()>().await,
        }
    }
}

async fn round(shared: &Shared) {
    let mut seen = Vec::new();
    for name in &shared.services {
        let instances = match shared.registry.list_instances(name).await {
            Ok(list) => list,
            Err(e) => {
                tracing::warn!(service = %quoted(name), error = %e, "health monitor: cannot list instances");
                continue;
            }
        };
        let results = join_all(instances.iter().map(|s| async move {
            // `timeout` takes any duration: one too far to represent is no limit.
            match tokio::time::timeout(shared.check_timeout, shared.checker.check(s)).await {
                Ok(r) => r,
                Err(_) => Err(Error::timeout(
                    format!("health check of `{}`", s.id),
                    shared.check_timeout,
                )),
            }
        }))
        .await;
        for (instance, result) in instances.into_iter().zip(results) {
            seen.push(instance.id.clone());
            if let Some(health) = judge(shared, &instance, result) {
                write(shared, instance, health).await;
            }
        }
    }
    shared.state.lock().retain(|id, _| seen.contains(id));
}

/// Counts the probe result; returns the health to write when a threshold is crossed.
fn judge(shared: &Shared, instance: &ServiceInfo, result: Result<()>) -> Option<Health> {
    let mut state = shared.state.lock();
    let st = state
        .entry(instance.id.clone())
        .or_insert_with(|| InstanceHealth {
            id: instance.id.clone(),
            health: instance.health,
            consecutive_successes: 0,
            consecutive_failures: 0,
            last_error: None,
        });
    st.health = instance.health;
    match result {
        // The checker cannot judge this instance: leave its health alone rather than count a
        // failure.
        Err(Error::Unsupported(why)) => {
            st.last_error = Some(format!("not checked: {why}"));
            None
        }
        Ok(()) => {
            st.consecutive_successes = st.consecutive_successes.saturating_add(1);
            st.consecutive_failures = 0;
            st.last_error = None;
            (st.consecutive_successes >= shared.success_threshold
                && instance.health != Health::Healthy)
                .then_some(Health::Healthy)
        }
        Err(e) => {
            st.consecutive_failures = st.consecutive_failures.saturating_add(1);
            st.consecutive_successes = 0;
            st.last_error = Some(e.to_string());
            (st.consecutive_failures >= shared.failure_threshold
                && instance.health != Health::Unhealthy)
                .then_some(Health::Unhealthy)
        }
    }
}

async fn write(shared: &Shared, instance: ServiceInfo, health: Health) {
    let id = instance.id.clone();
    let mut updated = instance;
    updated.health = health;
    updated.last_check = Timestamp::now();
    match shared.registry.update(&updated).await {
        Ok(()) => {
            tracing::info!(instance = %id, %health, "health monitor: health changed");
            if let Some(st) = shared.state.lock().get_mut(&id) {
                st.health = health;
            }
        }
        // Deregistered meanwhile: nothing to mark.
        Err(Error::NotFound(_)) => {}
        Err(e) => tracing::warn!(instance = %id, error = %e, "health monitor: cannot write health"),
    }
}
