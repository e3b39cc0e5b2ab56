//! Opening one HTTP/2 connection to one instance: TCP, TLS with ALPN `h2` when the instance
//! says so, and hyper's HTTP/2 handshake.

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Body;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use waypost_core_types::{Error, Protocol, Result, ServiceInfo};

use crate::status::error_text;

/// Whether `instance` is called over TLS: `https` instances, and `grpc` instances whose
/// metadata says `tls` = `true` (or `1`, any case).
pub fn uses_tls(instance: &ServiceInfo) -> bool {
    match instance.protocol {
        Protocol::Https => true,
        Protocol::Grpc => instance
            .metadata
            .get("tls")
            .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1"),
        _ => false,
    }
}

/// The rustls configuration for TLS instances, with ALPN `h2`: `config` as given (its ALPN
/// list replaced), or one trusting `roots`, or the bundled webpki (Mozilla) roots.
pub(crate) fn tls_config(
    config: Option<rustls::ClientConfig>,
    roots: Option<rustls::RootCertStore>,
) -> Result<Arc<rustls::ClientConfig>> {
    let tls_err = |e: rustls::Error| Error::InvalidConfig(format!("TLS: {e}"));
    let mut config = match (config, roots) {
        (Some(c), _) => c,
        (None, roots) => {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let builder = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(tls_err)?;
            match roots {
                Some(r) => builder.with_root_certificates(r).with_no_client_auth(),
                None => {
                    use hyper_rustls::ConfigBuilderExt;
                    builder.with_webpki_roots().with_no_client_auth()
                }
            }
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// How connections are opened.
#[derive(Clone)]
pub(crate) struct Connector {
    pub(crate) connect_timeout: Duration,
    pub(crate) tls: Arc<rustls::ClientConfig>,
    pub(crate) keep_alive: Option<Duration>,
}

/// An open connection: the handle to send on, the task that drives it, and the tasks hyper
/// spawned for it (the HTTP/2 connection itself, request bodies); all aborted when the
/// connection is dropped, which closes its socket at once.
pub(crate) struct Conn<B> {
    pub(crate) send: SendRequest<B>,
    pub(crate) task: JoinHandle<()>,
    pub(crate) spawned: Tracked,
}

impl<B> Drop for Conn<B> {
    fn drop(&mut self) {
        self.task.abort();
        for h in self.spawned.0.lock().drain(..) {
            h.abort();
        }
    }
}

/// hyper's executor for one connection: spawns on tokio and keeps the tasks' abort handles, so
/// that dropping the connection ends them (with tokio's executor the HTTP/2 connection task
/// would live on until the server closed it).
#[derive(Clone, Default)]
pub(crate) struct Tracked(Arc<parking_lot::Mutex<Vec<tokio::task::AbortHandle>>>);

impl<F> hyper::rt::Executor<F> for Tracked
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        let handle = tokio::spawn(fut).abort_handle();
        let mut tasks = self.0.lock();
        tasks.retain(|h| !h.is_finished());
        tasks.push(handle);
    }
}

/// A connection that could not be opened: the reason, bounded and escaped.
#[derive(Debug, Clone)]
pub(crate) struct ConnectError(pub(crate) String);

impl Connector {
    /// Opens a connection to `instance`, within the connect timeout (TCP, TLS and the HTTP/2
    /// handshake together).
    pub(crate) async fn connect<B>(
        &self,
        instance: &ServiceInfo,
    ) -> std::result::Result<Conn<B>, ConnectError>
    where
        B: Body + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        match tokio::time::timeout(self.connect_timeout, self.open(instance)).await {
            Ok(r) => r,
            Err(_) => Err(ConnectError(format!(
                "connect timed out after {:?}",
                self.connect_timeout
            ))),
        }
    }

    async fn open<B>(&self, instance: &ServiceInfo) -> std::result::Result<Conn<B>, ConnectError>
    where
        B: Body + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let err = |what: &str, e: &(dyn std::error::Error + 'static)| {
            ConnectError(format!("{what}: {}", error_text(e)))
        };
        let tcp = TcpStream::connect((instance.address.as_str(), instance.port))
            .await
            .map_err(|e| err("connect", &e))?;
        let _ = tcp.set_nodelay(true);
        let spawned = Tracked::default();
        let mut h2 = hyper::client::conn::http2::Builder::new(spawned.clone());
        h2.timer(TokioTimer::new());
        if let Some(interval) = self.keep_alive {
            h2.keep_alive_interval(interval)
                .keep_alive_timeout(interval)
                .keep_alive_while_idle(true);
        }
        if uses_tls(instance) {
            let name = ServerName::try_from(instance.address.clone())
                .map_err(|e| err("TLS server name", &e))?;
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| err("TLS handshake", &e))?;
            if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                return Err(ConnectError(
                    "TLS handshake: the server did not agree to HTTP/2 (ALPN h2)".into(),
                ));
            }
            let (send, conn) = h2
                .handshake(TokioIo::new(tls))
                .await
                .map_err(|e| err("HTTP/2 handshake", &e))?;
            Ok(Conn {
                send,
                task: tokio::spawn(async move {
                    let _ = conn.await;
                }),
                spawned,
            })
        } else {
            let (send, conn) = h2
                .handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| err("HTTP/2 handshake", &e))?;
            Ok(Conn {
                send,
                task: tokio::spawn(async move {
                    let _ = conn.await;
                }),
                spawned,
            })
        }
    }
}
