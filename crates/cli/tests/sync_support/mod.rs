//! Shared pieces of the `sync_*` tests: the `waypost sync` child process, registries opened from
//! URLs, servers shared by the tests of one binary, and waiting with deadlines.
#![allow(dead_code)] // each test binary uses part of it

use std::collections::BTreeSet;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Weak};
use std::time::Duration;

use waypost::{RegistryConfig, ServiceInfo, ServiceRegistry};
use waypost_integration_tests::etcd::EtcdServer;
use waypost_integration_tests::nacos::{start_rnacos, Rnacos, RnacosOptions};
use waypost_integration_tests::require;
use waypost_integration_tests::zookeeper::{ZkOptions, ZkServer};

/// How long a mirror may take to show up (watch delays of the backends included).
pub const CONVERGE: Duration = Duration::from_secs(30);

/// A running `waypost sync` with its stderr in a file.
pub struct Syncer {
    child: Option<Child>,
    args: Vec<String>,
    dir: tempfile::TempDir,
    runs: usize,
}

impl Syncer {
    /// Starts `waypost sync <args…>`.
    pub fn start(args: &[String]) -> Syncer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut s = Syncer {
            child: None,
            args: args.to_vec(),
            dir,
            runs: 0,
        };
        s.spawn();
        s
    }

    fn log_path(&self, run: usize) -> PathBuf {
        self.dir.path().join(format!("sync-{run}.log"))
    }

    fn spawn(&mut self) {
        self.runs += 1;
        let log = std::fs::File::create(self.log_path(self.runs)).expect("log file");
        let child = Command::new(assert_cmd::cargo::cargo_bin("waypost"))
            .arg("sync")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start waypost sync");
        self.child = Some(child);
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Everything the syncer logged (every run so far).
    pub fn log(&self) -> String {
        let mut all = String::new();
        for run in 1..=self.runs {
            if let Ok(mut f) = std::fs::File::open(self.log_path(run)) {
                let _ = f.read_to_string(&mut all);
            }
        }
        all
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again with the same arguments.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "kill or stop it first");
        self.spawn();
    }

    /// Sends `signal` (e.g. `TERM`, `INT`) and waits up to `deadline` for the exit.
    pub async fn stop_with(&mut self, signal: &str, deadline: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
        let start = tokio::time::Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if start.elapsed() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "waypost sync did not exit within {deadline:?} of SIG{signal}\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- waypost sync log ---\n{}", self.log());
        }
    }
}

/// Args as owned strings.
pub fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// Opens a registry from its URL.
pub async fn open(url: &str) -> Arc<dyn ServiceRegistry> {
    let config = RegistryConfig::from_url(url).expect("registry URL");
    waypost::new_service_registry(&config)
        .await
        .unwrap_or_else(|e| panic!("open {url}: {e}"))
}

/// An instance on 127.0.0.1 (Nacos needs an IP address).
pub fn instance(id: &str, service: &str, port: u16) -> ServiceInfo {
    ServiceInfo::new(id, service, "127.0.0.1", port)
        .with_version("1.0.0")
        .with_metadata("zone", "z1")
        .with_tag("api")
}

/// The ids of `service`'s instances in `registry` (empty on error).
pub async fn ids(registry: &dyn ServiceRegistry, service: &str) -> BTreeSet<String> {
    registry
        .list_instances(service)
        .await
        .map(|l| l.into_iter().map(|s| s.id).collect())
        .unwrap_or_default()
}

/// A set of ids.
pub fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| (*s).to_owned()).collect()
}

