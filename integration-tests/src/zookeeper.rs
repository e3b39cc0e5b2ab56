//! ZooKeeper fixture: a standalone ZooKeeper 3.6+ (Debian's `zookeeper` package, or a release
//! tarball via `ZOOKEEPER_HOME`) started per test on a free loopback port with its own data dir,
//! ready when `srvr` answers `Mode: standalone`, stopped at the end.
//!
//! Install it with `apt-get install -y --no-install-recommends zookeeper` (Java 17 is needed).
//! Overrides: `WAYPOST_JAVA` (the `java` binary), `WAYPOST_ZOOKEEPER_CLASSPATH` (the whole
//! class path), `ZOOKEEPER_HOME` (an unpacked release: `lib/*.jar`, `bin/zkCli.sh`),
//! `WAYPOST_ZKCLI` (`zkCli.sh`).
//!
//! The server runs with `tickTime=200` and `minSessionTimeout=400`, so tests can use 2 s sessions
//! (the maximum is 20 ticks = 4 s), the admin server off and only `srvr`, `ruok` and `dump`
//! allowed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use waypost_core_types::conformance::faults::{self, FaultOptions};
use waypost_core_types::ServiceRegistry;
use waypost_registry_zookeeper::{ZookeeperConfig, ZookeeperRegistry};

use crate::{find_binary, free_port, ServerProcess};

/// How to install the server, for skip messages.
pub const INSTALL_HINT: &str = "apt-get install -y --no-install-recommends zookeeper";

const DEBIAN_JAR: &str = "/usr/share/java/zookeeper.jar";
const DEBIAN_CONF: &str = "/etc/zookeeper/conf";
const DEBIAN_ZKCLI: &str = "/usr/share/zookeeper/bin/zkCli.sh";

/// Jars the Debian `zookeeper.jar` manifest already names; listed again in case a distribution
/// ships a jar without that manifest. Missing ones are left out.
const DEBIAN_DEPENDENCIES: &[&str] = &[
    "zookeeper-jute",
    "slf4j-api",
    "netty-buffer",
    "netty-codec",
    "netty-common",
    "netty-handler",
    "netty-resolver",
    "netty-transport",
    "netty-transport-native-epoll",
    "netty-transport-native-unix-common",
    "metrics-core",
    "commons-cli",
    "commons-io",
    "snappy-java",
    "jline",
];

/// `java`: `WAYPOST_JAVA`, `$JAVA_HOME/bin/java`, or `PATH`.
///
/// # Errors
/// A message saying how to install it.
pub fn find_java() -> Result<PathBuf, String> {
    if std::env::var_os("WAYPOST_JAVA").is_none() {
        if let Some(home) = std::env::var_os("JAVA_HOME") {
            let java = Path::new(&home).join("bin/java");
            if java.is_file() {
                return Ok(java);
            }
        }
    }
    find_binary(
        "WAYPOST_JAVA",
        &["java"],
        &["/usr/bin"],
        "apt-get install -y --no-install-recommends openjdk-17-jre-headless",
    )
}

