#!/bin/sh
# Start a fake Redfish BMC (PyPI sushy-tools' sushy-emulator --fake) on 127.0.0.1:PORT.
#
#   tests/lab/redfish/start.sh PORT STATEDIR
#
# Writes STATEDIR/emulator.conf (two fake systems, both Off at first) and
# STATEDIR/htpasswd (user "admin", password $GLORY_REDFISH_PASSWORD, default
# "glorypass", bcrypt), keeps the emulator's state (SQLite) in STATEDIR/state, then
# execs the emulator in the foreground so the caller owns its pid.
# The venv is $GLORY_SUSHY_VENV (default /opt/glory-test-venv), made with
#   python3 -m venv "$GLORY_SUSHY_VENV" && "$GLORY_SUSHY_VENV/bin/pip" install sushy-tools
# Systems: /redfish/v1/Systems/glory-fake-0001 ("node-a") and .../glory-fake-0002 ("node-b").
# HTTPS instead of HTTP when $GLORY_REDFISH_TLS_CERT and $GLORY_REDFISH_TLS_KEY name PEM files.
set -eu
if [ $# -ne 2 ]; then
    echo "usage: $0 PORT STATEDIR" >&2
    exit 2
fi
port=$1
statedir=$2
venv=${GLORY_SUSHY_VENV:-/opt/glory-test-venv}
case $port in
''|*[!0-9]*) echo "port must be a number: $port" >&2; exit 2 ;;
esac
if [ ! -x "$venv/bin/sushy-emulator" ]; then
    echo "no sushy-emulator in $venv (set GLORY_SUSHY_VENV; see tests/lab/redfish/README.md)" >&2
    exit 1
fi
mkdir -p "$statedir/state"
statedir=$(cd "$statedir" && pwd)

# The password reaches Python through the environment, never the command line.
GLORY_REDFISH_PASSWORD=${GLORY_REDFISH_PASSWORD:-glorypass} \
GLORY_STATEDIR=$statedir \
"$venv/bin/python" - <<'PY'
import os
import bcrypt

statedir = os.environ["GLORY_STATEDIR"]
password = os.environ["GLORY_REDFISH_PASSWORD"].encode()
with open(os.path.join(statedir, "htpasswd"), "w") as f:
    f.write("admin:" + bcrypt.hashpw(password, bcrypt.gensalt(rounds=4)).decode() + "\n")

systems = [
    {"uuid": "glory-fake-0001", "name": "node-a", "power_state": "Off",
     "nics": [{"mac": "52:54:00:00:00:01", "ip": "10.99.0.11"}]},
    {"uuid": "glory-fake-0002", "name": "node-b", "power_state": "Off",
     "nics": [{"mac": "52:54:00:00:00:02", "ip": "10.99.0.12"}]},
]
with open(os.path.join(statedir, "emulator.conf"), "w") as f:
    f.write("SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'\n")
    f.write("SUSHY_EMULATOR_FAKE_DRIVER = True\n")
    f.write("SUSHY_EMULATOR_STATE_DIR = %r\n" % os.path.join(statedir, "state"))
    f.write("SUSHY_EMULATOR_AUTH_FILE = %r\n" % os.path.join(statedir, "htpasswd"))
    f.write("SUSHY_EMULATOR_FAKE_SYSTEMS = %r\n" % systems)
PY

if [ -n "${GLORY_REDFISH_TLS_CERT:-}" ] && [ -n "${GLORY_REDFISH_TLS_KEY:-}" ]; then
    exec "$venv/bin/sushy-emulator" --config "$statedir/emulator.conf" --fake \
        --interface 127.0.0.1 --port "$port" \
        --ssl-certificate "$GLORY_REDFISH_TLS_CERT" --ssl-key "$GLORY_REDFISH_TLS_KEY"
fi
exec "$venv/bin/sushy-emulator" --config "$statedir/emulator.conf" --fake \
    --interface 127.0.0.1 --port "$port"
