//! The Laravel-Go microservice demo, in waypost, where every part really works on the embedded
//! in-memory registry with no outside service:
//!
//! 1. registration and discovery, 2. load balancing, 3. service calls (GET, POST, POST with JSON)
//!    against real local HTTP servers the demo starts, 4. the circuit breaker, 5. registries built
//!    from config and from the builder (memory always; etcd, Consul, Nacos or ZooKeeper when
//!    their address is in the environment and the demo is built with `--features remote`),
//!    6. gRPC: three tonic servers of `grpc.health.v1.Health` (tonic-health's service, no
//!    protoc) called through `waypost::grpc`'s channel, one killed mid-way, no call failing.
//!
//! `cargo run -p waypost-examples --bin microservice_demo` runs it once;
//! `… -- --serve [--port 8080] [--ttl 10s] [--drain 100ms]` then keeps serving `/health`,
//! `/users`, `/orders`, `/services` and `/metrics` (the Prometheus text format) through
//! waypost's `Announcer`, which keeps its registration alive and, on SIGTERM or Ctrl-C,
//! deregisters, drains and stops.

mod grpc;
mod server;
mod telemetry;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use metrics_exporter_prometheus::PrometheusHandle;
use waypost::{
    CachedDiscovery, CircuitState, Error, Health, LoadBalancer, Random, RegistryBuilder,
    RegistryConfig, RegistryType, RoundRobin, SelectContext, ServiceClient, ServiceDiscovery,
    ServiceInfo, ServiceRegistry, SimpleCircuitBreaker, SmoothWeightedRoundRobin,
};

use server::User;

type DemoResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn section(title: &str) {
    println!("\n=== {title} ===");
}

fn check(ok: bool, what: &str) -> DemoResult {
    if ok {
        println!("  ok: {what}");
        Ok(())
    } else {
        Err(format!("check failed: {what}").into())
    }
}

struct Args {
    serve: bool,
    port: u16,
    ttl: Duration,
    drain: Duration,
}

