//! The resilience lab: five local HTTP instances of one service on loopback, registered in the
//! in-memory registry (three normal, one slow, one that answers 503 to every request at once),
//! and the same bounded load sent through `ServiceClient` with round robin, least request and
//! peak EWMA, each with and without outlier ejection. It prints a table of p50/p90/p99 latency, error rate
//! and where the attempts went, per configuration, and writes an SVG chart of them.
//!
//! `cargo run --release -p waypost-examples --bin resilience_lab` writes
//! `docs/resilience-lab.svg`; options: `--out PATH`, `--requests N` (default 2000),
//! `--concurrency N` (default 16), `--seed N` (default 7), `--quick` (400 requests at
//! concurrency 8, chart written to the temp dir unless `--out` is given).
//!
//! Latency is measured by the caller, per call: from the call to its result, retries and the
//! waits between them included; a call is an error when it returns an error after its retries.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use plotters::coord::ranged1d::SegmentedCoord;
use plotters::coord::types::{RangedCoordf64, RangedCoordusize};
use plotters::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::TcpListener;
use tokio::sync::watch;
use waypost::client::{OutlierConfig, RetryBudget, RetryPolicy};
use waypost::{
    CachedDiscovery, Health, LeastRequest, LoadBalancer, MemoryRegistry, PeakEwma, RoundRobin,
    ServiceClient, ServiceDiscovery, ServiceInfo, ServiceRegistry,
};

type LabResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const SERVICE: &str = "lab-service";
/// Every instance's service time: 1 ms plus up to 1 ms of seeded jitter.
const BASE_TIME: Duration = Duration::from_millis(1);
const JITTER_MICROS: u64 = 1000;
/// What the slow instance adds to every request.
const SLOW_EXTRA: Duration = Duration::from_millis(20);

/// The client's settings, the same for every configuration, spelled out so that the numbers can
/// be explained: a 1 s attempt timeout, a 2 s deadline per call, 2 retries with backoff from
/// 50 ms (full jitter; the first retry goes to another instance at once), a retry budget of 20 %
/// of requests plus 10 per second over 10 s.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
const CALL_DEADLINE: Duration = Duration::from_secs(2);
const MAX_RETRIES: u32 = 2;
const RETRY_BASE: Duration = Duration::from_millis(50);
const BUDGET_WINDOW: Duration = Duration::from_secs(10);
const BUDGET_MIN_PER_SEC: u32 = 10;
const BUDGET_RATIO: f64 = 0.2;
/// Outlier ejection, where on: after 5 consecutive failures, for 1 s, then one probe.
const EJECT_AFTER: u32 = 5;
const EJECT_FOR: Duration = Duration::from_secs(1);
/// No configuration runs longer than this, whatever the machine's load: the calls left are not
/// sent, and the table says how many calls were made.
const RUN_LIMIT: Duration = Duration::from_secs(8);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Normal,
    Slow,
    Failing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Balancer {
    RoundRobin,
    LeastRequest,
    PeakEwma,
}

impl Balancer {
    fn name(self) -> &'static str {
        match self {
            Balancer::RoundRobin => "round robin",
            Balancer::LeastRequest => "least request",
            Balancer::PeakEwma => "peak EWMA",
        }
    }

    fn build(self) -> Arc<dyn LoadBalancer> {
        match self {
            Balancer::RoundRobin => Arc::new(RoundRobin::new()),
            Balancer::LeastRequest => Arc::new(LeastRequest::new()),
            Balancer::PeakEwma => Arc::new(PeakEwma::new()),
        }
    }
}

struct Args {
    out: Option<PathBuf>,
    requests: usize,
    concurrency: usize,
    seed: u64,
    quick: bool,
}

