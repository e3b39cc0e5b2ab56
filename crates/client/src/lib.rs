//! The waypost service client: call a service by name.
//!
//! [`ServiceClient`] asks a [`ServiceDiscovery`](waypost_core_types::ServiceDiscovery) for an
//! instance on every attempt, sends the request over a pooled hyper client (http, or https with
//! rustls, from the instance's protocol), and
//!
//! * retries what is safe: connection failures for every method, 5xx and timeouts for idempotent
//!   methods (or all, if the caller says so), never 4xx; each retry avoids the instances that
//!   already failed in this call, waits an exponential backoff with full jitter, and must fit in a
//!   [`RetryBudget`] so retries cannot multiply the load of an outage;
//! * bounds each attempt with a timeout and the whole call with a deadline (which also caps the
//!   backoff);
//! * ejects failing instances (one breaker per instance, [`OutlierConfig`]) and probes them back;
//! * refuses response bodies above a limit (default 10 MiB) without buffering them;
//! * reports each attempt's outcome to the balancer, and traces a span per call and per attempt.
//!
//! It is also a `tower::Service<http::Request<Bytes>>` (see [`ServiceClient`]'s `Service` impl).
//!
//! Most users want the `waypost` facade crate, which re-exports this one.
//!
//! ```
//! # use std::sync::Arc;
//! # use waypost_core_types::{async_trait, Result, SelectContext, Selection, ServiceDiscovery, ServiceEventStream, ServiceInfo, Error, CallGuard};
//! # #[derive(Debug)] struct Empty;
//! # #[async_trait] impl ServiceDiscovery for Empty {
//! #   async fn discover(&self, name: &str) -> Result<Vec<Arc<ServiceInfo>>> { Err(Error::ServiceNotFound(name.into())) }
//! #   async fn select(&self, name: &str, _: &SelectContext<'_>) -> Result<Selection> { Err(Error::ServiceNotFound(name.into())) }
//! #   async fn watch(&self, _: &str) -> Result<ServiceEventStream> { Err(Error::Closed) }
//! #   async fn close(&self) -> Result<()> { Ok(()) }
//! # }
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<()> {
//! # let discovery: Arc<dyn ServiceDiscovery> = Arc::new(Empty);
//! use std::time::Duration;
//! use waypost_client::ServiceClient;
//!
//! let client = ServiceClient::builder(discovery)
//!     .timeout(Duration::from_secs(5))
//!     .retry(3, Duration::from_millis(100))
//!     .deadline(Duration::from_secs(10))
//!     .build()?;
//! // No instance of `user-service` is registered in this example:
//! let err = client.get("user-service", "/users").await.unwrap_err();
//! assert!(err.is_not_found());
//! # Ok(()) }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
mod budget;
mod client;
mod http;
mod outlier;
mod retry;
mod service;

pub use crate::body::DEFAULT_BODY_LIMIT;
pub use crate::budget::RetryBudget;
pub use crate::client::{
    CallBuilder, ServiceClient, ServiceClientBuilder, ServiceResponse, DEFAULT_TIMEOUT,
};
pub use crate::http::{HttpClient, HttpClientBuilder};
pub use crate::outlier::OutlierConfig;
pub use crate::retry::{is_idempotent, RetryPolicy};
pub use ::http::Method;
pub use bytes::Bytes;
