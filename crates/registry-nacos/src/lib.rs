//! The Nacos backend of waypost: a [`ServiceRegistry`] on Nacos 2.x through the official
//! [`nacos-sdk`](https://crates.io/crates/nacos-sdk) (gRPC), with the behaviour every waypost
//! registry has (checked by the conformance suite of `waypost-core-types`).
//!
//! Most users want the `waypost` facade with its `nacos` feature, which builds this registry from
//! a config or a `nacos://` URL. Use this crate directly to depend on the Nacos backend alone.
//!
//! ```no_run
//! use std::time::Duration;
//! use waypost_core_types::{Health, ServiceInfo, ServiceRegistry};
//! use waypost_registry_nacos::{NacosConfig, NacosRegistry};
//!
//! # async fn demo() -> waypost_core_types::Result<()> {
//! // The Laravel-Go module's example config: localhost:8848, namespace public, group
//! // DEFAULT_GROUP.
//! let registry = NacosRegistry::connect(
//!     NacosConfig::new("localhost:8848").with_connect_timeout(Duration::from_secs(3)),
//! )
//! .await?;
//! let svc = ServiceInfo::new("user-service-1", "user-service", "10.0.0.5", 8080)
//!     .with_version("1.0.0")
//!     .with_health(Health::Healthy);
//! registry.register(&svc).await?;
//! let instances = registry.list_instances("user-service").await?;
//! assert_eq!(instances[0].id, "user-service-1");
//! registry.close().await?; // deregisters and closes the SDK's connections
//! # Ok(())
//! # }
//! ```
//!
//! ## Behaviour on Nacos
//!
//! - **Liveness**: instances are Nacos *ephemeral* instances, bound to this registry's gRPC
//!   connection: they stay while the process lives and disappear when it dies (the server drops
//!   the connection's instances). `renew` checks that the server still has the instance and
//!   registers it again if not. The configured `ttl` is kept for compatibility (see
//!   [`NacosConfig`]); a per-instance TTL is not enforced either (the registry logs that once,
//!   at the first instance with one).
//! - **Ids**: our instance id travels in metadata (see [`codec`] for the full mapping), and is
//!   what `get_service`, `update`, `deregister` and `renew` take, although Nacos keys instances by
//!   ip/port/cluster. Two of our ids with the same address in the same service are therefore one
//!   Nacos instance; give each instance its own address or port. Instances of other Nacos clients
//!   can be listed, watched and fetched (their id is `ip:port`), but only their owner can change
//!   them: `update`/`deregister` of such an id return [`Error::Unsupported`].
//! - **Other clients**: instances registered by Spring Cloud Alibaba, `nacos-sdk-go` based
//!   frameworks (go-kratos, go-micro) or any other Nacos client are read through the plain
//!   metadata keys those clients use (`secure=true` is https; `version`; `tags`; `kind`,
//!   `protocol`), and our instances carry `version`, `secure` and `tags` for them to read; see
//!   [`conventions`].
//! - **Watch**: subscriptions on the main connection; each push triggers a query whose answer
//!   replaces the service in the watch hub of `waypost-core-types`, which tells every stream what
//!   changed (and resyncs a stream that falls [`watch_buffer`](NacosConfig::watch_buffer) changes
//!   behind with a snapshot). The SDK's empty-push protection is off, so the last instance leaving
//!   is seen (guard against empty sets in the discovery cache, which you control). A full
//!   `watch()` subscribes to every service of the namespace and group and polls for new service
//!   names every [`service_poll_interval`](NacosConfig::service_poll_interval). Streams of one
//!   scope share one feed; dropping the last one unsubscribes its services.
//! - **Reconnects**: the SDK re-applies registrations and subscriptions after a reconnect; the
//!   registry probes its connection, exposes [`RegistryState::Recovering`] meanwhile (follow it
//!   with `state_changes()`), then checks that the server has all our instances again
//!   (registering any that are missing), queries every watched service again and sends every
//!   watch stream a [`Snapshot`](waypost_core_types::WatchEvent::Snapshot) with reason
//!   [`Reconnected`](waypost_core_types::SnapshotReason::Reconnected).
//! - **Construction** fails within [`connect_timeout`](NacosConfig::connect_timeout) when no
//!   server answers, proven with a real request; wrong credentials give [`Error::Auth`].
//! - **Close** deregisters our instances, unsubscribes, ends every watch stream, stops the
//!   registry's tasks and drops every SDK handle, which closes the SDK's gRPC connections and
//!   ends its background tasks (re-login included) within moments. This relies on the fixes in
//!   the nacos-sdk 0.8.3 that this workspace carries in `vendor/nacos-sdk` (see its
//!   `PATCHES.md`): the published 0.8.3 has no shutdown call and keeps each connection open
//!   for the life of the process.
//! - **Drop without close**: dropping a registry without `close` behaves the same on every
//!   backend: its tasks are aborted, and the registry removes what it registered with one bounded
//!   clean-up task on the runtime it was created on (it ends with that runtime). If that runtime
//!   is gone, the server expires the instances after their TTL or session timeout; on Nacos, as
//!   soon as the registry's connections close.
//! - **Servers**: rnacos pins the first metadata ever registered at an ip:port and ignores later
//!   metadata from SDK clients unless started with
//!   `RNACOS_NAMING_INSTANCE_METADATA_PERSISTENCE_ENABLE=false`; run it that way (our own view is
//!   right either way, other clients' views of updates are not).
//!
//! Tested against rnacos (a Nacos-compatible server written in Rust, from crates.io) and, when
//! `NACOS_ADDR` is set, against whatever Nacos server it names; see `integration-tests`.
//!
//! [`Error::Unsupported`]: waypost_core_types::Error::Unsupported
//! [`Error::Auth`]: waypost_core_types::Error::Auth
//! [`RegistryState::Recovering`]: waypost_core_types::RegistryState::Recovering
//! [`ServiceRegistry`]: waypost_core_types::ServiceRegistry

#![cfg_attr(docsrs, feature(doc_cfg))]

mod auth;
pub mod codec;
mod config;
pub mod conventions;
mod error;
mod liveness;
mod registry;
mod slots;
mod url;
mod view;
mod watch;

pub use config::{
    NacosConfig, DEFAULT_CLUSTER, DEFAULT_GROUP, DEFAULT_NAMESPACE, DEFAULT_SERVER_ADDR,
};
pub use registry::NacosRegistry;