fn parse_args() -> LabResult<Args> {
    let mut args = Args {
        out: None,
        requests: 2000,
        concurrency: 16,
        seed: 7,
        quick: false,
    };
    let mut requests = None;
    let mut concurrency = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--out" => args.out = Some(PathBuf::from(value("--out")?)),
            "--requests" => {
                let v = value("--requests")?;
                requests = Some(v.parse().map_err(|_| format!("invalid --requests `{v}`"))?);
            }
            "--concurrency" => {
                let v = value("--concurrency")?;
                concurrency = Some(
                    v.parse()
                        .map_err(|_| format!("invalid --concurrency `{v}`"))?,
                );
            }
            "--seed" => {
                let v = value("--seed")?;
                args.seed = v.parse().map_err(|_| format!("invalid --seed `{v}`"))?;
            }
            "--quick" => args.quick = true,
            "-h" | "--help" => {
                println!(
                    "usage: resilience_lab [--out docs/resilience-lab.svg] [--requests 2000] \
                     [--concurrency 16] [--seed 7] [--quick]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}` (try --help)").into()),
        }
    }
    if args.quick {
        args.requests = 400;
        args.concurrency = 8;
    }
    args.requests = requests.unwrap_or(args.requests);
    args.concurrency = concurrency.unwrap_or(args.concurrency);
    if !(1..=1_000_000).contains(&args.requests) {
        return Err("--requests must be 1 to 1000000".into());
    }
    if !(1..=1024).contains(&args.concurrency) {
        return Err("--concurrency must be 1 to 1024".into());
    }
    Ok(args)
}

/// One instance's server state.
struct Behaviour {
    kind: Kind,
    rng: Mutex<StdRng>,
    /// Requests it received (attempts, retries included) since the last [`take`](Self::take).
    received: AtomicU64,
}

impl Behaviour {
    fn take(&self) -> u64 {
        self.received.swap(0, Ordering::Relaxed)
    }
}

/// A running instance; stops accepting and closes its connections when dropped.
struct LabServer {
    addr: SocketAddr,
    behaviour: Arc<Behaviour>,
    _stop: watch::Sender<bool>,
}

async fn start_server(kind: Kind, seed: u64) -> std::io::Result<LabServer> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let behaviour = Arc::new(Behaviour {
        kind,
        rng: Mutex::new(StdRng::seed_from_u64(seed)),
        received: AtomicU64::new(0),
    });
    let (stop, mut stopped) = watch::channel(false);
    let accept_behaviour = Arc::clone(&behaviour);
    tokio::spawn(async move {
        loop {
            let conn = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = stopped.changed() => return,
            };
            let Ok((stream, _)) = conn else { continue };
            let _ = stream.set_nodelay(true);
            let behaviour = Arc::clone(&accept_behaviour);
            let mut stopped = stopped.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<Incoming>| answer(Arc::clone(&behaviour)));
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc);
                tokio::select! {
                    _ = conn => {}
                    _ = stopped.changed() => {}
                }
            });
        }
    });
    Ok(LabServer {
        addr,
        behaviour,
        _stop: stop,
    })
}

async fn answer(behaviour: Arc<Behaviour>) -> Result<Response<Full<Bytes>>, Infallible> {
    behaviour.received.fetch_add(1, Ordering::Relaxed);
    let (status, body) = match behaviour.kind {
        // A broken instance answers at once: it does no work.
        Kind::Failing => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        Kind::Normal | Kind::Slow => {
            let jitter = match behaviour.rng.lock() {
                Ok(mut rng) => rng.random_range(0..=JITTER_MICROS),
                Err(poisoned) => poisoned.into_inner().random_range(0..=JITTER_MICROS),
            };
            let mut time = BASE_TIME + Duration::from_micros(jitter);
            if behaviour.kind == Kind::Slow {
                time += SLOW_EXTRA;
            }
            tokio::time::sleep(time).await;
            (StatusCode::OK, "ok")
        }
    };
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    Ok(resp)
}

/// The numbers of one configuration.
#[derive(Debug, Clone)]
struct Outcome {
    label: String,
    calls: usize,
    errors: usize,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    /// Attempts each kind of instance received (retries included).
    to_slow: u64,
    to_failing: u64,
    to_normal: u64,
}

impl Outcome {
    fn pct_of_calls(&self, n: f64) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            n * 100.0 / self.calls as f64
        }
    }

    fn error_rate_pct(&self) -> f64 {
        self.pct_of_calls(self.errors as f64)
    }

    /// Attempts the failing instance received, as a share of the calls: each was a failure that
    /// a retry hid, or an error when no retry was left.
    fn failing_pct(&self) -> f64 {
        self.pct_of_calls(self.to_failing as f64)
    }
}

