#!/bin/sh
# Start an IPMI BMC simulator (Debian openipmi's ipmi_sim) on 127.0.0.1:PORT/udp.
#
#   tests/lab/ipmi/start.sh PORT STATEDIR
#
# Renders lan.conf for PORT into STATEDIR (created if missing), then
# execs ipmi_sim in the foreground without a console (-n), so the caller owns its pid.
# The user is "admin", the password $GLORY_IPMI_PASSWORD (default "glorypass").
# Power state: STATEDIR/power ("0" or "1", off at start); boot device: STATEDIR/boot;
# every chassis "set" is logged in STATEDIR/chassis.log.
set -eu
if [ $# -ne 2 ]; then
    echo "usage: $0 PORT STATEDIR" >&2
    exit 2
fi
port=$1
statedir=$2
password=${GLORY_IPMI_PASSWORD:-glorypass}
here=$(cd "$(dirname "$0")" && pwd)

case $port in
''|*[!0-9]*) echo "port must be a number: $port" >&2; exit 2 ;;
esac
if [ ${#password} -gt 20 ]; then
    echo "the IPMI password must be at most 20 characters" >&2
    exit 2
fi
# ipmi_sim binds its UDP port with SO_REUSEADDR: a second simulator on the same port
# starts without error and the two share the packets. Refuse a port already in use.
if command -v ss >/dev/null 2>&1 && ss -Huln "sport = :$port" | grep -q .; then
    echo "UDP port $port is already in use" >&2
    exit 1
fi
case $statedir in
*[[:space:]]*|*'"'*|*'|'*) echo "STATEDIR must not contain spaces, quotes or |" >&2; exit 2 ;;
esac
case $password in
*'"'*|*'@'*|*'/'*|*'\'*|*'&'*) echo "password must not contain \" @ / \\ &" >&2; exit 2 ;;
esac

mkdir -p "$statedir/sim"
statedir=$(cd "$statedir" && pwd)
cp "$here/chassis_control.sh" "$statedir/chassis_control.sh"
chmod +x "$statedir/chassis_control.sh"
sed -e "s|@PORT@|$port|g" \
    -e "s|@STATEDIR@|$statedir|g" \
    -e "s|@CHASSIS@|$statedir/chassis_control.sh|g" \
    -e "s|@PASSWORD@|$password|g" \
    "$here/lan.conf.in" >"$statedir/lan.conf"
cp "$here/glorybmc.emu" "$statedir/glorybmc.emu"

# -n: no console on stdin/stdout (runs without a terminal, in the background);
# -s: persistent state (users, SEL, SDRs) under STATEDIR/sim, not /var/lib/ipmi_sim.
exec ipmi_sim -n -c "$statedir/lan.conf" -f "$statedir/glorybmc.emu" -s "$statedir/sim"
