//! [`HttpClient`]: the pooled hyper client (http and https through rustls) under a
//! [`ServiceClient`](crate::ServiceClient).

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Authority;
use http::Uri;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tower_service::Service;
use waypost_core_types::{Error, Result};

use crate::pool::{Http1Pool, Lease, PoolError};

type Plain = Client<TcpConnector, Full<Bytes>>;

/// Idle timeouts above this mean "keep idle connections without a limit".
const IDLE_FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
type Tls = Client<HttpsConnector<TcpConnector>, Full<Bytes>>;

/// hyper's TCP connector, whose connections attach nothing to their responses.
///
/// hyper's own TCP connection puts an `HttpInfo` (the two socket addresses) into the extensions
/// of every response it carries: an allocation and a map per request, for data a
/// [`ServiceResponse`](crate::ServiceResponse) does not carry (it names the instance that
/// answered instead). Connecting, its timeout and its errors are hyper's.
#[derive(Clone)]
pub(crate) struct TcpConnector(HttpConnector);

type Connecting = <HttpConnector as Service<Uri>>::Future;

/// Why hyper's TCP connector could not connect.
pub(crate) type ConnectError = <HttpConnector as Service<Uri>>::Error;

impl Service<Uri> for TcpConnector {
    type Response = TcpConnection;
    type Error = ConnectError;
    type Future = TcpConnecting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        TcpConnecting(self.0.call(dst))
    }
}

impl TcpConnector {
    pub(crate) fn new(http: HttpConnector) -> Self {
        TcpConnector(http)
    }
}

/// A connection being opened by [`TcpConnector`].
pub(crate) struct TcpConnecting(Connecting);

impl Future for TcpConnecting {
    type Output = Result<TcpConnection, ConnectError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map_ok(TcpConnection)
    }
}

/// A TCP connection of [`TcpConnector`].
pub(crate) struct TcpConnection(TokioIo<TcpStream>);

impl Connection for TcpConnection {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl Read for TcpConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl Write for TcpConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
}

/// A pooled HTTP client for http and https (rustls with the ring provider). Cheap to clone;
/// clones share the connection pools.
/// [`ServiceClientBuilder::http_client`](crate::ServiceClientBuilder::http_client) (the Laravel-Go
/// module's `WithHTTPClient`) takes one of these.
///
/// * https offers `h2` and `http/1.1` in ALPN and speaks what the server picks: HTTP/2 on one
///   multiplexed connection per instance, or HTTP/1.1 on a pool of connections.
/// * Plain http speaks HTTP/1.1, or HTTP/2 with prior knowledge (h2c: the connection starts
///   with the HTTP/2 preface, no upgrade) when the client is built with
///   [`http2_prior_knowledge`](HttpClientBuilder::http2_prior_knowledge) or the instance's
///   metadata says so ([`HTTP2_METADATA_KEY`]).
///
/// Plain HTTP/1.1 goes through the client's own pool of hyper connections, per instance
/// address: a connection goes back once its response was read whole; a request that a reused
/// connection could not send (it closed meanwhile) goes out on another; the idle limits below
/// apply, and a timer closes connections idle too long (the crate's README, "Connections", has
/// the rules). h2c and https go through hyper-util's pool. The TLS connector's futures are
/// large: keeping them out of plain-http requests saves copying them on every call.
#[derive(Clone)]
pub struct HttpClient {
    http1: Arc<Http1Pool>,
    /// hyper's pool for plain HTTP/1.1, for what the client's own pool does not send (`CONNECT`).
    plain: Plain,
    h2c: Plain,
    tls: Tls,
    prior_knowledge: bool,
}

/// Where a request goes: the client's own HTTP/1.1 pool (the request in origin form with its
/// `Host` header, to this authority), or hyper's pool on a wire (the request's URI absolute).
#[derive(Debug, Clone)]
pub(crate) enum Route {
    Http1(Authority),
    Hyper(Wire),
}

type PoolSending<'a> =
    Pin<Box<dyn Future<Output = Result<(http::Response<Incoming>, Lease), PoolError>> + Send + 'a>>;

