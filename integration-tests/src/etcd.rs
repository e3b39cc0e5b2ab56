//! etcd fixtures: a single node or a 3-member cluster of Debian's etcd 3.4 on free loopback
//! ports, each member in its own temp dir, ready within a deadline, killed when dropped; plus
//! `etcdctl`, auth setup and test TLS certificates.
//!
//! Install the server with `apt-get install -y --no-install-recommends etcd-server etcd-client`
//! (or point `WAYPOST_ETCD_BIN` / `WAYPOST_ETCDCTL_BIN` at the binaries).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use waypost_core_types::conformance::faults::{self, FaultOptions};
use waypost_core_types::ServiceRegistry;
use waypost_registry_etcd::{EtcdConfig, EtcdRegistry};

use crate::{find_binary, free_ports, wait_until, ServerProcess};

const INSTALL_HINT: &str = "apt-get install -y --no-install-recommends etcd-server etcd-client";

/// How long a member may take to become healthy.
pub const READY_DEADLINE: Duration = Duration::from_secs(20);

/// The `etcd` binary.
///
/// # Errors
/// A message saying how to install it.
pub fn etcd_binary() -> Result<PathBuf, String> {
    find_binary(
        "WAYPOST_ETCD_BIN",
        &["etcd"],
        &["/usr/bin", "/usr/local/bin"],
        INSTALL_HINT,
    )
}

/// The `etcdctl` binary.
///
/// # Errors
/// A message saying how to install it.
pub fn etcdctl_binary() -> Result<PathBuf, String> {
    find_binary(
        "WAYPOST_ETCDCTL_BIN",
        &["etcdctl"],
        &["/usr/bin", "/usr/local/bin"],
        INSTALL_HINT,
    )
}

/// Both binaries, for `require(...)`.
///
/// # Errors
/// As [`etcd_binary`].
pub fn etcd_available() -> Result<(PathBuf, PathBuf), String> {
    Ok((etcd_binary()?, etcdctl_binary()?))
}

/// PEM files of a test PKI: a CA, a server certificate for `localhost`/`127.0.0.1`, and a client
/// certificate.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// The CA certificate.
    pub ca: PathBuf,
    /// The server certificate.
    pub server_cert: PathBuf,
    /// The server key.
    pub server_key: PathBuf,
    /// A client certificate signed by the CA.
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
}

/// Generates a test PKI with rcgen into `dir`.
///
/// # Errors
/// When generating or writing fails.
pub fn generate_pki(dir: &Path) -> Result<TestPki, String> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let e = |e: rcgen::Error| format!("rcgen: {e}");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "waypost test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().map_err(e)?;
    let ca_cert = ca_params.self_signed(&ca_key).map_err(e)?;
    let issuer = Issuer::new(ca_params, &ca_key);

    let mut server =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).map_err(e)?;
    server.distinguished_name.push(DnType::CommonName, "etcd");
    server.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let server_key = KeyPair::generate().map_err(e)?;
    let server_cert = server.signed_by(&server_key, &issuer).map_err(e)?;

    let mut client = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    client
        .distinguished_name
        .push(DnType::CommonName, "waypost");
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_key = KeyPair::generate().map_err(e)?;
    let client_cert = client.signed_by(&client_key, &issuer).map_err(e)?;

    let write = |name: &str, text: String| -> Result<PathBuf, String> {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(|err| format!("write {}: {err}", p.display()))?;
        Ok(p)
    };
    Ok(TestPki {
        ca: write("ca.pem", ca_cert.pem())?,
        server_cert: write("server.pem", server_cert.pem())?,
        server_key: write("server-key.pem", server_key.serialize_pem())?,
        client_cert: write("client.pem", client_cert.pem())?,
        client_key: write("client-key.pem", client_key.serialize_pem())?,
    })
}

