#!/bin/sh
# udhcpc's event script in GLORY-CL's enrollment initramfs (glory-provisioner's
# initramfs.rs): sets the address, the default route, /etc/resolv.conf and the hostname.
[ -n "$interface" ] || exit 1
prefix=${mask:-24}
case "$1" in
deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
bound|renew)
    # A renewal of the same address keeps it (and the agent's connections).
    if ! ip -4 addr show dev "$interface" | grep -q "inet $ip/$prefix "; then
        ip -4 addr flush dev "$interface"
        if [ -n "$broadcast" ]; then
            ip addr add "$ip/$prefix" broadcast "$broadcast" dev "$interface"
        else
            ip addr add "$ip/$prefix" dev "$interface"
        fi
    fi
    if [ -n "$router" ]; then
        ip route del default dev "$interface" 2>/dev/null
        set -- $router
        ip route add default via "$1" dev "$interface"
    fi
    {
        [ -n "$domain" ] && echo "search $domain"
        for server in $dns; do echo "nameserver $server"; done
    } > /etc/resolv.conf
    if [ -n "$hostname" ]; then
        hostname "$hostname"
        echo "$hostname" > /etc/hostname
    fi
    echo "glory-udhcpc: $interface $ip/$prefix router ${router:-none} dns ${dns:-none} hostname ${hostname:-none}"
    ;;
leasefail|nak)
    echo "glory-udhcpc: $interface: $1"
    ;;
esac
exit 0
