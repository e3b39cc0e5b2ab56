//! `ServiceClient` against the raw hyper client, on the same local server, in the same run, over
//! HTTP/1.1 and over h2c (HTTP/2 with prior knowledge, one multiplexed connection).
//!
//! `cargo bench -p waypost-client --bench client` runs the clients in `ROUNDS` short
//! alternating slices (the order flips every round, so a busy moment on a shared machine hits
//! both alike), each at `CONCURRENCY` concurrent requests, and prints the aggregate throughput,
//! p50 and p99 latency of each and the throughput ratio (over all rounds, and the median of the
//! rounds' own ratios, which a busy moment moves less). `WAYPOST_BENCH_SECS` sets the seconds
//! per slice (default 0.5), `WAYPOST_BENCH_ROUNDS` the number of rounds (default 20).
//! `WAYPOST_BENCH_HTTP=1` (the default) compares the two clients over HTTP/1.1, `h2c` over h2c,
//! and `both` runs the four in each round and also prints ServiceClient over h2c against
//! ServiceClient over HTTP/1.1. `metrics` runs raw hyper, ServiceClient and a second
//! ServiceClient whose metrics go to a real recorder (`metrics-exporter-prometheus`'s
//! `PrometheusRecorder`, installed as the global recorder) over HTTP/1.1, and prints the
//! throughput ratio of the two clients: the cost of the metrics. The first client made its first
//! call before the recorder was installed, so its handles are no-ops: it measures the client as
//! an application without a recorder runs it.
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

/// Serves the 23-byte JSON body over HTTP/1.1 or, with `h2`, HTTP/2 with prior knowledge.
async fn serve(listener: TcpListener, h2: bool) {
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        if h2 {
            // Many streams share the connection: no Nagle delay between their small frames.
            // (The HTTP/1.1 server stays as it was, so its figures compare with earlier runs.)
            stream.set_nodelay(true).unwrap();
        }
        tokio::spawn(async move {
            let svc = service_fn(|_req| async {
                Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                    b"{\"id\":1,\"name\":\"alice\"}",
                ))))
            });
            let _ = if h2 {
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await
            } else {
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await
            };
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

/// The p50, p99 and throughput line of one client.
fn report(name: &str, s: &mut Sample) {
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let (p50, p99) = (s.pct(0.5), s.pct(0.99));
    println!(
        "{name:<24} {:>8.0} req/s  p50 {:>6.0} µs  p99 {:>6.0} µs  ({} requests, {:.1} µs CPU per request incl. server)",
        s.throughput(),
        us(p50),
        us(p99),
        s.requests,
        us(s.cpu) / s.requests as f64
    );
}

/// The ratio line of `a / b`: over all rounds, and the median and range of the rounds' own.
fn ratio(what: &str, a: &Sample, b: &Sample, ratios: &mut [f64], rounds: usize, secs: f64) {
    ratios.sort_by(f64::total_cmp);
    println!(
        "{what}, {CONCURRENCY} concurrent: {:.3} over all rounds, median of the rounds' ratios {:.3} (range {:.3}–{:.3}; {rounds} rounds of {secs} s each)",
        a.throughput() / b.throughput(),
        ratios[ratios.len() / 2],
        ratios[0],
        ratios[ratios.len() - 1],
    );
}

