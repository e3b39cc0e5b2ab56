#!/usr/bin/env bash
# Regenerates the Rust code of etcd's gRPC API that vendor/etcd-client (the package
# waypost-etcd-client) checks in under src/rpc/generated/, from the .proto files in
# vendor/etcd-client/proto/. Building waypost never runs this: it is a maintenance command, for
# when the .proto files or the code generator change (see vendor/etcd-client/PATCHES.md).
#
#   scripts/regen-etcd-protos.sh           rewrite vendor/etcd-client/src/rpc/generated/*.rs
#   scripts/regen-etcd-protos.sh --check   only compare; exit 1 if the checked-in files differ
#
# Needs protoc: $PROTOC if set, else `protoc` on PATH (Debian: apt-get install protobuf-compiler;
# or the binary shipped in the crates.io package protoc-bin-vendored-linux-x86_64). The checked-in
# files were made with libprotoc 36.2; Debian 12's 3.21.12 makes the same bytes.
#
# It builds a throwaway cargo project in a temp dir with the code generator that etcd-client
# 0.21.1's build script used, pinned to the exact versions below, so it downloads crates from
# crates.io the first time. Set CARGO_TARGET_DIR to reuse that build between runs.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
crate="$repo/vendor/etcd-client"
dest="$crate/src/rpc/generated"

check=false
case "${1:-}" in
  "") ;;
  --check) check=true ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

protoc="${PROTOC:-}"
if [ -z "$protoc" ]; then
  protoc="$(command -v protoc || true)"
fi
if [ -z "$protoc" ] || ! "$protoc" --version >/dev/null 2>&1; then
  echo "regen-etcd-protos: no working protoc: set PROTOC or put protoc on PATH" \
    "(apt-get install protobuf-compiler)" >&2
  exit 127
fi
protoc="$(cd "$(dirname "$protoc")" && pwd)/$(basename "$protoc")"
echo "regen-etcd-protos: using $protoc ($("$protoc" --version))" >&2

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# The generator and everything that shapes its output, at the versions that made the checked-in
# files (the versions etcd-client 0.21.1's build resolved to in waypost's Cargo.lock).
mkdir -p "$work/gen/src"
cat >"$work/gen/Cargo.toml" <<'EOF'
[package]
name = "regen-etcd-protos"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
tonic-prost-build = "=0.14.9"
tonic-build = { version = "=0.14.9", default-features = false }
prost-build = "=0.14.6"
prost-types = "=0.14.6"
prettyplease_02 = { package = "prettyplease", version = "=0.2.37" }
prettyplease_03 = { package = "prettyplease", version = "=0.3.0" }
syn_2 = { package = "syn", version = "=2.0.119" }
syn_3 = { package = "syn", version = "=3.0.10" }

[workspace]
EOF
# What etcd-client 0.21.1's build.rs does (without the `build-server` feature), into a given dir.
cat >"$work/gen/src/main.rs" <<'EOF'
fn main() {
    let mut args = std::env::args().skip(1);
    let (proto_root, out_dir) = (args.next().unwrap(), args.next().unwrap());
    let protos = [
        "etcd/api/authpb/auth.proto",
        "etcd/api/etcdserverpb/rpc.proto",
        "etcd/api/mvccpb/kv.proto",
        "etcd/server/etcdserver/api/v3election/v3electionpb/v3election.proto",
        "etcd/server/etcdserver/api/v3lock/v3lockpb/v3lock.proto",
    ]
    .map(|p| format!("{proto_root}/{p}"));
    tonic_prost_build::configure()
        .build_server(false)
        .out_dir(&out_dir)
        .compile_protos(&protos, &[proto_root])
        .expect("Failed to compile proto files");
}
EOF

mkdir -p "$work/out"
# Relative paths, as etcd-client's build script passes them: protoc records them in what it
# hands the generator.
(cd "$crate" && PROTOC="$protoc" cargo run --quiet --manifest-path "$work/gen/Cargo.toml" \
  -- proto "$work/out")

# The generator also writes google.api and the openapiv2 options (imported by rpc.proto for
# annotations only); etcd-client never used those.
status=0
for module in authpb etcdserverpb mvccpb v3electionpb v3lockpb; do
  if $check; then
    if ! cmp -s "$work/out/$module.rs" "$dest/$module.rs"; then
      echo "regen-etcd-protos: $dest/$module.rs differs from what the generator makes" >&2
      status=1
    fi
  else
    cp "$work/out/$module.rs" "$dest/$module.rs"
  fi
done
if $check && [ "$status" -eq 0 ]; then
  echo "regen-etcd-protos: the checked-in files are what the generator makes" >&2
elif ! $check; then
  echo "regen-etcd-protos: wrote $dest/{authpb,etcdserverpb,mvccpb,v3electionpb,v3lockpb}.rs" >&2
fi
exit "$status"
