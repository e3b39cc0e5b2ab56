//! rnacos fixture: a Nacos-compatible server (rnacos, from crates.io; not Alibaba's Java Nacos)
//! started per test on free loopback ports, with its own data dir, and stopped at the end.
//!
//! Install it with `cargo install rnacos --locked` (or point `RNACOS_BIN` at the binary). When
//! `NACOS_ADDR` is set (`host:port` of a running Nacos, e.g. the `docker-compose.yml` service),
//! the tests that do not need to control the server run against that server instead.
//!
//! rnacos listens on three ports: HTTP (`RNACOS_HTTP_PORT`), gRPC (HTTP + 1000, used by the SDK)
//! and the console (HTTP + 2000). `RNACOS_SDK_HOST=127.0.0.1` keeps it on loopback (it binds
//! `0.0.0.0` otherwise).

use std::path::PathBuf;
use std::time::Duration;

use waypost_core_types::conformance::faults::{self, FaultOptions};
use waypost_core_types::ServiceRegistry;
use waypost_registry_nacos::{NacosConfig, NacosRegistry};

use crate::{find_binary, port_open, wait_until, ServerProcess};

/// How to install the server, for skip messages.
pub const INSTALL_HINT: &str = "cargo install rnacos --locked";

/// Where the rnacos binary is (`RNACOS_BIN`, `PATH`, `~/.cargo/bin`).
///
/// # Errors
/// A message saying how to install it.
pub fn find_rnacos() -> Result<PathBuf, String> {
    find_binary("RNACOS_BIN", &["rnacos"], &[], INSTALL_HINT)
}

/// `NACOS_ADDR`, when the tests should use an external Nacos server.
pub fn external_addr() -> Option<String> {
    std::env::var("NACOS_ADDR")
        .ok()
        .filter(|a| !a.trim().is_empty())
}

/// Options of a started rnacos.
#[derive(Debug, Clone, Default)]
pub struct RnacosOptions {
    /// `Some((user, password))`: open-API authentication on, with this admin user.
    pub auth: Option<(String, String)>,
}

/// A running rnacos.
#[derive(Debug)]
pub struct Rnacos {
    /// The process (for restart and fault injection).
    pub process: ServerProcess,
    /// HTTP port (what clients are configured with).
    pub http_port: u16,
}

impl Rnacos {
    /// `127.0.0.1:<http port>`, the `server_addr` for clients.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.http_port)
    }

    /// The gRPC port (HTTP + 1000).
    pub fn grpc_port(&self) -> u16 {
        self.http_port + 1000
    }

    /// Waits until both the HTTP and the gRPC port accept connections.
    ///
    /// # Errors
    /// A message with the end of the server log.
    pub async fn wait_ready(&mut self) -> Result<(), String> {
        let (http, grpc) = (self.http_port, self.grpc_port());
        let ready = wait_until("rnacos", Duration::from_secs(20), || async move {
            port_open(http).await && port_open(grpc).await
        })
        .await;
        match ready {
            Ok(()) if self.process.is_running() => Ok(()),
            Ok(()) => Err(format!("rnacos exited:\n{}", self.process.log_tail(2000))),
            Err(e) => Err(format!("{e}\n{}", self.process.log_tail(2000))),
        }
    }

    /// Kills the server (SIGKILL) and starts it again on the same ports and data dir.
    ///
    /// # Errors
    /// When it cannot be started or does not become ready.
    pub async fn restart(&mut self) -> Result<(), String> {
        self.process.restart()?;
        self.wait_ready().await
    }
}

/// The HTTP status of a login at rnacos' `/nacos/v1/auth/login` (a bare HTTP/1.0 request, so
/// the fixture needs no HTTP client).
pub async fn login_status(http_port: u16, user: &str, password: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = format!("username={user}&password={password}");
    let req = format!(
        "POST /nacos/v1/auth/login HTTP/1.0\r\nHost: 127.0.0.1\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", http_port))
        .await
        .ok()?;
    stream.write_all(req.as_bytes()).await.ok()?;
    let mut resp = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut resp))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&resp);
    text.split_whitespace().nth(1)?.parse().ok()
}