fn main() {
    let secs: f64 = std::env::var("WAYPOST_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.5);
    let rounds: usize = std::env::var("WAYPOST_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20)
        .max(1);
    let which = std::env::var("WAYPOST_BENCH_HTTP").unwrap_or_else(|_| "1".into());
    // Which of raw HTTP/1.1, ServiceClient HTTP/1.1, raw h2c, ServiceClient h2c run.
    let active: &[usize] = match which.as_str() {
        "1" => &[0, 1],
        "h2c" => &[2, 3],
        "both" => &[0, 1, 2, 3],
        "metrics" => &[0, 1, 4],
        other => panic!("WAYPOST_BENCH_HTTP: `1`, `h2c`, `both` or `metrics`, not {other:?}"),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, false));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let h2_addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, true));

        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        let raw: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(64)
            .build(http.clone());
        let raw_h2: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(http);
        let uri: hyper::Uri = format!("http://{addr}/users/1").parse().unwrap();
        let h2_uri: hyper::Uri = format!("http://{h2_addr}/users/1").parse().unwrap();

        // Profiling aid: WAYPOST_BENCH_NO_ATTEMPT_TIMEOUT=1 drops the per-attempt timer.
        let attempt_timeout = if std::env::var_os("WAYPOST_BENCH_NO_ATTEMPT_TIMEOUT").is_some() {
            Duration::MAX
        } else {
            Duration::from_secs(5)
        };
        let service_client = |port: u16, h2c: bool| {
            let instance = ServiceInfo::new("user-1", "user-service", "127.0.0.1", port)
                .with_health(Health::Healthy);
            ServiceClient::builder(Arc::new(OneInstance(Arc::new(instance))))
                .timeout(attempt_timeout)
                .http2_prior_knowledge(h2c)
                .build()
                .unwrap()
        };
        let client = service_client(addr.port(), false);
        let client_h2 = service_client(h2_addr.port(), true);
        // Their first calls register their metric handles: before any recorder, no-ops.
        client.get("user-service", "/users/1").await.unwrap();
        client_h2.get("user-service", "/users/1").await.unwrap();
        let recorder = active.contains(&4).then(|| {
            let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).unwrap();
            waypost_client::describe_metrics();
            handle
        });
        let client_recorded = service_client(addr.port(), false);

        let raw_call = |raw: Client<HttpConnector, Empty<Bytes>>, uri: hyper::Uri| {
            move || {
                let raw = raw.clone();
                let uri = uri.clone();
                async move {
                    let resp = raw.get(uri).await.unwrap();
                    let body = resp.into_body().collect().await.unwrap().to_bytes();
                    assert_eq!(body.len(), 23);
                }
            }
        };
        let wp_call = |client: ServiceClient| {
            move || {
                let client = client.clone();
                async move {
                    let body = client.get("user-service", "/users/1").await.unwrap();
                    assert_eq!(body.len(), 23);
                }
            }
        };
        let (raw1, wp1) = (raw_call(raw, uri), wp_call(client));
        let (raw2, wp2) = (raw_call(raw_h2, h2_uri), wp_call(client_h2));
        let rec1 = wp_call(client_recorded);
        let slice = |i: usize, secs: f64| {
            let (raw1, wp1, raw2, wp2, rec1) = (
                raw1.clone(),
                wp1.clone(),
                raw2.clone(),
                wp2.clone(),
                rec1.clone(),
            );
            async move {
                match i {
                    0 => run(secs, raw1).await,
                    1 => run(secs, wp1).await,
                    2 => run(secs, raw2).await,
                    3 => run(secs, wp2).await,
                    _ => run(secs, rec1).await,
                }
            }
        };
        // Profiling aid: WAYPOST_BENCH_ONLY=raw|client runs one side only (of the first
        // protocol chosen).
        let only = std::env::var("WAYPOST_BENCH_ONLY").unwrap_or_default();
        if !only.is_empty() {
            let i = active[0] + usize::from(only != "raw");
            let s = slice(i, secs * rounds as f64).await;
            println!("{only}: {:.0} req/s", s.throughput());
            return;
        }
        // Warm every pool up.
        for &i in active {
            slice(i, 0.5).await;
        }

        let mut samples: [Sample; 5] = Default::default();
        let mut ratios: [Vec<f64>; 4] = Default::default();
        for round in 0..rounds {
            let mut this: [Option<Sample>; 5] = Default::default();
            let order: Vec<usize> = if round % 2 == 0 {
                active.to_vec()
            } else {
                active.iter().rev().copied().collect()
            };
            for i in order {
                this[i] = Some(slice(i, secs).await);
            }
            let tp = |i: usize| this[i].as_ref().map(Sample::throughput);
            if let (Some(r), Some(w)) = (tp(0), tp(1)) {
                ratios[0].push(w / r);
            }
            if let (Some(r), Some(w)) = (tp(2), tp(3)) {
                ratios[1].push(w / r);
            }
            if let (Some(h1), Some(h2)) = (tp(1), tp(3)) {
                ratios[2].push(h2 / h1);
            }
            if let (Some(plain), Some(recorded)) = (tp(1), tp(4)) {
                ratios[3].push(recorded / plain);
            }
            for (total, s) in samples.iter_mut().zip(this) {
                if let Some(s) = s {
                    total.add(s);
                }
            }
        }
        let [raw1, wp1, raw2, wp2, rec1] = &mut samples;
        if active.contains(&0) {
            report("raw hyper HTTP/1.1:", raw1);
            report("ServiceClient HTTP/1.1:", wp1);
            ratio(
                "client: throughput ratio ServiceClient / raw hyper over HTTP/1.1",
                wp1,
                raw1,
                &mut ratios[0],
                rounds,
                secs,
            );
        }
        if active.contains(&2) {
            report("raw hyper h2c:", raw2);
            report("ServiceClient h2c:", wp2);
            ratio(
                "client: throughput ratio ServiceClient / raw hyper over h2c",
                wp2,
                raw2,
                &mut ratios[1],
                rounds,
                secs,
            );
        }
        if let Some(handle) = recorder {
            report("ServiceClient + recorder:", rec1);
            ratio(
                "client: throughput ratio ServiceClient with a recorder / without (HTTP/1.1)",
                rec1,
                wp1,
                &mut ratios[3],
                rounds,
                secs,
            );
            let text = handle.render();
            let calls = text
                .lines()
                .find(|l| l.starts_with("waypost_client_requests_total{"))
                .unwrap_or("waypost_client_requests_total: not recorded");
            println!("recorder: {calls}");
        }
        if active.len() == 4 {
            ratio(
                "client: throughput ratio ServiceClient h2c / ServiceClient HTTP/1.1",
                wp2,
                wp1,
                &mut ratios[2],
                rounds,
                secs,
            );
        }
    });
}