/// One etcd member owned by a test.
#[derive(Debug)]
pub struct EtcdServer {
    process: ServerProcess,
    name: String,
    client_port: u16,
    peer_port: u16,
    etcdctl: PathBuf,
    pki: Option<TestPki>,
    /// `--initial-cluster`, for restoring a backup into this member.
    initial_cluster: String,
}

fn member_args(
    name: &str,
    data_dir: &Path,
    client_url: &str,
    peer_port: u16,
    initial_cluster: &str,
) -> Vec<String> {
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    [
        "--name",
        name,
        "--data-dir",
        &data_dir.display().to_string(),
        "--listen-client-urls",
        client_url,
        "--advertise-client-urls",
        client_url,
        "--listen-peer-urls",
        &peer_url,
        "--initial-advertise-peer-urls",
        &peer_url,
        "--initial-cluster",
        initial_cluster,
        "--initial-cluster-state",
        "new",
        "--initial-cluster-token",
        "waypost-test",
        "--heartbeat-interval",
        "10",
        "--election-timeout",
        "100",
        "--logger",
        "zap",
        "--log-level",
        "warn",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

impl EtcdServer {
    /// Starts a single-node etcd and waits until it is healthy.
    ///
    /// # Errors
    /// When the binaries are missing or the server is not healthy within [`READY_DEADLINE`].
    pub async fn start() -> Result<Self, String> {
        Self::start_single(false).await
    }

    /// Starts a single-node etcd serving TLS with a fresh test PKI (client certificates
    /// required).
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub async fn start_tls() -> Result<Self, String> {
        Self::start_single(true).await
    }

    async fn start_single(tls: bool) -> Result<Self, String> {
        let (etcd, etcdctl) = etcd_available()?;
        let ports = free_ports(2);
        let mut process = ServerProcess::prepare("etcd", &etcd);
        let name = "n0".to_owned();
        let pki = if tls {
            Some(generate_pki(process.dir())?)
        } else {
            None
        };
        let scheme = if tls { "https" } else { "http" };
        let client_url = format!("{scheme}://127.0.0.1:{}", ports[0]);
        let initial = format!("{name}=http://127.0.0.1:{}", ports[1]);
        let data = process.dir().join("data");
        let mut args = member_args(&name, &data, &client_url, ports[1], &initial);
        if let Some(p) = &pki {
            for (flag, path) in [
                ("--cert-file", &p.server_cert),
                ("--key-file", &p.server_key),
                ("--trusted-ca-file", &p.ca),
            ] {
                args.push(flag.to_owned());
                args.push(path.display().to_string());
            }
            args.push("--client-cert-auth".to_owned());
        }
        process.args(args);
        let mut server = EtcdServer {
            process,
            name,
            client_port: ports[0],
            peer_port: ports[1],
            etcdctl,
            pki,
            initial_cluster: initial,
        };
        server.process.start()?;
        server.wait_ready(READY_DEADLINE).await?;
        Ok(server)
    }

    /// The client URL (`http://127.0.0.1:PORT` or `https://…`).
    pub fn endpoint(&self) -> String {
        let scheme = if self.pki.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// The client port.
    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// The member name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The test PKI of a TLS server.
    pub fn pki(&self) -> Option<&TestPki> {
        self.pki.as_ref()
    }

    /// Whether the process runs.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// SIGKILL (kill -9), keeping the data dir.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts the killed server again on the same data dir, without waiting.
    ///
    /// # Errors
    /// When it cannot be spawned.
    pub fn start_again(&mut self) -> Result<(), String> {
        self.process.start()
    }

    /// Starts the killed server again on the same data dir and waits until it is healthy.
    ///
    /// # Errors
    /// When it does not become healthy in time.
    pub async fn restart(&mut self) -> Result<(), String> {
        self.process.restart()?;
        self.wait_ready(READY_DEADLINE).await
    }

    /// The member's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.process.dir().join("data")
    }

    /// SIGKILL, delete the data directory, and start again, empty, on the same ports (a wiped
    /// server: same cluster and member ids, revisions from 1). Waits until it is healthy.
    ///
    /// # Errors
    /// When the directory cannot be removed or the server is not healthy in time.
    pub async fn wipe_and_restart(&mut self) -> Result<(), String> {
        self.process.kill();
        let data = self.data_dir();
        std::fs::remove_dir_all(&data).map_err(|e| format!("wipe {}: {e}", data.display()))?;
        self.restart().await
    }

    /// Saves a backup of the member's data to `path` (`etcdctl snapshot save`).
    ///
    /// # Errors
    /// When `etcdctl` fails.
    pub fn snapshot_save(&self, path: &Path) -> Result<(), String> {
        self.etcdctl(&["snapshot", "save", &path.display().to_string()])
            .map(|_| ())
    }

    /// SIGKILL, replace the data directory with the backup at `path` (`etcdctl snapshot
    /// restore`, same name, peer URL and cluster token), and start again on the same ports.
    /// Waits until it is healthy. For a single-node server.
    ///
    /// # Errors
    /// When the restore fails or the server is not healthy in time.
    pub async fn restore_and_restart(&mut self, path: &Path) -> Result<(), String> {
        self.process.kill();
        let data = self.data_dir();
        std::fs::remove_dir_all(&data).map_err(|e| format!("wipe {}: {e}", data.display()))?;
        let peer_url = format!("http://127.0.0.1:{}", self.peer_port);
        let out = Command::new(&self.etcdctl)
            .env("ETCDCTL_API", "3")
            .args(["snapshot", "restore", &path.display().to_string()])
            .arg(format!("--name={}", self.name))
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!("--initial-cluster={}", self.initial_cluster))
            .arg("--initial-cluster-token=waypost-test")
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .output()
            .map_err(|e| format!("run etcdctl: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "etcdctl snapshot restore failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        self.restart().await
    }

    /// The server's current revision (`etcdctl endpoint status`).
    ///
    /// # Errors
    /// When `etcdctl` fails or answers something else than JSON with a revision.
    pub fn revision(&self) -> Result<i64, String> {
        let out = self.etcdctl(&["endpoint", "status", "--write-out=json"])?;
        let v: serde_json::Value =
            serde_json::from_str(&out).map_err(|e| format!("status json: {e}"))?;
        v[0]["Status"]["header"]["revision"]
            .as_i64()
            .ok_or_else(|| format!("no revision in {out}"))
    }

    /// Every key under `prefix` with its value and lease (`etcdctl get --prefix`), sorted by
    /// key.
    ///
    /// # Errors
    /// When `etcdctl` fails or its JSON is not as expected.
    pub fn get_prefix(&self, prefix: &str) -> Result<Vec<StoredKey>, String> {
        let out = self.etcdctl(&["get", prefix, "--prefix", "--write-out=json"])?;
        let v: serde_json::Value =
            serde_json::from_str(&out).map_err(|e| format!("get json: {e}"))?;
        let mut keys = Vec::new();
        for kv in v["kvs"].as_array().map(Vec::as_slice).unwrap_or_default() {
            let text = |field: &str| -> Result<String, String> {
                let raw = kv[field].as_str().unwrap_or_default();
                Ok(String::from_utf8_lossy(&base64_decode(raw)?).into_owned())
            };
            keys.push(StoredKey {
                key: text("key")?,
                value: text("value")?,
                lease: kv["lease"].as_i64().unwrap_or(0),
            });
        }
        keys.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(keys)
    }

    /// The TTL a lease was granted with (`etcdctl lease timetolive`), `None` if etcd does not
    /// know it.
    ///
    /// # Errors
    /// When `etcdctl` fails or its JSON is not as expected.
    pub fn lease_granted_ttl(&self, lease: i64) -> Result<Option<i64>, String> {
        let out = self.etcdctl(&[
            "lease",
            "timetolive",
            &format!("{lease:x}"),
            "--write-out=json",
        ])?;
        let v: serde_json::Value =
            serde_json::from_str(&out).map_err(|e| format!("timetolive json: {e}"))?;
        if v["ttl"].as_i64().unwrap_or(-1) < 0 {
            return Ok(None);
        }
        Ok(v["granted-ttl"].as_i64())
    }

    /// The ids of every lease etcd holds (`etcdctl lease list`).
    ///
    /// # Errors
    /// When `etcdctl` fails.
    pub fn leases(&self) -> Result<Vec<i64>, String> {
        let out = self.etcdctl(&["lease", "list", "--write-out=json"])?;
        let v: serde_json::Value =
            serde_json::from_str(&out).map_err(|e| format!("lease list json: {e}"))?;
        let mut ids: Vec<i64> = v["leases"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|l| l["id"].as_i64())
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// Waits until `etcdctl endpoint health` passes.
    ///
    /// # Errors
    /// With the log tail when the deadline passes.
    pub async fn wait_ready(&mut self, deadline: Duration) -> Result<(), String> {
        let what = format!("etcd {} on {}", self.name, self.endpoint());
        let r = wait_until(&what, deadline, || {
            let ok = self.etcdctl(&["endpoint", "health"]).is_ok();
            async move { ok }
        })
        .await;
        r.map_err(|e| format!("{e}\n--- etcd log ---\n{}", self.process.log_tail(4000)))
    }

    /// Runs `etcdctl` against this member (with the TLS files when it serves TLS) and returns
    /// its stdout.
    ///
    /// # Errors
    /// With stderr when `etcdctl` fails.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String, String> {
        self.etcdctl_as(None, args)
    }

    /// As [`etcdctl`](Self::etcdctl), authenticated as `user:password`.
    ///
    /// # Errors
    /// As [`etcdctl`](Self::etcdctl).
    pub fn etcdctl_as(&self, user: Option<&str>, args: &[&str]) -> Result<String, String> {
        let mut cmd = Command::new(&self.etcdctl);
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint()))
            .arg("--dial-timeout=1s")
            .arg("--command-timeout=3s");
        if let Some(p) = &self.pki {
            cmd.arg(format!("--cacert={}", p.ca.display()))
                .arg(format!("--cert={}", p.client_cert.display()))
                .arg(format!("--key={}", p.client_key.display()));
        }
        if let Some(u) = user {
            cmd.arg(format!("--user={u}"));
        }
        let out = cmd
            .args(args)
            .output()
            .map_err(|e| format!("run etcdctl: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "etcdctl {args:?} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            ))
        }
    }

    /// Creates the `root` user with `password` and turns authentication on.
    ///
    /// # Errors
    /// When an `etcdctl` step fails.
    pub fn enable_auth(&self, password: &str) -> Result<(), String> {
        self.etcdctl(&[
            "user",
            "add",
            &format!("root:{password}"),
            "--interactive=false",
        ])?;
        // 3.4 gives a new `root` user the root role already; granting again is harmless.
        let _ = self.etcdctl(&["user", "grant-role", "root", "root"]);
        self.etcdctl(&["auth", "enable"])?;
        Ok(())
    }

    /// The server's log so far (last `max` bytes).
    pub fn log_tail(&self, max: usize) -> String {
        self.process.log_tail(max)
    }
}