/// Waits until `service` in `registry` has exactly `want`, or panics with what it had and the
/// syncer's log.
pub async fn wait_for_ids(
    what: &str,
    registry: &dyn ServiceRegistry,
    service: &str,
    want: &BTreeSet<String>,
    syncer: &Syncer,
) {
    let start = tokio::time::Instant::now();
    loop {
        let have = ids(registry, service).await;
        if &have == want {
            return;
        }
        assert!(
            start.elapsed() < CONVERGE,
            "{what}: {service} has {have:?}, want {want:?} (after {CONVERGE:?})\n--- log ---\n{}",
            syncer.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Checks for `window` that `service` keeps exactly `want` (no duplicates appear, nothing
/// flaps), polling every 100 ms.
pub async fn stays(
    what: &str,
    registry: &dyn ServiceRegistry,
    service: &str,
    want: &BTreeSet<String>,
    window: Duration,
) {
    let start = tokio::time::Instant::now();
    while start.elapsed() < window {
        let list = registry.list_instances(service).await.expect("list");
        let have: BTreeSet<String> = list.iter().map(|s| s.id.clone()).collect();
        assert_eq!(&have, want, "{what}: {service} changed");
        assert_eq!(
            list.len(),
            want.len(),
            "{what}: {service} has duplicates: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A server shared by the tests of one binary that run at the same time: started by the first,
/// stopped when the last drops it.
pub struct Shared<T> {
    slot: tokio::sync::Mutex<Weak<T>>,
}

impl<T> Shared<T> {
    /// An empty slot.
    pub const fn new() -> Self {
        Shared {
            slot: tokio::sync::Mutex::const_new(Weak::new()),
        }
    }

    /// The running server, or a new one from `start`.
    pub async fn get<F, Fut>(&self, start: F) -> Result<Arc<T>, String>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        let mut slot = self.slot.lock().await;
        if let Some(running) = slot.upgrade() {
            return Ok(running);
        }
        let server = Arc::new(start().await?);
        *slot = Arc::downgrade(&server);
        Ok(server)
    }
}

/// An etcd shared by the binary's tests, or `None` (skipped) when etcd is missing.
pub async fn shared_etcd(test: &str) -> Option<Arc<EtcdServer>> {
    static ETCD: Shared<EtcdServer> = Shared::new();
    require(test, ETCD.get(EtcdServer::start).await)
}

/// A ZooKeeper shared by the binary's tests.
pub async fn shared_zk(test: &str) -> Option<Arc<ZkServer>> {
    static ZK: Shared<ZkServer> = Shared::new();
    require(test, ZK.get(|| ZkServer::start(ZkOptions::default())).await)
}

/// An rnacos shared by the binary's tests.
pub async fn shared_nacos(test: &str) -> Option<Arc<Rnacos>> {
    static NACOS: Shared<Rnacos> = Shared::new();
    require(
        test,
        NACOS.get(|| start_rnacos(RnacosOptions::default())).await,
    )
}

/// The etcd URL of `server` under `prefix`, with fast reconnects.
pub fn etcd_url(endpoint: &str, prefix: &str) -> String {
    let hostport = endpoint.trim_start_matches("http://");
    format!("etcd://{hostport}/{prefix}?connect_timeout=3s&request_timeout=3s&max_backoff=500ms")
}

/// The ZooKeeper URL of `addr` under `prefix`, with 2 s sessions.
pub fn zk_url(addr: &str, prefix: &str) -> String {
    format!("zookeeper://{addr}/{prefix}?session_timeout=2s&connect_timeout=10s&max_backoff=1s")
}

/// The Nacos URL of `addr` with its SDK cache under `cache`.
pub fn nacos_url(addr: &str, cache: &std::path::Path) -> String {
    format!(
        "nacos://{addr}?connect_timeout=2s&probe_interval=200ms&cache_dir={}",
        cache.display()
    )
}

/// The mirror `id` of `service` in `registry`.
pub async fn get(registry: &dyn ServiceRegistry, service: &str, id: &str) -> ServiceInfo {
    registry
        .list_instances(service)
        .await
        .expect("list")
        .into_iter()
        .find(|s| s.id == id)
        .unwrap_or_else(|| panic!("{id} not in {service}"))
}
