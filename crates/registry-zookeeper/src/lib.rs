//! The ZooKeeper backend of waypost: a [`ServiceRegistry`](waypost_core_types::ServiceRegistry)
//! on Apache ZooKeeper 3.6+ via `zookeeper-client`.
//!
//! Most users want the `waypost` facade crate (feature `zookeeper`), which re-exports this.
//!
//! - Layout: `<prefix>/<name>/<id>` ephemeral znodes holding one record each, in the
//!   configured [`format`](ZookeeperConfig::format) ([`RecordFormat`]):
//!   - `laravel-go` (the default): the Go module's `ServiceInfo` JSON, default prefix
//!     `/laravel-go/services`, so Go services and waypost read each other's registrations;
//!   - `curator`: Apache Curator's service-discovery JSON as Spring Cloud Zookeeper writes it,
//!     default prefix `/services`, so waypost sees and calls Spring services and they see
//!     waypost's (the field mapping is in the crate README);
//!   - `auto`: reads both (instances from Curator records carry the metadata entry
//!     `waypost.format` = `curator`), writes `laravel-go`.
//!
//!   A prefix given explicitly is always used; without one, the format's default applies
//!   ([`ZookeeperConfig::with_format`] replaces a prefix that is still the previous format's
//!   default and keeps any other). Parents are persistent nodes, created safely when processes
//!   race.
//! - Liveness is the session: our instances vanish about one session timeout after our process
//!   dies. [`renew`](waypost_core_types::ServiceRegistry::renew) has nothing to refresh, and a
//!   per-instance TTL is not enforced (the registry logs that once, at the first instance with
//!   one).
//! - Session expiry: a new session with capped, jittered backoff, forever; our nodes are created
//!   again (a stale node of the old session is replaced), watches resync with
//!   `Snapshot { reason: Reconnected }`. `state()` reports `Recovering` meanwhile.
//! - Watches: one persistent recursive watch (ZooKeeper 3.6+) per watched scope (the prefix, or
//!   one service), shared by every stream of that scope through waypost's watch hub and removed
//!   after the last of them is dropped. Each stream starts with `Snapshot { reason: Initial }`;
//!   after a reconnect or a new session it gets `Snapshot { reason: Reconnected }`, and a
//!   consumer that falls more than `watch_buffer` items behind gets `Snapshot { reason: Lagged }`.
//!   Notifications carry no data: a node's data is fetched when its change arrives, so an update
//!   followed at once by a delete may reach a watcher as the `Deleted` alone (the view stays
//!   exact).
//! - [`state_changes`](waypost_core_types::ServiceRegistry::state_changes) follows `Connected`,
//!   `Recovering` (connection lost, session expired, each failed attempt at a new one) and
//!   `Closed`.
//! - Digest auth: nodes are readable by anyone, writable only by the same credentials.
//! - Foreign or corrupt data under the prefix (what the format does not decode) is skipped with
//!   one warning per path.
//! - `close` deletes our nodes, stops every background task, ends every watch stream and the
//!   session. Dropping a registry without `close` behaves the same on every backend: its tasks
//!   are aborted, and the registry removes what it registered with one bounded clean-up task
//!   spawned on the runtime it was created on (it ends with that runtime). If that runtime is
//!   gone, the server expires the instances after their session timeout.
//!
//! ```no_run
//! # async fn demo() -> waypost_core_types::Result<()> {
//! use std::time::Duration;
//! use futures_util::StreamExt;
//! use waypost_core_types::{ServiceInfo, ServiceRegistry};
//! use waypost_registry_zookeeper::{ZookeeperConfig, ZookeeperRegistry};
//!
//! let registry = ZookeeperRegistry::connect(
//!     ZookeeperConfig::new(["127.0.0.1:2181"]).with_session_timeout(Duration::from_secs(10)),
//! )
//! .await?;
//! let mut changes = registry.watch_service("user-service").await?;
//! registry
//!     .register(&ServiceInfo::new("user-1", "user-service", "10.0.0.5", 8080))
//!     .await?;
//! let first = changes.next().await; // Snapshot { reason: Initial, .. }
//! registry.close().await?; // removes user-1 at once
//! # let _ = first; Ok(()) }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

mod acl;
mod codec;
mod config;
mod error;
mod keys;
mod liveness;
mod ops;
mod registry;
mod url;
mod watch;

pub use config::{
    ZookeeperConfig, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_BACKOFF, DEFAULT_PREFIX,
    DEFAULT_SESSION_TIMEOUT, DEFAULT_WATCH_BUFFER,
};
pub use registry::ZookeeperRegistry;
/// The record formats, re-exported from `waypost_core_types::record`.
pub use waypost_core_types::record::{RecordFormat, FORMAT_KEY};