/// One key as `etcdctl get` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    /// The key.
    pub key: String,
    /// The value (lossy UTF-8).
    pub value: String,
    /// The lease it is attached to (0: none).
    pub lease: i64,
}

/// Decodes standard base64 (what `etcdctl --write-out=json` writes keys and values in).
fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| format!("not base64 ({e}): {text:?}"))
}

/// A 3-member (or n-member) loopback cluster.
#[derive(Debug)]
pub struct EtcdCluster {
    /// The members, in start order.
    pub members: Vec<EtcdServer>,
}

impl EtcdCluster {
    /// Starts `n` members and waits until every one is healthy (a leader is elected).
    ///
    /// # Errors
    /// When the binaries are missing or the cluster is not healthy in time.
    pub async fn start(n: usize) -> Result<Self, String> {
        let (etcd, etcdctl) = etcd_available()?;
        let ports = free_ports(2 * n);
        let names: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
        let initial = names
            .iter()
            .enumerate()
            .map(|(i, name)| format!("{name}=http://127.0.0.1:{}", ports[2 * i + 1]))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::with_capacity(n);
        for (i, name) in names.iter().enumerate() {
            let mut process = ServerProcess::prepare(&format!("etcd-{name}"), &etcd);
            let client_url = format!("http://127.0.0.1:{}", ports[2 * i]);
            let data = process.dir().join("data");
            process.args(member_args(
                name,
                &data,
                &client_url,
                ports[2 * i + 1],
                &initial,
            ));
            process.start()?;
            members.push(EtcdServer {
                process,
                name: name.clone(),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                etcdctl: etcdctl.clone(),
                pki: None,
                initial_cluster: initial.clone(),
            });
        }
        for m in &mut members {
            m.wait_ready(READY_DEADLINE).await?;
        }
        Ok(EtcdCluster { members })
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(EtcdServer::endpoint).collect()
    }

