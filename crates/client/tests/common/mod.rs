//! Test doubles: a discovery over a fixed instance list, and loopback hyper servers that
//! misbehave on demand, over HTTP/1.1, h2c or h2 over TLS ([`Mode`]).
#![allow(dead_code, clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use waypost_client::{HttpClient, ServiceClient, ServiceClientBuilder};
use waypost_core_types::{
    async_trait, CallGuard, CallObserver, Error, Health, Outcome, Protocol, Result, SelectContext,
    Selection, ServiceDiscovery, ServiceEventStream, ServiceInfo,
};

/// How the fixed-list discovery picks.
#[derive(Debug, Clone, Copy)]
pub enum Pick {
    /// The first instance not avoided: without `avoid`, a retry would hit the same one again.
    First,
    /// Round-robin over the instances not avoided.
    RoundRobin,
}

/// Records every guard's outcome.
#[derive(Debug, Default)]
pub struct Outcomes(pub Mutex<Vec<(String, Outcome)>>);

impl CallObserver for Outcomes {
    fn on_finish(&self, id: &str, outcome: Outcome, _latency: Duration) {
        self.0.lock().push((id.to_owned(), outcome));
    }
}

/// A `ServiceDiscovery` over a fixed list; honours `avoid` as the contract says (skip avoided
/// instances while another healthy one is left, fall back to them otherwise).
#[derive(Debug)]
pub struct StaticDiscovery {
    pub instances: Vec<Arc<ServiceInfo>>,
    pub pick: Pick,
    next: AtomicUsize,
    pub outcomes: Arc<Outcomes>,
}

impl StaticDiscovery {
    pub fn new(instances: Vec<ServiceInfo>, pick: Pick) -> Arc<Self> {
        Arc::new(StaticDiscovery {
            instances: instances.into_iter().map(Arc::new).collect(),
            pick,
            next: AtomicUsize::new(0),
            outcomes: Arc::new(Outcomes::default()),
        })
    }
}

#[async_trait]
impl ServiceDiscovery for StaticDiscovery {
    async fn discover(&self, name: &str) -> Result<Vec<Arc<ServiceInfo>>> {
        let v: Vec<_> = self
            .instances
            .iter()
            .filter(|i| i.name == name)
            .cloned()
            .collect();
        if v.is_empty() {
            return Err(Error::ServiceNotFound(name.into()));
        }
        Ok(v)
    }

    async fn select(&self, name: &str, ctx: &SelectContext<'_>) -> Result<Selection> {
        let all = self.discover(name).await?;
        let healthy: Vec<_> = all.into_iter().filter(|i| i.is_healthy()).collect();
        if healthy.is_empty() {
            return Err(Error::NoHealthyInstance(name.into()));
        }
        let preferred: Vec<_> = healthy.iter().filter(|i| !ctx.avoids(i)).cloned().collect();
        let pool = if preferred.is_empty() {
            healthy
        } else {
            preferred
        };
        let i = match self.pick {
            Pick::First => 0,
            Pick::RoundRobin => self.next.fetch_add(1, Ordering::Relaxed) % pool.len(),
        };
        let instance = pool[i].clone();
        Ok(Selection {
            guard: CallGuard::new(self.outcomes.clone(), instance.id.as_str()),
            instance,
        })
    }

    async fn watch(&self, _name: &str) -> Result<ServiceEventStream> {
        Err(Error::Unsupported("watch".into()))
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

pub fn instance(id: &str, addr: SocketAddr) -> ServiceInfo {
    ServiceInfo::new(id, "svc", addr.ip().to_string(), addr.port())
        .with_health(Health::Healthy)
        .with_protocol(Protocol::Http)
}

/// How a test's client and servers talk; the behaviour tests run in each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Plain http, HTTP/1.1 (the default).
    Http1,
    /// Plain http, HTTP/2 with prior knowledge (the client's `http2_prior_knowledge`).
    H2c,
    /// https, HTTP/2 chosen by ALPN (the server offers `h2` and `http/1.1`).
    H2Tls,
}

impl Mode {
    /// The HTTP version the servers of this mode must see.
    pub fn version(self) -> Version {
        match self {
            Mode::Http1 => Version::HTTP_11,
            Mode::H2c | Mode::H2Tls => Version::HTTP_2,
        }
    }

    /// A server that answers `reply` and refuses (505) any request of another version.
    pub async fn server(self, reply: Reply) -> TestServer {
        let tls = match self {
            Mode::H2Tls => Some(pki().acceptor(&[b"h2", b"http/1.1"])),
            Mode::Http1 | Mode::H2c => None,
        };
        TestServer::serve(reply, tls, Some(self.version())).await
    }

