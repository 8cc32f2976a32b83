#!/usr/bin/env bash
# Run every test of GLORY-CL. Installs what the tests need when it is missing, so it
# works on a fresh machine; does nothing extra when everything is there.
set -euo pipefail
cd "$(dirname "$0")"

# System packages the suite needs (none beyond the Rust toolchain yet; the etcd backend
# will add etcd-server and protobuf-compiler here).
APT_PACKAGES=()
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