    /// The index of the current leader, from `etcdctl endpoint status`.
    ///
    /// # Errors
    /// When no running member reports a leader.
    pub fn leader(&self) -> Result<usize, String> {
        let mut last = String::from("no member answered");
        for m in &self.members {
            match m.etcdctl(&["endpoint", "status", "--write-out=json"]) {
                Ok(out) => {
                    let v: serde_json::Value =
                        serde_json::from_str(&out).map_err(|e| format!("status json: {e}"))?;
                    let status = &v[0]["Status"];
                    let leader = status["leader"].as_u64().unwrap_or(0);
                    let me = status["header"]["member_id"].as_u64().unwrap_or(0);
                    if leader == 0 {
                        last = "no leader yet".into();
                        continue;
                    }
                    if leader == me {
                        return self
                            .members
                            .iter()
                            .position(|x| x.name == m.name)
                            .ok_or_else(|| "member vanished".to_owned());
                    }
                    // Ask the leader itself to learn which of ours it is.
                    for (j, other) in self.members.iter().enumerate() {
                        if let Ok(o) = other.etcdctl(&["endpoint", "status", "--write-out=json"]) {
                            let ov: serde_json::Value =
                                serde_json::from_str(&o).map_err(|e| format!("json: {e}"))?;
                            if ov[0]["Status"]["header"]["member_id"].as_u64() == Some(leader) {
                                return Ok(j);
                            }
                        }
                    }
                }
                Err(e) => last = e,
            }
        }
        Err(format!("no leader found: {last}"))
    }
}