    /// An instance of service `svc` at `addr` that this mode's client reaches.
    pub fn instance(self, id: &str, addr: SocketAddr) -> ServiceInfo {
        match self {
            Mode::Http1 | Mode::H2c => instance(id, addr),
            // By IP (the certificate names 127.0.0.1 too): no resolver on a blocking thread,
            // which would let a paused clock jump to the attempt's timeout.
            Mode::H2Tls => instance(id, addr).with_protocol(Protocol::Https),
        }
    }

    /// A client builder over `d` that speaks this mode (trusting the test CA).
    pub fn builder(self, d: Arc<dyn ServiceDiscovery>) -> ServiceClientBuilder {
        let b = ServiceClient::builder(d).http_client(trusting_client());
        match self {
            Mode::H2c => b.http2_prior_knowledge(true),
            Mode::Http1 | Mode::H2Tls => b,
        }
    }
}

/// Runs `async fn $name(mode: Mode)` as three tests, `$name::http1`, `$name::h2c` and
/// `$name::h2_tls`, with the given test attribute.
#[macro_export]
macro_rules! in_every_mode {
    ($(#[$test:meta])* $name:ident) => {
        mod $name {
            $(#[$test])*
            async fn http1() {
                super::$name($crate::common::Mode::Http1).await
            }
            $(#[$test])*
            async fn h2c() {
                super::$name($crate::common::Mode::H2c).await
            }
            $(#[$test])*
            async fn h2_tls() {
                super::$name($crate::common::Mode::H2Tls).await
            }
        }
    };
}

/// A test CA and a certificate for `localhost` and `127.0.0.1` it signed, one per test binary.
pub struct TestPki {
    pub ca: CertificateDer<'static>,
    leaf: CertificateDer<'static>,
    key: Vec<u8>,
}

pub fn pki() -> &'static TestPki {
    static PKI: OnceLock<TestPki> = OnceLock::new();
    PKI.get_or_init(|| {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        TestPki {
            ca: ca_cert.der().clone(),
            leaf: leaf.der().clone(),
            key: leaf_key.serialize_der(),
        }
    })
}

impl TestPki {
    /// A TLS acceptor for `localhost` and `127.0.0.1` offering these ALPN protocols (none: no ALPN).
    pub fn acceptor(&self, alpn: &[&[u8]]) -> tokio_rustls::TlsAcceptor {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![self.leaf.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone())),
            )
            .unwrap();
        server.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsAcceptor::from(Arc::new(server))
    }

    /// The test CA as a root store.
    pub fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).unwrap();
        roots
    }
}

/// An `HttpClient` that trusts the test CA.
pub fn trusting_client() -> HttpClient {
    HttpClient::builder()
        .root_certificates(pki().roots())
        .build()
        .unwrap()
}

/// What a test server does with a request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Answer with this status and body.
    Status(u16, &'static str),
    /// Echo the request body with status 200 and `content-type: application/json`.
    Echo,
    /// A 200 whose body names the request's `host` headers and its URI's authority:
    /// `host=[a|b] authority=x` (`-` for none).
    Host,
    /// Never answer.
    Stall,
    /// Drop the connection without answering.
    Close,
    /// A 200 with a `Content-Length` body of this many bytes.
    Sized(usize),
    /// A 200 with a chunked body that never ends.
    Endless,
    /// A 200 declaring `Content-Length: n` whose body never arrives.
    Declared(u64),
}

#[derive(Debug)]
pub struct ServerState {
    pub reply: Mutex<Reply>,
    pub requests: Mutex<Vec<(Method, String, Bytes)>>,
    /// The HTTP version every request must come in (505 otherwise).
    pub expect: Option<Version>,
    /// The versions of the requests that came in another one.
    pub wrong_versions: Mutex<Vec<Version>>,
    /// Connections accepted.
    pub connections: AtomicUsize,
}

/// A loopback server on a free port (HTTP/1.1 and HTTP/2, plain or TLS); stops when dropped.
/// One that expects a version and saw another fails the test when dropped.
#[derive(Debug)]
pub struct TestServer {
    pub addr: SocketAddr,
    pub state: Arc<ServerState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
        if !std::thread::panicking() {
            let wrong = self.state.wrong_versions.lock();
            assert!(
                wrong.is_empty(),
                "server at {} expected {:?} and got {:?}",
                self.addr,
                self.state.expect,
                *wrong
            );
        }
    }
}

