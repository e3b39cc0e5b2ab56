//! The demo's HTTP service: `/health`, `/users`, `/orders`, `/services`, `/metrics`, on hyper.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use waypost::ServiceRegistry;

use crate::telemetry;

/// A user, as the Laravel-Go module's demo has it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct User {
    /// Assigned by the server.
    #[serde(default)]
    pub id: u64,
    /// Name.
    pub name: String,
    /// E-mail.
    pub email: String,
    /// Which instance answered (filled in by the server).
    #[serde(default)]
    pub served_by: String,
}

struct State {
    instance: String,
    registry: Arc<dyn ServiceRegistry>,
    metrics: PrometheusHandle,
    next_id: AtomicU64,
    requests: AtomicU64,
}

/// A running demo server; stops when dropped.
pub struct DemoServer {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    state: Arc<State>,
    /// Held by the accept loop and every connection; `recv` ends once all of them are gone.
    done: mpsc::Receiver<()>,
}

impl DemoServer {
    /// Requests served so far.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }

    /// Stops accepting, lets every open connection finish its request in flight, and returns
    /// when the last one is closed.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        while self.done.recv().await.is_some() {}
    }
}

impl Drop for DemoServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Starts a server for instance `instance` on `addr` (port 0 for any free port); `/metrics`
/// renders `metrics`.
pub async fn start(
    addr: SocketAddr,
    instance: &str,
    registry: Arc<dyn ServiceRegistry>,
    metrics: PrometheusHandle,
) -> std::io::Result<DemoServer> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let (stop, mut stopped) = watch::channel(false);
    let (alive, done) = mpsc::channel::<()>(1);
    let state = Arc::new(State {
        instance: instance.to_owned(),
        registry,
        metrics,
        next_id: AtomicU64::new(1),
        requests: AtomicU64::new(0),
    });
    let accept_state = Arc::clone(&state);
    tokio::spawn(async move {
        loop {
            let conn = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = stopped.changed() => return,
            };
            let Ok((stream, _)) = conn else { continue };
            let state = Arc::clone(&accept_state);
            let mut stopped = stopped.clone();
            let alive = alive.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| handle(req, Arc::clone(&state)));
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = stopped.changed() => {
                        // Finish the request in flight, then close (hyper's graceful shutdown).
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
                drop(alive);
            });
        }
    });
    Ok(DemoServer {
        addr,
        stop,
        state,
        done,
    })
}

fn json(status: StatusCode, value: &serde_json::Value, instance: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(value.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(v) = HeaderValue::from_str(instance) {
        resp.headers_mut().insert("x-served-by", v);
    }
    resp
}

/// The method and route labels of a request: fixed sets, whatever the request says, so that a
/// client cannot grow the number of series (`other` for anything else).
fn labels(method: &Method, path: &str) -> (&'static str, &'static str) {
    let method = match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        _ => "other",
    };
    let route = match path {
        "/health" => "/health",
        "/users" => "/users",
        "/orders" => "/orders",
        "/services" => "/services",
        "/metrics" => "/metrics",
        _ => "other",
    };
    (method, route)
}

/// The `outcome` label of an answer, from the fixed set the waypost crates use.
fn outcome(status: StatusCode) -> &'static str {
    if status.is_server_error() {
        "server_error"
    } else if status.is_client_error() {
        "client_error"
    } else {
        "success"
    }
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<State>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let started = Instant::now();
    let (method, route) = labels(req.method(), req.uri().path());
    let resp = respond(req, &state).await;
    // Static label values: recording builds no owned key.
    metrics::counter!(
        telemetry::REQUESTS_TOTAL,
        "method" => method,
        "route" => route,
        "outcome" => outcome(resp.status()),
    )
    .increment(1);
    metrics::histogram!(
        telemetry::REQUEST_DURATION_SECONDS,
        "method" => method,
        "route" => route,
    )
    .record(started.elapsed().as_secs_f64());
    Ok(resp)
}

async fn respond(req: Request<Incoming>, state: &State) -> Response<Full<Bytes>> {
    state.requests.fetch_add(1, Ordering::Relaxed);
    let me = state.instance.as_str();
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/health") => json(
            StatusCode::OK,
            &serde_json::json!({ "status": "healthy", "instance": me }),
            me,
        ),
        (&Method::GET, "/users") => json(
            StatusCode::OK,
            &serde_json::json!([
                { "id": 1, "name": "张三", "email": "zhangsan@example.com", "served_by": me },
                { "id": 2, "name": "李四", "email": "lisi@example.com", "served_by": me },
            ]),
            me,
        ),
        (&Method::POST, "/users") => {
            let body = Limited::new(req.into_body(), 64 * 1024).collect().await;
            match body.map(|b| serde_json::from_slice::<User>(&b.to_bytes())) {
                Ok(Ok(mut user)) => {
                    user.id = state.next_id.fetch_add(1, Ordering::Relaxed) + 100;
                    user.served_by = me.to_owned();
                    json(
                        StatusCode::CREATED,
                        &serde_json::to_value(&user).unwrap_or_default(),
                        me,
                    )
                }
                Ok(Err(e)) => json(
                    StatusCode::BAD_REQUEST,
                    &serde_json::json!({ "error": format!("invalid user JSON: {e}") }),
                    me,
                ),
                Err(_) => json(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &serde_json::json!({ "error": "body too large" }),
                    me,
                ),
            }
        }
        (&Method::GET, "/orders") => json(
            StatusCode::OK,
            &serde_json::json!([
                { "id": 1001, "user_id": 1, "amount": 99.5, "status": "paid" },
                { "id": 1002, "user_id": 2, "amount": 15.0, "status": "shipped" },
            ]),
            me,
        ),
        (&Method::GET, "/metrics") => {
            let mut resp = Response::new(Full::new(Bytes::from(state.metrics.render())));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(telemetry::CONTENT_TYPE),
            );
            resp
        }
        (&Method::GET, "/services") => match state.registry.list_services().await {
            Ok(mut list) => {
                list.sort_by(|a, b| a.id.cmp(&b.id));
                json(
                    StatusCode::OK,
                    &serde_json::to_value(&list).unwrap_or_default(),
                    me,
                )
            }
            Err(e) => json(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({ "error": e.to_string() }),
                me,
            ),
        },
        _ => json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({ "error": "not found" }),
            me,
        ),
    }
}