/// The class path for `ZooKeeperServerMain`.
///
/// # Errors
/// A message saying how to install ZooKeeper.
pub fn server_classpath() -> Result<String, String> {
    if let Ok(cp) = std::env::var("WAYPOST_ZOOKEEPER_CLASSPATH") {
        return Ok(cp);
    }
    let mut parts: Vec<String> = Vec::new();
    if let Some(home) = std::env::var_os("ZOOKEEPER_HOME") {
        let home = PathBuf::from(home);
        let lib = home.join("lib");
        let mut jars: Vec<PathBuf> = std::fs::read_dir(&lib)
            .map_err(|e| format!("ZOOKEEPER_HOME: cannot read {}: {e}", lib.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "jar"))
            .collect();
        // A release tarball has the server jar at the top level in older versions.
        if let Ok(top) = std::fs::read_dir(&home) {
            jars.extend(
                top.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "jar")),
            );
        }
        if jars.is_empty() {
            return Err(format!("ZOOKEEPER_HOME={} holds no jars", home.display()));
        }
        jars.sort();
        parts.push(home.join("conf").display().to_string());
        parts.extend(jars.iter().map(|p| p.display().to_string()));
        return Ok(parts.join(":"));
    }
    if !Path::new(DEBIAN_JAR).is_file() {
        return Err(format!(
            "ZooKeeper not found ({DEBIAN_JAR} missing; or set ZOOKEEPER_HOME); install it with: \
             {INSTALL_HINT}"
        ));
    }
    if Path::new(DEBIAN_CONF).is_dir() {
        parts.push(DEBIAN_CONF.to_owned());
    }
    parts.push(DEBIAN_JAR.to_owned());
    for name in DEBIAN_DEPENDENCIES {
        let jar = format!("/usr/share/java/{name}.jar");
        if Path::new(&jar).is_file() {
            parts.push(jar);
        }
    }
    // A logging backend, so the server log says what happened (optional).
    let simple = "/usr/share/java/slf4j-simple.jar";
    if Path::new(simple).is_file() {
        parts.push(simple.to_owned());
    }
    Ok(parts.join(":"))
}

/// `zkCli.sh`: `WAYPOST_ZKCLI`, `$ZOOKEEPER_HOME/bin`, Debian's path, or `PATH`.
///
/// # Errors
/// A message saying how to install it.
pub fn find_zkcli() -> Result<PathBuf, String> {
    let mut dirs = vec!["/usr/share/zookeeper/bin".to_owned()];
    if let Some(home) = std::env::var_os("ZOOKEEPER_HOME") {
        dirs.insert(0, Path::new(&home).join("bin").display().to_string());
    }
    let dirs: Vec<&str> = dirs.iter().map(String::as_str).collect();
    if std::env::var_os("WAYPOST_ZKCLI").is_none() && Path::new(DEBIAN_ZKCLI).is_file() {
        return Ok(PathBuf::from(DEBIAN_ZKCLI));
    }
    find_binary(
        "WAYPOST_ZKCLI",
        &["zkCli.sh", "zookeeper-client"],
        &dirs,
        INSTALL_HINT,
    )
}

/// Options of a started server.
#[derive(Debug, Clone)]
pub struct ZkOptions {
    /// fsync every transaction (ZooKeeper's default). Off makes tests faster on a busy disk.
    pub fsync: bool,
    /// How long to wait for `Mode: standalone`.
    pub ready_timeout: Duration,
}

impl Default for ZkOptions {
    fn default() -> Self {
        ZkOptions {
            fsync: false,
            ready_timeout: Duration::from_secs(40),
        }
    }
}

/// A running standalone ZooKeeper.
#[derive(Debug)]
pub struct ZkServer {
    /// The process (for kill -9, SIGSTOP/SIGCONT and restart).
    pub process: ServerProcess,
    /// The client port on 127.0.0.1.
    pub port: u16,
    ready_timeout: Duration,
}

impl ZkServer {
    /// Finds Java and ZooKeeper, writes `zoo.cfg` into a fresh temp dir and starts the server
    /// on a free port; waits until it is ready.
    ///
    /// # Errors
    /// When Java or ZooKeeper is missing (say how to install them), or the server does not get
    /// ready (with the end of its log).
    pub async fn start(opts: ZkOptions) -> Result<ZkServer, String> {
        let java = find_java()?;
        let classpath = server_classpath()?;
        // A free port can be taken by someone else before the JVM binds it: try another one
        // when the server exits early.
        let mut last_error = String::new();
        for _ in 0..3 {
            let mut server = Self::spawn(&java, &classpath, &opts)?;
            match server.wait_ready().await {
                Ok(()) => return Ok(server),
                Err(e) if !server.process.is_running() => last_error = e,
                Err(e) => return Err(e),
            }
        }
        Err(last_error)
    }

