//! Part 6 of the demo: gRPC over discovery. Three gRPC servers serve `grpc.health.v1.Health`
//! (tonic-health's service: a real tonic API with its code generated in that crate, so the demo
//! needs no `.proto` file and no protoc), registered in the in-memory registry as `greeter`.
//! Eight callers run unary calls through `waypost::grpc::channel`'s builder; one server is killed
//! mid-way (its connections cut, calls on it in flight, its registration left behind as after a
//! crash), and the calls go on without a failure: the calls cut in flight are retried on another
//! instance (`Check` is declared retryable, as gRPC's service config would), new calls avoid the
//! dead instance, and outlier ejection takes it out of the rotation.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use waypost::grpc::{Channel, RetryPolicy};
use waypost::{
    CachedDiscovery, Health, Protocol, RoundRobin, ServiceDiscovery, ServiceInfo, ServiceRegistry,
};

use crate::{check, DemoResult};

/// Calls made in all.
const CALLS: usize = 600;
/// Calls made when an instance is killed.
const KILL_AT: usize = 200;

/// One gRPC server: tonic's router over tonic-health's service, on hyper's HTTP/2 server, each
/// connection a task of its accept loop, so that stopping the loop kills every connection.
struct GrpcServer {
    id: String,
    port: u16,
    calls: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl GrpcServer {
    async fn start(id: &str) -> DemoResult<Self> {
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("greeter", tonic_health::ServingStatus::Serving)
            .await;
        let routes = tonic::service::Routes::new(health);
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let task = tokio::spawn(async move {
            let _reporter = reporter;
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((io, _)) = listener.accept().await {
                let (routes, counted) = (routes.clone(), counted.clone());
                connections.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let mut routes = routes.clone();
                        let counted = counted.clone();
                        async move {
                            counted.fetch_add(1, Ordering::Relaxed);
                            // Some work, so that calls are in flight when a server dies.
                            tokio::time::sleep(Duration::from_millis(2)).await;
                            let resp = tower_service::Service::call(&mut routes, req).await;
                            Ok::<_, Infallible>(resp.unwrap_or_else(|e| match e {}))
                        }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(io), svc)
                        .await;
                });
            }
        });
        Ok(GrpcServer {
            id: id.to_owned(),
            port,
            calls,
            task,
        })
    }

    fn kill(&self) {
        self.task.abort();
    }
}

pub(crate) async fn run(registry: Arc<dyn ServiceRegistry>) -> DemoResult {
    let mut servers = Vec::new();
    for n in 1..=3 {
        let server = GrpcServer::start(&format!("greeter-{n}")).await?;
        registry
            .register(
                &ServiceInfo::new(&server.id, "greeter", "127.0.0.1", server.port)
                    .with_protocol(Protocol::Grpc)
                    .with_health(Health::Healthy),
            )
            .await?;
        println!(
            "  {} serves grpc.health.v1.Health on 127.0.0.1:{}",
            server.id, server.port
        );
        servers.push(server);
    }
    let discovery = Arc::new(CachedDiscovery::new(
        Arc::clone(&registry),
        Arc::new(RoundRobin::new()),
    ));
    let channel = Channel::builder(discovery.clone(), "greeter")
        .retry_method("grpc.health.v1.Health", "Check", RetryPolicy::new(3))
        .timeout(Duration::from_secs(2))
        .build()?;

    let started = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Failures::default());
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (channel, started, failures) = (channel.clone(), started.clone(), failures.clone());
        callers.spawn(async move {
            let mut client = HealthClient::new(channel);
            while started.fetch_add(1, Ordering::SeqCst) < CALLS {
                let req = HealthCheckRequest {
                    service: "greeter".into(),
                };
                if let Err(status) = client.check(req).await {
                    failures.push(status.to_string());
                }
            }
        });
    }
    while started.load(Ordering::SeqCst) < KILL_AT {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let victim = &servers[1];
    let in_flight = channel.in_flight(&victim.id);
    victim.kill();
    println!(
        "  killed {} after {KILL_AT} calls, {in_flight} of them in flight on it (its registration left, as after a crash)",
        victim.id
    );
    while callers.join_next().await.is_some() {}

    let counts: Vec<String> = servers
        .iter()
        .map(|s| format!("{} {}", s.id, s.calls.load(Ordering::Relaxed)))
        .collect();
    println!(
        "  {CALLS} calls; requests received (retries included): {}",
        counts.join(", ")
    );
    let failed = failures.take();
    for f in failed.iter().take(3) {
        println!("  failed: {f}");
    }
    println!("  failures: {}", failed.len());
    check(
        failed.is_empty(),
        "every gRPC call succeeded with an instance killed mid-way",
    )?;
    let connected = channel.connected_instances();
    check(
        connected == ["greeter-1", "greeter-3"],
        &format!(
            "the channel stays connected to the live instances only: {}",
            connected.join(", ")
        ),
    )?;
    for s in &servers {
        s.kill();
    }
    for s in &servers {
        registry.deregister(&s.id).await?;
    }
    discovery.close().await?;
    Ok(())
}

/// The failures the callers saw.
#[derive(Default)]
struct Failures(std::sync::Mutex<Vec<String>>);

impl Failures {
    fn push(&self, f: String) {
        if let Ok(mut v) = self.0.lock() {
            v.push(f);
        }
    }

    fn take(&self) -> Vec<String> {
        self.0
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }
}
