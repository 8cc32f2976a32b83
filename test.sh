#!/usr/bin/env bash
# Run every test of GLORY-CL. Installs what the tests need when it is missing, so it
# works on a fresh machine; does nothing extra when everything is there.
set -euo pipefail
cd "$(dirname "$0")"

# System packages the suite needs: etcd (the key master's etcd backend is tested against
# real members) and protoc (the etcd-client crate compiles etcd's protobuf definitions).
APT_PACKAGES=(etcd-server protobuf-compiler)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "test.sh: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

# The end-to-end tests run the real binaries as separate processes.
cargo build --workspace --bins
cargo test --workspace --no-fail-fast
