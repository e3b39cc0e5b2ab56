//! Service discovery for waypost: a per-service cache kept current by the registry's watch, any
//! [`LoadBalancer`](waypost_core_types::LoadBalancer) to pick an instance, filters, cache
//! statistics, and health checking ([`HttpHealthChecker`], [`TcpHealthChecker`],
//! [`HealthMonitor`]). It works over every [`ServiceRegistry`](waypost_core_types::ServiceRegistry)
//! backend. Most users reach it through the `waypost` facade.
//!
//! ```
//! use std::sync::Arc;
//! use waypost_balancer::RoundRobin;
//! use waypost_core_types::{Error, Health, ServiceDiscovery, ServiceInfo, ServiceRegistry};
//! use waypost_discovery::CachedDiscovery;
//! use waypost_registry_memory::MemoryRegistry;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> waypost_core_types::Result<()> {
//! let registry = Arc::new(MemoryRegistry::new());
//! for (id, port) in [("user-1", 8081), ("user-2", 8082)] {
//!     let svc = ServiceInfo::new(id, "user-service", "127.0.0.1", port).with_health(Health::Healthy);
//!     registry.register(&svc).await?;
//! }
//!
//! let discovery = CachedDiscovery::new(registry.clone(), Arc::new(RoundRobin::new()));
//! assert_eq!(discovery.discover("user-service").await?.len(), 2);
//! let one = discovery.discover_one("user-service").await?;
//! assert_eq!(one.id, "user-1");
//! assert_eq!(discovery.discover_one("user-service").await?.id, "user-2");
//! assert!(matches!(
//!     discovery.discover("order-service").await,
//!     Err(Error::ServiceNotFound(_))
//! ));
//!
//! let stats = discovery.service_stats("user-service").expect("cached");
//! assert_eq!((stats.instances, stats.watching), (2, true));
//! discovery.close().await?;
//! # Ok(()) }
//! ```
//!
//! The cache emits metrics through the `metrics` facade (hits, misses, instances, watch
//! resyncs, event-to-cache latency): see [`observe`]. Install a recorder before building the
//! discovery.

mod cache;
mod discovery;
mod events;
mod filter;
mod http_check;
mod map;
mod monitor;
pub mod observe;
mod options;
mod refresh;
mod stats;
mod tcp_check;

#[doc(hidden)]
pub use cache::EntryHarness;
pub use discovery::CachedDiscovery;
pub use filter::Filter;
pub use http_check::HttpHealthChecker;
pub use monitor::{HealthMonitor, HealthMonitorBuilder, InstanceHealth};
pub use observe::describe_metrics;
pub use options::{
    DiscoveryBuilder, DEFAULT_EMPTY_IDLE_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_RECONNECT_GRACE,
};
pub use stats::CacheStats;
pub use tcp_check::TcpHealthChecker;
