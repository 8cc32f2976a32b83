#!/bin/busybox sh
# /init of GLORY-CL's enrollment initramfs (written by glory-provisioner's initramfs.rs).
# Brings the network up and runs the node agent, which enrolls with the cluster master.
# Kernel command line: BOOTIF=01-aa-bb-cc-dd-ee-ff (from iPXE) picks the interface for
# DHCP; glory.boot=http://IP:PORT/boot/<mac> is where progress is reported; the agent
# itself reads glory.token=, glory.cm= and glory.ca=.
# An OS image's boot adds glory.rootfs=URL, glory.rootfs_sha256=, glory.rootfs_size=
# and glory.mode=diskless|disk: the root filesystem (a squashfs) is fetched into RAM
# (diskless) or written to the first disk (disk, kept when it is already there),
# checked against its hash, mounted under a tmpfs overlay, and booted (/sbin/init).
# A diskless boot with glory.torrent=URL fetches the root filesystem peer-to-peer, with
# the agent's BitTorrent peer: from the other machines booting it, the provisioner seeding;
# it keeps seeding for glory.seed_seconds= (default 60) after it booted. A swarm that
# fails or is slower than 256 KiB/s gives way to HTTP.
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
GLORY_ROOTFS=
GLORY_ROOTFS_SHA=
GLORY_ROOTFS_SIZE=
GLORY_MODE=diskless
GLORY_TORRENT=
GLORY_SEED=60
P2P_PID=
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
    glory.rootfs=*) GLORY_ROOTFS=${arg#glory.rootfs=} ;;
    glory.rootfs_sha256=*) GLORY_ROOTFS_SHA=${arg#glory.rootfs_sha256=} ;;
    glory.rootfs_size=*) GLORY_ROOTFS_SIZE=${arg#glory.rootfs_size=} ;;
    glory.mode=*) GLORY_MODE=${arg#glory.mode=} ;;
    glory.torrent=*) GLORY_TORRENT=${arg#glory.torrent=} ;;
    glory.seed_seconds=*) GLORY_SEED=${arg#glory.seed_seconds=} ;;
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

first_disk() {
    for d in vda sda nvme0n1 xvda; do
        [ -b "/dev/$d" ] && { echo "/dev/$d"; return; }
    done
}

# The root filesystem into RAM from the swarm (the peer checks every piece by SHA-1;
# the caller checks the SHA-256): /glory/rw/<sha256>, or nothing. The peer stays behind
# as a seeder for GLORY_SEED seconds; it marks the download whole.
fetch_p2p() {
    [ -n "$GLORY_TORRENT" ] || return 1
    timeout 30 wget -q -O /tmp/root.torrent "$GLORY_TORRENT" || { log "no torrent at $GLORY_TORRENT"; return 1; }
    rm -f /tmp/p2p.done
    log "fetching the root filesystem peer-to-peer"
    /sbin/glory-node-agent torrent-get /tmp/root.torrent --dir /glory/rw \
        --done /tmp/p2p.done --seed-seconds "$GLORY_SEED" &
    P2P_PID=$!
    # No slower than 256 KiB/s, and at least two minutes.
    deadline=$(($(uptime_whole) + 120 + ${GLORY_ROOTFS_SIZE:-0} / 262144))
    while [ ! -e /tmp/p2p.done ]; do
        if ! kill -0 "$P2P_PID" 2>/dev/null || [ "$(uptime_whole)" -ge $deadline ]; then
            log "the swarm did not deliver the root filesystem; over HTTP instead"
            kill "$P2P_PID" 2>/dev/null
            rm -f "/glory/rw/$GLORY_ROOTFS_SHA"
            return 1
        fi
        sleep 0.5
    done
    ROOTFS_FILE=/glory/rw/$GLORY_ROOTFS_SHA
    log "fetched peer-to-peer at $(uptime_s) s since boot; seeding for $GLORY_SEED s"
}

# The image's root filesystem, checked: where it is, or nothing.
fetch_rootfs() {
    case "$GLORY_MODE" in
    disk)
        disk=$(first_disk)
        [ -n "$disk" ] || { log "mode disk, but no disk"; return 1; }
        have=$(head -c "$GLORY_ROOTFS_SIZE" "$disk" | sha256sum | cut -d' ' -f1)
        if [ "$have" != "$GLORY_ROOTFS_SHA" ]; then
            log "writing the image to $disk"
            timeout 3600 wget -q -O - "$GLORY_ROOTFS" | dd of="$disk" bs=1M 2>/dev/null || return 1
            sync
            echo 3 > /proc/sys/vm/drop_caches
            have=$(head -c "$GLORY_ROOTFS_SIZE" "$disk" | sha256sum | cut -d' ' -f1)
        else
            log "$disk already holds the image"
        fi
        [ "$have" = "$GLORY_ROOTFS_SHA" ] || { log "$disk holds $have, not $GLORY_ROOTFS_SHA"; return 1; }
        ROOTFS_SRC=$disk
        ;;
    *)
        if ! fetch_p2p; then
            log "fetching the root filesystem into RAM"
            ROOTFS_FILE=/glory/rw/root.squashfs
            timeout 3600 wget -q -O "$ROOTFS_FILE" "$GLORY_ROOTFS" || return 1
        fi
        have=$(sha256sum "$ROOTFS_FILE" | cut -d' ' -f1)
        if [ "$have" != "$GLORY_ROOTFS_SHA" ]; then
            log "fetched $have, not $GLORY_ROOTFS_SHA"
            [ -n "$P2P_PID" ] && kill "$P2P_PID" 2>/dev/null
            GLORY_TORRENT=
            rm -f "$ROOTFS_FILE"
            return 1
        fi
        ROOTFS_SRC=$ROOTFS_FILE
        ;;
    esac
}

if [ -n "$GLORY_ROOTFS" ]; then
    mkdir -p /glory/rw /glory/ro /newroot
    mount -t tmpfs -o mode=0755 tmpfs /glory/rw
    report "state=enrolling&ip=${NET_ADDR%%/*}&detail=$(urlencode "network up on $NET_IF ($NET_ADDR); fetching the image ($GLORY_MODE)")"
    until fetch_rootfs; do
        report "state=failed&detail=$(urlencode "the image's root filesystem could not be fetched or did not match its hash; retrying in 10 s")"
        sleep 10
    done
    if [ "$ROOTFS_SRC" != "${ROOTFS_SRC#/glory/rw/}" ]; then
        mount -t squashfs -o ro,loop "$ROOTFS_SRC" /glory/ro
    else
        mount -t squashfs -o ro "$ROOTFS_SRC" /glory/ro
    fi || { report "state=failed&detail=$(urlencode "cannot mount the image")"; sleep 30; reboot -f; }
    mkdir -p /glory/rw/upper /glory/rw/work
    mount -t overlay overlay -o lowerdir=/glory/ro,upperdir=/glory/rw/upper,workdir=/glory/rw/work /newroot ||
        { report "state=failed&detail=$(urlencode "cannot mount the overlay")"; sleep 30; reboot -f; }
    log "booting the image at $(uptime_s) s since boot"
    report "state=enrolling&ip=${NET_ADDR%%/*}&detail=$(urlencode "image mounted ($GLORY_MODE from $ROOTFS_SRC); starting its init")"
    [ -n "$REPORT_PID" ] && wait "$REPORT_PID"
    # The address stays on the interface; the DHCP client's script does not survive.
    killall udhcpc 2>/dev/null
    umount /tmp /run 2>/dev/null
    mount --move /dev /newroot/dev
    umount /sys /proc
    exec switch_root /newroot /sbin/init
fi

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
