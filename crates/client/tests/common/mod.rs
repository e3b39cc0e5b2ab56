//! Test doubles: a discovery over a fixed instance list, and loopback hyper servers that
//! misbehave on demand.
#![allow(dead_code, clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::TcpListener;
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

/// What a test server does with a request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Answer with this status and body.
    Status(u16, &'static str),
    /// Echo the request body with status 200 and `content-type: application/json`.
    Echo,
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
}

/// A loopback HTTP/1.1 server on a free port; stops when dropped.
#[derive(Debug)]
pub struct TestServer {
    pub addr: SocketAddr,
    pub state: Arc<ServerState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    pub async fn start(reply: Reply) -> TestServer {
        Self::start_with(reply, None).await
    }

    pub async fn start_with(reply: Reply, tls: Option<tokio_rustls::TlsAcceptor>) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ServerState {
            reply: Mutex::new(reply),
            requests: Mutex::new(Vec::new()),
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let st = st.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(st.clone(), req));
                    let http = hyper::server::conn::http1::Builder::new();
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
    let (parts, body) = req.into_parts();
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
