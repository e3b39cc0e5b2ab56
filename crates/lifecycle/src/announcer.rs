//! The [`Announcer`]: its settings. What it does when it runs is in `run.rs`.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, Stream, StreamExt};
use tokio::sync::watch;
use waypost_core_types::{Health, Protocol, ServiceInfo, ServiceRegistry};

use crate::Phase;

/// How long a stopping server may take to finish its in-flight requests, by default.
pub const DEFAULT_STOP_DEADLINE: Duration = Duration::from_secs(30);
/// How often the readiness check runs until it passes, by default.
pub const DEFAULT_READINESS_INTERVAL: Duration = Duration::from_millis(500);
/// How often the registration is renewed when neither the instance nor the registry has a TTL
/// (the renewal then checks that the registration is still there and puts it back if not).
pub const DEFAULT_RENEW_INTERVAL: Duration = Duration::from_secs(10);
/// How long one registry call of the announcer may take before it is given up (and retried,
/// for the keep-alive).
pub const REGISTRY_CALL_BOUND: Duration = Duration::from_secs(10);

/// The drain delay used when none is set: how long callers' discovery caches need to notice a
/// deregistration on `backend` (the name [`ServiceRegistry::backend`] returns), with a margin.
///
/// | backend | delay | why |
/// |---|---|---|
/// | `memory` | 100 ms | one process; watchers see a change within microseconds |
/// | `etcd`, `zookeeper` | 2 s | a watch event reaches a cache within milliseconds; the margin covers a busy or distant member |
/// | `consul` | 3 s | blocking queries return on the change, but the agent syncs the catalog and watchers pace their queries |
/// | `nacos` | 3 s | the server pushes the change; SDK processing and a lost push (the SDK polls again) take longer |
/// | any other | 5 s | |
///
/// A client with retries and outlier detection (waypost's `ServiceClient`) also survives a
/// shorter delay, with retries instead of none.
pub fn default_drain_delay(backend: &str) -> Duration {
    match backend {
        "memory" => Duration::from_millis(100),
        "etcd" | "zookeeper" => Duration::from_secs(2),
        "consul" | "nacos" => Duration::from_secs(3),
        _ => Duration::from_secs(5),
    }
}

/// A readiness check: `true` once the service can take traffic.
pub(crate) type Readiness = Arc<dyn Fn() -> BoxFuture<'static, bool> + Send + Sync>;

