//! Core types of waypost: the data model ([`ServiceInfo`], [`Health`], [`Protocol`],
//! [`ServiceEvent`], [`Metadata`]), the traits every part implements ([`ServiceRegistry`],
//! [`ServiceDiscovery`], [`LoadBalancer`], [`HealthChecker`], [`CircuitBreaker`]), the one
//! [`Error`], validation, and the Go-compatible JSON codec.
//!
//! Most users want the `waypost` facade crate, which re-exports all of this.
//!
//! ```
//! use std::time::Duration;
//! use waypost_core_types::{Health, Protocol, ServiceInfo};
//!
//! let svc = ServiceInfo::new("user-service-1", "user-service", "localhost", 8080)
//!     .with_version("1.0.0")
//!     .with_protocol(Protocol::Http)
//!     .with_health(Health::Healthy)
//!     .with_ttl(Duration::from_secs(30));
//! svc.validate()?;
//! // The JSON is the Go module's: `ttl` in nanoseconds, health as a string.
//! let json = svc.to_json()?;
//! assert!(json.contains(r#""ttl":30000000000"#));
//! assert_eq!(ServiceInfo::from_json(json.as_bytes())?, svc);
//! # Ok::<(), waypost_core_types::Error>(())
//! ```
//!
//! The module [`url`] holds what every backend's registry-URL parser shares (splitting,
//! percent-decoding, typed parameters, errors that never quote a password).
//!
//! With the feature `backend`, the parts every registry backend shares: the watch hub
//! (`WatchHub`, `ScopedHubs`), the registry-state cell (`StateCell`) and task ownership
//! (`Tasks`). The metrics they emit (state transitions, re-registrations, watch events and
//! resyncs, backend call latency and errors) are described in [`observe`]; install a
//! `metrics` recorder before building registries to see them. With the feature `conformance`, the module `conformance` holds the registry
//! conformance suite.

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod backoff;
mod balancer;
mod breaker;
mod discovery;
mod error;
mod event;
mod instances;
mod metadata;
pub mod observe;
pub mod quote;
pub mod record;
mod registry;
pub mod secret;
mod service;
mod view;

#[cfg(feature = "backend")]
pub mod hub;
#[cfg(feature = "backend")]
mod state;
#[cfg(feature = "backend")]
pub mod tasks;
pub mod time;
pub mod url;
pub mod validate;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use balancer::{CallGuard, CallObserver, LoadBalancer, Outcome, SelectContext, SlotObserver};
pub use breaker::{CircuitBreaker, CircuitState, Permit};
pub use discovery::{HealthChecker, Selection, ServiceDiscovery};
pub use error::{BoxError, Error, Result, MAX_MESSAGE_CHARS};
pub use event::{
    ServiceEvent, ServiceEventStream, ServiceEventType, SharedWatchEvent, SharedWatchStream,
    SnapshotReason, WatchEvent, WatchStream,
};
pub use instances::{InstanceSet, InstanceSetWriter, SetChange};
pub use metadata::{Iter as MetadataIter, Metadata};
pub use observe::describe_metrics;
pub use registry::{RegistryState, ServiceRegistry, StateStream};
pub use secret::{Secret, REDACTED};
pub use service::{Health, Protocol, ServiceInfo, DEFAULT_WEIGHT};
pub use view::{InstanceView, Scope};

#[cfg(feature = "backend")]
pub use hub::{ScopedHubs, WatchHub};
#[cfg(feature = "backend")]
pub use state::StateCell;
#[cfg(feature = "backend")]
pub use tasks::{StopSignal, Tasks};
pub use time::Timestamp;

/// Re-exported for implementors of the async traits.
pub use async_trait::async_trait;
