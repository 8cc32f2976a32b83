#!/usr/bin/env bash
# Run glory on a fresh machine: installs the system packages the build needs when they
# are missing (protoc for the etcd-client crate), then `cargo run --release -p glory -- ARGS`.
# Example: ./run.sh up --nodes 1000
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v protoc >/dev/null 2>&1; then
    echo "run.sh: installing protobuf-compiler (needed to build etcd-client)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler
fi
exec cargo run --release -p glory -- "$@"
