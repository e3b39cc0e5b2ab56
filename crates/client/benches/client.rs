//! `ServiceClient` against the raw hyper client, on the same local server, in the same run.
//!
//! `cargo bench -p waypost-client --bench client` runs `ROUNDS` alternating rounds of each
//! client at `CONCURRENCY` concurrent requests and prints throughput, p50 and p99 latency and the
//! throughput ratio. `WAYPOST_BENCH_SECS` sets the seconds per round (default 2).
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
const ROUNDS: usize = 7;

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

struct Figures {
    throughput: f64,
    p50: Duration,
    p99: Duration,
}

async fn run<F, Fut>(secs: f64, call: F) -> Figures
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(100_000);
                while Instant::now() < end {
                    let t = Instant::now();
                    call().await;
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = start.elapsed();
    all.sort_unstable();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    Figures {
        throughput: all.len() as f64 / elapsed.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
    }
}

fn main() {
    let secs: f64 = std::env::var("WAYPOST_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
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
        let client = ServiceClient::builder(Arc::new(OneInstance(Arc::new(instance))))
            .timeout(Duration::from_secs(5))
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
        // Warm both pools up.
        run(0.5, raw_call.clone()).await;
        run(0.5, wp_call.clone()).await;

        let (mut raw_best, mut wp_best): (Option<Figures>, Option<Figures>) = (None, None);
        let mut ratios = Vec::new();
        for round in 1..=ROUNDS {
            let r = run(secs, raw_call.clone()).await;
            let w = run(secs, wp_call.clone()).await;
            println!(
                "round {round}: raw hyper {:>8.0} req/s p50 {:>6.0} µs p99 {:>6.0} µs | ServiceClient {:>8.0} req/s p50 {:>6.0} µs p99 {:>6.0} µs | ratio {:.3}",
                r.throughput,
                r.p50.as_secs_f64() * 1e6,
                r.p99.as_secs_f64() * 1e6,
                w.throughput,
                w.p50.as_secs_f64() * 1e6,
                w.p99.as_secs_f64() * 1e6,
                w.throughput / r.throughput
            );
            ratios.push(w.throughput / r.throughput);
            if raw_best.as_ref().is_none_or(|b| r.throughput > b.throughput) {
                raw_best = Some(r);
            }
            if wp_best.as_ref().is_none_or(|b| w.throughput > b.throughput) {
                wp_best = Some(w);
            }
        }
        ratios.sort_by(f64::total_cmp);
        let (r, w) = (raw_best.unwrap(), wp_best.unwrap());
        println!(
            "client/{CONCURRENCY} concurrent: raw hyper best {:.0} req/s (p50 {:.0} µs, p99 {:.0} µs); ServiceClient best {:.0} req/s (p50 {:.0} µs, p99 {:.0} µs); best/best ratio {:.3}; median round ratio {:.3}",
            r.throughput,
            r.p50.as_secs_f64() * 1e6,
            r.p99.as_secs_f64() * 1e6,
            w.throughput,
            w.p50.as_secs_f64() * 1e6,
            w.p99.as_secs_f64() * 1e6,
            w.throughput / r.throughput,
            ratios[ratios.len() / 2]
        );
    });
}
