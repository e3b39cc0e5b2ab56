//! The Consul backend of waypost: a [`ServiceRegistry`](waypost_core_types::ServiceRegistry) on
//! Consul's HTTP API, through a thin client of our own on hyper (agent registration with TTL
//! checks, cluster-wide health and catalog reads, blocking queries).
//!
//! Most users want the `waypost` facade crate with its `consul` feature.
//!
//! ```no_run
//! use std::time::Duration;
//! use waypost_core_types::{ServiceInfo, ServiceRegistry};
//! use waypost_registry_consul::{ConsulConfig, ConsulRegistry};
//!
//! # async fn demo() -> waypost_core_types::Result<()> {
//! let registry = ConsulRegistry::connect(
//!     ConsulConfig::default()
//!         .with_address("http://127.0.0.1:8500")
//!         .with_ttl(Duration::from_secs(10)),
//! )
//! .await?;
//! registry
//!     .register(&ServiceInfo::new("user-1", "user", "10.0.0.5", 8080).with_version("1.0.0"))
//!     .await?;
//! let instances = registry.list_instances("user").await?;
//! registry.close().await?; // deregisters user-1
//! # drop(instances); Ok(()) }
//! ```
//!
//! # How instances map onto Consul
//!
//! | `ServiceInfo` | Consul service |
//! |---|---|
//! | `id`, `name`, `address`, `port`, `tags` | `ID`, `Name`, `Address`, `Port`, `Tags` (an empty `Address` reads as the node's) |
//! | `weight` | `Weights.Passing` (clamped to 1..65535) and, exactly, `Meta["wp-weight"]` |
//! | `version`, `protocol`, `created_at`, `updated_at`, `ttl`, declared `health` | `Meta["wp-version"]`, `wp-protocol`, `wp-created-at`, `wp-updated-at`, `wp-ttl` (ns), `wp-health` |
//! | `metadata` | `Meta["wpm-<key>"]`, keys escaped into `[A-Za-z0-9_-]` (`-XX` per other byte) |
//! | prefix (namespace) | `Meta["wp-prefix"]` |
//!
//! Consul's `Meta` limits (64 pairs, keys ≤ 128 bytes, values ≤ 512 bytes) leave room for 56
//! user metadata pairs; what does not fit is refused with `Error::InvalidInstance` before any
//! request. `last_check` reads as `updated_at`.
//!
//! Health: each instance has a TTL check (`service:<id>`, `DeregisterCriticalServiceAfter` from
//! the config). Its TTL is the instance's own ([`ServiceInfo::with_ttl`](waypost_core_types::ServiceInfo::with_ttl)), else the configured
//! `ttl`, kept between 100 ms and 24 h (a longer one, `Duration::MAX` included, is clamped to
//! 24 h). This registry passes the check at a third of the TTL: `pass` for a healthy instance,
//! `warn` for an unknown or unhealthy one (never `fail`: Consul would reap a critical instance).
//! Reading, the worst of the declared health and every check of the entry (node checks
//! included) wins: passing → healthy, warning → unknown, critical → unhealthy. So an instance
//! whose process died turns unhealthy after its TTL and Consul removes it after
//! `DeregisterCriticalServiceAfter` (at least 1 minute, plus Consul's 30 s reaper period).
//!
//! Services registered by other tools (no `wp-prefix`) are read with defaults (version "",
//! protocol http, weight `Weights.Passing × 100`, health from checks) or left out, per
//! [`ConsulConfig::foreign_services`]; services under another prefix are not ours and are
//! skipped; unusable entries are skipped with a warning, never a panic.
//!
//! Reads (`get_service`, `list_*`, watches) use `/v1/health/service/:name` and
//! `/v1/catalog/services` of the cluster, so instances registered through other agents are
//! found. Writes go through the local agent, which owns what it registered: `register`,
//! `update` and `renew` apply to services of this agent.
//!
//! # Instances across nodes
//!
//! A Consul service ID is unique per agent, not per cluster, and defaults to the service name.
//! An instance read from Consul has the id `<node>/<service ID>` (`node-2/web`) when its service
//! ID is on several nodes, or when it is Consul's default ID (the service name) of a service
//! waypost did not register; otherwise its plain service ID, so waypost's own registrations
//! keep their ids. The exact rule and why it is stable are in [`identity`].
//!
//! `deregister` takes a plain service ID of the local agent, or `<node>/<id>`: on the local
//! agent's node it goes through the agent, on an external node (no Consul agent) through
//! `PUT /v1/catalog/deregister`, and for another agent's service it fails with
//! [`Error::Unsupported`](waypost_core_types::Error::Unsupported) (that agent's anti-entropy
//! would put it back). Only the named instance is ever removed.
//!
//! The `consul` service of the Consul servers is left out of lists, watches and discovery
//! unless [`ConsulConfig::include_consul_service`] is set.
//!
//! # Dropping without `close`
//!
//! Dropping a registry without `close` behaves the same on every backend: its tasks are
//! aborted, and the registry removes what it registered with one bounded clean-up task spawned
//! on the runtime it was created on (it ends with that runtime). If that runtime is gone, the
//! server expires the instances after their TTL: Consul marks them critical, then removes them
//! after `DeregisterCriticalServiceAfter`.
//!
//! # Testing
//!
//! No Consul agent can be installed on the CI machines, so **CI checks this crate against a fake
//! Consul agent** (module `fake`, feature `fake-agent`) written from Consul's published HTTP API
//! documentation, plus the same suite against a real agent when `CONSUL_HTTP_ADDR` is set (for
//! example `docker compose up consul`); without it those tests print `SKIPPED`.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod client;
pub mod codec;
mod config;
pub mod identity;
mod liveness;
mod pacing;
mod read;
mod registry;
mod url;
mod watch;

#[cfg(feature = "fake-agent")]
#[cfg_attr(docsrs, doc(cfg(feature = "fake-agent")))]
pub mod fake;

pub use config::{ConsulConfig, ForeignServices, DEFAULT_ADDRESS, DEFAULT_PREFIX, DEFAULT_TTL};
pub use registry::ConsulRegistry;