/// What starts the shutdown.
pub(crate) enum Trigger {
    /// SIGTERM or Ctrl-C; a second one stops at once.
    #[cfg(feature = "signal")]
    Signals,
    /// A future given by the user; the stop deadline bounds the rest.
    Custom(BoxFuture<'static, ()>),
    /// A stream of requests given by the user: the first stops gracefully, a second at once.
    Requests(BoxStream<'static, ()>),
}

/// Joins a service to the fleet and takes it out again, in one call.
///
/// [`serve`](Self::serve) takes the address the server is bound to and a function that starts
/// the server with a stop signal. It registers only once the listener is bound (the port comes
/// from it), keeps the registration alive, optionally holds the instance `Unhealthy` until a
/// readiness check passes, and on shutdown (SIGTERM or Ctrl-C by default) runs the order that
/// loses no request: deregister, wait the drain delay while still serving, tell the server to
/// stop accepting, wait for in-flight requests up to a deadline, close the registry. A second
/// signal stops at once. Each step is logged through `tracing` and visible in
/// [`phases`](Self::phases).
///
/// The instance id, unless set, is `<name>-<host>-<port>` (`:` and `.` kept, other characters
/// `-`): stable across restarts of a replica at the same address, so a restarted replica
/// replaces its own registration instead of leaving a second one behind until a TTL or session
/// expires, and unique per address, which is what callers tell replicas apart by.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> waypost_core_types::Result<()> {
/// use std::sync::Arc;
/// use waypost_core_types::ServiceRegistry;
/// use waypost_lifecycle::{Announcer, Phase};
/// use waypost_registry_memory::MemoryRegistry;
///
/// let registry = Arc::new(MemoryRegistry::new());
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
/// let addr = listener.local_addr().unwrap();
/// let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
/// let announcer = Announcer::new(registry.clone(), "users")
///     .allow_loopback(true) // this example listens on 127.0.0.1
///     .with_shutdown(async move { let _ = stop_rx.await; });
/// let mut phases = announcer.phases();
/// let running = tokio::spawn(announcer.serve(addr, |stop| async move {
///     // A real service runs its server here:
///     // `axum::serve(listener, app).with_graceful_shutdown(stop)`.
///     let _listener = listener;
///     stop.await;
///     Ok::<(), std::io::Error>(())
/// }));
/// phases.wait_for(|p| *p == Phase::Serving).await.unwrap();
/// let registered = registry.list_instances("users").await?;
/// assert_eq!(registered[0].port, addr.port());
/// assert_eq!(registered[0].id, format!("users-127.0.0.1-{}", addr.port()));
/// stop_tx.send(()).unwrap();
/// running.await.unwrap()?; // deregistered, drained, stopped, registry closed
/// # Ok(()) }
/// ```
#[must_use]
pub struct Announcer {
    pub(crate) registry: Arc<dyn ServiceRegistry>,
    pub(crate) template: ServiceInfo,
    pub(crate) id: Option<String>,
    pub(crate) advertise: Option<String>,
    pub(crate) allow_loopback: bool,
    pub(crate) renew_interval: Option<Duration>,
    pub(crate) readiness: Option<(Readiness, Duration)>,
    pub(crate) drain_delay: Option<Duration>,
    pub(crate) stop_deadline: Duration,
    pub(crate) trigger: Trigger,
    pub(crate) close_registry: bool,
    pub(crate) phase: watch::Sender<Phase>,
}

impl fmt::Debug for Announcer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Announcer")
            .field("backend", &self.registry.backend())
            .field("name", &self.template.name)
            .field("id", &self.id)
            .field("advertise", &self.advertise)
            .field("drain_delay", &self.drain_delay)
            .field("stop_deadline", &self.stop_deadline)
            .field("phase", &*self.phase.borrow())
            .finish_non_exhaustive()
    }
}

impl Announcer {
    /// An announcer of service `name` in `registry`, with the defaults: HTTP, weight 100, no
    /// version, the registry's TTL, the backend's [`default_drain_delay`],
    /// [`DEFAULT_STOP_DEADLINE`], stopping on SIGTERM or Ctrl-C (feature `signal`, on by
    /// default), and closing the registry at the end.
    pub fn new(registry: Arc<dyn ServiceRegistry>, name: impl Into<String>) -> Self {
        Announcer {
            registry,
            template: ServiceInfo::new("", name, "", 0).with_health(Health::Healthy),
            id: None,
            advertise: None,
            allow_loopback: false,
            renew_interval: None,
            readiness: None,
            drain_delay: None,
            stop_deadline: DEFAULT_STOP_DEADLINE,
            #[cfg(feature = "signal")]
            trigger: Trigger::Signals,
            #[cfg(not(feature = "signal"))]
            trigger: Trigger::Custom(futures_util::future::pending().boxed()),
            close_registry: true,
            phase: watch::Sender::new(Phase::Starting),
        }
    }

    /// The instance id (default: `<name>-<host>-<port>`, see the type's docs).
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// The version registered.
    pub fn with_version(mut self, version: impl Into<String>) -> Self {
        self.template.version = version.into();
        self
    }

    /// The protocol registered (default HTTP).
    pub fn with_protocol(mut self, protocol: Protocol) -> Self {
        self.template.protocol = protocol;
        self
    }

