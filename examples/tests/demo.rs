//! The microservice demo runs to its success line, serves with a live registration, and never
//! hangs on a remote registry it cannot use.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const DEMO: &str = env!("CARGO_BIN_EXE_microservice_demo");

fn demo() -> Command {
    let mut cmd = Command::new(DEMO);
    for var in [
        "ETCD_ENDPOINTS",
        "CONSUL_HTTP_ADDR",
        "NACOS_ADDR",
        "ZOOKEEPER_SERVERS",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

#[test]
fn demo_runs_to_its_success_line() {
    let start = Instant::now();
    let out = demo().output().expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "round robin over [1 healthy, 2 healthy, 3 unhealthy, 4 healthy]: 1, 2, 4, 1, 2, 4",
        "call 4: refused without running",
        "POST /users (JSON) -> created user",
        "etcd: not tried; set ETCD_ENDPOINTS",
        "ok: every gRPC call succeeded with an instance killed mid-way",
        "failures: 0",
        "✔ microservice demo finished",
    ] {
        assert!(stdout.contains(line), "missing `{line}` in:\n{stdout}");
    }
    assert!(start.elapsed() < Duration::from_secs(60));
}

#[test]
fn an_unusable_remote_registry_fails_fast_with_a_clear_line() {
    let start = Instant::now();
    let out = demo()
        .env("ETCD_ENDPOINTS", "127.0.0.1:1")
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "an etcd that cannot be used must fail the demo"
    );
    assert!(stdout.contains("etcd at 127.0.0.1:1: FAILED"), "{stdout}");
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "took {:?}",
        start.elapsed()
    );
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

