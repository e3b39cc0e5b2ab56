//! Test helpers: instances, a registry wrapper that fails on demand, local HTTP servers.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use waypost_core_types::{
    Error, Health, RegistryState, Result, ServiceInfo, ServiceRegistry, WatchStream,
};

/// A healthy instance.
pub fn healthy(id: &str, name: &str, port: u16) -> ServiceInfo {
    ServiceInfo::new(id, name, "127.0.0.1", port).with_health(Health::Healthy)
}

/// An unhealthy instance.
pub fn unhealthy(id: &str, name: &str, port: u16) -> ServiceInfo {
    ServiceInfo::new(id, name, "127.0.0.1", port).with_health(Health::Unhealthy)
}

/// Wraps a registry; can make it unreachable (every call fails with `Unavailable`), refuse only
/// watches, and cut the watch streams it handed out.
#[derive(Debug)]
pub struct Flaky<R> {
    pub inner: R,
    down: AtomicBool,
    no_watch: AtomicBool,
    cut: watch::Sender<u64>,
    pub watch_calls: AtomicUsize,
    pub list_calls: AtomicUsize,
}

impl<R: ServiceRegistry> Flaky<R> {
    pub fn new(inner: R) -> Arc<Self> {
        Arc::new(Flaky {
            inner,
            down: AtomicBool::new(false),
            no_watch: AtomicBool::new(false),
            cut: watch::channel(0).0,
            watch_calls: AtomicUsize::new(0),
            list_calls: AtomicUsize::new(0),
        })
    }

    /// Makes every call fail (and, when `down`, ends the watches handed out).
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            self.cut_watches();
        }
    }

    /// Makes `watch_service` fail while other calls work.
    pub fn set_no_watch(&self, no: bool) {
        self.no_watch.store(no, Ordering::SeqCst);
    }

    /// Ends every watch stream handed out so far.
    pub fn cut_watches(&self) {
        self.cut.send_modify(|g| *g += 1);
    }

    fn check(&self) -> Result<()> {
        if self.down.load(Ordering::SeqCst) {
            Err(Error::Unavailable("registry unreachable (test)".into()))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl<R: ServiceRegistry> ServiceRegistry for Flaky<R> {
    fn backend(&self) -> &'static str {
        "flaky"
    }
    async fn register(&self, s: &ServiceInfo) -> Result<()> {
        self.check()?;
        self.inner.register(s).await
    }
    async fn deregister(&self, id: &str) -> Result<()> {
        self.check()?;
        self.inner.deregister(id).await
    }
    async fn update(&self, s: &ServiceInfo) -> Result<()> {
        self.check()?;
        self.inner.update(s).await
    }
    async fn renew(&self, id: &str) -> Result<()> {
        self.check()?;
        self.inner.renew(id).await
    }
    async fn get_service(&self, id: &str) -> Result<ServiceInfo> {
        self.check()?;
        self.inner.get_service(id).await
    }
    async fn list_services(&self) -> Result<Vec<ServiceInfo>> {
        self.check()?;
        self.inner.list_services().await
    }
    async fn list_instances(&self, name: &str) -> Result<Vec<ServiceInfo>> {
        self.list_calls.fetch_add(1, Ordering::SeqCst);
        self.check()?;
        self.inner.list_instances(name).await
    }
    async fn watch(&self) -> Result<WatchStream> {
        Err(Error::Unsupported("use watch_service".into()))
    }
    async fn watch_service(&self, name: &str) -> Result<WatchStream> {
        self.watch_calls.fetch_add(1, Ordering::SeqCst);
        self.check()?;
        if self.no_watch.load(Ordering::SeqCst) {
            return Err(Error::Unavailable("watch refused (test)".into()));
        }
        let stream = self.inner.watch_service(name).await?;
        let mut cut = self.cut.subscribe();
        let stop = async move {
            let _ = cut.changed().await;
        };
        Ok(Box::pin(stream.take_until(stop)))
    }
    fn state(&self) -> RegistryState {
        self.inner.state()
    }
    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}

/// How a test server answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub path: &'static str,
    pub status: u16,
    pub delay: Duration,
}

/// A local HTTP/1 server on a free loopback port. Dropping or `kill`ing it stops the listener and
/// every open connection.
pub struct TestServer {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    pub async fn start(replies: Vec<Reply>) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let replies = Arc::new(replies);
        let h = hits.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let replies = replies.clone();
                let hits = h.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let replies = replies.clone();
                        let hits = hits.clone();
                        async move {
                            hits.fetch_add(1, Ordering::SeqCst);
                            let r = replies.iter().find(|r| r.path == req.uri().path()).cloned();
                            let (status, delay) =
                                r.map_or((404, Duration::ZERO), |r| (r.status, r.delay));
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            let resp = hyper::Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::from_static(b"ok")))
                                .expect("response");
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        TestServer { addr, hits, task }
    }

    /// Stops the server: the port refuses connections afterwards.
    pub fn kill(&self) {
        self.task.abort();
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A port nothing listens on (bound, then released).
pub async fn closed_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    l.local_addr().expect("addr").port()
}

/// Polls `cond` every millisecond until it holds or `limit` passes; returns the time it took.
pub async fn wait_until<F, Fut>(limit: Duration, mut cond: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    loop {
        if cond().await {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
