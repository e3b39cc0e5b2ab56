//! The built `waypost` binary against real servers (etcd, ZooKeeper, rnacos) and the fake
//! Consul agent, and on its own (help, completions, man page, bad input).
//!
//! Each server is started once in this test binary: one test per backend runs every subcommand
//! against it, with service names of its own, and stops the server when it ends. With `CI=true`
//! a server that cannot be started fails the test (`waypost_integration_tests::require`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command as StdCommand, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use assert_cmd::Command;
use serde_json::Value;
use waypost_integration_tests::etcd::EtcdServer;
use waypost_integration_tests::nacos::{start_rnacos, RnacosOptions};
use waypost_integration_tests::zookeeper::{ZkOptions, ZkServer};
use waypost_integration_tests::{free_port, require};
use waypost_registry_consul::fake::{FakeConsul, FakeOptions};

// ---------------------------------------------------------------------------------------------
// Running the binary
// ---------------------------------------------------------------------------------------------

/// What one run of the binary gave.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
            .collect()
    }

    /// The one-line error contract: exactly one line, prefixed, no panic, no backtrace.
    fn assert_one_line_error(&self) {
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line on stderr: {self:?}");
        assert!(lines[0].starts_with("waypost: error: "), "{self:?}");
        assert!(
            !self.stderr.contains("panicked") && !self.stderr.contains("RUST_BACKTRACE"),
            "{self:?}"
        );
    }
}

/// Runs `waypost ARGS` (against `url` when given) to completion.
fn waypost(url: Option<&str>, args: &[&str]) -> Run {
    let mut cmd = Command::cargo_bin("waypost").expect("the waypost binary");
    cmd.env_remove("WAYPOST_REGISTRY").env("NO_COLOR", "1");
    if let Some(url) = url {
        cmd.arg("--registry").arg(url);
    }
    cmd.args(args).timeout(Duration::from_secs(60));
    let out = cmd.output().expect("run waypost");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A `waypost` child whose stdout is read line by line (through a pipe, as a script would).
struct Spawned {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Arc<shared_text::Text>,
}

/// A tiny shared text buffer (the stderr of a child, collected by a thread).
mod shared_text {
    use std::sync::Mutex;

    #[derive(Default)]
    pub struct Text(Mutex<String>);

    impl Text {
        pub fn push(&self, s: &str) {
            if let Ok(mut t) = self.0.lock() {
                t.push_str(s);
            }
        }

        pub fn get(&self) -> String {
            self.0.lock().map(|t| t.clone()).unwrap_or_default()
        }
    }
}

impl Spawned {
    fn start(url: &str, args: &[&str]) -> Spawned {
        let bin = assert_cmd::cargo::cargo_bin("waypost");
        let mut child = StdCommand::new(bin)
            .env_remove("WAYPOST_REGISTRY")
            .env("NO_COLOR", "1")
            .arg("--registry")
            .arg(url)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn waypost");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(shared_text::Text::default());
        let mut err_pipe = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.push(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Spawned {
            child,
            lines,
            stderr,
        }
    }

    /// The next stdout line that satisfies `want`, within `deadline`.
    fn line_where(&mut self, deadline: Duration, want: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + deadline;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if want(&line) => return line,
                Ok(_) => {}
                Err(e) => panic!(
                    "no matching line within {deadline:?} ({e}); stderr: {}",
                    self.stderr.get()
                ),
            }
        }
    }

    /// Sends SIGINT (as Ctrl-C does) and waits for the exit status.
    fn interrupt(&mut self) -> i32 {
        let status = StdCommand::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -INT");
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < end, "the child did not exit after SIGINT");
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every stdout line still buffered.
    fn rest(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(500)) {
            out.push(line);
        }
        out
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `probe` every 50 ms until it holds or `deadline` passes.
fn eventually(what: &str, deadline: Duration, mut probe: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !probe() {
        assert!(Instant::now() < end, "{what}: not within {deadline:?}");
        thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// A small HTTP server for `health` and `call`
// ---------------------------------------------------------------------------------------------

/// Answers `GET /health` with 200, `/fail` with 500 `boom`, `/moved` with 302, anything else
/// with 200 and `METHOD PATH BODY [header x-test]`. Stopped when dropped.
struct HttpServer {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl HttpServer {
    fn start() -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::Acquire) {
                    break;
                }
                if let Ok(conn) = conn {
                    thread::spawn(move || serve(conn));
                }
            }
        });
        HttpServer { port, stop }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(mut conn: TcpStream) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.lines();
    let mut first = lines.next().unwrap_or_default().split(' ');
    let (method, path) = (
        first.next().unwrap_or_default().to_owned(),
        first.next().unwrap_or_default().to_owned(),
    );
    let mut length = 0usize;
    let mut x_test = String::new();
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = v.trim().parse().unwrap_or(0),
                "x-test" => x_test = v.trim().to_owned(),
                _ => {}
            }
        }
    }
    while buf.len() < head_end + length {
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = String::from_utf8_lossy(&buf[head_end..]).into_owned();
    let (status, text) = match path.as_str() {
        "/health" => ("200 OK", "ok".to_owned()),
        "/fail" => ("500 Internal Server Error", "boom".to_owned()),
        "/moved" => ("302 Found", String::new()),
        _ => ("200 OK", format!("{method} {path} {body} {x_test}")),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-length: {}\r\nlocation: /elsewhere\r\nconnection: close\r\n\r\n{text}",
        text.len()
    );
    let _ = conn.write_all(response.as_bytes());
}

