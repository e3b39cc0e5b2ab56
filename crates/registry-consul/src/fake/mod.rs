//! A fake Consul agent for tests: an in-process hyper server on a loopback port that speaks
//! the subset of Consul's HTTP API waypost uses, as documented by HashiCorp (request and
//! response shapes, status codes and error texts, blocking queries with `X-Consul-Index`, TTL
//! checks that go critical, `DeregisterCriticalServiceAfter` reaping, ACL token checks).
//!
//! It serves a cluster's catalog as Consul does: the local agent's node is a server (it lists
//! the `consul` service, ID `consul`, port 8300), and tests add other nodes — with an agent
//! ([`add_remote_service`](FakeConsul::add_remote_service), [`add_server_node`](FakeConsul::add_server_node))
//! or external nodes registered through the catalog
//! ([`add_external_service`](FakeConsul::add_external_service)). Instances are keyed by node
//! and service ID, as in Consul, so the same service ID can run on many nodes; health entries
//! carry the node in `Node.Node`, catalog entries in `Node`.
//!
//! It is **not** Consul: one agent answers (the other nodes' agents are not simulated: their
//! services are only in the catalog, and there is no anti-entropy), no Raft, TTL checks only
//! (HTTP/TCP checks are refused), no `filter`. Timings
//! that are minutes in Consul (`DeregisterCriticalServiceAfter` ≥ 1 min, 30 s reaper) are
//! options so tests need not wait minutes.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use waypost_registry_consul::fake::{FakeConsul, FakeOptions};
//! let agent = FakeConsul::start(FakeOptions::default()).await.unwrap();
//! assert!(agent.url().starts_with("http://127.0.0.1:"));
//! # }
//! ```

// Request handling returns the HTTP error response itself as `Err`; boxing it would only add
// noise to a test double.
#![allow(clippy::result_large_err)]

mod acl;
mod agent;
mod blocking;
mod decode;
mod query;
mod respond;
mod routes;
mod state;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use self::state::State;

/// Options of the fake agent.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FakeOptions {
    /// With `Some(secret)`, ACLs are on with `default_policy = deny`: requests must carry this
    /// token (anonymous writes get 403 `Permission denied…`, unknown tokens 403 `ACL not found`,
    /// anonymous list reads are filtered to nothing).
    pub acl_token: Option<String>,
    /// Floor of `DeregisterCriticalServiceAfter` (Consul: 1 minute).
    pub min_deregister_after: Duration,
    /// Period of the reaper (Consul: 30 s).
    pub reap_interval: Duration,
    /// How often TTLs are checked.
    pub tick: Duration,
    /// Name of the local node.
    pub node_name: String,
    /// Address of the local node.
    pub node_address: String,
    /// Serve https with this PEM certificate chain and PEM private key.
    pub tls: Option<(String, String)>,
}

impl Default for FakeOptions {
    fn default() -> Self {
        FakeOptions {
            acl_token: None,
            min_deregister_after: Duration::from_secs(60),
            reap_interval: Duration::from_secs(30),
            tick: Duration::from_millis(50),
            node_name: "fake-node".into(),
            node_address: "127.0.0.1".into(),
            tls: None,
        }
    }
}

impl FakeOptions {
    /// Turns ACLs on with this token.
    #[must_use]
    pub fn with_acl_token(mut self, token: impl Into<String>) -> Self {
        self.acl_token = Some(token.into());
        self
    }

    /// Serves https with this PEM certificate chain and PEM private key.
    #[must_use]
    pub fn with_tls(
        mut self,
        cert_chain_pem: impl Into<String>,
        key_pem: impl Into<String>,
    ) -> Self {
        self.tls = Some((cert_chain_pem.into(), key_pem.into()));
        self
    }

    /// Sets the floor of `DeregisterCriticalServiceAfter` and the reaper period.
    #[must_use]
    pub fn with_reaping(mut self, min_deregister_after: Duration, reap_interval: Duration) -> Self {
        self.min_deregister_after = min_deregister_after;
        self.reap_interval = reap_interval;
        self
    }
}

/// One request as the fake saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenRequest {
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// The `X-Consul-Token` header, if sent.
    pub token_header: Option<String>,
}

/// An injected failure: the next `remaining` requests (whose path starts with `path_prefix`)
/// get `status` and `body`.
#[derive(Debug, Clone)]
struct Injection {
    remaining: u64,
    status: u16,
    body: String,
    path_prefix: String,
}

pub(crate) struct Shared {
    pub(crate) opts: FakeOptions,
    tls: Option<tokio_rustls::TlsAcceptor>,
    pub(crate) state: Mutex<State>,
    pub(crate) changed: tokio::sync::watch::Sender<u64>,
    frozen: tokio::sync::watch::Sender<bool>,
    injections: Mutex<VecDeque<Injection>>,
    log: Mutex<Vec<SeenRequest>>,
    requests: AtomicU64,
}

