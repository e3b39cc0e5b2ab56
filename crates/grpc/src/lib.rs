//! gRPC over waypost discovery: a [`Channel`] that any tonic-generated client accepts, and a
//! `grpc.health.v1` [`GrpcHealthChecker`] for discovery's health monitor.
//!
//! Most users want the `waypost` facade crate (feature `grpc`), which re-exports this one as
//! `waypost::grpc`.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # async fn demo(discovery: Arc<dyn waypost_core_types::ServiceDiscovery>) -> Result<(), Box<dyn std::error::Error>> {
//! use tonic_health::pb::health_client::HealthClient;
//! use tonic_health::pb::HealthCheckRequest;
//!
//! let mut client = HealthClient::new(waypost_grpc::channel(discovery, "greeter")?);
//! let reply = client.check(HealthCheckRequest { service: String::new() }).await?;
//! # let _ = reply; Ok(()) }
//! ```
//!
//! # What a call does
//! Every call asks discovery's balancer for an instance (round robin, least request, peak
//! EWMA, consistent hash with the key from [`ChannelBuilder::hash_key_header`] or a
//! [`HashKey`] extension), avoiding the instances that failed in this call, the ejected ones
//! and those waiting to reconnect, and reports the outcome to the balancer when the response
//! ends. Each instance has one HTTP/2 connection, multiplexing every call to it: opened on
//! first use; opened again after it closed, and after a failed attempt once a backoff has
//! elapsed (100 ms growing to 10 s; a connection lost before it brought any response counts
//! as a failed one; an instance picked as the only one left is tried at once),
//! never dropped for good.
//!
//! When an instance leaves discovery, no new call goes to it and its connection drains: the
//! calls running on it finish (a removed instance is usually draining too), and the connection
//! is closed when the last one ends, or at the first sweep (every [`ChannelBuilder::sweep_interval`],
//! 5 s) after the drain bound ([`ChannelBuilder::drain_timeout`]: the channel's timeout if set,
//! else [`DEFAULT_DRAIN_TIMEOUT`], 30 s), the calls still running then failing with
//! `UNAVAILABLE`.
//!
//! # Behaviour on failures
//! * **Failover** (any method): a request that never left — the connection could not be
//!   opened (refused, TLS failure, connect timeout of 5 s), or closed before hyper sent the
//!   request — goes to another instance, up to 8 times. The error when every instance failed
//!   is `UNAVAILABLE` naming the service and the last instance tried:
//!   ``service `greeter`, instance `g-1` (127.0.0.1:50051): connect: Connection refused …``;
//!   with no instance at all, ``no instance of service `greeter`: …``.
//! * **Retries** (only methods given a [`RetryPolicy`] with [`ChannelBuilder::retry_method`],
//!   `retry_service` or `retry_all`, as gRPC's service config does): a trailers-only response
//!   whose `grpc-status` is one of the policy's codes (default `UNAVAILABLE`), or a transport
//!   failure after the request was sent (counted as `UNAVAILABLE`), is retried on another
//!   instance when possible, after a backoff (`grpc-retry-pushback-ms` is obeyed), up to the
//!   policy's attempts, while the deadline leaves time, and only while the shared
//!   [`RetryBudget`](waypost_client::RetryBudget) allows (default: 20 % of requests plus 10 per
//!   second). A status in trailers after response messages is never retried.
//! * **Replayable bodies**: a request body complete when the call starts and at most 64 KiB
//!   ([`ChannelBuilder::replay_limit`]) is kept and can be sent again; a streaming or larger
//!   body is sent once: failed over only while it never left, never retried.
//! * **Outlier ejection**: the same rules as waypost's HTTP `ServiceClient`
//!   ([`OutlierConfig`](waypost_client::OutlierConfig): 5 failures in a row eject an instance
//!   for 10 s, then one probe). Failures: connections that cannot be opened, transport errors,
//!   and `UNAVAILABLE`, `INTERNAL`, `UNKNOWN`, `DATA_LOSS` statuses.
//! * **Deadline**: the caller's `grpc-timeout` (tonic's `Request::set_timeout`) or the channel's
//!   [`ChannelBuilder::timeout`], whichever is shorter, bounds every attempt and backoff and the
//!   response body; each attempt sends what is left of it as `grpc-timeout`. When it passes the
//!   call ends with `DEADLINE_EXCEEDED` naming the service and instance.
//! * **Statuses of servers** are passed on (the retried ones when the retries end) with their
//!   code and details, and ``(service `greeter`, instance `g-1` (127.0.0.1:50051))`` appended
//!   to their message, which is bounded (256 characters) and escaped. So every error a call
//!   returns names the service and, when one was picked, the instance.
//! * **Hostile or non-gRPC answers** give clear errors, never a panic: a `grpc-status` that is
//!   not a code from 0 to 16 becomes `UNKNOWN` (``invalid grpc-status `…` ``); a
//!   `grpc-status-details-bin` that is not base64 is dropped; a response without `grpc-status`
//!   whose HTTP status is not 200, or whose content type is not `application/grpc…`, gets the
//!   code gRPC maps it to (`grpc/grpc doc/http-grpc-status-mapping.md`: 404 `UNIMPLEMENTED`,
//!   429, 502, 503, 504 `UNAVAILABLE`, …) with ``not a gRPC response: HTTP 404, content type
//!   `text/html` ``; a response that ends without a status gets `INTERNAL`; response headers
//!   above HTTP/2's 16 KiB header list limit fail the attempt as a transport error.
//!
//! # Observability
//! Metrics through the `metrics` facade, per channel and full method path: calls and attempts
//! by the class of their status code, latency to the end of the response, failovers and
//! retries, budget refusals, deadlines, body bytes, and the outlier detection's ejections,
//! probes and breaker transitions per instance ([`describe_metrics`]; install the recorder
//! before building the channel). With the feature `otel`, each attempt is an OpenTelemetry span
//! (`waypost.attempt`) under the caller's span and the request carries its W3C `traceparent`
//! from the global propagator (see `waypost-client`'s docs).
//!
//! # TLS
//! `https` instances, and `grpc` instances whose metadata has `tls` = `true` (or `1`), are
//! called over rustls with ALPN `h2`, the server name being the instance's address; roots are
//! the bundled webpki ones unless [`ChannelBuilder::root_certificates`] or
//! [`ChannelBuilder::tls_config`] say otherwise.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
mod builder;
mod channel;
mod connect;
mod health;
mod metrics;
mod pool;
mod retry;
mod status;
mod timeout;

use std::sync::Arc;

pub use crate::body::{RequestBody, ResponseBody};
pub use crate::builder::{ChannelBuilder, DEFAULT_DRAIN_TIMEOUT, DEFAULT_REPLAY_LIMIT};
pub use crate::channel::{Channel, HashKey};
pub use crate::connect::uses_tls;
pub use crate::health::{GrpcHealthChecker, HealthService};
pub use crate::metrics::describe_metrics;
pub use crate::retry::RetryPolicy;
pub use tonic::Code;

/// A channel to `service` with the defaults (see the crate docs); [`Channel::builder`] for
/// options.
///
/// # Errors
/// [`Error::InvalidConfig`](waypost_core_types::Error::InvalidConfig) if the default TLS
/// configuration cannot be built.
pub fn channel(
    discovery: Arc<dyn waypost_core_types::ServiceDiscovery>,
    service: &str,
) -> waypost_core_types::Result<Channel> {
    Channel::builder(discovery, service).build()
}
