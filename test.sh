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
# The provisioning lab boots real QEMU VMs (TCG) from our DHCP/TFTP/HTTP: QEMU, the
# iPXE boot programs and NIC ROMs, OVMF (UEFI), Debian's kernel and busybox (the
# enrollment environment is built from them); power drivers are tested against
# OpenIPMI's ipmi_sim with ipmitool, and sushy-tools' Redfish emulator (PyPI, below).
# Services' balancer drivers: a real HAProxy changed through its runtime API,
# keepalived's own configuration check, and nft for the nftables driver's kernel rules.
# OS images are built with mmdebstrap (from the machine's Debian mirror) and packed by
# squashfs-tools, then deployed to lab VMs. aria2 is the real BitTorrent client our peer is
# tested against (it fetches from our seeder and trades with our peers). `glory sim --api-load` loads the API with wrk.
APT_PACKAGES=(etcd-server protobuf-compiler python3-venv prometheus prometheus-alertmanager chromium chromium-driver
    ipxe ovmf linux-image-amd64 busybox-static openipmi ipmitool iproute2 haproxy keepalived nftables
    mmdebstrap squashfs-tools aria2 wrk)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "test.sh: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

# QEMU: bookworm's qemu-system-x86 7.2 refuses to install beside the newer qemu-utils
# these machines carry from bookworm-backports, so it comes from there too (FACTS.md).
if ! command -v qemu-system-x86_64 >/dev/null 2>&1 || ! dpkg -s ipxe-qemu >/dev/null 2>&1; then
    echo "test.sh: installing qemu-system-x86 and ipxe-qemu from bookworm-backports"
    if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
        echo "deb http://deb.debian.org/debian bookworm-backports main" > /etc/apt/sources.list.d/bookworm-backports.list
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports qemu-system-x86 ipxe-qemu
fi

# sushy-tools (a Redfish BMC emulator) for the redfish power driver's test, pinned.
SUSHY_VERSION=2.2.0
SUSHY_VENV=target/sushy-venv
if [ ! -x "$SUSHY_VENV/bin/sushy-emulator" ] || ! "$SUSHY_VENV/bin/pip" show sushy-tools 2>/dev/null | grep -q "^Version: $SUSHY_VERSION\$"; then
    echo "test.sh: installing sushy-tools $SUSHY_VERSION into $SUSHY_VENV"
    mkdir -p target
    /usr/bin/python3 -m venv "$SUSHY_VENV"
    "$SUSHY_VENV/bin/pip" install -q --disable-pip-version-check "sushy-tools==$SUSHY_VERSION"
fi
export GLORY_SUSHY_VENV="$PWD/$SUSHY_VENV"

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
