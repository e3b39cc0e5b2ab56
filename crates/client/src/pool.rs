//! HTTP/1.1 connections to plain-http instances, pooled per instance address.
//!
//! hyper's general-purpose pool (`hyper_util`'s legacy client) hashes the scheme and authority
//! byte by byte with SipHash when a request takes a connection and again when it gives it back,
//! races a connect against every checkout, formats the `Host` header and rewrites the URI into
//! origin form on every request. This pool is keyed by the instance's authority with a cheap hash
//! behind a lock-free read, sends requests already in origin form with the `Host` header the
//! caller wrote once per instance, and takes hyper's HTTP/1.1 connections (`hyper::client::conn`)
//! directly. What it keeps of hyper's pool:
//!
//! * the newest idle connection is taken first, and a closed one is dropped;
//! * a request a reused connection could not send (it closed in the meantime) goes out on
//!   another connection, as hyper's pool retries a canceled request;
//! * at most `max_idle` idle connections per instance, none older than the idle timeout: an
//!   expired one is dropped when a request looks for one, and a timer per instance with idle
//!   connections closes them when no request comes;
//! * a connection goes back only after its response was read whole; a response read in part
//!   (an error's prefix, a body over the limit, a timeout) closes its connection.
//!
//! h2c and https stay on hyper's pool: HTTP/2 multiplexes one connection, and TLS lets ALPN
//! choose the protocol.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::fmt;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use parking_lot::Mutex;
use tokio::time::Instant;
use tower_service::Service;

use crate::http::{ConnectError, TcpConnector};
use crate::outlier::Fnv;

type Sender = SendRequest<Full<Bytes>>;

/// A connection waiting for its next request.
struct Idle {
    sender: Sender,
    since: Instant,
}

/// One instance's idle connections.
struct Endpoint {
    idle: Mutex<Vec<Idle>>,
    /// Whether a timer closes this instance's expired idle connections (one at a time).
    reaping: AtomicBool,
    /// How long a connection may stay idle; `None`: no limit.
    idle_timeout: Option<Duration>,
    max_idle: usize,
}

type Endpoints = HashMap<Box<str>, Arc<Endpoint>, BuildHasherDefault<Fnv>>;

/// The pool of an [`HttpClient`](crate::HttpClient)'s plain HTTP/1.1 connections; its clones
/// share it.
pub(crate) struct Http1Pool {
    connector: TcpConnector,
    idle_timeout: Option<Duration>,
    max_idle: usize,
    endpoints: ArcSwap<Endpoints>,
    insert: Mutex<()>,
}

/// A connection that could not be opened: shown as hyper's pool shows it, `client error
/// (Connect)`, with the connector's error (and its I/O error) as its source.
#[derive(Debug)]
pub(crate) struct ConnectFailed(Box<dyn StdError + Send + Sync>);

impl fmt::Display for ConnectFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("client error (Connect)")
    }
}

impl StdError for ConnectFailed {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.0)
    }
}

/// A request that failed on its connection: shown as hyper's pool shows it, `client error
/// (SendRequest)`, with hyper's error as its source.
#[derive(Debug)]
pub(crate) struct SendFailed(hyper::Error);

impl fmt::Display for SendFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("client error (SendRequest)")
    }
}

impl StdError for SendFailed {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.0)
    }
}

/// Why [`Http1Pool::send`] failed.
#[derive(Debug)]
pub(crate) enum PoolError {
    /// No connection could be opened: the request was not sent.
    Connect(ConnectFailed),
    /// The connection failed with the request on it.
    Send(SendFailed),
}

/// The connection a response came on. [`release`](Self::release) gives it back once the response
/// was read whole; dropped, it closes the connection (hyper closes an HTTP/1.1 connection whose
/// sender is gone once its exchange is over).
///
/// Boxed: a lease lives in the exchange's future while the body is read, and a pointer keeps that
/// future within the allocator's per-thread cache.
pub(crate) struct Lease(Box<(Sender, Arc<Endpoint>)>);

impl Lease {
    /// Gives the connection back to its instance's idle connections.
    pub(crate) fn release(self) {
        let (sender, endpoint) = *self.0;
        if endpoint.max_idle == 0 || endpoint.idle_timeout.is_some_and(|t| t.is_zero()) {
            return;
        }
        if sender.is_closed() {
            return;
        }
        let mut idle = endpoint.idle.lock();
        if idle.len() >= endpoint.max_idle {
            return;
        }
        idle.push(Idle {
            sender,
            since: Instant::now(),
        });
        if let Some(timeout) = endpoint.idle_timeout {
            if !endpoint.reaping.swap(true, Ordering::AcqRel) {
                drop(idle);
                spawn_reaper(&endpoint, timeout);
            }
        }
    }
}