/// The `q` quantile of sorted samples (nearest rank).
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn run_one(
    registry: &Arc<dyn ServiceRegistry>,
    servers: &[LabServer],
    balancer: Balancer,
    eject: bool,
    args: &Args,
) -> LabResult<Outcome> {
    let discovery = Arc::new(CachedDiscovery::new(Arc::clone(registry), balancer.build()));
    let builder = ServiceClient::builder(Arc::clone(&discovery) as Arc<dyn ServiceDiscovery>)
        .timeout(ATTEMPT_TIMEOUT)
        .deadline(CALL_DEADLINE)
        .retry_policy(RetryPolicy::new(MAX_RETRIES, RETRY_BASE))
        .retry_budget(RetryBudget::new(
            BUDGET_WINDOW,
            BUDGET_MIN_PER_SEC,
            BUDGET_RATIO,
        ));
    let builder = if eject {
        builder.outlier_detection(OutlierConfig::new(EJECT_AFTER, EJECT_FOR))
    } else {
        builder.no_outlier_detection()
    };
    let client = builder.build()?;
    // The cache is filled before the clock starts: every configuration begins with the same set.
    let found = discovery.discover(SERVICE).await?;
    if found.len() != servers.len() {
        return Err(format!(
            "discovered {} instances, not {}",
            found.len(),
            servers.len()
        )
        .into());
    }
    for s in servers {
        s.behaviour.take();
    }

    let next = Arc::new(AtomicUsize::new(0));
    let stop_at = Instant::now() + RUN_LIMIT;
    let mut workers = Vec::with_capacity(args.concurrency);
    for _ in 0..args.concurrency {
        let client = client.clone();
        let next = Arc::clone(&next);
        let requests = args.requests;
        workers.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < requests && Instant::now() < stop_at {
                let start = Instant::now();
                let ok = client.get(SERVICE, "/work").await.is_ok();
                samples.push((start.elapsed(), ok));
            }
            samples
        }));
    }
    let mut latencies = Vec::with_capacity(args.requests);
    let mut errors = 0;
    for w in workers {
        for (latency, ok) in w.await? {
            latencies.push(latency);
            errors += usize::from(!ok);
        }
    }
    latencies.sort_unstable();
    let (mut to_slow, mut to_failing, mut to_normal) = (0, 0, 0);
    for s in servers {
        let n = s.behaviour.take();
        match s.behaviour.kind {
            Kind::Slow => to_slow += n,
            Kind::Failing => to_failing += n,
            Kind::Normal => to_normal += n,
        }
    }
    discovery.close().await?;
    let label = if eject {
        format!("{} + ejection", balancer.name())
    } else {
        balancer.name().to_owned()
    };
    Ok(Outcome {
        label,
        calls: latencies.len(),
        errors,
        p50_ms: quantile(&latencies, 0.50).as_secs_f64() * 1000.0,
        p90_ms: quantile(&latencies, 0.90).as_secs_f64() * 1000.0,
        p99_ms: quantile(&latencies, 0.99).as_secs_f64() * 1000.0,
        to_slow,
        to_failing,
        to_normal,
    })
}

fn print_table(outcomes: &[Outcome]) {
    println!(
        "| configuration | calls | p50 (ms) | p90 (ms) | p99 (ms) | errors | error rate (%) | attempts: normal | attempts: slow | attempts: failing |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for o in outcomes {
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.2} | {} | {:.2} | {} | {} | {} |",
            o.label,
            o.calls,
            o.p50_ms,
            o.p90_ms,
            o.p99_ms,
            o.errors,
            o.error_rate_pct(),
            o.to_normal,
            o.to_slow,
            o.to_failing,
        );
    }
}

