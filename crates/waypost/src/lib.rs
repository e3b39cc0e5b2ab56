//! waypost: register service instances in a registry (in-memory, etcd, Consul, Nacos,
//! ZooKeeper), watch them, and build the registry a config or URL describes.
//!
//! This facade re-exports the waypost crates behind features: `memory` and `lifecycle`
//! (default), `etcd`, `consul`, `nacos`, `zookeeper`, `client`, `grpc` (a tonic channel over
//! discovery, and a gRPC health checker), and `full` for all of them.
//!
//! Observability: the crates emit metrics through the `metrics` facade (install an exporter's
//! recorder, then call [`describe_metrics`]; every metric is listed in `docs/metrics.md`), and
//! the feature `otel` makes the `client` and `grpc` calls carry W3C trace context
//! (`traceparent`) from the caller's span, each attempt an OpenTelemetry span (it turns on the
//! `otel` feature of whichever of the two is enabled).
//!
//! A service joins the fleet through [`Announcer`] (feature `lifecycle`): it registers once the
//! listener is bound, keeps the registration alive, and on SIGTERM deregisters, drains and
//! stops; [`RegistryBuilder::from_env`] takes the registry from `WAYPOST_REGISTRY`.
//!
//! [`RegistryConfig`] says which backend to use; it holds that backend's own config
//! (`MemoryConfig`, `EtcdConfig`, `ConsulConfig`, `NacosConfig`, `ZookeeperConfig`, with their
//! defaults and validation), read from a config file (the tagged shape
//! `{"type":"etcd","endpoints":[…]}` or the Laravel-Go module's
//! `{"type":"etcd","etcd":{"endpoints":[…]}}`) or from a registry URL, whose scheme picks the
//! backend that parses the rest. [`RegistryBuilder`] edits it step by step, and
//! [`new_service_registry`] builds the registry it describes.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> waypost::Result<()> {
//! use std::time::Duration;
//! use waypost::{Health, RegistryConfig, ServiceInfo};
//!
//! // Any backend, chosen at run time: a URL, a config file, or the builder.
//! let config = RegistryConfig::from_url("memory://?default_ttl=30s")?;
//! let registry = waypost::new_service_registry(&config).await?;
//!
//! let svc = ServiceInfo::new("user-service-1", "user-service", "localhost", 8080)
//!     .with_version("1.0.0")
//!     .with_health(Health::Healthy)
//!     .with_ttl(Duration::from_secs(30));
//! registry.register(&svc).await?;
//!
//! let instances = registry.list_instances("user-service").await?;
//! assert_eq!(instances[0].endpoint(), "localhost:8080");
//! registry.close().await?;
//! # Ok(()) }
//! ```
//!
//! ## First use: a new instance is picked at once
//!
//! A new [`ServiceInfo`] has health [`Health::Unknown`] (nothing has checked it yet; its JSON says
//! `"health":"unknown"`, as the Laravel-Go module writes it). Balancers, and so
//! `discover_one`, pick the healthy instances of a service, and its `Unknown` ones when it has no
//! healthy instance; never an unhealthy one ([`Health::SELECTION_ORDER`]). So registering an
//! instance and asking for one works without any health check:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> waypost::Result<()> {
//! use std::sync::Arc;
//! use waypost::{CachedDiscovery, Health, MemoryRegistry, RoundRobin, ServiceDiscovery,
//!               ServiceInfo, ServiceRegistry};
//!
//! let registry = Arc::new(MemoryRegistry::new());
//! let svc = ServiceInfo::new("user-1", "user-service", "127.0.0.1", 8080);
//! assert_eq!(svc.health, Health::Unknown);
//! registry.register(&svc).await?;
//!
//! let discovery = CachedDiscovery::new(registry.clone(), Arc::new(RoundRobin::new()));
//! assert_eq!(discovery.discover_one("user-service").await?.id, "user-1");
//!
//! // Once an instance is known to be healthy, it is preferred over the unchecked ones...
//! registry.register(&ServiceInfo::new("user-2", "user-service", "127.0.0.1", 8081)
//!     .with_health(Health::Healthy)).await?;
//! # tokio::task::yield_now().await;
//! for _ in 0..4 {
//!     assert_eq!(discovery.discover_one("user-service").await?.id, "user-2");
//! }
//! // ...and an unhealthy one is never picked.
//! registry.register(&ServiceInfo::new("user-2", "user-service", "127.0.0.1", 8081)
//!     .with_health(Health::Unhealthy)).await?;
//! # tokio::task::yield_now().await;
//! assert_eq!(discovery.discover_one("user-service").await?.id, "user-1");
//! discovery.close().await?;
//! # Ok(()) }
//! ```

//!
//! # Validation and error texts
//!
//! Every backend checks hosts (DNS names, IPv4, bracketed IPv6), ports (1 to 65535 in plain
//! digits), key prefixes (at most 512 bytes, no `.`/`..` or empty segment, no control character)
//! and durations with the same functions ([`core::validate`]), from a URL, a config file or code;
//! reading a config file validates it. A duration outside its bounds, `Duration::MAX` included,
//! is rejected with an error naming the setting and its bounds; nothing is clamped:
//!
//! | setting | backend | accepted |
//! |---|---|---|
//! | `cleanup_interval` | memory | 10 ms to 24 h |
//! | `default_ttl` | memory | unset (no expiry), or 1 ms to 365 days |
//! | `ttl` | etcd | 1 s to 365 days |
//! | `ttl` | Consul | 100 ms to 365 days |
//! | `ttl` | Nacos, ZooKeeper | 0 to 365 days (kept for compatibility) |
//! | `session_timeout` | ZooKeeper | 100 ms to 24 h |
//! | `deregister_critical_after` | Consul | 1 ms to 365 days |
//! | `watch_wait` | Consul | 1 ms to 10 min |
//! | `watch_min_interval` | Consul | 0 to 24 h |
//! | `probe_interval`, `service_poll_interval` | Nacos | 10 ms to 24 h |
//! | `connect_timeout` | etcd, Consul, Nacos, ZooKeeper | 1 ms to 24 h |
//! | `request_timeout` | etcd, Consul | 1 ms to 24 h |
//! | `max_backoff` | etcd, ZooKeeper | 1 ms to 24 h |
//! | `retry_initial_backoff`, `retry_max_backoff` | Consul | 1 ms to 24 h |
//!
//! Errors never quote a password, a token or a malformed URL (hosts are named by position), and
//! what they echo is cut to a short prefix with control characters escaped, in `Display` and in
//! `Debug` (see [`Error`]).

