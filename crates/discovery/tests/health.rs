//! Health checking against local servers, and the health monitor.
#![allow(clippy::unwrap_used)] // tests

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::{closed_port, healthy, wait_until, Reply, TestServer};
use parking_lot::Mutex;
use waypost_core_types::{
    Error, Health, HealthChecker, Result, ServiceDiscovery, ServiceInfo, ServiceRegistry,
};
use waypost_discovery::{CachedDiscovery, HealthMonitor, HttpHealthChecker, TcpHealthChecker};
use waypost_registry_memory::MemoryRegistry;

fn ok(path: &'static str) -> Reply {
    Reply {
        path,
        status: 200,
        delay: Duration::ZERO,
    }
}

/// Port of Go's TestHealthChecker, against a real local HTTP server.
#[tokio::test]
async fn health_checker() {
    let server = TestServer::start(vec![ok("/health")]).await;
    let checker = HttpHealthChecker::new(Duration::from_secs(5));
    let up = healthy("up", "svc", server.port());
    checker.check(&up).await.unwrap();
    assert!(checker.is_healthy(&up).await);
    assert_eq!(
        server.hits.load(Ordering::SeqCst),
        2,
        "a real GET each time"
    );

    let down = healthy("down", "svc", closed_port().await);
    assert!(!checker.is_healthy(&down).await);
    assert!(checker.check(&down).await.is_err());
}

/// 2xx is healthy; 5xx, 404 on the wrong path, a late answer and a refused connection are not.
#[tokio::test]
async fn http_checker_statuses_paths_and_timeouts() {
    let server = TestServer::start(vec![
        ok("/ready"),
        Reply {
            path: "/health",
            status: 503,
            delay: Duration::ZERO,
        },
        Reply {
            path: "/slow",
            status: 200,
            delay: Duration::from_millis(500),
        },
        Reply {
            path: "/created",
            status: 204,
            delay: Duration::ZERO,
        },
    ])
    .await;
    let inst = healthy("i", "svc", server.port());
    let t = Duration::from_millis(200);

    let err = HttpHealthChecker::new(t).check(&inst).await.unwrap_err();
    assert!(matches!(err, Error::Http { status: 503, .. }), "{err:?}");
    HttpHealthChecker::new(t)
        .with_path("/ready")
        .check(&inst)
        .await
        .unwrap();
    HttpHealthChecker::new(t)
        .with_path("created")
        .check(&inst)
        .await
        .unwrap();
    let err = HttpHealthChecker::new(t)
        .with_path("/nope")
        .check(&inst)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Http { status: 404, .. }), "{err:?}");

    let started = std::time::Instant::now();
    let err = HttpHealthChecker::new(t)
        .with_path("/slow")
        .check(&inst)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_millis(450),
        "the timeout bounds the check"
    );

    let refused = healthy("r", "svc", closed_port().await);
    let err = HttpHealthChecker::new(t).check(&refused).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Backend {
                backend: "http",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(HttpHealthChecker::default().path(), "/health");
}

#[tokio::test]
async fn tcp_checker() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let checker = TcpHealthChecker::new(Duration::from_millis(500));
    checker.check(&healthy("t", "svc", port)).await.unwrap();
    drop(listener);
    assert!(checker.check(&healthy("t", "svc", port)).await.is_err());
}

/// A checker whose answers the test decides.
#[derive(Debug, Default)]
struct Scripted {
    down: Mutex<HashSet<String>>,
    calls: AtomicUsize,
}

impl Scripted {
    fn set_down(&self, id: &str, down: bool) {
        let mut d = self.down.lock();
        if down {
            d.insert(id.to_owned());
        } else {
            d.remove(id);
        }
    }
}

#[async_trait]
impl HealthChecker for Scripted {
    async fn check(&self, service: &ServiceInfo) -> Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.down.lock().contains(&service.id) {
            Err(Error::Unavailable("scripted down".into()))
        } else {
            Ok(())
        }
    }
}

async fn ids_picked(d: &CachedDiscovery, name: &str, n: usize) -> HashSet<String> {
    let mut out = HashSet::new();
    for _ in 0..n {
        out.insert(d.discover_one(name).await.unwrap().id.clone());
    }
    out
}