/// One series of bars: its legend, colour, inset from the row's edges (pixels) and value.
type Bars = (&'static str, RGBColor, u32, fn(&Outcome) -> f64);

/// A panel of the chart: values across, one segment per configuration down.
type Chart<'a, 'b> =
    ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, SegmentedCoord<RangedCoordusize>>>;

const P50_COLOR: RGBColor = RGBColor(150, 195, 240);
const P90_COLOR: RGBColor = RGBColor(65, 120, 200);
const P99_COLOR: RGBColor = RGBColor(25, 70, 150);
const ERROR_COLOR: RGBColor = RGBColor(200, 60, 50);
const FAILING_COLOR: RGBColor = RGBColor(245, 180, 90);

/// Two panels of horizontal bars, one row per configuration, the first on top: latency (the p99
/// bar with the p90 and p50 bars inside it), and the attempts the failing instance received with
/// the calls that failed inside them.
fn draw_chart(path: &Path, outcomes: &[Outcome], title: &str) -> LabResult {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let n = outcomes.len();
    if n == 0 {
        return Err("nothing to chart".into());
    }
    let row = |i: usize| n - 1 - i;
    // A segmented range `0..k` has the segments 0 to k: one per configuration.
    let rows = 0..n - 1;
    let label_of = |v: &SegmentValue<usize>| match v {
        SegmentValue::CenterOf(y) if *y < n => outcomes[row(*y)].label.clone(),
        _ => String::new(),
    };
    // One configuration's bar from 0 to `end`, `margin` pixels in from its row's edges.
    let bar = |i: usize, end: f64, color: RGBColor, margin: u32| {
        let mut bar = Rectangle::new(
            [
                (0.0, SegmentValue::Exact(row(i))),
                (end, SegmentValue::Exact(row(i) + 1)),
            ],
            color.filled(),
        );
        bar.set_margin(margin, margin, 0, 0);
        bar
    };
    let legend = |color: RGBColor| {
        move |(x, y): (i32, i32)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.filled())
    };
    // Each series of bars, one bar per configuration, with its legend entry.
    let draw_bars = |chart: &mut Chart<'_, '_>, series: &[Bars]| -> LabResult {
        for &(label, color, margin, value) in series {
            chart
                .draw_series(
                    outcomes
                        .iter()
                        .enumerate()
                        .map(|(i, o)| bar(i, value(o), color, margin)),
                )?
                .label(label)
                .legend(legend(color));
        }
        Ok(())
    };
    let root = SVGBackend::new(path, (1100, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 16))?;
    let (left, right) = root.split_horizontally(700);

    // Room on the right of the longest bar for its figures and the legend.
    let max_ms = outcomes.iter().map(|o| o.p99_ms).fold(1.0, f64::max) * 1.7;
    let mut latency = ChartBuilder::on(&left)
        .caption(
            "latency per call (ms): p50 inside p90 inside p99",
            ("sans-serif", 15),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(170)
        .build_cartesian_2d(0.0..max_ms, rows.clone().into_segmented())?;
    latency
        .configure_mesh()
        .disable_y_mesh()
        .max_light_lines(1)
        .x_labels(8)
        .y_labels(n)
        .y_label_formatter(&label_of)
        .x_desc("ms (retries and their waits included)")
        .label_style(("sans-serif", 13))
        .draw()?;
    // The p99 bar drawn first, the p90 and p50 bars inside it (narrower, on top).
    let latency_bars: [Bars; 3] = [
        ("p99", P99_COLOR, 8, |o| o.p99_ms),
        ("p90", P90_COLOR, 12, |o| o.p90_ms),
        ("p50", P50_COLOR, 17, |o| o.p50_ms),
    ];
    draw_bars(&mut latency, &latency_bars)?;
    latency.draw_series(outcomes.iter().enumerate().map(|(i, o)| {
        EmptyElement::at((o.p99_ms, SegmentValue::CenterOf(row(i))))
            + Text::new(
                format!("{:.1} / {:.1} / {:.1}", o.p50_ms, o.p90_ms, o.p99_ms),
                (6, -7),
                ("sans-serif", 12),
            )
    }))?;
    latency
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()?;

    let max_pct = outcomes
        .iter()
        .map(|o| o.failing_pct().max(o.error_rate_pct()))
        .fold(1.0, f64::max)
        * 1.7;
    let mut failures = ChartBuilder::on(&right)
        .caption(
            "attempts on the failing instance / failed calls",
            ("sans-serif", 15),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(10)
        .build_cartesian_2d(0.0..max_pct, rows.into_segmented())?;
    failures
        .configure_mesh()
        .disable_y_mesh()
        .max_light_lines(1)
        .x_labels(8)
        .y_labels(n)
        .y_label_formatter(&|_| String::new())
        .x_desc("% of calls")
        .label_style(("sans-serif", 13))
        .draw()?;
    let failure_bars: [Bars; 2] = [
        (
            "attempts on the failing one",
            FAILING_COLOR,
            8,
            Outcome::failing_pct,
        ),
        ("failed calls", ERROR_COLOR, 16, Outcome::error_rate_pct),
    ];
    draw_bars(&mut failures, &failure_bars)?;
    failures.draw_series(outcomes.iter().enumerate().map(|(i, o)| {
        EmptyElement::at((
            o.failing_pct().max(o.error_rate_pct()),
            SegmentValue::CenterOf(row(i)),
        )) + Text::new(
            format!("{:.1} % / {:.2} %", o.failing_pct(), o.error_rate_pct()),
            (6, -7),
            ("sans-serif", 12),
        )
    }))?;
    failures
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()?;
    root.present()?;
    Ok(())
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("resilience lab FAILED: {e}");
        std::process::exit(1);
    }
}

async fn run() -> LabResult {
    let args = parse_args()?;
    let out = match (&args.out, args.quick) {
        (Some(out), _) => out.clone(),
        (None, true) => std::env::temp_dir().join("resilience-lab-quick.svg"),
        (None, false) => PathBuf::from("docs/resilience-lab.svg"),
    };

    let registry: Arc<dyn ServiceRegistry> = Arc::new(MemoryRegistry::new());
    let kinds = [
        Kind::Normal,
        Kind::Normal,
        Kind::Normal,
        Kind::Slow,
        Kind::Failing,
    ];
    let mut servers = Vec::with_capacity(kinds.len());
    for (i, kind) in kinds.into_iter().enumerate() {
        let server = start_server(kind, args.seed.wrapping_add(i as u64)).await?;
        let id = match kind {
            Kind::Normal => format!("normal-{}", i + 1),
            Kind::Slow => "slow".to_owned(),
            Kind::Failing => "failing".to_owned(),
        };
        registry
            .register(
                &ServiceInfo::new(id, SERVICE, "127.0.0.1", server.addr.port())
                    .with_health(Health::Healthy)
                    .with_ttl(Duration::from_secs(300)),
            )
            .await?;
        servers.push(server);
    }

    let setup = format!(
        "5 instances: 3 normal (1-2 ms), 1 slow (+{} ms), 1 failing (503 at once to every request); \
         {} calls at concurrency {}, seed {}",
        SLOW_EXTRA.as_millis(),
        args.requests,
        args.concurrency,
        args.seed
    );
    println!("waypost resilience lab: {setup}");
    println!(
        "client: attempt timeout {ATTEMPT_TIMEOUT:?}, deadline {CALL_DEADLINE:?}, {MAX_RETRIES} \
         retries with backoff from {RETRY_BASE:?} (the first retry to another instance at once), \
         retry budget {:.0} % of requests + {BUDGET_MIN_PER_SEC}/s over {BUDGET_WINDOW:?}; \
         ejection after {EJECT_AFTER} consecutive failures for {EJECT_FOR:?}, then one probe",
        BUDGET_RATIO * 100.0
    );
    println!();
    let started = Instant::now();
    let mut outcomes = Vec::with_capacity(6);
    for balancer in [
        Balancer::RoundRobin,
        Balancer::LeastRequest,
        Balancer::PeakEwma,
    ] {
        for eject in [false, true] {
            outcomes.push(run_one(&registry, &servers, balancer, eject, &args).await?);
        }
    }
    print_table(&outcomes);
    for o in &outcomes {
        if o.calls < args.requests {
            println!(
                "note: {} made {} of {} calls within its {RUN_LIMIT:?} limit",
                o.label, o.calls, args.requests
            );
        }
    }
    draw_chart(&out, &outcomes, &format!("waypost resilience lab: {setup}"))?;
    println!(
        "\nran in {:.1} s; chart written to {}",
        started.elapsed().as_secs_f64(),
        out.display()
    );
    registry.close().await?;
    Ok(())
}
