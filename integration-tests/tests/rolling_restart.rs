//! Rolling restarts and a SIGKILLed replica under steady load, on every backend: three replicas
//! of an axum service that join through waypost's `Announcer` (separate processes, the
//! `replica` binary; in-process tasks on the in-memory registry, which cannot span processes),
//! and a `ServiceClient` sending a bounded load at concurrency 8 through a watch-driven
//! discovery cache.
//!
//! - Rolling restart: each replica in turn gets SIGTERM (it deregisters, drains for the
//!   backend's default drain delay, stops accepting, finishes its in-flight requests) and is
//!   started again on the same port. Expected: 0 failed requests and 0 retries.
//! - SIGKILL: one replica dies without deregistering. Expected: failed requests bounded by the
//!   client's retry policy (in practice 0: a refused connection is retried on another replica),
//!   and the instance gone from the registry within the backend's liveness bound.
//!
//! Each test prints its figures (`cargo test --test rolling_restart -- --nocapture`).

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;
use tokio::sync::oneshot;
use waypost::{
    Announcer, CachedDiscovery, Health, RegistryBuilder, RoundRobin, ServiceClient,
    ServiceDiscovery, ServiceRegistry,
};
use waypost_integration_tests::{free_ports, require};

const REPLICA: &str = env!("CARGO_BIN_EXE_replica");
const SERVICE: &str = "users";
const CONCURRENCY: usize = 8;
/// Pause of each load worker between two requests: 8 workers make about 100 requests/s.
const PACE: Duration = Duration::from_millis(70);

/// One scenario at a time: each runs three replicas and a load, and timing figures measured on
/// a 2-core machine mean something only without the other backends' load beside them.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn id_of(port: u16) -> String {
    format!("{SERVICE}-127.0.0.1-{port}")
}

/// One replica: a child process, or (in-memory registry) a task in this process.
enum Replica {
    Process(Child),
    Task {
        stop: Option<oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<waypost::Result<()>>,
    },
    Stopped,
}

/// Three replicas of `users` on fixed ports, started the same way again after a stop.
struct Fleet {
    url: String,
    memory: Option<Arc<dyn ServiceRegistry>>,
    ports: [u16; 3],
    replicas: Vec<Replica>,
    logs: tempfile::TempDir,
}