impl Shared {
    /// Returns at once unless the agent is frozen; then when it is thawed.
    pub(crate) async fn until_thawed(&self) {
        let mut rx = self.frozen.subscribe();
        // The sender lives as long as `self`.
        let _ = rx.wait_for(|frozen| !*frozen).await;
    }

    pub(crate) fn notify(&self) {
        let idx = self.state.lock().index;
        self.changed.send_replace(idx);
    }

    /// An injected failure for this request, if one is armed.
    pub(crate) fn take_injection(&self, path: &str) -> Option<(u16, String)> {
        let mut inj = self.injections.lock();
        let pos = inj.iter().position(|i| path.starts_with(&i.path_prefix))?;
        let i = &mut inj[pos];
        let out = (i.status, i.body.clone());
        i.remaining = i.remaining.saturating_sub(1);
        if i.remaining == 0 {
            inj.remove(pos);
        }
        Some(out)
    }

    pub(crate) fn record(&self, req: SeenRequest) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut log = self.log.lock();
        if log.len() < 200_000 {
            log.push(req);
        }
    }
}

/// A running fake agent. Dropping it stops it.
pub struct FakeConsul {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: Mutex<Option<JoinHandle<()>>>,
    ticker: JoinHandle<()>,
}

impl std::fmt::Debug for FakeConsul {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeConsul")
            .field("addr", &self.addr)
            .finish()
    }
}

