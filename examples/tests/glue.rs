//! The axum, hyper-util and tonic examples join through the `Announcer` and stop gracefully on
//! SIGTERM: each serves, logs that it registered, and exits cleanly after its drain delay.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// Runs `bin` on the in-memory registry, waits until it logs that it serves and `ready` agrees,
/// sends SIGTERM and returns what it logged.
fn serve_then_sigterm(bin: &str, ready: impl Fn(u16) -> bool) -> String {
    let port = free_port();
    let child = Command::new(bin)
        .env("WAYPOST_REGISTRY", "memory://")
        .env("WAYPOST_ADVERTISE_ADDR", "127.0.0.1")
        .env("PORT", port.to_string())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the example");
    let mut child = Guard(child);
    let stdout = child.0.stdout.take().expect("stdout");
    let (lines_tx, lines) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut out = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !out.contains("lifecycle: serving") {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                out.push_str(&line);
                out.push('\n');
            }
            Err(_) => panic!("{bin} never logged that it serves:\n{out}"),
        }
    }
    assert!(
        ready(port),
        "{bin} logged that it serves but does not answer on {port}"
    );
    let status = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "{bin} did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    reader.join().expect("reader");
    out.extend(lines.try_iter().map(|l| l + "\n"));
    assert!(status.success(), "{bin}: {status}\n{out}");
    for line in [
        "stop requested (SIGTERM)",
        "lifecycle: draining",
        "lifecycle: stopped",
    ] {
        assert!(out.contains(line), "{bin}: missing `{line}` in\n{out}");
    }
    out
}

#[test]
fn axum_example() {
    let out = serve_then_sigterm(env!("CARGO_BIN_EXE_announce_axum"), |port| {
        http_get(port, "/users").is_some_and(|r| r.starts_with("HTTP/1.1 200") && r.contains("Ada"))
    });
    assert!(out.contains("users-127.0.0.1-"), "{out}");
}

#[test]
fn hyper_example() {
    serve_then_sigterm(env!("CARGO_BIN_EXE_announce_hyper"), |port| {
        http_get(port, "/").is_some_and(|r| r.starts_with("HTTP/1.1 200") && r.contains("hello"))
    });
}

#[test]
fn tonic_example() {
    // The server is up (it accepts connections) and registered (the log says so).
    let out = serve_then_sigterm(env!("CARGO_BIN_EXE_announce_tonic"), |port| {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(out.contains("greeter-127.0.0.1-"), "{out}");
}
