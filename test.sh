#!/usr/bin/env bash
# Run every test of GLORY-CL. Installs what the tests need when it is missing, so it
# works on a fresh machine; does nothing extra when everything is there.
set -euo pipefail
cd "$(dirname "$0")"

# System packages the suite needs: etcd (the key master's etcd backend is tested against
# real members), protoc (the etcd-client crate compiles etcd's protobuf definitions),
# Python's venv (schemathesis checks the live API against its OpenAPI spec) and
# Prometheus (a real one scrapes the cluster master's /metrics in a test), its
# Alertmanager (a real one receives forwarded alerts) and Chromium with its WebDriver
# (the console is tested in a real headless browser).
APT_PACKAGES=(etcd-server protobuf-compiler python3-venv prometheus prometheus-alertmanager chromium chromium-driver)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "test.sh: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

# schemathesis, pinned (its checks change between releases), in a virtualenv under
# target/ (Debian's pip refuses system-wide installs).
SCHEMATHESIS_VERSION=4.32.5
VENV=target/schemathesis-venv
if [ ! -x "$VENV/bin/st" ] || ! "$VENV/bin/pip" show schemathesis 2>/dev/null | grep -q "^Version: $SCHEMATHESIS_VERSION\$"; then
    echo "test.sh: installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
    mkdir -p target
    /usr/bin/python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi
export GLORY_SCHEMATHESIS="$PWD/$VENV/bin/st"

# The end-to-end tests run the real binaries as separate processes.
cargo build --workspace --bins
cargo test --workspace --no-fail-fast

# The code's form is checked too: formatted, and no clippy warning anywhere.
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