mod builder;
mod config;
mod env;

pub use builder::{new_service_registry, RegistryBuilder};
pub use config::{RegistryConfig, RegistryType};
pub use env::REGISTRY_ENV;
pub use waypost_core_types::{
    async_trait, CallGuard, CallObserver, CircuitBreaker, CircuitState, Error, Health,
    HealthChecker, LoadBalancer, Metadata, Outcome, Permit, Protocol, RegistryState, Result,
    Secret, SelectContext, Selection, ServiceDiscovery, ServiceEvent, ServiceEventStream,
    ServiceEventType, ServiceInfo, ServiceRegistry, SlotObserver, SnapshotReason, Timestamp,
    WatchEvent, WatchStream,
};

/// The core types crate, whole (validation limits, time helpers, …).
pub use waypost_core_types as core;

/// Discovery: the watch-driven cache, filters, health checkers and the health monitor.
pub use waypost_discovery as discovery;
pub use waypost_discovery::{
    CachedDiscovery, DiscoveryBuilder, Filter, HealthMonitor, HttpHealthChecker, TcpHealthChecker,
};

/// Load balancers.
pub use waypost_balancer as balancer;
pub use waypost_balancer::{
    ConsistentHash, LeastRequest, PeakEwma, Random, RoundRobin, SmoothWeightedRoundRobin,
    WeightedRandom,
};

/// Circuit breakers.
pub use waypost_breaker as breaker;
pub use waypost_breaker::{
    AdaptiveThrottle, CircuitBreakerExt, CircuitBreakerLayer, FailureRateBreaker,
    SimpleCircuitBreaker,
};

/// The HTTP service client (feature `client`).
#[cfg(feature = "client")]
pub use waypost_client as client;
#[cfg(feature = "client")]
pub use waypost_client::{ServiceClient, ServiceClientBuilder};
/// gRPC over discovery: a tonic channel and a `grpc.health.v1` health checker (feature `grpc`).
#[cfg(feature = "grpc")]
pub use waypost_grpc as grpc;

/// The service lifecycle: [`Announcer`] registers a service once its listener is bound, keeps it
/// registered, and deregisters, drains and stops it on SIGTERM (feature `lifecycle`).
#[cfg(feature = "lifecycle")]
pub use waypost_lifecycle as lifecycle;
#[cfg(feature = "lifecycle")]
pub use waypost_lifecycle::{Announcer, Phase};

/// The in-memory registry (feature `memory`).
#[cfg(feature = "memory")]
pub use waypost_registry_memory::{MemoryConfig, MemoryRegistry, MemoryRegistryBuilder};

/// The etcd backend (feature `etcd`).
#[cfg(feature = "etcd")]
pub use waypost_registry_etcd as etcd;
#[cfg(feature = "etcd")]
pub use waypost_registry_etcd::{EtcdConfig, EtcdTlsConfig};

/// The Consul backend (feature `consul`).
#[cfg(feature = "consul")]
pub use waypost_registry_consul as consul;
#[cfg(feature = "consul")]
pub use waypost_registry_consul::ConsulConfig;

/// The Nacos backend (feature `nacos`).
#[cfg(feature = "nacos")]
pub use waypost_registry_nacos as nacos;
#[cfg(feature = "nacos")]
pub use waypost_registry_nacos::NacosConfig;

/// The ZooKeeper backend (feature `zookeeper`).
#[cfg(feature = "zookeeper")]
pub use waypost_registry_zookeeper as zookeeper;
#[cfg(feature = "zookeeper")]
pub use waypost_registry_zookeeper::ZookeeperConfig;

/// The Laravel-Go module's `NewMemoryServiceDiscovery(registry, balancer)`, over any registry: a
/// caching, watch-driven [`CachedDiscovery`].
pub fn new_service_discovery(
    registry: std::sync::Arc<dyn ServiceRegistry>,
    balancer: std::sync::Arc<dyn LoadBalancer>,
) -> CachedDiscovery {
    CachedDiscovery::new(registry, balancer)
}

/// Registers the descriptions (HELP and unit) of every metric the enabled crates emit with the
/// installed `metrics` recorder (see `docs/metrics.md`). Install the recorder first, then call
/// this, then build registries, discoveries and clients: handles taken before a recorder exists
/// record nothing.
pub fn describe_metrics() {
    waypost_core_types::describe_metrics();
    waypost_discovery::describe_metrics();
    waypost_breaker::describe_metrics();
    #[cfg(feature = "client")]
    waypost_client::describe_metrics();
    #[cfg(feature = "grpc")]
    waypost_grpc::describe_metrics();
    #[cfg(feature = "lifecycle")]
    waypost_lifecycle::describe_metrics();
}

/// The README's examples, compiled and run as doctests (with every feature on, as CI runs them).
#[cfg(all(doctest, feature = "full"))]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
