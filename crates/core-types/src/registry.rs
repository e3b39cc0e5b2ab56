//! The [`ServiceRegistry`] trait and the state a registry exposes.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures_util::StreamExt;

use crate::{Result, ServiceInfo, SharedWatchEvent, SharedWatchStream, WatchEvent, WatchStream};

/// The stream of [`ServiceRegistry::state_changes`].
pub type StateStream =
    std::pin::Pin<Box<dyn futures_core::Stream<Item = RegistryState> + Send + 'static>>;

/// How a registry's connection to its backend is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegistryState {
    /// Connected; our registrations are in place.
    Connected,
    /// The backend is unreachable or our lease/session was lost; the registry is retrying with
    /// backoff and will register its instances again when it is back.
    Recovering {
        /// When the trouble started.
        since: SystemTime,
        /// Attempts made so far.
        attempts: u32,
        /// The last error, as text.
        last_error: String,
    },
    /// `close` was called.
    Closed,
}

impl RegistryState {
    /// Whether the registry is connected.
    pub fn is_connected(&self) -> bool {
        matches!(self, RegistryState::Connected)
    }
}

/// A service registry: where instances are registered, renewed, listed and watched.
///
/// Every backend (in-memory, etcd, Consul, Nacos, ZooKeeper) implements it with the same
/// behaviour, checked by the conformance suite (feature `conformance`). It is object safe: the
/// facade hands out `Arc<dyn ServiceRegistry>`.
///
/// Liveness: a backend keeps the instances it registered alive while the registry lives (a lease,
/// a session, a TTL check) and they disappear within about their TTL after the process dies.
/// The in-memory registry has no process boundary to watch, so there an instance must be renewed
/// with [`renew`](ServiceRegistry::renew) within its TTL.
#[async_trait]
pub trait ServiceRegistry: Send + Sync + fmt::Debug {
    /// The backend's name (`"memory"`, `"etcd"`, …), for logs and errors.
    fn backend(&self) -> &'static str;

    /// Registers an instance or replaces the one with the same id (an upsert). The first
    /// registration of an id emits `Created`, later ones `Updated`.
    ///
    /// # Errors
    /// [`Error::InvalidInstance`](crate::Error::InvalidInstance) (and nothing is changed),
    /// [`Error::Closed`](crate::Error::Closed), or a backend error.
    async fn register(&self, service: &ServiceInfo) -> Result<()>;

    /// Removes an instance.
    ///
    /// # Errors
    /// [`Error::NotFound`](crate::Error::NotFound) for an unknown id, `Closed`, or a backend error.
    async fn deregister(&self, id: &str) -> Result<()>;

    /// Replaces an existing instance (emits `Updated`).
    ///
    /// # Errors
    /// `NotFound` when the id is not registered, `InvalidInstance`, `Closed`, or a backend error.
    async fn update(&self, service: &ServiceInfo) -> Result<()>;

    /// Renews an instance's TTL (a heartbeat) without changing it otherwise.
    ///
    /// # Errors
    /// `NotFound` when the id is not registered, `Closed`, or a backend error.
    async fn renew(&self, id: &str) -> Result<()>;

    /// One instance by id.
    ///
    /// # Errors
    /// `NotFound`, `Closed`, or a backend error.
    async fn get_service(&self, id: &str) -> Result<ServiceInfo>;

    /// Every instance of every service.
    ///
    /// # Errors
    /// `Closed`, or a backend error.
    async fn list_services(&self) -> Result<Vec<ServiceInfo>>;

    /// Every instance of one service name, without scanning the others. An unknown name gives an
    /// empty list.
    ///
    /// # Errors
    /// `InvalidInstance` for a malformed name, `Closed`, or a backend error.
    async fn list_instances(&self, name: &str) -> Result<Vec<ServiceInfo>>;

    /// The same as [`list_instances`](Self::list_instances), as shared immutable values. Backends
    /// that keep instances in process (the in-memory registry) hand out their own `Arc`s
    /// without copying the data; the default wraps `list_instances`.
    ///
    /// # Errors
    /// As [`list_instances`](Self::list_instances).
    async fn list_instances_shared(&self, name: &str) -> Result<Vec<Arc<ServiceInfo>>> {
        Ok(self
            .list_instances(name)
            .await?
            .into_iter()
            .map(Arc::new)
            .collect())
    }

    /// Watches every service: a [`WatchEvent::Snapshot`] first, then every change; a new
    /// snapshot whenever changes may have been missed. The stream ends when dropped or when the
    /// registry closes.
    ///
    /// # Errors
    /// `Closed`, or a backend error when the watch cannot be started.
    async fn watch(&self) -> Result<WatchStream>;

    /// Watches one service name, with the same guarantees as [`watch`](Self::watch). The default
    /// filters the full watch; backends with a cheaper per-service watch override it.
    ///
    /// # Errors
    /// As [`watch`](Self::watch), plus `InvalidInstance` for a malformed name.
    async fn watch_service(&self, name: &str) -> Result<WatchStream> {
        crate::validate::validate_key_part("name", name, crate::validate::MAX_NAME_LEN)?;
        let name = name.to_owned();
        let inner = self.watch().await?;
        Ok(Box::pin(inner.filter_map(move |ev| {
            let out = match ev {
                WatchEvent::Snapshot { services, reason } => Some(WatchEvent::Snapshot {
                    services: services.into_iter().filter(|s| s.name == name).collect(),
                    reason,
                }),
                WatchEvent::Change(c) if c.service.name == name => Some(WatchEvent::Change(c)),
                WatchEvent::Change(_) => None,
            };
            std::future::ready(out)
        })))
    }

    /// [`watch_service`](Self::watch_service) with shared instances: backends that keep
    /// instances in process (the in-memory registry, and every backend's watch hub) hand out
    /// their own `Arc`s, so a cache fed by the stream holds no copy of its own. The default wraps
    /// `watch_service`.
    ///
    /// # Errors
    /// As [`watch_service`](Self::watch_service).
    async fn watch_service_shared(&self, name: &str) -> Result<SharedWatchStream> {
        let inner = self.watch_service(name).await?;
        Ok(Box::pin(inner.map(SharedWatchEvent::from)))
    }

    /// How the connection to the backend is doing.
    fn state(&self) -> RegistryState {
        RegistryState::Connected
    }

    /// The current [`state`](Self::state) first, then every change of it, until the registry
    /// closes (the last item is then `Closed`). A consumer that falls behind sees the latest
    /// state, not every step. The default, for registries whose state never changes, yields
    /// the current state once.
    fn state_changes(&self) -> StateStream {
        Box::pin(futures_util::stream::iter([self.state()]))
    }

    /// The TTL used for instances registered with `ttl == 0`, if the registry has one.
    fn default_ttl(&self) -> Option<Duration> {
        None
    }

    /// Deregisters what this registry registered, stops every background task and ends every
    /// watch stream. Idempotent; every later call returns `Closed`.
    ///
    /// # Errors
    /// A backend error while cleaning up (the registry is closed regardless).
    async fn close(&self) -> Result<()>;
}