impl TestServer {
    pub async fn start(reply: Reply) -> TestServer {
        Self::start_with(reply, None).await
    }

    /// An HTTP/1.1 server (plain, or TLS through `tls`) that takes any version.
    pub async fn start_with(reply: Reply, tls: Option<tokio_rustls::TlsAcceptor>) -> TestServer {
        Self::serve(reply, tls, None).await
    }

    /// A server that speaks HTTP/1.1 and HTTP/2 (hyper-util's `auto` builder: HTTP/2 when the
    /// connection starts with its preface), over TLS through `tls`, and answers 505 to a request
    /// not in `expect` (recording it).
    pub async fn serve(
        reply: Reply,
        tls: Option<tokio_rustls::TlsAcceptor>,
        expect: Option<Version>,
    ) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ServerState {
            reply: Mutex::new(reply),
            requests: Mutex::new(Vec::new()),
            expect,
            wrong_versions: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                st.connections.fetch_add(1, Ordering::SeqCst);
                // No Nagle delay: under a paused clock a reply held back by the kernel would
                // let the clock jump to the attempt's timeout.
                let _ = stream.set_nodelay(true);
                let st = st.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(st.clone(), req));
                    let http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(stream).await {
                                let _ = http.serve_connection(TokioIo::new(s), svc).await;
                            }
                        }
                        None => {
                            let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
                });
            }
        });
        TestServer { addr, state, task }
    }

    pub fn set(&self, reply: Reply) {
        *self.state.reply.lock() = reply;
    }

    pub fn hits(&self) -> usize {
        self.state.requests.lock().len()
    }

    pub fn bodies(&self) -> Vec<Bytes> {
        self.state
            .requests
            .lock()
            .iter()
            .map(|(_, _, b)| b.clone())
            .collect()
    }
}

type Reply_ = Response<TestBody>;

async fn handle(
    st: Arc<ServerState>,
    req: Request<Incoming>,
) -> std::result::Result<Reply_, std::io::Error> {
    if let Some(expected) = st.expect {
        if req.version() != expected {
            st.wrong_versions.lock().push(req.version());
            return Ok(Response::builder()
                .status(StatusCode::HTTP_VERSION_NOT_SUPPORTED)
                .body(TestBody::Full(Full::new(Bytes::from_static(
                    b"wrong HTTP version",
                ))))
                .unwrap());
        }
    }
    let (parts, body) = req.into_parts();
    let hosts: Vec<&str> = parts
        .headers
        .get_all(http::header::HOST)
        .iter()
        .map(|v| v.to_str().unwrap_or("?"))
        .collect();
    let host_line = format!(
        "host=[{}] authority={}",
        hosts.join("|"),
        parts.uri.authority().map_or("-", |a| a.as_str())
    );
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    st.requests.lock().push((parts.method, path, body.clone()));
    let reply = st.reply.lock().clone();
    match reply {
        Reply::Status(code, text) => Ok(Response::builder()
            .status(StatusCode::from_u16(code).unwrap())
            .body(TestBody::Full(Full::new(Bytes::from_static(
                text.as_bytes(),
            ))))
            .unwrap()),
        Reply::Host => Ok(Response::new(TestBody::Full(Full::new(Bytes::from(
            host_line,
        ))))),
        Reply::Echo => Ok(Response::builder()
            .header("content-type", "application/json")
            .body(TestBody::Full(Full::new(body)))
            .unwrap()),
        Reply::Stall => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Err(std::io::Error::other("stalled"))
        }
        Reply::Close => Err(std::io::Error::other("dropping the connection")),
        Reply::Sized(n) => Ok(Response::new(TestBody::Full(Full::new(Bytes::from(vec![
            b'x';
            n
        ]))))),
        Reply::Endless => Ok(Response::new(TestBody::Endless)),
        Reply::Declared(n) => Ok(Response::new(TestBody::Declared(n))),
    }
}

/// A response body: a full one, or 64 KiB chunks forever (no `Content-Length`).
pub enum TestBody {
    Full(Full<Bytes>),
    Endless,
    Declared(u64),
}

impl Body for TestBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            TestBody::Full(f) => Pin::new(f).poll_frame(cx),
            TestBody::Endless => {
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&[b'y'; 65536])))))
            }
            TestBody::Declared(_) => Poll::Pending,
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            TestBody::Full(f) => f.size_hint(),
            TestBody::Endless => hyper::body::SizeHint::default(),
            TestBody::Declared(n) => hyper::body::SizeHint::with_exact(*n),
        }
    }
}

/// A port with nothing listening on it.
pub async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr
}