/// A request on its way: the response, and the lease of its connection when it came from the
/// client's own pool. Both are boxes (hyper's pool boxes its requests): the exchange's future
/// stays small.
pub(crate) enum Sending<'a> {
    Http1(PoolSending<'a>),
    Hyper(hyper_util::client::legacy::ResponseFuture),
}

impl Future for Sending<'_> {
    type Output = Result<(http::Response<Incoming>, Option<Lease>), SendError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Sending::Http1(f) => f
                .as_mut()
                .poll(cx)
                .map_ok(|(response, lease)| (response, Some(lease)))
                .map_err(SendError::Pool),
            Sending::Hyper(f) => Pin::new(f)
                .poll(cx)
                .map_ok(|response| (response, None))
                .map_err(SendError::Hyper),
        }
    }
}

/// Why a request got no response.
#[derive(Debug)]
pub(crate) enum SendError {
    Pool(PoolError),
    Hyper(hyper_util::client::legacy::Error),
}

impl SendError {
    /// Whether no connection could be opened (the request was not sent).
    pub(crate) fn is_connect(&self) -> bool {
        match self {
            SendError::Pool(PoolError::Connect(_)) => true,
            SendError::Pool(PoolError::Send(_)) => false,
            SendError::Hyper(e) => e.is_connect(),
        }
    }
}

/// The instance metadata key that chooses HTTP/2 with prior knowledge (h2c) for an `http`
/// instance: `waypost.http2`.
///
/// | value | plain http |
/// |---|---|
/// | `prior-knowledge` | HTTP/2 with prior knowledge (h2c) |
/// | `off` | HTTP/1.1, even on a client built with [`HttpClientBuilder::http2_prior_knowledge`] |
/// | absent | the client's setting (HTTP/1.1 unless `http2_prior_knowledge`) |
///
/// Values are matched ignoring ASCII case and surrounding spaces. Any other value is ignored
/// (the instance gets the client's setting) and logged at debug level, quoted and bounded:
/// metadata is written by whoever registered the instance, and one record this client does not
/// understand must not make a service uncallable. For an `https` instance the key is not read:
/// ALPN decides.
pub const HTTP2_METADATA_KEY: &str = "waypost.http2";

/// Which HTTP an instance asks for, from its metadata ([`HTTP2_METADATA_KEY`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wire {
    /// https: ALPN decides.
    Tls,
    /// Plain http, as the client is configured.
    Plain,
    /// Plain http, HTTP/2 with prior knowledge.
    H2c,
    /// Plain http, HTTP/1.1.
    Http1,
}

impl Wire {
    /// The wire of a plain-http instance, from its metadata.
    pub(crate) fn plain_for(instance: &waypost_core_types::ServiceInfo) -> Wire {
        let Some(value) = instance.metadata.get(HTTP2_METADATA_KEY) else {
            return Wire::Plain;
        };
        let v = value.trim();
        if v.eq_ignore_ascii_case("prior-knowledge") {
            Wire::H2c
        } else if v.eq_ignore_ascii_case("off") {
            Wire::Http1
        } else {
            tracing::debug!(
                instance = %waypost_core_types::quote::quoted_up_to(&instance.id, 128),
                value = %waypost_core_types::quote::quoted_up_to(value, 64),
                "ignoring metadata `{HTTP2_METADATA_KEY}`: expected `prior-knowledge` or `off`"
            );
            Wire::Plain
        }
    }
}

