//! A crate outside this workspace that depends on `waypost` with `features = ["full"]` builds on
//! a machine without `protoc`.
//!
//! The published `etcd-client` compiles etcd's `.proto` files in its build script, so any crate
//! depending on the etcd backend needed `protoc`. waypost uses `vendor/etcd-client` (the package
//! `waypost-etcd-client`) instead, with the generated code checked in and no build script. This
//! test writes a throwaway crate in a temp dir, copies the workspace's `Cargo.lock` into it (the
//! same versions, and no network needed), and runs `cargo check --offline` (build scripts run
//! under `check`: that is where `protoc` was needed) with a clean environment: no `PROTOC`, no
//! variable of the outer cargo, and a `PATH` that holds every tool of the current `PATH` except
//! `protoc`.
//!
//! The first run checks the whole dependency graph (3.7 to 4.5 minutes measured on a 2-core
//! machine busy with other builds); its target dir is kept in this workspace's target dir
//! (`target/tmp/downstream-check`), so later runs take seconds.

#![cfg(unix)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Upper bound of the `cargo check`, first run included, on a busy 2-core machine.
const CHECK_DEADLINE: Duration = Duration::from_secs(20 * 60);

/// Protobuf code generators: called from a build script, each of them runs protoc.
const CODEGEN_PACKAGES: &[&str] = &["prost-build", "tonic-build", "tonic-prost-build"];

#[test]
fn crate_depending_on_waypost_full_builds_without_protoc() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration-tests lives in the workspace")
        .canonicalize()
        .expect("canonical workspace path");
    let scratch = tempfile::Builder::new()
        .prefix("waypost-downstream-")
        .tempdir()
        .expect("temp dir");
    let root = scratch.path().canonicalize().expect("canonical temp path");
    assert!(
        !root.starts_with(&workspace),
        "the throwaway crate must live outside the workspace, {} is inside {}",
        root.display(),
        workspace.display()
    );

    let krate = root.join("downstream");
    fs::create_dir_all(krate.join("src")).expect("create the crate");
    fs::write(
        krate.join("Cargo.toml"),
        format!(
            r#"[package]
name = "waypost-downstream-check"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
waypost = {{ path = "{}", features = ["full"] }}

[workspace]
"#,
            workspace.join("crates/waypost").display()
        ),
    )
    .expect("write Cargo.toml");
    fs::write(
        krate.join("src/lib.rs"),
        "//! Uses every backend and the client through the facade.\n\
         pub use waypost::{client, consul, etcd, nacos, zookeeper};\n",
    )
    .expect("write lib.rs");
    fs::copy(workspace.join("Cargo.lock"), krate.join("Cargo.lock")).expect("copy Cargo.lock");

    let cargo = PathBuf::from(std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into()));
    let bin = root.join("bin");
    shadow_path_without_protoc(&bin, &cargo);
    let target_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("downstream-check");

    // No build script in the graph generates protobuf code, and the etcd backend is there, on the
    // client with the checked-in code.
    let tree = run(
        clean_cargo(&cargo, &bin, &krate)
            .args(["tree", "--offline", "--prefix", "none", "--edges"])
            .args(["normal,build", "--format", "{p}"]),
        &root,
        "cargo tree",
        Duration::from_secs(120),
    );
    let packages: Vec<&str> = tree
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    for codegen in CODEGEN_PACKAGES {
        assert!(
            !packages.contains(codegen),
            "{codegen} is in the dependency graph of a crate using waypost:\n{tree}"
        );
    }
    assert!(
        packages.contains(&"waypost-etcd-client"),
        "the etcd backend's client is not in the graph:\n{tree}"
    );

    let started = Instant::now();
    run(
        clean_cargo(&cargo, &bin, &krate)
            .args(["check", "--offline", "--target-dir"])
            .arg(&target_dir),
        &root,
        "cargo check",
        CHECK_DEADLINE,
    );
    println!(
        "cargo check of a crate using waypost (full) without protoc: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Fills `bin` with links to the first of each name on `PATH` (the directory of the `cargo`
/// running this test first, so its toolchain's `rustc` comes with it), leaving out any name
/// containing `protoc`.
fn shadow_path_without_protoc(bin: &Path, cargo: &Path) {
    fs::create_dir_all(bin).expect("create the PATH dir");
    let toolchain = cargo.parent().expect("cargo's directory").to_path_buf();
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::iter::once(toolchain).chain(std::env::split_paths(&path)) {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name.to_string_lossy().contains("protoc") {
                continue;
            }
            let link = bin.join(&name);
            if link.symlink_metadata().is_err() {
                std::os::unix::fs::symlink(entry.path(), &link).expect("link a tool");
            }
        }
    }
    for tool in ["cargo", "rustc", "cc"] {
        assert!(bin.join(tool).exists(), "no `{tool}` found on PATH");
    }
    let protoc = fs::read_dir(bin)
        .expect("read the PATH dir")
        .flatten()
        .find(|e| e.file_name().to_string_lossy().contains("protoc"));
    assert!(protoc.is_none(), "protoc on the test PATH: {protoc:?}");
}

/// `cargo` in `krate` with only what it needs from the environment: nothing of the outer cargo
/// (`CARGO_*` build variables, `CARGO_TARGET_DIR`, `RUSTFLAGS`), no `PROTOC`, `PATH` = `bin`.
fn clean_cargo(cargo: &Path, bin: &Path, krate: &Path) -> Command {
    let mut cmd = Command::new(bin.join("cargo"));
    cmd.env_clear()
        .env("PATH", bin)
        .current_dir(krate)
        .stdin(Stdio::null());
    for var in ["HOME", "CARGO_HOME", "RUSTUP_HOME", "RUSTUP_TOOLCHAIN"] {
        if let Some(value) = std::env::var_os(var) {
            cmd.env(var, value);
        }
    }
    // The cargo of this test, not one that happens to come first on PATH.
    assert_eq!(
        fs::canonicalize(bin.join("cargo")).ok(),
        fs::canonicalize(cargo).ok(),
        "PATH's cargo is not the one running this test"
    );
    cmd
}

/// Runs `cmd` to completion within `deadline` and returns its stdout; panics with its output if
/// it fails or runs over.
fn run(cmd: &mut Command, scratch: &Path, what: &str, deadline: Duration) -> String {
    let out_path = scratch.join(format!("{what}.stdout").replace(' ', "-"));
    let err_path = scratch.join(format!("{what}.stderr").replace(' ', "-"));
    let out = fs::File::create(&out_path).expect("stdout file");
    let err = fs::File::create(&err_path).expect("stderr file");
    let mut child = cmd
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for cargo") {
            break Some(status);
        }
        if started.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let stdout = fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = fs::read_to_string(&err_path).unwrap_or_default();
    match status {
        Some(status) if status.success() => stdout,
        Some(status) => panic!("{what} failed ({status}):\n{}", tail(&stderr, 80)),
        None => panic!(
            "{what} ran over {deadline:?}, killed:\n{}",
            tail(&stderr, 80)
        ),
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