impl FakeConsul {
    /// Starts the fake on a free loopback port.
    ///
    /// # Errors
    /// When no port can be bound.
    pub async fn start(opts: FakeOptions) -> std::io::Result<FakeConsul> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (changed, _) = tokio::sync::watch::channel(0);
        let tls = match &opts.tls {
            Some((cert, key)) => Some(tls_acceptor(cert, key)?),
            None => None,
        };
        let shared = Arc::new(Shared {
            tls,
            state: Mutex::new(State::new(&opts.node_name, &opts.node_address)),
            opts,
            changed,
            frozen: tokio::sync::watch::Sender::new(false),
            injections: Mutex::new(VecDeque::new()),
            log: Mutex::new(Vec::new()),
            requests: AtomicU64::new(0),
        });
        let server = tokio::spawn(serve(listener, shared.clone()));
        let ticker = tokio::spawn(tick(shared.clone()));
        Ok(FakeConsul {
            addr,
            shared,
            server: Mutex::new(Some(server)),
            ticker,
        })
    }

    /// The socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>` (`https://` when serving TLS).
    pub fn url(&self) -> String {
        let scheme = if self.shared.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// Stops accepting and drops every open connection (the agent is down).
    pub fn stop(&self) {
        if let Some(s) = self.server.lock().take() {
            s.abort();
        }
    }

    /// Starts serving again on the same port after [`stop`](Self::stop).
    ///
    /// # Errors
    /// When the port cannot be bound again.
    pub async fn resume(&self) -> std::io::Result<()> {
        let mut last = None;
        for _ in 0..50 {
            match TcpListener::bind(self.addr).await {
                Ok(l) => {
                    *self.server.lock() = Some(tokio::spawn(serve(l, self.shared.clone())));
                    return Ok(());
                }
                Err(e) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("bind failed")))
    }

    /// Freezes the agent, as SIGSTOP would: connections stay open and new ones are accepted,
    /// but no request is answered until [`thaw`](Self::thaw). TTLs keep running (a stopped
    /// agent finds them expired when it continues).
    pub fn freeze(&self) {
        self.shared.frozen.send_replace(true);
    }

    /// Answers again after [`freeze`](Self::freeze); held requests are served.
    pub fn thaw(&self) {
        self.shared.frozen.send_replace(false);
    }

    /// Simulates an agent restarted without its data: every service and check is forgotten and
    /// the index starts low again (so blocking queries see it go backwards).
    pub fn forget_everything(&self) {
        {
            let mut st = self.shared.state.lock();
            let node = st.local_node.clone();
            let addr = st.nodes[&node].address.clone();
            *st = State::new(&node, &addr);
            st.index = 2;
            st.services_index = 2;
            st.name_index.insert(state::CONSUL_SERVICE.into(), 2);
            st.insert_server_entry(&node, 2);
        }
        self.shared.notify();
    }

    /// The next `count` requests whose path starts with `path_prefix` get `status` with `body`.
    pub fn fail_next(&self, count: u64, status: u16, body: &str, path_prefix: &str) {
        self.shared.injections.lock().push_back(Injection {
            remaining: count,
            status,
            body: body.to_owned(),
            path_prefix: path_prefix.to_owned(),
        });
    }

    /// Removes every injected failure.
    pub fn clear_failures(&self) {
        self.shared.injections.lock().clear();
    }

    /// Requests served so far.
    pub fn request_count(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// Every request seen so far (up to 200 000).
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.shared.log.lock().clone()
    }

    /// Requests whose method is `method` and whose path starts with `prefix`.
    pub fn count(&self, method: &str, prefix: &str) -> usize {
        self.shared
            .log
            .lock()
            .iter()
            .filter(|r| r.method == method && r.path.starts_with(prefix))
            .count()
    }

    /// The current global index.
    pub fn index(&self) -> u64 {
        self.shared.state.lock().index
    }

    /// Status of a check of the local node, if it exists.
    pub fn check_status(&self, check_id: &str) -> Option<String> {
        let st = self.shared.state.lock();
        let key = (st.local_node.clone(), check_id.to_owned());
        st.checks.get(&key).map(|c| c.status.clone())
    }

    /// Ids of the local agent's services (the server's own `consul` entry is not one).
    pub fn local_service_ids(&self) -> Vec<String> {
        let st = self.shared.state.lock();
        st.services
            .iter()
            .filter(|((n, _), e)| n == &st.local_node && !e.server_entry)
            .map(|((_, id), _)| id.clone())
            .collect()
    }

    /// The name of the local agent's node.
    pub fn node_name(&self) -> String {
        self.shared.state.lock().local_node.clone()
    }

    /// `(node, service ID)` of every instance of service `name` in the catalog (name compared
    /// case-insensitively, as Consul does), in node order.
    pub fn catalog_instances(&self, name: &str) -> Vec<(String, String)> {
        let st = self.shared.state.lock();
        st.instances_of(name)
            .into_iter()
            .map(|e| (e.node.clone(), e.svc.id.clone()))
            .collect()
    }

    /// Adds another Consul server node: a node with an agent that lists the `consul` service.
    pub fn add_server_node(&self, node: &str, node_address: &str) {
        {
            let mut st = self.shared.state.lock();
            st.ensure_node(node, node_address, true);
            let idx = st.bump(state::CONSUL_SERVICE, true);
            st.insert_server_entry(node, idx);
        }
        self.shared.notify();
    }

    /// Adds a service to the catalog on an external node (`node` at `node_address`), as
    /// `PUT /v1/catalog/register` does for services no agent runs (consul-esm, Terraform, …):
    /// the node has no agent, so no `serfHealth` check. Same `service` shape as
    /// [`add_remote_service`](Self::add_remote_service).
    pub fn add_external_service(
        &self,
        node: &str,
        node_address: &str,
        service: serde_json::Value,
        status: &str,
    ) {
        agent::add_remote(&self.shared, node, node_address, false, service, status);
        self.shared.notify();
    }

    /// Removes instance `service_id` of `node` from the catalog (as when that node's agent
    /// deregisters it); returns whether it was there.
    pub fn remove_remote_service(&self, node: &str, service_id: &str) -> bool {
        let removed = self
            .shared
            .state
            .lock()
            .remove_service(node, service_id)
            .is_some();
        if removed {
            self.shared.notify();
        }
        removed
    }

    /// Adds a service to the catalog as if registered through the agent of another node
    /// (`node` at `node_address`; the node gets a passing `serfHealth` check), with one check in
    /// `status`. The same service ID may be added on any number of nodes, as in Consul. `service` is a Consul service
    /// definition (`ID`, `Service`/`Name`, `Tags`, `Address`, `Port`, `Meta`, `Weights`); it is
    /// stored as given, however odd, like data written by other tools.
    pub fn add_remote_service(
        &self,
        node: &str,
        node_address: &str,
        service: serde_json::Value,
        status: &str,
    ) {
        agent::add_remote(&self.shared, node, node_address, true, service, status);
        self.shared.notify();
    }
}

impl Drop for FakeConsul {
    fn drop(&mut self) {
        self.stop();
        self.ticker.abort();
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                // As Go's net package does by default (Consul is Go).
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                conns.spawn(async move {
                    let tls = shared.tls.clone();
                    let svc = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, std::convert::Infallible>(routes::handle(shared, req).await) }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        None => {
                            let _ = http
                                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                                .await;
                        }
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(stream).await else { return };
                            let _ = http
                                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                                .await;
                        }
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

fn tls_acceptor(cert_pem: &str, key_pem: &str) -> std::io::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("certificate PEM: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| bad(format!("key PEM: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad(e.to_string()))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

async fn tick(shared: Arc<Shared>) {
    let mut last_reap = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(shared.opts.tick).await;
        let now = tokio::time::Instant::now();
        let mut changed = shared.state.lock().expire_ttls(now);
        if now.duration_since(last_reap) >= shared.opts.reap_interval {
            last_reap = now;
            let removed = shared
                .state
                .lock()
                .reap(now, shared.opts.min_deregister_after);
            changed |= !removed.is_empty();
        }
        if changed {
            shared.notify();
        }
    }
}