/// With interval 1 s and failure threshold 3, a dead instance is still served after 2 failed
/// probes and no longer after 3, i.e. within interval × threshold; it comes back after the
/// success threshold.
#[tokio::test(start_paused = true)]
async fn monitor_removes_dead_instance_within_interval_times_threshold() {
    let registry = Arc::new(MemoryRegistry::new());
    registry.register(&healthy("a", "mon", 8001)).await.unwrap();
    registry.register(&healthy("b", "mon", 8002)).await.unwrap();
    let checker = Arc::new(Scripted::default());
    let monitor = HealthMonitor::builder(registry.clone(), checker.clone())
        .service("mon")
        .interval(Duration::from_secs(1))
        .failure_threshold(3)
        .success_threshold(2)
        .start()
        .unwrap();
    let d = CachedDiscovery::new(
        registry.clone(),
        Arc::new(waypost_balancer::RoundRobin::new()),
    );
    assert_eq!(ids_picked(&d, "mon", 4).await.len(), 2);

    // Probes run at t = 0, 1, 2, 3, …; `b` dies at t = 0.5.
    tokio::time::sleep(Duration::from_millis(500)).await;
    checker.set_down("b", true);
    tokio::time::sleep(Duration::from_millis(2000)).await; // t = 2.5: two failures
    assert_eq!(
        ids_picked(&d, "mon", 4).await.len(),
        2,
        "below the threshold"
    );
    tokio::time::sleep(Duration::from_millis(600)).await; // t = 3.1: three failures
    assert_eq!(
        ids_picked(&d, "mon", 10).await,
        HashSet::from(["a".to_string()])
    );
    assert_eq!(
        registry.get_service("b").await.unwrap().health,
        Health::Unhealthy
    );
    let st = monitor.status();
    assert_eq!(
        st.iter()
            .find(|s| s.id == "b")
            .unwrap()
            .consecutive_failures,
        3
    );

    checker.set_down("b", false);
    tokio::time::sleep(Duration::from_millis(1000)).await; // one success
    assert_eq!(ids_picked(&d, "mon", 4).await.len(), 1);
    tokio::time::sleep(Duration::from_millis(1000)).await; // two successes
    assert_eq!(
        ids_picked(&d, "mon", 4).await.len(),
        2,
        "back after the success threshold"
    );
}

/// A checker that cannot judge anything.
#[derive(Debug)]
struct Unjudging;

#[async_trait]
impl HealthChecker for Unjudging {
    async fn check(&self, _: &ServiceInfo) -> Result<()> {
        Err(Error::Unsupported("no way to check this instance".into()))
    }
}

/// An instance the checker cannot judge (`Unsupported`) keeps its health.
#[tokio::test(start_paused = true)]
async fn monitor_leaves_unjudgeable_instances_alone() {
    let registry = Arc::new(MemoryRegistry::new());
    registry
        .register(&healthy("x", "opaque", 8001))
        .await
        .unwrap();
    let monitor = HealthMonitor::builder(registry.clone(), Arc::new(Unjudging))
        .service("opaque")
        .interval(Duration::from_secs(1))
        .failure_threshold(1)
        .start()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert!(monitor.rounds() >= 3);
    assert_eq!(
        registry.get_service("x").await.unwrap().health,
        Health::Healthy
    );
    let st = monitor.status();
    assert_eq!(st[0].consecutive_failures, 0);
    assert!(st[0]
        .last_error
        .as_deref()
        .unwrap()
        .starts_with("not checked"));
}

/// A test CA, and a TLS acceptor with a certificate for `localhost` and `127.0.0.1` it signed.
fn pki() -> (
    rustls::pki_types::CertificateDer<'static>,
    tokio_rustls::TlsAcceptor,
) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .unwrap();
    (
        ca_cert.der().clone(),
        tokio_rustls::TlsAcceptor::from(Arc::new(server)),
    )
}