impl HttpClient {
    /// Sends `req` as `route` says. The lease, for a response from the client's own pool, gives
    /// its connection back once the response was read whole.
    pub(crate) fn send(&self, req: http::Request<Full<Bytes>>, route: Route) -> Sending<'_> {
        match route {
            Route::Http1(authority) => Sending::Http1(Box::pin(self.http1.send(authority, req))),
            Route::Hyper(wire) => Sending::Hyper(match wire {
                Wire::Tls => self.tls.request(req),
                _ if self.speaks_http1(wire) => self.plain.request(req),
                Wire::Plain | Wire::Http1 | Wire::H2c => self.h2c.request(req),
            }),
        }
    }

    /// Whether a request on plain-http `wire` goes out over HTTP/1.1 (for https, ALPN decides
    /// later).
    fn speaks_http1(&self, wire: Wire) -> bool {
        match wire {
            Wire::Http1 => true,
            Wire::Plain => !self.prior_knowledge,
            Wire::Tls | Wire::H2c => false,
        }
    }

    /// Where a `method` request to `authority` on `wire` goes: plain HTTP/1.1 through the
    /// client's own pool (but `CONNECT`, which hyper's pool writes in authority form), the rest
    /// through hyper's.
    pub(crate) fn route(&self, wire: Wire, method: &http::Method, authority: &Authority) -> Route {
        if self.speaks_http1(wire) && method != http::Method::CONNECT {
            Route::Http1(authority.clone())
        } else {
            Route::Hyper(wire)
        }
    }

    /// Whether plain http uses HTTP/2 with prior knowledge unless an instance says otherwise.
    pub fn http2_prior_knowledge(&self) -> bool {
        self.prior_knowledge
    }

    /// This client (sharing its pools) with plain http over HTTP/2 with prior knowledge, or not.
    pub(crate) fn with_prior_knowledge(mut self, yes: bool) -> Self {
        self.prior_knowledge = yes;
        self
    }
}

impl HttpClient {
    /// A client with the defaults of [`HttpClientBuilder`].
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] if the TLS configuration cannot be built.
    pub fn new() -> Result<Self> {
        HttpClient::builder().build()
    }

    /// A builder.
    pub fn builder() -> HttpClientBuilder {
        HttpClientBuilder::default()
    }
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient")
            .field("http2_prior_knowledge", &self.prior_knowledge)
            .finish_non_exhaustive()
    }
}

/// Builds an [`HttpClient`].
#[derive(Debug, Clone)]
#[must_use]
pub struct HttpClientBuilder {
    connect_timeout: Option<Duration>,
    pool_idle_timeout: Duration,
    pool_max_idle_per_host: usize,
    tls: Option<rustls::ClientConfig>,
    roots: Option<rustls::RootCertStore>,
    prior_knowledge: bool,
}

impl Default for HttpClientBuilder {
    fn default() -> Self {
        HttpClientBuilder {
            connect_timeout: Some(Duration::from_secs(5)),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 64,
            tls: None,
            roots: None,
            prior_knowledge: false,
        }
    }
}

impl HttpClientBuilder {
    /// Gives up connecting after `timeout` (default 5 s; `None` or `Some(Duration::MAX)` waits
    /// as long as the call's own timeout allows). `Some(Duration::ZERO)` is refused by
    /// [`build`](Self::build).
    pub fn connect_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Closes pooled connections idle this long (default 90 s): a connection found expired is
    /// not used, and while an instance has idle connections a timer closes the expired ones.
    /// Zero keeps no idle connection (every request opens a new one); `Duration::MAX` (or
    /// anything above 100 years) keeps them without an idle limit.
    pub fn pool_idle_timeout(mut self, timeout: Duration) -> Self {
        self.pool_idle_timeout = timeout;
        self
    }

    /// Keeps at most this many idle connections per instance (default 64).
    pub fn pool_max_idle_per_host(mut self, max: usize) -> Self {
        self.pool_max_idle_per_host = max;
        self
    }

    /// Trusts these roots instead of the bundled webpki (Mozilla) roots, for example a private
    /// CA.
    pub fn root_certificates(mut self, roots: rustls::RootCertStore) -> Self {
        self.roots = Some(roots);
        self
    }

    /// Plain http over HTTP/2 with prior knowledge (h2c, like reqwest's
    /// `http2_prior_knowledge`): every connection starts with the HTTP/2 preface, so the servers
    /// must speak HTTP/2 without negotiation. Default `false`: HTTP/1.1. An instance's metadata
    /// ([`HTTP2_METADATA_KEY`]) overrides this either way; https is not affected (ALPN decides).
    pub fn http2_prior_knowledge(mut self, yes: bool) -> Self {
        self.prior_knowledge = yes;
        self
    }

    /// Uses this rustls configuration (overrides [`root_certificates`](Self::root_certificates)).
    /// Its ALPN protocols must be left empty: the client offers `h2` and `http/1.1` itself.
    pub fn tls_config(mut self, config: rustls::ClientConfig) -> Self {
        self.tls = Some(config);
        self
    }