// ---------------------------------------------------------------------------------------------
// The scenario every backend runs
// ---------------------------------------------------------------------------------------------

/// What a backend does with a plain `register` (without `--keep`).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Plain {
    /// Registers and leaves the instance to expire (etcd, Consul).
    Registers,
    /// Refuses with exit 2 (ZooKeeper, Nacos).
    Refuses,
}

/// `register --keep`, `watch`, `ls`, `get`, `deregister` and SIGINT against `url`.
fn scenario(url: &str, backend: &str, plain: Plain) {
    let svc = format!("cli-{backend}-{}", std::process::id());
    let id = format!("{svc}-1");

    // Unknown service and id: exit 3, one line.
    let run = waypost(Some(url), &["ls", &svc]);
    assert_eq!(run.code, 3, "{run:?}");
    run.assert_one_line_error();
    assert!(run.stderr.contains(&svc), "{run:?}");
    let run = waypost(Some(url), &["get", &id]);
    assert_eq!(run.code, 3, "{run:?}");
    run.assert_one_line_error();
    let run = waypost(Some(url), &["deregister", &id]);
    assert_eq!(run.code, 3, "{run:?}");
    run.assert_one_line_error();

    // A watcher (JSON) and a table watcher, both on the service.
    let mut watch_json = Spawned::start(url, &["-o", "json", "watch", &svc]);
    let first = watch_json.line_where(Duration::from_secs(30), |_| true);
    let first: Value = serde_json::from_str(&first).expect("JSON");
    assert_eq!(first["type"], "snapshot", "{first}");
    assert_eq!(first["reason"], "initial", "{first}");
    assert_eq!(first["count"], 0, "{first}");
    let mut watch_table = Spawned::start(url, &["watch", &svc]);
    let snap = watch_table.line_where(Duration::from_secs(30), |_| true);
    assert!(
        snap.contains("SNAPSHOT (reason: initial) 0 instances"),
        "{snap}"
    );

    // Register and keep it.
    let mut keeper = Spawned::start(
        url,
        &[
            "register",
            "--keep",
            "--name",
            &svc,
            "--id",
            &id,
            "--address",
            "127.0.0.1",
            "--port",
            "18080",
            "--protocol",
            "http",
            "--version",
            "1.2.3",
            "--weight",
            "7",
            "--meta",
            "zone=eu-1",
            "--meta",
            "team=core",
            "--tag",
            "api",
            "--health",
            "healthy",
        ],
    );
    let registered = keeper.line_where(Duration::from_secs(30), |_| true);
    let registered_at = Instant::now();
    assert!(
        registered.starts_with(&format!(
            "registered {id} ({svc} at 127.0.0.1:18080) in {backend}; keeping it alive"
        )),
        "{registered}"
    );
    // The watcher sees it within 1 s of the registration.
    let created = watch_json.line_where(Duration::from_secs(10), |l| l.contains("\"created\""));
    assert!(
        registered_at.elapsed() <= Duration::from_secs(1),
        "the CREATED event came {:?} after the registration",
        registered_at.elapsed()
    );
    let created: Value = serde_json::from_str(&created).expect("JSON");
    assert_eq!(created["type"], "created");
    assert_eq!(created["service"], svc.as_str());
    assert_eq!(created["id"], id.as_str());
    assert_eq!(created["address"], "127.0.0.1");
    assert_eq!(created["port"], 18080);
    assert_eq!(created["health"], "healthy");
    assert_eq!(created["instance"]["version"], "1.2.3");
    let line = watch_table.line_where(Duration::from_secs(10), |l| l.contains("CREATED"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        cols[1..],
        [
            "CREATED",
            svc.as_str(),
            id.as_str(),
            "127.0.0.1:18080",
            "healthy"
        ],
        "{line}"
    );

    // ls SERVICE: table and JSON.
    let run = waypost(Some(url), &["ls", &svc]);
    assert_eq!(run.code, 0, "{run:?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        ["ID", "ADDRESS", "PORT", "PROTOCOL", "HEALTH", "VERSION", "WEIGHT", "AGE", "TTL"]
    );
    assert_eq!(lines.len(), 2, "{run:?}");
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        row[..7],
        [
            id.as_str(),
            "127.0.0.1",
            "18080",
            "http",
            "healthy",
            "1.2.3",
            "7"
        ],
        "{run:?}"
    );
    assert!(
        row[7].ends_with('s') || row[7].ends_with('m') || row[7] == "-",
        "AGE {row:?}"
    );
    let run = waypost(Some(url), &["-o", "json", "ls", &svc]);
    assert_eq!(run.code, 0, "{run:?}");
    let items = run.json_lines();
    assert_eq!(items.len(), 1, "{run:?}");
    // The Go-compatible ServiceInfo JSON, keys in the Laravel-Go module's order.
    assert!(
        run.stdout
            .starts_with(&format!(r#"{{"id":"{id}","name":"{svc}","version":"1.2.3","address":"127.0.0.1","port":18080,"protocol":"http","health":"healthy","metadata":{{"team":"core","zone":"eu-1"}},"tags":["api"],"created_at":"#)),
        "{run:?}"
    );
    assert_eq!(items[0]["id"], id.as_str());
    assert_eq!(items[0]["name"], svc.as_str());
    assert_eq!(items[0]["port"], 18080);
    assert_eq!(items[0]["weight"], 7);
    assert_eq!(items[0]["metadata"]["zone"], "eu-1");
    assert_eq!(items[0]["tags"], serde_json::json!(["api"]));

    // Colour: only when asked for (stdout is a pipe here), never in JSON.
    let run = waypost(Some(url), &["--color", "always", "ls", &svc]);
    assert!(run.stdout.contains("\u{1b}[32mhealthy\u{1b}[0m"), "{run:?}");
    let run = waypost(Some(url), &["--color", "always", "-o", "json", "ls", &svc]);
    assert!(!run.stdout.contains('\u{1b}'), "{run:?}");

    // ls (every service): our service's row and its JSON summary.
    let run = waypost(Some(url), &["ls"]);
    assert_eq!(run.code, 0, "{run:?}");
    let header: Vec<&str> = run
        .stdout
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "SERVICE",
            "INSTANCES",
            "HEALTHY",
            "UNHEALTHY",
            "UNKNOWN",
            "PROTOCOLS",
            "VERSIONS"
        ]
    );
    let row = run
        .stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(svc.as_str()))
        .unwrap_or_else(|| panic!("no row for {svc}: {run:?}"));
    assert_eq!(
        row.split_whitespace().collect::<Vec<_>>(),
        [svc.as_str(), "1", "1", "0", "0", "http", "1.2.3"]
    );
    let run = waypost(Some(url), &["-o", "json", "ls"]);
    let ours = run
        .json_lines()
        .into_iter()
        .find(|v| v["service"] == svc.as_str())
        .unwrap_or_else(|| panic!("no summary for {svc}: {run:?}"));
    assert_eq!(
        ours,
        serde_json::json!({"service": svc, "instances": 1, "healthy": 1, "unhealthy": 0,
                           "unknown": 0, "protocols": ["http"], "versions": ["1.2.3"]})
    );

    // get ID: table and JSON.
    let run = waypost(Some(url), &["get", &id]);
    assert_eq!(run.code, 0, "{run:?}");
    let rows: Vec<(String, String)> = run
        .stdout
        .lines()
        .map(|l| {
            let mut it = l.splitn(2, ' ');
            let k = it.next().unwrap_or_default().to_owned();
            (k, it.next().unwrap_or_default().trim().to_owned())
        })
        .collect();
    let value = |k: &str| {
        rows.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no row {k}: {run:?}"))
    };
    assert_eq!(rows[0], ("KEY".to_owned(), "VALUE".to_owned()));
    assert_eq!(value("id"), id);
    assert_eq!(value("name"), svc);
    assert_eq!(value("port"), "18080");
    assert_eq!(value("weight"), "7");
    assert_eq!(value("health"), "healthy");
    assert_eq!(value("tags"), "api");
    assert_eq!(value("meta.zone"), "eu-1");
    assert_eq!(value("meta.team"), "core");
    let run = waypost(Some(url), &["-o", "json", "get", &id]);
    let got = run.json_lines();
    assert_eq!(got.len(), 1, "{run:?}");
    assert_eq!(got[0]["id"], id.as_str());
    assert_eq!(got[0]["version"], "1.2.3");
    assert_eq!(got[0]["protocol"], "http");

    // Ctrl-C: the keeper deregisters and exits 0, one line per phase.
    assert_eq!(keeper.interrupt(), 0, "stderr: {}", keeper.stderr.get());
    let rest = keeper.rest();
    assert_eq!(
        rest,
        [
            format!("SIGINT: deregistering {id}"),
            format!("deregistered {id}")
        ]
    );
    eventually(
        "the instance gone after SIGINT",
        Duration::from_secs(5),
        || waypost(Some(url), &["ls", &svc]).code == 3,
    );
    let deleted = watch_json.line_where(Duration::from_secs(10), |l| l.contains("\"deleted\""));
    assert!(deleted.contains(&id), "{deleted}");
    watch_table.line_where(Duration::from_secs(10), |l| l.contains("DELETED"));
    assert_eq!(watch_json.interrupt(), 0, "{}", watch_json.stderr.get());
    assert_eq!(watch_table.interrupt(), 0, "{}", watch_table.stderr.get());

    // A watcher whose reader goes away (`waypost watch | head -1`) ends at its next event.
    let mut headless = StdCommand::new(assert_cmd::cargo::cargo_bin("waypost"))
        .args(["--registry", url, "watch", &svc])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn waypost watch");
    {
        let mut first = String::new();
        let mut out = BufReader::new(headless.stdout.take().expect("stdout"));
        out.read_line(&mut first).expect("the snapshot line");
        assert!(first.contains("SNAPSHOT"), "{first}");
    } // the pipe's read end is closed here

    // A plain register.
    let plain_id = format!("{svc}-plain");
    let run = waypost(
        Some(url),
        &[
            "register",
            "--name",
            &svc,
            "--id",
            &plain_id,
            "--address",
            "127.0.0.1",
            "--port",
            "18081",
            "--ttl",
            "30s",
        ],
    );
    match plain {
        Plain::Refuses => {
            let _ = headless.kill();
            let _ = headless.wait();
            assert_eq!(run.code, 2, "{run:?}");
            run.assert_one_line_error();
            assert!(run.stderr.contains("--keep"), "{run:?}");
        }
        Plain::Registers => {
            assert_eq!(run.code, 0, "{run:?}");
            assert!(
                run.stdout.starts_with(&format!("registered {plain_id} ")),
                "{run:?}"
            );
            // The headless watcher saw the event, could not write it, and exited 0.
            let end = Instant::now() + Duration::from_secs(10);
            let status = loop {
                if let Some(status) = headless.try_wait().expect("wait") {
                    break status;
                }
                assert!(Instant::now() < end, "watch kept running without a reader");
                thread::sleep(Duration::from_millis(20));
            };
            assert_eq!(status.code(), Some(0));
            // The instance outlives the command...
            let run = waypost(Some(url), &["-o", "json", "get", &plain_id]);
            assert_eq!(run.code, 0, "{run:?}");
            assert_eq!(run.json_lines()[0]["port"], 18081);
            // ...until deregistered.
            let run = waypost(Some(url), &["deregister", &plain_id]);
            assert_eq!(run.code, 0, "{run:?}");
            assert_eq!(run.stdout, format!("deregistered {plain_id}\n"));
            let run = waypost(Some(url), &["get", &plain_id]);
            assert_eq!(run.code, 3, "{run:?}");
        }
    }
}