/// https instances are checked over TLS: healthy with the test CA trusted, unhealthy without.
#[tokio::test]
async fn http_checker_over_tls() {
    let (ca, acceptor) = pki();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let server = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let hits = h.clone();
            conns.spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let hits = hits.clone();
                        async move {
                            hits.fetch_add(1, Ordering::SeqCst);
                            let status = if req.uri().path() == "/health" {
                                200
                            } else {
                                404
                            };
                            hyper::Response::builder()
                                .status(status)
                                .body(http_body_util::Full::new(bytes::Bytes::from_static(b"ok")))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    let inst = ServiceInfo::new("tls-1", "secure", "127.0.0.1", port)
        .with_health(Health::Healthy)
        .with_protocol(waypost_core_types::Protocol::Https);

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let trusting = HttpHealthChecker::new(Duration::from_secs(5))
        .with_root_certificates(roots)
        .unwrap();
    trusting.check(&inst).await.unwrap();
    assert_eq!(hits.load(Ordering::SeqCst), 1, "a real GET over TLS");

    let untrusting = HttpHealthChecker::new(Duration::from_secs(5));
    let err = untrusting.check(&inst).await.unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    server.abort();
}

/// Unknown instances are picked while the service has no healthy one, and become healthy after
/// the success threshold.
#[tokio::test(start_paused = true)]
async fn monitor_promotes_unknown_instances() {
    let registry = Arc::new(MemoryRegistry::new());
    registry
        .register(&ServiceInfo::new("u", "fresh", "127.0.0.1", 8001))
        .await
        .unwrap();
    let d = CachedDiscovery::new(
        registry.clone(),
        Arc::new(waypost_balancer::RoundRobin::new()),
    );
    let picked = d.discover_one("fresh").await.unwrap();
    assert_eq!((picked.id.as_str(), picked.health), ("u", Health::Unknown));
    let _monitor = HealthMonitor::builder(registry.clone(), Arc::new(Scripted::default()))
        .service("fresh")
        .interval(Duration::from_secs(1))
        .success_threshold(2)
        .start()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let picked = d.discover_one("fresh").await.unwrap();
    assert_eq!((picked.id.as_str(), picked.health), ("u", Health::Healthy));
}

/// The first-use rule through discovery: healthy first, unknown when none is healthy, never
/// unhealthy; `NoHealthyInstance` only when every instance is unhealthy.
#[tokio::test(start_paused = true)]
async fn discover_one_prefers_healthy_then_unknown() {
    let registry = Arc::new(MemoryRegistry::new());
    let d = CachedDiscovery::new(
        registry.clone(),
        Arc::new(waypost_balancer::RoundRobin::new()),
    );
    let set = |id: &str, h: Health| ServiceInfo::new(id, "svc", "127.0.0.1", 8001).with_health(h);
    registry
        .register(&set("new", Health::Unknown))
        .await
        .unwrap();
    assert_eq!(d.discover_one("svc").await.unwrap().id, "new");
    registry
        .register(&set("ok", Health::Healthy))
        .await
        .unwrap();
    registry
        .register(&set("down", Health::Unhealthy))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    for _ in 0..10 {
        assert_eq!(d.discover_one("svc").await.unwrap().id, "ok");
    }
    registry
        .register(&set("ok", Health::Unhealthy))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    for _ in 0..10 {
        assert_eq!(d.discover_one("svc").await.unwrap().id, "new");
    }
    let filtered = d
        .select_with(
            "svc",
            &waypost_discovery::Filter::new(),
            &Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(filtered.instance.id, "new");
    registry
        .register(&set("new", Health::Unhealthy))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(matches!(
        d.discover_one("svc").await,
        Err(Error::NoHealthyInstance(_))
    ));
    assert_eq!(d.discover("svc").await.unwrap().len(), 3);
}

/// The probing task belongs to the monitor: stopping or dropping it ends the probes.
#[tokio::test(start_paused = true)]
async fn monitor_task_stops_with_it() {
    let registry = Arc::new(MemoryRegistry::new());
    registry.register(&healthy("a", "s", 8001)).await.unwrap();
    let checker = Arc::new(Scripted::default());
    let monitor = HealthMonitor::builder(registry.clone(), checker.clone())
        .service("s")
        .interval(Duration::from_secs(1))
        .start()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(checker.calls.load(Ordering::SeqCst), 3);
    assert!(monitor.is_running());
    drop(monitor);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        checker.calls.load(Ordering::SeqCst),
        3,
        "no probe after drop"
    );

    let m2 = HealthMonitor::builder(registry.clone(), checker.clone())
        .service("s")
        .interval(Duration::from_secs(1))
        .start()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    m2.stop();
    m2.stop();
    let n = checker.calls.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(checker.calls.load(Ordering::SeqCst), n);
    assert!(!m2.is_running());

    assert!(HealthMonitor::builder(registry.clone(), checker.clone())
        .start()
        .is_err());
    assert!(HealthMonitor::builder(registry, checker)
        .service("s")
        .failure_threshold(0)
        .start()
        .is_err());
}

/// End to end over real HTTP servers: one dies, and within interval × threshold (plus the watch
/// delivery) `discover_one` stops returning it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_with_http_checker_end_to_end() {
    let s1 = TestServer::start(vec![ok("/health")]).await;
    let s2 = TestServer::start(vec![ok("/health")]).await;
    let registry = Arc::new(MemoryRegistry::new());
    registry
        .register(&healthy("one", "web", s1.port()))
        .await
        .unwrap();
    registry
        .register(&healthy("two", "web", s2.port()))
        .await
        .unwrap();
    let interval = Duration::from_millis(50);
    let _monitor = HealthMonitor::builder(
        registry.clone(),
        Arc::new(HttpHealthChecker::new(Duration::from_millis(40))),
    )
    .service("web")
    .interval(interval)
    .failure_threshold(2)
    .start()
    .unwrap();
    let d = CachedDiscovery::new(
        registry.clone(),
        Arc::new(waypost_balancer::RoundRobin::new()),
    );
    assert_eq!(ids_picked(&d, "web", 4).await.len(), 2);
    wait_until(Duration::from_secs(2), || async {
        s1.hits.load(Ordering::SeqCst) >= 2
    })
    .await
    .expect("probes reach the server");

    s2.kill();
    let took = wait_until(Duration::from_secs(3), || async {
        ids_picked(&d, "web", 4).await == HashSet::from(["one".to_string()])
    })
    .await
    .expect("dead instance dropped");
    // interval × threshold = 100 ms; allow one more interval plus the check timeout for
    // scheduling on a loaded machine.
    assert!(took <= Duration::from_millis(400), "took {took:?}");
    for _ in 0..20 {
        assert_eq!(d.discover_one("web").await.unwrap().id, "one");
    }
}
