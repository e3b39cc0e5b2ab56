//! The etcd v3 backend of waypost: [`EtcdRegistry`], configured by [`EtcdConfig`].
//!
//! Most users want the `waypost` facade crate with its `etcd` feature, which re-exports this.
//!
//! Instances are stored at `<prefix>/<name>/<id>` (prefix `/laravel-go/services` by default) as
//! the Go module's JSON, so waypost and the Go laravel-go services read each other's
//! registrations. Other record formats ([`EtcdConfig::format`], `?format=` in a URL) read and
//! write go-kratos' records (`/microservices/<name>/<id>`, its `ServiceInstance` JSON) and
//! go-zero's (`<key>/<id>` → `host:port`), or read every format at once (`auto`); the crate's
//! README has each format's field mapping, with the frameworks' sources. Liveness comes from leases renewed by tasks the registry owns: its default
//! lease ([`EtcdConfig::ttl`]) and one per other distinct [`ServiceInfo::ttl`] its instances
//! ask for (whole seconds, 1 s to [`MAX_LEASE_TTL`]; beyond that a clear error). A lost lease is
//! replaced and its instances are written again, forever, with backoff; instances of ours
//! deleted while their lease lives (`etcdctl del`, a restored backup) are put back.
//! [`state`](waypost_core_types::ServiceRegistry::state) is `Connected` only while every lease
//! lives and every instance is in place. Watches read a snapshot at a revision and follow
//! changes from the next one, resume after disconnects without gaps, and send a fresh snapshot
//! (`Reconnected`) when history was compacted or the server no longer holds the history they
//! followed (wiped or restored, even after its revision caught up).
//!
//! [`ServiceInfo::ttl`]: waypost_core_types::ServiceInfo::ttl
//!
//! ```no_run
//! use std::time::Duration;
//! use waypost_core_types::{ServiceInfo, ServiceRegistry};
//! use waypost_registry_etcd::{EtcdConfig, EtcdRegistry};
//!
//! # async fn demo() -> waypost_core_types::Result<()> {
//! let registry = EtcdRegistry::connect(
//!     EtcdConfig::new(["http://127.0.0.1:2379"]).with_ttl(Duration::from_secs(10)),
//! )
//! .await?;
//! registry
//!     .register(&ServiceInfo::new("user-1", "user-service", "10.0.0.5", 8080))
//!     .await?;
//! let instances = registry.list_instances("user-service").await?;
//! assert_eq!(instances.len(), 1);
//! registry.close().await?; // revokes the lease: the instance is gone at once
//! # Ok(())
//! # }
//! ```
//!
//! Building needs no `protoc`: the etcd client is `etcd-client` 0.21.1 with its generated
//! protobuf code checked in (the package `waypost-etcd-client`), so it has no build script.

mod config;
mod error;
mod guard;
mod history;
mod keys;
mod lease;
mod liveness;
mod ops;
mod registry;
mod retry;
mod url;
mod watch;

pub use config::{
    EtcdConfig, EtcdTlsConfig, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_BACKOFF, DEFAULT_PREFIX,
    DEFAULT_REQUEST_TIMEOUT, DEFAULT_TTL, DEFAULT_WATCH_BUFFER,
};
pub use lease::MAX_LEASE_TTL;
pub use registry::EtcdRegistry;