/// `health` and `call` against instances registered with `url` (etcd or Consul: a plain
/// `register` keeps them after the command).
fn health_and_call(url: &str, backend: &str) {
    let server = HttpServer::start();
    let svc = format!("cli-hc-{backend}-{}", std::process::id());
    let dead_port = free_port().to_string();
    let port = server.port.to_string();
    let register = |id: &str, port: &str, protocol: &str| {
        let run = waypost(
            Some(url),
            &[
                "register",
                "--name",
                &svc,
                "--id",
                id,
                "--address",
                "127.0.0.1",
                "--port",
                port,
                "--protocol",
                protocol,
                "--health",
                "healthy",
                "--ttl",
                "30s",
            ],
        );
        assert_eq!(run.code, 0, "{run:?}");
    };
    register("web", &port, "http");
    // call: the body on stdout, the instance and status on stderr.
    let run = waypost(
        Some(url),
        &[
            "call",
            &svc,
            "/echo?x=1",
            "-X",
            "POST",
            "-d",
            "hello",
            "-H",
            "X-Test: yes",
        ],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout, "POST /echo?x=1 hello yes");
    assert!(
        run.stderr.starts_with("waypost: 200 OK from ") && run.stderr.contains("1 attempt"),
        "{run:?}"
    );
    let body_file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(body_file.path(), "from a file").expect("write");
    let at = format!("@{}", body_file.path().display());
    let run = waypost(
        Some(url),
        &["-o", "json", "call", &svc, "/f", "-X", "PUT", "-d", &at],
    );
    assert_eq!(run.code, 0, "{run:?}");
    let v = &run.json_lines()[0];
    assert_eq!(v["status"], 200);
    assert_eq!(v["attempts"], 1);
    assert_eq!(v["body"], "PUT /f from a file ");
    assert_eq!(v["instance"]["port"], server.port);
    assert_eq!(v["instance"]["id"], "web");
    // An error status: exit 1, one line with the status and the body's start.
    let run = waypost(Some(url), &["call", &svc, "/fail", "--retries", "0"]);
    assert_eq!(run.code, 1, "{run:?}");
    run.assert_one_line_error();
    assert!(
        run.stderr.contains("500") && run.stderr.contains("boom"),
        "{run:?}"
    );
    // A redirect is not followed and is not a success either: exit 1.
    let run = waypost(Some(url), &["call", &svc, "/moved"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("302"), "{run:?}");
    // No such service: exit 3.
    let run = waypost(Some(url), &["call", &format!("{svc}-none"), "/"]);
    assert_eq!(run.code, 3, "{run:?}");
    run.assert_one_line_error();

    // A tcp instance beside it: probed by connecting.
    register("tcp", &port, "tcp");
    // A gRPC one: probed with the grpc.health.v1 Check of its service name.
    let rt = runtime();
    let (reporter, grpc_port) = rt.block_on(async {
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status(&svc, tonic_health::ServingStatus::Serving)
            .await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        (reporter, port)
    });
    register("rpc", &grpc_port.to_string(), "grpc");

    // Every instance healthy: exit 0.
    let run = waypost(Some(url), &["health", &svc]);
    assert_eq!(run.code, 0, "{run:?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["ID", "ADDRESS", "PROTOCOL", "RESULT", "LATENCY"]
    );
    assert_eq!(lines.len(), 4, "{run:?}");
    for (line, id, proto, at) in [
        (lines[1], "rpc", "grpc", grpc_port),
        (lines[2], "tcp", "tcp", server.port),
        (lines[3], "web", "http", server.port),
    ] {
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            cols[..4],
            [id, &format!("127.0.0.1:{at}"), proto, "healthy"],
            "{line}"
        );
        assert!(cols[4].ends_with("ms"), "{line}");
    }
    // The gRPC server reports the service NOT_SERVING: unhealthy, exit 5, and why.
    rt.block_on(reporter.set_service_status(&svc, tonic_health::ServingStatus::NotServing));
    let run = waypost(Some(url), &["-o", "json", "health", &svc]);
    assert_eq!(run.code, 5, "{run:?}");
    let rpc = run
        .json_lines()
        .into_iter()
        .find(|p| p["id"] == "rpc")
        .expect("the gRPC instance");
    assert_eq!(rpc["healthy"], false, "{rpc}");
    assert!(
        rpc["error"]
            .as_str()
            .unwrap_or_default()
            .contains("NOT_SERVING"),
        "{rpc}"
    );
    assert_eq!(waypost(Some(url), &["deregister", "rpc"]).code, 0);
    drop(rt);

    // An instance that does not answer: health exits 5 and says why; a call to a service
    // whose only instance is down exits 4.
    register("down", &dead_port, "http");
    let run = waypost(
        Some(url),
        &["-o", "json", "--timeout", "2s", "health", &svc],
    );
    assert_eq!(run.code, 5, "{run:?}");
    let probes = run.json_lines();
    assert_eq!(probes.len(), 3, "{run:?}");
    let down = probes
        .iter()
        .find(|p| p["id"] == "down")
        .expect("the down instance");
    assert_eq!(down["healthy"], false);
    assert!(
        !down["error"].as_str().unwrap_or_default().is_empty(),
        "{down}"
    );
    assert!(probes.iter().filter(|p| p["healthy"] == true).count() == 2);
    for id in ["web", "tcp"] {
        assert_eq!(waypost(Some(url), &["deregister", id]).code, 0);
    }
    let run = waypost(
        Some(url),
        &[
            "--timeout",
            "1s",
            "call",
            &svc,
            "/",
            "--retries",
            "1",
            "--deadline",
            "5s",
        ],
    );
    assert_eq!(run.code, 4, "{run:?}");
    run.assert_one_line_error();
    assert_eq!(waypost(Some(url), &["deregister", "down"]).code, 0);
    let run = waypost(Some(url), &["health", &svc]);
    assert_eq!(run.code, 3, "{run:?}");
}

