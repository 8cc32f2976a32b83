#!/bin/busybox sh
# /init of GLORY-CL's enrollment initramfs (written by glory-provisioner's initramfs.rs).
# Brings the network up and runs the node agent, which enrolls with the cluster master.
# Kernel command line: BOOTIF=01-aa-bb-cc-dd-ee-ff (from iPXE) picks the interface for
# DHCP; glory.boot=http://IP:PORT/boot/<mac> is where progress is reported; the agent
# itself reads glory.token=, glory.cm= and glory.ca=.
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin

log() { echo "glory-init: $*"; }
uptime_s() { read -r up _ < /proc/uptime; echo "$up"; }
uptime_whole() { up=$(uptime_s); echo "${up%.*}"; }

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
hostname glory-enroll

BOOTIF_MAC=
GLORY_BOOT=
set -f
for arg in $(cat /proc/cmdline); do
    case "$arg" in
    BOOTIF=*)
        mac=${arg#BOOTIF=}
        # iPXE prefixes the hardware type: 01-52-54-00-12-34-56.
        [ ${#mac} -eq 20 ] && mac=${mac#??-}
        BOOTIF_MAC=$(echo "$mac" | tr 'ABCDEF-' 'abcdef:')
        ;;
    glory.boot=*) GLORY_BOOT=${arg#glory.boot=} ;;
    esac
done
set +f

# Best effort, in the background: a provisioner that does not answer must not hold up
# the boot (busybox `wget -T` crashes, hence `timeout`).
urlencode() { printf '%s' "$1" | sed -e 's/%/%25/g' -e 's/ /%20/g' -e 's/&/%26/g' -e 's/=/%3D/g' -e 's/+/%2B/g'; }
REPORT_PID=
report() {
    [ -n "$GLORY_BOOT" ] || return 0
    # One report at a time, so the provisioner sees them in order.
    [ -n "$REPORT_PID" ] && wait "$REPORT_PID"
    (timeout 10 wget -q -O /dev/null --post-data "$1" "$GLORY_BOOT/progress" 2>/dev/null ||
        log "could not report '$1' to $GLORY_BOOT/progress") &
    REPORT_PID=$!
}

log "loading network drivers"
while read -r mod; do
    [ -n "$mod" ] && { insmod "$mod" || log "insmod $mod failed"; }
done < /etc/glory/modules

ethernet_ifaces() {
    for dir in /sys/class/net/*; do
        ifc=${dir##*/}
        [ "$ifc" != lo ] && [ "$(cat "$dir/type" 2>/dev/null)" = 1 ] && echo "$ifc"
    done
}
iface_with_mac() {
    for ifc in $(ethernet_ifaces); do
        [ "$(cat "/sys/class/net/$ifc/address")" = "$1" ] && { echo "$ifc"; return; }
    done
}

# Drivers probe asynchronously: wait up to 10 s for the boot interface (or any).
deadline=$(($(uptime_whole) + 10))
while [ "$(uptime_whole)" -lt $deadline ]; do
    if [ -n "$BOOTIF_MAC" ]; then
        [ -n "$(iface_with_mac "$BOOTIF_MAC")" ] && break
    else
        [ -n "$(ethernet_ifaces)" ] && break
    fi
    sleep 0.2
done
ip link set lo up
for ifc in $(ethernet_ifaces); do ip link set "$ifc" up; done
log "interfaces: $(echo $(ethernet_ifaces)); boot MAC ${BOOTIF_MAC:-none}"

# udhcpc -n exits non-zero without a lease; with one it stays in the background to renew.
dhcp_once() {
    candidates=
    [ -n "$BOOTIF_MAC" ] && candidates=$(iface_with_mac "$BOOTIF_MAC")
    [ -n "$candidates" ] || candidates=$(ethernet_ifaces)
    for ifc in $candidates; do
        ip link set "$ifc" up
        log "DHCP on $ifc"
        if udhcpc -i "$ifc" -s /usr/share/udhcpc/default.script -p "/run/udhcpc.$ifc.pid" -t 4 -T 2 -n; then
            NET_IF=$ifc
            return 0
        fi
    done
    return 1
}
until dhcp_once; do
    log "no interface got an address; retrying in 5 s"
    report "state=failed&detail=$(urlencode "no interface got an address")"
    sleep 5
done
NET_ADDR=$(ip -4 -o addr show dev "$NET_IF" | awk '{print $4}')
log "network up on $NET_IF: $NET_ADDR"

mkdir -p /var/lib/glory-agent
while :; do
    log "starting glory-node-agent at $(uptime_s) s since boot"
    report "state=enrolling&ip=${NET_ADDR%%/*}&detail=$(urlencode "network up on $NET_IF ($NET_ADDR); agent starting")"
    /sbin/glory-node-agent --state-dir /var/lib/glory-agent --setup-root /
    code=$?
    log "glory-node-agent exited with code $code; restarting in 5 s"
    report "state=failed&detail=$(urlencode "agent exited with code $code")"
    sleep 5
done
