//! The in-process service registry of waypost: the embedded default backend and the reference
//! implementation of the registry conformance suite.
//!
//! Most users want the `waypost` facade crate, which re-exports this one.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> waypost_core_types::Result<()> {
//! use std::time::Duration;
//! use futures_util::StreamExt;
//! use waypost_core_types::{Health, ServiceInfo, ServiceRegistry, WatchEvent};
//! use waypost_registry_memory::MemoryRegistry;
//!
//! let registry = MemoryRegistry::new();
//! let mut events = registry.watch_service("user-service").await?;
//!
//! let svc = ServiceInfo::new("user-service-1", "user-service", "localhost", 8080)
//!     .with_health(Health::Healthy)
//!     .with_ttl(Duration::from_secs(30));
//! registry.register(&svc).await?;
//! registry.renew("user-service-1").await?; // a heartbeat, within the TTL
//!
//! assert!(matches!(events.next().await, Some(WatchEvent::Snapshot { .. })));
//! match events.next().await {
//!     Some(WatchEvent::Change(ev)) => assert_eq!(ev.service.id, "user-service-1"),
//!     other => panic!("{other:?}"),
//! }
//! assert_eq!(registry.list_instances("user-service").await?.len(), 1);
//! registry.close().await?;
//! # Ok(()) }
//! ```

mod config;
mod registry;
mod store;
mod url;

pub use config::{MemoryConfig, MemoryRegistryBuilder};
pub use registry::MemoryRegistry;