    /// The weight registered (default 100).
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.template.weight = weight;
        self
    }

    /// Adds a metadata pair.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.template.metadata.insert(key.into(), value.into());
        self
    }

    /// Replaces the metadata.
    pub fn with_metadata_map(mut self, metadata: BTreeMap<String, String>) -> Self {
        self.template.metadata = metadata.into();
        self
    }

    /// Adds a tag.
    pub fn with_tag(mut self, tag: impl Into<String>) -> Self {
        self.template.tags.push(tag.into());
        self
    }

    /// The health registered while serving (default [`Health::Healthy`]). With a readiness
    /// check the instance is registered `Unhealthy` first and takes this health once the check
    /// passes. `Unknown` suits a registration made on behalf of a process that does not vouch
    /// for its own health (waypost's balancers pick `Unknown` instances only when none is
    /// `Healthy`, and `Unhealthy` ones never).
    pub fn with_health(mut self, health: Health) -> Self {
        self.template.health = health;
        self
    }

    /// The instance's TTL (default: none of its own, so the registry's applies). The
    /// registration is renewed at a third of it.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.template.ttl = ttl;
        self
    }

    /// How often the registration is renewed (default: a third of the TTL, else
    /// [`DEFAULT_RENEW_INTERVAL`]; kept within 50 ms..=1 day). It is also checked at once when
    /// the registry reports `Connected` again after an outage.
    pub fn with_renew_interval(mut self, every: Duration) -> Self {
        self.renew_interval = Some(every);
        self
    }

    /// The address registered: `host` or `host:port` (see [`crate::address`] for the order in
    /// which it is otherwise worked out).
    pub fn with_advertise_addr(mut self, addr: impl Into<String>) -> Self {
        self.advertise = Some(addr.into());
        self
    }

    /// Whether a loopback address may be advertised when it is what the listener or the
    /// interfaces give (default `false`: other hosts could not reach it). For tests and
    /// single-machine setups.
    pub fn allow_loopback(mut self, allow: bool) -> Self {
        self.allow_loopback = allow;
        self
    }

    /// Holds the instance `Unhealthy` (never picked by waypost's balancers) until `check`
    /// returns `true`, running it every `interval` (10 ms..=1 day) until then.
    pub fn with_readiness<F, Fut>(mut self, interval: Duration, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = bool> + Send + 'static,
    {
        let check: Readiness = Arc::new(move || check().boxed());
        self.readiness = Some((
            check,
            interval.clamp(Duration::from_millis(10), Duration::from_secs(24 * 3600)),
        ));
        self
    }

    /// How long the service keeps serving after it deregistered, while callers' discovery
    /// caches notice (default: [`default_drain_delay`] of the backend). `Duration::ZERO` skips
    /// the wait.
    pub fn with_drain_delay(mut self, delay: Duration) -> Self {
        self.drain_delay = Some(delay);
        self
    }

    /// How long the server may take to finish in-flight requests after it was told to stop
    /// (default [`DEFAULT_STOP_DEADLINE`]); then it is stopped at once. `Duration::MAX`: no
    /// deadline.
    pub fn with_stop_deadline(mut self, deadline: Duration) -> Self {
        self.stop_deadline = deadline;
        self
    }

    /// Stops when `shutdown` completes, instead of on SIGTERM or Ctrl-C.
    pub fn with_shutdown(mut self, shutdown: impl Future<Output = ()> + Send + 'static) -> Self {
        self.trigger = Trigger::Custom(shutdown.boxed());
        self
    }

    /// Stops gracefully on the first item of `requests` and at once on the second, instead of
    /// on SIGTERM or Ctrl-C (for a process that handles its signals itself, or another source
    /// of stop requests).
    pub fn with_shutdown_requests(
        mut self,
        requests: impl Stream<Item = ()> + Send + 'static,
    ) -> Self {
        self.trigger = Trigger::Requests(requests.boxed());
        self
    }

    /// Whether the registry is closed at the end (default `true`; `false` when the registry is
    /// shared with other parts of the process that still use it).
    pub fn close_registry(mut self, close: bool) -> Self {
        self.close_registry = close;
        self
    }

    /// Follows the phase (see [`Phase`]); the receiver sees every later phase change.
    pub fn phases(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }
}
