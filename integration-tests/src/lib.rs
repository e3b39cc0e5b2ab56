//! Fixtures for tests against real servers: free loopback ports, one temp dir per server,
//! readiness with a deadline, processes that are always stopped, and the rule that decides
//! between skipping and failing when a server binary is missing.
//!
//! The rule: with `CI=true` (or `WAYPOST_REQUIRE_SERVERS=1`) a missing server is a test
//! failure; otherwise the test prints `SKIPPED: <test>: <why>` to stderr and returns, so plain
//! `cargo test` on a machine without servers still passes and says what it did not run.

pub mod etcd;
pub mod logs;
pub mod nacos;
pub mod process;
pub mod zookeeper;

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use process::ServerProcess;

/// Whether missing servers must fail tests (`CI=true` or `WAYPOST_REQUIRE_SERVERS=1`).
pub fn servers_required() -> bool {
    let truthy = |v: Result<String, _>| {
        v.map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes"))
            .unwrap_or(false)
    };
    truthy(std::env::var("CI")) || truthy(std::env::var("WAYPOST_REQUIRE_SERVERS"))
}

/// Returns `Some(value)`, or handles a missing prerequisite: panics when servers are required,
/// otherwise prints a visible `SKIPPED` line and returns `None`.
pub fn require<T>(test: &str, found: Result<T, String>) -> Option<T> {
    match found {
        Ok(v) => Some(v),
        Err(why) if servers_required() => {
            panic!("{test}: required server is unavailable (CI=true): {why}")
        }
        Err(why) => {
            // Written to the process's stderr directly, not through `eprintln!`, which the test
            // harness captures (and hides for passing tests): a skip must be visible.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: {test}: {why} (set CI=true to make this a failure)"
            );
            None
        }
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; the OS does not hand it out again soon).
///
/// # Panics
/// When the OS has no free port.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// `n` distinct free ports.
pub fn free_ports(n: usize) -> Vec<u16> {
    // Hold every listener until all are chosen, so the ports differ.
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}

/// Finds an executable: `$override_var` if set, else each of `names` on `PATH` and in `dirs`.
///
/// # Errors
/// A message naming what was looked for and how to install it.
pub fn find_binary(
    override_var: &str,
    names: &[&str],
    dirs: &[&str],
    install_hint: &str,
) -> Result<PathBuf, String> {
    if let Ok(p) = std::env::var(override_var) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        return Err(format!("{override_var}={} is not a file", p.display()));
    }
    let mut search: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    search.extend(dirs.iter().map(PathBuf::from));
    if let Some(home) = std::env::var_os("HOME") {
        search.push(Path::new(&home).join(".cargo/bin"));
    }
    for dir in &search {
        for name in names {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(format!(
        "{} not found on PATH (or set {override_var}); install it with: {install_hint}",
        names.join(" / ")
    ))
}

/// Polls `probe` every 50 ms until it returns true or `deadline` passes.
///
/// # Errors
/// A message naming `what` and the deadline.
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut probe: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    loop {
        if probe().await {
            return Ok(());
        }
        if start.elapsed() >= deadline {
            return Err(format!("{what} not ready within {deadline:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether something accepts TCP connections on `127.0.0.1:port`.
pub async fn port_open(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
}