/// The peer port of a member (for diagnostics).
impl EtcdServer {
    /// The peer port.
    pub fn peer_port(&self) -> u16 {
        self.peer_port
    }
}

/// A loopback TCP proxy in front of a server, to cut a client off without touching the server:
/// [`set_open(false)`](TcpProxy::set_open) drops every connection and refuses new ones until it
/// is opened again.
#[derive(Debug)]
pub struct TcpProxy {
    port: u16,
    open: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on a free loopback port and forwards to `127.0.0.1:target`.
    ///
    /// # Errors
    /// When the listener cannot be bound.
    pub async fn start(target: u16) -> Result<Self, String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("bind proxy: {e}"))?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let (tx, _) = tokio::sync::watch::channel(true);
        let open = std::sync::Arc::new(tx);
        let open2 = open.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !*open2.borrow() {
                    drop(inbound);
                    continue;
                }
                let mut gate = open2.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = gate.wait_for(|o| !*o) => {}
                    }
                });
            }
        });
        Ok(TcpProxy { port, open, task })
    }

    /// The proxy's URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Opens or cuts the proxy (cutting drops every open connection).
    pub fn set_open(&self, open: bool) {
        self.open.send_replace(open);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.open.send_replace(false);
    }
}

/// The fault suite's view of an etcd server ([`faults::ServerFixture`]): a single node whose
/// registries share one prefix, and (started on first use) a second node with authentication
/// on, whose `root` user has [`faults::RIGHT_PASSWORD`].
#[derive(Debug)]
pub struct EtcdFixture {
    server: EtcdServer,
    config: EtcdConfig,
    auth: Option<EtcdServer>,
}