    fn spawn(java: &Path, classpath: &str, opts: &ZkOptions) -> Result<ZkServer, String> {
        let port = free_port();
        let mut process = ServerProcess::prepare("zookeeper", java);
        let data = process.dir().join("data");
        std::fs::create_dir_all(&data).map_err(|e| format!("create {}: {e}", data.display()))?;
        let cfg = process.dir().join("zoo.cfg");
        let text = format!(
            "tickTime=200\n\
             minSessionTimeout=400\n\
             initLimit=10\n\
             syncLimit=5\n\
             dataDir={}\n\
             clientPortAddress=127.0.0.1\n\
             clientPort={port}\n\
             maxClientCnxns=0\n\
             admin.enableServer=false\n\
             4lw.commands.whitelist=srvr,ruok,dump,wchp\n\
             forceSync={}\n",
            data.display(),
            if opts.fsync { "yes" } else { "no" },
        );
        std::fs::write(&cfg, text).map_err(|e| format!("write {}: {e}", cfg.display()))?;
        process.args([
            "-Xms32m".to_owned(),
            "-Xmx256m".to_owned(),
            "-XX:+UseSerialGC".to_owned(),
            "-XX:TieredStopAtLevel=1".to_owned(),
            "-Dzookeeper.admin.enableServer=false".to_owned(),
            "-cp".to_owned(),
            classpath.to_owned(),
            "org.apache.zookeeper.server.ZooKeeperServerMain".to_owned(),
            cfg.display().to_string(),
        ]);
        process.start()?;
        Ok(ZkServer {
            process,
            port,
            ready_timeout: opts.ready_timeout,
        })
    }