fn parse_args() -> DemoResult<Args> {
    let mut args = Args {
        serve: false,
        port: 8080,
        ttl: Duration::from_secs(10),
        drain: waypost::lifecycle::default_drain_delay("memory"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--serve" => args.serve = true,
            "--port" => {
                let v = it.next().ok_or("--port needs a value")?;
                args.port = v.parse().map_err(|_| format!("invalid port `{v}`"))?;
            }
            "--ttl" => {
                let v = it.next().ok_or("--ttl needs a value")?;
                args.ttl = waypost::core::time::parse_duration(&v)?;
                if args.ttl < Duration::from_millis(300) {
                    return Err("--ttl must be at least 300ms".into());
                }
            }
            "--drain" => {
                let v = it.next().ok_or("--drain needs a value")?;
                args.drain = waypost::core::time::parse_duration(&v)?;
            }
            "-h" | "--help" => {
                println!(
                    "usage: microservice_demo [--serve [--port N] [--ttl 10s] [--drain 100ms]]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}` (try --help)").into()),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() {
    let result = async {
        // First of all: the libraries take their metric handles when their objects are built.
        let metrics = telemetry::install()?;
        let args = parse_args()?;
        run_demo(&metrics).await?;
        if args.serve {
            serve(args, metrics).await?;
        }
        DemoResult::Ok(())
    }
    .await;
    if let Err(e) = result {
        eprintln!("\nmicroservice demo FAILED: {e}");
        std::process::exit(1);
    }
}

fn user_instance(i: u16, addr: SocketAddr) -> ServiceInfo {
    ServiceInfo::new(
        format!("user-service-{i}"),
        "user-service",
        addr.ip().to_string(),
        addr.port(),
    )
    .with_version("1.0.0")
    .with_health(Health::Healthy)
    .with_metadata("environment", "production")
    .with_metadata("region", "us-west-1")
    .with_tag("api")
    .with_tag("user")
    .with_ttl(Duration::from_secs(30))
}

async fn run_demo(metrics: &PrometheusHandle) -> DemoResult {
    let any_port: SocketAddr = ([127, 0, 0, 1], 0).into();
    let registry: Arc<dyn ServiceRegistry> = RegistryBuilder::new()
        .with_type(RegistryType::Memory)
        .with_cleanup_interval(Duration::from_millis(500))
        .build()
        .await?;

    section("1. Service registration and discovery");
    let s1 = server::start(
        any_port,
        "user-service-1",
        Arc::clone(&registry),
        metrics.clone(),
    )
    .await?;
    let s2 = server::start(
        any_port,
        "user-service-2",
        Arc::clone(&registry),
        metrics.clone(),
    )
    .await?;
    let orders = server::start(
        any_port,
        "order-service-1",
        Arc::clone(&registry),
        metrics.clone(),
    )
    .await?;
    for (i, s) in [(1, &s1), (2, &s2)] {
        let svc = user_instance(i, s.addr);
        registry.register(&svc).await?;
        println!("  registered {} at {}", svc.id, svc.endpoint());
    }
    let order_svc = ServiceInfo::new(
        "order-service-1",
        "order-service",
        "127.0.0.1",
        orders.addr.port(),
    )
    .with_health(Health::Healthy)
    .with_ttl(Duration::from_secs(30));
    registry.register(&order_svc).await?;
    println!("  registered {} at {}", order_svc.id, order_svc.endpoint());

    let discovery = Arc::new(CachedDiscovery::new(
        Arc::clone(&registry),
        Arc::new(RoundRobin::new()),
    ));
    let found = discovery.discover("user-service").await?;
    println!("  discover(user-service): {} instances", found.len());
    check(found.len() == 2, "both user-service instances discovered")?;
    let one = discovery.discover_one("user-service").await?;
    println!(
        "  discover_one(user-service): {} at {}",
        one.id,
        one.endpoint()
    );
    match discovery.discover("payment-service").await {
        Err(Error::ServiceNotFound(_)) => {
            println!("  discover(payment-service): not found, as expected")
        }
        other => return Err(format!("expected ServiceNotFound, got {other:?}").into()),
    }

    let mut events = discovery.watch("user-service").await?;
    let extra = ServiceInfo::new("user-service-3", "user-service", "127.0.0.1", 9)
        .with_health(Health::Unhealthy);
    registry.register(&extra).await?;
    registry.deregister("user-service-3").await?;
    for _ in 0..2 {
        match tokio::time::timeout(Duration::from_secs(2), events.next()).await {
            Ok(Some(ev)) => println!("  event: {} {}", ev.kind, ev.service.id),
            other => return Err(format!("expected a watch event, got {other:?}").into()),
        }
    }

    section("2. Load balancing");
    let lb_instances: Vec<Arc<ServiceInfo>> = [
        ("1", Health::Healthy),
        ("2", Health::Healthy),
        ("3", Health::Unhealthy),
        ("4", Health::Healthy),
    ]
    .into_iter()
    .map(|(id, h)| Arc::new(ServiceInfo::new(id, "lb-demo", "127.0.0.1", 8000).with_health(h)))
    .collect();
    let rr = RoundRobin::new();
    let picks: Vec<String> = (0..6)
        .filter_map(|_| rr.select(&lb_instances, &SelectContext::default()))
        .map(|s| s.id.clone())
        .collect();
    println!(
        "  round robin over [1 healthy, 2 healthy, 3 unhealthy, 4 healthy]: {}",
        picks.join(", ")
    );
    check(
        picks == ["1", "2", "4", "1", "2", "4"],
        "round robin skips the unhealthy instance",
    )?;
    let random = Random::new();
    let mut counts = BTreeMap::new();
    for _ in 0..3000 {
        if let Some(s) = random.select(&lb_instances, &SelectContext::default()) {
            *counts.entry(s.id.clone()).or_insert(0) += 1;
        }
    }
    println!("  random, 3000 picks: {counts:?}");
    check(
        !counts.contains_key("3") && counts.values().all(|&n| n > 800),
        "random spreads over the healthy instances only",
    )?;
    let weighted: Vec<Arc<ServiceInfo>> = [("a", 5), ("b", 1), ("c", 1)]
        .into_iter()
        .map(|(id, w)| {
            Arc::new(
                ServiceInfo::new(id, "wrr-demo", "127.0.0.1", 8000)
                    .with_health(Health::Healthy)
                    .with_weight(w),
            )
        })
        .collect();
    let swrr = SmoothWeightedRoundRobin::new();
    let seq: String = (0..7)
        .filter_map(|_| swrr.select(&weighted, &SelectContext::default()))
        .map(|s| s.id.clone())
        .collect();
    println!("  smooth weighted round robin, weights a=5 b=1 c=1: {seq}");
    check(seq.matches('a').count() == 5, "weights are honoured")?;

    section("3. Service calls");
    let client = ServiceClient::builder(Arc::clone(&discovery) as Arc<dyn ServiceDiscovery>)
        .timeout(Duration::from_secs(5))
        .retry(3, Duration::from_millis(100))
        .build()?;
    let body = client.get("user-service", "/users").await?;
    let users: Vec<User> = serde_json::from_slice(&body)?;
    println!(
        "  GET  /users -> {} users, served by {}",
        users.len(),
        users[0].served_by
    );
    let body = client.get("user-service", "/users").await?;
    let again: Vec<User> = serde_json::from_slice(&body)?;
    println!("  GET  /users -> served by {}", again[0].served_by);
    check(
        users[0].served_by != again[0].served_by,
        "calls are balanced across instances",
    )?;
    let raw = client
        .post(
            "user-service",
            "/users",
            r#"{"name":"王五","email":"wangwu@example.com"}"#,
        )
        .await?;
    println!("  POST /users -> {}", String::from_utf8_lossy(&raw));
    let new_user = User {
        id: 0,
        name: "张三".into(),
        email: "zhangsan@example.com".into(),
        served_by: String::new(),
    };
    let created: User = client
        .post_json("user-service", "/users", &new_user)
        .await?;
    println!(
        "  POST /users (JSON) -> created user {} ({}) on {}",
        created.id, created.name, created.served_by
    );
    check(
        created.id > 100 && created.name == new_user.name,
        "JSON round trip",
    )?;
    let orders_body = client.get("order-service", "/orders").await?;
    println!(
        "  GET  order-service /orders -> {} bytes",
        orders_body.len()
    );
    match client.get("user-service", "/no-such-path").await {
        Err(Error::Http { status, .. }) => {
            println!("  GET  /no-such-path -> HTTP {status}, not retried")
        }
        other => return Err(format!("expected HTTP 404, got {other:?}").into()),
    }
    check(
        s1.requests() > 0 && s2.requests() > 0,
        "both user-service servers served requests",
    )?;

    section("4. Circuit breaker");
    let cb = SimpleCircuitBreaker::new(3, Duration::from_millis(500));
    let mut ran = 0;
    for call in 1..=4 {
        let r = cb
            .execute(|| {
                ran += 1;
                async { Err::<(), _>("connection refused") }
            })
            .await;
        match r {
            Err(e) if e.is_rejected() => println!(
                "  call {call}: refused without running (breaker {})",
                cb.state()
            ),
            Err(_) => println!("  call {call}: ran and failed (breaker {})", cb.state()),
            Ok(()) => println!("  call {call}: succeeded"),
        }
    }
    check(
        ran == 3 && cb.is_open(),
        "3 failures open the breaker; the 4th call never ran",
    )?;
    tokio::time::sleep(Duration::from_millis(600)).await;
    println!("  after the 500ms timeout: {}", cb.state());
    check(
        cb.state() == CircuitState::HalfOpen,
        "half-open after the timeout",
    )?;
    cb.execute(|| async { Ok::<_, &str>(()) })
        .await
        .map_err(|e| format!("probe failed: {e:?}"))?;
    println!("  a successful probe: {}", cb.state());
    check(
        cb.state() == CircuitState::Closed,
        "a probe success closes it",
    )?;

    section("5. Registries from config and from the builder");
    let from_url =
        waypost::new_service_registry(&RegistryConfig::from_url("memory://?default_ttl=30s")?)
            .await?;
    smoke("memory (URL memory://?default_ttl=30s)", from_url.as_ref()).await?;
    // A config file in the Laravel-Go module's shape (the section under the backend's name)
    // reads the same as the tagged shape that saving writes.
    let from_json: RegistryConfig =
        serde_json::from_str(r#"{"type":"memory","memory":{"cleanup_interval":"1s"}}"#)?;
    let tagged: RegistryConfig =
        serde_json::from_str(r#"{"type":"memory","cleanup_interval":"1s"}"#)?;
    check(from_json == tagged, "both config shapes read the same")?;
    println!("  saved config: {}", serde_json::to_string(&from_json)?);
    let from_json = waypost::new_service_registry(&from_json).await?;
    smoke("memory (JSON config)", from_json.as_ref()).await?;
    let from_builder = RegistryBuilder::new()
        .with_type(RegistryType::Memory)
        .build()
        .await?;
    smoke("memory (builder)", from_builder.as_ref()).await?;
    let mut remote_failures = Vec::new();
    for (backend, var, url_of, example) in [
        (
            "etcd",
            "ETCD_ENDPOINTS",
            (|v: &str| format!("etcd://{v}")) as fn(&str) -> String,
            "127.0.0.1:2379",
        ),
        (
            "consul",
            "CONSUL_HTTP_ADDR",
            |v: &str| format!("consul://{}", v.trim_start_matches("http://")),
            "127.0.0.1:8500",
        ),
        (
            "nacos",
            "NACOS_ADDR",
            |v: &str| format!("nacos://{v}"),
            "127.0.0.1:8848",
        ),
        (
            "zookeeper",
            "ZOOKEEPER_SERVERS",
            |v: &str| format!("zookeeper://{v}"),
            "127.0.0.1:2181",
        ),
    ] {
        let Ok(value) = std::env::var(var) else {
            println!(
                "  {backend}: not tried; set {var}={example} (e.g. `docker compose up -d {backend}`) \
                 and build with `--features remote` to try it"
            );
            continue;
        };
        let result = async {
            let registry = RegistryBuilder::from_url(&url_of(&value))
                .with_connect_timeout(Duration::from_secs(3))
                .build()
                .await?;
            let r = smoke(&format!("{backend} at {value}"), registry.as_ref()).await;
            registry.close().await?;
            r
        }
        .await;
        if let Err(e) = result {
            println!("  {backend} at {value}: FAILED: {e}");
            remote_failures.push(backend);
        }
    }
    if !remote_failures.is_empty() {
        return Err(format!("remote registries failed: {remote_failures:?}").into());
    }

    section("6. gRPC over discovery");
    grpc::run(Arc::clone(&registry)).await?;

    discovery.close().await?;
    registry.close().await?;
    drop((s1, s2, orders));
    println!(
        "\n✔ microservice demo finished: registration, discovery, load balancing, service calls, \
         circuit breaker, registry configs and gRPC calls all worked"
    );
    Ok(())
}

/// Registers, lists and deregisters one instance.
async fn smoke(label: &str, registry: &dyn ServiceRegistry) -> DemoResult {
    let id = format!("demo-smoke-{}", std::process::id());
    let svc = ServiceInfo::new(&id, "demo-smoke", "127.0.0.1", 18080).with_health(Health::Healthy);
    registry.register(&svc).await?;
    let n = registry.list_instances("demo-smoke").await?.len();
    registry.deregister(&id).await?;
    println!(
        "  {label}: registered, listed ({n}), deregistered on the {} backend",
        registry.backend()
    );
    check(n >= 1, &format!("{label} works"))
}

async fn serve(args: Args, metrics: PrometheusHandle) -> DemoResult {
    section("Demo server");
    // The embedded registry, unless WAYPOST_REGISTRY names another one.
    let registry: Arc<dyn ServiceRegistry> = if std::env::var_os(waypost::REGISTRY_ENV).is_some() {
        RegistryBuilder::from_env().build().await?
    } else {
        RegistryBuilder::new()
            .with_type(RegistryType::Memory)
            .with_cleanup_interval(Duration::from_millis(100))
            .build()
            .await?
    };
    let addr: SocketAddr = ([127, 0, 0, 1], args.port).into();
    let upkeep = telemetry::spawn_upkeep(metrics.clone());
    let server = server::start(addr, "demo-service-1", Arc::clone(&registry), metrics).await?;
    println!(
        "  serving http://{} (/health, /users, /orders, /services, /metrics)",
        server.addr
    );
    println!(
        "  registered demo-service-1 on the {} registry, with a {:?} TTL renewed every {:?}; \
         SIGTERM or Ctrl-C drains for {:?} and stops",
        registry.backend(),
        args.ttl,
        args.ttl / 3,
        args.drain,
    );
    let bound = server.addr;
    let served = waypost::Announcer::new(registry, "demo-service")
        .with_id("demo-service-1")
        .with_version("1.0.0")
        .with_ttl(args.ttl)
        .with_drain_delay(args.drain)
        .allow_loopback(true) // the demo listens on 127.0.0.1
        .serve(bound, |stop| async move {
            stop.await;
            server.shutdown().await;
            Ok::<(), std::io::Error>(())
        })
        .await;
    upkeep.abort();
    served?;
    println!("  deregistered, drained and stopped");
    Ok(())
}