impl Fleet {
    fn new(url: &str, memory: Option<Arc<dyn ServiceRegistry>>) -> Fleet {
        Fleet {
            url: url.to_owned(),
            memory,
            ports: {
                let p = free_ports(3);
                [p[0], p[1], p[2]]
            },
            replicas: (0..3).map(|_| Replica::Stopped).collect(),
            logs: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn start(&mut self, i: usize) {
        let port = self.ports[i];
        self.replicas[i] = match &self.memory {
            Some(registry) => {
                let (stop, stopped) = oneshot::channel::<()>();
                let registry = Arc::clone(registry);
                let task = tokio::spawn(async move {
                    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                        .await
                        .map_err(|e| waypost::Error::backend("bind", e))?;
                    let app = axum::Router::new().route(
                        "/work",
                        axum::routing::get(move || async move {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            port.to_string()
                        }),
                    );
                    Announcer::new(registry, SERVICE)
                        .with_advertise_addr("127.0.0.1")
                        .close_registry(false)
                        .with_shutdown(async move {
                            let _ = stopped.await;
                        })
                        .serve(listener.local_addr().expect("bound"), |stop| {
                            axum::serve(listener, app).with_graceful_shutdown(stop)
                        })
                        .await
                });
                Replica::Task {
                    stop: Some(stop),
                    task,
                }
            }
            None => {
                let log = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.logs.path().join(format!("replica-{i}.log")))
                    .expect("log file");
                let child = Command::new(REPLICA)
                    .env("WAYPOST_REGISTRY", &self.url)
                    .env("WAYPOST_ADVERTISE_ADDR", "127.0.0.1")
                    .env("PORT", port.to_string())
                    .env("SERVICE", SERVICE)
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .expect("start a replica");
                Replica::Process(child)
            }
        };
    }

    /// SIGTERM (or the task's shutdown), then waits for the replica to end by itself.
    async fn terminate(&mut self, i: usize) {
        match std::mem::replace(&mut self.replicas[i], Replica::Stopped) {
            Replica::Process(mut child) => {
                let status = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status()
                    .expect("kill");
                assert!(status.success());
                let deadline = Instant::now() + Duration::from_secs(20);
                let status = loop {
                    if let Some(status) = child.try_wait().expect("wait") {
                        break status;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "replica {i} did not stop after SIGTERM"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                };
                assert!(status.success(), "replica {i}: {status}\n{}", self.log(i));
            }
            Replica::Task { stop, task } => {
                let _ = stop.map(|s| s.send(()));
                tokio::time::timeout(Duration::from_secs(20), task)
                    .await
                    .expect("replica stops")
                    .expect("replica task")
                    .expect("replica ends cleanly");
            }
            Replica::Stopped => {}
        }
    }

    /// SIGKILL (or, in process, aborting the replica with its registration left behind).
    async fn kill(&mut self, i: usize) {
        match std::mem::replace(&mut self.replicas[i], Replica::Stopped) {
            Replica::Process(mut child) => {
                child.kill().expect("SIGKILL");
                child.wait().expect("reap");
            }
            Replica::Task { task, .. } => {
                task.abort();
                let _ = task.await;
            }
            Replica::Stopped => {}
        }
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.logs.path().join(format!("replica-{i}.log")))
            .unwrap_or_default()
    }

    fn logs(&self) -> String {
        (0..3)
            .map(|i| format!("--- replica {i}\n{}", self.log(i)))
            .collect()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for replica in &mut self.replicas {
            match replica {
                Replica::Process(child) => {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                Replica::Task { task, .. } => task.abort(),
                Replica::Stopped => {}
            }
        }
    }
}

/// Healthy-or-unknown instances of `users` the registry lists (what callers may pick).
async fn listed(registry: &Arc<dyn ServiceRegistry>) -> Vec<String> {
    match registry.list_instances(SERVICE).await {
        Ok(list) => list
            .into_iter()
            .filter(|s| s.health != Health::Unhealthy)
            .map(|s| s.id)
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Waits until the client's discovery cache offers exactly the replicas in `ports`.
async fn wait_for_set(discovery: &CachedDiscovery, ports: &[u16], fleet: &Fleet) {
    let mut want: Vec<String> = ports.iter().map(|p| id_of(*p)).collect();
    want.sort();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut have: Vec<String> = discovery
            .discover(SERVICE)
            .await
            .map(|l| {
                l.iter()
                    .filter(|s| s.health == Health::Healthy)
                    .map(|s| s.id.clone())
                    .collect()
            })
            .unwrap_or_default();
        have.sort();
        if have == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "discovery shows {have:?}, expected {want:?}\n{}",
            fleet.logs()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[derive(Default)]
struct Load {
    ok: AtomicU64,
    failed: AtomicU64,
    retries: AtomicU64,
    errors: parking_lot::Mutex<Vec<String>>,
}

/// Runs the load until `stop` is set; returns the workers.
fn start_load(
    client: &Arc<ServiceClient>,
    load: &Arc<Load>,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..CONCURRENCY)
        .map(|_| {
            let (client, load, stop) = (Arc::clone(client), Arc::clone(load), Arc::clone(stop));
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match client.request(Method::GET, SERVICE, "/work").send().await {
                        Ok(resp) if resp.status.is_success() => {
                            load.ok.fetch_add(1, Ordering::Relaxed);
                            load.retries
                                .fetch_add(u64::from(resp.attempts - 1), Ordering::Relaxed);
                        }
                        Ok(resp) => {
                            load.failed.fetch_add(1, Ordering::Relaxed);
                            load.errors.lock().push(format!("HTTP {}", resp.status));
                        }
                        Err(e) => {
                            load.failed.fetch_add(1, Ordering::Relaxed);
                            load.errors.lock().push(e.to_string());
                        }
                    }
                    tokio::time::sleep(PACE).await;
                }
            })
        })
        .collect()
}

/// The rolling restart and the SIGKILL scenario against the registry at `url` (or the
/// in-memory `memory` one); `liveness` bounds how long a killed replica may stay listed.
async fn scenarios(
    backend: &str,
    url: &str,
    memory: Option<Arc<dyn ServiceRegistry>>,
    liveness: Duration,
) {
    let _one = ONE_AT_A_TIME.lock().await;
    let client_registry: Arc<dyn ServiceRegistry> = match &memory {
        Some(r) => Arc::clone(r),
        None => RegistryBuilder::from_url(url)
            .build()
            .await
            .expect("client registry"),
    };
    let discovery = Arc::new(CachedDiscovery::new(
        Arc::clone(&client_registry),
        Arc::new(RoundRobin::new()),
    ));
    let client = Arc::new(
        ServiceClient::builder(discovery.clone() as Arc<dyn ServiceDiscovery>)
            .timeout(Duration::from_secs(2))
            .build()
            .expect("client"),
    );

    // Rolling restart.
    let mut fleet = Fleet::new(url, memory.clone());
    for i in 0..3 {
        fleet.start(i);
    }
    let ports = fleet.ports;
    wait_for_set(&discovery, &ports, &fleet).await;
    let load = Arc::new(Load::default());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers = start_load(&client, &load, &stop);
    tokio::time::sleep(Duration::from_secs(2)).await;
    for i in 0..3 {
        fleet.terminate(i).await;
        fleet.start(i);
        wait_for_set(&discovery, &ports, &fleet).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("worker");
    }
    let (ok, failed, retries) = (
        load.ok.load(Ordering::Relaxed),
        load.failed.load(Ordering::Relaxed),
        load.retries.load(Ordering::Relaxed),
    );
    eprintln!(
        "{backend}: rolling restart of 3 replicas: {ok} requests ok, {failed} failed, {retries} \
         retries, in {:?} (default drain delay {:?})",
        started.elapsed(),
        waypost::lifecycle::default_drain_delay(backend)
    );
    assert_eq!(failed, 0, "{:?}\n{}", load.errors.lock(), fleet.logs());
    assert_eq!(retries, 0, "no retry with the default drain delay");
    assert!(ok >= 500, "the load ran ({ok} requests)");

    // SIGKILL one replica under the same load.
    let load = Arc::new(Load::default());
    let stop = Arc::new(AtomicBool::new(false));
    let workers = start_load(&client, &load, &stop);
    tokio::time::sleep(Duration::from_secs(2)).await;
    fleet.kill(1).await;
    let killed = Instant::now();
    let dead = id_of(ports[1]);
    let gone_after = loop {
        if !listed(&client_registry).await.contains(&dead) {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < liveness,
            "{backend}: the killed replica is still listed after {liveness:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("worker");
    }
    let (ok, failed, retries) = (
        load.ok.load(Ordering::Relaxed),
        load.failed.load(Ordering::Relaxed),
        load.retries.load(Ordering::Relaxed),
    );
    eprintln!(
        "{backend}: SIGKILL of one replica: {ok} requests ok, {failed} failed, {retries} retries; \
         gone from the registry after {gone_after:?} (bound {liveness:?})"
    );
    // A call fails only if every attempt does (3 attempts, outlier ejection): a dead replica
    // costs retries, not failures.
    assert_eq!(failed, 0, "{:?}", load.errors.lock());
    fleet.terminate(0).await;
    fleet.terminate(2).await;
    if memory.is_none() {
        client_registry.close().await.expect("close");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_rolling_restart_and_sigkill() {
    let registry: Arc<dyn ServiceRegistry> = Arc::new(
        waypost::MemoryRegistry::builder()
            .default_ttl(Some(Duration::from_secs(2)))
            .cleanup_interval(Duration::from_millis(100))
            .build()
            .expect("memory registry"),
    );
    scenarios(
        "memory",
        "memory://",
        Some(registry),
        Duration::from_secs(4),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_rolling_restart_and_sigkill() {
    let test = "etcd_rolling_restart_and_sigkill";
    let Some(etcd) = require(
        test,
        waypost_integration_tests::etcd::EtcdServer::start().await,
    ) else {
        return;
    };
    let endpoint = etcd.endpoint();
    let host = endpoint.trim_start_matches("http://");
    let url = format!("etcd://{host}/rolling-{}?ttl=2s", std::process::id());
    scenarios("etcd", &url, None, Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_rolling_restart_and_sigkill() {
    use waypost_integration_tests::zookeeper::{ZkOptions, ZkServer};
    let test = "zookeeper_rolling_restart_and_sigkill";
    let Some(zk) = require(test, ZkServer::start(ZkOptions::default()).await) else {
        return;
    };
    let url = format!(
        "zookeeper://{}/rolling-{}?session_timeout=2s",
        zk.addr(),
        std::process::id()
    );
    scenarios("zookeeper", &url, None, Duration::from_secs(6)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacos_rolling_restart_and_sigkill() {
    use waypost_integration_tests::nacos::{start_rnacos, RnacosOptions};
    let test = "nacos_rolling_restart_and_sigkill";
    let Some(server) = require(test, start_rnacos(RnacosOptions::default()).await) else {
        return;
    };
    let cache = tempfile::tempdir().expect("cache dir");
    let url = format!(
        "nacos://{}?group=rolling-{}&cache_dir={}",
        server.addr(),
        std::process::id(),
        cache.path().display()
    );
    scenarios("nacos", &url, None, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_fake_rolling_restart_and_sigkill() {
    use waypost_registry_consul::fake::{FakeConsul, FakeOptions};
    let agent = FakeConsul::start(FakeOptions::default())
        .await
        .expect("fake Consul agent");
    let addr = agent.addr();
    let url = format!("consul://{addr}/rolling-{}?ttl=2s", std::process::id());
    scenarios("consul", &url, None, Duration::from_secs(6)).await;
}