/// `-o json register --keep`: one object per phase, and SIGTERM works as SIGINT does.
fn keep_phases_in_json(url: &str, backend: &str) {
    let svc = format!("cli-json-{backend}-{}", std::process::id());
    let mut keeper = Spawned::start(
        url,
        &[
            "-o",
            "json",
            "register",
            "--keep",
            "--name",
            &svc,
            "--address",
            "10.0.0.9",
            "--port",
            "9000",
        ],
    );
    let id = format!("{svc}-10.0.0.9-9000");
    let first: Value =
        serde_json::from_str(&keeper.line_where(Duration::from_secs(30), |_| true)).expect("JSON");
    assert_eq!(
        first,
        serde_json::json!({"phase": "registered", "id": id, "service": svc, "backend": backend})
    );
    let run = waypost(Some(url), &["-o", "json", "get", &id]);
    assert_eq!(
        run.json_lines()[0]["health"],
        "unknown",
        "the default health: {run:?}"
    );
    let status = StdCommand::new("kill")
        .args(["-TERM", &keeper.child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let phases: Vec<Value> = (0..2)
        .map(|_| {
            serde_json::from_str(&keeper.line_where(Duration::from_secs(20), |_| true))
                .expect("JSON")
        })
        .collect();
    assert_eq!(phases[0]["phase"], "deregistering");
    assert_eq!(phases[0]["signal"], "SIGTERM");
    assert_eq!(phases[1]["phase"], "deregistered");
    let end = Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(status) = keeper.child.try_wait().expect("wait") {
            break status.code();
        }
        assert!(Instant::now() < end, "no exit after SIGTERM");
        thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(code, Some(0));
    assert_eq!(waypost(Some(url), &["get", &id]).code, 3);
}

/// A background runtime for the in-process fake Consul agent and for starting servers.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn etcd_every_subcommand() {
    let rt = runtime();
    let Some(server) = require("etcd_every_subcommand", rt.block_on(EtcdServer::start())) else {
        return;
    };
    let url = format!(
        "etcd://127.0.0.1:{}/cli-test?ttl=5s&connect_timeout=5s",
        server.client_port()
    );
    scenario(&url, "etcd", Plain::Registers);
    health_and_call(&url, "etcd");
    drop(server);
}

#[test]
fn zookeeper_every_subcommand() {
    let rt = runtime();
    let Some(server) = require(
        "zookeeper_every_subcommand",
        rt.block_on(ZkServer::start(ZkOptions::default())),
    ) else {
        return;
    };
    let url = format!(
        "zookeeper://{}/cli-test?session_timeout=2s&connect_timeout=10s",
        server.addr()
    );
    scenario(&url, "zookeeper", Plain::Refuses);
    drop(server);
}

#[test]
fn nacos_every_subcommand() {
    let rt = runtime();
    let Some(server) = require(
        "nacos_every_subcommand",
        rt.block_on(start_rnacos(RnacosOptions::default())),
    ) else {
        return;
    };
    let url = format!(
        "nacos://{}?namespace=public&group=CLI_TEST&connect_timeout=5s",
        server.addr()
    );
    scenario(&url, "nacos", Plain::Refuses);
    drop(server);
}

#[test]
fn consul_fake_agent_every_subcommand() {
    let rt = runtime();
    let agent = rt
        .block_on(FakeConsul::start(FakeOptions::default()))
        .expect("start the fake Consul agent");
    let url = format!("consul://{}?ttl=5s&connect_timeout=5s", agent.addr());
    scenario(&url, "consul", Plain::Registers);
    health_and_call(&url, "consul");
    keep_phases_in_json(&url, "consul");
    agent.stop();
    drop(agent);
}

// ---------------------------------------------------------------------------------------------
// Without a server
// ---------------------------------------------------------------------------------------------

#[test]
fn help_of_every_command_mentions_every_flag() {
    let cmd = waypost_cli::command();
    let run = waypost(None, &["--help"]);
    assert_eq!(run.code, 0, "{run:?}");
    for arg in cmd.get_arguments() {
        if let Some(long) = arg.get_long() {
            assert!(
                run.stdout.contains(&format!("--{long}")),
                "--{long}: {run:?}"
            );
        }
    }
    for sub in cmd.get_subcommands() {
        assert!(run.stdout.contains(sub.get_name()), "{}", sub.get_name());
        let run = waypost(None, &[sub.get_name(), "--help"]);
        assert_eq!(run.code, 0, "{}: {run:?}", sub.get_name());
        assert!(run.stderr.is_empty(), "{run:?}");
        for arg in sub.get_arguments().chain(cmd.get_arguments()) {
            if let Some(long) = arg.get_long() {
                assert!(
                    run.stdout.contains(&format!("--{long}")),
                    "{} --help lacks --{long}",
                    sub.get_name()
                );
            } else if arg.is_positional() {
                let name = arg
                    .get_value_names()
                    .and_then(|n| n.first().map(ToString::to_string))
                    .unwrap_or_else(|| arg.get_id().to_string().to_uppercase());
                assert!(
                    run.stdout.contains(&name),
                    "{} --help lacks {name}",
                    sub.get_name()
                );
            }
        }
    }
    // The exit codes are in the main help.
    let run = waypost(None, &["--help"]);
    for code in [
        "0 success",
        "2 bad arguments",
        "3 not found",
        "4 registry",
        "5 an instance",
    ] {
        assert!(run.stdout.contains(code), "{code}: {run:?}");
    }
}

#[test]
fn bad_input_gives_one_line_and_a_non_zero_exit() {
    let cases: [(&[&str], i32, Option<&str>); 9] = [
        (&["ls"], 2, None),                                // no registry
        (&["ls"], 2, Some("bogus://127.0.0.1:1")),         // unknown scheme
        (&["get"], 2, Some("memory://")),                  // missing argument
        (&["nope"], 2, Some("memory://")),                 // unknown subcommand
        (&["--timeout", "x", "ls"], 2, Some("memory://")), // bad duration
        (&["--timeout", "0", "ls"], 2, Some("memory://")), // zero timeout
        (
            &[
                "register",
                "--name",
                "a/b",
                "--address",
                "h",
                "--port",
                "1",
                "--keep",
            ],
            2,
            Some("memory://"),
        ),
        (
            &["register", "--name", "a", "--address", "h", "--port", "0"],
            2,
            Some("memory://"),
        ),
        (
            &[
                "register",
                "--name",
                "a",
                "--address",
                "h",
                "--port",
                "1",
                "--meta",
                "novalue",
            ],
            2,
            Some("memory://"),
        ),
    ];
    for (args, code, url) in cases {
        let run = waypost(url, args);
        assert_eq!(run.code, code, "{args:?}: {run:?}");
        run.assert_one_line_error();
        assert!(run.stdout.is_empty(), "{args:?}: {run:?}");
    }
    // Without --keep, the in-memory registry (one process) refuses: exit 2.
    let run = waypost(
        Some("memory://"),
        &["register", "--name", "a", "--address", "h", "--port", "1"],
    );
    assert_eq!(run.code, 2, "{run:?}");
    run.assert_one_line_error();
}

#[test]
fn an_unreachable_registry_exits_4_within_the_timeout_and_never_prints_the_password() {
    let port = free_port();
    for url in [
        format!("etcd://root:Sup3rSecret-pw@127.0.0.1:{port}/p"),
        format!("consul://:Sup3rSecret-pw@127.0.0.1:{port}"),
        format!("nacos://nacos:Sup3rSecret-pw@127.0.0.1:{port}"),
        format!("zookeeper://alice:Sup3rSecret-pw@127.0.0.1:{port}/p"),
    ] {
        for args in [
            &["ls"][..],
            &["get", "x"],
            &["watch"],
            &["-o", "json", "ls", "svc"],
        ] {
            let start = Instant::now();
            let mut full = vec!["--timeout", "1s"];
            full.extend_from_slice(args);
            let run = waypost(Some(&url), &full);
            let took = start.elapsed();
            assert_eq!(run.code, 4, "{url} {args:?}: {run:?}");
            run.assert_one_line_error();
            assert!(!run.stderr.contains("Sup3rSecret"), "{run:?}");
            assert!(!run.stdout.contains("Sup3rSecret"), "{run:?}");
            assert!(
                took < Duration::from_secs(8),
                "{url} {args:?} took {took:?}"
            );
        }
    }
}

#[test]
fn completions_for_every_shell_and_the_man_pages() {
    for (shell, marker) in [
        ("bash", "_waypost()"),
        ("zsh", "#compdef waypost"),
        ("fish", "complete -c waypost"),
        ("elvish", "edit:completion:arg-completer[waypost]"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        let run = waypost(None, &["completions", shell]);
        assert_eq!(run.code, 0, "{shell}: {run:?}");
        assert!(
            run.stdout.contains(marker),
            "{shell}: {}",
            &run.stdout[..200.min(run.stdout.len())]
        );
        assert!(run.stdout.contains("register"), "{shell}");
    }
    let run = waypost(None, &["completions", "tcsh"]);
    assert_eq!(run.code, 2, "{run:?}");
    run.assert_one_line_error();

    let run = waypost(None, &["man"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains(".TH waypost 1"),
        "{}",
        &run.stdout[..200]
    );
    for sub in ["ls", "register", "watch", "health", "call", "completions"] {
        assert!(run.stdout.contains(sub), "{sub}");
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("man1");
    let run = waypost(None, &["man", "--out", &out.display().to_string()]);
    assert_eq!(run.code, 0, "{run:?}");
    let register = std::fs::read_to_string(out.join("waypost-register.1")).expect("page");
    assert!(register.contains("\\-\\-keep"), "{register}");
    assert!(out.join("waypost.1").is_file());
    assert_eq!(std::fs::read_dir(&out).expect("dir").count(), 11);
}
