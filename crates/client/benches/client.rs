//! `ServiceClient` against the raw hyper client, on the same local server, in the same run.
//!
//! `cargo bench -p waypost-client --bench client` runs the two clients in `ROUNDS` short
//! alternating slices (the order flips every round, so a busy moment on a shared machine hits
//! both alike), each at `CONCURRENCY` concurrent requests, and prints the aggregate throughput,
//! p50 and p99 latency of each and the throughput ratio (over all rounds, and the median of the
//! rounds' own ratios, which a busy moment moves less). `WAYPOST_BENCH_SECS` sets the seconds
//! per slice (default 0.5), `WAYPOST_BENCH_ROUNDS` the number of rounds (default 20).
#![allow(missing_docs, clippy::unwrap_used)]

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use waypost_client::ServiceClient;
use waypost_core_types::{
    async_trait, CallGuard, Error, Health, Result, SelectContext, Selection, ServiceDiscovery,
    ServiceEventStream, ServiceInfo,
};

const CONCURRENCY: usize = 32;

#[derive(Debug)]
struct OneInstance(Arc<ServiceInfo>);

#[async_trait]
impl ServiceDiscovery for OneInstance {
    async fn discover(&self, _name: &str) -> Result<Vec<Arc<ServiceInfo>>> {
        Ok(vec![self.0.clone()])
    }
    async fn select(&self, _name: &str, _ctx: &SelectContext<'_>) -> Result<Selection> {
        Ok(Selection {
            instance: self.0.clone(),
            guard: CallGuard::noop(),
        })
    }
    async fn watch(&self, _name: &str) -> Result<ServiceEventStream> {
        Err(Error::Unsupported("watch".into()))
    }
    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

async fn serve(listener: TcpListener) {
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        tokio::spawn(async move {
            let svc = service_fn(|_req| async {
                Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                    b"{\"id\":1,\"name\":\"alice\"}",
                ))))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Requests served and their latencies, over one or more slices.
#[derive(Default)]
struct Sample {
    requests: u64,
    busy: Duration,
    cpu: Duration,
    latencies: Vec<Duration>,
}

/// CPU time (user + system) this process has used, from `/proc/self/stat` (Linux; zero
/// elsewhere). Ticks are 10 ms, fine over the whole run.
fn process_cpu() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    let Some(rest) = stat.rsplit(')').next() else {
        return Duration::ZERO;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|s| s.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

impl Sample {
    fn add(&mut self, other: Sample) {
        self.requests += other.requests;
        self.busy += other.busy;
        self.cpu += other.cpu;
        self.latencies.extend(other.latencies);
    }

    fn throughput(&self) -> f64 {
        self.requests as f64 / self.busy.as_secs_f64()
    }

    fn pct(&mut self, p: f64) -> Duration {
        self.latencies.sort_unstable();
        let i = ((self.latencies.len() as f64 * p) as usize).min(self.latencies.len() - 1);
        self.latencies[i]
    }
}

async fn run<F, Fut>(secs: f64, call: F) -> Sample
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let cpu0 = process_cpu();
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(4096);
                while Instant::now() < end {
                    let t = Instant::now();
                    call().await;
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut sample = Sample::default();
    for t in tasks {
        sample.latencies.extend(t.await.unwrap());
    }
    sample.busy = start.elapsed();
    sample.cpu = process_cpu().saturating_sub(cpu0);
    sample.requests = sample.latencies.len() as u64;
    sample
}

fn main() {
    let secs: f64 = std::env::var("WAYPOST_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.5);
    let rounds: usize = std::env::var("WAYPOST_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener));

        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        let raw: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(64)
            .build(http);
        let uri: hyper::Uri = format!("http://{addr}/users/1").parse().unwrap();

        let instance = ServiceInfo::new("user-1", "user-service", "127.0.0.1", addr.port())
            .with_health(Health::Healthy);
        // Profiling aid: WAYPOST_BENCH_NO_ATTEMPT_TIMEOUT=1 drops the per-attempt timer.
        let attempt_timeout = if std::env::var_os("WAYPOST_BENCH_NO_ATTEMPT_TIMEOUT").is_some() {
            Duration::MAX
        } else {
            Duration::from_secs(5)
        };
        let client = ServiceClient::builder(Arc::new(OneInstance(Arc::new(instance))))
            .timeout(attempt_timeout)
            .build()
            .unwrap();

        let raw_call = move || {
            let raw = raw.clone();
            let uri = uri.clone();
            async move {
                let resp = raw.get(uri).await.unwrap();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(body.len(), 23);
            }
        };
        let wp_call = move || {
            let client = client.clone();
            async move {
                let body = client.get("user-service", "/users/1").await.unwrap();
                assert_eq!(body.len(), 23);
            }
        };
        // Profiling aid: WAYPOST_BENCH_ONLY=raw|client runs one side only.
        let only = std::env::var("WAYPOST_BENCH_ONLY").unwrap_or_default();
        if !only.is_empty() {
            let s = if only == "raw" {
                run(secs * rounds as f64, raw_call.clone()).await
            } else {
                run(secs * rounds as f64, wp_call.clone()).await
            };
            println!("{only}: {:.0} req/s", s.throughput());
            return;
        }
        // Warm both pools up.
        run(0.5, raw_call.clone()).await;
        run(0.5, wp_call.clone()).await;

        let (mut raw, mut wp) = (Sample::default(), Sample::default());
        let mut ratios = Vec::with_capacity(rounds);
        for round in 0..rounds {
            let (r, w) = if round % 2 == 0 {
                let r = run(secs, raw_call.clone()).await;
                (r, run(secs, wp_call.clone()).await)
            } else {
                let w = run(secs, wp_call.clone()).await;
                (run(secs, raw_call.clone()).await, w)
            };
            ratios.push(w.throughput() / r.throughput());
            raw.add(r);
            wp.add(w);
        }
        ratios.sort_by(f64::total_cmp);
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let (r50, r99, w50, w99) = (raw.pct(0.5), raw.pct(0.99), wp.pct(0.5), wp.pct(0.99));
        println!(
            "raw hyper:     {:>8.0} req/s  p50 {:>6.0} µs  p99 {:>6.0} µs  ({} requests, {:.1} µs CPU per request incl. server)",
            raw.throughput(),
            us(r50),
            us(r99),
            raw.requests,
            us(raw.cpu) / raw.requests as f64
        );
        println!(
            "ServiceClient: {:>8.0} req/s  p50 {:>6.0} µs  p99 {:>6.0} µs  ({} requests, {:.1} µs CPU per request incl. server)",
            wp.throughput(),
            us(w50),
            us(w99),
            wp.requests,
            us(wp.cpu) / wp.requests as f64
        );
        println!(
            "client/{CONCURRENCY} concurrent: throughput ratio ServiceClient / raw hyper = {:.3} over all rounds, median of the rounds' ratios {:.3} (range {:.3}–{:.3}; {rounds} rounds of {secs} s each)",
            wp.throughput() / raw.throughput(),
            ratios[ratios.len() / 2],
            ratios[0],
            ratios[ratios.len() - 1],
        );
    });
}
