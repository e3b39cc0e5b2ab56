//! waypost's gRPC channel against tonic's own channels, on loopback, printing figures a README
//! can quote (a plain `harness = false` benchmark: `cargo bench -p waypost-grpc --bench channel`).
//!
//! 1. Overhead: 32 concurrent unary calls to one tonic-health server, through a waypost channel
//!    with that one instance and through a plain tonic `Channel` to it, in interleaved rounds;
//!    the figure is the median over rounds of waypost's throughput divided by tonic's.
//! 2. A slow instance: 5 instances, one adding 20 ms to every call, 32 concurrent calls:
//!    p50/p99 through waypost with peak EWMA, through the 4 fast instances alone (the floor),
//!    and through tonic's `Channel::balance_channel` (tower's power of two choices over
//!    pending requests).
//!
//! With `WAYPOST_BENCH_METRICS=1`, the overhead rounds also run a second waypost channel whose
//! metrics go to a real recorder (`metrics-exporter-prometheus`'s, installed as the global
//! recorder after the first channel took its handles, which stay no-ops) and print the
//! throughput ratio of the two channels: the cost of the metrics.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tonic::transport::channel::Change;
use tonic::transport::Endpoint;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use waypost_balancer::{PeakEwma, RoundRobin};
use waypost_core_types::{Health, Protocol, ServiceInfo, ServiceRegistry};
use waypost_discovery::CachedDiscovery;
use waypost_registry_memory::MemoryRegistry;

const CONCURRENCY: usize = 32;

/// A tonic-health server on a loopback port, adding `delay` to every call.
async fn server(delay: Duration) -> u16 {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let routes = tonic::service::Routes::new(health);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let _reporter = reporter;
        while let Ok((io, _)) = listener.accept().await {
            let _ = io.set_nodelay(true);
            let routes = routes.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let mut routes = routes.clone();
                    async move {
                        if !delay.is_zero() {
                            tokio::time::sleep(delay).await;
                        }
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
    port
}

async fn waypost_channel(
    ports: &[u16],
    balancer: Arc<dyn waypost_core_types::LoadBalancer>,
) -> waypost_grpc::Channel {
    let registry = Arc::new(MemoryRegistry::new());
    for (n, port) in ports.iter().enumerate() {
        registry
            .register(
                &ServiceInfo::new(format!("b-{n}"), "bench", "127.0.0.1", *port)
                    .with_protocol(Protocol::Grpc)
                    .with_health(Health::Healthy),
            )
            .await
            .expect("register");
    }
    let discovery = Arc::new(CachedDiscovery::new(registry, balancer));
    waypost_grpc::channel(discovery, "bench").expect("channel")
}

/// Runs `calls` unary calls, `CONCURRENCY` at a time, on `client`; returns the wall time and
/// every call's latency.
async fn load<T>(client: HealthClient<T>, calls: usize) -> (Duration, Vec<Duration>)
where
    T: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + 'static,
    T::Future: Send,
    T::ResponseBody: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as hyper::body::Body>::Error:
        Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..CONCURRENCY {
        let mut client = client.clone();
        let n = calls / CONCURRENCY + usize::from(w < calls % CONCURRENCY);
        tasks.spawn(async move {
            let mut lat = Vec::with_capacity(n);
            for _ in 0..n {
                let t = Instant::now();
                client
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    .expect("check");
                lat.push(t.elapsed());
            }
            lat
        });
    }
    let mut all = Vec::with_capacity(calls);
    while let Some(r) = tasks.join_next().await {
        all.extend(r.expect("task"));
    }
    (start.elapsed(), all)
}

fn percentile(lat: &mut [Duration], p: f64) -> Duration {
    lat.sort();
    let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
    lat[i.min(lat.len() - 1)]
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

async fn overhead() {
    const ROUNDS: usize = 11;
    const CALLS: usize = 20_000;
    let port = server(Duration::ZERO).await;
    let waypost = HealthClient::new(waypost_channel(&[port], Arc::new(RoundRobin::new())).await);
    let tonic = HealthClient::new(
        Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .expect("endpoint")
            .tcp_nodelay(true)
            .connect()
            .await
            .expect("connect"),
    );
    // Warm-up: connections open, allocators settle.
    load(waypost.clone(), 2_000).await;
    load(tonic.clone(), 2_000).await;
    let recorded = if std::env::var_os("WAYPOST_BENCH_METRICS").is_some() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        metrics::set_global_recorder(recorder).expect("first recorder");
        waypost_grpc::describe_metrics();
        let recorded =
            HealthClient::new(waypost_channel(&[port], Arc::new(RoundRobin::new())).await);
        load(recorded.clone(), 2_000).await;
        Some(recorded)
    } else {
        None
    };
    let mut metric_ratios = Vec::new();
    let (mut ratios, mut w_rates, mut t_rates) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        if let Some(recorded) = &recorded {
            let (plain, with) = if round % 2 == 0 {
                let p = load(waypost.clone(), CALLS).await.0;
                (p, load(recorded.clone(), CALLS).await.0)
            } else {
                let r = load(recorded.clone(), CALLS).await.0;
                (load(waypost.clone(), CALLS).await.0, r)
            };
            metric_ratios.push(plain.as_secs_f64() / with.as_secs_f64());
        }
        let (w, t) = if round % 2 == 0 {
            let w = load(waypost.clone(), CALLS).await.0;
            (w, load(tonic.clone(), CALLS).await.0)
        } else {
            let t = load(tonic.clone(), CALLS).await.0;
            (load(waypost.clone(), CALLS).await.0, t)
        };
        let (wr, tr) = (
            CALLS as f64 / w.as_secs_f64(),
            CALLS as f64 / t.as_secs_f64(),
        );
        w_rates.push(wr);
        t_rates.push(tr);
        ratios.push(wr / tr);
    }
    println!(
        "one instance, {CONCURRENCY} concurrent unary calls, {ROUNDS} interleaved rounds of {CALLS}:"
    );
    println!(
        "  waypost channel {:.0} calls/s, tonic Channel {:.0} calls/s (medians); waypost/tonic throughput ratio, median of rounds: {:.3}",
        median(&mut w_rates),
        median(&mut t_rates),
        median(&mut ratios)
    );
    if !metric_ratios.is_empty() {
        println!(
            "  waypost channel with a recorder / without, throughput ratio, median of rounds: {:.3}",
            median(&mut metric_ratios)
        );
    }
}

