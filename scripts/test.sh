#!/usr/bin/env bash
# The whole waypost test suite, as CI runs it, on a fresh Debian machine with Rust:
#   1. installs what the real-server tests need (etcd and ZooKeeper from Debian, rnacos from
#      crates.io) when it is missing;
#   2. checks formatting, clippy (all targets, all features, warnings are errors) and rustdoc;
#   3. runs every test with CI=true, so a real-server test that cannot start its server fails
#      instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

RNACOS_VERSION="0.8.8"

step() { printf '\n==> %s\n' "$*"; }

need_apt=()
command -v etcd >/dev/null 2>&1 || need_apt+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need_apt+=(etcd-client)
[ -f /usr/share/java/zookeeper.jar ] || need_apt+=(zookeeper)
command -v java >/dev/null 2>&1 || need_apt+=(default-jre-headless)
if [ ${#need_apt[@]} -gt 0 ]; then
  step "installing Debian packages: ${need_apt[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${need_apt[@]}"
fi

if ! command -v rnacos >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/rnacos" ]; then
  step "installing rnacos ${RNACOS_VERSION} (a Nacos-compatible server) from crates.io"
  cargo install rnacos --locked --version "${RNACOS_VERSION}"
fi
export PATH="$HOME/.cargo/bin:$PATH"
# One build from scratch: an incremental cache would only take disk (about 5 GB here).
export CARGO_INCREMENTAL=0
target_dir="${CARGO_TARGET_DIR:-target}"
mkdir -p "$target_dir"
step "disk: $(df -h --output=avail "$target_dir" | tail -1 | tr -d ' ') free where the build goes ($target_dir)"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, all features, -D warnings)"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "cargo test (CI=true: real-server tests must run)"
CI=true cargo test --workspace --all-features

step "cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --all-features --no-deps

step "all checks passed (the build takes $(du -sh "$target_dir" 2>/dev/null | cut -f1) in $target_dir)"
