//! The waypost service client: call a service by name.
//!
//! [`ServiceClient`] asks a [`ServiceDiscovery`](waypost_core_types::ServiceDiscovery) for an
//! instance on every attempt, sends the request over pooled hyper connections (http, or https with
//! rustls, from the instance's protocol), and
//!
//! * retries what may succeed on another try
//!   ([`Error::is_retryable`](waypost_core_types::Error::is_retryable)) and is safe to repeat:
//!   connection failures for every method, 5xx and timeouts for idempotent methods (or all, if
//!   the caller says so), never 4xx or an undecodable response; each retry avoids the instances
//!   that already failed in this call, and must fit in a [`RetryBudget`] so retries cannot
//!   multiply the load of an outage; the first retry goes out at once when it goes to another
//!   instance, later ones (and a first one to an instance that failed) wait an exponential backoff
//!   with full jitter ([`RetryPolicy::immediate_failover`]);
//! * bounds each attempt with a timeout and the whole call with a deadline (which also caps the
//!   backoff);
//! * ejects failing instances (one breaker per instance, [`OutlierConfig`]) and probes them back;
//! * speaks HTTP/1.1 or HTTP/2: https offers both in ALPN and uses what the server picks; plain
//!   http is HTTP/1.1 unless the client is built with
//!   [`http2_prior_knowledge`](ServiceClientBuilder::http2_prior_knowledge) or the instance's
//!   metadata asks for it ([`HTTP2_METADATA_KEY`], `waypost.http2` = `prior-knowledge` or
//!   `off`); an HTTP/2 stream the server refused (`REFUSED_STREAM`) was not processed, and is
//!   retried on another instance for every method;
//! * keeps plain HTTP/1.1 connections in a pool of its own, per instance address (hyper's
//!   connections, `hyper::client::conn::http1`; h2c and https use hyper-util's pool): a
//!   connection goes back once its response was read whole, a request a reused connection could
//!   not send goes out on another, at most
//!   [`pool_max_idle_per_host`](HttpClientBuilder::pool_max_idle_per_host) idle connections per
//!   instance stay open, none longer than
//!   [`pool_idle_timeout`](HttpClientBuilder::pool_idle_timeout);
//! * refuses response bodies above a limit (default 10 MiB) without buffering them;
//! * reports each attempt's outcome to the balancer, and traces a span per call and per attempt;
//!   the call span records the path without its query string and fragment (they may carry a
//!   token), and [`Error::Http`](waypost_core_types::Error::Http) quotes at most 512 characters
//!   of an error body with control characters escaped.
//!
//! It is also a `tower::Service<http::Request<Bytes>>` (see [`ServiceClient`]'s `Service` impl).
//!
//! # Observability
//! Metrics go through the `metrics` facade: calls and attempts by service, method and outcome,
//! their latency, retries, retry-budget refusals, deadlines exceeded, body bytes, and per
//! instance the outlier detection's ejections, probes and breaker transitions
//! ([`describe_metrics`] lists them). Install the recorder before building the client: the
//! handles of a service are registered on its first call, and with no recorder they record
//! nothing.
//!
//! With the feature `otel`, each attempt is an OpenTelemetry span `waypost.attempt` (attributes
//! `waypost.service`, `waypost.instance`, `waypost.attempt`, `waypost.outcome`), a child of the
//! caller's span: the current `tracing` span's OpenTelemetry context (the `tracing-opentelemetry`
//! layer) or else the current OpenTelemetry `Context`. The request carries the attempt span's
//! W3C `traceparent` and `tracestate`, written by the global text-map propagator
//! (`opentelemetry::global::set_text_map_propagator`); spans come from the global tracer
//! provider (tracer `waypost`).
//!
//! Most users want the `waypost` facade crate, which re-exports this one.
//!
//! ```
//! # use std::net::SocketAddr;
//! # async fn start_user_service() -> SocketAddr {
//! #     use http_body_util::{BodyExt, Full};
//! #     let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! #     let addr = listener.local_addr().unwrap();
//! #     tokio::spawn(async move {
//! #         loop {
//! #             let (io, _) = listener.accept().await.unwrap();
//! #             tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(
//! #                 hyper_util::rt::TokioIo::new(io),
//! #                 hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
//! #                     let body = if req.method() == hyper::Method::POST {
//! #                         req.into_body().collect().await?.to_bytes()
//! #                     } else {
//! #                         bytes::Bytes::from_static(br#"{"name":"alice"}"#)
//! #                     };
//! #                     Ok::<_, hyper::Error>(hyper::Response::new(Full::new(body)))
//! #                 }),
//! #             ));
//! #         }
//! #     });
//! #     addr
//! # }
//! use std::sync::Arc;
//! use std::time::Duration;
//! use serde::{Deserialize, Serialize};
//! use waypost_balancer::RoundRobin;
//! use waypost_client::ServiceClient;
//! use waypost_core_types::{Health, ServiceInfo, ServiceRegistry};
//! use waypost_discovery::CachedDiscovery;
//! use waypost_registry_memory::MemoryRegistry;
//!
//! #[derive(Debug, PartialEq, Serialize, Deserialize)]
//! struct User {
//!     name: String,
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> waypost_core_types::Result<()> {
//! let addr = start_user_service().await; // a local HTTP server
//! let registry = Arc::new(MemoryRegistry::new());
//! let instance = ServiceInfo::new("user-1", "user-service", "127.0.0.1", addr.port())
//!     .with_health(Health::Healthy);
//! registry.register(&instance).await?;
//! let discovery = Arc::new(CachedDiscovery::new(registry, Arc::new(RoundRobin::new())));
//!
//! let client = ServiceClient::builder(discovery)
//!     .timeout(Duration::from_secs(5)) // per attempt
//!     .retry(3, Duration::from_millis(100)) // 3 retries, backoff from 100 ms with jitter
//!     .deadline(Duration::from_secs(10)) // the whole call
//!     .build()?;
//!
//! let body = client.get("user-service", "/users/1").await?;
//! assert_eq!(body, r#"{"name":"alice"}"#);
//!
//! let bob = User { name: "bob".into() };
//! let created: User = client.post_json("user-service", "/users", &bob).await?;
//! assert_eq!(created, bob);
//!
//! // Not registered: discovery's error comes back as is.
//! assert!(client.get("order-service", "/orders").await.unwrap_err().is_not_found());
//! # Ok(()) }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
mod budget;
mod client;
mod http;
mod metrics;
#[doc(hidden)]
pub mod otel;
mod outlier;
mod pool;
mod retry;
mod service;
mod timer;

pub use crate::body::DEFAULT_BODY_LIMIT;
pub use crate::budget::RetryBudget;
pub use crate::client::{
    CallBuilder, ServiceClient, ServiceClientBuilder, ServiceResponse, DEFAULT_TIMEOUT,
};
pub use crate::http::{HttpClient, HttpClientBuilder, HTTP2_METADATA_KEY};
pub use crate::metrics::describe_metrics;
pub use crate::outlier::{InstancePermit, OutlierConfig, OutlierDetector};
pub use crate::retry::{is_idempotent, RetryPolicy};
pub use ::http::Method;
pub use bytes::Bytes;