async fn slow_instance() {
    const CALLS: usize = 20_000;
    let mut ports = Vec::new();
    for _ in 0..4 {
        ports.push(server(Duration::ZERO).await);
    }
    let slow = server(Duration::from_millis(20)).await;
    let mut all = ports.clone();
    all.insert(2, slow);

    let fast_only = HealthClient::new(waypost_channel(&ports, Arc::new(RoundRobin::new())).await);
    let ewma = HealthClient::new(waypost_channel(&all, Arc::new(PeakEwma::new())).await);
    let (balanced, tx) = tonic::transport::Channel::balance_channel::<usize>(16);
    for (n, port) in all.iter().enumerate() {
        tx.send(Change::Insert(
            n,
            Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
                .expect("endpoint")
                .tcp_nodelay(true),
        ))
        .await
        .expect("insert");
    }
    let balanced = HealthClient::new(balanced);
    for c in [0, 1, 2] {
        match c {
            0 => drop(load(fast_only.clone(), 2_000).await),
            1 => drop(load(ewma.clone(), 2_000).await),
            _ => drop(load(balanced.clone(), 2_000).await),
        }
    }
    println!(
        "5 instances, one adding 20 ms, {CONCURRENCY} concurrent unary calls, {CALLS} calls each:"
    );
    let (_, mut lat) = load(fast_only, CALLS).await;
    println!(
        "  the 4 fast instances alone (waypost, round robin): p50 {}, p99 {}",
        ms(percentile(&mut lat, 0.50)),
        ms(percentile(&mut lat, 0.99))
    );
    let (_, mut lat) = load(ewma, CALLS).await;
    println!(
        "  waypost channel, peak EWMA over all 5:             p50 {}, p99 {}",
        ms(percentile(&mut lat, 0.50)),
        ms(percentile(&mut lat, 0.99))
    );
    let (_, mut lat) = load(balanced, CALLS).await;
    println!(
        "  tonic Channel::balance_channel over all 5:         p50 {}, p99 {}",
        ms(percentile(&mut lat, 0.50)),
        ms(percentile(&mut lat, 0.99))
    );
}

fn main() {
    // `cargo test --benches` runs benchmarks with no `--bench` argument: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        overhead().await;
        slow_instance().await;
    });
}