/// How many clients subscribe to `service` (group `DEFAULT_GROUP`, namespace `public`), from
/// rnacos' `/nacos/v1/ns/service/subscribers` (a bare HTTP/1.0 request).
pub async fn subscriber_count(http_port: u16, service: &str) -> Option<usize> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let req = format!(
        "GET /nacos/v1/ns/service/subscribers?serviceName={service}&groupName=DEFAULT_GROUP \
         HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
    );
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", http_port))
        .await
        .ok()?;
    stream.write_all(req.as_bytes()).await.ok()?;
    let mut resp = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut resp))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&resp);
    let (_, body) = text.split_once("\r\n\r\n")?;
    let json: serde_json::Value = serde_json::from_str(body).ok()?;
    json.get("count")?.as_u64().map(|c| c as usize)
}

/// Picks an HTTP port whose +1000 and +2000 neighbours are free too.
fn rnacos_ports() -> u16 {
    loop {
        let p = crate::free_port();
        if p > 60_000 {
            continue;
        }
        let free = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
        if free(p + 1000) && free(p + 2000) {
            return p;
        }
    }
}

/// Starts rnacos on free loopback ports with its own data dir.
///
/// # Errors
/// When the binary is missing or the server does not become ready.
pub async fn start_rnacos(opts: RnacosOptions) -> Result<Rnacos, String> {
    let bin = find_rnacos()?;
    let mut last = String::new();
    for _attempt in 0..3 {
        let http_port = rnacos_ports();
        let mut process = ServerProcess::prepare("rnacos", &bin);
        let data = process.dir().join("data");
        std::fs::create_dir_all(&data).map_err(|e| format!("data dir: {e}"))?;
        let data = data.to_string_lossy().into_owned();
        process
            .env("RNACOS_HTTP_PORT", &http_port.to_string())
            .env("RNACOS_SDK_HOST", "127.0.0.1")
            .env("RNACOS_CONSOLE_HOST", "127.0.0.1")
            .env("RNACOS_DATA_DIR", &data)
            .env("RNACOS_CONFIG_DB_DIR", &data)
            .env("RNACOS_HTTP_WORKERS", "2")
            .env("RNACOS_ENABLE_METRICS", "false")
            .env("RNACOS_API_LOGIN_ONE_MINUTE_LIMIT", "10000")
            // Otherwise rnacos pins the first metadata ever registered at an ip:port and ignores
            // later metadata from SDK clients (updates, and a new instance at the same address).
            .env(
                "RNACOS_NAMING_INSTANCE_METADATA_PERSISTENCE_ENABLE",
                "false",
            )
            .env(
                "RUST_LOG",
                &std::env::var("WAYPOST_RNACOS_LOG").unwrap_or_else(|_| "warn".into()),
            );
        match &opts.auth {
            Some((user, pass)) => {
                process
                    .env("RNACOS_ENABLE_OPEN_API_AUTH", "true")
                    .env("RNACOS_INIT_ADMIN_USERNAME", user)
                    .env("RNACOS_INIT_ADMIN_PASSWORD", pass);
            }
            None => {
                process.env("RNACOS_ENABLE_OPEN_API_AUTH", "false");
            }
        }
        process.start()?;
        let mut server = Rnacos { process, http_port };
        match server.wait_ready().await {
            Ok(()) => {}
            Err(e) => {
                last = e; // a port race: try other ports
                continue;
            }
        }
        if let Some((user, pass)) = &opts.auth {
            // rnacos creates its admin user a moment after it starts listening.
            let (u, p) = (user.clone(), pass.clone());
            wait_until("rnacos admin user", Duration::from_secs(20), || {
                let (u, p) = (u.clone(), p.clone());
                async move { login_status(http_port, &u, &p).await == Some(200) }
            })
            .await
            .map_err(|e| format!("{e}\n{}", server.process.log_tail(2000)))?;
        }
        return Ok(server);
    }
    Err(last)
}

