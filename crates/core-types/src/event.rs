//! Change events and the watch stream.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;

use futures_core::Stream;
use serde::{Deserialize, Serialize};

use crate::ServiceInfo;

/// What happened to an instance. JSON: `"created"`, `"updated"`, `"deleted"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceEventType {
    /// The instance was registered for the first time.
    Created,
    /// An existing instance was registered again or updated.
    Updated,
    /// The instance was deregistered or expired.
    Deleted,
}

impl fmt::Display for ServiceEventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServiceEventType::Created => "created",
            ServiceEventType::Updated => "updated",
            ServiceEventType::Deleted => "deleted",
        })
    }
}

/// One change to one instance, as the Go module's `ServiceEvent` (`{"type":…,"service":…}`).
///
/// For `Deleted`, `service` is the last known state of the instance (at least its id and name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEvent {
    /// What happened.
    #[serde(rename = "type")]
    pub kind: ServiceEventType,
    /// The instance it happened to.
    pub service: ServiceInfo,
}

impl ServiceEvent {
    /// A `Created` event.
    pub fn created(service: ServiceInfo) -> Self {
        ServiceEvent {
            kind: ServiceEventType::Created,
            service,
        }
    }

    /// An `Updated` event.
    pub fn updated(service: ServiceInfo) -> Self {
        ServiceEvent {
            kind: ServiceEventType::Updated,
            service,
        }
    }

    /// A `Deleted` event.
    pub fn deleted(service: ServiceInfo) -> Self {
        ServiceEvent {
            kind: ServiceEventType::Deleted,
            service,
        }
    }
}

/// Why a [`WatchEvent::Snapshot`] was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SnapshotReason {
    /// The first item of every watch stream.
    Initial,
    /// The watcher fell behind and events were dropped for it.
    Lagged,
    /// The backend reconnected, lost history (etcd compaction) or renewed its session; the
    /// events in between are unknown.
    Reconnected,
}

/// One item of a registry watch stream.
///
/// A stream starts with a `Snapshot` of every instance in scope, then carries every change after
/// it. Whenever changes could have been missed (a slow watcher, a reconnect, lost history) the
/// stream sends a new `Snapshot` that replaces everything the watcher knew: a cache that applies
/// snapshots and changes in order is never silently wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WatchEvent {
    /// The complete current set of instances in scope.
    Snapshot {
        /// Every instance in scope.
        services: Vec<ServiceInfo>,
        /// Why the snapshot was sent.
        reason: SnapshotReason,
    },
    /// One change after the last snapshot.
    Change(ServiceEvent),
}

impl WatchEvent {
    /// The change, if this item is one.
    pub fn as_change(&self) -> Option<&ServiceEvent> {
        match self {
            WatchEvent::Change(e) => Some(e),
            WatchEvent::Snapshot { .. } => None,
        }
    }
}

/// A registry watch: dropping it stops the watch.
pub type WatchStream = Pin<Box<dyn Stream<Item = WatchEvent> + Send + 'static>>;

/// One item of a shared watch stream: a [`WatchEvent`] whose instances are shared immutable
/// values, so that a registry that keeps instances in process and the caches fed by it hold one
/// copy of each instance between them.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum SharedWatchEvent {
    /// The complete current set of instances in scope.
    Snapshot {
        /// Every instance in scope.
        services: Vec<Arc<ServiceInfo>>,
        /// Why the snapshot was sent.
        reason: SnapshotReason,
    },
    /// One change after the last snapshot.
    Change {
        /// What happened.
        kind: ServiceEventType,
        /// The instance it happened to (for `Deleted`, its last known state).
        service: Arc<ServiceInfo>,
    },
}

impl From<WatchEvent> for SharedWatchEvent {
    fn from(event: WatchEvent) -> Self {
        match event {
            WatchEvent::Snapshot { services, reason } => SharedWatchEvent::Snapshot {
                services: services.into_iter().map(Arc::new).collect(),
                reason,
            },
            WatchEvent::Change(c) => SharedWatchEvent::Change {
                kind: c.kind,
                service: Arc::new(c.service),
            },
        }
    }
}

/// A registry watch of shared events: dropping it stops the watch.
pub type SharedWatchStream = Pin<Box<dyn Stream<Item = SharedWatchEvent> + Send + 'static>>;

/// A stream of plain change events (the Go module's `Watch` channel).
pub type ServiceEventStream = Pin<Box<dyn Stream<Item = ServiceEvent> + Send + 'static>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_json_matches_go() {
        let e = ServiceEvent::deleted(ServiceInfo::new("a", "b", "h", 1));
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["type"], "deleted");
        assert_eq!(json["service"]["id"], "a");
        let back: ServiceEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, e);
    }
}