    /// `127.0.0.1:<port>`, for `ZookeeperConfig::servers`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Waits until `srvr` answers `Mode: standalone` (`ruok` answers before the server serves).
    ///
    /// # Errors
    /// A message with the end of the server log.
    pub async fn wait_ready(&mut self) -> Result<(), String> {
        let start = Instant::now();
        loop {
            if srvr(self.port)
                .await
                .is_some_and(|s| s.contains("Mode: standalone"))
            {
                return Ok(());
            }
            if !self.process.is_running() {
                return Err(format!(
                    "zookeeper exited before it was ready:\n{}",
                    self.process.log_tail(3000)
                ));
            }
            if start.elapsed() >= self.ready_timeout {
                return Err(format!(
                    "zookeeper not ready within {:?}:\n{}",
                    self.ready_timeout,
                    self.process.log_tail(3000)
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing is answered.
    ///
    /// # Errors
    /// When the signal cannot be sent.
    pub fn pause(&self) -> Result<(), String> {
        self.process.signal("STOP")
    }

    /// Resumes a frozen server (SIGCONT).
    ///
    /// # Errors
    /// When the signal cannot be sent.
    pub fn resume(&self) -> Result<(), String> {
        self.process.signal("CONT")
    }

    /// Kills the server with SIGKILL (its data dir stays).
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts the server again on the same port and data dir and waits until it is ready.
    ///
    /// # Errors
    /// When it cannot be started or does not get ready.
    pub async fn restart(&mut self) -> Result<(), String> {
        self.process.restart()?;
        self.wait_ready().await
    }

    /// Runs `zkCli.sh -server <addr> <args…>` and returns its output (stdout and stderr).
    ///
    /// # Errors
    /// When `zkCli.sh` is missing, fails, or takes longer than 60 s.
    pub async fn zkcli(&self, args: &[&str]) -> Result<String, String> {
        let cli = find_zkcli()?;
        let started = Instant::now();
        let mut cmd = tokio::process::Command::new(&cli);
        cmd.arg("-server")
            .arg(self.addr())
            .args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .env(
                "JVMFLAGS",
                "-Xmx128m -XX:+UseSerialGC -XX:TieredStopAtLevel=1",
            );
        let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
            .await
            .map_err(|_| format!("zkCli.sh {args:?} timed out"))?
            .map_err(|e| format!("run {}: {e}", cli.display()))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            return Err(format!(
                "zkCli.sh {args:?} failed ({}):\n{text}",
                out.status
            ));
        }
        if std::env::var_os("WAYPOST_TEST_VERBOSE").is_some() {
            eprintln!("zkCli.sh {args:?} took {:?}", started.elapsed());
        }
        Ok(text)
    }
}

/// Sends a four-letter word to `127.0.0.1:port` and returns the answer (`None` when nothing
/// answers within a second).
pub async fn four_letter_word(port: u16, word: &str) -> Option<String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        stream.write_all(word.as_bytes()).await.ok()?;
        let mut out = String::new();
        stream.read_to_string(&mut out).await.ok()?;
        Some(out)
    };
    tokio::time::timeout(Duration::from_secs(1), exchange)
        .await
        .ok()
        .flatten()
}

/// The answer to `srvr` (server status, including `Mode:`).
pub async fn srvr(port: u16) -> Option<String> {
    four_letter_word(port, "srvr").await
}

/// The answer to `dump`: the sessions and the ephemeral nodes each one holds.
pub async fn dump(port: u16) -> Option<String> {
    four_letter_word(port, "dump").await
}

/// The answer to `wchp`: every watched path and the sessions watching it.
pub async fn wchp(port: u16) -> Option<String> {
    four_letter_word(port, "wchp").await
}

/// The paths `wchp` lists as watched by a session (its id as the client reports it).
pub fn watched_by(wchp: &str, session: i64) -> Vec<String> {
    let id = format!("0x{:x}", session as u64);
    let mut out = Vec::new();
    let mut path = None;
    for line in wchp.lines() {
        let line = line.trim();
        if line.starts_with('/') {
            path = Some(line);
        } else if line == id {
            if let Some(p) = path {
                out.push(p.to_owned());
            }
        }
    }
    out.sort();
    out
}

/// The ephemeral paths `dump` lists for a session (its id as the client reports it).
pub fn ephemerals_of(dump: &str, session: i64) -> Vec<String> {
    let header = format!("0x{:x}:", session as u64);
    let mut out = Vec::new();
    let mut inside = false;
    for line in dump.lines() {
        if line.starts_with("Sessions with Ephemerals") {
            inside = false;
            continue;
        }
        if line.starts_with("Connections") {
            break;
        }
        if line.starts_with("0x") {
            inside = line.trim() == header;
            continue;
        }
        if inside && line.starts_with('\t') {
            out.push(line.trim().to_owned());
        }
    }
    out
}

/// A TCP proxy in front of a server that can swallow everything the server sends while still
/// forwarding what the client sends: the client hears nothing (and eventually declares its session
/// expired) while the server keeps seeing the session's reconnect attempts (and keeps it alive).
#[derive(Debug)]
pub struct MuteProxy {
    port: u16,
    muted: std::sync::Arc<std::sync::atomic::AtomicBool>,
    connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl MuteProxy {
    /// Starts a proxy on a free loopback port forwarding to `127.0.0.1:upstream`.
    ///
    /// # Errors
    /// When no port can be bound.
    pub async fn start(upstream: u16) -> std::io::Result<MuteProxy> {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};

        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let port = listener.local_addr()?.port();
        let muted = Arc::new(AtomicBool::new(false));
        let connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (m, c) = (Arc::clone(&muted), Arc::clone(&connections));
        let accept = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                let muted = Arc::clone(&m);
                let task = tokio::spawn(async move {
                    let Ok(outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    else {
                        return;
                    };
                    let (mut client_read, mut client_write) = inbound.into_split();
                    let (mut server_read, mut server_write) = outbound.into_split();
                    let up = tokio::io::copy(&mut client_read, &mut server_write);
                    let down = async {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = server_read.read(&mut buf).await?;
                            if n == 0 {
                                return Ok::<(), std::io::Error>(());
                            }
                            if !muted.load(Ordering::Acquire) {
                                client_write.write_all(&buf[..n]).await?;
                            }
                        }
                    };
                    tokio::select! {
                        _ = up => {}
                        _ = down => {}
                    }
                });
                let mut list = c.lock().unwrap_or_else(|e| e.into_inner());
                list.retain(|h| !h.is_finished());
                list.push(task.abort_handle());
            }
        });
        Ok(MuteProxy {
            port,
            muted,
            connections,
            accept,
        })
    }

    /// `127.0.0.1:<port>` of the proxy.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Swallows (`true`) or forwards (`false`) what the server sends.
    pub fn set_muted(&self, muted: bool) {
        self.muted
            .store(muted, std::sync::atomic::Ordering::Release);
    }

    /// Closes every proxied connection (new ones are accepted as usual).
    pub fn drop_connections(&self) {
        let list = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        for handle in list.iter() {
            handle.abort();
        }
    }
}

