//! The [`ServiceDiscovery`] and [`HealthChecker`] traits.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::{CallGuard, Result, SelectContext, ServiceEventStream, ServiceInfo};

/// One instance picked for a call, with the guard that reports the call's outcome to the balancer.
#[derive(Debug)]
pub struct Selection {
    /// The chosen instance.
    pub instance: Arc<ServiceInfo>,
    /// Finish it when the call ends (see [`CallGuard`]).
    pub guard: CallGuard,
}

/// Finds instances of a service by name.
#[async_trait]
pub trait ServiceDiscovery: Send + Sync + fmt::Debug {
    /// Every instance of the service, healthy or not.
    ///
    /// # Errors
    /// [`Error::ServiceNotFound`](crate::Error::ServiceNotFound) when no instance is registered,
    /// `Closed`, or a registry error when nothing is cached.
    async fn discover(&self, name: &str) -> Result<Vec<Arc<ServiceInfo>>>;

    /// One instance chosen by the balancer, honouring `ctx` (hash key, instances to avoid), with
    /// a guard to report the call's outcome. A healthy instance, or, when the service has none,
    /// one whose health is unknown; never an unhealthy one (see
    /// [`Health`](crate::Health#which-instances-a-balancer-picks)).
    ///
    /// # Errors
    /// `ServiceNotFound` when no instance is registered,
    /// [`Error::NoHealthyInstance`](crate::Error::NoHealthyInstance) when every instance is
    /// unhealthy,
    /// `Closed`, or a registry error when nothing is cached.
    async fn select(&self, name: &str, ctx: &SelectContext<'_>) -> Result<Selection>;

    /// One instance chosen by the balancer, as [`select`](Self::select) picks it.
    ///
    /// # Errors
    /// As [`select`](Self::select).
    async fn discover_one(&self, name: &str) -> Result<Arc<ServiceInfo>> {
        let sel = self.select(name, &SelectContext::default()).await?;
        Ok(sel.instance)
    }

    /// The changes to one service, as they happen.
    ///
    /// # Errors
    /// `Closed`, or a registry error when the watch cannot start.
    async fn watch(&self, name: &str) -> Result<ServiceEventStream>;

    /// Stops every background task and ends every watch. Idempotent.
    ///
    /// # Errors
    /// Only from the underlying registry, if the discovery owns it.
    async fn close(&self) -> Result<()>;
}

/// Checks whether one instance is healthy.
#[async_trait]
pub trait HealthChecker: Send + Sync + fmt::Debug {
    /// `Ok(())` when the instance is healthy, otherwise the reason it is not.
    ///
    /// # Errors
    /// Why the instance is considered unhealthy (refused, timed out, bad status, …).
    async fn check(&self, service: &ServiceInfo) -> Result<()>;

    /// Whether [`check`](Self::check) succeeds.
    async fn is_healthy(&self, service: &ServiceInfo) -> bool {
        self.check(service).await.is_ok()
    }
}