/// Closes `endpoint`'s connections that stay idle past `timeout` (and drops the ones the server
/// closed), until it has none left.
fn spawn_reaper(endpoint: &Arc<Endpoint>, timeout: Duration) {
    let endpoint = Arc::downgrade(endpoint);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(timeout).await;
            let Some(endpoint) = endpoint.upgrade() else {
                return;
            };
            let mut idle = endpoint.idle.lock();
            let now = Instant::now();
            idle.retain(|i| {
                now.saturating_duration_since(i.since) < timeout && !i.sender.is_closed()
            });
            if idle.is_empty() {
                // Under the lock: a connection given back from now on starts a new timer.
                endpoint.reaping.store(false, Ordering::Release);
                return;
            }
        }
    });
}

impl Endpoint {
    /// The newest idle connection that is not closed nor expired, dropping the others found on
    /// the way.
    fn checkout(&self) -> Option<Sender> {
        let mut idle = self.idle.lock();
        let now = Instant::now();
        while let Some(i) = idle.pop() {
            let expired = self
                .idle_timeout
                .is_some_and(|t| now.saturating_duration_since(i.since) >= t);
            if !expired && !i.sender.is_closed() {
                return Some(i.sender);
            }
        }
        None
    }
}

impl Http1Pool {
    /// A pool opening connections with `connector`, keeping at most `max_idle` idle connections
    /// per instance for at most `idle_timeout` (`None`: no limit; zero: none).
    pub(crate) fn new(
        connector: TcpConnector,
        idle_timeout: Option<Duration>,
        max_idle: usize,
    ) -> Self {
        Http1Pool {
            connector,
            idle_timeout,
            max_idle,
            endpoints: ArcSwap::default(),
            insert: Mutex::new(()),
        }
    }

    /// The idle connections of `authority`.
    fn endpoint(&self, authority: &Authority) -> Arc<Endpoint> {
        if let Some(e) = self.endpoints.load().get(authority.as_str()) {
            return e.clone();
        }
        let _one_writer = self.insert.lock();
        let current = self.endpoints.load();
        if let Some(e) = current.get(authority.as_str()) {
            return e.clone();
        }
        let e = Arc::new(Endpoint {
            idle: Mutex::new(Vec::new()),
            reaping: AtomicBool::new(false),
            idle_timeout: self.idle_timeout,
            max_idle: self.max_idle,
        });
        // Instances come and go: an address with no idle connection and no request on one
        // (only the map holds it) is forgotten when another one is added.
        let mut map: Endpoints = current
            .iter()
            .filter(|(_, e)| Arc::strong_count(e) > 1 || !e.idle.lock().is_empty())
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect();
        map.insert(authority.as_str().into(), e.clone());
        self.endpoints.store(Arc::new(map));
        e
    }

    /// Opens a connection to `authority`.
    async fn connect(&self, authority: &Authority) -> Result<Sender, PoolError> {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(authority.clone());
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        let failed = |e: Box<dyn StdError + Send + Sync>| PoolError::Connect(ConnectFailed(e));
        let uri = Uri::from_parts(parts).map_err(|e| failed(e.into()))?;
        let io = self
            .connector
            .clone()
            .call(uri)
            .await
            .map_err(|e: ConnectError| failed(e.into()))?;
        let (sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| PoolError::Send(SendFailed(e)))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "HTTP/1.1 connection ended");
            }
        });
        Ok(sender)
    }

    /// Sends `req` (origin form, with its `Host` header) to `authority` on an idle connection or
    /// a new one.
    pub(crate) async fn send(
        &self,
        authority: Authority,
        mut req: Request<Full<Bytes>>,
    ) -> Result<(Response<Incoming>, Lease), PoolError> {
        let endpoint = self.endpoint(&authority);
        loop {
            let (mut sender, reused) = match endpoint.checkout() {
                Some(sender) => (sender, true),
                // Boxed: connecting is rare, and its future would make every request's large.
                None => (Box::pin(self.connect(&authority)).await?, false),
            };
            if reused && !sender.is_ready() && sender.ready().await.is_err() {
                // Closed since it was given back.
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(response) => return Ok((response, Lease(Box::new((sender, endpoint))))),
                Err(mut e) => match e.take_message() {
                    // Not sent: the connection closed before the request went out on it.
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(PoolError::Send(SendFailed(e.into_error()))),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use hyper_util::client::legacy::connect::HttpConnector;

    use super::*;

    #[test]
    fn addresses_without_connections_are_forgotten() {
        let pool = Http1Pool::new(TcpConnector::new(HttpConnector::new()), None, 8);
        let held: Authority = "10.0.0.1:80".parse().unwrap();
        let kept = pool.endpoint(&held);
        for port in 1000..2000 {
            let a: Authority = format!("10.0.0.2:{port}").parse().unwrap();
            drop(pool.endpoint(&a));
        }
        // The held one (a request is on it) and the last one added.
        assert_eq!(pool.endpoints.load().len(), 2);
        assert!(Arc::ptr_eq(&kept, &pool.endpoint(&held)));
    }
}