    /// Builds the client.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a zero connect timeout, for a [`tls_config`](Self::tls_config)
    /// with ALPN protocols of its own, or if the TLS configuration cannot be built.
    pub fn build(self) -> Result<HttpClient> {
        if self.connect_timeout.is_some_and(|t| t.is_zero()) {
            return Err(Error::InvalidConfig(
                "HTTP client: connect_timeout must be above zero (None: no limit of its own)"
                    .into(),
            ));
        }
        // hyper's pool adds the idle timeout to the current time: beyond 100 years it is no
        // limit at all (and could overflow the clock).
        if self
            .tls
            .as_ref()
            .is_some_and(|c| !c.alpn_protocols.is_empty())
        {
            return Err(Error::InvalidConfig(
                "HTTP client: the TLS configuration must leave alpn_protocols empty (the client \
                 offers h2 and http/1.1 itself)"
                    .into(),
            ));
        }
        let idle = Some(self.pool_idle_timeout).filter(|t| *t <= IDLE_FOREVER);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls_err = |e: rustls::Error| Error::InvalidConfig(format!("TLS: {e}"));
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(self.connect_timeout);
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = match (self.tls, self.roots) {
            (Some(cfg), _) => builder.with_tls_config(cfg),
            (None, Some(roots)) => builder.with_tls_config(
                rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(tls_err)?
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
            ),
            (None, None) => builder
                .with_provider_and_webpki_roots(provider)
                .map_err(tls_err)?,
        };
        let tcp = TcpConnector::new(http);
        let connector = builder
            .https_only()
            .enable_all_versions()
            .wrap_connector(tcp.clone());
        let mut pool = Client::builder(TokioExecutor::new());
        pool.pool_idle_timeout(idle)
            .pool_max_idle_per_host(self.pool_max_idle_per_host)
            .pool_timer(TokioTimer::new());
        let http1 = Arc::new(Http1Pool::new(
            tcp.clone(),
            idle,
            self.pool_max_idle_per_host,
        ));
        let plain = pool.build(tcp.clone());
        let tls = pool.build(connector);
        // Prior knowledge: one multiplexed HTTP/2 connection per instance.
        pool.http2_only(true);
        Ok(HttpClient {
            http1,
            plain,
            h2c: pool.build(tcp),
            tls,
            prior_knowledge: self.prior_knowledge,
        })
    }
}

#[cfg(test)]
mod tests {
    use waypost_core_types::ServiceInfo;

    use super::*;

    fn wire(value: Option<&str>) -> Wire {
        let mut i = ServiceInfo::new("a", "svc", "127.0.0.1", 80);
        if let Some(v) = value {
            i = i.with_metadata(HTTP2_METADATA_KEY, v);
        }
        Wire::plain_for(&i)
    }

    #[test]
    fn metadata_chooses_the_plain_wire() {
        assert_eq!(wire(None), Wire::Plain);
        assert_eq!(wire(Some("prior-knowledge")), Wire::H2c);
        assert_eq!(wire(Some(" Prior-Knowledge\t")), Wire::H2c);
        assert_eq!(wire(Some("off")), Wire::Http1);
        assert_eq!(wire(Some("OFF")), Wire::Http1);
        // Unknown, empty, hostile or huge values: ignored, the client's setting applies.
        for v in [
            "",
            "true",
            "h2",
            "prior knowledge",
            "off\u{1b}[2J",
            &"x".repeat(1 << 20),
        ] {
            assert_eq!(wire(Some(v)), Wire::Plain, "{v:?}");
        }
    }

    #[test]
    fn prior_knowledge_is_off_by_default_and_kept_by_clones() {
        let http = HttpClient::new().unwrap();
        assert!(!http.http2_prior_knowledge());
        let h2 = http.clone().with_prior_knowledge(true);
        assert!(h2.http2_prior_knowledge());
        assert!(!http.http2_prior_knowledge());
        assert!(HttpClient::builder()
            .http2_prior_knowledge(true)
            .build()
            .unwrap()
            .http2_prior_knowledge());
    }
}