#[test]
fn served_registration_stays_alive_while_the_server_runs() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut child = demo()
        .args(["--serve", "--port", &port.to_string(), "--ttl", "600ms"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the demo server");
    let result = std::panic::catch_unwind(|| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_get(port, "/health").is_none() {
            assert!(Instant::now() < deadline, "demo server never came up");
            std::thread::sleep(Duration::from_millis(100));
        }
        // Several TTLs pass: the heartbeat keeps the registration.
        for _ in 0..5 {
            std::thread::sleep(Duration::from_millis(500));
            let services = http_get(port, "/services").expect("GET /services");
            assert!(services.starts_with("HTTP/1.1 200"), "{services}");
            assert!(services.contains("\"id\":\"demo-service-1\""), "{services}");
        }
        let health = http_get(port, "/health").expect("GET /health");
        assert!(health.contains("\"status\":\"healthy\""), "{health}");
    });
    let _ = child.kill();
    let _ = child.wait();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn sigterm_deregisters_first_keeps_serving_through_the_drain_then_exits_cleanly() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let child = demo()
        .args(["--serve", "--port", &port.to_string(), "--drain", "3s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the demo server");
    let pid = child.id();
    let mut child = Guard(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http_get(port, "/services").is_some_and(|s| s.contains("\"id\":\"demo-service-1\"")) {
        assert!(Instant::now() < deadline, "demo server never registered");
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    // Draining: no longer registered, still answering.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let services = http_get(port, "/services").expect("still serving while draining");
        if !services.contains("\"id\":\"demo-service-1\"") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not deregistered after SIGTERM: {services}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let health = http_get(port, "/health").expect("GET /health while draining");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    // Then it stops by itself, cleanly.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the demo did not stop after its drain delay"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    let mut out = String::new();
    child
        .0
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read stdout");
    assert!(out.contains("deregistered, drained and stopped"), "{out}");
    assert!(
        http_get(port, "/health").is_none(),
        "the listener is closed"
    );
}

/// Metrics the waypost crates emit during the demo's run (its client calls, discovery, the
/// in-memory registry, the announcer), as they appear in the scrape: each must be in `/metrics`.
/// The demo's own metrics are checked line by line below; this list names the libraries' ones.
const LIBRARY_METRICS: &[&str] = &[
    "# HELP waypost_client_requests_total ",
    "waypost_client_requests_total{service=\"user-service\",method=\"POST\",outcome=\"success\"} 2",
    "waypost_client_request_duration_seconds_bucket{",
    "waypost_client_attempts_total{",
    "waypost_grpc_requests_total{service=\"greeter\",method=\"/grpc.health.v1.Health/Check\",outcome=\"success\"}",
    "waypost_outlier_ejections_total{service=\"greeter\",",
    "waypost_discovery_cache_misses_total{service=\"user-service\"} 1",
    "waypost_discovery_cache_hits_total{service=\"user-service\"}",
    "waypost_discovery_instances{",
    "waypost_registry_call_duration_seconds_bucket{backend=\"memory\",op=\"register\",",
    "waypost_registry_watch_events_total{backend=\"memory\",event=\"created\"}",
    "waypost_registry_connected{backend=\"memory\"} 1",
    "waypost_lifecycle_phase{service=\"demo-service\",phase=\"serving\"} 1",
];

/// The value of the sample `series` (name and labels, exactly as rendered) in a scrape.
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

#[test]
fn serve_answers_metrics_in_the_prometheus_text_format() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let child = demo()
        .args(["--serve", "--port", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the demo server");
    let _child = Guard(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(port, "/health").is_none() {
        assert!(Instant::now() < deadline, "demo server never came up");
        std::thread::sleep(Duration::from_millis(100));
    }
    let response = http_get(port, "/metrics").expect("GET /metrics");
    let (head, scrape) = response
        .split_once("\r\n\r\n")
        .expect("an HTTP response with a body");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.lines().any(|h| h
            .to_ascii_lowercase()
            .starts_with("content-type: text/plain; version=0.0.4")),
        "not the Prometheus text format: {head}"
    );
    for line in [
        "# TYPE waypost_demo_requests_total counter",
        "# HELP waypost_demo_requests_total Requests the demo's HTTP servers answered",
        "# TYPE waypost_demo_request_duration_seconds histogram",
    ] {
        assert!(
            scrape.lines().any(|l| l.starts_with(line)),
            "missing `{line}` in:\n{scrape}"
        );
    }
    // What the demo's run did before serving, counted by its servers in the same process: two
    // POSTs (one raw, one JSON), one 404, one GET /orders; and the health check above.
    for (series, value) in [
        (
            r#"waypost_demo_requests_total{method="POST",route="/users",outcome="success"}"#,
            2.0,
        ),
        (
            r#"waypost_demo_requests_total{method="GET",route="other",outcome="client_error"}"#,
            1.0,
        ),
        (
            r#"waypost_demo_requests_total{method="GET",route="/orders",outcome="success"}"#,
            1.0,
        ),
        (
            r#"waypost_demo_request_duration_seconds_count{method="POST",route="/users"}"#,
            2.0,
        ),
        (
            r#"waypost_demo_request_duration_seconds_bucket{method="POST",route="/users",le="+Inf"}"#,
            2.0,
        ),
    ] {
        assert_eq!(
            sample(scrape, series),
            Some(value),
            "{series} in:\n{scrape}"
        );
    }
    let health = r#"waypost_demo_requests_total{method="GET",route="/health",outcome="success"}"#;
    assert!(
        sample(scrape, health).is_some_and(|n| n >= 1.0),
        "{health} in:\n{scrape}"
    );
    // Histograms render as buckets from 0.5 ms, not as summaries.
    assert!(
        scrape.contains(r#"waypost_demo_request_duration_seconds_bucket{method="GET",route="/health",le="0.0005"}"#),
        "{scrape}"
    );
    assert!(!scrape.contains("quantile="), "{scrape}");
    // The scrape itself is counted by the next one.
    let again = http_get(port, "/metrics").expect("GET /metrics again");
    let scraped = r#"waypost_demo_requests_total{method="GET",route="/metrics",outcome="success"}"#;
    assert!(
        sample(&again, scraped).is_some_and(|n| n >= 1.0),
        "{scraped} in:\n{again}"
    );
    for name in LIBRARY_METRICS {
        assert!(
            scrape.lines().any(|l| l.starts_with(name)),
            "library metric `{name}` missing in:\n{scrape}"
        );
    }
}

/// Kills the child if the test fails before it exits.
struct Guard(std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