/// The server a test should use: `NACOS_ADDR` if set, else a fresh rnacos. The `Rnacos` (if
/// any) must be kept alive for the test's duration.
///
/// # Errors
/// As [`start_rnacos`].
pub async fn nacos_target() -> Result<(String, Option<Rnacos>), String> {
    if let Some(addr) = external_addr() {
        return Ok((addr, None));
    }
    let server = start_rnacos(RnacosOptions::default()).await?;
    Ok((server.addr(), Some(server)))
}

/// The fault suite's view of rnacos ([`faults::ServerFixture`]): registries with a fast probe
/// on one server; authentication is checked on a second rnacos (started on first use) whose
/// admin user [`NacosFixture::USER`] has [`faults::RIGHT_PASSWORD`].
#[derive(Debug)]
pub struct NacosFixture {
    /// The server.
    pub server: Rnacos,
    /// The server with authentication on, once started.
    pub auth: Option<Rnacos>,
    cache_dir: PathBuf,
}

impl NacosFixture {
    /// The admin user of the authenticating server.
    pub const USER: &'static str = "waypost-admin";

    /// Starts rnacos; the SDK keeps its cache under `cache_dir`.
    ///
    /// # Errors
    /// As [`start_rnacos`].
    pub async fn start(cache_dir: PathBuf) -> Result<Self, String> {
        Ok(NacosFixture {
            server: start_rnacos(RnacosOptions::default()).await?,
            auth: None,
            cache_dir,
        })
    }

    /// The configuration of the fixture's registries against `addr`. The connect timeout also
    /// bounds each liveness probe, so it decides how soon a dead server shows as `Recovering`.
    pub fn config(&self, addr: &str) -> NacosConfig {
        NacosConfig::new(addr)
            .with_connect_timeout(Duration::from_millis(1500))
            .with_probe_interval(Duration::from_millis(200))
            .with_cache_dir(self.cache_dir.clone())
    }
}

#[waypost_core_types::async_trait]
impl faults::ServerFixture for NacosFixture {
    fn options(&self) -> FaultOptions {
        // rnacos drops an instance whose connection is gone when its connection check fails;
        // the SDK's client gives up on a silent server after about 15 s.
        FaultOptions::default()
            .with_connect_bound(Duration::from_millis(1500))
            .with_outage_detect(Duration::from_secs(10))
            .with_recovery(Duration::from_secs(30))
            .with_liveness(Duration::from_secs(15), Duration::from_secs(5))
            .with_event_timeout(Duration::from_secs(15))
            .with_reconnected_snapshot(true)
    }

    async fn connect(&self) -> waypost_core_types::Result<Box<dyn ServiceRegistry>> {
        let cfg = self.config(&self.server.addr());
        Ok(Box::new(NacosRegistry::connect(cfg).await?))
    }

    async fn connect_unreachable(
        &self,
        port: u16,
    ) -> waypost_core_types::Result<Box<dyn ServiceRegistry>> {
        let cfg = self
            .config(&format!("127.0.0.1:{port}"))
            .with_connect_timeout(self.options().connect_bound);
        Ok(Box::new(NacosRegistry::connect(cfg).await?))
    }

    async fn connect_with_password(
        &mut self,
        password: &str,
    ) -> Option<waypost_core_types::Result<Box<dyn ServiceRegistry>>> {
        if self.auth.is_none() {
            let opts = RnacosOptions {
                auth: Some((Self::USER.into(), faults::RIGHT_PASSWORD.into())),
            };
            self.auth = Some(start_rnacos(opts).await.expect("start rnacos with auth"));
        }
        let addr = self.auth.as_ref().map(Rnacos::addr)?;
        let cfg = self
            .config(&addr)
            .with_connect_timeout(self.options().connect_bound)
            .with_credentials(Self::USER, password);
        Some(
            NacosRegistry::connect(cfg)
                .await
                .map(|r| Box::new(r) as Box<dyn ServiceRegistry>),
        )
    }

    async fn kill(&mut self) {
        self.server.process.kill();
    }

    async fn restart(&mut self) {
        self.server.restart().await.expect("restart rnacos");
    }

    async fn freeze(&mut self) {
        self.server.process.signal("STOP").expect("SIGSTOP rnacos");
    }

    async fn thaw(&mut self) {
        self.server.process.signal("CONT").expect("SIGCONT rnacos");
    }
}
