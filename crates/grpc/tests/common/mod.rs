//! Test servers and setup shared by the channel tests: a raw HTTP/2 gRPC responder (statuses,
//! delays and hostile answers on demand; counts calls and open connections), tonic-health's
//! real server, and a `MemoryRegistry` + `CachedDiscovery` to find them.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming};
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tonic_health::pb::HealthCheckRequest;
use waypost_core_types::{Health, LoadBalancer, Protocol, ServiceInfo, ServiceRegistry};
use waypost_discovery::CachedDiscovery;
use waypost_registry_memory::MemoryRegistry;

/// A hand-made answer: the response head, and its body's frames.
pub type Custom = Arc<dyn Fn() -> (http::response::Builder, Reply) + Send + Sync>;

/// How a [`Responder`] answers.
#[derive(Clone)]
pub enum Mode {
    /// `HealthCheckResponse { status: SERVING }`, then `grpc-status: 0` in trailers.
    Serving,
    /// A trailers-only `UNAVAILABLE` with the message `down`.
    Unavailable,
    /// As `Serving`, after this delay.
    Slow(Duration),
    /// Whatever the function builds.
    Custom(Custom),
}

/// A raw HTTP/2 gRPC responder; dropping it kills it (listener and every connection).
pub struct Responder {
    pub addr: SocketAddr,
    /// Requests received.
    pub calls: Arc<AtomicUsize>,
    /// Requests received and not answered yet.
    pub running: Arc<AtomicUsize>,
    /// Connections open.
    pub open: Arc<AtomicUsize>,
    /// The `grpc-timeout` of each request that had one.
    pub timeouts: Arc<Mutex<Vec<String>>>,
    pub mode: Arc<Mutex<Mode>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A body of at most two frames.
pub struct Reply(pub Option<Frame<Bytes>>, pub Option<Frame<Bytes>>);

impl Body for Reply {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        Poll::Ready(this.0.take().or_else(|| this.1.take()).map(Ok))
    }
    fn is_end_stream(&self) -> bool {
        self.0.is_none() && self.1.is_none()
    }
}

/// A `HealthCheckResponse { status: SERVING }` gRPC message.
pub fn serving_message() -> Bytes {
    Bytes::from_static(&[0, 0, 0, 0, 2, 0x08, 0x01])
}

/// Trailers with `grpc-status: 0`.
pub fn ok_trailers() -> http::HeaderMap {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().expect("value"));
    trailers
}

/// The head of a gRPC response.
pub fn grpc_head() -> http::response::Builder {
    hyper::Response::builder().header("content-type", "application/grpc")
}

pub async fn responder_on(listener: TcpListener, mode: Mode) -> Responder {
    let addr = listener.local_addr().expect("addr");
    let calls = Arc::new(AtomicUsize::new(0));
    let running = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(AtomicUsize::new(0));
    let timeouts = Arc::new(Mutex::new(Vec::new()));
    let mode = Arc::new(Mutex::new(mode));
    let (c, r, o, t, m) = (
        calls.clone(),
        running.clone(),
        open.clone(),
        timeouts.clone(),
        mode.clone(),
    );
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let Ok((io, _)) = listener.accept().await else {
                break;
            };
            let (c, r, o, t, m) = (c.clone(), r.clone(), o.clone(), t.clone(), m.clone());
            o.fetch_add(1, Ordering::SeqCst);
            conns.spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                    let (c, r, t, m) = (c.clone(), r.clone(), t.clone(), m.clone());
                    async move {
                        c.fetch_add(1, Ordering::SeqCst);
                        r.fetch_add(1, Ordering::SeqCst);
                        if let Some(v) = req.headers().get("grpc-timeout") {
                            t.lock().push(v.to_str().unwrap_or("?").to_owned());
                        }
                        let mode = m.lock().clone();
                        let (head, body) = match mode {
                            Mode::Unavailable => (
                                grpc_head()
                                    .header("grpc-status", "14")
                                    .header("grpc-message", "down"),
                                Reply(None, None),
                            ),
                            Mode::Serving | Mode::Slow(_) => {
                                if let Mode::Slow(d) = mode {
                                    tokio::time::sleep(d).await;
                                }
                                (
                                    grpc_head(),
                                    Reply(
                                        Some(Frame::data(serving_message())),
                                        Some(Frame::trailers(ok_trailers())),
                                    ),
                                )
                            }
                            Mode::Custom(f) => f(),
                        };
                        r.fetch_sub(1, Ordering::SeqCst);
                        Ok::<_, Infallible>(head.body(body).expect("response"))
                    }
                });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
                        .await;
                o.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    Responder {
        addr,
        calls,
        running,
        open,
        timeouts,
        mode,
        task,
    }
}

pub async fn responder(mode: Mode) -> Responder {
    responder_on(TcpListener::bind("127.0.0.1:0").await.expect("bind"), mode).await
}

/// tonic-health's server on a free loopback port, serving `""` and `greeter` as SERVING;
/// aborting the handle kills it.
pub async fn health_server_on(
    listener: TcpListener,
) -> (
    tonic_health::server::HealthReporter,
    tokio::task::JoinHandle<()>,
) {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    reporter
        .set_service_status("greeter", tonic_health::ServingStatus::Serving)
        .await;
    let task = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
    });
    (reporter, task)
}

/// A port nothing listens on (bound, then released).
pub async fn dead_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr").port()
}

pub fn instance(id: &str, port: u16) -> ServiceInfo {
    ServiceInfo::new(id, "greeter", "127.0.0.1", port)
        .with_protocol(Protocol::Grpc)
        .with_health(Health::Healthy)
}

pub async fn setup(
    instances: &[ServiceInfo],
    balancer: Arc<dyn LoadBalancer>,
) -> (Arc<MemoryRegistry>, Arc<CachedDiscovery>) {
    let registry = Arc::new(MemoryRegistry::new());
    for i in instances {
        registry.register(i).await.expect("register");
    }
    let discovery = Arc::new(CachedDiscovery::new(registry.clone(), balancer));
    (registry, discovery)
}

pub fn check() -> HealthCheckRequest {
    HealthCheckRequest {
        service: String::new(),
    }
}

/// Waits until `cond` holds, failing after `secs` seconds.
pub async fn wait_until(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let until = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(tokio::time::Instant::now() < until, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until discovery lists exactly `ids` for `greeter`.
pub async fn wait_discovered(d: &CachedDiscovery, ids: &[&str]) {
    use waypost_core_types::ServiceDiscovery;
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut seen: Vec<String> = d
            .discover("greeter")
            .await
            .map(|v| v.iter().map(|i| i.id.clone()).collect())
            .unwrap_or_default();
        seen.sort();
        if seen == ids {
            return;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "discovery lists {seen:?}, not {ids:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