impl EtcdFixture {
    /// The TTL of the fixture's registries.
    pub const TTL: Duration = Duration::from_secs(15);

    /// Starts a single-node etcd; registries use `prefix`.
    ///
    /// # Errors
    /// As [`EtcdServer::start`].
    pub async fn start(prefix: &str) -> Result<Self, String> {
        let server = EtcdServer::start().await?;
        let config = EtcdConfig::new([server.endpoint()])
            .with_prefix(prefix)
            .with_ttl(Self::TTL)
            .with_connect_timeout(Duration::from_secs(3))
            .with_max_backoff(Duration::from_millis(500));
        Ok(EtcdFixture {
            server,
            config,
            auth: None,
        })
    }

    /// The server.
    pub fn server(&self) -> &EtcdServer {
        &self.server
    }

    /// The configuration of the fixture's registries.
    pub fn config(&self) -> &EtcdConfig {
        &self.config
    }
}

#[waypost_core_types::async_trait]
impl faults::ServerFixture for EtcdFixture {
    fn options(&self) -> FaultOptions {
        FaultOptions::default()
            .with_connect_bound(Duration::from_secs(1))
            .with_liveness(Self::TTL, Duration::from_secs(5))
            .with_recovery(Duration::from_secs(8))
    }

    async fn connect(&self) -> waypost_core_types::Result<Box<dyn ServiceRegistry>> {
        Ok(Box::new(EtcdRegistry::connect(self.config.clone()).await?))
    }

    async fn connect_unreachable(
        &self,
        port: u16,
    ) -> waypost_core_types::Result<Box<dyn ServiceRegistry>> {
        let cfg = EtcdConfig::new([format!("http://127.0.0.1:{port}")])
            .with_connect_timeout(self.options().connect_bound);
        Ok(Box::new(EtcdRegistry::connect(cfg).await?))
    }

    async fn connect_with_password(
        &mut self,
        password: &str,
    ) -> Option<waypost_core_types::Result<Box<dyn ServiceRegistry>>> {
        if self.auth.is_none() {
            let server = EtcdServer::start().await.expect("start etcd for auth");
            server
                .enable_auth(faults::RIGHT_PASSWORD)
                .expect("enable auth");
            self.auth = Some(server);
        }
        let endpoint = self.auth.as_ref().map(EtcdServer::endpoint)?;
        let cfg = self
            .config
            .clone()
            .with_endpoints([endpoint])
            .with_connect_timeout(self.options().connect_bound)
            .with_credentials("root", password);
        Some(
            EtcdRegistry::connect(cfg)
                .await
                .map(|r| Box::new(r) as Box<dyn ServiceRegistry>),
        )
    }

    async fn kill(&mut self) {
        self.server.kill();
    }

    async fn restart(&mut self) {
        self.server.restart().await.expect("restart etcd");
    }

    async fn freeze(&mut self) {
        self.server.process.signal("STOP").expect("SIGSTOP etcd");
    }

    async fn thaw(&mut self) {
        self.server.process.signal("CONT").expect("SIGCONT etcd");
    }
}

#[cfg(test)]
mod tests {
    use super::base64_decode;

    #[test]
    fn base64_as_etcdctl_writes_it() {
        assert_eq!(base64_decode("L3Avcy9h").unwrap(), b"/p/s/a");
        assert_eq!(base64_decode("eA==").unwrap(), b"x");
        assert_eq!(base64_decode("eHk=").unwrap(), b"xy");
        assert_eq!(base64_decode("").unwrap(), b"");
        assert!(base64_decode("*").is_err());
    }
}