impl Drop for MuteProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.drop_connections();
    }
}

/// The fault suite's view of a ZooKeeper server ([`faults::ServerFixture`]): registries with
/// 2 s sessions under one prefix; authenticated ones (digest user `alice`) under a prefix of
/// their own, which the first of them creates with its ACL.
#[derive(Debug)]
pub struct ZkFixture {
    /// The server.
    pub server: ZkServer,
    prefix: String,
}

impl ZkFixture {
    /// The session timeout of the fixture's registries.
    pub const SESSION: Duration = Duration::from_secs(2);

    /// Starts a server; registries use `prefix`.
    ///
    /// # Errors
    /// As [`ZkServer::start`].
    pub async fn start(prefix: &str) -> Result<Self, String> {
        Ok(ZkFixture {
            server: ZkServer::start(ZkOptions::default()).await?,
            prefix: prefix.to_owned(),
        })
    }

    /// The configuration of the fixture's registries.
    pub fn config(&self) -> ZookeeperConfig {
        ZookeeperConfig::new([self.server.addr()])
            .with_prefix(self.prefix.as_str())
            .with_session_timeout(Self::SESSION)
            .with_connect_timeout(Duration::from_secs(10))
            .with_max_backoff(Duration::from_secs(1))
    }
}

#[waypost_core_types::async_trait]
impl faults::ServerFixture for ZkFixture {
    fn options(&self) -> FaultOptions {
        FaultOptions::default()
            .with_connect_bound(Duration::from_secs(2))
            .with_liveness(Self::SESSION, Self::SESSION / 2)
            .with_recovery(Duration::from_secs(15))
            .with_reconnected_snapshot(true)
    }

    async fn connect(&self) -> waypost_core_types::Result<Box<dyn ServiceRegistry>> {
        Ok(Box::new(ZookeeperRegistry::connect(self.config()).await?))
    }

    async fn connect_unreachable(
        &self,
        port: u16,
    ) -> waypost_core_types::Result<Box<dyn ServiceRegistry>> {
        let cfg = ZookeeperConfig::new([format!("127.0.0.1:{port}")])
            .with_session_timeout(Self::SESSION)
            .with_connect_timeout(self.options().connect_bound);
        Ok(Box::new(ZookeeperRegistry::connect(cfg).await?))
    }

    async fn connect_with_password(
        &mut self,
        password: &str,
    ) -> Option<waypost_core_types::Result<Box<dyn ServiceRegistry>>> {
        // The first registry creates the missing parents of its prefix with its own ACL (world
        // may only read): let an anonymous one create the shared parents first.
        match self.connect().await {
            Ok(anonymous) => {
                let _ = anonymous.close().await;
            }
            Err(e) => return Some(Err(e)),
        }
        let cfg = self
            .config()
            .with_prefix(format!("{}-acl", self.prefix))
            .with_connect_timeout(self.options().connect_bound)
            .with_digest_auth("alice", password);
        Some(
            ZookeeperRegistry::connect(cfg)
                .await
                .map(|r| Box::new(r) as Box<dyn ServiceRegistry>),
        )
    }

    async fn kill(&mut self) {
        self.server.kill();
    }

    async fn restart(&mut self) {
        self.server.restart().await.expect("restart ZooKeeper");
    }

    async fn freeze(&mut self) {
        self.server.pause().expect("SIGSTOP ZooKeeper");
    }

    async fn thaw(&mut self) {
        self.server.resume().expect("SIGCONT ZooKeeper");
    }
}
